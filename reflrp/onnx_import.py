"""ONNX -> :class:`reflrp.graph.Graph`. The only module that imports ``onnx``."""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .dtypes import UNSUPPORTED_TYPES, numpy_dtype
from .errors import GraphError, ModelLoadError, UnsupportedOpError
from .graph import Graph, Node, ValueInfo, captured

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class UndecodedAttribute:
    """An attribute reflrp does not decode (a list of subgraphs, a sparse tensor): ``reflrp.load`` refuses
    its node, together with every other node it cannot run."""

    reason: str


def newest_opset() -> int:
    """The newest default-domain opset the installed onnx defines."""
    return onnx.defs.onnx_opset_version()


def read_model(source: Any) -> tuple[onnx.ModelProto, str | None, str]:
    """Parse a path, bytes or ``ModelProto``; returns the proto, its folder (for external data) and the
    sha256 of the bytes parsed (of the proto serialized, for a proto)."""
    if isinstance(source, onnx.ModelProto):
        return source, None, _sha256(source.SerializeToString())
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _parse(data, "<bytes>"), None, _sha256(data)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"no ONNX file at {str(path)!r}")
        data = path.read_bytes()
        return _parse(data, str(path)), str(path.parent), _sha256(data)
    raise ModelLoadError(f"cannot load a model from a {type(source).__name__}; pass a path, bytes or onnx.ModelProto")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise ModelLoadError(f"{where} is not a readable ONNX model (truncated or not ONNX): {exc}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{where} is not an ONNX model (no graph or no opset_import)")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset; one that onnx does not define (<= 0, newer than the
    installed onnx knows) or two different ones are an :class:`UnsupportedOpError`."""
    versions = sorted({int(imp.version) for imp in model.opset_import if imp.domain in DEFAULT_DOMAINS})
    if not versions:
        raise UnsupportedOpError("the model imports no default-domain ('' / ai.onnx) opset")
    if len(versions) > 1:
        raise UnsupportedOpError(f"the model imports the default domain at opsets {versions}; a model has one")
    newest = newest_opset()
    if not 1 <= versions[0] <= newest:
        raise UnsupportedOpError(
            f"the model imports default-domain opset {versions[0]}, which ONNX does not define: the installed "
            f"onnx {onnx.__version__} knows opsets 1..{newest}, and reflrp runs those (each op from the opset "
            "its kernel starts at, see reflrp.supported_ops())")
    return versions[0]


def to_graph(model: onnx.ModelProto, base_dir: str | None = None) -> Graph:
    """Convert a ``ModelProto`` to the frozen IR, decoding attributes and initializers once.

    Nodes of other domains and attributes reflrp cannot decode are kept (the latter as
    :class:`UndecodedAttribute`): ``reflrp.load`` lists every node it cannot run in one error.
    """
    opset = default_opset(model)
    opsets = {("" if imp.domain in DEFAULT_DOMAINS else imp.domain): int(imp.version) for imp in model.opset_import}
    g = model.graph
    initializers = {}
    for t in g.initializer:
        initializers[t.name] = _tensor(t, base_dir)
    for t in g.sparse_initializer:
        raise UnsupportedOpError(f"sparse initializer {t.values.name!r} is not supported")
    nodes = _nodes(g, base_dir, opset, opsets)
    init_names = set(initializers)
    _refuse_value_types([v for v in g.input if v.name not in init_names], g.output, g.value_info)
    _refuse_input_types([v for v in g.input if v.name not in init_names])
    inputs = tuple(_value_info(v) for v in g.input if v.name not in init_names)
    outputs = tuple(_value_info(v) for v in g.output)
    metadata = {p.key: p.value for p in model.metadata_props}
    value_info = {v.name: _value_info(v) for v in g.value_info}  # ranks and types the rewrites may need
    if any(isinstance(v, Graph) for n in nodes for v in n.attrs.values()):  # If folding reads symbolic shapes
        value_info.update(_inferred_shapes(model))
    defaults = {v.name for v in g.input} & init_names  # IR >= 4: an initializer listed as input is a default
    graph = Graph.build(nodes, inputs, outputs, initializers, opset, metadata, opsets, value_info=value_info,
                        defaults=defaults)
    check_against_schemas(model, graph)
    return graph


def _nodes(g: onnx.GraphProto, base_dir: str | None, opset: int, opsets: dict) -> list[Node]:
    """The nodes of a graph, named uniquely, attributes decoded (subgraphs into :class:`Graph`). A node
    holding subgraphs takes the enclosing values they read as extra trailing inputs (their ``outer``)."""
    nodes, seen = [], set()
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:  # node names key the plan: make them unique (ONNX does not require it)
            name = f"{name}_{i}"
        seen.add(name)
        # other domains (com.microsoft, ...) stay in the IR: reflrp.canonical rewrites them at load
        domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
        attrs = {a.name: _attribute(a, base_dir, opset, opsets) for a in n.attribute}
        nodes.append(Node(name, n.op_type, domain, tuple(n.input) + captured(attrs), tuple(n.output), attrs))
    return nodes


def _subgraph(g: onnx.GraphProto, base_dir: str | None, opset: int, opsets: dict) -> Graph:
    """A control-flow body: its own inputs, then the enclosing scope's values it reads (``outer``)."""
    initializers = {t.name: _tensor(t, base_dir) for t in g.initializer}
    nodes = _nodes(g, base_dir, opset, opsets)
    defined = {v.name for v in g.input} | set(initializers) | {o for n in nodes for o in n.outputs}
    reads = [i for n in nodes for i in n.inputs if i] + [v.name for v in g.output]
    outer = tuple(dict.fromkeys(r for r in reads if r not in defined))
    inputs = tuple(_value_info(v) for v in g.input if v.name not in initializers)
    inputs += tuple(ValueInfo(name, None, None) for name in outer)
    return Graph.build(nodes, inputs, tuple(_value_info(v) for v in g.output), initializers, opset, opsets=opsets,
                       outer=outer)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, ValueInfo]:
    """Shapes by onnx's shape inference with data propagation (symbolic dims it proves equal share a
    name), from the model without its recorded value_info; {} where inference fails."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    return {v.name: _value_info(v) for v in inferred.graph.value_info if v.type.WhichOneof("value") == "tensor_type"}


def check_against_schemas(model: onnx.ModelProto, graph: Graph) -> None:
    """Refuse nodes that break their op's ONNX schema: an attribute the op does not have or of the wrong
    type, too few or too many inputs, an input whose element type the op does not take, or inputs that
    share a type variable with different types. Two liberties: an op that takes some float type takes
    every float type (reflrp computes floats in any precision; its float policy upcasts whole models),
    and data movement takes every element type. Element types come from the graph inputs, the
    initializers and onnx's (non-strict) type inference from them (stale value_info is ignored)."""
    types = _element_types(model)
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS or not _known(node.op_type, graph.opset):
            continue
        from .ops import kinds, record
        rec = record(node.op_type)
        moves = rec is not None and rec.kind in (kinds.MOVE, kinds.CAST)
        problem = _schema_problem(node, onnx.defs.get_schema(node.op_type, graph.opset, ""), types, moves)
        if problem:
            label = node.name or node.op_type
            raise ModelLoadError(f"node {label!r} ({node.op_type}, opset {graph.opset}) breaks its ONNX schema: "
                                 f"{problem}")


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, from declarations, initializers and onnx's type inference."""
    types = {}
    bare = _without_weights(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, check_type=False, strict_mode=False).graph
    except Exception:
        inferred = bare.graph
    for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _without_weights(model: onnx.ModelProto, keep_elements: int = 1024) -> onnx.ModelProto:
    """The model as type inference needs it: no value_info, and every initializer of more than
    ``keep_elements`` elements (or stored outside) a graph input of its element type and shape instead.
    Inference reads the values only of small tensors (shapes, axes, pads), so it infers the same types
    without serializing the weights (12.7 MB for the benchmark LLaMA: 0.05-0.08 s of its first load)."""
    g = model.graph
    graph = onnx.GraphProto(name=g.name, node=g.node, input=g.input, output=g.output)
    listed = {v.name for v in g.input}
    for t in g.initializer:
        if math.prod(t.dims) <= keep_elements and t.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(t)
        elif t.name not in listed:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions,
                           graph=graph)


def _type_str(elem: int) -> str:
    return f"tensor({helper.tensor_dtype_to_string(elem).replace('TensorProto.', '').lower()})"


_FLOAT_TYPE_STRS = {"tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"}


def _schema_problem(node, schema, types: dict[str, int], any_type: bool = False) -> str | None:
    for a in node.attribute:
        want = schema.attributes.get(a.name)
        if want is None:
            return f"it has no attribute {a.name!r} (its attributes: {sorted(schema.attributes)})"
        if a.type != want.type:
            return f"attribute {a.name!r} must be {want.type.name}, not {onnx.AttributeProto.AttributeType.Name(a.type)}"
    given = len(node.input)
    while given and not node.input[given - 1]:
        given -= 1
    if not schema.min_input <= given <= schema.max_input:
        return f"it takes {schema.min_input}..{schema.max_input} inputs, not {given}"
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, int] = {}
    formals = list(schema.inputs)
    for i, name in enumerate(node.input):
        if not name or name not in types or not formals:
            continue
        formal = formals[min(i, len(formals) - 1)]
        allowed = constraints.get(formal.type_str, {formal.type_str})
        have = _type_str(types[name])
        if not any_type and have not in allowed and not (have in _FLOAT_TYPE_STRS and allowed & _FLOAT_TYPE_STRS):
            return f"input {i} ({name!r}) is {have}; {formal.name} takes {sorted(allowed)}"
        if formal.type_str in constraints and formal.is_homogeneous:  # Scan's, Loop's inputs are heterogeneous
            first = bound.setdefault(formal.type_str, types[name])
            if first != types[name]:
                return (f"inputs bound to type {formal.type_str} differ: {_type_str(first)} and {have} "
                        f"(input {i}, {name!r})")
    return None


def _known(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
        return True
    except Exception:
        return False


def _tensor(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    try:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if base_dir is None:
                raise ModelLoadError(f"initializer {t.name!r} uses external data; load the model from its path")
            onnx.external_data_helper.load_external_data_for_tensor(t, base_dir)
        if t.data_type in UNSUPPORTED_TYPES:
            raise UnsupportedOpError(f"tensor {t.name!r} has element type {UNSUPPORTED_TYPES[t.data_type]}, "
                                     "which reflrp does not compute with")
        return np.asarray(numpy_helper.to_array(t))
    except (ModelLoadError, UnsupportedOpError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot read tensor {t.name!r}: {exc}") from None


def _attribute(a: onnx.AttributeProto, base_dir: str | None, opset: int = 0, opsets=None) -> Any:
    A = onnx.AttributeProto
    if a.type == A.TENSOR:
        return _tensor(a.t, base_dir)
    if a.type == A.STRING:
        return a.s.decode("utf-8")
    if a.type == A.STRINGS:
        return [s.decode("utf-8") for s in a.strings]
    if a.type == A.GRAPH:
        return _subgraph(a.g, base_dir, opset, opsets or {"": opset})
    if a.type == A.GRAPHS:
        return UndecodedAttribute(f"attribute {a.name!r} holds a list of subgraphs, which reflrp does not run")
    if a.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS):
        return UndecodedAttribute(f"sparse tensor attribute {a.name!r} is not supported")
    value = helper.get_attribute_value(a)
    if a.type == A.TENSORS:
        return [np.asarray(numpy_helper.to_array(t)) for t in value]
    return list(value) if isinstance(value, (list, tuple)) else value


def type_text(t: onnx.TypeProto) -> str:
    """A value type as ONNX writes it: ``tensor(float)``, ``seq(tensor(int64))``, ``optional(...)``."""
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        code = getattr(t, kind).elem_type
        elem = onnx.TensorProto.DataType.Name(code).lower() if code in onnx.TensorProto.DataType.values() else code
        return f"{kind[:-5]}({elem})"
    if kind == "sequence_type":
        return f"seq({type_text(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_text(t.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(t.map_type.key_type).lower()
        return f"map({key}, {type_text(t.map_type.value_type)})"
    return kind or "no type"


def _refuse_input_types(inputs) -> None:
    """Graph inputs: each named once, each a tensor of an element type reflrp computes with."""
    seen = set()
    for v in inputs:
        if v.name in seen:
            raise GraphError(f"graph input {v.name!r} is declared twice")
        seen.add(v.name)
        code = v.type.tensor_type.elem_type
        if code == 0 or code in (14, 15):  # strings are held as numpy string arrays (Identity, Equal run)
            what = "no element type" if code == 0 else f"element type {UNSUPPORTED_TYPES[code]}"
            raise UnsupportedOpError(f"graph input {v.name!r} has {what}; reflrp runs numeric, bool and string "
                                     "tensors only")


def _refuse_value_types(inputs, outputs, value_info) -> None:
    """Graph inputs, outputs and value_info must be (dense) tensors: reflrp has no sequence,
    optional, map or sparse values."""
    bad = [f"{where} {v.name!r} is a {type_text(v.type)}"
           for where, values in (("input", inputs), ("output", outputs), ("value_info", value_info))
           for v in values if v.type.WhichOneof("value") not in (None, "tensor_type")]
    if bad:
        raise UnsupportedOpError("reflrp runs tensor values only (no sequence, optional, map or sparse "
                                 "values): " + "; ".join(bad))


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    tt = v.type.tensor_type
    code = tt.elem_type
    # 0 (left open) and complex: not checked at the feed; strings: numpy string or object arrays
    dtype = np.dtype(object) if code == 8 else None if code == 0 or code in UNSUPPORTED_TYPES \
        else numpy_dtype(code, f"value {v.name!r}")
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return ValueInfo(v.name, dtype, shape)


