"""Import-time rewrites: fused and contrib ops (com.microsoft, onnxruntime's nchwc layout ops and its
own default-domain ops) expanded into core ONNX ops with the same forward semantics.

A rewrite is one small function per op, registered with :func:`rewrites` under ``(domain, op_type)``;
it reads the original node through an :class:`Emit` and emits core nodes and new initializers, like
an ONNX function body. :func:`canonicalize` applies every registered rewrite and records on the graph
which nodes replaced which (``graph.expansions``), so the plan can show an original node next to its
expansion. A rewrite that returns False leaves its node as it is (an If whose condition is not known at
load). The replacement nodes are named ``<original name>/<k>_<op>``; the last ones write the
original output names, so the rest of the graph is untouched.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import ReflrpError, UnsupportedOpError
from ..graph import Expansion, Graph, Node

Rewrite = Callable[["Emit"], None]
_REWRITES: dict[tuple[str, str], tuple[Rewrite, Callable[[Graph], bool]]] = {}


def rewrites(domain: str, *op_types: str, when: Callable[[Graph], bool] = lambda graph: True):
    """Register ``fn(emit)`` as the expansion of ``domain::op_type``; ``when(graph)`` limits it (e.g.
    onnxruntime's default-domain LayerNormalization in a graph below opset 17)."""
    def register(fn: Rewrite) -> Rewrite:
        for op in op_types:
            _REWRITES[(domain, op)] = (fn, when)
        return fn
    return register


def supported_rewrites() -> list[tuple[str, str]]:
    """The ``(domain, op_type)`` pairs that load rewrites into core ops."""
    return sorted(_REWRITES)


# ONNX element type codes the emitted Cast / ConstantOfShape nodes use
ONNX_CODE = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
             np.dtype(np.int64): 7, np.dtype(np.bool_): 9, np.dtype(np.float16): 10, np.dtype(np.float64): 11}


class Emit:
    """The expansion of one node under way: its inputs, attributes, static values, and the core nodes
    and initializers emitted so far (a per-node object; nothing is shared between nodes)."""

    def __init__(self, node: Node, graph: Graph, statics: dict, taken: set):
        self.node, self.graph, self.opset = node, graph, graph.opset
        self.statics, self.taken = statics, taken
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}

    # ---- reading the original node
    def input(self, i: int) -> str:
        """Input ``i`` of the original node, ``""`` when omitted."""
        return self.node.inputs[i] if i < len(self.node.inputs) else ""

    def output(self, i: int) -> str:
        """Output ``i`` of the original node, ``""`` when the graph does not use it."""
        return self.node.outputs[i] if i < len(self.node.outputs) else ""

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.node.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def static(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is known at load (an initializer or a Constant's output)."""
        return self.statics.get(name) if name else None

    def require_static(self, name: str, what: str) -> np.ndarray:
        value = self.static(name)
        if value is None:
            raise self.unsupported(f"{what} ({name!r}) must be an initializer or constant")
        return value

    def rank(self, name: str) -> int | None:
        """The rank of ``name`` if the model records it (graph inputs, value_info, statics)."""
        if name in self.statics:
            return self.statics[name].ndim
        for info in list(self.graph.inputs) + [self.graph.value_info.get(name)]:
            if info is not None and info.name == name and info.shape is not None:
                return len(info.shape)
        producer = self.graph.producer.get(name)
        if producer is None:
            return None
        if producer.op_type in ("Cast", "Identity") and not producer.domain:
            return self.rank(producer.inputs[0])
        if producer.op_type == "Transpose" and producer.attrs.get("perm"):
            return len(producer.attrs["perm"])
        if producer.op_type == "Reshape" and self.static(producer.inputs[1]) is not None:
            return int(self.static(producer.inputs[1]).size)
        if producer.op_type.startswith("Reduce") and not producer.domain:  # mask lengths: ReduceSum(mask, 1)
            rank = self.rank(producer.inputs[0])
            axes = producer.attrs.get("axes")
            if axes is None and len(producer.inputs) > 1:
                axes = self.static(producer.inputs[1])
            if rank is None or not producer.attrs.get("keepdims", 1) == 0:
                return rank
            return None if axes is None else rank - len(np.atleast_1d(axes))
        if (producer.domain, producer.op_type) in (("com.microsoft", "EmbedLayerNormalization"),
                                                   ("com.microsoft", "QEmbedLayerNormalization")):
            return {0: 3, 1: 1, 2: 3}.get(producer.outputs.index(name))  # output, mask_index, sum
        return None

    def float_type(self, *names: str) -> np.dtype:
        """The float element type of the node's data: a float static among ``names``, else the model's."""
        for n in names:
            v = self.static(n)
            if v is not None and v.dtype.kind == "f":
                return v.dtype
        return model_float(self.graph)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.node.label()} (domain {self.node.domain or 'ai.onnx'!r}): {why}")

    # ---- emitting core nodes
    def _fresh(self, stem: str) -> str:
        k = len(self.nodes) + len(self.initializers)
        name = f"{self.node.name}/{k}_{stem}"
        while name in self.taken:
            k += 1
            name = f"{self.node.name}/{k}_{stem}"
        self.taken.add(name)
        return name

    def const(self, value, dtype=None) -> str:
        """A new initializer holding ``value``."""
        name = self._fresh("const")
        self.initializers[name] = np.asarray(value, dtype=dtype)
        self.statics[name] = self.initializers[name]
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | str | tuple = 1, **attrs) -> Any:
        """Emit ``op_type(*inputs)``; ``outputs`` is a count (fresh names) or the name(s) to write."""
        name = self._fresh(op_type)
        if isinstance(outputs, int):
            outs = tuple(f"{name}:{i}" for i in range(outputs))
        else:
            outs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        self.nodes.append(Node(name, op_type, "", tuple(inputs), outs, attrs))
        return outs[0] if len(outs) == 1 else outs

    def copy(self, node: Node, inputs) -> tuple:
        """``node`` (any op and domain, attributes unchanged) reading ``inputs``, with fresh output names."""
        name = self._fresh(node.op_type)
        outs = tuple(f"{name}:{i}" if o else "" for i, o in enumerate(node.outputs))
        self.nodes.append(Node(name, node.op_type, node.domain, tuple(inputs), outs, node.attrs))
        return outs

    def to(self, value: str, out: str) -> str:
        """``value`` under the name ``out`` (an Identity when the original output is used)."""
        return self.op("Identity", value, outputs=out) if out else value

    # ---- opset-dependent spellings of core ops
    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1, outputs=1) -> str:
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.op(op_type, x, self.const(np.array(axes, np.int64)), keepdims=keepdims, outputs=outputs)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims, outputs=outputs)

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.const(np.array(axes, np.int64)))

    def squeeze(self, x: str, axes) -> str:
        return self.op("Squeeze", x, self.const(np.array(axes, np.int64)))

    def reshape(self, x: str, shape) -> str:
        return self.op("Reshape", x, self.const(np.array(shape, np.int64)))

    def slice(self, x: str, start, end, axis: int) -> str:
        return self.op("Slice", x, self.const(np.array([start], np.int64)), self.const(np.array([end], np.int64)),
                       self.const(np.array([axis], np.int64)))

    def scalar(self, value, like: str = "", dtype=None) -> str:
        """A float scalar constant in the data's float type (``like`` is a static that tells it)."""
        return self.const(value, dtype or self.float_type(like))

    def cast(self, x: str, dtype) -> str:
        return self.op("Cast", x, to=ONNX_CODE[np.dtype(dtype)])


def model_float(graph: Graph) -> np.dtype:
    """The model's float type: its first float graph input's, else its most common float initializer's."""
    for v in graph.inputs:
        if v.dtype is not None and v.dtype.kind == "f":
            return v.dtype
    counts: dict[np.dtype, int] = {}
    for v in graph.initializers.values():
        if v.dtype.kind == "f":
            counts[v.dtype] = counts.get(v.dtype, 0) + 1
    return max(counts, key=counts.get) if counts else np.dtype(np.float32)


def _statics(graph: Graph) -> dict:
    values = dict(graph.initializers)
    for n in graph.nodes:
        if n.op_type == "Constant" and not n.domain and isinstance(n.attrs.get("value"), np.ndarray):
            values[n.outputs[0]] = n.attrs["value"]
    return values


def canonicalize(graph: Graph) -> Graph:
    """Rewrite every node that has a registered rewrite into core ops; other nodes stay as they are.

    Returns ``graph`` itself when nothing needs rewriting. Raises :class:`UnsupportedOpError` naming
    the node when an attribute or input combination of a rewritten op is not supported.
    """
    todo = [n for n in graph.nodes if (n.domain, n.op_type) in _REWRITES and _REWRITES[(n.domain, n.op_type)][1](graph)]
    if not todo:
        return graph
    statics = _statics(graph)
    taken = set(graph.initializers) | {n.name for n in graph.nodes} | {o for n in graph.nodes for o in n.outputs}
    taken |= set(graph.input_names)
    nodes, initializers, expansions = [], dict(graph.initializers), dict(graph.expansions)
    rewritten = {n.name for n in todo}  # node names are unique (onnx_import makes them so)
    for node in graph.nodes:
        if node.name not in rewritten:
            nodes.append(node)
            continue
        emit = Emit(node, graph, statics, taken)
        try:
            if _REWRITES[(node.domain, node.op_type)][0](emit) is False:  # the rewrite does not apply here
                nodes.append(node)
                continue
        except ReflrpError:
            raise
        except Exception as exc:  # a rewrite that trips over unexpected input: name the node
            raise UnsupportedOpError(f"{node.label()}: cannot rewrite into core ops: {type(exc).__name__}: {exc}") from None
        nodes.extend(emit.nodes)
        initializers.update(emit.initializers)
        expansions[node.name] = Expansion(node, tuple(n.name for n in emit.nodes))
    return Graph.build(nodes, graph.inputs, graph.outputs, initializers, graph.opset, graph.metadata,
                       graph.opsets, expansions, graph.value_info, graph.defaults, graph.outer)


from . import activations, attention, control, linear, norms, qoperator, qtransformer  # noqa: E402,F401  (registration side effects)
