"""onnxruntime's QOperator ops (``quantize_static(..., quant_format=QuantFormat.QOperator)``): each
quantized float op ``QLinearOp(x, x_scale, x_zp, ..., y_scale, y_zp)`` as the QDQ graph it stands for,
``QuantizeLinear(Op(DequantizeLinear(x), ...), y_scale, y_zp)``.

The float op in the middle then gets its rule like in a float or QDQ model, and the quantize /
dequantize pairs pass relevance on (docs/rules.md, quantized models). onnxruntime computes these ops
with lookup tables, fixed-point multipliers or integer sums; the float32 expansion lands one
quantization step away from it where a value is within float32 rounding of a rounding tie
(tests/test_qoperator.py measures it per op).
"""
from __future__ import annotations

import numpy as np

from . import Emit, rewrites

MS = "com.microsoft"
# the com.microsoft QOperator ops rewritten here (tests/test_qoperator.py has a case for each)
QOPERATOR_OPS = ("QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
                 "QLinearConcat", "QLinearWhere", "QLinearReduceMean", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "QLinearConv")
QUANTIZED_TYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16))


def quantized_type(e: Emit, *names: str) -> np.dtype:
    """The integer type of the node's quantized data: that of a static zero point or tensor among
    ``names``, else the type the model records for one of them."""
    for n in names:
        v = e.static(n)
        if v is not None and v.dtype in QUANTIZED_TYPES:
            return v.dtype
    for n in names:
        info = e.graph.value_info.get(n) or next((v for v in e.graph.inputs if v.name == n), None)
        if info is not None and info.dtype is not None and np.dtype(info.dtype) in QUANTIZED_TYPES:
            return np.dtype(info.dtype)
    raise e.unsupported(f"the quantized type of {[n for n in names if n]} is not known at load "
                        f"(no zero point is given and the model records no type)")


def dequantized(e: Emit, x: str, scale: str, zero_point: str, axis: int | None = None) -> str:
    """``(x - zero_point) * scale``; a size-1 static scale / zero point is per tensor."""
    inputs = [x, per_tensor(e, scale)] + ([per_tensor(e, zero_point)] if zero_point else [])
    return e.op("DequantizeLinear", *inputs, **({"axis": axis} if axis is not None else {}))


def per_tensor(e: Emit, name: str) -> str:
    """A static 1-element tensor as a scalar (DequantizeLinear reads a 1-D one as per-axis)."""
    v = e.static(name)
    return e.const(v.reshape(())) if v is not None and v.ndim and v.size == 1 else name


def requantized(e: Emit, y: str, scale: str, zero_point: str, dtype: np.dtype, out: str) -> str:
    """``saturate(round(y / scale) + zero_point)`` in ``dtype`` (an omitted zero point is 0 of that type)."""
    zp = per_tensor(e, zero_point) if zero_point else e.const(np.zeros((), dtype))
    return e.op("QuantizeLinear", y, per_tensor(e, scale), zp, outputs=out or 1)


def unary(e: Emit, float_op) -> None:
    """``QLinearOp(X, X_scale, X_zp?, Y_scale, Y_zp?) = Q(float_op(DQ(X)))``."""
    x, xs, xz, ys, yz = (e.input(i) for i in range(5))
    y = float_op(dequantized(e, x, xs, xz))
    requantized(e, y, ys, yz, quantized_type(e, xz, yz, x), e.output(0))


# ---- elementwise

@rewrites(MS, "QLinearAdd", "QLinearMul")
def qlinear_binary(e: Emit):
    """``C = Q(DQ(A) + DQ(B))`` (``*`` for QLinearMul); inputs (A, A_scale, A_zp?, B, B_scale, B_zp?,
    C_scale, C_zp?)."""
    a, as_, az, b, bs, bz, cs, cz = (e.input(i) for i in range(8))
    y = e.op(e.node.op_type[len("QLinear"):], dequantized(e, a, as_, az), dequantized(e, b, bs, bz))
    requantized(e, y, cs, cz, quantized_type(e, az, bz, cz, a, b), e.output(0))


@rewrites(MS, "QLinearSigmoid")
def qlinear_sigmoid(e: Emit):
    unary(e, lambda x: e.op("Sigmoid", x))


@rewrites(MS, "QLinearLeakyRelu")
def qlinear_leaky_relu(e: Emit):
    unary(e, lambda x: e.op("LeakyRelu", x, alpha=float(e.attr("alpha", 0.01))))


@rewrites(MS, "QLinearWhere")
def qlinear_where(e: Emit):
    """``Z = Q(Where(condition, DQ(X), DQ(Y)))``; inputs (condition, X, x_scale, x_zp, Y, y_scale, y_zp,
    z_scale, z_zp)."""
    cond, x, xs, xz, y, ys, yz, zs, zz = (e.input(i) for i in range(9))
    z = e.op("Where", cond, dequantized(e, x, xs, xz), dequantized(e, y, ys, yz))
    requantized(e, z, zs, zz, quantized_type(e, zz, xz, yz, x, y), e.output(0))


@rewrites(MS, "QLinearConcat")
def qlinear_concat(e: Emit):
    """``Y = Q(Concat(DQ(x_1), ..., axis))``; inputs (Y_scale, Y_zp, then (x_i, scale_i, zp_i) per input)."""
    ys, yz = e.input(0), e.input(1)
    triples = [e.node.inputs[i:i + 3] for i in range(2, len(e.node.inputs), 3)]
    if not triples or any(len(t) != 3 for t in triples):
        raise e.unsupported("inputs must be Y_scale, Y_zero_point and (tensor, scale, zero point) triples")
    y = e.op("Concat", *[dequantized(e, x, s, z) for x, s, z in triples], axis=int(e.attr("axis")))
    requantized(e, y, ys, yz, quantized_type(e, yz, *[t[2] for t in triples]), e.output(0))


@rewrites(MS, "QLinearSoftmax")
def qlinear_softmax(e: Emit):
    """``Y = Q(Softmax(DQ(X)))`` over ``axis`` (attribute ``opset`` >= 13) or over the axes from ``axis``
    on (below 13: the input coerced to 2-D, default axis 1). onnxruntime scales the probabilities by
    ``floor(1 / y_scale)``, i.e. quantizes with ``1 / floor(1 / y_scale)`` (the same for its 1/256)."""
    x, xs, xz, ys, yz = (e.input(i) for i in range(5))
    old = int(e.attr("opset")) < 13
    axis = int(e.attr("axis", 1 if old else -1))
    p = softmax(e, dequantized(e, x, xs, xz), axis, coerced=old)
    scale = e.op("Reciprocal", e.op("Floor", e.op("Reciprocal", per_tensor(e, ys))))
    requantized(e, p, scale, yz, quantized_type(e, yz, xz, x), e.output(0))


def softmax(e: Emit, x: str, axis: int, coerced: bool) -> str:
    """Softmax over ``axis`` alone, or over the flattened axes ``axis..`` when ``coerced``, in this graph's opset."""
    if coerced == (e.opset < 13) or axis == -1:  # the core op has the wanted semantics (or they coincide)
        return e.op("Softmax", x, axis=axis)
    if coerced:  # opset >= 13: flatten the softmax axes into one
        flat = e.op("Softmax", e.op("Flatten", x, axis=axis), axis=-1)
        return e.op("Reshape", flat, e.op("Shape", x))
    rank = e.rank(x) or e.rank(e.input(0))
    if rank is None:
        raise e.unsupported(f"softmax over axis {axis} below opset 13 needs the input's rank")
    if axis % rank == rank - 1:
        return e.op("Softmax", x, axis=-1)
    perm = list(range(rank))
    perm[axis % rank], perm[-1] = perm[-1], perm[axis % rank]
    return e.op("Transpose", e.op("Softmax", e.op("Transpose", x, perm=perm), axis=-1), perm=perm)


@rewrites(MS, "QLinearReduceMean")
def qlinear_reduce_mean(e: Emit):
    """``reduced = Q(ReduceMean(DQ(data), axes, keepdims))``."""
    unary(e, lambda x: e.reduce("ReduceMean", x, list(e.attr("axes")), keepdims=int(e.attr("keepdims", 1))))


# ---- pooling (channels_last: NHWC data, pooled as NCHW between two Transposes)

def channels_first(e: Emit, x: str, rank: int) -> str:
    return e.op("Transpose", x, perm=[0, rank - 1] + list(range(1, rank - 1)))


def channels_last(e: Emit, x: str, rank: int, out: str = "") -> str:
    return e.op("Transpose", x, perm=[0] + list(range(2, rank)) + [1], outputs=out or 1)


def pooled(e: Emit, pool, rank: int | None) -> None:
    """``Q(pool(DQ(X)))`` with ``X`` read as NCHW, or as NHWC when ``channels_last``."""
    x, xs, xz, ys, yz = (e.input(i) for i in range(5))
    nhwc = bool(e.attr("channels_last", 0))
    if nhwc and rank is None:
        raise e.unsupported("channels_last needs the input's rank, which the model does not record")
    xf = dequantized(e, x, xs, xz)
    y = pool(channels_first(e, xf, rank) if nhwc else xf)
    requantized(e, channels_last(e, y, rank) if nhwc else y, ys, yz, quantized_type(e, xz, yz, x), e.output(0))


POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")


@rewrites(MS, "QLinearAveragePool")
def qlinear_average_pool(e: Emit):
    attrs = {k: e.attr(k) for k in POOL_ATTRS if k in e.node.attrs}
    pooled(e, lambda x: e.op("AveragePool", x, **attrs), len(e.attr("kernel_shape")) + 2)


@rewrites(MS, "QLinearGlobalAveragePool")
def qlinear_global_average_pool(e: Emit):
    pooled(e, lambda x: e.op("GlobalAveragePool", x), e.rank(e.input(0)))


@rewrites(MS, "QLinearConv")
def contrib_qlinear_conv(e: Emit):
    """The com.microsoft QLinearConv: the core op, on NHWC data when ``channels_last``."""
    attrs = {k: v for k, v in e.node.attrs.items() if k != "channels_last"}
    inputs = list(e.node.inputs)
    if not e.attr("channels_last", 0):
        e.op("QLinearConv", *inputs, outputs=e.output(0), **attrs)
        return
    rank = e.require_static(e.input(3), "the weight").ndim
    inputs[0] = channels_first(e, inputs[0], rank)
    channels_last(e, e.op("QLinearConv", *inputs, **attrs), rank, e.output(0))


# ---- QGemm

@rewrites(MS, "QGemm")
def qgemm(e: Emit):
    """QGemm(A, a_scale, a_zp, B, b_scale, b_zp?, C?, y_scale?, y_zp?) = alpha * (A'B' + C) in the
    dequantized values, quantized with (y_scale, y_zp), or float when y_scale is omitted.

    onnxruntime adds the int32 ``C`` (in ``a_scale * b_scale`` units, per column with ``b_scale``) to
    the integer accumulator before scaling by ``alpha``: as a float Gemm, ``beta = alpha``.
    """
    a, a_s, a_z, b, b_s, b_z, c, y_s, y_z = (e.input(i) for i in range(9))
    trans_a, trans_b, alpha = int(e.attr("transA", 0)), int(e.attr("transB", 0)), float(e.attr("alpha", 1.0))
    if y_s and not y_z:
        raise e.unsupported("y_scale without y_zero_point is not supported")
    b_scale = e.static(b_s)
    per_column = b_scale is not None and b_scale.size > 1
    inputs = [dequantized(e, a, a_s, a_z), dequantized(e, b, b_s, b_z, axis=0 if trans_b else 1)]
    if c:  # (C * a_scale) * b_scale: b_scale broadcasts along the columns (last axis)
        inputs.append(e.op("Mul", dequantized(e, c, a_s, ""), b_s if per_column else per_tensor(e, b_s)))
    attrs = dict(alpha=alpha, transA=trans_a, transB=trans_b, **({"beta": alpha} if c else {}))
    if not y_s:
        e.op("Gemm", *inputs, outputs=e.output(0), **attrs)
        return
    requantized(e, e.op("Gemm", *inputs, **attrs), y_s, y_z, quantized_type(e, y_z), e.output(0))
