"""Named rule maps. Each maps an op type to a rule name; ``gate``/``bilinear`` pick the variant used for
products of two dynamic tensors. Defaults for epsilon per preset in ``EPSILON``.

- ``attnlrp``: ../shared/RULES.md's table (equals LXT 2.1 efficient mode), epsilon 0.
- ``cp-lrp``: attention weights held constant (all of ``A @ V`` to V), gates give all to ``up``.
- ``epsilon``: classic LRP-epsilon (1e-6) on every linear map and sum, identity on every elementwise
  function including the softmax; products of two dynamic tensors and the norms keep attnlrp's rules.
"""
from __future__ import annotations

from .analysis import ROUTE

_COMMON = {
    **{op: "route" for op in ROUTE},
    "Add": "epsilon-sum", "Sub": "epsilon-sum", "Sum": "epsilon-sum",
    "MatMul": "epsilon", "Gemm": "epsilon", "Conv": "epsilon", "Einsum": "epsilon",
    "ReduceSum": "epsilon", "ReduceMean": "epsilon", "AveragePool": "epsilon", "GlobalAveragePool": "epsilon",
    "BatchNormalization": "epsilon", "Softmax": "softmax", "LayerNormalization": "layernorm",
    "RMSNormalization": "identity", "Where": "where", "Max": "winner-takes-all", "Min": "winner-takes-all",
    "MaxPool": "maxpool", "Attention": "attention", "RotaryEmbedding": "rotary",
}

PRESETS = {
    "attnlrp": {**_COMMON, "gate": "gate-uniform", "bilinear": "bilinear-uniform"},
    "cp-lrp": {**_COMMON, "gate": "gate-up", "bilinear": "bilinear-cp"},
    "epsilon": {**_COMMON, "Softmax": "identity", "gate": "gate-uniform", "bilinear": "bilinear-uniform"},
}

EPSILON = {"attnlrp": 0.0, "cp-lrp": 0.0, "epsilon": 1e-6}
