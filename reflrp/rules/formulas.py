"""The arithmetic every rule shares, written plainly: the stabiliser, the safe ratio and product, and
the per-target totals the books are made of. (reflrp.fast has equal, faster versions.)"""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy


EXACT = True  # the results are final: 0 where a ratio or product is masked (see reflrp.fast.formulas)


def stab(xp, z, eps: float):
    """``z + eps * sign(z)`` with ``sign(0) = +1``."""
    if eps == 0:
        return z
    return z + xp.where(z >= 0, z.dtype.type(eps), z.dtype.type(-eps))


def ratio(xp, R, z, eps: float):
    """``R / stab(z)``; 0 where ``stab(z)`` is 0 (``0/0 -> 0`` with eps = 0) or not finite."""
    d = stab(xp, z, eps)
    ok = (d != 0) & xp.isfinite(d)
    return xp.where(ok, R / xp.where(ok, d, d.dtype.type(1)), R.dtype.type(0))


def times(xp, x, G):
    """``x * G``, 0 wherever ``G`` is 0 (so ``-inf * 0`` gives 0, not NaN)."""
    return xp.where(G == 0, G.dtype.type(0), x * G)


def totals(xp, a) -> np.ndarray:
    """The sum of ``a`` per target (its leading axis) as a host float64 array of shape (K,): numpy's
    pairwise summation in the array's own precision (float32 or float64; smaller floats in float64),
    never BLAS, so the same bytes for any thread count."""
    if a is None:
        return np.zeros(1)
    flat = a.reshape(a.shape[0], math.prod(a.shape[1:]))
    own = a.dtype in (np.float32, np.float64)
    return np.asarray(to_numpy(flat.sum(axis=1) if own else flat.sum(axis=1, dtype=np.float64)), dtype=np.float64)


def dot_totals(xp, y, G) -> np.ndarray:
    """``sum(y * G)`` per target: what an epsilon rule passes on of ``sum(R)``."""
    return totals(xp, times(xp, y, G))


def known_total(r, arrived):
    """A total already known for ``r`` among ``arrived`` (array, total) pairs: never, as written here
    (every piece is summed); the speed layer reuses the total of a piece over arrived bytes."""
    return None
