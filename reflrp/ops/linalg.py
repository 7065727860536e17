"""Linear algebra kernels and their adjoints: MatMul, Gemm, Einsum, Conv (im2col from one strided view)."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..dtypes import is_numpy_native
from ..errors import UnsupportedOpError
from . import adjoint, kernel
from . import kinds as K
from .grad import unbroadcast


def _as(y, dtype):
    """A product in the operands' type: ml_dtypes' bfloat16/float8 products come back as float32
    (accumulated in float32) and are rounded once, as onnx's reference does."""
    return y if y.dtype == dtype else y.astype(dtype)


@kernel("MatMul", kind=K.CONTRACTION, layer="dense")
def MatMul(xp, a, b):
    return _as(xp.matmul(a, b), a.dtype)


def as_matrices(xp, A, B, g):
    """numpy's matmul semantics made explicit: a 1-D first operand is a row, a 1-D second one a column,
    and the output gradient ``g`` gets the matching unit axes back."""
    a = A[None, :] if A.ndim == 1 else A
    b = B[:, None] if B.ndim == 1 else B
    if B.ndim == 1:
        g = g[..., None]
    if A.ndim == 1:
        g = xp.expand_dims(g, -2)
    return a, b, g


@adjoint("MatMul")
def _matmul_vjp(xp, G, inputs, outputs, attrs, need):
    """``dA = G @ B^T``, ``dB = A^T @ G`` with numpy's matmul semantics (1-D operands, broadcast stacks)."""
    A, B = inputs
    a, b, g = as_matrices(xp, A, B, G[0])
    ga = gb = None
    if need[0]:
        ga = unbroadcast(xp, xp.matmul(g, xp.swapaxes(b, -1, -2)), a.shape).reshape((g.shape[0],) + A.shape)
    if need[1]:
        gb = unbroadcast(xp, xp.matmul(xp.swapaxes(a, -1, -2), g), b.shape).reshape((g.shape[0],) + B.shape)
    return [ga, gb]


@kernel("Gemm", since=7, kind=K.CONTRACTION, addends=(2,), layer="dense")
def Gemm(xp, A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = A.T if transA else A
    b = B.T if transB else B
    y = _as(a @ b, A.dtype)
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    if C is not None:
        y = y + (C if beta == 1.0 else C * C.dtype.type(beta))
    return y


@adjoint("Gemm")
def _gemm_vjp(xp, G, inputs, outputs, attrs, need):
    """``Y = alpha * op(A) @ op(B) + beta * C``: ``d op(A) = alpha G op(B)^T``, ``d op(B) = alpha op(A)^T G``."""
    A, B = inputs[:2]
    C = inputs[2] if len(inputs) > 2 else None
    transA, transB = attrs.get("transA", 0), attrs.get("transB", 0)
    a, b = (A.T if transA else A), (B.T if transB else B)
    g = G[0] * G[0].dtype.type(attrs.get("alpha", 1.0))
    grads = [None] * len(inputs)
    if need[0]:
        ga = xp.matmul(g, b.T)
        grads[0] = xp.swapaxes(ga, -1, -2) if transA else ga
    if need[1]:
        gb = xp.matmul(a.T, g)
        grads[1] = xp.swapaxes(gb, -1, -2) if transB else gb
    if C is not None and need[2]:
        grads[2] = unbroadcast(xp, G[0] * G[0].dtype.type(attrs.get("beta", 1.0)), C.shape)
    return grads


@kernel("Einsum", since=12, kind=K.CONTRACTION)
def Einsum(xp, *inputs, equation):
    equation = equation.replace(" ", "")
    if all(is_numpy_native(i.dtype) for i in inputs):
        return xp.einsum(equation, *inputs)
    # numpy's einsum takes no ml_dtypes type: float32 accumulation, one rounding (as MatMul)
    return _as(xp.einsum(equation, *[i.astype(np.float32) for i in inputs]), inputs[0].dtype)


def einsum_terms(equation: str) -> tuple[list[str], str]:
    """The operand subscripts and the output subscripts of an equation (implicit output: the letters
    that appear once, sorted)."""
    eq = equation.replace(" ", "")
    lhs, out = eq.split("->") if "->" in eq else (eq, "".join(sorted(c for c in eq.replace(",", "")
                                                                    if eq.count(c) == 1)))
    return lhs.split(","), out


@adjoint("Einsum")
def _einsum_vjp(xp, G, inputs, outputs, attrs, need):
    """The gradient of an operand is the einsum of the output gradient with the other operands; axes
    summed out in this operand only are broadcast back. A new subscript carries the target axis."""
    terms, out = einsum_terms(attrs["equation"])
    if "." in attrs["equation"] or any(len(set(t)) != len(t) for t in terms):
        raise UnsupportedOpError(f"Einsum {attrs['equation']!r}: reflrp's adjoint needs an equation without "
                                 "ellipsis or repeated subscripts in one operand")
    k = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in attrs["equation"])
    grads = []
    for i, term in enumerate(terms):
        if not need[i]:
            grads.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        present = set(out).union(*others)
        kept = "".join(c for c in term if c in present)
        g = xp.einsum(",".join([k + out] + others) + "->" + k + kept,
                      G[0], *[inputs[j] for j in range(len(terms)) if j != i])
        for pos, c in enumerate(term):
            if c not in present:
                g = xp.expand_dims(g, pos + 1)
        grads.append(xp.broadcast_to(g, (g.shape[0],) + inputs[i].shape))
    return grads


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


@kernel("Conv", kind=K.CONTRACTION, addends=(2,), layer="conv")
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


def conv_layout(X, W, attrs):
    """Geometry of a Conv: (output size, begin pads, end pads, strides, dilations, kernel shape)."""
    kernel_shape = attrs.get("kernel_shape") or list(W.shape[2:])
    out, begin, end, strides, dilations = conv_geometry(X.shape[2:], kernel_shape, attrs.get("strides"),
                                                        attrs.get("pads"), attrs.get("dilations"),
                                                        attrs.get("auto_pad", "NOTSET"))
    return out, begin, end, strides, dilations, kernel_shape


@adjoint("Conv")
def _conv_vjp(xp, G, inputs, outputs, attrs, need):
    """Conv is ``y[n, g, m] = W[g, m] @ cols(X)[n, g]``: the input gradient goes back through the windows
    (col2im), the weight gradient correlates the windows with G, the bias gradient sums G."""
    X, W = inputs[:2]
    B = inputs[2] if len(inputs) > 2 else None
    out, begin, end, strides, dilations, kernel_shape = conv_layout(X, W, attrs)
    group = attrs.get("group", 1)
    N, C = X.shape[:2]
    M = W.shape[0]
    k = G[0].shape[0]
    kk = int(np.prod(kernel_shape, dtype=np.int64))
    g = G[0].reshape(k, N, group, M // group, math.prod(out))
    w = W.reshape(group, M // group, (C // group) * kk)
    grads = [None] * len(inputs)
    if need[0]:
        cols = xp.matmul(xp.swapaxes(w, -1, -2), g)  # k, N, group, C/g * kk, no
        cols = cols.reshape((k * N, C) + tuple(kernel_shape) + tuple(out))
        gx = col2im(xp, cols, (k * N,) + X.shape[1:], kernel_shape, out, begin, end, strides, dilations)
        grads[0] = gx.reshape((k,) + X.shape)
    if need[1]:
        cols = windows(xp, X, kernel_shape, out, begin, end, strides, dilations).reshape(
            N, group, (C // group) * kk, math.prod(out))
        grads[1] = xp.einsum("kngmo,ngco->kgmc", g, cols).reshape((k,) + W.shape)
    if B is not None and need[2]:
        grads[2] = G[0].sum(axis=(1,) + tuple(range(3, G[0].ndim)))
    return grads


def col2im(xp, cols, x_shape, kernel_shape, out, begin, end, strides, dilations):
    """Adjoint of :func:`windows`: add each kernel offset's view back into place."""
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


def conv_transpose_geometry(spatial, kernel_shape, strides, pads, dilations, auto_pad, output_padding, output_shape):
    """Output size and (begin, end) pads per spatial axis of ConvTranspose, as onnxruntime computes them.

    The full output of input size ``n`` is ``s (n - 1) + op + (k - 1) d + 1``; ``output_shape`` (or
    SAME_* padding, output ``n s``) fixes the size and the pads are what is cut away, the odd one at
    the beginning (at the end with SAME_UPPER), as the ONNX spec says."""
    n = len(spatial)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    output_padding = list(output_padding or [0] * n)
    pads = list(pads) if pads else [0] * (2 * n)
    if output_shape is not None and len(output_shape) == n + 2:
        output_shape = list(output_shape)[2:]
    out, begin, end = [], [], []
    for i in range(n):
        full = strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel_shape[i] - 1) * dilations[i] + 1
        want = output_shape[i] if output_shape is not None else (
            spatial[i] * strides[i] if auto_pad in ("SAME_UPPER", "SAME_LOWER") else None)
        if want is None:
            b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + n])
        else:
            total = full - want  # negative: the output extends past the full one, with zeros
            b, e = (total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2)
        out.append(full - b - e)
        begin.append(b)
        end.append(e)
    return out, begin, end, strides, dilations


def conv_transpose_layout(X, W, attrs):
    """Geometry of a ConvTranspose: (output size, begin pads, end pads, strides, dilations, kernel shape)."""
    kernel_shape = list(attrs.get("kernel_shape") or W.shape[2:])
    out, begin, end, strides, dilations = conv_transpose_geometry(
        X.shape[2:], kernel_shape, attrs.get("strides"), attrs.get("pads"), attrs.get("dilations"),
        attrs.get("auto_pad", "NOTSET"), attrs.get("output_padding"), attrs.get("output_shape"))
    return out, begin, end, strides, dilations, kernel_shape


def _cut_and_grow(out, begin, end):
    """Negative pads extend the output with zeros: the size computed before that, the pads that cut,
    and the (begin, end) zeros that extend."""
    grow = [(max(-b, 0), max(-e, 0)) for b, e in zip(begin, end)]
    inner = [o - lo - hi for o, (lo, hi) in zip(out, grow)]
    return inner, [max(b, 0) for b in begin], [max(e, 0) for e in end], grow


@kernel("ConvTranspose", kind=K.CONTRACTION, addends=(2,), layer="conv")
def ConvTranspose(xp, X, W, B=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    """The adjoint of a Conv with respect to its input: every input position adds ``W[c] x[c]`` into its
    kernel window of the output (col2im), then the pads are cut away."""
    attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape, output_padding=output_padding,
                 output_shape=output_shape, pads=pads, strides=strides)
    out, begin, end, strides, dilations, kernel_shape = conv_transpose_layout(X, W, attrs)
    inner, begin, end, grow = _cut_and_grow(out, begin, end)
    N, C = X.shape[:2]
    M = W.shape[1] * group
    nk, ni = len(kernel_shape), math.prod(X.shape[2:])
    w = W.reshape(group, C // group, (M // group) * math.prod(kernel_shape))
    x = X.reshape(N, group, C // group, ni)
    cols = _as(xp.matmul(xp.swapaxes(w, -1, -2)[None], x), X.dtype)  # N, group, M/g * kk, ni
    cols = cols.reshape((N, M) + tuple(kernel_shape) + tuple(X.shape[2:]))
    y = col2im(xp, cols, (N, M) + tuple(inner), kernel_shape, list(X.shape[2:]), begin, end, strides, dilations)
    if any(lo or hi for lo, hi in grow):
        y = xp.pad(y, [(0, 0), (0, 0)] + grow)
    if B is not None:
        y = y + B.reshape((1, M) + (1,) * nk)
    return y


@adjoint("ConvTranspose")
def _conv_transpose_vjp(xp, G, inputs, outputs, attrs, need):
    """``y = col2im(W^T x)``: the input gradient gathers each input position's kernel window of G (a Conv
    of G with W), the weight gradient correlates those windows with X, the bias gradient sums G."""
    X, W = inputs[:2]
    B = inputs[2] if len(inputs) > 2 else None
    out, begin, end, strides, dilations, kernel_shape = conv_transpose_layout(X, W, attrs)
    inner, begin, end, grow = _cut_and_grow(out, begin, end)
    group = attrs.get("group", 1)
    N, C = X.shape[:2]
    M = W.shape[1] * group
    k, ni = G[0].shape[0], math.prod(X.shape[2:])
    kk = math.prod(kernel_shape)
    g = G[0].reshape((k * N, M) + tuple(out))
    g = g[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(grow, inner))]
    cols = windows(xp, g, kernel_shape, list(X.shape[2:]), begin, end, strides, dilations)
    cols = cols.reshape(k, N, group, (M // group) * kk, ni)
    grads = [None] * len(inputs)
    if need[0]:
        w = W.reshape(group, C // group, (M // group) * kk)
        grads[0] = xp.matmul(w, cols).reshape((k,) + X.shape)
    if need[1]:
        x = X.reshape(N, group, C // group, ni)
        grads[1] = xp.einsum("ngci,kngmi->kgcm", x, cols).reshape((k,) + W.shape)
    if B is not None and need[2]:
        grads[2] = G[0].sum(axis=(1,) + tuple(range(3, G[0].ndim)))
    return grads
