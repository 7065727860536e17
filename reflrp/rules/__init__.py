"""Relevance rules: small functions keyed by rule name, each its formula over the op's adjoint.

A rule is ``rule(ctx, inputs, outputs, R_out) -> Result``. ``inputs``/``outputs`` are the node's forward
values (None for omitted optional inputs); ``R_out`` the relevance arriving at each output (None where
none arrived), each with a leading target axis ``(K,) + shape``. ``Result.inputs`` has one entry per
node input: the relevance that input receives (None for none). What a rule gives to a *constant* input
is booked as absorbed by the propagator. ``loss`` is the relevance the stabiliser ate and ``deficit`` the
non-conservation a rule has by design (softmax); both, like ``absorbed`` (relevance on elements that
came from no input), are per-target float64 vectors of shape (K,).

References: Bach et al. 2015 (LRP-epsilon); Achtibat et al., ICML 2024 (AttnLRP: identity rule on
elementwise functions, uniform rule on bilinear products, the softmax rule); Ali et al., ICML 2022
(CP-LRP: attention held constant).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from ..ops.grad import unbroadcast
from . import formulas


@dataclass(slots=True)
class Context:
    """What a rule may use besides the values: the node, namespace, epsilon, plan facts, the op's
    kernel and adjoint, and the formulas (``ratio``, ``times``, ``totals``) of this call. Made by the
    propagator for one node and read-only to rules (not frozen only because a frozen dataclass costs
    microseconds to build, at every node)."""

    node: Any
    xp: Any
    eps: float
    dynamic: tuple[bool, ...]
    attrs: dict
    info: dict  # plan facts for this node (region source, gate, ...)
    kernel: Callable | None = None
    adjoint: Callable | None = None
    addends: tuple[int, ...] = ()
    f: Any = formulas
    inflow: Any = 0.0  # per target: the relevance that arrived at the node's outputs (the ledger's mass)
    centred: Callable | None = None  # integer arithmetic: the op record's ``centred`` fact
    params: Mapping = field(default_factory=dict)  # the rule's parameters at this node (gamma, alpha, ...)

    def operands(self, inputs, outputs, dtype):
        """The ``x_i`` and ``z`` a formula reads: the node's values, or for integer arithmetic the
        numbers they stand for (zero points subtracted, in ``dtype``; the op record's ``centred``)."""
        if self.centred is None:
            return list(inputs), list(outputs)
        return self.centred(self.xp, list(inputs), list(outputs), self.attrs, dtype)

    def vjp(self, inputs, outputs, G, need):
        """The op's vector-Jacobian product: one gradient per input where ``need`` (else None)."""
        grads = list(self.adjoint(self.xp, list(G), list(inputs), list(outputs), self.attrs, tuple(need)))
        return grads + [None] * (len(inputs) - len(grads))

    def ratio(self, R, z):
        """``R / stab(z)`` with this call's epsilon (0 where that is 0 or not finite)."""
        return self.f.ratio(self.xp, R, z, self.eps)

    def times(self, x, G):
        """``x * G``, 0 wherever ``G`` is 0 (so an infinite ``x`` there gives 0, not NaN)."""
        return self.f.times(self.xp, x, G)

    def totals(self, a):
        """Per-target float64 sums of ``a`` (shape (K,)); zeros for None."""
        return self.f.totals(self.xp, a)

    def passed(self, y, G):
        """``sum(y * G)`` per target: what a rule with ``G = R / stab(y)`` passes on of the inflow."""
        return self.f.dot_totals(self.xp, y, G)


@dataclass
class Result:
    inputs: list
    loss: Any = 0.0
    deficit: Any = 0.0
    absorbed: Any = 0.0  # absorbed by something that is no input (fill values, dropped elements)
    rest_absorbed: bool = False  # a data movement: what arrived and went to no input was a fill value
    extra: dict = field(default_factory=dict)  # relevance sent to tensors that are not inputs (region source)


RULES: dict[str, Callable] = {}

# a rule parameter without a default (zbox's bounds), and the epsilon rule's default: the pass's epsilon
REQUIRED = "required"
PASS_EPSILON = "the pass epsilon"


@dataclass(frozen=True)
class Signature:
    """What a rule takes: its parameters (name -> default), the one that stabilises its denominators
    (``ctx.eps`` at its nodes; None: the pass's epsilon) and whether it applies to weight layers only."""

    params: Mapping[str, Any] = field(default_factory=dict)
    stabiliser: str | None = None
    layer: bool = False


SIGNATURES: dict[str, Signature] = {}


def rule(name: str, params: Mapping[str, Any] | None = None, stabiliser: str | None = None, layer: bool = False):
    """Register a relevance rule under ``name``, with its parameters and their defaults (see :class:`Signature`)."""
    def register(fn):
        RULES[name] = fn
        SIGNATURES[name] = Signature(MappingProxyType(dict(params or {})), stabiliser, layer)
        return fn
    return register


def parameters() -> dict[str, tuple[str, ...]]:
    """Every rule parameter name -> the rules that take it."""
    out: dict[str, list[str]] = {}
    for name, sig in sorted(SIGNATURES.items()):
        for p in sig.params:
            out.setdefault(p, []).append(name)
    return {p: tuple(r) for p, r in sorted(out.items())}


def to_shape(xp, R, x):
    """``R`` (leading target axis) summed over the axes along which ``x`` was broadcast."""
    return unbroadcast(xp, R, x.shape)


def zeros_k(k: int):
    return np.zeros(k)


from . import attention, classic, lrp  # noqa: E402,F401  (registration)
