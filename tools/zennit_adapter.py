"""Zennit 1.0 adapters for the LRP conformance suite (docs/conformance.md). They need torch and zennit.

    reflrp conformance run SUITE --backend tools/zennit_adapter.py:absorbed   # Epsilon() as Zennit's default
    reflrp conformance run SUITE --backend tools/zennit_adapter.py:zeroed     # Epsilon(zero_params=['bias'])

Zennit attaches rules to layers, so a node case is rebuilt in torch (tools/onnx_torch.py) with every node
whose rule is epsilon as the layer it stands for (MatMul / Gemm with a constant weight: ``nn.Linear``;
Conv: ``nn.Conv1d/2d``), each node with the identity rule as a module with Zennit's ``Pass`` hook, and
data movement as plain functions (Zennit leaves those to autograd, which is the route rule).
``zennit.attribution.Gradient`` then takes the case's upstream relevance as ``attr_output``. The
conventions are Zennit's: ``stabilizer=sign``, and the seed of 1. Other rules (and epsilon on sums or
reductions, which Zennit has no layer for) are unsupported. The classic rules join when their cases do.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_torch import CaseGraph, attributes, constants, dynamic_inputs, op_fn, run_graph, with_arg  # noqa: E402
from reflrp.conformance import Unsupported  # noqa: E402

RULES = ("epsilon", "identity", "route")
LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def _zennit():
    from torch_common import import_lxt
    import_lxt()  # transformers, then the torchvision stand-in zennit needs
    import zennit.attribution
    import zennit.composites
    import zennit.rules
    return zennit


def _filled(layer, W, b):
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b)
    return layer


def linear_layer(node, consts):
    """MatMul(x, W) or Gemm(x, B[, C]) (no transA, alpha = beta = 1) with constant weights as an ``nn.Linear``."""
    a = attributes(node)
    if node.op_type == "MatMul" and node.input[1] in consts and consts[node.input[1]].dim() == 2:
        W, b = consts[node.input[1]].T, None
    elif node.op_type == "Gemm" and node.input[1] in consts and not a.get("transA", 0) \
            and a.get("alpha", 1.0) == a.get("beta", 1.0) == 1.0:
        W = consts[node.input[1]] if a.get("transB", 0) else consts[node.input[1]].T
        b = consts.get(node.input[2]) if len(node.input) > 2 else None
        if b is not None and tuple(b.shape) != (W.shape[0],):
            return None
    else:
        return None
    return _filled(torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None).double(), W, b)


def conv_layer(node, consts):
    """Conv with a constant weight and symmetric pads as an ``nn.Conv1d`` / ``nn.Conv2d``."""
    a = attributes(node)
    W = consts.get(node.input[1])
    d = W.dim() - 2 if W is not None else 0
    pads = list(a.get("pads", [0] * 2 * d))
    if d not in (1, 2) or pads[:d] != pads[d:]:
        return None
    b = consts.get(node.input[2]) if len(node.input) > 2 else None
    cls = torch.nn.Conv1d if d == 1 else torch.nn.Conv2d
    layer = cls(W.shape[1] * a.get("group", 1), W.shape[0], tuple(W.shape[2:]), stride=a.get("strides", [1] * d),
                padding=pads[:d], dilation=a.get("dilations", [1] * d), groups=a.get("group", 1), bias=b is not None)
    return _filled(layer.double(), W, b)


class Elementwise(torch.nn.Module):
    """An elementwise function of one input, as a module Zennit's ``Pass`` rule can attach to."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t):
        return self.f(t)


class Net(torch.nn.Module):
    """A node case's graph as a module of its one input, its layers in place of their nodes."""

    def __init__(self, g: CaseGraph, layers: dict):
        super().__init__()
        self.g = g
        self.layers = torch.nn.ModuleDict({_key(k): v for k, v in layers.items()})

    def forward(self, x):
        g = self.g

        def apply(node, fn, args, env):
            if _key(node.name) not in self.layers:
                return fn(*args)
            i = next(j for j, d in enumerate(g.spec(node)["dynamic"]) if d)
            return (self.layers[_key(node.name)](args[i]),)
        return run_graph(g.model, {g.case.relevance_of[0]: x}, apply)[g.case.output]


def _key(name: str) -> str:
    return name.replace(".", "_")


def case_layers(g: CaseGraph) -> dict:
    """The module of every node with a rule of its own: a layer (epsilon), an elementwise module (identity)."""
    consts = constants(g.model)
    layers = {}
    for node in g.model.graph.node:
        spec = g.spec(node)
        if spec["rule"] == "epsilon":
            build = {"MatMul": linear_layer, "Gemm": linear_layer, "Conv": conv_layer}.get(node.op_type)
            layer = build(node, consts) if build else None
            if layer is None:
                raise Unsupported(f"{node.op_type} {node.name!r} is no Zennit layer (a linear map with constant "
                                  "weights)")
            layers[node.name] = layer
        elif spec["rule"] == "identity":
            (i,) = dynamic_inputs(spec, list(node.input))
            fn, args = op_fn(node), [consts.get(n) for n in node.input]
            layers[node.name] = Elementwise(lambda t, fn=fn, args=args, i=i: fn(*with_arg(args, i, t))[0])
    return layers


class Zennit:
    """Zennit's Epsilon (layers) and Pass (elementwise functions) on a node case."""

    def __init__(self, zero_bias: bool):
        self.zero_params = ["bias"] if zero_bias else None
        self.conventions = {"stabilizer": "sign", "seed": "one", "bias": "zeroed" if zero_bias else "absorbed"}

    def __call__(self, case) -> dict:
        if case.kind == "model":
            raise Unsupported("the zoo's transformers: Zennit has no rules for attention and norms")
        used = {n["rule"] for n in case.nodes if n["rule"]}
        if not used <= set(RULES) or len(case.inputs) != 1:
            raise Unsupported(f"rules {sorted(used)} on {len(case.inputs)} inputs: Zennit has layers for "
                              "epsilon / identity on one input")
        zennit = _zennit()
        g = CaseGraph(case)
        net = Net(g, case_layers(g))
        composite = zennit.composites.LayerMapComposite([
            (LAYERS, zennit.rules.Epsilon(epsilon=g.eps, zero_params=self.zero_params)),
            ((Elementwise,), zennit.rules.Pass())])
        (name, x), = case.inputs.items()
        x = torch.tensor(x, requires_grad=True)
        with zennit.attribution.Gradient(model=net, composite=composite) as attributor:
            _, relevance = attributor(x, torch.from_numpy(case.relevance_out))
        return {name: relevance.detach().numpy()}


absorbed = Zennit(zero_bias=False)
zeroed = Zennit(zero_bias=True)
