"""Relevance rules: small functions keyed by rule name, and the helpers they share.

A rule is ``rule(ctx, inputs, outputs, R_out) -> Result``: ``inputs``/``outputs`` are the node's
forward values (None for omitted optional inputs), ``R_out`` the relevance arriving at each output
(None where none arrived). ``Result.inputs`` has one entry per node input: the relevance that input
receives (None for none). What a rule gives to a *constant* input is booked as absorbed by the
propagator. ``loss`` is the relevance the stabiliser ate, ``deficit`` the non-conservation a rule has
by design (softmax), both as float64 scalars.

References: Bach et al. 2015 (LRP-epsilon); Achtibat et al., ICML 2024 (AttnLRP: identity rule on
elementwise functions, uniform rule on bilinear products, the softmax rule); Ali et al., ICML 2022
(CP-LRP: attention held constant).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Context:
    """What a rule may use besides the values: the node, namespace, epsilon and plan facts."""

    node: Any
    xp: Any
    eps: float
    dynamic: tuple[bool, ...]
    fn: Callable | None = None  # the forward kernel, for rules that recompute
    attrs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # plan facts for this node (region source, gate, ...)


@dataclass
class Result:
    inputs: list
    loss: float = 0.0
    deficit: float = 0.0
    absorbed: float = 0.0  # absorbed by something that is no input (pad values, dropped elements)
    extra: dict = field(default_factory=dict)  # rules may send relevance to tensors that are not inputs


RULES: dict[str, Callable] = {}
_PAIRWISE = (np.dtype(np.float32), np.dtype(np.float64))  # dtypes whose total is their own sum


def rule(name: str):
    """Register a relevance rule under ``name``."""
    def register(fn):
        RULES[name] = fn
        return fn
    return register


def stab(xp, z, eps: float):
    """``z + eps * sign(z)`` with ``sign(0) = +1``."""
    if eps == 0:
        return z
    return z + xp.where(z >= 0, z.dtype.type(eps), z.dtype.type(-eps))


def ratio(xp, R, z, eps: float):
    """``R / stab(z)``, 0 where ``R`` is 0, ``z`` is 0 (with eps = 0) or ``z`` is not finite.

    Fast path: one division and one sum; the masked repair runs only when the sum is not finite."""
    d = stab(xp, z, eps)
    G = R / d  # R / +-inf is already 0; 0/0 and R/0 give NaN / inf, repaired below
    if bool(xp.isfinite(xp.sum(G))):
        if eps == 0:  # nothing stabilised or repaired: z * G gives back R (rounding aside)
            _exact[id(G)] = (G, z, R)
        return G
    ok = (R != 0) & (d != 0) & xp.isfinite(d)
    return xp.where(ok, R / xp.where(ok, d, d.dtype.type(1)), R.dtype.type(0))


# Sums already computed (for a finiteness check, or by the propagator): ``id -> (array, sum)``, so
# ``total`` does not read a large array twice. The propagator clears it after every node; an entry
# holds its array, so the id cannot be reused while it is there. Only arrays nobody modifies later.
_sums: dict[int, tuple[Any, float]] = {}


def note_total(a, s: float):
    """Remember that ``total(a)`` is ``s`` (``s`` must be exactly what :func:`total` computes)."""
    _sums[id(a)] = (a, s)
    return a


_exact: dict[int, tuple[Any, Any, Any]] = {}  # id(G) -> (G, z, R) for G = R / z computed with eps = 0


def forget_totals() -> None:
    _sums.clear()
    _exact.clear()


def times(xp, x, G):
    """``x * G`` that is 0 wherever ``G`` is 0 (so ``-inf * 0`` gives 0, not NaN).

    Fast path: one product and one sum; the masked form runs only when the sum is not finite."""
    r = x * G
    t = xp.sum(r)
    if bool(xp.isfinite(t)):
        return note_total(r, float(t)) if r.dtype in _PAIRWISE else r
    return xp.where(G == 0, G.dtype.type(0), r)


def passed(xp, y, G) -> float:
    """``sum(y * G)``: the relevance an epsilon rule passes on (what it keeps of ``sum(R)``), as one
    dot product; the masked product only where ``y`` has infinities. For ``G = ratio(R, y, 0)`` with
    every element finite this is ``sum(R)`` exactly in real arithmetic (nothing was stabilised or
    dropped): then ``total(R)`` is returned and the pass over ``y`` skipped; the float rounding of
    the products shows in the node's residual instead."""
    hit = _exact.get(id(G))
    if hit is not None and hit[0] is G and hit[1] is y:
        return total(xp, hit[2])
    v = float(xp.vdot(y.reshape(-1), G.reshape(-1)))
    return v if v == v and abs(v) != float("inf") else total(xp, times(xp, y, G))


def unbroadcast(xp, R, shape):
    """Sum ``R`` over the axes along which a tensor of ``shape`` was broadcast to ``R.shape``."""
    shape = tuple(shape)
    if R.shape == shape:
        return R
    lead = R.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, d in enumerate(shape) if d == 1 and R.shape[i + lead] != 1)
    out = R.sum(axis=axes, keepdims=True) if axes else R
    return out.reshape(shape)


def total(xp, a) -> float:
    """The sum of ``a`` as a Python float (0 for None); float32 arrays sum pairwise in float32."""
    if a is None:
        return 0.0
    hit = _sums.get(id(a))
    if hit is not None and hit[0] is a:
        return hit[1]
    if a.dtype in _PAIRWISE:  # float32 sums pairwise in float32
        return float(a.sum())
    return float(a.sum(dtype=np.float64))


from . import linear, route, special  # noqa: E402,F401  (registration)
