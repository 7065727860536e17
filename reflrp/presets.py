"""Named presets: which rule each node *role* gets, the default epsilon, and how the pass is seeded.

The analysis (reflrp.analysis) gives every node a role from its op's kind and the graph around it;
a preset maps roles to rules (reflrp.rules). Roles:

================ ==============================================================================
role             nodes
================ ==============================================================================
activation       elementwise function of one dynamic input (activations, Cast, Mul/Div by a constant)
linear           linear in its one dynamic input (MatMul/Gemm/Conv with a constant weight, Add/Sub/
                 Sum, reductions, pooling, BatchNorm)
bilinear         a contraction of two or more dynamic operands (``Q @ K^T``)
attention-values ``A @ V`` whose first operand comes from a Softmax
gate             elementwise product of an activation output and another dynamic factor
product          any other elementwise product of dynamic factors
normalizer       Mul/Div whose one operand depends on the other only through a reduction
region           the end of an elementwise region (SiLU, GELU): identity to its source
move             data movement (Reshape, Transpose, Slice, Gather, Concat, ...)
select           Where, Max, Min, MaxPool, ReduceMax: each output element is one input element
layernorm        LayerNormalization; rmsnorm: RMSNormalization
softmax          Softmax
attention        the fused Attention op; rotary: the fused RotaryEmbedding op
nonlinear        ops with a gradient but no relevance rule (LogSoftmax, ReduceL2, ...)
================ ==============================================================================

- ``attnlrp``: AttnLRP (Achtibat et al., ICML 2024), equal to LXT 2.1 efficient mode; epsilon 0.
- ``cp-lrp``: CP-LRP (Ali et al., ICML 2022): attention weights and gates held constant.
- ``epsilon``: classic LRP-epsilon (1e-6) on every linear map and sum, identity on every elementwise
  function including the softmax; products of dynamic tensors and the norms keep attnlrp's rules.
- ``gradient``: the plain gradient of the target logit (seed 1); ``grad-x-input``: that gradient
  times the attributed input.

Composites (Zennit 1.0.0's, docs/rules.md) add a **type map** to a role map: layer types
(:data:`LAYER_TYPES`, Zennit's module types read off the graph) -> rule, the first matching entry
winning, as Zennit's ``LayerMapComposite``; a **first-layer map** gives the first layer of a type its
own rule (``SpecialFirstLayerMapComposite``). Nodes no entry matches keep the role map's rule. Name
maps are ``rules=`` (by node name, glob or regex, or op type), which come before both.

- ``epsilon-plus``, ``epsilon-plus-flat``, ``epsilon-gamma-box``, ``epsilon-alpha2-beta1``,
  ``epsilon-alpha2-beta1-flat``: Zennit's composites of those names, over the ``epsilon`` role map.
- ``cp-lrp-gamma``: LXT's vision-transformer recipe: ``cp-lrp`` with Gamma on every conv and dense layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

ROLES = ("activation", "linear", "bilinear", "attention-values", "gate", "product", "normalizer", "region", "move",
         "select", "layernorm", "rmsnorm", "softmax", "attention", "rotary", "nonlinear")


# layer types (Zennit's module types as the graph shows them): conv = Conv / ConvTranspose, dense = Gemm /
# MatMul (each with a constant weight; Zennit's torch.nn.Linear), avgpool = AveragePool, GlobalAveragePool,
# ReduceMean, sum = an Add / Sum of dynamic tensors only (the residual Sum of Zennit's ResNet canonizer),
# batchnorm = a BatchNormalization left in the graph, activation = an elementwise function of one
# dynamic input (or an elementwise region such as GELU). ("conv", "dense") is Zennit's types.Linear.
LAYER_TYPES = ("conv", "dense", "avgpool", "sum", "batchnorm", "activation")


@dataclass(frozen=True)
class LayerRule:
    """One entry of a type map: the layer types it matches, the rule, and parameters fixed for it."""

    types: tuple[str, ...]
    rule: str
    params: Mapping = field(default_factory=dict)

    def matches(self, layer_type: str | None) -> bool:
        return layer_type in self.types


@dataclass(frozen=True)
class Preset:
    """``roles``: role -> rule. ``structure``: look for regions, normalizers and gates (off for
    gradients: every node is differentiated on its own). ``seed``: ``"logit"`` starts from the target
    logit's value (LRP), ``"one"`` from 1 (gradients). ``times_input``: multiply the result by the
    attributed tensor at the end (gradient x input). ``layers``: the type map (first match wins),
    ``first``: the first-layer map, ``params``: default rule parameters (``options=`` override them)."""

    name: str
    roles: Mapping[str, str]
    epsilon: float = 0.0
    structure: bool = True
    seed: str = "logit"
    times_input: bool = False
    conserving: bool = True  # the books (conservation report) mean something
    doc: str = field(default="", compare=False)
    layers: tuple[LayerRule, ...] = ()
    first: tuple[LayerRule, ...] = ()
    params: Mapping = field(default_factory=dict)


_ATTNLRP = {
    "activation": "identity", "linear": "epsilon", "bilinear": "bilinear-uniform",
    "attention-values": "bilinear-uniform", "gate": "gate-uniform", "product": "gate-uniform",
    "normalizer": "normalizer", "region": "region", "move": "route", "select": "route", "layernorm": "layernorm",
    "rmsnorm": "identity", "softmax": "softmax", "attention": "attention", "rotary": "rotary",
}
_GRADIENT = {role: "gradient" for role in ROLES}


def _preset(name, roles, **kw) -> Preset:
    return Preset(name, MappingProxyType(dict(roles)), **kw)


def _entries(entries) -> tuple[LayerRule, ...]:
    """``(types, rule)`` or ``(types, rule, params)`` tuples as :class:`LayerRule` (types: one or a tuple)."""
    out = []
    for e in entries:
        if isinstance(e, LayerRule):
            out.append(e)
            continue
        types, rule_name, params = (tuple(e) + ({},))[:3]
        out.append(LayerRule((types,) if isinstance(types, str) else tuple(types), rule_name,
                             MappingProxyType(dict(params))))
    return tuple(out)


def composite(name: str, layers: Sequence = (), first: Sequence = (), base: str = "epsilon",
              params: Mapping | None = None) -> Preset:
    """A composite preset: the role map of preset ``base`` with a type map ``layers`` and a first-layer
    map ``first``, each a list of ``(layer type or tuple of types, rule[, params])`` (see
    :data:`LAYER_TYPES`); ``params`` are default rule parameters. Checked where it is used
    (``explain`` / ``plan``): unknown types, rules or parameters are errors there."""
    from .options import check_composite, preset
    b = preset(base)
    made = Preset(name, b.roles, b.epsilon, b.structure, b.seed, b.times_input, b.conserving, "",
                  _entries(layers), _entries(first), MappingProxyType(dict(b.params) | dict(params or {})))
    check_composite(made)
    return made


# Zennit's layer_map_base: Pass on activations and BatchNorm, Norm on the Sum and on average pooling
_ZENNIT_BASE = [("activation", "pass"), ("sum", "norm"), ("avgpool", "norm"), ("batchnorm", "pass")]


def _zennit(name: str, conv_rule, first=()) -> Preset:
    """A Zennit composite: layer_map_base, ``conv_rule`` on conv layers, epsilon on dense layers."""
    return composite(name, _ZENNIT_BASE + [("conv",) + tuple(conv_rule), ("dense", "epsilon")], first)


PRESETS = {
    "attnlrp": _preset("attnlrp", _ATTNLRP),
    "cp-lrp": _preset("cp-lrp", {**_ATTNLRP, "attention-values": "bilinear-cp", "gate": "gate-up",
                                 "attention": "attention-cp"}),
    "epsilon": _preset("epsilon", {**_ATTNLRP, "softmax": "identity"}, epsilon=1e-6),
    "gradient": _preset("gradient", _GRADIENT, structure=False, seed="one", conserving=False),
    "grad-x-input": _preset("grad-x-input", _GRADIENT, structure=False, seed="one", times_input=True,
                            conserving=False),
}
PRESETS.update({
    "epsilon-plus": _zennit("epsilon-plus", ["zplus"]),
    "epsilon-plus-flat": _zennit("epsilon-plus-flat", ["zplus"], [(("conv", "dense"), "flat")]),
    "epsilon-gamma-box": _zennit("epsilon-gamma-box", ["gamma"], [("conv", "zbox")]),
    "epsilon-alpha2-beta1": _zennit("epsilon-alpha2-beta1", ["alpha-beta", {"alpha": 2.0, "beta": 1.0}]),
    "epsilon-alpha2-beta1-flat": _zennit("epsilon-alpha2-beta1-flat", ["alpha-beta", {"alpha": 2.0, "beta": 1.0}],
                                         [(("conv", "dense"), "flat")]),
    "cp-lrp-gamma": composite("cp-lrp-gamma", [("conv", "gamma"), ("dense", "gamma")], base="cp-lrp"),
})
