"""Attention family (com.microsoft Attention, MultiHeadAttention, GroupQueryAttention) and the
com.microsoft RotaryEmbedding, as the eager attention HF models export: projections, heads,
``softmax(q @ k^T * scale + bias) @ v``, heads merged.

Masks follow onnxruntime's CPU kernels: Attention and MultiHeadAttention add ``mask_filter_value``
(-10000) to masked logits (twice where a padding and the causal mask both apply); GroupQueryAttention
drops masked logits (-inf).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from . import Emit, rewrites

I64 = np.int64


def mask_fill(e: Emit, like: str) -> float:
    """``mask_filter_value`` (default -10000), saturated to the data's float type: float32's lowest value
    in a float16 model is float16's lowest (-65504), not -inf, so a fully masked row stays finite."""
    fill = float(e.attr("mask_filter_value", -10000.0))
    return max(fill, float(ml_dtypes.finfo(e.float_type(like)).min))


def heads(e: Emit, x: str, n: int | str) -> str:
    """(batch, seq, n*size) -> (batch, n, seq, size)."""
    return e.op("Transpose", e.reshape(x, [0, 0, n, -1]), perm=[0, 2, 1, 3])


def merge_heads(e: Emit, y4: str, out: str) -> str:
    return e.op("Reshape", e.op("Transpose", y4, perm=[0, 2, 1, 3]), e.const(np.array([0, 0, -1], I64)),
                outputs=out or 1)


def dim(e: Emit, x: str, axis: int) -> str:
    """``x.shape[axis]`` as a 1-element int64 tensor (shape arithmetic, constant per feed shape)."""
    return e.op("Gather", e.op("Shape", x), e.const(np.array([axis], I64)))


def head_scale(e: Emit, q4: str, scale, like: str) -> str:
    """``scale`` or ``1 / sqrt(head_size)`` (from q's last dimension when no static size is known)."""
    if scale is not None:
        return e.scalar(float(scale), like)
    size = e.cast(dim(e, q4, 3), e.float_type(like))
    return e.op("Reciprocal", e.op("Sqrt", size))


def scores(e: Emit, q4: str, k4: str, scale: str) -> str:
    return e.op("Mul", e.op("MatMul", q4, e.op("Transpose", k4, perm=[0, 1, 3, 2])), scale)


def positions(e: Emit, q4: str, k4: str):
    """Query positions ``i + (T - S)`` as a column (S, 1) and key positions ``j`` as a row (1, T)."""
    s, t = dim(e, q4, 2), dim(e, k4, 2)
    zero, one = e.const(np.array(0, I64)), e.const(np.array(1, I64))
    qpos = e.op("Add", e.op("Range", zero, e.squeeze(s, [0]), one), e.op("Sub", t, s))
    kpos = e.op("Range", zero, e.squeeze(t, [0]), one)
    return e.unsqueeze(qpos, [1]), e.unsqueeze(kpos, [0])


def masked_bias(e: Emit, masked: str, fill: float, like: str) -> str:
    """``fill`` where ``masked`` (bool) is true, else 0."""
    return e.op("Where", masked, e.scalar(fill, like), e.scalar(0.0, like))


def padding_bias(e: Emit, mask: str, q4: str, k4: str, fill: float, like: str) -> str:
    """onnxruntime's mask formats as an additive bias broadcastable to (batch, heads, S, T):
    raw (batch, T) or (batch, S, T) masks with 0 = masked, or 1-D key lengths: (batch) end positions,
    (2 batch) end positions then start positions."""
    rank = e.rank(mask)
    if rank in (2, 3):
        keep = e.cast(mask, e.float_type(like))
        bias = e.op("Mul", e.op("Sub", e.scalar(1.0, like), keep), e.scalar(fill, like))
        return e.unsqueeze(bias, [1, 2] if rank == 2 else [1])
    if rank == 1:
        batch = dim(e, q4, 0)
        lengths = e.cast(mask, I64)
        end = e.op("Slice", lengths, e.const(np.array([0], I64)), batch)
        start = e.op("Slice", e.op("Concat", e.op("Slice", lengths, batch, e.op("Add", batch, batch)),
                                   e.op("Mul", end, e.const(np.array(0, I64))), axis=0),
                     e.const(np.array([0], I64)), batch)
        _, kpos = positions(e, q4, k4)
        col = lambda v: e.reshape(v, [-1, 1, 1, 1])  # noqa: E731
        outside = e.op("Or", e.op("Less", kpos, col(start)), e.op("GreaterOrEqual", kpos, col(end)))
        return masked_bias(e, outside, fill, like)
    raise e.unsupported(f"mask {mask!r} must have rank 1, 2 or 3 (its rank is {rank if rank is not None else 'not recorded'})")


def causal_bias(e: Emit, q4: str, k4: str, fill: float, like: str) -> str:
    qpos, kpos = positions(e, q4, k4)
    return masked_bias(e, e.op("Greater", kpos, qpos), fill, like)


def with_past(e: Emit, x4: str, past: str) -> str:
    return e.op("Concat", past, x4, axis=2) if past else x4


def attend(e: Emit, q4: str, k4: str, v4: str, scale: str, bias: str, out: str) -> str:
    logits = e.op("Add", scores(e, q4, k4, scale), bias) if bias else scores(e, q4, k4, scale)
    return merge_heads(e, e.op("MatMul", e.op("Softmax", logits, axis=-1), v4), out)


def add_all(e: Emit, *terms: str) -> str:
    terms = [t for t in terms if t]
    total = terms[0] if terms else ""
    for t in terms[1:]:
        total = e.op("Add", total, t)
    return total


@rewrites("com.microsoft", "Attention")
def attention(e: Emit):
    """Attention(input, weights, bias?, mask_index?, past?, attention_bias?) -> (output, present?):
    fused QKV projection, then multi-head attention; ``past`` / ``present`` stack key and value as
    (2, batch, heads, seq, size)."""
    if e.input(6):
        raise e.unsupported("past_sequence_length (a shared past/present buffer) is not supported")
    x, w, b, mask, past, extra = (e.input(i) for i in range(6))
    fused_attention(e, x, w, e.require_static(w, "weights").shape, b, mask, past, extra, like=w)


def fused_attention(e: Emit, x: str, w: str, weight_shape: tuple, b: str, mask: str, past: str, extra: str,
                    like: str) -> None:
    """The body of Attention (and of QAttention on its dequantized operands): ``x @ w (+ b)`` split into
    Q, K, V by ``qkv_hidden_sizes`` (default thirds of ``weight_shape[1]``), heads, the past, the masks
    and the scale, the heads merged. ``like`` names a float static of the model's type."""
    for name in ("do_rotary", "past_present_share_buffer"):
        if e.attr(name, 0):
            raise e.unsupported(f"{name}=1 is not supported")
    n = int(e.attr("num_heads"))
    sizes = list(e.attr("qkv_hidden_sizes") or [weight_shape[1] // 3] * 3)
    qkv = e.op("MatMul", x, w)
    if b:
        qkv = e.op("Add", qkv, b)
    bounds = np.cumsum([0] + sizes)
    q4, k4, v4 = (heads(e, e.slice(qkv, int(lo), int(hi), -1), n) for lo, hi in zip(bounds[:-1], bounds[1:]))
    if past:
        k4 = with_past(e, k4, e.op("Gather", past, e.const(np.array(0, I64)), axis=0))
        v4 = with_past(e, v4, e.op("Gather", past, e.const(np.array(1, I64)), axis=0))
    if e.output(1):
        e.op("Concat", e.unsqueeze(k4, [0]), e.unsqueeze(v4, [0]), axis=0, outputs=e.output(1))
    fill = mask_fill(e, like)
    scale = e.attr("scale")
    scale = head_scale(e, q4, scale if scale is not None else 1 / np.sqrt(sizes[0] // n), like)
    bias = add_all(e, extra, padding_bias(e, mask, q4, k4, fill, like) if mask else "",
                   causal_bias(e, q4, k4, fill, like) if e.attr("unidirectional", 0) else "")
    attend(e, q4, k4, v4, scale, bias, e.output(0))


@rewrites("com.microsoft", "MultiHeadAttention")
def multi_head_attention(e: Emit):
    """MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?, past_key?,
    past_value?) -> (output, present_key?, present_value?) for 3-D query/key/value (or 4-D
    (batch, heads, kv_seq, size) key and value, used as they are)."""
    if any(e.input(i) for i in (8, 9)) or e.output(3):
        raise e.unsupported("past_sequence_length, cache_indirection and the qk output are not supported")
    q, k, v, b, mask, extra, past_k, past_v = (e.input(i) for i in range(8))
    n = int(e.attr("num_heads"))
    if e.rank(q) == 5 or not k or e.rank(k) == 5:
        raise e.unsupported("packed QKV / KV inputs are not supported")
    if b:
        bias = e.require_static(b, "bias")
        third = bias.shape[0] // 3
        q = e.op("Add", q, e.slice(b, 0, third, 0))
        if e.rank(k) != 4:
            k, v = e.op("Add", k, e.slice(b, third, 2 * third, 0)), e.op("Add", v, e.slice(b, 2 * third, 3 * third, 0))
    q4 = heads(e, q, n)
    k4, v4 = (x if e.rank(x) == 4 else heads(e, x, n) for x in (k, v))
    k4, v4 = with_past(e, k4, past_k), with_past(e, v4, past_v)
    if e.output(1):
        e.to(k4, e.output(1))
    if e.output(2):
        e.to(v4, e.output(2))
    fill = mask_fill(e, b or past_k)
    bias = add_all(e, extra, padding_bias(e, mask, q4, k4, fill, b or past_k) if mask else "",
                   causal_bias(e, q4, k4, fill, b) if e.attr("unidirectional", 0) else "")
    attend(e, q4, k4, v4, head_scale(e, q4, e.attr("scale"), b), bias, e.output(0))


def repeat_kv(e: Emit, x4: str, reps: int) -> str:
    """(batch, kv_heads, T, size) -> (batch, kv_heads * reps, T, size), each kv head repeated (HF's repeat_kv)."""
    if reps == 1:
        return x4
    shape = e.op("Shape", x4)
    part = lambda lo, hi: e.op("Slice", shape, e.const(np.array([lo], I64)), e.const(np.array([hi], I64)))  # noqa: E731
    wide = e.op("Concat", part(0, 2), e.const(np.array([reps], I64)), part(2, 4), axis=0)
    expanded = e.op("Expand", e.unsqueeze(x4, [2]), wide)
    merged = e.op("Concat", part(0, 1), e.const(np.array([-1], I64)), part(2, 4), axis=0)
    return e.op("Reshape", expanded, merged)


@rewrites("com.microsoft", "GroupQueryAttention")
def group_query_attention(e: Emit):
    """GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k, total_sequence_length,
    cos_cache?, sin_cache?, position_ids?, attention_bias?) -> (output, present_key, present_value).

    Causal attention of ``num_heads`` query heads over ``kv_num_heads`` key/value heads; the present
    cache is the past followed by the new keys (no shared buffer). Key ``j`` is visible to query ``i``
    of batch row ``b`` when ``j <= P + i`` (P: past length), ``j <= seqlens_k[b]`` and, with a local
    window ``w >= 0``, ``P + i - j < w`` (w keys, the query's own included, as onnxruntime's CPU kernel). With ``do_rotary`` the new queries and keys are rotated at
    positions ``max(seqlens_k[b] + 1 - S, 0) + i`` (or ``position_ids``).
    """
    if any(e.input(i) for i in range(11, 16)) or e.attr("smooth_softmax", -1) > 0 or e.output(3):
        raise e.unsupported("head_sink, smooth_softmax, quantized caches, q/k norms, query_seqlens and the "
                            "qk output are not supported")
    if e.attr("causal", 1) != 1:
        raise e.unsupported("causal=0 is not supported")
    q, k, v, past_k, past_v, seqlens, _, cos, sin, pos_ids, extra = (e.input(i) for i in range(11))
    n, kvn = int(e.attr("num_heads")), int(e.attr("kv_num_heads"))
    if not k:  # packed (batch, seq, (n + 2 kvn) * size)
        packed = e.op("Transpose", e.reshape(q, [0, 0, n + 2 * kvn, -1]), perm=[0, 2, 1, 3])
        q4, k4, v4 = (e.slice(packed, lo, hi, 1) for lo, hi in ((0, n), (n, n + kvn), (n + kvn, n + 2 * kvn)))
    else:
        q4, k4, v4 = heads(e, q, n), heads(e, k, kvn), heads(e, v, kvn)
    if e.attr("do_rotary", 0):
        if not pos_ids:
            start = e.op("Max", e.op("Sub", e.op("Add", e.cast(seqlens, I64), e.const(np.array(1, I64))),
                                     dim(e, q4, 2)), e.const(np.array(0, I64)))
            s = e.squeeze(dim(e, q4, 2), [0])
            steps = e.op("Range", e.const(np.array(0, I64)), s, e.const(np.array(1, I64)))
            pos_ids = e.op("Add", e.unsqueeze(start, [1]), e.unsqueeze(steps, [0]))
        interleaved = e.attr("rotary_interleaved", 0)
        c, s_ = (e.unsqueeze(e.op("Gather", t, pos_ids), [1]) for t in (cos, sin))  # (batch, 1, S, half)
        q4, k4 = (rotate(e, x, c, s_, half_dim(e, cos), interleaved, "") for x in (q4, k4))
    k4, v4 = with_past(e, k4, past_k), with_past(e, v4, past_v)
    e.to(k4, e.output(1))
    e.to(v4, e.output(2))
    like = past_k or cos
    scale = head_scale(e, q4, e.attr("scale"), like)
    logits = scores(e, q4, repeat_kv(e, k4, n // kvn), scale)
    softcap = float(e.attr("softcap", 0.0) or 0.0)
    if softcap > 0:
        cap = e.scalar(softcap, like)
        logits = e.op("Mul", e.op("Tanh", e.op("Div", logits, cap)), cap)
    if extra:
        logits = e.op("Add", logits, extra)
    qpos, kpos = positions(e, q4, k4)
    hidden = e.op("Greater", kpos, qpos)
    hidden = e.op("Or", hidden, e.op("Greater", kpos, e.reshape(e.cast(seqlens, I64), [-1, 1, 1, 1])))
    window = int(e.attr("local_window_size", -1))
    if window >= 0:
        hidden = e.op("Or", hidden, e.op("Greater", e.op("Sub", qpos, kpos), e.const(np.array(window - 1, I64))))
    logits = e.op("Where", hidden, e.scalar(-np.inf, like), logits)
    merge_heads(e, e.op("MatMul", e.op("Softmax", logits, axis=-1), repeat_kv(e, v4, n // kvn)), e.output(0))


# ---- rotary embedding

def half_dim(e: Emit, cos: str) -> int:
    cache = e.static(cos)
    if cache is None:
        raise e.unsupported(f"cos_cache ({cos!r}) must be an initializer (its width sets the rotary dimension)")
    return int(cache.shape[-1])


def rotate(e: Emit, x: str, cos: str, sin: str, half: int, interleaved: int, out: str) -> str:
    """RoPE on the first ``2 half`` features of the last axis of rank-4 ``x``, as HF writes it:
    ``x cos + rotate_half(x) sin`` with cos/sin repeated over the two halves (or pairwise when
    ``interleaved``); ``cos`` and ``sin`` are (…, half), broadcastable to x's leading axes."""
    rot = 2 * half
    xr = e.slice(x, 0, rot, -1)
    if interleaved:
        def pairwise(t: str) -> str:
            return e.reshape(e.op("Concat", e.unsqueeze(t, [-1]), e.unsqueeze(t, [-1]), axis=-1), [0, 0, 0, -1])
        every_other = lambda start: e.op("Slice", xr, e.const(np.array([start], I64)), e.const(np.array([rot], I64)),  # noqa: E731
                                         e.const(np.array([-1], I64)), e.const(np.array([2], I64)))
        even, odd = every_other(0), every_other(1)
        turned = e.reshape(e.op("Concat", e.unsqueeze(e.op("Neg", odd), [-1]), e.unsqueeze(even, [-1]), axis=-1),
                           [0, 0, 0, -1])
        cos_f, sin_f = pairwise(cos), pairwise(sin)
    else:
        turned = e.op("Concat", e.op("Neg", e.slice(xr, half, rot, -1)), e.slice(xr, 0, half, -1), axis=-1)
        cos_f, sin_f = e.op("Concat", cos, cos, axis=-1), e.op("Concat", sin, sin, axis=-1)
    rotated = e.op("Add", e.op("Mul", xr, cos_f), e.op("Mul", turned, sin_f))
    rest = e.slice(x, rot, np.iinfo(I64).max, -1)
    return e.op("Concat", rotated, rest, axis=-1, outputs=out or 1)


@rewrites("com.microsoft", "RotaryEmbedding")
def rotary_embedding(e: Emit):
    """RotaryEmbedding(input, position_ids, cos_cache, sin_cache) for (batch, seq, hidden) or
    (batch, heads, seq, size) input; 1-D position_ids hold a start offset for positions 0..S-1."""
    if e.attr("is_packed_batching", 0) or float(e.attr("scale", 1.0)) != 1.0:
        raise e.unsupported("is_packed_batching and scale != 1 are not supported")
    x, pos, cos, sin = (e.input(i) for i in range(4))
    half = int(e.attr("rotary_embedding_dim", 0)) // 2 or half_dim(e, cos)
    rank = e.rank(x)
    if rank not in (3, 4):
        raise e.unsupported(f"input must have rank 3 or 4 (recorded rank: {rank})")
    pos_rank = e.rank(pos)
    if pos_rank == 1:
        s = dim(e, x, 1 if rank == 3 else 2)
        steps = e.op("Range", e.const(np.array(0, I64)), e.squeeze(s, [0]), e.const(np.array(1, I64)))
        pos = e.unsqueeze(e.op("Add", steps, e.cast(pos, I64)), [0])
    elif pos_rank != 2:
        raise e.unsupported(f"position_ids must have rank 1 or 2 (recorded rank: {pos_rank})")
    c, s_ = (e.op("Gather", t, pos) for t in (cos, sin))  # (batch, S, half)
    if rank == 4:
        rotate(e, x, e.unsqueeze(c, [1]), e.unsqueeze(s_, [1]), half, e.attr("interleaved", 0), e.output(0))
        return
    n = int(e.attr("num_heads", 0))
    x4 = e.reshape(x, [0, 0, n, -1] if n else [0, 0, -1, 2 * half])
    y4 = rotate(e, x4, e.unsqueeze(c, [2]), e.unsqueeze(s_, [2]), half, e.attr("interleaved", 0), "")
    e.op("Reshape", y4, e.const(np.array([0, 0, -1], I64)), outputs=e.output(0))
