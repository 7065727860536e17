"""Faster MatMul and its adjoint (same numbers as reflrp.ops.linalg, other layouts)."""
from __future__ import annotations

import math

import numpy as np

from ..ops.grad import unbroadcast
from ..ops.linalg import as_matrices


def matmul(xp, a, b):
    """``a @ b`` laid out for BLAS: a stack times a matrix becomes one 2-D product, and a stacked operand
    whose matrices BLAS cannot read as they lie (broadcast along a matrix axis, a step in both axes) is
    made contiguous first, since numpy multiplies those without BLAS."""
    if b.ndim == 2 and a.ndim > 2:
        if not a.flags.c_contiguous:
            a = xp.ascontiguousarray(a)
        return (a.reshape(math.prod(a.shape[:-1]), a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if a.ndim > 2 or b.ndim > 2:
        a = a if blas_readable(a) else xp.ascontiguousarray(a)
        b = b if blas_readable(b) else xp.ascontiguousarray(b)
    return xp.matmul(a, b)


def blas_readable(m) -> bool:
    """numpy hands each matrix of a stack to BLAS as it lies when its rows or its columns are unit-stride
    and the other stride is at least the row (column) length (numpy's ``is_blasable2d``): C-contiguous
    matrices and transposed views both qualify, broadcast or otherwise strided matrices do not."""
    if m.flags.c_contiguous:
        return True
    if m.ndim < 2 or type(m) is not np.ndarray:
        return False
    size = m.itemsize
    (s_row, s_col), (rows, cols) = m.strides[-2:], m.shape[-2:]
    return ((s_col == size and s_row % size == 0 and s_row // size >= cols)
            or (s_row == size and s_col % size == 0 and s_col // size >= rows))


def MatMul(xp, a, b):
    out = matmul(xp, a, b)
    return out if out.dtype == a.dtype else out.astype(a.dtype)  # ml_dtypes products: rounded once


def rows_times_matrix(xp, g, m):
    """``g @ m`` for a matrix ``m`` computed on the rows of ``g`` that are not all zero, or None when
    most rows are non-zero. Relevance is often confined to a few positions (a language model's seed
    is the last position; the last block's MLP and query projection see only that row)."""
    g2 = g.reshape(-1, g.shape[-1])
    sample = g2[::max(1, g2.shape[0] // 16)]  # ~16 rows: mostly non-zero means dense, no full check
    if g2.shape[0] < 8 or 2 * int(sample.any(axis=1).sum()) > sample.shape[0]:
        return None
    rows = xp.flatnonzero(g2.any(axis=1))
    if 2 * rows.size > g2.shape[0]:
        return None
    out = xp.zeros((g2.shape[0], m.shape[1]), dtype=xp.result_type(g2, m))
    if rows.size:
        out[rows] = matmul(xp, g2[rows], m)
    return out.reshape(g.shape[:-1] + (m.shape[1],))


def matmul_vjp(xp, G, inputs, outputs, attrs, need):
    """The MatMul adjoint of reflrp.ops.linalg with faster products: the operand gradient against a
    weight matrix on the non-zero rows only, the weight gradient of a stack as one product per target."""
    A, B = inputs
    a, b, g = as_matrices(xp, A, B, G[0])
    k = g.shape[0]
    ga = gb = None
    if need[0]:
        ga = rows_times_matrix(xp, g, b.T) if b.ndim == 2 else None
        if ga is None:
            ga = matmul(xp, g, xp.swapaxes(b, -1, -2))
        ga = unbroadcast(xp, ga, a.shape).reshape((k,) + A.shape)
    if need[1]:
        if a.ndim > 2 and b.ndim == 2:  # a weight shared over the batch: one product per target
            a2 = a if a.flags.c_contiguous else xp.ascontiguousarray(a)
            a2 = a2.reshape(-1, a.shape[-1])
            g2 = g.reshape(k, -1, g.shape[-1])
            gb = a2.T @ g2[0] if k == 1 else xp.matmul(a2.T[None], g2)
        else:
            gb = unbroadcast(xp, matmul(xp, xp.swapaxes(a, -1, -2), g), b.shape)
        gb = gb.reshape((k,) + B.shape)
    return [ga, gb]
