"""Faster versions of two relevance rules of reflrp.rules.lrp, the ones that work on attention-sized
arrays (the uniform rule on Q·Kᵀ and A·V, the softmax rule): the same formulas, with fewer full-size
temporaries (products written into arrays the rule itself just made, masks built once).

Each returns the numbers of the rule it replaces (tests/test_fast_layer.py compares them on the zoo and
on masked, fully masked and non-finite softmax rows). Like the fast formulas they may leave a non-finite
value where the plain rule masks; the propagator then reruns the node with the plain rule.
"""
from __future__ import annotations

import numpy as np

from ..rules import Result, lrp
from ..rules.lrp import MASKED_LOGIT


def _fresh(g, *others) -> bool:
    """``g`` is a new array (or a reshaped view of one) that shares no memory with any of ``others``: an
    adjoint's result that a rule may write into."""
    if not isinstance(g, np.ndarray) or not g.flags.writeable:
        return False
    own = g if g.base is None else g.base
    if not (isinstance(own, np.ndarray) and own.flags.owndata):
        return False
    return all(o is None or (own is not o and own is not o.base) for o in others)


def _times_into(ctx, x, g, *others):
    """``x * g``, written into ``g`` when the rule owns it (same numbers as ``ctx.times``: no masking)."""
    if _fresh(g, *others) and g.dtype == np.result_type(x, g) and x.shape == g.shape[1:]:
        with np.errstate(all="ignore"):
            return np.multiply(x, g, out=g)
    return ctx.times(x, g)


def _parts(ctx, xs, grads, G, *values):
    """``x_i * g_i`` for each gradient (None stays None); a gradient the adjoint returned twice is not
    written into, nor one that shares memory with ``G`` or the node's ``values``."""
    return [None if g is None else _times_into(ctx, x, g, G, *values) if sum(h is g for h in grads) == 1
            else ctx.times(x, g) for x, g in zip(xs, grads)]


def bilinear_uniform_rule(ctx, inputs, outputs, R_out):
    """reflrp.rules.lrp.bilinear_uniform_rule with ``G / n`` divided in place and the products written into
    the adjoint's fresh arrays."""
    R = R_out[0]
    xs, ys = ctx.operands(inputs, outputs, R.dtype)
    y = ys[0]
    n = sum(ctx.dynamic)
    G = ctx.ratio(R, y)
    if _fresh(G, R):
        G /= R.dtype.type(n)
    else:
        G = G / R.dtype.type(n)
    grads = ctx.vjp(inputs, outputs, [G], ctx.dynamic)
    loss = ctx.inflow - n * ctx.passed(y, G)
    return Result(_parts(ctx, xs, grads, G, R, *inputs, *outputs, *xs), loss=loss)


def softmax_relevance(ctx, x, s, R, axis):
    """reflrp.rules.lrp.softmax_relevance with one full-size temporary: ``inner = R - s * sum(R)`` is
    made once and multiplied by ``x`` in place; the masked logits (one boolean mask) are zeroed after."""
    xp = ctx.xp
    inner = s * xp.sum(R, axis=axis, keepdims=True)
    xp.subtract(R, inner, out=inner)
    masked = x <= MASKED_LOGIT
    absorbed = 0.0
    if bool(masked.any()):
        dead = masked.all(axis=axis - 1, keepdims=True)  # rows made only of masks: what came there is absorbed
        if bool(dead.any()):
            absorbed = ctx.totals(xp.where(dead, R, R.dtype.type(0)))
    else:
        masked = None
    with np.errstate(all="ignore"):
        xp.multiply(x, inner, out=inner)
    if masked is not None:
        xp.copyto(inner, R.dtype.type(0), where=masked)
    return inner, absorbed


def softmax_rule(ctx, inputs, outputs, R_out):
    """reflrp.rules.lrp.softmax_rule with :func:`softmax_relevance` above (the flattened pre-opset-13 form
    is left to the plain rule)."""
    if ctx.info["flattened"] or ctx.xp is not np:
        return lrp.softmax_rule(ctx, inputs, outputs, R_out)
    x, s, R = inputs[0], outputs[0], R_out[0]
    axis = ctx.info["axis"] % x.ndim
    Rx, absorbed = softmax_relevance(ctx, x, s, R, axis + 1)
    return Result([Rx], deficit=ctx.inflow - ctx.totals(Rx) - absorbed, absorbed=absorbed)


# the plain rule -> its faster version
FASTER = {lrp.bilinear_uniform_rule: bilinear_uniform_rule, lrp.softmax_rule: softmax_rule}
