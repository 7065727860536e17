"""The relevance rules, each its formula (the paper in the docstring). ``G`` is a modified gradient,
``vjp`` the op's adjoint (reflrp.ops), every relevance array has a leading target axis."""
from __future__ import annotations

import numpy as np

from . import PASS_EPSILON, Result, rule, to_shape

# A logit at or below float16's lowest finite value (-65504) can only be a mask (GPT-2's finfo.min,
# HF's additive masks, -inf); a softmax row made only of them attends to nothing.
MASKED_LOGIT = -65504.0


def _dynamic_or_addend(ctx):
    return [d or i in ctx.addends for i, d in enumerate(ctx.dynamic)]


def without_addends(ctx, inputs):
    """The inputs with every constant summand (bias) zeroed, and the output recomputed without them."""
    zeroed = [ctx.xp.zeros_like(x) if i in ctx.addends and not ctx.dynamic[i] and x is not None else x
              for i, x in enumerate(inputs)]
    return zeroed, [ctx.kernel(ctx.xp, *zeroed, **ctx.attrs)]


@rule("epsilon", params={"epsilon": PASS_EPSILON, "zero_bias": False}, stabiliser="epsilon")
def epsilon_rule(ctx, inputs, outputs, R_out):
    """LRP-epsilon (Bach et al. 2015) on an op that is linear in its dynamic input(s):
    ``G = R_y / stab(y)``, ``R_i = x_i * vjp_i(G)``; a constant summand (bias) absorbs ``x_c * vjp_c(G)``.
    On integer arithmetic (MatMulInteger, ...) ``x_i`` and ``y`` are the zero-point-centred integers
    (``x - x_zp``): with eps = 0 that is the rule on the layer with dequantized operands, whose scales
    cancel in ``x_i / y``; eps is then in accumulator units. ``zero_bias``: the constant summands are
    left out of ``y`` and absorb nothing (Zennit's ``zero_params=['bias']``)."""
    R = R_out[0]
    if ctx.params.get("zero_bias"):
        inputs, outputs = without_addends(ctx, inputs)
    xs, ys = ctx.operands(inputs, outputs, R.dtype)
    y = ys[0]
    G = ctx.ratio(R, y)
    grads = ctx.vjp(inputs, outputs, [G], _dynamic_or_addend(ctx))
    parts = [ctx.times(x, g) if g is not None else None for x, g in zip(xs, grads)]
    return Result(parts, loss=ctx.inflow - ctx.passed(y, G))


@rule("bilinear-uniform")
def bilinear_uniform_rule(ctx, inputs, outputs, R_out):
    """AttnLRP's uniform rule on a product of n dynamic operands (``Q @ K^T``, ``A @ V``; Achtibat et al.
    2024, Prop. 3.3): each gets ``1/n``: ``G = R_y / (n stab(y))``, ``R_i = x_i * vjp_i(G)``."""
    R = R_out[0]
    xs, ys = ctx.operands(inputs, outputs, R.dtype)
    y = ys[0]
    n = sum(ctx.dynamic)
    G = ctx.ratio(R, y) / R.dtype.type(n)
    grads = ctx.vjp(inputs, outputs, [G], ctx.dynamic)
    parts = [ctx.times(x, g) if g is not None else None for x, g in zip(xs, grads)]
    return Result(parts, loss=ctx.inflow - n * ctx.passed(y, G))


@rule("bilinear-cp")
def bilinear_cp_rule(ctx, inputs, outputs, R_out):
    """CP-LRP (Ali et al. 2022) on ``A @ V``: the attention weights A are held constant, so the product
    is linear in V: ``R_V = V * vjp_V(R_y / stab(y))``; A gets nothing."""
    R = R_out[0]
    xs, ys = ctx.operands(inputs, outputs, R.dtype)
    y = ys[0]
    keep = ctx.info["values"]
    G = ctx.ratio(R, y)
    grads = ctx.vjp(inputs, outputs, [G], [i == keep for i in range(len(inputs))])
    parts = [ctx.times(x, g) if g is not None else None for x, g in zip(xs, grads)]
    return Result(parts, loss=ctx.inflow - ctx.passed(y, G))


@rule("identity")
def identity_rule(ctx, inputs, outputs, R_out):
    """AttnLRP's identity rule on elementwise functions of one dynamic input (activations, Cast, Mul by a
    constant): ``R_x = R_y`` (summed over the axes ``x`` was broadcast along)."""
    return Result([to_shape(ctx.xp, R_out[0], x) if d else None for x, d in zip(inputs, ctx.dynamic)])


@rule("route")
def route_rule(ctx, inputs, outputs, R_out):
    """Data movement and selection (Reshape ... Pad, Where, Max, MaxPool): ``R_x = vjp_x(R_y)``, the
    adjoint of a 0/1 map, so relevance is moved, never weighted. A constant data input (a constant
    piece of a Concat, the other branch of a Where) absorbs what it would receive; relevance on elements
    that came from no input (fill values) is absorbed too."""
    grads = ctx.vjp(inputs, outputs, R_out, [x is not None and x.dtype.kind == "f" for x in inputs])
    return Result(grads, rest_absorbed=True)


@rule("gradient")
def gradient_rule(ctx, inputs, outputs, R_out):
    """The plain gradient: ``g_x = vjp_x(g_y)`` (no relevance semantics; used by the gradient presets)."""
    return Result(ctx.vjp(inputs, outputs, R_out, ctx.dynamic))


def _all_to(ctx, inputs, R, keep: int) -> Result:
    """Every bit of ``R`` to input ``keep`` (summed over its broadcast axes), nothing to the others."""
    return Result([to_shape(ctx.xp, R, x) if i == keep else None for i, x in enumerate(inputs)])


@rule("normalizer")
def normalizer_rule(ctx, inputs, outputs, R_out):
    """Mul/Div by a normalizer (a factor that depends on the other only through a reduction, e.g.
    ``x * rsqrt(mean(x^2))``): the normalizer is held constant, all relevance to the normalized operand."""
    return _all_to(ctx, inputs, R_out[0], ctx.info["normalized"])


@rule("gate-up")
def gate_up_rule(ctx, inputs, outputs, R_out):
    """CP-LRP on a gated product ``act(gate) * up``: the gate is held constant, all relevance to ``up``."""
    return _all_to(ctx, inputs, R_out[0], ctx.info["up"])


@rule("gate-uniform")
def gate_uniform_rule(ctx, inputs, outputs, R_out):
    """AttnLRP's uniform rule on an elementwise product of n dynamic factors (gating): ``R_i = R_y / n``."""
    n = sum(ctx.dynamic)
    share = R_out[0] / R_out[0].dtype.type(n)
    return Result([to_shape(ctx.xp, share, x) if d else None for x, d in zip(inputs, ctx.dynamic)])


@rule("region")
def region_rule(ctx, inputs, outputs, R_out):
    """End of an elementwise region (SiLU ``x * sigmoid(x)``, GELU, ...): the identity rule from the
    region's end to its source; the nodes inside get nothing of their own."""
    return Result([None] * len(inputs), extra={ctx.info["source"]: R_out[0]})


def masked_rows(xp, x, axis):
    """Softmax rows (along ``axis``) whose every logit is a mask value: they attend to nothing."""
    return xp.max(x, axis=axis, keepdims=True) <= MASKED_LOGIT


def softmax_relevance(ctx, x, s, R, axis):
    """The AttnLRP softmax rule ``R_x = x * (R_y - s * sum_axis(R_y))`` (Achtibat et al. 2024, Prop. 3.1;
    LXT's gradient x input through the softmax). A masked logit (at or below -65504) gets 0; a row that
    is masked entirely gets nothing, and what arrived there is returned as absorbed."""
    xp = ctx.xp
    inner = R - ctx.times(s, xp.sum(R, axis=axis, keepdims=True))  # a row that got nothing gives nothing
    absorbed = 0.0
    if x.size and float(xp.min(x)) <= MASKED_LOGIT:  # some logits are masks
        dead = masked_rows(xp, x, axis - 1)
        if bool(dead.any()):
            inner = xp.where(dead, R.dtype.type(0), inner)
            absorbed = ctx.totals(xp.where(dead, R, R.dtype.type(0)))
        x = xp.where(x > MASKED_LOGIT, x, x.dtype.type(0))
    return ctx.times(x, inner), absorbed


@rule("softmax")
def softmax_rule(ctx, inputs, outputs, R_out):
    """Softmax: the AttnLRP softmax rule (see :func:`softmax_relevance`). Not conservative by design:
    ``deficit = sum(R_y) - sum(R_x)`` is reported (minus what fully masked rows absorbed)."""
    x, s, R = inputs[0], outputs[0], R_out[0]
    axis = ctx.info["axis"] % x.ndim
    if ctx.info["flattened"]:  # before opset 13 a row is the flattened trailing axes from ``axis`` on
        x2 = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))
        Rx, absorbed = softmax_relevance(ctx, x2, s.reshape(x2.shape), R.reshape((R.shape[0],) + x2.shape), 2)
        Rx = Rx.reshape(R.shape)
    else:
        Rx, absorbed = softmax_relevance(ctx, x, s, R, axis + 1)
    return Result([Rx], deficit=ctx.inflow - ctx.totals(Rx) - absorbed, absorbed=absorbed)


@rule("layernorm")
def layernorm_rule(ctx, inputs, outputs, R_out):
    """LayerNormalization with the standard deviation held constant (LXT's stop-gradient on it): the
    layer is then linear in ``x``, and LRP-epsilon applies: ``G = R_y / stab(y)``,
    ``R_x = x * vjp_x^(std const)(G) = x * (Gc - mean(Gc))`` with ``Gc = gamma * G / std``; beta absorbs
    ``beta * G``. The statistics are the kernel's own (its ``stash_type`` precision)."""
    from ..ops.nn import layernorm_vjp
    X, gamma = inputs[:2]
    beta = inputs[2] if len(inputs) > 2 else None
    R, y = R_out[0], outputs[0]
    G = ctx.ratio(R, y)
    a = ctx.attrs
    gx, _ = layernorm_vjp(ctx.xp, G, X, gamma, a.get("axis", -1), a.get("epsilon", 1e-5), a.get("stash_type", 1),
                          hold_std=True)
    parts = [ctx.times(X, gx), None, None][:len(inputs)]
    if beta is not None:
        parts[2] = to_shape(ctx.xp, ctx.times(beta, G), beta)
    return Result(parts, loss=ctx.inflow - ctx.passed(y, G))
