"""Neural-network kernels and their adjoints: softmax, normalizations, pooling, fused Attention and
RotaryEmbedding."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import is_float

from ..errors import KernelError, UnsupportedOpError
from . import adjoint, kernel
from . import kinds as K
from .grad import float64_bincount, unbroadcast
from .linalg import _as, col2im, conv_geometry, windows
from .reduce import kept_dims
from .tensor import axis_index


def softmax(xp, x, axis):
    """``exp(x - max) / sum(exp(x - max))``, as ONNX defines it: a row that is entirely -inf, or holds
    +inf, is NaN (as in onnxruntime); the fused Attention op zeroes its fully masked rows itself."""
    if not x.size:
        return x.copy()
    e = x - xp.max(x, axis=axis, keepdims=True)
    xp.exp(e, out=e)
    e /= xp.sum(e, axis=axis, keepdims=True)
    return e


def _flattened(fn):
    """Softmax family before opset 13: coerce to 2-D at ``axis``, normalise over the second dim."""
    def run(xp, x, axis=1):
        a = axis_index(axis, x.ndim)
        flat = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        return fn(xp, flat, 1).reshape(x.shape)
    return run


def log_softmax(xp, x, axis):
    """``x - max - log(sum(exp(x - max)))`` (NaN rows where softmax has them)."""
    if not x.size:
        return x.copy()
    z = x - xp.max(x, axis=axis, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


kernel("Softmax", since=1, kind=K.SOFTMAX)(_flattened(softmax))
kernel("LogSoftmax", since=1, kind=K.NONLINEAR)(_flattened(log_softmax))


@kernel("Softmax", since=13)
def Softmax(xp, x, axis=-1):
    return softmax(xp, x, axis_index(axis, x.ndim))


@kernel("LogSoftmax", since=13)
def LogSoftmax(xp, x, axis=-1):
    return log_softmax(xp, x, axis_index(axis, x.ndim))


def softmax_vjp(xp, g, s, axis):
    """``dx = s * (g - sum_axis(s * g))`` for ``s = softmax(x)`` (``g`` has a leading target axis)."""
    return s * (g - xp.sum(s * g, axis=axis, keepdims=True))


def _flattened_vjp(grad):
    """The adjoint of a softmax-family op before opset 13, over the 2-D coerced layout."""
    def vjp(xp, G, inputs, outputs, attrs, need):
        x, y, g = inputs[0], outputs[0], G[0]
        a = attrs.get("axis", 1) % x.ndim
        rows = int(np.prod(x.shape[:a], dtype=np.int64))
        return [grad(xp, g.reshape(g.shape[0], rows, -1), y.reshape(rows, -1), -1).reshape(g.shape)]
    return vjp


def _axis_vjp(grad):
    def vjp(xp, G, inputs, outputs, attrs, need):
        return [grad(xp, G[0], outputs[0], attrs.get("axis", -1) % inputs[0].ndim + 1)]
    return vjp


def _log_softmax_vjp(xp, g, y, axis):
    """``dx = g - softmax(x) * sum_axis(g)`` with ``softmax(x) = exp(y)``."""
    return g - xp.exp(y) * xp.sum(g, axis=axis, keepdims=True)


adjoint("Softmax", since=1)(_flattened_vjp(softmax_vjp))
adjoint("Softmax", since=13)(_axis_vjp(softmax_vjp))
adjoint("LogSoftmax", since=1)(_flattened_vjp(_log_softmax_vjp))
adjoint("LogSoftmax", since=13)(_axis_vjp(_log_softmax_vjp))


def _stash(x, stash_type):
    return x if x.dtype == np.float64 or stash_type != 1 else x.astype(np.float32, copy=False)


@kernel("LayerNormalization", since=17, kind=K.LAYERNORM, relevant_outputs=1)
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


def layernorm_vjp(xp, g, X, scale, axis, epsilon, stash_type, hold_std=False):
    """Gradients (dX, dScale) of ``y = scale * (X - mean) * inv_std + B`` over the axes from ``axis``;
    ``hold_std``: with the standard deviation held constant (LXT's stop-gradient in the LRP rule):
    ``dX = inv_std * (dxhat - mean(dxhat))`` instead of also differentiating ``inv_std``."""
    _, mean, inv_std = LayerNormalization(xp, X, scale, None, axis, epsilon, stash_type)
    axes = tuple(range(1 + axis % X.ndim, 1 + X.ndim))
    xhat = ((_stash(X, stash_type) - mean) * inv_std).astype(g.dtype, copy=False)
    inv = inv_std.astype(g.dtype, copy=False)
    dxhat = g * scale
    dx = dxhat - xp.mean(dxhat, axis=axes, keepdims=True)
    if not hold_std:
        dx = dx - xhat * xp.mean(dxhat * xhat, axis=axes, keepdims=True)
    return dx * inv, unbroadcast(xp, g * xhat, scale.shape)


@adjoint("LayerNormalization")
def _layernorm_vjp(xp, G, inputs, outputs, attrs, need):
    X, scale = inputs[:2]
    B = inputs[2] if len(inputs) > 2 else None
    if any(g is not None for g in G[1:]):
        raise UnsupportedOpError("LayerNormalization: gradients through the Mean / InvStdDev outputs are not supported")
    dx, dscale = layernorm_vjp(xp, G[0], X, scale, attrs.get("axis", -1), attrs.get("epsilon", 1e-5),
                               attrs.get("stash_type", 1))
    grads = [dx if need[0] else None, dscale if need[1] else None]
    if B is not None:
        grads.append(unbroadcast(xp, G[0], B.shape) if need[2] else None)
    return grads


@kernel("RMSNormalization", since=23, kind=K.RMSNORM)
def RMSNormalization(xp, X, scale, axis=-1, epsilon=1e-5, stash_type=1):
    axes = tuple(range(axis_index(axis, X.ndim), X.ndim))
    x = _stash(X, stash_type)
    inv_rms = 1 / xp.sqrt(xp.mean(x * x, axis=axes, keepdims=True) + x.dtype.type(epsilon))
    return (x * inv_rms).astype(X.dtype, copy=False) * scale


@adjoint("RMSNormalization")
def _rmsnorm_vjp(xp, G, inputs, outputs, attrs, need):
    """``y = scale * x * r`` with ``r = 1 / sqrt(mean(x^2) + eps)``: ``dx = r * (dxhat - xhat mean(dxhat xhat))``."""
    X, scale = inputs
    axis = attrs.get("axis", -1) % X.ndim
    x = _stash(X, attrs.get("stash_type", 1))
    norm_axes = tuple(range(axis, X.ndim))
    r = (1 / xp.sqrt(xp.mean(x * x, axis=norm_axes, keepdims=True) + x.dtype.type(attrs.get("epsilon", 1e-5))))
    g = G[0]
    xhat = (x * r).astype(g.dtype, copy=False)
    dxhat = g * scale
    axes = tuple(1 + a for a in norm_axes)
    dx = (dxhat - xhat * xp.mean(dxhat * xhat, axis=axes, keepdims=True)) * r.astype(g.dtype, copy=False)
    return [dx if need[0] else None, unbroadcast(xp, g * xhat, scale.shape) if need[1] else None]


@kernel("BatchNormalization", since=9, kind=K.LINEAR, addends=(2, 3), layer="batchnorm")
def BatchNormalization(xp, X, scale, B, input_mean, input_var, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise UnsupportedOpError("BatchNormalization in training mode is not supported (inference only)")
    shape = (1, -1) + (1,) * (X.ndim - 2)
    inv = 1 / xp.sqrt(input_var + X.dtype.type(epsilon))
    return (X - input_mean.reshape(shape)) * (inv * scale).reshape(shape) + B.reshape(shape)


@adjoint("BatchNormalization")
def _batchnorm_vjp(xp, G, inputs, outputs, attrs, need):
    """Inference BatchNorm ``y = (X - mean) * a + B`` with ``a = scale / sqrt(var + eps)`` per channel."""
    X, scale, B, mean, var = inputs[:5]
    g = G[0]
    shape = (1, -1) + (1,) * (X.ndim - 2)
    inv = 1 / xp.sqrt(var + var.dtype.type(attrs.get("epsilon", 1e-5)))
    a = (inv * scale).reshape(shape)
    channel_sum = lambda t: t.sum(axis=(1,) + tuple(range(3, t.ndim)))  # noqa: E731  (K, N, C, ...) -> (K, C)
    centred = X - mean.reshape(shape)
    return [g * a if need[0] else None,
            channel_sum(g * centred) * inv if need[1] else None,
            channel_sum(g) if need[2] else None,
            -channel_sum(g) * (inv * scale) if need[3] else None,
            channel_sum(g * centred) * (-0.5 * scale * inv ** 3) if need[4] else None]


@kernel("InstanceNormalization", since=6, kind=K.NONLINEAR)
def InstanceNormalization(xp, X, scale, B, epsilon=1e-5):
    axes = tuple(range(2, X.ndim))
    shape = (1, -1) + (1,) * (X.ndim - 2)
    mean = xp.mean(X, axis=axes, keepdims=True)
    var = xp.mean((X - mean) ** 2, axis=axes, keepdims=True)
    return (X - mean) / xp.sqrt(var + X.dtype.type(epsilon)) * scale.reshape(shape) + B.reshape(shape)


@adjoint("InstanceNormalization")
def _instancenorm_vjp(xp, G, inputs, outputs, attrs, need):
    """Per (sample, channel) normalization over the spatial axes: the LayerNorm gradient on those axes."""
    X, scale, B = inputs
    g = G[0]
    shape = (1, -1) + (1,) * (X.ndim - 2)
    axes = tuple(range(2, X.ndim))
    mean = xp.mean(X, axis=axes, keepdims=True)
    inv = 1 / xp.sqrt(xp.mean((X - mean) ** 2, axis=axes, keepdims=True) + X.dtype.type(attrs.get("epsilon", 1e-5)))
    xhat = (X - mean) * inv
    dxhat = g * scale.reshape(shape)
    kaxes = tuple(1 + a for a in axes)
    dx = inv * (dxhat - xp.mean(dxhat, axis=kaxes, keepdims=True)
                - xhat * xp.mean(dxhat * xhat, axis=kaxes, keepdims=True))
    channel_sum = lambda t: t.sum(axis=(1,) + tuple(range(3, t.ndim)))  # noqa: E731
    return [dx if need[0] else None, channel_sum(g * xhat) if need[1] else None, channel_sum(g) if need[2] else None]


def _pool(xp, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, fill):
    if pads and any(p >= k for p, k in zip(list(pads), list(kernel_shape) * 2)):
        raise KernelError(f"pads {list(pads)} must be smaller than the kernel {list(kernel_shape)} (a window "
                          "of padding only has no value)")
    out, begin, end, strides, dilations = conv_geometry(
        X.shape[2:], kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    cols = windows(xp, X, kernel_shape, out, begin, end, strides, dilations, fill=fill)
    nk = len(kernel_shape)
    k = math.prod(kernel_shape)
    return cols.reshape(X.shape[:2] + (k,) + tuple(out)), (out, begin, end, strides, dilations), nk


@kernel("MaxPool", kind=K.SELECT, relevant_outputs=1,
        decode_attrs=lambda attrs, policy, node: {**attrs, "_n_outputs": len(node.outputs)})
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


@adjoint("MaxPool")
def _maxpool_vjp(xp, G, inputs, outputs, attrs, need):
    """The first maximum of each window gets the window's gradient (labels find it; pads never win)."""
    X, g = inputs[0], G[0]
    if any(t is not None for t in G[1:]):
        raise UnsupportedOpError("MaxPool: no gradient through the Indices output")
    a = attrs
    fill = -np.inf if is_float(X.dtype) else np.iinfo(X.dtype).min
    vals, geo, _ = _pool(xp, X, a["kernel_shape"], a.get("strides"), a.get("pads"), a.get("dilations"),
                         a.get("auto_pad", "NOTSET"), a.get("ceil_mode", 0), fill)
    labels = xp.arange(1, X.size + 1, dtype=np.int64).reshape(X.shape)
    ids, _, _ = _pool(xp, labels, a["kernel_shape"], a.get("strides"), a.get("pads"), a.get("dilations"),
                      a.get("auto_pad", "NOTSET"), a.get("ceil_mode", 0), 0)
    win = xp.take_along_axis(ids, xp.argmax(vals, axis=2)[:, :, None], axis=2)[:, :, 0].reshape(-1)
    k = g.shape[0]
    shifted = (win[None, :] + (X.size + 1) * xp.arange(k)[:, None]).reshape(-1)
    flat = float64_bincount(xp, shifted, g.reshape(-1), k * (X.size + 1)).reshape(k, X.size + 1)
    return [flat[:, 1:].reshape((k,) + X.shape).astype(g.dtype)]


@kernel("AveragePool", kind=K.LINEAR, layer="avgpool")
def AveragePool(xp, X, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                pads=None, strides=None):
    cols, geo, nk = _pool(xp, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, 0.0)
    total = xp.sum(cols, axis=2)
    return (total / _window_count(xp, X, kernel_shape, geo, count_include_pad)).astype(X.dtype, copy=False)


def _window_count(xp, X, kernel_shape, geo, count_include_pad):
    """How many elements each average-pool window divides by: (1, 1, *out)."""
    out, begin, end, strides, dilations = geo
    nk = len(kernel_shape)
    if count_include_pad:
        # explicit pads count, the ceil-mode overhang past them does not
        ones = xp.ones((1, 1) + tuple(s + begin[i] + end[i] for i, s in enumerate(X.shape[2:])), dtype=X.dtype)
        counted = windows(xp, ones, kernel_shape, out, [0] * nk, [0] * nk, strides, dilations)
    else:
        ones = xp.ones((1, 1) + X.shape[2:], dtype=X.dtype)
        counted = windows(xp, ones, kernel_shape, out, begin, end, strides, dilations)
    return counted.reshape(1, 1, math.prod(kernel_shape), *out).sum(axis=2)


@adjoint("AveragePool")
def _avgpool_vjp(xp, G, inputs, outputs, attrs, need):
    """Each window's gradient, divided by its count, spread over the window (col2im)."""
    X, g = inputs[0], G[0]
    a = attrs
    kernel_shape = a["kernel_shape"]
    geo = conv_geometry(X.shape[2:], kernel_shape, a.get("strides"), a.get("pads"), a.get("dilations"),
                        a.get("auto_pad", "NOTSET"), a.get("ceil_mode", 0))
    out, begin, end, strides, dilations = geo
    k, nk = g.shape[0], len(kernel_shape)
    per = (g / _window_count(xp, X, kernel_shape, geo, a.get("count_include_pad", 0))).reshape(
        (k * X.shape[0], X.shape[1]) + (1,) * nk + tuple(out))
    spread = xp.broadcast_to(per, per.shape[:2] + tuple(kernel_shape) + tuple(out))
    gx = col2im(xp, spread, (k * X.shape[0],) + X.shape[1:], kernel_shape, out, begin, end, strides, dilations)
    return [gx.reshape((k,) + X.shape)]


@kernel("GlobalAveragePool", kind=K.LINEAR, reduces=True, layer="avgpool")
def GlobalAveragePool(xp, X):
    return xp.mean(X, axis=tuple(range(2, X.ndim)), keepdims=True).astype(X.dtype, copy=False)


@adjoint("GlobalAveragePool")
def _gap_vjp(xp, G, inputs, outputs, attrs, need):
    X = inputs[0]
    n = int(np.prod(X.shape[2:], dtype=np.int64))
    return [xp.broadcast_to(G[0] / G[0].dtype.type(n), (G[0].shape[0],) + X.shape)]


@kernel("GlobalMaxPool", kind=K.SELECT, reduces=True)
def GlobalMaxPool(xp, X):
    return xp.max(X, axis=tuple(range(2, X.ndim)), keepdims=True)


@adjoint("GlobalMaxPool")
def _gmp_vjp(xp, G, inputs, outputs, attrs, need):
    from .reduce import _first_extreme
    X = inputs[0]
    ax = tuple(range(2, X.ndim))
    return [G[0] * _first_extreme(xp, X, outputs[0], ax)]


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
                present_key=present_k, present_value=present_v, reps=reps, root=root)


@kernel("Attention", since=23, kind=K.ATTENTION)
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


ATTENTION_EXTRA_INPUTS = ("attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")
ATTENTION_ATTRS = ("is_causal", "kv_num_heads", "q_num_heads", "scale", "softcap", "left_window_size",
                   "right_window_size")


def attention_inputs(inputs, attrs) -> dict:
    """The keyword arguments of :func:`attention_parts` for a node's inputs and attributes."""
    extra = {n: (inputs[3 + i] if len(inputs) > 3 + i else None) for i, n in enumerate(ATTENTION_EXTRA_INPUTS)}
    return {**extra, **{k: attrs[k] for k in ATTENTION_ATTRS if k in attrs}}


def heads_first(g, n_heads):
    """(K, batch, seq, heads*size) -> (K, batch, heads, seq, size)."""
    return g.reshape(g.shape[:3] + (n_heads, -1)).transpose(0, 1, 3, 2, 4)


def heads_merged(g):
    """(K, batch, heads, seq, size) -> (K, batch, seq, heads*size)."""
    return g.transpose(0, 1, 3, 2, 4).reshape(g.shape[0], g.shape[1], g.shape[3], -1)


def sum_repeated_heads(g, reps):
    """Adjoint of repeating each key/value head ``reps`` times: sum the copies."""
    return g if reps == 1 else g.reshape(g.shape[:2] + (-1, reps) + g.shape[3:]).sum(axis=3)


@adjoint("Attention")
def _attention_vjp(xp, G, inputs, outputs, attrs, need):
    """Through the decomposition: ``y = probs @ v``, ``probs = softmax(scores + bias)``, ``scores =
    softcap tanh(raw / softcap)``, ``raw = (root q) @ (root k)^T``; repeated heads sum, the cache part of
    K/V goes to past_key / past_value, the present outputs' gradients join K/V's."""
    Q, Kt, V = inputs[:3]
    if len(G) > 3 and G[3] is not None:
        raise UnsupportedOpError("Attention: no gradient through the qk_matmul_output output")
    p = attention_parts(xp, Q, Kt, V, **attention_inputs(inputs, attrs))
    k = next(t.shape[0] for t in G if t is not None)
    g = G[0] if G[0] is not None else xp.zeros((k,) + outputs[0].shape, dtype=p["q"].dtype)  # present_* only
    g4 = heads_first(g, p["q"].shape[1]) if Q.ndim == 3 else g
    g_probs = xp.matmul(g4, xp.swapaxes(p["v"], -1, -2))
    g_v = xp.matmul(xp.swapaxes(p["probs"], -1, -2), g4)
    g_logits = softmax_vjp(xp, g_probs, p["probs"], -1)
    g_raw = g_logits
    softcap = attrs.get("softcap", 0.0)
    if softcap and softcap > 0:
        t = p["scores"] / softcap
        g_raw = g_logits * (1 - t * t)
    root = p["root"]
    g_q = xp.matmul(g_raw, p["k"]) * root
    g_k = sum_repeated_heads(xp.matmul(xp.swapaxes(g_raw, -1, -2), p["q"]) * root, p["reps"])
    g_v = sum_repeated_heads(g_v, p["reps"])
    for i, extra in ((1, g_k), (2, g_v)):
        if len(G) > i and G[i] is not None:
            extra += G[i]
    grads = [None] * len(inputs)
    past = inputs[4].shape[2] if len(inputs) > 4 and inputs[4] is not None else 0
    for i, gi in ((0, g_q), (1, g_k), (2, g_v)):
        if i > 0 and past:
            if need[i + 3]:
                grads[i + 3] = gi[:, :, :, :past]
            gi = gi[:, :, :, past:]
        if need[i]:
            grads[i] = heads_merged(gi) if Q.ndim == 3 else gi
    if len(inputs) > 3 and inputs[3] is not None and inputs[3].dtype.kind == "f" and need[3]:
        mask = inputs[3]  # a mask shorter than the keys was padded with -inf: those columns are not its own
        grads[3] = unbroadcast(xp, g_logits[..., :mask.shape[-1]], mask.shape)
    return grads


def rotary_halves(x, rot, interleaved):
    """The two rotated halves of the first ``rot`` features of ``x`` (last axis)."""
    xr = x[..., :rot]
    if interleaved:
        return xr[..., 0::2], xr[..., 1::2]
    return xr[..., : rot // 2], xr[..., rot // 2:]


@kernel("RotaryEmbedding", since=23, kind=K.ROTARY)
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


def rotary_layout(xp, T, X, num_heads):
    """A target-leading tensor laid out like X, as (K, batch, seq, heads, size), and the inverse layout."""
    k = T.shape[0]
    if X.ndim == 4:
        return T.transpose(0, 1, 3, 2, 4), lambda t: t.transpose(0, 1, 3, 2, 4)
    return T.reshape((k,) + X.shape[:2] + (num_heads, -1)), lambda t: t.reshape((k,) + X.shape)


@adjoint("RotaryEmbedding")
def _rotary_vjp(xp, G, inputs, outputs, attrs, need):
    """RotaryEmbedding is linear in X with constant cos/sin: rotate the gradient back (the transpose of
    ``real = cos x1 - sin x2``, ``imag = sin x1 + cos x2``); the caches get no gradient (constants)."""
    X = inputs[0]
    pos = inputs[3] if len(inputs) > 3 else None
    num_heads = attrs.get("num_heads", 0)
    _, cos, sin, _ = rotary_inputs(xp, X, inputs[1], inputs[2], pos, num_heads)
    g, restore = rotary_layout(xp, G[0], X, num_heads)
    rot = attrs.get("rotary_embedding_dim", 0) or g.shape[-1]
    inter = attrs.get("interleaved", 0)
    gr, gi = rotary_halves(g, rot, inter)
    g1, g2 = cos * gr + sin * gi, cos * gi - sin * gr
    out = xp.zeros(g.shape, dtype=g.dtype)
    if inter:
        out[..., 0:rot:2], out[..., 1:rot:2] = g1, g2
    else:
        out[..., : rot // 2], out[..., rot // 2: rot] = g1, g2
    out[..., rot:] = g[..., rot:]
    return [restore(out), None, None, None][:len(inputs)]


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
