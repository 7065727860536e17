"""The fused transformer ops of ``quantize_dynamic`` on an onnxruntime-optimized model: QAttention and
QEmbedLayerNormalization, each as its float op on dequantized operands.

``QAttention(x_q, W_q, bias, x_scale, W_scale, mask?, x_zp?, W_zp?, past?)`` is com.microsoft Attention on
``DQ(x_q)`` and ``DQ(W_q)`` (onnxruntime multiplies the integers exactly and scales the sums; the float32
product of the dequantized operands lands within float32 rounding of it). ``W_scale`` / ``W_zp`` hold one
value, or one per column of ``W`` (``per_channel=True``).

``QEmbedLayerNormalization(ids, segment_ids?, word_q, position_q, segment_q?, gamma_q, beta_q, mask?,
scales x 5, zero points x 5)`` is EmbedLayerNormalization on the five dequantized tables, which are
constants, so they are folded into float tables at load. The relevance rules then see the float ops
(docs/rules.md, quantized models).
"""
from __future__ import annotations

from . import Emit, rewrites
from .attention import fused_attention
from .norms import embedded_and_normalized
from .qoperator import dequantized

TABLES = ("word_embedding", "position_embedding", "segment_embedding", "gamma", "beta")


def dequantized_weight(e: Emit, w: str, shape: tuple, scale: str, zero_point: str) -> str:
    """``DQ(W)`` of the ``shape`` weight with a per-tensor scale, or one scale (and zero point) per column."""
    s = e.static(scale)
    if s is None or s.size == 1:
        return dequantized(e, w, scale, zero_point)
    if len(shape) != 2 or s.shape != (shape[1],):
        raise e.unsupported(f"weight_scale of shape {s.shape} fits neither one scale nor one per column of "
                            f"the {shape} weight")
    return dequantized(e, w, scale, zero_point, axis=1)


@rewrites("com.microsoft", "QAttention")
def qattention(e: Emit):
    """QAttention -> Attention(DQ(input), DQ(weight), bias, mask_index, past) with the same attributes."""
    x, w, b, xs, ws, mask, xz, wz, past = (e.input(i) for i in range(9))
    shape = e.require_static(w, "weight").shape
    fused_attention(e, dequantized(e, x, xs, xz), dequantized_weight(e, w, shape, ws, wz), shape, b, mask, past,
                    "", like=ws)


@rewrites("com.microsoft", "QEmbedLayerNormalization")
def qembed_layer_normalization(e: Emit):
    """QEmbedLayerNormalization -> EmbedLayerNormalization on the dequantized tables (position ids 0..S-1)."""
    ids, seg_ids, mask = e.input(0), e.input(1), e.input(7)
    tables = []
    for k, name in enumerate(TABLES):
        q, scale, zero_point = e.input(2 + k), e.input(8 + k), e.input(13 + k)
        if not q:
            if name != "segment_embedding":
                raise e.unsupported(f"the quantized {name} input is required")
            tables.append("")
            continue
        if not scale:
            raise e.unsupported(f"the quantized {name} has no scale")
        tables.append(dequantized(e, q, scale, zero_point))
    word, pos, seg, gamma, beta = tables
    embedded_and_normalized(e, ids, seg_ids, word, pos, seg, gamma, beta, mask, "")
