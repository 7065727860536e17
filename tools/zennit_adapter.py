"""Zennit 1.0 adapters for the LRP conformance suite (docs/conformance.md). They need torch and zennit.

    reflrp conformance run SUITE --backend tools/zennit_adapter.py:absorbed   # Epsilon() as Zennit's default
    reflrp conformance run SUITE --backend tools/zennit_adapter.py:zeroed     # Epsilon(zero_params=['bias'])
    reflrp conformance run SUITE --backend tools/zennit_adapter.py:logit      # absorbed, seeded with the logit

Zennit attaches rules to modules, so a node case is rebuilt in torch (tools/onnx_torch.py) with every node
that has a rule as the module it stands for: Conv / ConvTranspose as ``nn.Conv1d/2d`` /
``nn.ConvTranspose1d/2d``; Gemm, MatMul with a constant 2-D weight, and MatMul + its bias Add as one
``nn.Linear`` (a Gemm's alpha and beta folded into its weight and bias, a weight-first MatMul as the
Linear on the transposed input); a BatchNormalization as ``nn.BatchNorm1d/2d`` (merged into its layer by
Zennit's ``SequentialMergeBatchNorm`` where the case names the ``merge-batchnorm`` canonizer, otherwise
given ``Pass``); average pooling as ``nn.AvgPool2d`` / ``nn.AdaptiveAvgPool2d``; a sum of dynamic tensors as
Zennit's ``layer.Sum`` over the stacked summands (what its ResNet canonizer makes of a residual add); an
activation or identity node as a module with ``Pass``. Data movement stays plain autograd (the route
rule). Each module gets the Zennit rule of its node's rule with the case's parameters
(``zero_bias`` -> ``zero_params=['bias']``) through a ``NameMapComposite``; the upstream relevance is
the gradient at the output and the input relevance is the gradient at the inputs, as
``zennit.attribution.Gradient`` computes them.

Model cases of the Zennit fixtures (models/zennit) rebuild the fixture's torch model from
tools/zennit_models.py (for an exporter-folded file with the file's Conv weights, as the goldens) and run
Zennit's composite class of the case's preset with its options and canonizers. Other rules (AttnLRP's,
epsilon on sums or reductions) and the zoo's transformers are unsupported.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_torch import CaseGraph, attributes, constants, dynamic_inputs, op_fn, run_graph, with_arg  # noqa: E402
from reflrp.conformance import Unsupported  # noqa: E402

LAYER_RULES = {"epsilon": "Epsilon", "zplus": "ZPlus", "alpha-beta": "AlphaBeta", "gamma": "Gamma", "flat": "Flat",
               "wsquare": "WSquare", "zbox": "ZBox"}
RULES = (*LAYER_RULES, "identity", "pass", "norm", "route")
COMPOSITES = {"epsilon-plus": "EpsilonPlus", "epsilon-plus-flat": "EpsilonPlusFlat",
              "epsilon-gamma-box": "EpsilonGammaBox", "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1",
              "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat"}


def _zennit():
    import transformers  # noqa: F401  (before the torchvision stand-in, as tools/torch_common.py does)
    import zennit_models
    zennit_models.install_torchvision_standin()  # its BasicBlock is the fixtures' (Zennit's ResNet canonizer)
    import zennit.attribution
    import zennit.canonizers
    import zennit.composites
    import zennit.layer
    import zennit.rules
    import zennit.torchvision
    return zennit


# ---------------------------------------------------------------------------------------------- modules

def _filled(layer, W, b):
    """``layer`` in float64 (before the copy: a float32 parameter would round the weights) holding W, b."""
    layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b.reshape(-1))
    return layer


class Around(torch.nn.Module):
    """A module whose rule sits on ``inner``, with plain functions before and after it (a transposition,
    stacking the summands of a sum, dropping the pooled axes)."""

    def __init__(self, inner, before=None, after=None):
        super().__init__()
        self.inner, self.before, self.after = inner, before, after

    def forward(self, *ts):
        t = self.before(*ts) if self.before else ts[0]
        t = self.inner(t)
        return self.after(t) if self.after else t


class Elementwise(torch.nn.Module):
    """An elementwise function of one input, as a module Zennit's ``Pass`` rule can attach to."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t):
        return self.f(t)


def _transposed(t):
    return t.transpose(-1, -2)


def linear_layer(node, consts, bias_add=None):
    """Gemm(x, B[, C]) (no transA; alpha, beta folded), MatMul(x, W) or MatMul(W, x) with a constant 2-D
    weight, as an ``nn.Linear``; ``bias_add``: the constant of the Add that completes the layer."""
    a = attributes(node)
    if node.op_type == "Gemm" and node.input[1] in consts and not a.get("transA", 0):
        B = consts[node.input[1]]
        W = a.get("alpha", 1.0) * (B if a.get("transB", 0) else B.T)
        C = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = None if C is None else a.get("beta", 1.0) * torch.broadcast_to(C, (1, W.shape[0]))
        first = False
    elif node.op_type == "MatMul" and any(i in consts and consts[i].dim() == 2 for i in node.input[:2]):
        first = node.input[0] in consts
        W, b = (consts[node.input[0]] if first else consts[node.input[1]].T), None
    else:
        return None
    if bias_add is not None:
        b = (0 if b is None else b) + torch.broadcast_to(bias_add, (1, W.shape[0]))
    layer = _filled(torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None), W, b)
    return Around(layer, _transposed, _transposed) if first else layer


def conv_layer(node, consts):
    """Conv / ConvTranspose with a constant weight and symmetric pads as ``nn.Conv1d/2d`` /
    ``nn.ConvTranspose1d/2d``."""
    a = attributes(node)
    W = consts.get(node.input[1])
    d = W.dim() - 2 if W is not None else 0
    pads = list(a.get("pads", [0] * 2 * d))
    if d not in (1, 2) or pads[:d] != pads[d:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    b = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    g = a.get("group", 1)
    kw = dict(stride=a.get("strides", [1] * d), padding=pads[:d], dilation=a.get("dilations", [1] * d), groups=g,
              bias=b is not None)
    if node.op_type == "Conv":
        layer = (torch.nn.Conv1d, torch.nn.Conv2d)[d - 1](W.shape[1] * g, W.shape[0], tuple(W.shape[2:]), **kw)
    else:
        if "output_shape" in a:
            return None
        layer = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)[d - 1](
            W.shape[0], W.shape[1] * g, tuple(W.shape[2:]), output_padding=a.get("output_padding", [0] * d), **kw)
    return _filled(layer, W, b)


def batchnorm_module(node, consts, rank: int):
    s, t, m, v = (consts[i] for i in node.input[1:5])
    bn = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)[rank - 3 if rank > 2 else 0](len(s), eps=attributes(node).get(
        "epsilon", 1e-5)).double().eval()
    with torch.no_grad():
        bn.weight.copy_(s), bn.bias.copy_(t), bn.running_mean.copy_(m), bn.running_var.copy_(v)
    return bn


def pool_module(node, rank: int):
    """AveragePool / GlobalAveragePool / ReduceMean over the spatial axes as Zennit's AvgPool types."""
    a = attributes(node)
    if node.op_type == "AveragePool" and rank == 4 and list(a.get("pads", [0] * 4)[:2]) == list(a.get("pads",
                                                                                                   [0] * 4)[2:]):
        return torch.nn.AvgPool2d(a["kernel_shape"], a.get("strides", 1), a.get("pads", [0] * 4)[:2],
                                  bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
    if node.op_type == "GlobalAveragePool" and rank == 4:
        return torch.nn.AdaptiveAvgPool2d(1)
    return None


def _reducemean_spatial(node, consts, rank: int):
    axes = consts.get(node.input[1]) if len(node.input) > 1 else None
    if rank != 4 or axes is None or sorted(int(v) % 4 for v in axes) != [2, 3]:
        return None
    keep = attributes(node).get("keepdims", 1)
    return Around(torch.nn.AdaptiveAvgPool2d(1), after=None if keep else (lambda t: t.flatten(1)))


def _stacked(*ts):
    return torch.stack(torch.broadcast_tensors(*ts), dim=-1)


# ---------------------------------------------------------------------------------------------- node cases

class Net(torch.nn.Module):
    """A node case's graph as a module of its inputs, its modules in place of their nodes."""

    def __init__(self, g: CaseGraph, modules: dict, skip: dict):
        super().__init__()
        self.g, self.skip = g, skip
        self.layers = torch.nn.ModuleDict({_key(k): v for k, v in modules.items()})

    def forward(self, *xs):
        g = self.g

        def apply(node, fn, args, env):
            dyn = dynamic_inputs(g.spec(node), args) or [0]  # a node reflrp folded away: its data input
            if node.name in self.skip:  # the bias Add of a two-node layer: its Linear added the bias
                return (args[list(node.input).index(self.skip[node.name])],)
            if _key(node.name) not in self.layers:
                return fn(*args)
            module = self.layers[_key(node.name)]
            if isinstance(module, Around) and module.before is _stacked:
                return (module(*[args[i] for i in dyn]),)
            return (module(args[dyn[0]]),)
        return run_graph(g.model, dict(zip(g.case.relevance_of, xs)), apply)[g.case.output]


def _key(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def case_modules(g: CaseGraph, canonizers, ranks: dict) -> tuple[dict, dict, dict]:
    """(node name -> module, each bias Add folded into its Linear -> the product's output, node name -> rule);
    ``ranks``: the rank of every tensor of the graph."""
    consts, nodes = constants(g.model), {n.name: n for n in g.model.graph.node}
    modules, skip, rules = {}, {}, {}
    for node in g.model.graph.node:
        spec = g.spec(node)
        rule, facts = spec["rule"], spec["facts"]
        rank = ranks[node.input[0]]
        module = None
        if rule in LAYER_RULES:
            if "layer_product" in facts:  # MatMul / Gemm + bias Add: one Linear at the product
                product = nodes[facts["layer_product"]]
                bias = next(consts[i] for i in node.input if i in consts)
                modules[product.name] = linear_layer(product, consts, bias)
                if modules[product.name] is None:
                    raise Unsupported(f"{product.op_type} {product.name!r} + {node.name!r} is no Zennit layer")
                skip[node.name] = product.output[0]
                rules[product.name] = rule
                continue
            module = (conv_layer if node.op_type in ("Conv", "ConvTranspose") else linear_layer)(node, consts)
        elif rule in ("identity", "pass"):
            if node.op_type == "BatchNormalization":
                module = batchnorm_module(node, consts, rank)
            else:
                (i,) = dynamic_inputs(spec, list(node.input))
                fn, args = op_fn(node), [consts.get(n) for n in node.input]
                module = Elementwise(lambda t, fn=fn, args=args, i=i: fn(*with_arg(args, i, t))[0])
        elif rule == "norm":
            if node.op_type in ("Add", "Sum") and all(i not in consts for i in node.input):
                module = Around(_zennit().layer.Sum(dim=-1), before=_stacked)
            elif node.op_type == "ReduceMean":
                module = _reducemean_spatial(node, consts, rank)
            else:
                module = pool_module(node, rank)
        elif rule is None and node.op_type == "BatchNormalization" and "merge-batchnorm" in canonizers:
            module, rule = batchnorm_module(node, consts, rank), "pass"  # merged by the canonizer, then Pass
        elif rule in (None, "route"):
            continue
        if module is None:
            raise Unsupported(f"{node.op_type} {node.name!r} with rule {rule!r} is no Zennit module")
        modules[node.name], rules[node.name] = module, rule
    return modules, skip, rules


def zennit_rule(rule: str, case, default_zero_bias: bool):
    """The ``zennit.rules`` instance for ``rule`` with the case's parameters (the rule under test's spec)."""
    zr = _zennit().rules
    p = case.rule if case.rule["name"] == rule else {}
    if rule in ("identity", "pass"):
        return zr.Pass()
    if rule == "norm":
        return zr.Norm(stabilizer=p["stabilizer"])
    zero = ["bias"] if p.get("zero_bias", default_zero_bias) else None
    if rule == "epsilon":
        return zr.Epsilon(epsilon=float(p.get("epsilon") or 0.0), zero_params=zero)
    kw = {k: p[k] for k in ("alpha", "beta", "gamma", "stabilizer") if k in p}
    if rule == "zbox":
        kw.update({k: torch.tensor(p[k], dtype=torch.float64) if isinstance(p[k], list) else p[k]
                   for k in ("low", "high")})
    return getattr(zr, LAYER_RULES[rule])(**kw, zero_params=zero)


def node_case(case, default_zero_bias: bool) -> dict:
    zennit = _zennit()
    used = {n["rule"] for n in case.nodes if n["rule"]}
    if not used <= set(RULES):
        raise Unsupported(f"rules {sorted(used)}: Zennit has modules for {', '.join(RULES)}")
    g = CaseGraph(case)
    env = run_graph(g.model, {n: torch.from_numpy(v) for n, v in case.inputs.items()})
    ranks = {k: v.dim() for k, v in env.items() if isinstance(v, torch.Tensor)}
    modules, skip, rules = case_modules(g, case.canonizers, ranks)
    net = Net(g, modules, skip)
    names = dict(net.named_modules())
    name_map = []
    for node, rule in rules.items():
        prefix = f"layers.{_key(node)}"
        target = prefix + ".inner" if prefix + ".inner" in names else prefix
        name_map.append(((target,), zennit_rule(rule, case, default_zero_bias)))
    canonizers = [zennit.canonizers.SequentialMergeBatchNorm()] if "merge-batchnorm" in case.canonizers else []
    composite = zennit.composites.NameMapComposite(name_map, canonizers=canonizers)
    xs = [torch.tensor(case.inputs[n], requires_grad=True) for n in case.relevance_of]
    with composite.context(net):  # zennit.attribution.Gradient, for several inputs
        y = net(*xs)
        grads = torch.autograd.grad(y, xs, torch.from_numpy(case.relevance_out), allow_unused=True)
    return {n: np.zeros(x.shape) if gr is None else gr.detach().numpy() for n, x, gr in zip(case.relevance_of, xs,
                                                                                            grads)}


# ---------------------------------------------------------------------------------------------- model cases

def fixture_model(case):
    """The float64 torch model of a Zennit fixture, as tools/make_zennit_goldens.py builds it."""
    import onnx
    import zennit_models as zm
    from make_zennit_goldens import float64_model, load_exporter_folded
    torch.manual_seed(0)
    model32, _ = zm.build(case.meta["golden"][:-len(".zennit.npz")])
    if case.meta["fixture"].endswith("exporter_folded"):
        load_exporter_folded(model32, onnx.load(str(case.model_path)))
    return float64_model(model32)


def zennit_composite(case):
    """Zennit's composite class of the case's preset, with the options and canonizers of the case."""
    zennit = _zennit()
    kw = {}
    for k, v in case.rule["options"].items():
        if k == "zero_bias":
            kw["zero_params"] = ["bias"] if v else None
        else:
            kw[k] = torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v
    canonizers = case.canonizers
    if "residual-sum" in canonizers:
        canon = [zennit.torchvision.ResNetCanonizer()]
    else:
        canon = [zennit.canonizers.SequentialMergeBatchNorm()] if "merge-batchnorm" in canonizers else []
    return getattr(zennit.composites, COMPOSITES[case.rule["preset"]])(**kw, canonizers=canon)


def model_case(case) -> dict:
    if case.rule["preset"] == "cp-lrp-gamma":
        raise Unsupported("LXT's ViT recipe: Zennit's Gamma inside LXT's patched ViT (tools/lxt_adapter.py)")
    if "fixture" not in case.meta or case.rule["preset"] not in COMPOSITES:
        raise Unsupported("the zoo's transformers: Zennit has no rules for attention and norms")
    zennit = _zennit()
    model = copy.deepcopy(fixture_model(case))
    (name, x), = case.inputs.items()
    with zennit.attribution.Gradient(model=model, composite=zennit_composite(case)) as attributor:
        _, relevance = attributor(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(case.relevance_out))
    return {name: relevance.detach().numpy()}


class Zennit:
    """Zennit's rules on a node case's modules; its composites on the Zennit fixtures."""

    def __init__(self, zero_bias: bool, seed: str = "one"):
        self.zero_bias = zero_bias  # for the epsilon cases that leave it to the backend's bias convention
        self.conventions = {"stabilizer": "sign", "seed": seed, "bias": "zeroed" if zero_bias else "absorbed"}

    def __call__(self, case) -> dict:
        torch.set_num_threads(1)
        if case.kind == "model":
            return model_case(case)
        return node_case(case, self.zero_bias)


absorbed = Zennit(zero_bias=False)
zeroed = Zennit(zero_bias=True)
logit = Zennit(zero_bias=False, seed="logit")
