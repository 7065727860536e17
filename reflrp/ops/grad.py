"""Helpers shared by the adjoints. Every gradient here carries one leading target axis ``K``."""
from __future__ import annotations

import numpy as np


def unbroadcast(xp, g, shape):
    """Sum ``g`` of shape ``(K,) + S`` over the axes along which a tensor of ``shape`` was broadcast
    to ``S``; returns shape ``(K,) + shape``."""
    shape = tuple(shape)
    if g.shape[1:] == shape:
        return g
    lead = g.ndim - 1 - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(1 + lead + i for i, d in enumerate(shape)
                                             if d == 1 and g.shape[1 + lead + i] != 1)
    out = g.sum(axis=axes, keepdims=True) if axes else g
    return out.reshape((g.shape[0],) + shape)


def each(fn, need, *values):
    """``[fn(i) if need[i] else None for i]`` over the inputs (values are only used for their count)."""
    return [fn(i) if need[i] else None for i in range(len(values[0]) if values else len(need))]


def winners(xp, y, candidates):
    """One boolean mask per candidate (broadcast to ``y``): where it is the first to attain ``y``."""
    taken = xp.zeros(y.shape, dtype=bool)
    masks = []
    for x in candidates:
        win = (xp.broadcast_to(x, y.shape) == y) & ~taken
        taken |= win
        masks.append(win)
    return masks


def select(xp, mask, g):
    """``g`` where ``mask`` (broadcast over the target axis), 0 elsewhere."""
    return xp.where(mask, g, g.dtype.type(0))


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(int(a) % ndim for a in axes))


def as_int_list(v) -> list[int]:
    """An axes/shape argument (attribute list or 1-D int tensor) as Python ints."""
    if v is None:
        return []
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [int(i) for i in (v if isinstance(v, (list, tuple)) else [v])]


def float64_bincount(xp, ids, weights, length: int):
    """``bincount`` of float ``weights`` in float64 (exact scatter-add of relevance or gradients)."""
    return xp.bincount(ids, weights=weights.astype(np.float64, copy=False), minlength=length)
