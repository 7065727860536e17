"""Rules with structure of their own: softmax (AttnLRP), LayerNorm with the std held constant, and the
opset-23 fused Attention and RotaryEmbedding, computed as their decompositions."""
from __future__ import annotations

from ..ops.nn import attention_parts, rotary_halves, rotary_inputs
from . import _PAIRWISE, Result, note_total, passed, ratio, rule, times, total, unbroadcast


def softmax_relevance(xp, x, s, R, axis):
    """AttnLRP softmax rule ``R_x = x * (R_y - s * sum_axis(R_y))``; 0 where x is not finite."""
    inner = s * xp.sum(R, axis=axis, keepdims=True)
    xp.subtract(R, inner, out=inner)
    r = x * inner
    t = xp.sum(r)
    if bool(xp.isfinite(t)):  # fast path: no masked (-inf) logits
        return note_total(r, float(t)) if r.dtype in _PAIRWISE else r
    finite = xp.isfinite(x)
    return xp.where(finite, times(xp, xp.where(finite, x, 0), inner), R.dtype.type(0))


@rule("softmax")
def softmax_rule(ctx, inputs, outputs, R_out):
    """Softmax (Achtibat et al. 2024, Prop. 3.1): gradient x input through the softmax. Not conservative
    by design: the deficit is reported."""
    xp = ctx.xp
    x, s, R = inputs[0], outputs[0], R_out[0]
    axis = ctx.attrs.get("axis", -1)
    Rx = softmax_relevance(xp, x, s, R, axis)
    return Result([Rx], deficit=total(xp, R) - total(xp, Rx))


@rule("layernorm")
def layernorm_rule(ctx, inputs, outputs, R_out):
    """LayerNormalization with the standard deviation held constant (LXT's stop-gradient):
    ``G = R_y/stab(y)``; beta absorbs ``beta*G``; ``Gc = gamma*G/sigma``; ``R_x = x*(Gc - mean(Gc))``."""
    xp = ctx.xp
    X, gamma = inputs[0], inputs[1]
    beta = inputs[2] if len(inputs) > 2 else None
    R, y = R_out[0], outputs[0]
    axes = tuple(range(ctx.attrs.get("axis", -1) % X.ndim, X.ndim))
    G = ratio(xp, R, y, ctx.eps)
    d = X - xp.mean(X, axis=axes, keepdims=True)
    sigma = xp.sqrt(xp.mean(d * d, axis=axes, keepdims=True) + X.dtype.type(ctx.attrs.get("epsilon", 1e-5)))
    Gc = gamma * G / sigma
    parts = [X * (Gc - xp.mean(Gc, axis=axes, keepdims=True)), None, None]
    if beta is not None:
        parts[2] = unbroadcast(xp, times(xp, beta, G), beta.shape)
    return Result(parts[:len(inputs)], loss=total(xp, R) - passed(xp, y, G))


@rule("attention")
def attention_rule(ctx, inputs, outputs, R_out):
    """Fused Attention (opset 23) as its decomposition: ``A @ V`` and ``Q @ K^T`` by the uniform
    (attnlrp) rule, the softmax rule in between, the mask/bias absorbing; or, with
    ``info["cp"]``, CP-LRP: the attention weights held constant, all relevance to V."""
    xp = ctx.xp
    Q, K, V = inputs[:3]
    names = ("attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")
    extra = {n: (inputs[3 + i] if len(inputs) > 3 + i else None) for i, n in enumerate(names)}
    keys = ("is_causal", "kv_num_heads", "q_num_heads", "scale", "softcap", "left_window_size", "right_window_size")
    p = attention_parts(xp, Q, K, V, **extra, **{k: ctx.attrs[k] for k in keys if k in ctx.attrs})
    R = R_out[0]
    y4 = p["y4"]
    R4 = R.reshape(R.shape[0], R.shape[1], y4.shape[1], -1).transpose(0, 2, 1, 3) if Q.ndim == 3 else R
    cp = ctx.info.get("cp", False)
    G = ratio(xp, R4, y4, ctx.eps) / (1 if cp else 2)
    loss = total(xp, R4) - (1 if cp else 2) * passed(xp, y4, G)
    R_v = times(xp, p["v"], xp.swapaxes(p["probs"], -1, -2) @ G)
    R_q = R_k = None
    deficit = absorbed = 0.0
    if not cp:
        R_probs = times(xp, p["probs"], G @ xp.swapaxes(p["v"], -1, -2))
        R_logits = softmax_relevance(xp, p["logits"], p["probs"], R_probs, -1)
        deficit = total(xp, R_probs) - total(xp, R_logits)
        G2 = ratio(xp, R_logits, p["logits"], ctx.eps)  # logits = scores + bias: the bias absorbs
        R_scores = times(xp, p["scores"], G2)  # softcap, if any, is elementwise: identity to the raw scores
        absorbed = passed(xp, p["logits"], G2) - total(xp, R_scores)
        loss += total(xp, R_logits) - passed(xp, p["logits"], G2)
        G3 = ratio(xp, R_scores, p["raw"], ctx.eps) / 2  # raw scores = q @ k^T: uniform rule
        loss += total(xp, R_scores) - 2 * passed(xp, p["raw"], G3)
        R_q = times(xp, p["q"], G3 @ p["k"])
        R_k = times(xp, p["k"], xp.swapaxes(G3, -1, -2) @ p["q"])
    parts = [None] * len(inputs)
    past = extra["past_key"].shape[2] if extra["past_key"] is not None else 0
    for idx, r in ((0, R_q), (1, R_k), (2, R_v)):
        if r is None:
            continue
        if p["reps"] > 1 and idx > 0:  # the head repetition's adjoint sums the copies
            r = r.reshape(r.shape[0], -1, p["reps"], r.shape[2], r.shape[3]).sum(axis=2)
        if idx > 0 and past:  # the cache part of K/V: to past_key / past_value (absorbed if constant)
            parts[idx + 3] = r[:, :, :past]
            r = r[:, :, past:]
        x = inputs[idx]
        if ctx.dynamic[idx]:
            parts[idx] = r.transpose(0, 2, 1, 3).reshape(x.shape) if x.ndim == 3 else r
    return Result(parts, loss=loss, deficit=deficit, absorbed=absorbed)


@rule("rotary")
def rotary_rule(ctx, inputs, outputs, R_out):
    """RotaryEmbedding (opset 23) as its decomposition ``real = cos*x1 - sin*x2``, ``imag = sin*x1 + cos*x2``:
    the epsilon rule over the two summands (each a Mul by a constant), the unrotated part passes."""
    xp = ctx.xp
    X = inputs[0]
    pos = inputs[3] if len(inputs) > 3 else None
    x, cos, sin, restore = rotary_inputs(xp, X, inputs[1], inputs[2], pos, ctx.attrs.get("num_heads", 0))
    Ry, _, _, _ = rotary_inputs(xp, R_out[0], inputs[1], inputs[2], pos, ctx.attrs.get("num_heads", 0))
    rot = ctx.attrs.get("rotary_embedding_dim", 0) or x.shape[-1]
    inter = ctx.attrs.get("interleaved", 0)
    x1, x2 = rotary_halves(x, rot, inter)
    R1, R2 = rotary_halves(Ry, rot, inter)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    Gr, Gi = ratio(xp, R1, real, ctx.eps), ratio(xp, R2, imag, ctx.eps)
    rx1 = times(xp, cos * x1, Gr) + times(xp, sin * x1, Gi)
    rx2 = -times(xp, sin * x2, Gr) + times(xp, cos * x2, Gi)
    Rx = xp.zeros(x.shape, dtype=Ry.dtype)
    if inter:
        Rx[..., 0:rot:2], Rx[..., 1:rot:2] = rx1, rx2
    else:
        Rx[..., : rot // 2], Rx[..., rot // 2: rot] = rx1, rx2
    Rx[..., rot:] = Ry[..., rot:]
    loss = total(xp, R1) + total(xp, R2) - passed(xp, real, Gr) - passed(xp, imag, Gi)
    return Result([restore(Rx), None, None, None][:len(inputs)], loss=loss)
