"""Fused linear ops: FusedMatMul, FusedGemm, FusedConv, onnxruntime's NCHWc layout ops, MatMulNBits and
the com.microsoft quantized matmuls, as core MatMul / Gemm / Conv plus their epilogues."""
from __future__ import annotations

import numpy as np

from . import Emit, rewrites

NCHWC = "com.microsoft.nchwc"


def activation(e: Emit, x: str, kind: str | None, params, out: str) -> str:
    """The epilogue activation of a fused Conv/Gemm (MLAS activation kinds and their parameters)."""
    params = list(params or [])
    if not kind or kind == "Identity":
        return e.to(x, out)
    o = out or 1
    if kind in ("Relu", "Tanh", "Sigmoid"):
        return e.op(kind, x, outputs=o)
    if kind == "LeakyRelu":
        return e.op("LeakyRelu", x, alpha=float(params[0]) if params else 0.01, outputs=o)
    if kind == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return e.op("HardSigmoid", x, alpha=float(alpha), beta=float(beta), outputs=o)
    if kind == "Clip":
        lo, hi = (params + [-np.inf, np.inf][len(params):])[:2]
        return e.op("Clip", x, e.scalar(lo), e.scalar(hi), outputs=o)
    raise e.unsupported(f"fused activation {kind!r} is not supported")


def last_two_swapped(e: Emit, x: str) -> str:
    rank = e.rank(x)
    if rank is None:
        raise e.unsupported(f"transposing {x!r} needs its rank, which the model does not record")
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return e.op("Transpose", x, perm=perm)


@rewrites("com.microsoft", "FusedMatMul", "TransposeMatMul")
def fused_matmul(e: Emit):
    """FusedMatMul(A, B) = alpha * op(A) @ op(B), op transposing the last two axes when asked."""
    if e.attr("transBatchA", 0) or e.attr("transBatchB", 0):
        raise e.unsupported("transBatchA / transBatchB are not supported")
    a = last_two_swapped(e, e.input(0)) if e.attr("transA", 0) else e.input(0)
    b = last_two_swapped(e, e.input(1)) if e.attr("transB", 0) else e.input(1)
    alpha = float(e.attr("alpha", 1.0))
    if alpha == 1.0:
        e.op("MatMul", a, b, outputs=e.output(0))
    else:  # the unfused graph's scale after the product (q @ k^T * scale)
        e.op("Mul", e.op("MatMul", a, b), e.scalar(alpha, e.input(1)), outputs=e.output(0))


@rewrites("com.microsoft", "FusedGemm")
def fused_gemm(e: Emit):
    """FusedGemm = activation(Gemm(A, B, C))."""
    attrs = {k: e.attr(k) for k in ("alpha", "beta", "transA", "transB") if k in e.node.attrs}
    y = e.op("Gemm", *[e.input(i) for i in range(3) if e.input(i) or i < 2], **attrs)
    kind = e.attr("activation")
    params = [e.attr(k) for k in ("activation_alpha", "activation_beta", "activation_gamma") if k in e.node.attrs]
    activation(e, y, kind, params, e.output(0))


CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def conv_then(e: Emit, x: str, w: str, b: str, z: str, out: str) -> str:
    """``activation(Conv(x, w, b) + z)``: the FusedConv / NCHWc Conv epilogue (Z summed first)."""
    attrs = {k: e.attr(k) for k in CONV_ATTRS if k in e.node.attrs}
    y = e.op("Conv", x, w, *([b] if b else []), **attrs)
    if z:
        y = e.op("Add", y, z)
    return activation(e, y, e.attr("activation"), e.attr("activation_params"), out)


@rewrites("com.microsoft", "FusedConv")
def fused_conv(e: Emit):
    conv_then(e, e.input(0), e.input(1), e.input(2), e.input(3), e.output(0))


# ---- NCHWc: a blocked-channel tensor is held as NCHW with its channels padded to the block size

def nchwc_block(graph) -> int:
    """MLAS's channel block (8 with AVX2, 16 with AVX512), read off the padded output channels of the
    graph's NCHWc convolutions; 8 when every padded count fits both."""
    logical = {n.inputs[0]: n.attrs.get("channels") for n in graph.nodes if n.domain == NCHWC and n.op_type == "ReorderOutput"}
    for n in graph.nodes:
        if n.domain == NCHWC and n.op_type == "Conv" and n.inputs[1] in graph.initializers:
            padded = graph.initializers[n.inputs[1]].shape[0]
            if padded % 16:
                return 8
            real = logical.get(n.outputs[0])
            if real and -(-real // 8) * 8 != padded:
                return 16
    return 8


def unblock_filter(w: np.ndarray, block: int, input_blocked: bool) -> np.ndarray:
    """Undo MLAS's filter reorder: OIHWBiBo (blocked input) or OIHWBo (NCHW input, depthwise) to OIHW.

    OIHWBo stores ``[o_block][i][k][bo]``; OIHWBiBo stores ``[o_block][i_block][k][bi][bo]``.
    """
    o, i, kh, kw = w.shape
    k = kh * kw
    if input_blocked:
        d = w.reshape(o // block, i // block, k, block, block)
        return d.transpose(0, 4, 1, 3, 2).reshape(o, i, kh, kw)
    return w.reshape(o // block, i, k, block).transpose(0, 3, 1, 2).reshape(o, i, kh, kw)


@rewrites(NCHWC, "Conv")
def nchwc_conv(e: Emit):
    """NCHWc Conv(X, W reordered, B padded, Sum?) with an optional fused activation."""
    w = e.require_static(e.input(1), "the reordered filter")
    block, group = nchwc_block(e.graph), int(e.attr("group", 1))
    depthwise = group > 1 and w.shape[1] == 1 and w.shape[0] == group
    blocked = not depthwise and (group > 1 or w.shape[1] >= block)
    conv_then(e, e.input(0), e.const(unblock_filter(w, block, blocked)), e.input(2), e.input(3), e.output(0))


@rewrites(NCHWC, "ReorderInput")
def reorder_input(e: Emit):
    """NCHW (or NHWC) to blocked channels: the channel count is already a multiple of the block."""
    if e.attr("channels_last", 0):
        e.op("Transpose", e.input(0), perm=[0, 3, 1, 2], outputs=e.output(0))
    else:
        e.op("Identity", e.input(0), outputs=e.output(0))


@rewrites(NCHWC, "ReorderOutput")
def reorder_output(e: Emit):
    """Blocked channels back to NCHW (or NHWC): drop the padding channels."""
    channels = int(e.attr("channels", 0))
    y = e.slice(e.input(0), 0, channels, 1) if channels else e.input(0)
    if e.attr("channels_last", 0):
        e.op("Transpose", y, perm=[0, 2, 3, 1], outputs=e.output(0))
    else:
        e.to(y, e.output(0))


@rewrites(NCHWC, "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
def nchwc_pool(e: Emit):
    e.op(e.node.op_type, e.input(0), outputs=e.output(0), **dict(e.node.attrs))


# ---- 4-bit (2..8-bit) weights

def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Little-end-first bit fields of each byte: for 4 bits, the low nibble is the first value."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[:-1] + (packed.shape[-1] * per_byte,))


@rewrites("com.microsoft", "MatMulNBits")
def matmul_nbits(e: Emit):
    """MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?) = A @ W^T (+ bias), where
    ``W[n, k] = (q[n, k] - zp[n, k // block]) * scale[n, k // block]`` is the dequantized weight;
    the dequantization is emitted as core ops on constants (folded at load)."""
    K, N, bits, bs = (int(e.attr(k)) for k in ("K", "N", "bits", "block_size"))
    if e.input(4):
        raise e.unsupported("g_idx (act-order) is not supported")
    if bits not in (2, 4, 8):
        raise e.unsupported(f"bits={bits} is not supported (2, 4 or 8)")
    n_blocks = -(-K // bs)
    q = unpack_bits(e.require_static(e.input(1), "the packed weight").reshape(N, -1), bits).reshape(N, n_blocks, bs)
    scales = e.require_static(e.input(2), "scales")
    dtype = scales.dtype
    zp_in = e.static(e.input(3))
    if e.input(3) and zp_in is None:
        raise e.unsupported("zero_points must be an initializer")
    if zp_in is None:
        zp = np.full((N, n_blocks), 1 << (bits - 1), dtype)
    elif zp_in.dtype == np.uint8:
        zp = unpack_bits(zp_in.reshape(N, -1), bits)[:, :n_blocks].astype(dtype)
    else:
        zp = zp_in.reshape(N, n_blocks)
    w3 = e.op("Mul", e.op("Sub", e.cast(e.const(q), dtype), e.const(zp.reshape(N, n_blocks, 1))),
              e.const(scales.reshape(N, n_blocks, 1)))
    w = e.op("Transpose", e.slice(e.reshape(w3, [N, n_blocks * bs]), 0, K, 1), perm=[1, 0])
    y = e.op("MatMul", e.input(0), w, outputs=1 if e.input(5) else e.output(0))
    if e.input(5):
        e.op("Add", y, e.input(5), outputs=e.output(0))


# ---- com.microsoft quantized ops that are core ops, or core ops in a row

@rewrites("com.microsoft", "QuantizeLinear", "DequantizeLinear")
def contrib_quantize(e: Emit):
    """The com.microsoft forms take the same inputs and ``axis`` as the core ops."""
    e.op(e.node.op_type, *e.node.inputs, outputs=e.node.outputs, **dict(e.node.attrs))


def scaled_integer_product(e: Emit, a, b, a_zp, b_zp, a_scale, b_scale, bias, out):
    """``(MatMulInteger(a, b, a_zp, b_zp) as float) * (a_scale * b_scale) + bias``."""
    inputs = [a, b] + ([a_zp, b_zp] if b_zp else [a_zp] if a_zp else [])
    acc = e.op("MatMulInteger", *inputs)
    dtype = e.float_type(b_scale)
    y = e.op("Mul", e.cast(acc, dtype), e.op("Mul", a_scale, b_scale), outputs=1 if bias else (out or 1))
    return e.op("Add", y, bias, outputs=out or 1) if bias else y


@rewrites("com.microsoft", "MatMulIntegerToFloat")
def matmul_integer_to_float(e: Emit):
    """MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp?, b_zp?, bias?)."""
    scaled_integer_product(e, e.input(0), e.input(1), e.input(4), e.input(5), e.input(2), e.input(3), e.input(6),
                           e.output(0))


@rewrites("com.microsoft", "DynamicQuantizeMatMul")
def dynamic_quantize_matmul(e: Emit):
    """DynamicQuantizeMatMul(A, B, b_scale, b_zp?, bias?): A quantized to uint8 on the fly
    (DynamicQuantizeLinear), then the integer product scaled back."""
    a_q, a_scale, a_zp = e.op("DynamicQuantizeLinear", e.input(0), outputs=3)
    scaled_integer_product(e, a_q, e.input(1), a_zp, e.input(3), a_scale, e.input(2), e.input(4), e.output(0))
