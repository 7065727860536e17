"""Neural-network kernels: softmax, normalizations, pooling, fused Attention and RotaryEmbedding."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import is_float
from ..errors import UnsupportedOpError
from . import kernel
from .linalg import _as, conv_geometry, windows
from .tensor import axis_index


def softmax(xp, x, axis):
    """Numerically stable softmax; a row that is entirely -inf gives zeros, never NaN."""
    if not x.size:
        return x.copy()
    m = xp.max(x, axis=axis, keepdims=True)
    if not bool(xp.isfinite(m).all()):  # rows that are entirely -inf
        m = xp.where(xp.isfinite(m), m, x.dtype.type(0))
    e = x - m
    xp.exp(e, out=e)
    s = xp.sum(e, axis=axis, keepdims=True)
    if not bool(s.all()):
        s = xp.where(s == 0, s.dtype.type(1), s)
    e /= s
    return e


def _flattened(fn):
    """Softmax family before opset 13: coerce to 2-D at ``axis``, normalise over the second dim."""
    def run(xp, x, axis=1):
        a = axis_index(axis, x.ndim)
        flat = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        return fn(xp, flat, 1).reshape(x.shape)
    return run


def log_softmax(xp, x, axis):
    if not x.size:
        return x.copy()
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, x.dtype.type(0))
    z = x - m
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


kernel("Softmax", since=1)(_flattened(softmax))
kernel("LogSoftmax", since=1)(_flattened(log_softmax))


@kernel("Softmax", since=13)
def Softmax(xp, x, axis=-1):
    return softmax(xp, x, axis_index(axis, x.ndim))


@kernel("LogSoftmax", since=13)
def LogSoftmax(xp, x, axis=-1):
    return log_softmax(xp, x, axis_index(axis, x.ndim))


def _stash(x, stash_type):
    return x if x.dtype == np.float64 or stash_type != 1 else x.astype(np.float32, copy=False)


@kernel("LayerNormalization", since=17)
def LayerNormalization(xp, X, Scale, B=None, axis=-1, epsilon=1e-5, stash_type=1):
    axes = tuple(range(axis_index(axis, X.ndim), X.ndim))
    x = _stash(X, stash_type)
    mean = xp.mean(x, axis=axes, keepdims=True)
    d = x - mean
    inv_std = 1 / xp.sqrt(xp.mean(d * d, axis=axes, keepdims=True) + x.dtype.type(epsilon))
    y = (d * inv_std).astype(X.dtype, copy=False) * Scale
    if B is not None:
        y = y + B
    return y, mean, inv_std


@kernel("RMSNormalization", since=23)
def RMSNormalization(xp, X, scale, axis=-1, epsilon=1e-5, stash_type=1):
    axes = tuple(range(axis_index(axis, X.ndim), X.ndim))
    x = _stash(X, stash_type)
    inv_rms = 1 / xp.sqrt(xp.mean(x * x, axis=axes, keepdims=True) + x.dtype.type(epsilon))
    return (x * inv_rms).astype(X.dtype, copy=False) * scale


@kernel("BatchNormalization", since=9)
def BatchNormalization(xp, X, scale, B, input_mean, input_var, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise UnsupportedOpError("BatchNormalization in training mode is not supported (inference only)")
    shape = (1, -1) + (1,) * (X.ndim - 2)
    inv = 1 / xp.sqrt(input_var + X.dtype.type(epsilon))
    return (X - input_mean.reshape(shape)) * (inv * scale).reshape(shape) + B.reshape(shape)


@kernel("InstanceNormalization", since=6)
def InstanceNormalization(xp, X, scale, B, epsilon=1e-5):
    axes = tuple(range(2, X.ndim))
    shape = (1, -1) + (1,) * (X.ndim - 2)
    mean = xp.mean(X, axis=axes, keepdims=True)
    var = xp.mean((X - mean) ** 2, axis=axes, keepdims=True)
    return (X - mean) / xp.sqrt(var + X.dtype.type(epsilon)) * scale.reshape(shape) + B.reshape(shape)


def _pool(xp, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, fill):
    out, begin, end, strides, dilations = conv_geometry(
        X.shape[2:], kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    cols = windows(xp, X, kernel_shape, out, begin, end, strides, dilations, fill=fill)
    nk = len(kernel_shape)
    k = math.prod(kernel_shape)
    return cols.reshape(X.shape[:2] + (k,) + tuple(out)), (out, begin, end, strides, dilations), nk


@kernel("MaxPool")
def MaxPool(xp, X, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
            storage_order=0, strides=None, _n_outputs=1):
    fill = -np.inf if is_float(X.dtype) else np.iinfo(X.dtype).min
    cols, geo, _ = _pool(xp, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, fill)
    if _n_outputs < 2:
        return xp.max(cols, axis=2)
    first = xp.argmax(cols, axis=2)[:, :, None]
    return xp.take_along_axis(cols, first, axis=2)[:, :, 0], _max_indices(xp, X, kernel_shape, geo, first,
                                                                           storage_order)


def _max_indices(xp, X, kernel_shape, geo, first, storage_order):
    """MaxPool's Indices: the flat index into X of each window's first maximum (padding has none).

    An (n, c) plane starts at ``(n * C + c) * prod(spatial)``; inside it positions count row-major,
    or column-major with ``storage_order=1``."""
    out, begin, end, strides, dilations = geo
    spatial = X.shape[2:]
    plane = int(np.prod(spatial, dtype=np.int64))
    pos = xp.arange(plane, dtype=np.int64).reshape(spatial)
    if storage_order:
        pos = xp.arange(plane, dtype=np.int64).reshape(spatial[::-1]).transpose()
    pos = windows(xp, pos[None, None], kernel_shape, out, begin, end, strides, dilations, fill=-1)
    pos = pos.reshape((1, 1, math.prod(kernel_shape)) + tuple(out))
    picked = xp.take_along_axis(xp.broadcast_to(pos, first.shape[:2] + pos.shape[2:]), first, axis=2)[:, :, 0]
    planes = xp.arange(X.shape[0] * X.shape[1], dtype=np.int64).reshape(X.shape[:2] + (1,) * len(out))
    return picked + planes * plane


@kernel("AveragePool")
def AveragePool(xp, X, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                pads=None, strides=None):
    cols, geo, nk = _pool(xp, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, 0.0)
    total = xp.sum(cols, axis=2)
    out, begin, end, strides, dilations = geo
    if count_include_pad:
        # explicit pads count, the ceil-mode overhang past them does not
        ones = xp.ones((1, 1) + tuple(s + begin[i] + end[i] for i, s in enumerate(X.shape[2:])), dtype=X.dtype)
        count = windows(xp, ones, kernel_shape, out, [0] * nk, [0] * nk, strides, dilations).reshape(
            1, 1, math.prod(kernel_shape), *out).sum(axis=2)
    else:
        ones = xp.ones((1, 1) + X.shape[2:], dtype=X.dtype)
        count = windows(xp, ones, kernel_shape, out, begin, end, strides, dilations).reshape(
            1, 1, math.prod(kernel_shape), *out).sum(axis=2)
    return (total / count).astype(X.dtype, copy=False)


@kernel("GlobalAveragePool")
def GlobalAveragePool(xp, X):
    return xp.mean(X, axis=tuple(range(2, X.ndim)), keepdims=True).astype(X.dtype, copy=False)


@kernel("GlobalMaxPool")
def GlobalMaxPool(xp, X):
    return xp.max(X, axis=tuple(range(2, X.ndim)), keepdims=True)


# ---- opset 23 fused transformer ops ----

def attention_heads(Q, K, V, q_num_heads, kv_num_heads):
    """Reshape 3-D (batch, seq, heads*size) inputs to 4-D (batch, heads, seq, size)."""
    if Q.ndim == 4:
        return Q, K, V
    def split(t, h):
        return t.reshape(t.shape[0], t.shape[1], h, t.shape[2] // h).transpose(0, 2, 1, 3)
    return split(Q, q_num_heads), split(K, kv_num_heads), split(V, kv_num_heads)


def attention_bias(xp, dtype, q_len, kv_len, attn_mask=None, is_causal=0, past_len=0, nonpad_kv_seqlen=None,
                   left_window_size=-1, right_window_size=-1):
    """The additive bias (0 or -inf, plus a float mask), broadcastable to (batch, heads, q, kv).

    Boolean masks select (True = attend); float masks add; ``is_causal`` and the sliding window are
    aligned bottom-right (query ``i`` sits at key position ``i + offset``).
    """
    zero, ninf = dtype.type(0), dtype.type(-np.inf)
    bias = xp.zeros((q_len, kv_len), dtype=dtype)
    if attn_mask is not None:
        pad = kv_len - attn_mask.shape[-1]
        if pad > 0:
            widths = [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)]
            attn_mask = xp.pad(attn_mask, widths, constant_values=False if attn_mask.dtype == bool else -np.inf)
        if attn_mask.dtype == bool:
            attn_mask = xp.where(attn_mask, zero, ninf)
        bias = bias + attn_mask.astype(dtype, copy=False)
    if nonpad_kv_seqlen is not None and past_len == 0:
        offset = (xp.asarray(nonpad_kv_seqlen).reshape(-1, 1, 1, 1) - q_len)
    else:
        offset = past_len
    diff = xp.arange(q_len)[:, None] + offset - xp.arange(kv_len)[None, :]  # query position - key position
    allowed = xp.ones(diff.shape, dtype=bool)
    if is_causal:
        allowed = allowed & (diff >= 0)
    if left_window_size is not None and left_window_size >= 0:
        allowed = allowed & (diff <= left_window_size)
    if right_window_size is not None and right_window_size >= 0:
        allowed = allowed & (-diff <= right_window_size)
    if nonpad_kv_seqlen is not None:
        allowed = allowed & (xp.arange(kv_len) < xp.asarray(nonpad_kv_seqlen).reshape(-1, 1, 1, 1))
    if allowed.ndim == 4 and bias.ndim == 3:  # a rank-3 mask is (heads, q, kv): keep it right-aligned
        bias = bias[None]
    return bias + xp.where(allowed, zero, ninf)


def attention_parts(xp, Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None,
                    is_causal=0, kv_num_heads=None, q_num_heads=None, scale=None, softcap=0.0,
                    left_window_size=-1, right_window_size=-1):
    """Every intermediate of the Attention op: 4-D scaled, head-repeated q, k, v; scores; probs; y4."""
    q, k, v = attention_heads(Q, K, V, q_num_heads, kv_num_heads)
    past_len = 0
    if past_key is not None:
        past_len = past_key.shape[2]
        k = xp.concatenate([past_key, k], axis=2)
        v = xp.concatenate([past_value, v], axis=2)
    present_k, present_v = k, v
    root = q.dtype.type(np.sqrt(scale if scale is not None else 1 / np.sqrt(q.shape[-1])))
    q, k = q * root, k * root
    reps = q.shape[1] // k.shape[1]
    if reps > 1:
        k, v = xp.repeat(k, reps, axis=1), xp.repeat(v, reps, axis=1)
    raw = scores = _as(q @ xp.swapaxes(k, -1, -2), q.dtype)
    if softcap and softcap > 0:
        scores = softcap * xp.tanh(raw / softcap)
    bias = attention_bias(xp, q.dtype, q.shape[2], k.shape[2], attn_mask, is_causal, past_len, nonpad_kv_seqlen,
                          left_window_size, right_window_size)
    logits = scores + bias
    probs = softmax(xp, logits, -1)
    # a query that may attend to no key gets zeros (with no keys at all, every query)
    masked_rows = xp.isneginf(xp.max(bias, axis=-1, keepdims=True)) if bias.shape[-1] else True
    probs = xp.where(masked_rows, probs.dtype.type(0), probs)
    return dict(q=q, k=k, v=v, raw=raw, scores=scores, logits=logits, probs=probs, y4=_as(probs @ v, q.dtype),
                present_key=present_k, present_value=present_v, reps=reps)


@kernel("Attention", since=23)
def Attention(xp, Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, is_causal=0,
              kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1):
    p = attention_parts(xp, Q, K, V, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal, kv_num_heads,
                        q_num_heads, scale, softcap, left_window_size, right_window_size)
    y = p["y4"].astype(Q.dtype, copy=False)
    if Q.ndim == 3:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], y.shape[1] * y.shape[3])
    qk = {2: p["logits"], 3: p["probs"]}.get(qk_matmul_output_mode, p["scores"])
    return y, p["present_key"], p["present_value"], qk.astype(Q.dtype, copy=False)


def rotary_halves(x, rot, interleaved):
    """The two rotated halves of the first ``rot`` features of ``x`` (last axis)."""
    xr = x[..., :rot]
    if interleaved:
        return xr[..., 0::2], xr[..., 1::2]
    return xr[..., : rot // 2], xr[..., rot // 2:]


@kernel("RotaryEmbedding", since=23)
def RotaryEmbedding(xp, X, cos_cache, sin_cache, position_ids=None, interleaved=0, num_heads=0,
                    rotary_embedding_dim=0):
    x, cos, sin, restore = rotary_inputs(xp, X, cos_cache, sin_cache, position_ids, num_heads)
    rot = rotary_embedding_dim or x.shape[-1]
    x1, x2 = rotary_halves(x, rot, interleaved)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if interleaved:
        rotated = xp.stack([real, imag], axis=-1).reshape(real.shape[:-1] + (rot,))
    else:
        rotated = xp.concatenate([real, imag], axis=-1)
    return restore(xp.concatenate([rotated, x[..., rot:]], axis=-1))


def rotary_inputs(xp, X, cos_cache, sin_cache, position_ids, num_heads):
    """X as (batch, seq, heads, size), cos/sin broadcastable to its halves, and the inverse layout."""
    shape = X.shape
    if X.ndim == 4:
        x = X.transpose(0, 2, 1, 3)
        restore = lambda y: y.transpose(0, 2, 1, 3)  # noqa: E731
    else:
        x = X.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
        restore = lambda y: y.reshape(shape)  # noqa: E731
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    return x, cos_cache[:, :, None, :], sin_cache[:, :, None, :], restore
