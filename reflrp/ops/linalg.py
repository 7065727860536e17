"""Linear algebra kernels: MatMul, Gemm, Einsum, Conv (im2col from one strided view)."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import is_numpy_native
from . import kernel


def matmul(xp, a, b):
    """``a @ b`` laid out for BLAS: a stack times a matrix becomes one 2-D product, and strided
    stacked operands (transposed views, broadcast copies) are made contiguous first, since numpy
    multiplies those without BLAS."""
    if b.ndim == 2 and a.ndim > 2:
        if not a.flags.c_contiguous:
            a = xp.ascontiguousarray(a)
        return (a.reshape(math.prod(a.shape[:-1]), a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if a.ndim > 2 or b.ndim > 2:
        copies = (0 if a.flags.c_contiguous else a.size) + (0 if b.flags.c_contiguous else b.size)
        if copies:
            # (a @ b) = (b^T @ a^T)^T: when the transposed operands need less copying (a^T of a large
            # contiguous stack, e.g. A^T @ G in the relevance pass), multiply those and return a
            # transposed view (counted as a copy too: whoever reads it may have to make one)
            at, bt = xp.swapaxes(a, -1, -2), xp.swapaxes(b, -1, -2)
            out = a.size // a.shape[-1] * b.shape[-1]
            if (0 if bt.flags.c_contiguous else b.size) + (0 if at.flags.c_contiguous else a.size) + out < copies:
                return xp.swapaxes(matmul(xp, bt, at), -1, -2)
            a = a if a.flags.c_contiguous else xp.ascontiguousarray(a)
            b = b if b.flags.c_contiguous else xp.ascontiguousarray(b)
    return xp.matmul(a, b)


def _as(y, dtype):
    """A product in the operands' type: ml_dtypes' bfloat16/float8 products come back as float32
    (accumulated in float32) and are rounded once, as onnx's reference does."""
    return y if y.dtype == dtype else y.astype(dtype)


@kernel("MatMul")
def MatMul(xp, a, b):
    return _as(matmul(xp, a, b), a.dtype)


@kernel("Gemm", since=7)
def Gemm(xp, A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = A.T if transA else A
    b = B.T if transB else B
    y = _as(a @ b, A.dtype)
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    if C is not None:
        y = y + (C if beta == 1.0 else C * C.dtype.type(beta))
    return y


@kernel("Einsum", since=12)
def Einsum(xp, *inputs, equation):
    equation = equation.replace(" ", "")
    if all(is_numpy_native(i.dtype) for i in inputs):
        return xp.einsum(equation, *inputs)
    # numpy's einsum takes no ml_dtypes type: float32 accumulation, one rounding (as MatMul)
    return _as(xp.einsum(equation, *[i.astype(np.float32) for i in inputs]), inputs[0].dtype)


def conv_geometry(spatial, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode=0):
    """Output size and (begin, end) pads per spatial axis, as ONNX Conv/Pool define them."""
    n = len(spatial)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    pads = list(pads) if pads else [0] * (2 * n)
    out, begin, end = [], [], []
    for i in range(n):
        k = (kernel_shape[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-spatial[i] // strides[i])
            total = max((o - 1) * strides[i] + k - spatial[i], 0)
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            b, e = lo, total - lo
        elif auto_pad == "VALID":
            b, e = 0, 0
            o = (spatial[i] - k) // strides[i] + 1
        else:
            b, e = pads[i], pads[i + n]
            span = spatial[i] + b + e - k
            o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
            if ceil_mode and (o - 1) * strides[i] >= spatial[i] + b:
                o -= 1  # the last window must start inside the input or left pad
        out.append(o)
        begin.append(b)
        end.append(e)
    return out, begin, end, strides, dilations


def windows(xp, x, kernel_shape, out, begin, end, strides, dilations, fill=0.0):
    """Stack every kernel offset's strided view: (N, C, *kernel, *out) from x of (N, C, *spatial)."""
    n = len(kernel_shape)
    need = [(out[i] - 1) * strides[i] + (kernel_shape[i] - 1) * dilations[i] + 1 for i in range(n)]
    extra = [max(need[i] - (x.shape[2 + i] + begin[i] + end[i]), 0) for i in range(n)]
    if any(begin) or any(e + x_ for e, x_ in zip(end, extra)):
        padded = xp.full(x.shape[:2] + tuple(x.shape[2 + i] + begin[i] + end[i] + extra[i] for i in range(n)),
                         fill, dtype=x.dtype)
        padded[(slice(None), slice(None)) + tuple(slice(begin[i], begin[i] + x.shape[2 + i]) for i in range(n))] = x
        x = padded
    x = xp.ascontiguousarray(x)
    # one strided view (N, C, *kernel offsets, *output positions), copied once: im2col
    shape = x.shape[:2] + tuple(kernel_shape) + tuple(out)
    view_strides = tuple(x.strides[:2]) + tuple(dilations[i] * x.strides[2 + i] for i in range(n)) + tuple(
        strides[i] * x.strides[2 + i] for i in range(n))
    return xp.ascontiguousarray(xp.lib.stride_tricks.as_strided(x, shape=shape, strides=view_strides))


@kernel("Conv")
def Conv(xp, X, W, B=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel_shape = kernel_shape or list(W.shape[2:])
    out, begin, end, strides, dilations = conv_geometry(X.shape[2:], kernel_shape, strides, pads, dilations, auto_pad)
    cols = windows(xp, X, kernel_shape, out, begin, end, strides, dilations)  # N, C, *k, *o
    N, C = X.shape[:2]
    M = W.shape[0]
    nk, no = len(kernel_shape), int(np.prod(out, dtype=np.int64))
    kk = int(np.prod(kernel_shape, dtype=np.int64))
    cols = cols.reshape(N, group, (C // group) * kk, no)
    w = W.reshape(group, M // group, (C // group) * kk)
    y = _as(xp.matmul(w[None], cols), X.dtype)  # N, group, M/g, no
    y = y.reshape((N, M) + tuple(out))
    if B is not None:
        y = y + B.reshape((1, M) + (1,) * nk)
    return y
