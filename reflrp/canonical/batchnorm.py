"""BatchNormalization folded into the Conv / ConvTranspose / Gemm that feeds it (Zennit's MergeBatchNorm),
an opt-in rewrite: ``reflrp.load(path, fold_batchnorm=True)``.

An inference BatchNorm ``y = (x - mean) s + B`` with ``s = scale / sqrt(var + epsilon)`` after a layer
``x = W a + b`` is the one layer ``y = W' a + b'`` with

    W' = W * s      (per output channel: axis 0 of a Conv weight, axis 1 of a ConvTranspose weight,
                     the output-feature axis of a Gemm weight)
    b' = (b - mean) * s + B      (b = 0 when the layer has no bias)

The fold is emitted as nodes over the constants, in this order of operations, so that it is computed
when the forward is prepared, in the precision of the run: in float64 it is Zennit's float64 merge
(``model.double()`` then the canonizer), operation for operation, with epsilon as the decimal the
float32 attribute was written from (see ``_epsilon``); the folded layer keeps the layer's node name.
A BatchNorm is folded only where its input comes from such a layer with constant weight and bias,
read by nothing else (a BatchNorm after an activation or at the input stays, as in Zennit).
"""
from __future__ import annotations

import numpy as np

from ..graph import Expansion, Graph, Node
from . import Emit, _statics

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def _foldable_into(graph: Graph, bn: Node, statics: dict) -> Node | None:
    """The layer ``bn`` can be folded into, or None."""
    if bn.op_type != "BatchNormalization" or bn.domain or bn.attrs.get("training_mode", 0):
        return None
    if any(o for o in bn.outputs[1:]) or not all(i in statics for i in bn.inputs[1:5]):
        return None
    layer = graph.producer.get(bn.inputs[0])
    if layer is None or layer.domain or layer.op_type not in FOLDABLE:
        return None
    out = layer.outputs[0]
    if len(graph.consumers.get(out, ())) != 1 or out in graph.output_names:
        return None
    if layer.op_type == "Gemm":
        if layer.attrs.get("alpha", 1.0) != 1.0 or layer.attrs.get("beta", 1.0) != 1.0:
            return None
    if layer.op_type == "ConvTranspose" and layer.attrs.get("group", 1) != 1:
        return None  # a grouped ConvTranspose weight has only C_out / group columns per group
    params = [i for i in layer.inputs[1:3] if i]
    return layer if all(p in statics for p in params) else None


def _channel_shape(layer: Node, weight_rank: int) -> list[int]:
    """The shape that puts a per-channel vector on the weight's output-channel axis."""
    if layer.op_type == "Conv":
        return [-1] + [1] * (weight_rank - 1)
    if layer.op_type == "ConvTranspose":
        return [1, -1] + [1] * (weight_rank - 2)
    return [-1, 1] if layer.attrs.get("transB", 0) else [1, -1]


def _epsilon(e: Emit, var: str) -> str:
    """BatchNorm's epsilon as the decimal it was written from: ONNX stores the attribute as a float32
    (1e-5 becomes 9.99999974738e-06); its shortest decimal (1e-05) is what torch's float64 model adds.
    A float64 constant cast to the statistics' type: in a float64 run (which upcasts casts) it stays
    that decimal, in the model's own types it is the float32 attribute again."""
    exact = float(str(np.float32(e.attr("epsilon", 1e-5))))
    return e.cast(e.const(exact, np.float64), e.statics[var].dtype)


def _fold(e: Emit, layer: Node) -> Node:
    """Emit the folded weight and bias; return the layer that reads them and writes the BatchNorm's output."""
    x, scale, shift, mean, var = e.node.inputs[:5]
    weight = layer.inputs[1]
    bias = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2] else ""
    s = e.op("Div", scale, e.op("Sqrt", e.op("Add", var, _epsilon(e, var))))
    w = e.op("Mul", weight, e.reshape(s, _channel_shape(layer, e.statics[weight].ndim)))
    centred = e.op("Sub", bias, mean) if bias else e.op("Neg", mean)
    b = e.op("Add", e.op("Mul", centred, s), shift)
    return Node(layer.name, layer.op_type, "", (layer.inputs[0], w, b), (e.node.outputs[0],), layer.attrs)


def fold_batchnorm(graph: Graph) -> Graph:
    """``graph`` with every foldable BatchNormalization merged into its layer (``graph`` itself if none)."""
    statics = _statics(graph)
    pairs = {}
    for node in graph.nodes:
        layer = _foldable_into(graph, node, statics)
        if layer is not None:
            pairs[layer.name] = node
    if not pairs:
        return graph
    taken = set(graph.initializers) | set(graph.input_names) | {n.name for n in graph.nodes}
    taken |= {o for n in graph.nodes for o in n.outputs}
    folded_bn = {bn.name for bn in pairs.values()}
    nodes, initializers, expansions = [], dict(graph.initializers), dict(graph.expansions)
    for node in graph.nodes:
        if node.name in folded_bn:
            continue
        bn = pairs.get(node.name)
        if bn is None:
            nodes.append(node)
            continue
        e = Emit(bn, graph, statics, taken)
        merged = _fold(e, node)
        nodes.extend(e.nodes + [merged])
        initializers.update(e.initializers)
        expansions[bn.name] = Expansion(bn, tuple(n.name for n in e.nodes) + (merged.name,))
    return Graph.build(nodes, graph.inputs, graph.outputs, initializers, graph.opset, graph.metadata,
                       graph.opsets, expansions, graph.value_info, graph.defaults)
