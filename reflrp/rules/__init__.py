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


BLOCK = 1 << 18  # elements per block in blocked elementwise work (1 MiB of float32: stays in L2)


def blocks(xp, arrays, row: int = 1) -> list[slice] | None:
    """Slices of ``BLOCK`` elements (whole rows of ``row`` elements) over the flattened ``arrays``, for
    same-shaped C-contiguous numpy arrays of at least 4 blocks; else None (work on the whole arrays).

    A chain of elementwise passes over an attention-sized tensor (batch x heads x s x s) is bound by
    memory traffic and page faults; done block by block, each block's operands stay in cache and the
    temporaries are block-sized. The numbers are the same (elementwise, or per row)."""
    a = arrays[0]
    if xp is not np or a.size < 4 * BLOCK or any(b.shape != a.shape or not b.flags.c_contiguous for b in arrays):
        return None
    step = max(1, BLOCK // row) * row
    return [slice(i, i + step) for i in range(0, a.size, step)]


def blockwise(xp, fn, arrays, parts, row: int = 1):
    """``fn(*blocks, out=out_block) -> (value, extra)`` over ``parts`` (from :func:`blocks`) into one new
    array shaped like ``arrays[0]``; returns it and the list of ``extra`` per block."""
    out = xp.empty(arrays[0].shape, dtype=xp.result_type(*arrays))
    flat = [a.reshape(-1, row) for a in arrays]
    flat_out = out.reshape(-1, row)
    extras = [fn(*(f[b.start // row:b.stop // row] for f in flat), out=flat_out[b.start // row:b.stop // row])[1]
              for b in parts]
    return out, extras


def into(out, value):
    """``value`` written into ``out`` (returned), or ``value`` itself when there is no ``out``."""
    if out is None:
        return value
    out[...] = value
    return out


def noted(r, sums):
    """``r`` with its total remembered when every block's sum was finite (see :func:`note_total`)."""
    if r.dtype not in _PAIRWISE or any(t is None for t in sums):
        return r
    # one block: its own sum; several: the float64 sum of the block sums (as good as the pairwise one)
    return note_total(r, sums[0] if len(sums) == 1 else float(np.sum(sums, dtype=np.float64)))


def ratio(xp, R, z, eps: float):
    """``R / stab(z)``, 0 where ``R`` is 0, ``z`` is 0 (with eps = 0) or ``z`` is not finite.

    Fast path: one division and one sum; the masked repair runs only when the sum is not finite."""
    parts = blocks(xp, (R, z))
    if parts is None:
        G, clean = _ratio(xp, R, z, eps)
    else:
        G, oks = blockwise(xp, lambda r, d, out: _ratio(xp, r, d, eps, out), (R, z), parts)
        clean = all(oks)
    if clean and eps == 0:  # nothing stabilised or repaired: z * G gives back R (rounding aside)
        _exact[id(G)] = (G, z, R)
    return G


def _ratio(xp, R, z, eps, out=None):
    """(R / stab(z) repaired, whether no repair was needed), into ``out`` if given."""
    d = stab(xp, z, eps)
    G = xp.divide(R, d, out=out)  # R / +-inf is already 0; 0/0 and R/0 give NaN / inf, repaired below
    if bool(xp.isfinite(xp.sum(G))):
        return G, True
    ok = (R != 0) & (d != 0) & xp.isfinite(d)
    return into(out, xp.where(ok, R / xp.where(ok, d, d.dtype.type(1)), R.dtype.type(0))), False


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
    parts = blocks(xp, (x, G))
    if parts is None:
        r, t = _times(xp, x, G)
        return noted(r, [t])
    return noted(*blockwise(xp, lambda a, g, out: _times(xp, a, g, out), (x, G), parts))


def _times(xp, x, G, out=None):
    """(x * G with 0 where G is 0, its sum or None when the masked form was needed)."""
    r = xp.multiply(x, G, out=out)
    s = xp.sum(r)
    if bool(xp.isfinite(s)):
        return r, float(s)
    return into(out, xp.where(G == 0, G.dtype.type(0), r)), None


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
