"""ONNX -> :class:`reflrp.graph.Graph`. The only module that imports ``onnx``."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelLoadError, UnsupportedOpError
from .graph import Graph, Node, ValueInfo

MIN_OPSET, MAX_OPSET = 13, 23
DEFAULT_DOMAINS = ("", "ai.onnx")


def read_model(source: Any) -> tuple[onnx.ModelProto, str | None]:
    """Parse a path, bytes or ``ModelProto``; returns the proto and its folder (for external data)."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"no ONNX file at {str(path)!r}")
        return _parse(path.read_bytes(), str(path)), str(path.parent)
    raise ModelLoadError(f"cannot load a model from a {type(source).__name__}; pass a path, bytes or onnx.ModelProto")


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise ModelLoadError(f"{where} is not a readable ONNX model (truncated or not ONNX): {exc}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{where} is not an ONNX model (no graph or no opset_import)")
    return model


def to_graph(model: onnx.ModelProto, base_dir: str | None = None) -> Graph:
    """Convert a ``ModelProto`` to the frozen IR, decoding attributes and initializers once."""
    opset, opsets = None, {}
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            opset = imp.version
        opsets["" if imp.domain in DEFAULT_DOMAINS else imp.domain] = imp.version
    if opset is None:
        raise UnsupportedOpError("the model imports no default-domain ('' / ai.onnx) opset")
    g = model.graph
    initializers = {}
    for t in g.initializer:
        initializers[t.name] = _tensor(t, base_dir)
    for t in g.sparse_initializer:
        raise UnsupportedOpError(f"sparse initializer {t.values.name!r} is not supported")
    nodes, seen = [], set()
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:  # node names key the plan: make them unique (ONNX does not require it)
            name = f"{name}_{i}"
        seen.add(name)
        # other domains (com.microsoft, ...) stay in the IR: reflrp.canonical rewrites them at load
        domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
        attrs = {a.name: _attribute(a, base_dir, name) for a in n.attribute}
        nodes.append(Node(name, n.op_type, domain, tuple(n.input), tuple(n.output), attrs))
    init_names = set(initializers)
    inputs = tuple(_value_info(v) for v in g.input if v.name not in init_names)
    outputs = tuple(_value_info(v) for v in g.output)
    metadata = {p.key: p.value for p in model.metadata_props}
    value_info = {v.name: _value_info(v) for v in g.value_info}  # ranks and types the rewrites may need
    return Graph.build(nodes, inputs, outputs, initializers, opset, metadata, opsets, value_info=value_info)


def _tensor(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    try:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if base_dir is None:
                raise ModelLoadError(f"initializer {t.name!r} uses external data; load the model from its path")
            onnx.external_data_helper.load_external_data_for_tensor(t, base_dir)
        return np.asarray(numpy_helper.to_array(t))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot read tensor {t.name!r}: {exc}") from None


def _attribute(a: onnx.AttributeProto, base_dir: str | None, node_name: str) -> Any:
    A = onnx.AttributeProto
    if a.type == A.TENSOR:
        return _tensor(a.t, base_dir)
    if a.type == A.STRING:
        return a.s.decode("utf-8")
    if a.type == A.STRINGS:
        return [s.decode("utf-8") for s in a.strings]
    if a.type in (A.GRAPH, A.GRAPHS):
        raise UnsupportedOpError(f"node {node_name!r}: attribute {a.name!r} holds a subgraph (control flow is not supported)")
    if a.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS):
        raise UnsupportedOpError(f"node {node_name!r}: sparse tensor attribute {a.name!r} is not supported")
    value = helper.get_attribute_value(a)
    if a.type == A.TENSORS:
        return [np.asarray(numpy_helper.to_array(t)) for t in value]
    return list(value) if isinstance(value, (list, tuple)) else value


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    tt = v.type.tensor_type
    dtype = None
    if tt.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return ValueInfo(v.name, dtype, shape)


def digest(source: Any, proto: onnx.ModelProto) -> str:
    """sha256 of the model's bytes (the file's, the bytes given, or the proto serialized)."""
    if isinstance(source, (str, os.PathLike)):
        data = Path(source).read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = proto.SerializeToString()
    return hashlib.sha256(data).hexdigest()
