"""The fused transformer ops (opset 23). Attention as its decomposition: ``y = probs @ v`` and ``raw = q @ k^T`` by the
uniform rule (attnlrp) or ``probs`` held constant (cp-lrp), the softmax rule in between, the mask and
bias absorbing what the epsilon rule on ``logits = scores + bias`` gives them. RotaryEmbedding as
LRP-epsilon on its rotation (linear in X, cos/sin constant) and the identity on unrotated features."""
from __future__ import annotations

from ..errors import RuleError
from ..ops.nn import (attention_inputs, attention_parts, heads_first, heads_merged, rotary_layout,
                      sum_repeated_heads)
from . import Result, rule
from .lrp import softmax_relevance


def _swap(xp, a):
    return xp.swapaxes(a, -1, -2)


def attention_relevance(ctx, inputs, R, cp: bool) -> Result:
    """Relevance of Q, K, V (and past_key / past_value) from the relevance ``R`` of the output."""
    xp = ctx.xp
    Q = inputs[0]
    p = attention_parts(xp, *inputs[:3], **attention_inputs(inputs, ctx.attrs))
    R4 = heads_first(R, p["q"].shape[1]) if Q.ndim == 3 else R
    share = 1 if cp else 2
    G = ctx.ratio(R4, p["y4"]) / R.dtype.type(share)
    loss = ctx.inflow - share * ctx.passed(p["y4"], G)
    rel = {2: ctx.times(p["v"], xp.matmul(_swap(xp, p["probs"]), G))}
    deficit = absorbed = 0.0
    if not cp:
        R_probs = ctx.times(p["probs"], xp.matmul(G, _swap(xp, p["v"])))
        R_logits, masked = softmax_relevance(ctx, p["logits"], p["probs"], R_probs, -1)
        deficit = ctx.totals(R_probs) - ctx.totals(R_logits) - masked
        G2 = ctx.ratio(R_logits, p["logits"])  # logits = scores + bias: the bias absorbs its share
        R_scores = ctx.times(p["scores"], G2)  # softcap, if any, is elementwise: identity to the raw scores
        absorbed = masked + ctx.totals(ctx.times(p["logits"] - p["scores"], G2))
        loss = loss + ctx.totals(R_logits) - ctx.passed(p["logits"], G2)
        G3 = ctx.ratio(R_scores, p["raw"]) / R.dtype.type(2)  # raw = q @ k^T: uniform rule
        loss = loss + ctx.totals(R_scores) - 2 * ctx.passed(p["raw"], G3)
        rel[0] = ctx.times(p["q"], xp.matmul(G3, p["k"]))
        rel[1] = ctx.times(p["k"], xp.matmul(_swap(xp, G3), p["q"]))
    parts = [None] * len(inputs)
    past = inputs[4].shape[2] if len(inputs) > 4 and inputs[4] is not None else 0
    for i, r in rel.items():
        if i > 0:
            r = sum_repeated_heads(r, p["reps"])
            if past:  # the cache part of K/V goes to past_key / past_value (absorbed if constant)
                parts[i + 3], r = r[:, :, :, :past], r[:, :, :, past:]
        parts[i] = heads_merged(r) if Q.ndim == 3 else r
    return Result(parts, loss=loss, deficit=deficit, absorbed=absorbed)


def _check_outputs(ctx, R_out):
    if any(r is not None for r in R_out[1:]):
        raise RuleError(f"{ctx.node.label()}: relevance arrives at the present key/value or qk output of "
                        "Attention; only its first output can be explained")


@rule("attention")
def attention_rule(ctx, inputs, outputs, R_out):
    """AttnLRP through the fused Attention op (Achtibat et al. 2024): uniform rule on ``probs @ v`` and
    ``q @ k^T``, the softmax rule between them, the mask/bias absorbing."""
    _check_outputs(ctx, R_out)
    return attention_relevance(ctx, inputs, R_out[0], cp=False)


@rule("attention-cp")
def attention_cp_rule(ctx, inputs, outputs, R_out):
    """CP-LRP through the fused Attention op (Ali et al. 2022): the attention weights held constant, all
    relevance to V: ``R_v = v * (probs^T @ (R_y / stab(y)))``."""
    _check_outputs(ctx, R_out)
    return attention_relevance(ctx, inputs, R_out[0], cp=True)


@rule("rotary")
def rotary_rule(ctx, inputs, outputs, R_out):
    """RotaryEmbedding as its decomposition ``Concat(x1 cos - x2 sin, x1 sin + x2 cos, x_pass)``: LRP-epsilon
    on the rotation, ``R_x = x * vjp_x(R_y / stab(y))``, and the identity (``R_x = R_y``) on the features
    past ``rotary_embedding_dim``, which the op passes through unchanged."""
    X, y, R = inputs[0], outputs[0], R_out[0]
    num_heads = ctx.attrs.get("num_heads", 0)
    G = ctx.ratio(R, y)
    grads = ctx.vjp(inputs, outputs, [G], [True] + [False] * (len(inputs) - 1))
    Rx = ctx.times(X, grads[0])
    Rx4, restore = rotary_layout(ctx.xp, Rx, X, num_heads)
    R4, _ = rotary_layout(ctx.xp, R, X, num_heads)
    rot = ctx.attrs.get("rotary_embedding_dim", 0) or R4.shape[-1]
    Rx4[..., rot:] = R4[..., rot:]
    y4, _ = rotary_layout(ctx.xp, y[None], X, num_heads)
    G4, _ = rotary_layout(ctx.xp, G, X, num_heads)
    passed = ctx.passed(y4[0][..., :rot], G4[..., :rot]) + ctx.totals(R4[..., rot:])
    return Result([restore(Rx4), None, None, None][:len(inputs)], loss=ctx.inflow - passed)
