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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

ROLES = ("activation", "linear", "bilinear", "attention-values", "gate", "product", "normalizer", "region", "move",
         "select", "layernorm", "rmsnorm", "softmax", "attention", "rotary", "nonlinear")


@dataclass(frozen=True)
class Preset:
    """``roles``: role -> rule. ``structure``: look for regions, normalizers and gates (off for
    gradients: every node is differentiated on its own). ``seed``: ``"logit"`` starts from the target
    logit's value (LRP), ``"one"`` from 1 (gradients). ``times_input``: multiply the result by the
    attributed tensor at the end (gradient x input)."""

    name: str
    roles: Mapping[str, str]
    epsilon: float = 0.0
    structure: bool = True
    seed: str = "logit"
    times_input: bool = False
    conserving: bool = True  # the books (conservation report) mean something
    doc: str = field(default="", compare=False)


_ATTNLRP = {
    "activation": "identity", "linear": "epsilon", "bilinear": "bilinear-uniform",
    "attention-values": "bilinear-uniform", "gate": "gate-uniform", "product": "gate-uniform",
    "normalizer": "normalizer", "region": "region", "move": "route", "select": "route", "layernorm": "layernorm",
    "rmsnorm": "identity", "softmax": "softmax", "attention": "attention", "rotary": "rotary",
}
_GRADIENT = {role: "gradient" for role in ROLES}


def _preset(name, roles, **kw) -> Preset:
    return Preset(name, MappingProxyType(dict(roles)), **kw)


PRESETS = {
    "attnlrp": _preset("attnlrp", _ATTNLRP),
    "cp-lrp": _preset("cp-lrp", {**_ATTNLRP, "attention-values": "bilinear-cp", "gate": "gate-up",
                                 "attention": "attention-cp"}),
    "epsilon": _preset("epsilon", {**_ATTNLRP, "softmax": "identity"}, epsilon=1e-6),
    "gradient": _preset("gradient", _GRADIENT, structure=False, seed="one", conserving=False),
    "grad-x-input": _preset("grad-x-input", _GRADIENT, structure=False, seed="one", times_input=True,
                            conserving=False),
}
