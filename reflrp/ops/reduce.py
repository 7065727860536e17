"""Reductions and their adjoints. ``axes`` is an attribute before opset 13 (ReduceSum) / 18 (the
others), an input after."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import finfo, is_float
from . import adjoint, kernel
from . import kinds as K
from .tensor import _ints, axes_indices


def _axes(xp, data, axes, noop_with_empty_axes):
    """The reduced axes counted from 0; ``None`` for all of them, ``()`` for none (the no-op)."""
    if not _ints(xp, axes):
        return None if not noop_with_empty_axes else ()
    return axes_indices(xp, axes, data.ndim, repeats=True)


def _reduction(op: str, fn, derivative, kind: str, **facts):
    """Register ``y = fn(x)`` over the axes and the adjoint ``G * derivative(x, y)`` (``y`` keepdims)."""
    def run(xp, data, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = _axes(xp, data, axes, noop_with_empty_axes)
        if ax == ():
            return data
        return fn(xp, data, ax, bool(keepdims))
    run.__name__ = op
    kernel(op, kind=kind, reduces=True, **facts)(run)

    def vjp(xp, G, inputs, outputs, attrs, need):
        x = inputs[0]
        ax = _axes(xp, x, inputs[1] if len(inputs) > 1 else attrs.get("axes"), attrs.get("noop_with_empty_axes", 0))
        if ax == ():
            return [G[0], None][:len(inputs)]
        g, y = kept_dims(xp, G[0], x, ax), kept_dims(xp, outputs[0][None], x, ax)[0]
        return [g * derivative(xp, x, y, ax), None][:len(inputs)]
    adjoint(op)(vjp)


def kept_dims(xp, g, x, ax):
    """``g`` (leading target axis) of a reduction of ``x`` over ``ax`` with the reduced axes kept as 1."""
    full = range(x.ndim) if ax is None else ax
    shape = (g.shape[0],) + tuple(1 if i in full else d for i, d in enumerate(x.shape))
    return g.reshape(shape)


def _keep_dtype(f):
    return lambda xp, x, ax, k: f(xp, x, ax, k).astype(x.dtype, copy=False)


def _count(x, ax) -> int:
    n = 1
    for i in (range(x.ndim) if ax is None else ax):
        n *= x.shape[i]
    return max(n, 1)


def _first_extreme(xp, x, y, ax):
    """1 at the first element along the reduced axes that attains ``y``, 0 elsewhere."""
    axes = tuple(range(x.ndim)) if ax is None else tuple(ax)
    rest = tuple(i for i in range(x.ndim) if i not in axes)
    hit = xp.transpose(xp.broadcast_to(x == y, x.shape), rest + axes)
    flat = hit.reshape(hit.shape[:len(rest)] + (-1,))
    first = xp.cumsum(flat, axis=-1) == 1
    one = (flat & first).reshape(hit.shape)
    back = [0] * x.ndim
    for pos, a in enumerate(rest + axes):
        back[a] = pos
    return xp.transpose(one, back).astype(x.dtype)


def _product_of_others(xp, x, y, ax):
    """d prod / d x_i = the product of the other elements (exact where some are zero)."""
    axes = tuple(range(x.ndim)) if ax is None else tuple(ax)
    rest = tuple(i for i in range(x.ndim) if i not in axes)
    moved = xp.transpose(x, rest + axes)
    flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
    ones = xp.ones(flat.shape[:-1] + (1,), dtype=x.dtype)
    before = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    after = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1)
    others = (before * after).reshape(moved.shape)
    back = [0] * x.ndim
    for pos, a in enumerate(rest + axes):
        back[a] = pos
    return xp.transpose(others, back)


_reduction("ReduceSum", _keep_dtype(lambda xp, x, ax, k: xp.sum(x, axis=ax, keepdims=k)),
           lambda xp, x, y, ax: xp.ones(x.shape, dtype=x.dtype), K.LINEAR)
_reduction("ReduceMean", _keep_dtype(lambda xp, x, ax, k: _mean(xp, x, ax, k)),
           lambda xp, x, y, ax: xp.full(x.shape, 1 / _count(x, ax), dtype=x.dtype), K.LINEAR,
           layer="avgpool")  # torch exports AdaptiveAvgPool2d(1) as ReduceMean
_reduction("ReduceProd", _keep_dtype(lambda xp, x, ax, k: xp.prod(x, axis=ax, keepdims=k)),
           _product_of_others, K.NONLINEAR)
_reduction("ReduceMax", lambda xp, x, ax, k: xp.max(x, axis=ax, keepdims=k) if x.size else
           xp.full(_empty_shape(x, ax, k), _extreme(xp, x.dtype, low=True), dtype=x.dtype), _first_extreme, K.SELECT)
_reduction("ReduceMin", lambda xp, x, ax, k: xp.min(x, axis=ax, keepdims=k) if x.size else
           xp.full(_empty_shape(x, ax, k), _extreme(xp, x.dtype, low=False), dtype=x.dtype), _first_extreme, K.SELECT)
_reduction("ReduceL1", _keep_dtype(lambda xp, x, ax, k: xp.sum(xp.abs(x), axis=ax, keepdims=k)),
           lambda xp, x, y, ax: xp.sign(x), K.NONLINEAR)
_reduction("ReduceL2", _keep_dtype(lambda xp, x, ax, k: xp.sqrt(xp.sum(x * x, axis=ax, keepdims=k))),
           lambda xp, x, y, ax: x / y, K.NONLINEAR)
_reduction("ReduceSumSquare", _keep_dtype(lambda xp, x, ax, k: xp.sum(x * x, axis=ax, keepdims=k)),
           lambda xp, x, y, ax: 2 * x, K.NONLINEAR)
_reduction("ReduceLogSum", _keep_dtype(lambda xp, x, ax, k: xp.log(xp.sum(x, axis=ax, keepdims=k))),
           lambda xp, x, y, ax: xp.exp(-y) * xp.ones(x.shape, dtype=x.dtype), K.NONLINEAR)
_reduction("ReduceLogSumExp", _keep_dtype(lambda xp, x, ax, k: _logsumexp(xp, x, ax, k)),
           lambda xp, x, y, ax: xp.exp(x - y), K.NONLINEAR)


def _empty_shape(x, ax, keep):
    ax = range(x.ndim) if ax is None else ax
    return tuple((1 if keep else None) if i in ax else d for i, d in enumerate(x.shape) if keep or i not in ax)


def _mean(xp, x, ax, keep):
    """The mean; of no values 0, as onnxruntime gives (ONNX leaves it undefined, numpy says NaN)."""
    n = x.size if ax is None else math.prod(x.shape[a] for a in ax)
    return xp.mean(x, axis=ax, keepdims=keep) if n else xp.sum(x, axis=ax, keepdims=keep)


def _extreme(xp, dtype, low):
    """The identity of max (``low``) or min: -inf/+inf, or the type's extreme where it has no inf."""
    if is_float(dtype):
        info = finfo(dtype)
        big = float("inf") if _has_inf(dtype) else float(info.max)
        return -big if low else big
    if dtype.kind == "b":
        return not low
    return xp.iinfo(dtype).min if low else xp.iinfo(dtype).max


def _logsumexp(xp, x, ax, keep):
    if not x.size:
        return xp.log(xp.sum(xp.exp(x), axis=ax, keepdims=keep))
    m = xp.max(x, axis=ax, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    out = xp.log(xp.sum(xp.exp(x - m), axis=ax, keepdims=True)) + m
    return out if keep else xp.squeeze(out, axis=ax)


def _has_inf(dtype) -> bool:
    return bool(np.isinf(np.array(float("inf")).astype(dtype)))
