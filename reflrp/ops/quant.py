"""Quantized-op kernels: QuantizeLinear / DequantizeLinear (per tensor, per axis, blocked; 8-bit, 4-bit
and float8 types), DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

The integer arithmetic is onnxruntime's: rounding is half to even, results saturate to the output
type, integer accumulation is exact (done in float64, exact below 2**53), and requantization
(QLinearMatMul / QLinearConv) multiplies the int32 accumulator by the float32
``(a_scale * b_scale) / y_scale`` as MLAS does. Quantization parameters of DynamicQuantizeLinear
are float32 by the spec, so they are computed in float32 under any float policy too.
MatMulInteger and ConvInteger are exact: onnxruntime's uint8 x int8 kernels on AVX2 saturate each
sum of two adjacent products to int16 (vpmaddubsw), so models quantized with int8 weights without
``reduce_range`` differ from onnxruntime there by design (uint8 weights or 7-bit ranges agree).
Where the float policy is float64, QuantizeLinear divides in float64: a value within one float32
rounding of a rounding tie can land one quantum away from onnxruntime's float32 result.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import UnsupportedOpError
from . import adjoint, kernel
from . import kinds as K
from .linalg import Conv
from .tensor import axis_index

# ONNX element type code -> numpy dtype of the quantized types (local: reflrp.dtypes covers the rest)
QUANTIZED = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
             17: ml_dtypes.float8_e4m3fn, 18: ml_dtypes.float8_e4m3fnuz, 19: ml_dtypes.float8_e5m2,
             20: ml_dtypes.float8_e5m2fnuz, 21: ml_dtypes.uint4, 22: ml_dtypes.int4}
FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
                                ml_dtypes.float8_e5m2fnuz, ml_dtypes.float4_e2m1fn)}  # the small float targets


def integer_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(np.dtype(dtype))  # knows numpy's integers and the 4- and 2-bit ones
    return int(info.min), int(info.max)


def along(xp, param, x, axis: int, block_size: int):
    """A scale or zero point shaped to broadcast against ``x``: a scalar (per tensor), a 1-D vector
    on ``axis`` (per axis), or one value per ``block_size`` run along ``axis`` (blocked)."""
    if param.ndim == 0 or param.size == 1 and not block_size:
        return param.reshape(())
    axis = axis_index(axis, x.ndim)
    if block_size:
        expanded = xp.repeat(param, block_size, axis=axis)
        return xp.take(expanded, xp.arange(x.shape[axis]), axis=axis)
    return param.reshape((-1,) + (1,) * (x.ndim - axis - 1))


def as_int(xp, a):
    """Integer-valued array as float64 (4-bit and 8-bit types included)."""
    return xp.asarray(a).astype(np.float64)


def output_type(zero_point, output_dtype: int) -> np.dtype:
    if zero_point is not None:
        return zero_point.dtype
    if output_dtype:
        try:
            return np.dtype(QUANTIZED[int(output_dtype)])
        except KeyError:
            raise UnsupportedOpError(f"output_dtype {output_dtype} is not a supported quantized type") from None
    return np.dtype(np.uint8)


@kernel("QuantizeLinear", since=10, kind=K.CAST, quantizer=True)
def QuantizeLinear(xp, x, y_scale, y_zero_point=None, axis=1, block_size=0, output_dtype=0, saturate=1,
                   precision=0):
    """``y = saturate(round_half_even(x / y_scale) + y_zero_point)``; float8: ``cast(x / y_scale)``,
    clipped to the finite range when ``saturate``."""
    target = output_type(y_zero_point, output_dtype)
    scaled = x / along(xp, y_scale, x, axis, block_size)
    if target in FLOAT8:
        if saturate:
            top = float(ml_dtypes.finfo(target).max)
            scaled = xp.clip(scaled, -top, top)
        return scaled.astype(np.float32).astype(target)
    lo, hi = integer_range(target)
    q = xp.rint(scaled)
    if y_zero_point is not None:
        q = q + along(xp, as_int(xp, y_zero_point), x, axis, block_size)
    return saturated(xp, q, lo, hi).astype(target)


def saturated(xp, q, lo: int, hi: int):
    """``q`` clipped to [lo, hi]; NaN (e.g. -inf / inf from an infinite scale) becomes ``lo`` as in
    onnxruntime's x86 kernels (maxps returns its second operand when the first is NaN)."""
    return xp.clip(xp.where(xp.isnan(q), lo, q), lo, hi)


@kernel("DequantizeLinear", since=10, kind=K.CAST, quantizer=True)
def DequantizeLinear(xp, x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0, precision=0):
    """``y = (x - x_zero_point) * x_scale`` in the scale's float type (float8: ``x`` as a float)."""
    scale = along(xp, x_scale, x, axis, block_size)
    values = xp.asarray(x).astype(scale.dtype if x_scale.dtype.kind == "f" else np.float32)
    if x_zero_point is not None and np.dtype(x_zero_point.dtype) not in FLOAT8:
        values = values - along(xp, as_int(xp, x_zero_point), x, axis, block_size).astype(values.dtype)
    return values * scale


@kernel("DynamicQuantizeLinear", since=11, kind=K.CAST, relevant_outputs=1, quantizer=True)
def DynamicQuantizeLinear(xp, x):
    """uint8 quantization of ``x`` with ``scale = (max(x, 0) - min(x, 0)) / 255`` and
    ``zero_point = saturate(round(-min(x, 0) / scale))`` (float32, as the spec types them)."""
    x32 = x.astype(np.float32, copy=False)
    lo = min(float(xp.min(x32)) if x32.size else 0.0, 0.0)
    hi = max(float(xp.max(x32)) if x32.size else 0.0, 0.0)
    scale = np.float32(1.0) if hi == lo else np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    zero_point = np.uint8(np.clip(np.rint(np.float32(0) - np.float32(lo) / scale), 0, 255))
    y = saturated(xp, xp.rint(x32 / scale) + float(zero_point), 0, 255).astype(np.uint8)
    return y, xp.asarray(scale).astype(x.dtype), xp.asarray(zero_point)


def centered(xp, a, zero_point, axis: int):
    """``a - zero_point`` as exact float64 (a 1-D zero point applies along ``axis``)."""
    values = as_int(xp, a)
    if zero_point is None:
        return values
    z = as_int(xp, zero_point)
    if z.ndim == 1 and z.size > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        z = z.reshape(shape)
    return values - z


def numbers(operands, before_rounding=None):
    """The ``centred`` fact of an integer product (see :class:`reflrp.ops.OpRecord`): ``operands`` lists
    ``(input, input holding its zero point or None, zero point axis)``; the output is the int32
    accumulator, or for a requantizing op ``before_rounding(xp, inputs, attrs)``: its output before
    rounding, ``acc * a_scale b_scale / y_scale`` (the rounding and saturation are straight-through)."""
    def centred_values(xp, inputs, outputs, attrs, dtype):
        xs = list(inputs)
        for i, z, axis in operands:
            if i < len(inputs) and inputs[i] is not None:
                zp = inputs[z] if z is not None and z < len(inputs) else None
                xs[i] = centered(xp, inputs[i], zp, axis).astype(dtype)
        y = as_int(xp, outputs[0]) if before_rounding is None else before_rounding(xp, inputs, attrs)
        return xs, [y.astype(dtype)] + list(outputs[1:])
    return centred_values


def on_axis(m, ndim: int, axis: int):
    """A per-tensor or per-channel (1-D) multiplier shaped to broadcast along ``axis`` of a rank-``ndim`` array."""
    if m.ndim == 1 and m.size > 1:
        shape = [1] * ndim
        shape[axis] = -1
        return m.reshape(shape)
    return m.reshape(())


def qlinear_matmul_unrounded(xp, inputs, attrs):
    """``(a - a_zp) @ (b - b_zp) * (a_scale b_scale / y_scale)``: QLinearMatMul before rounding."""
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale = inputs[:7]
    acc = as_int(xp, MatMulInteger(xp, a, b, a_zp, b_zp))
    return acc * on_axis(multiplier(xp, a_scale, b_scale, y_scale).astype(np.float64).reshape(-1), acc.ndim, -1)


def qlinear_conv_unrounded(xp, inputs, attrs):
    """``(Conv(x - x_zp, w - w_zp) + B) * (x_scale w_scale / y_scale)``: QLinearConv before rounding."""
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale = inputs[:7]
    acc = as_int(xp, ConvInteger(xp, x, w, x_zp, w_zp, **attrs))
    if len(inputs) > 8 and inputs[8] is not None:
        acc = acc + as_int(xp, inputs[8]).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return acc * on_axis(multiplier(xp, x_scale, w_scale, y_scale).astype(np.float64).reshape(-1), acc.ndim, 1)


@kernel("MatMulInteger", since=10, kind=K.CONTRACTION, centred=numbers(((0, 2, -2), (1, 3, -1))))
def MatMulInteger(xp, A, B, a_zero_point=None, b_zero_point=None):
    """``(A - a_zero_point) @ (B - b_zero_point)`` exactly, as int32 (per-row / per-column zero points)."""
    a = centered(xp, A, a_zero_point, -2)
    b = centered(xp, B, b_zero_point, -1)
    return xp.matmul(a, b).astype(np.int32)


@kernel("ConvInteger", since=10, kind=K.CONTRACTION, centred=numbers(((0, 2, 1), (1, 3, 0))))
def ConvInteger(xp, x, w, x_zero_point=None, w_zero_point=None, **conv):
    """``Conv(x - x_zero_point, w - w_zero_point)`` exactly, as int32 (padding holds the zero point)."""
    wc = centered(xp, w, w_zero_point, 0)
    return Conv(xp, centered(xp, x, x_zero_point, 1), wc, **conv).astype(np.int32)


def requantize(xp, acc, multiplier, zero_point, axis: int):
    """``saturate(round_half_even(acc * multiplier) + zero_point)`` in float32 (MLAS's requantization)."""
    target = np.dtype(zero_point.dtype) if zero_point is not None else np.dtype(np.uint8)
    m = on_axis(multiplier.astype(np.float32), acc.ndim, axis)
    y = xp.rint(acc.astype(np.float32) * m)
    if zero_point is not None:
        y = y + float(as_int(xp, zero_point).reshape(-1)[0])
    lo, hi = integer_range(target)
    return saturated(xp, y, lo, hi).astype(target)


def multiplier(xp, a_scale, b_scale, y_scale):
    """``(a_scale * b_scale) / y_scale`` in float32."""
    f = np.float32
    return (xp.asarray(a_scale).astype(f) * xp.asarray(b_scale).astype(f)) / xp.asarray(y_scale).astype(f)


@kernel("QLinearMatMul", since=10, kind=K.CONTRACTION,
        centred=numbers(((0, 2, -2), (3, 5, -1)), qlinear_matmul_unrounded))
def QLinearMatMul(xp, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    acc = MatMulInteger(xp, a, b, a_zero_point, b_zero_point)
    return requantize(xp, acc, multiplier(xp, a_scale, b_scale, y_scale).reshape(-1), y_zero_point, -1)


@kernel("QLinearConv", since=10, kind=K.CONTRACTION, addends=(8,),
        centred=numbers(((0, 2, 1), (3, 5, 0), (8, None, 0)), qlinear_conv_unrounded))
def QLinearConv(xp, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, **conv):
    acc = ConvInteger(xp, x, w, x_zero_point, w_zero_point, **conv)
    if B is not None:
        acc = acc + B.astype(np.int32).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return requantize(xp, acc, multiplier(xp, x_scale, w_scale, y_scale).reshape(-1), y_zero_point, 1)


# ---- adjoints: straight-through through the rounding (its true derivative is 0 almost everywhere) ----
# Integer tensors are treated as the real numbers they stand for: quantize(x) ~ x / scale + zero_point,
# dequantize(q) = (q - zero_point) * scale, and the integer products are the products of the centred values.

@adjoint("QuantizeLinear")
def _quantize_vjp(xp, G, inputs, outputs, attrs, need):
    """Straight-through: ``dx = g / scale`` where the value was not saturated, 0 where it was."""
    x, scale = inputs[:2]
    s = along(xp, scale, x, attrs.get("axis", 1), attrs.get("block_size", 0))
    y = outputs[0]
    if y.dtype in FLOAT8:
        inside = xp.isfinite(y.astype(np.float32))
    else:
        lo, hi = integer_range(np.dtype(y.dtype))
        inside = (as_int(xp, y) > lo) & (as_int(xp, y) < hi)
    return [xp.where(inside, G[0] / s, 0) if need[0] else None] + [None] * (len(inputs) - 1)


@adjoint("DequantizeLinear")
def _dequantize_vjp(xp, G, inputs, outputs, attrs, need):
    """``y = (q - zero_point) * scale``: ``dq = g * scale`` (straight-through for the integer ``q``),
    ``dscale = sum g * (q - zero_point)``."""
    x, scale = inputs[:2]
    zp = inputs[2] if len(inputs) > 2 else None
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    s = along(xp, scale, x, axis, block)
    grads = [G[0] * s if need[0] else None, None, None][:len(inputs)]
    if need[1] and scale.dtype.kind == "f" and scale.size == 1:  # per-tensor scale (per-axis: held constant)
        centred = outputs[0] / xp.where(s == 0, 1, s)
        grads[1] = (G[0] * centred).reshape(G[0].shape[0], -1).sum(axis=1).reshape((G[0].shape[0],) + scale.shape)
    return grads


@adjoint("DynamicQuantizeLinear")
def _dynamic_quantize_vjp(xp, G, inputs, outputs, attrs, need):
    """Straight-through: ``dx = g / scale`` (the scale and zero point are statistics: held constant)."""
    if any(g is not None for g in G[1:]):
        raise UnsupportedOpError("DynamicQuantizeLinear: no gradient through its scale / zero-point outputs")
    return [G[0] / outputs[1].astype(G[0].dtype)]


@adjoint("MatMulInteger")
def _matmul_integer_vjp(xp, G, inputs, outputs, attrs, need):
    """The MatMul adjoint on the centred operands ``A - a_zero_point``, ``B - b_zero_point``."""
    from .linalg import _matmul_vjp
    A, B = inputs[:2]
    a, b = centered(xp, A, inputs[2] if len(inputs) > 2 else None, -2), centered(xp, B, inputs[3] if len(inputs) > 3 else None, -1)
    ga, gb = _matmul_vjp(xp, G, [a, b], outputs, {}, (need[0], need[1]))
    return [ga, gb] + [None] * (len(inputs) - 2)


@adjoint("ConvInteger")
def _conv_integer_vjp(xp, G, inputs, outputs, attrs, need):
    """The Conv adjoint on the centred input and weight."""
    from .linalg import _conv_vjp
    x, w = inputs[:2]
    xc = centered(xp, x, inputs[2] if len(inputs) > 2 else None, 1)
    wc = centered(xp, w, inputs[3] if len(inputs) > 3 else None, 0)
    gx, gw = _conv_vjp(xp, G, [xc, wc], outputs, attrs, (need[0], need[1]))
    return [gx, gw] + [None] * (len(inputs) - 2)


@adjoint("QLinearMatMul")
def _qlinear_matmul_vjp(xp, G, inputs, outputs, attrs, need):
    """Straight-through the requantization (``dacc = g * a_scale b_scale / y_scale``), then MatMulInteger's."""
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale = inputs[:7]
    m = multiplier(xp, a_scale, b_scale, y_scale).astype(np.float64).reshape(-1)
    ga, gb = _matmul_integer_vjp(xp, [G[0] * m], [a, b, a_zp, b_zp], outputs, {}, (need[0], need[3]))[:2]
    return [ga, None, None, gb, None, None, None, None]


@adjoint("QLinearConv")
def _qlinear_conv_vjp(xp, G, inputs, outputs, attrs, need):
    """Straight-through the requantization, then ConvInteger's; the int32 bias gets the summed gradient."""
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale = inputs[:7]
    m = multiplier(xp, x_scale, w_scale, y_scale).astype(np.float64).reshape(-1)
    g = G[0] * m.reshape((1, 1, -1) + (1,) * (G[0].ndim - 3)) if m.size > 1 else G[0] * m  # (K, N, C, ...)
    gx, gw = _conv_integer_vjp(xp, [g], [x, w, x_zp, w_zp], outputs, attrs, (need[0], need[3]))[:2]
    grads = [gx, None, None, gw, None, None, None, None]
    if len(inputs) > 8:
        grads.append(g.sum(axis=(1,) + tuple(range(3, g.ndim))) if need[8] and inputs[8] is not None else None)
    return grads
