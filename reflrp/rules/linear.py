"""Epsilon rules for linear maps (MatMul, Gemm, Conv, Einsum, reductions, pooling, BatchNorm) and the
uniform / CP rules for bilinear products (``Q @ K^T``, ``A @ V``).

LRP-epsilon (Bach et al. 2015): ``R_x = x * J^T (R_y / stab(y))``; a bias inside ``y`` absorbs
``bias * R_y / stab(y)``.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ops.linalg import conv_geometry, matmul, windows
from . import Result, passed, ratio, rule, times, total, unbroadcast


def matmul_vjp(xp, A, B, G, need=(True, True)):
    """Gradients of ``A @ B`` (numpy matmul semantics, broadcasting) given the output gradient ``G``;
    ``need`` skips the gradient of an operand that gets no relevance (None in its place)."""
    a = A[None, :] if A.ndim == 1 else A
    b = B[:, None] if B.ndim == 1 else B
    g = G
    if B.ndim == 1:
        g = xp.expand_dims(g, -1)
    if A.ndim == 1:
        g = xp.expand_dims(g, -2)
    ga = None
    if need[0]:
        ga = _rows_times_matrix(xp, g, b.T) if b.ndim == 2 and g.ndim >= 2 else None
        if ga is None:
            ga = matmul(xp, g, xp.swapaxes(b, -1, -2))
        ga = unbroadcast(xp, ga, a.shape).reshape(A.shape)
    gb = None
    if need[1]:
        if a.ndim > 2 and b.ndim == 2:  # a weight shared over the batch: one 2-D product
            a2 = a if a.flags.c_contiguous else xp.ascontiguousarray(a)
            gb = a2.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        else:
            gb = unbroadcast(xp, matmul(xp, xp.swapaxes(a, -1, -2), g), b.shape)
        gb = gb.reshape(B.shape)
    return ga, gb


def _rows_times_matrix(xp, g, m):
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


def _finish(ctx, R, y, G, parts):
    """Result with the stabiliser loss: what ``y * G`` did not pass on."""
    return Result(parts, loss=total(ctx.xp, R) - passed(ctx.xp, y, G))


@rule("epsilon")
def epsilon_rule(ctx, inputs, outputs, R_out):
    """LRP-epsilon through a linear node with one dynamic operand; biases absorb."""
    xp, op = ctx.xp, ctx.node.op_type
    R, y = R_out[0], outputs[0]
    G = ratio(xp, R, y, ctx.eps)
    parts = [None] * len(inputs)
    if op == "MatMul":
        grads = matmul_vjp(xp, inputs[0], inputs[1], G, ctx.dynamic)
        parts = [times(xp, x, g) if d else None for x, g, d in zip(inputs, grads, ctx.dynamic)]
    elif op == "Gemm":
        A, B, C = (list(inputs) + [None])[:3]
        a, b = (A.T if ctx.attrs.get("transA", 0) else A), (B.T if ctx.attrs.get("transB", 0) else B)
        alpha, beta = ctx.attrs.get("alpha", 1.0), ctx.attrs.get("beta", 1.0)
        Gs = G * G.dtype.type(alpha)
        ga, gb = Gs @ b.T, a.T @ Gs
        if ctx.dynamic[0]:
            parts[0] = times(xp, A, ga.T if ctx.attrs.get("transA", 0) else ga)
        if ctx.dynamic[1]:
            parts[1] = times(xp, B, gb.T if ctx.attrs.get("transB", 0) else gb)
        if C is not None:
            parts[2] = unbroadcast(xp, times(xp, C * C.dtype.type(beta), G), C.shape)
    elif op == "Conv":
        parts[0] = times(xp, inputs[0], conv_vjp_input(xp, ctx.attrs, inputs[0], inputs[1], G))
        if len(inputs) > 2 and inputs[2] is not None:
            B = inputs[2]
            parts[2] = _per_channel(xp, times(xp, B.reshape((1, -1) + (1,) * (y.ndim - 2)), G))
    elif op == "Einsum":
        grads = einsum_vjp(xp, ctx.attrs["equation"], inputs, G)
        parts = [times(xp, x, g) if d else None for x, g, d in zip(inputs, grads, ctx.dynamic)]
    elif op in ("ReduceSum", "ReduceMean"):
        x = inputs[0]
        Gk = _keepdims(xp, ctx, x, G, inputs[1] if len(inputs) > 1 else None)
        scale = x.dtype.type(x.size / max(y.size, 1)) if op == "ReduceMean" else None
        parts[0] = times(xp, x, xp.broadcast_to(Gk if scale is None else Gk / scale, x.shape))
    elif op in ("AveragePool", "GlobalAveragePool"):
        parts[0] = times(xp, inputs[0], avgpool_vjp(xp, ctx, inputs[0], G))
    elif op == "BatchNormalization":
        X, scale, B, mean, var = inputs[:5]
        shape = (1, -1) + (1,) * (X.ndim - 2)
        a = (scale / xp.sqrt(var + var.dtype.type(ctx.attrs.get("epsilon", 1e-5)))).reshape(shape)
        parts[0] = times(xp, X * a, G)
        parts[2] = _per_channel(xp, times(xp, B.reshape(shape) - mean.reshape(shape) * a, G))
    else:  # pragma: no cover - the plan only assigns this rule to the ops above
        raise NotImplementedError(op)
    return _finish(ctx, R, y, G, parts)


def _per_channel(xp, r):
    """Sum an (N, C, ...) relevance to (C,): what a per-channel bias absorbs."""
    return r.sum(axis=(0,) + tuple(range(2, r.ndim)))


def _keepdims(xp, ctx, x, G, axes_input):
    """Reshape a reduction's output gradient so it broadcasts against the input."""
    if ctx.attrs.get("keepdims", 1) or G.ndim == x.ndim:
        return G
    axes = ctx.attrs.get("axes")
    if axes is None and axes_input is not None:
        axes = [int(a) for a in axes_input.tolist()]
    if not axes:
        return G.reshape((1,) * x.ndim)
    for a in sorted(ax % x.ndim for ax in axes):
        G = xp.expand_dims(G, a)
    return G


@rule("bilinear-uniform")
def bilinear_uniform_rule(ctx, inputs, outputs, R_out):
    """AttnLRP uniform rule: each of the n dynamic factors of a product gets ``1/n`` (Achtibat et al. 2024)."""
    xp = ctx.xp
    R, y = R_out[0], outputs[0]
    n = sum(ctx.dynamic)
    G = ratio(xp, R, y, ctx.eps)
    share = y.dtype.type(1.0 / n)
    # the 1/n goes on whichever is smaller: G (A @ V: s x d) or the operand gradients (Q @ K^T)
    scale_g = G.size <= sum(x.size for x, d in zip(inputs, ctx.dynamic) if d)
    Gs = G * share if scale_g else G
    if ctx.node.op_type == "MatMul":
        grads = matmul_vjp(xp, inputs[0], inputs[1], Gs)
    else:
        grads = einsum_vjp(xp, ctx.attrs["equation"], inputs, Gs)
    parts = [times(xp, x, g if scale_g else g * share) if d else None
             for x, g, d in zip(inputs, grads, ctx.dynamic)]
    return Result(parts, loss=total(xp, R) - passed(xp, y, G))


@rule("bilinear-cp")
def bilinear_cp_rule(ctx, inputs, outputs, R_out):
    """CP-LRP on ``A @ V``: the attention weights A are held constant, all relevance goes to V."""
    xp = ctx.xp
    R, y = R_out[0], outputs[0]
    G = ratio(xp, R, y, ctx.eps)
    _, gb = matmul_vjp(xp, inputs[0], inputs[1], G, (False, True))
    return _finish(ctx, R, y, G, [None, times(xp, inputs[1], gb)])


def einsum_vjp(xp, equation, operands, G):
    """Gradient of each einsum operand (explicit equations without ellipsis or repeated subscripts)."""
    eq = equation.replace(" ", "")
    lhs, out = eq.split("->") if "->" in eq else (eq, "".join(sorted(c for c in eq.replace(",", "")
                                                                    if eq.count(c) == 1)))
    terms = lhs.split(",")
    if "." in eq or any(len(set(t)) != len(t) for t in terms):
        raise NotImplementedError(f"Einsum relevance needs an explicit equation without ellipsis: {equation!r}")
    grads = []
    for i, term in enumerate(terms):
        others = [t for j, t in enumerate(terms) if j != i]
        args = [G] + [operands[j] for j in range(len(terms)) if j != i]
        present = set(out).union(*others) if others else set(out)
        missing = [c for c in term if c not in present]  # summed-out axes of this operand only
        g = xp.einsum(",".join([out] + others) + "->" + "".join(c for c in term if c not in missing), *args)
        if missing:
            for pos, c in enumerate(term):
                if c in missing:
                    g = xp.expand_dims(g, pos)
            g = xp.broadcast_to(g, operands[i].shape)
        grads.append(g)
    return grads


def conv_vjp_input(xp, attrs, X, W, G):
    """Gradient of Conv with respect to its input: scatter the window gradients back (col2im)."""
    kernel_shape = attrs.get("kernel_shape") or list(W.shape[2:])
    group = attrs.get("group", 1)
    out, begin, end, strides, dilations = conv_geometry(X.shape[2:], kernel_shape, attrs.get("strides"),
                                                        attrs.get("pads"), attrs.get("dilations"),
                                                        attrs.get("auto_pad", "NOTSET"))
    N, C = X.shape[:2]
    M = W.shape[0]
    kk = int(np.prod(kernel_shape, dtype=np.int64))
    g = G.reshape(N, group, M // group, -1)
    w = W.reshape(group, M // group, (C // group) * kk)
    cols = (xp.swapaxes(w, -1, -2)[None] @ g).reshape((N, C) + tuple(kernel_shape) + tuple(out))
    return col2im(xp, cols, X.shape, kernel_shape, out, begin, end, strides, dilations)


def col2im(xp, cols, x_shape, kernel_shape, out, begin, end, strides, dilations):
    """Adjoint of :func:`reflrp.ops.linalg.windows`: add each kernel offset's view back into place."""
    n = len(kernel_shape)
    need = [(out[i] - 1) * strides[i] + (kernel_shape[i] - 1) * dilations[i] + 1 for i in range(n)]
    padded = [max(x_shape[2 + i] + begin[i] + end[i], need[i]) for i in range(n)]
    acc = xp.zeros(tuple(x_shape[:2]) + tuple(padded), dtype=cols.dtype)
    for offset in itertools.product(*[range(k) for k in kernel_shape]):
        index = (slice(None), slice(None)) + tuple(
            slice(offset[i] * dilations[i], offset[i] * dilations[i] + (out[i] - 1) * strides[i] + 1, strides[i])
            for i in range(n))
        acc[index] += cols[(slice(None), slice(None)) + offset]
    crop = (slice(None), slice(None)) + tuple(slice(begin[i], begin[i] + x_shape[2 + i]) for i in range(n))
    return acc[crop]


def avgpool_vjp(xp, ctx, X, G):
    """Gradient of (Global)AveragePool with respect to its input."""
    if ctx.node.op_type == "GlobalAveragePool":
        n = int(np.prod(X.shape[2:], dtype=np.int64))
        return xp.broadcast_to(G / G.dtype.type(n), X.shape)
    a = ctx.attrs
    kernel_shape = a["kernel_shape"]
    out, begin, end, strides, dilations = conv_geometry(X.shape[2:], kernel_shape, a.get("strides"), a.get("pads"),
                                                        a.get("dilations"), a.get("auto_pad", "NOTSET"),
                                                        a.get("ceil_mode", 0))
    nk = len(kernel_shape)
    if a.get("count_include_pad", 0):
        ones = xp.ones((1, 1) + tuple(s + begin[i] + end[i] for i, s in enumerate(X.shape[2:])), dtype=X.dtype)
        count = windows(xp, ones, kernel_shape, out, [0] * nk, [0] * nk, strides, dilations)
    else:
        ones = xp.ones((1, 1) + X.shape[2:], dtype=X.dtype)
        count = windows(xp, ones, kernel_shape, out, begin, end, strides, dilations)
    count = count.reshape((1, 1, -1) + tuple(out)).sum(axis=2)
    g = xp.broadcast_to(
        (G / count).reshape(G.shape[:2] + (1,) * nk + tuple(out)), G.shape[:2] + tuple(kernel_shape) + tuple(out))
    return col2im(xp, g, X.shape, kernel_shape, out, begin, end, strides, dilations)
