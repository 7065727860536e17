"""Reductions. ``axes`` is an attribute before opset 13 (ReduceSum) / 18 (the others), an input after."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import finfo, is_float
from . import kernel
from .tensor import _ints, axes_indices


def _axes(xp, data, axes, noop_with_empty_axes):
    """The reduced axes counted from 0; ``None`` for all of them, ``()`` for none (the no-op)."""
    if not _ints(xp, axes):
        return None if not noop_with_empty_axes else ()
    return axes_indices(xp, axes, data.ndim, repeats=True)


def _reduction(op: str, fn):
    def run(xp, data, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = _axes(xp, data, axes, noop_with_empty_axes)
        if ax == ():
            return data
        return fn(xp, data, ax, bool(keepdims))
    run.__name__ = op
    kernel(op)(run)


def _keep_dtype(f):
    return lambda xp, x, ax, k: f(xp, x, ax, k).astype(x.dtype, copy=False)


_reduction("ReduceSum", _keep_dtype(lambda xp, x, ax, k: xp.sum(x, axis=ax, keepdims=k)))
_reduction("ReduceMean", _keep_dtype(lambda xp, x, ax, k: _mean(xp, x, ax, k)))
_reduction("ReduceProd", _keep_dtype(lambda xp, x, ax, k: xp.prod(x, axis=ax, keepdims=k)))
_reduction("ReduceMax", lambda xp, x, ax, k: xp.max(x, axis=ax, keepdims=k) if x.size else
           xp.full(_empty_shape(x, ax, k), _extreme(xp, x.dtype, low=True), dtype=x.dtype))
_reduction("ReduceMin", lambda xp, x, ax, k: xp.min(x, axis=ax, keepdims=k) if x.size else
           xp.full(_empty_shape(x, ax, k), _extreme(xp, x.dtype, low=False), dtype=x.dtype))
_reduction("ReduceL1", _keep_dtype(lambda xp, x, ax, k: xp.sum(xp.abs(x), axis=ax, keepdims=k)))
_reduction("ReduceL2", _keep_dtype(lambda xp, x, ax, k: xp.sqrt(xp.sum(x * x, axis=ax, keepdims=k))))
_reduction("ReduceSumSquare", _keep_dtype(lambda xp, x, ax, k: xp.sum(x * x, axis=ax, keepdims=k)))
_reduction("ReduceLogSum", _keep_dtype(lambda xp, x, ax, k: xp.log(xp.sum(x, axis=ax, keepdims=k))))
_reduction("ReduceLogSumExp", _keep_dtype(lambda xp, x, ax, k: _logsumexp(xp, x, ax, k)))


def _mean(xp, x, ax, keep):
    """The mean; of no values 0, as onnxruntime gives (ONNX leaves it undefined, numpy says NaN)."""
    n = x.size if ax is None else math.prod(x.shape[a] for a in ax)
    return xp.mean(x, axis=ax, keepdims=keep) if n else xp.sum(x, axis=ax, keepdims=keep)


def _empty_shape(x, ax, keep):
    ax = range(x.ndim) if ax is None else ax
    return tuple((1 if keep else None) if i in ax else d for i, d in enumerate(x.shape) if keep or i not in ax)


def _extreme(xp, dtype, low):
    """The identity of max (``low``) or min: -inf/+inf, or the type's extreme where it has no inf."""
    if is_float(dtype):
        info = finfo(dtype)
        big = float("inf") if _has_inf(dtype) else float(info.max)
        return -big if low else big
    if dtype.kind == "b":
        return not low
    return xp.iinfo(dtype).min if low else xp.iinfo(dtype).max


def _has_inf(dtype) -> bool:
    return bool(np.isinf(np.array(float("inf")).astype(dtype)))


def _logsumexp(xp, x, ax, keep):
    if not x.size:
        return xp.log(xp.sum(xp.exp(x), axis=ax, keepdims=keep))
    m = xp.max(x, axis=ax, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    out = xp.log(xp.sum(xp.exp(x - m), axis=ax, keepdims=True)) + m
    return out if keep else xp.squeeze(out, axis=ax)
