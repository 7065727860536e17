"""Normalizations: (Skip)(Simplified)LayerNormalization and EmbedLayerNormalization.

The expansions follow the graphs torch exports for the unfused model (a residual ``Add`` then
``LayerNormalization``; RMSNorm as ``Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul``), so an
optimized model and its source get the same relevance rules.
"""
from __future__ import annotations

import numpy as np

from . import Emit, rewrites

HALF_TYPES = ("float16", "bfloat16")


def layer_norm(e: Emit, x: str, scale: str, bias: str, epsilon: float, axis: int = -1,
               outputs=("", "", "")) -> str:
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over axes ``axis..``: the core op from opset
    17, before that its function body (axis -1 only)."""
    y, mean, inv_std = outputs
    if e.opset >= 17:
        outs = (y or e._fresh("ln_y"), mean, inv_std)
        e.op("LayerNormalization", x, scale, bias, axis=axis, epsilon=float(epsilon), outputs=outs)
        return outs[0]
    if axis != -1:
        raise e.unsupported(f"LayerNormalization with axis={axis} below opset 17 is not supported")
    m = e.reduce("ReduceMean", x, [-1], outputs=mean or 1)
    d = e.op("Sub", x, m)
    var = e.reduce("ReduceMean", e.op("Mul", d, d), [-1])
    inv = e.op("Reciprocal", e.op("Sqrt", e.op("Add", var, e.scalar(epsilon, scale))), outputs=inv_std or 1)
    scaled = e.op("Mul", e.op("Mul", d, inv), scale, outputs=1 if bias else (y or 1))
    return e.op("Add", scaled, bias, outputs=y or 1) if bias else scaled


def rms_norm(e: Emit, x: str, scale: str, epsilon: float, stash_type: int = 1, outputs=("", "")) -> str:
    """``x / sqrt(mean(x^2) + epsilon) * scale`` over the last axis (the inverse rms as output 1);
    float16 / bfloat16 data is normalized in float32 when ``stash_type`` is 1."""
    y, inv_std = outputs
    dtype = e.float_type(scale)
    xs = e.cast(x, np.float32) if stash_type == 1 and dtype.name in HALF_TYPES else x
    like = np.float32 if xs is not x else dtype
    ms = e.reduce("ReduceMean", e.op("Pow", xs, e.scalar(2.0, dtype=like)), [-1])
    inv = e.op("Reciprocal", e.op("Sqrt", e.op("Add", ms, e.scalar(epsilon, dtype=like))), outputs=inv_std or 1)
    normed = e.op("Mul", xs, inv)
    if xs is not x:
        normed = e.cast(normed, dtype)
    return e.op("Mul", normed, scale, outputs=y or 1)


def skip_sum(e: Emit, x: str, skip: str, bias: str, out: str) -> str:
    """``(x + bias) + skip``: the bias belongs to the MatMul that produced ``x`` (onnxruntime's fusion)."""
    if bias:
        x = e.op("Add", x, bias)
    return e.op("Add", x, skip, outputs=out or 1)


@rewrites("com.microsoft", "SkipLayerNormalization")
def skip_layer_normalization(e: Emit):
    """SkipLayerNormalization(input, skip, gamma, beta?, bias?) -> (y, mean?, inv_std?, sum?)."""
    s = skip_sum(e, e.input(0), e.input(1), e.input(4), e.output(3))
    layer_norm(e, s, e.input(2), e.input(3), e.attr("epsilon", 1e-12), -1, (e.output(0), e.output(1), e.output(2)))


@rewrites("com.microsoft", "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_normalization(e: Emit):
    """SkipSimplifiedLayerNormalization(input, skip, gamma, bias?) -> (y, mean (unused), inv_std?, sum?)."""
    if e.output(1) and (e.graph.consumers.get(e.output(1)) or e.output(1) in e.graph.output_names):
        raise e.unsupported("output 1 (mean) is not defined for the simplified normalization")
    s = skip_sum(e, e.input(0), e.input(1), e.input(3), e.output(3))
    rms_norm(e, s, e.input(2), e.attr("epsilon", 1e-12), 1, (e.output(0), e.output(2)))


@rewrites("", "SimplifiedLayerNormalization")
@rewrites("com.microsoft", "SimplifiedLayerNormalization")
def simplified_layer_normalization(e: Emit):
    """onnxruntime's RMSNorm SimplifiedLayerNormalization(X, scale) -> (Y, inv_std_var?)."""
    if e.attr("axis", -1) != -1:
        raise e.unsupported(f"axis={e.attr('axis')} is not supported (only -1)")
    rms_norm(e, e.input(0), e.input(1), e.attr("epsilon", 1e-5), e.attr("stash_type", 1), (e.output(0), e.output(1)))


@rewrites("", "LayerNormalization", when=lambda graph: graph.opset < 17)
@rewrites("com.microsoft", "LayerNormalization")
def contrib_layer_normalization(e: Emit):
    """onnxruntime's LayerNormalization before it became a core op (opset 17)."""
    layer_norm(e, e.input(0), e.input(1), e.input(2), e.attr("epsilon", 1e-5), e.attr("axis", -1),
               (e.output(0), e.output(1), e.output(2)))


@rewrites("com.microsoft", "EmbedLayerNormalization")
def embed_layer_normalization(e: Emit):
    """EmbedLayerNormalization(input_ids, segment_ids?, word_emb, pos_emb, segment_emb?, gamma, beta,
    mask?, position_ids?) -> (LN(word[ids] + segment[seg] + pos[positions]), mask_index?, sum?).

    ``mask_index`` is the number of ones in each mask row (int32); positions default to 0..S-1.
    The sum is formed as BERT does, ``(word + segment) + position``.
    """
    embedded_and_normalized(e, *(e.input(i) for i in range(9)))


def embedded_and_normalized(e: Emit, ids: str, seg_ids: str, word: str, pos: str, seg: str, gamma: str, beta: str,
                            mask: str, pos_ids: str) -> None:
    """The body of EmbedLayerNormalization (and of QEmbedLayerNormalization on its dequantized tables)."""
    x = e.op("Gather", word, ids)
    if seg_ids and seg:
        x = e.op("Add", x, e.op("Gather", seg, seg_ids))
    if not pos_ids:
        length = e.op("Gather", e.op("Shape", ids), e.const(np.array(1, np.int64)))
        pos_ids = e.op("Range", e.const(np.array(0, np.int64)), length, e.const(np.array(1, np.int64)))
    total = e.op("Add", x, e.op("Gather", pos, pos_ids), outputs=e.output(2) or 1)
    layer_norm(e, total, gamma, beta, e.attr("epsilon", 1e-12), -1, (e.output(0), "", ""))
    if e.output(1):
        if mask:
            e.reduce("ReduceSum", e.cast(mask, np.int32), [1], keepdims=0, outputs=e.output(1))
        else:  # no mask: onnxruntime writes zeros, one per batch row
            batch = e.op("Slice", e.op("Shape", ids), e.const(np.array([0], np.int64)), e.const(np.array([1], np.int64)))
            e.op("ConstantOfShape", batch, value=np.zeros(1, np.int32), outputs=e.output(1))
