"""The rule formulas of reflrp.rules.formulas in one pass each, without their masking: ``R / stab(z)``
and ``x * G`` as plain arithmetic. Where the masking matters (0/0, R/0, -inf * 0) the result is not
finite; reflrp.propagate sees that in the node's books and reruns the node with the plain formulas,
so the numbers are the plain ones."""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..rules.formulas import stab
from ..rules.formulas import totals as plain_totals

__all__ = ["stab", "ratio", "times", "totals", "dot_totals", "known_total", "EXACT"]

EXACT = False  # results may be non-finite where the plain formulas mask: the propagator checks and reruns


def ratio(xp, R, z, eps: float):
    return R / stab(xp, z, eps)  # warnings are off: reflrp.propagate runs the pass under backend.quiet


def times(xp, x, G):
    return x * G


def totals(xp, a) -> np.ndarray:
    """reflrp.rules.formulas.totals (the same pairwise sums) with less overhead for numpy arrays."""
    if type(a) is not np.ndarray or a.dtype.char not in "fd" or a.size == 0:  # (dtype.char: no dtype ==)
        return plain_totals(xp, a)
    return np.add.reduce(a.reshape(a.shape[0], -1), axis=1).astype(np.float64)


def dot_totals(xp, y, G) -> np.ndarray:
    """``sum(y * G)`` per target without the product array: one einsum (numpy's own loop, no BLAS, so the
    same bytes for any thread count) in the arrays' precision (float32's error ~1e-6 relative, far
    inside float32's books tolerance), float64 for smaller floats."""
    if y.shape != G.shape[1:]:
        y = xp.broadcast_to(y, G.shape[1:])
    g2, y1 = G.reshape(G.shape[0], y.size), y.reshape(y.size)
    if G.dtype.char == y.dtype.char and G.dtype.char in "fd":
        out = xp.einsum("kn,n->k", g2, y1)
    else:
        out = xp.einsum("kn,n->k", g2, y1, dtype=np.float64, casting="unsafe")
    return np.asarray(to_numpy(out), dtype=np.float64)


def known_total(r, arrived):
    """The total an arrived relevance array came with, for a piece that is that array or a view of the same
    memory in the same layout (the identity rule passes it on, Reshape views it): the same pairwise sums
    over the same bytes, so bit for bit what :func:`totals` would give; None for any other piece."""
    for a, total in arrived:
        if r is a or _same_bytes(r, a):
            return total
    return None


def _same_bytes(r, a) -> bool:
    """Two C-contiguous numpy arrays over the same memory: same owner, start, size, dtype and targets."""
    if type(r) is not np.ndarray or type(a) is not np.ndarray:
        return False
    owner_r, owner_a = (r if r.base is None else r.base), (a if a.base is None else a.base)
    return (owner_r is owner_a and r.size == a.size and r.shape[:1] == a.shape[:1] and r.dtype == a.dtype
            and r.flags.c_contiguous and a.flags.c_contiguous
            and r.__array_interface__["data"][0] == a.__array_interface__["data"][0])
