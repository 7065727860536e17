"""Rules that move relevance without weighting it by a linear map: pass/identity, routing through data
movement (the exact adjoint), Where, winner-takes-all, the epsilon rule over summands, gating,
normalizers and elementwise regions.
"""
from __future__ import annotations

import numpy as np

from . import Result, ratio, rule, times, total, unbroadcast


@rule("identity")
def identity_rule(ctx, inputs, outputs, R_out):
    """``R_x = R_y`` for the one dynamic input (summed over its broadcast axes).

    Used for Mul/Div by a constant, Cast, Neg and every elementwise function of one dynamic input
    (the AttnLRP identity rule on activations)."""
    xp = ctx.xp
    return Result([unbroadcast(xp, R_out[0], x.shape) if d else None for x, d in zip(inputs, ctx.dynamic)])


@rule("normalizer")
def normalizer_rule(ctx, inputs, outputs, R_out):
    """Mul/Div by a normalizer (a factor that depends on the other only through a reduction): the
    normalizer is held constant and all relevance goes to the normalized operand."""
    return _all_to(ctx, inputs, R_out[0], ctx.info["normalized"])


@rule("gate-uniform")
def gate_uniform_rule(ctx, inputs, outputs, R_out):
    """AttnLRP uniform rule on a product of n dynamic factors (gating): each gets ``R_y / n``."""
    xp = ctx.xp
    n = sum(ctx.dynamic)
    share = R_out[0] / R_out[0].dtype.type(n)
    return Result([unbroadcast(xp, share, x.shape) if d else None for x, d in zip(inputs, ctx.dynamic)])


@rule("gate-up")
def gate_up_rule(ctx, inputs, outputs, R_out):
    """CP-LRP on a gated product ``act(gate) * up``: all relevance to ``up``."""
    return _all_to(ctx, inputs, R_out[0], ctx.info["up"])


def _all_to(ctx, inputs, R, keep: int) -> Result:
    """Every bit of ``R`` to input ``keep`` (summed over its broadcast axes), nothing to the others."""
    return Result([unbroadcast(ctx.xp, R, x.shape) if i == keep else None for i, x in enumerate(inputs)])


@rule("region")
def region_rule(ctx, inputs, outputs, R_out):
    """End of an elementwise region (SiLU, GELU, ...): identity from the region's end to its source;
    the nodes inside get nothing of their own."""
    return Result([None] * len(inputs), extra={ctx.info["source"]: R_out[0]})


@rule("epsilon-sum")
def epsilon_sum_rule(ctx, inputs, outputs, R_out):
    """Add / Sub / Sum: ``R_i = (+/-) x_i * R_y / stab(y)`` per summand, summed over broadcast axes;
    constant summands absorb (biases, position embeddings, additive masks)."""
    xp = ctx.xp
    R, y = R_out[0], outputs[0]
    G = ratio(xp, R, y, ctx.eps)
    parts, shares, absorbed = [], 0.0, 0.0
    for i, x in enumerate(inputs):
        sign = -1 if ctx.node.op_type == "Sub" and i == 1 else 1
        if ctx.dynamic[i]:
            r = unbroadcast(xp, times(xp, x, G), x.shape)
            parts.append(-r if sign < 0 else r)
            shares += total(xp, parts[-1])
        else:  # only the total is booked: reduce G to the constant's (smaller) shape first
            parts.append(None)
            absorbed += sign * total(xp, times(xp, x, unbroadcast(xp, G, x.shape)))
    kept = float(xp.vdot(y.reshape(-1), G.reshape(-1)))
    if not abs(kept) < float("inf"):  # y has infinities (masks): G is 0 there, the parts hold the rest
        kept = shares + absorbed
    return Result(parts, loss=total(xp, R) - kept, absorbed=absorbed)


@rule("where")
def where_rule(ctx, inputs, outputs, R_out):
    """Where with a constant condition: each element's relevance goes to the branch it was taken from."""
    xp = ctx.xp
    cond, R = inputs[0], R_out[0]
    zero = R.dtype.type(0)
    return Result([None, unbroadcast(xp, xp.where(cond, R, zero), inputs[1].shape),
                   unbroadcast(xp, xp.where(cond, zero, R), inputs[2].shape)])


@rule("winner-takes-all")
def winner_rule(ctx, inputs, outputs, R_out):
    """Max / Min elementwise: the input that attains the output gets the relevance (first one on ties)."""
    xp = ctx.xp
    R, y = R_out[0], outputs[0]
    taken = xp.zeros(y.shape, dtype=bool)
    parts = []
    for x in inputs:
        win = (xp.broadcast_to(x, y.shape) == y) & ~taken
        taken = taken | win
        parts.append(unbroadcast(xp, xp.where(win, R, R.dtype.type(0)), x.shape))
    return Result(parts)


@rule("route")
def route_rule(ctx, inputs, outputs, R_out):
    """Data movement (Reshape, Transpose, Slice, Gather*, Concat, Split, Expand, Tile, Pad, ...):
    the exact adjoint, so relevance is conserved exactly (copies sum, dropped elements give nothing)."""
    xp, op = ctx.xp, ctx.node.op_type
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"):
        return Result([R_out[0].reshape(inputs[0].shape)] + [None] * (len(inputs) - 1))
    if op == "Transpose":
        perm = ctx.attrs.get("perm") or list(range(inputs[0].ndim))[::-1]
        return Result([xp.transpose(R_out[0], np.argsort(perm))])
    if op == "Slice":  # slices never overlap: place R_y where the elements came from
        from ..ops.tensor import slice_index
        R = R_out[0]
        Rx = xp.zeros(inputs[0].shape, dtype=R.dtype)
        Rx[slice_index(xp, inputs[0].shape, *inputs[1:])] = R
        return Result([Rx] + [None] * (len(inputs) - 1))
    if op == "Expand":
        return Result([unbroadcast(xp, R_out[0], inputs[0].shape), None])
    if op == "Concat":
        axis = ctx.attrs["axis"] % inputs[0].ndim
        bounds = np.cumsum([0] + [x.shape[axis] for x in inputs])
        index = [slice(None)] * inputs[0].ndim
        parts = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            index[axis] = slice(int(lo), int(hi))
            parts.append(R_out[0][tuple(index)])
        return Result(parts)
    if op == "Split":
        axis = ctx.attrs.get("axis", 0) % inputs[0].ndim
        pieces = [r if r is not None else xp.zeros(o.shape, dtype=_dtype(R_out)) for r, o in zip(R_out, outputs)]
        return Result([xp.concatenate(pieces, axis=axis)] + [None] * (len(inputs) - 1))
    return index_route(ctx, inputs, outputs, R_out)


def _dtype(R_out):
    return next(r.dtype for r in R_out if r is not None)


def index_route(ctx, inputs, outputs, R_out):
    """Generic adjoint of a data-movement kernel: run it on element indices (1-based, 0 = no source),
    then scatter-add each output element's relevance back to the element it came from."""
    xp = ctx.xp
    data = ctx.info.get("data_inputs", (0,))
    offsets, args, next_id = {}, list(inputs), 1
    for i in data:
        x = inputs[i]
        if x is None:
            continue
        offsets[i] = next_id
        if ctx.dynamic[i]:
            args[i] = xp.arange(next_id, next_id + x.size, dtype=np.int64).reshape(x.shape)
        else:  # constant data (e.g. a constant piece of a Concat): its relevance is absorbed
            args[i] = xp.full(x.shape, -1, dtype=np.int64)
        next_id += x.size
    attrs = dict(ctx.attrs)
    if ctx.node.op_type == "Pad":
        if len(args) > 2 and args[2] is not None:
            args[2] = xp.zeros((), dtype=np.int64)
        attrs["value"] = 0
    out_ids = ctx.fn(xp, *args, **attrs)
    out_ids = out_ids if isinstance(out_ids, tuple) else (out_ids,)
    ids = xp.concatenate([o.reshape(-1) for o, r in zip(out_ids, R_out) if r is not None])
    weights = xp.concatenate([r.reshape(-1).astype(np.float64) for r in R_out if r is not None])
    ids = xp.where(ids < 0, 0, ids)  # from a constant piece: absorbed, like elements from no input
    flat = xp.bincount(ids, weights=weights, minlength=next_id)
    dtype = _dtype(R_out)
    parts = [None] * len(inputs)
    for i in data:
        if i in offsets and ctx.dynamic[i]:
            x = inputs[i]
            parts[i] = flat[offsets[i]:offsets[i] + x.size].reshape(x.shape).astype(dtype)
    # relevance on elements that came from no input (Pad values, zeroed Trilu entries) or from a
    # constant piece is absorbed
    return Result(parts, absorbed=float(flat[0]))


@rule("maxpool")
def maxpool_rule(ctx, inputs, outputs, R_out):
    """MaxPool: winner takes all inside each window (first maximum on ties)."""
    from ..ops.linalg import conv_geometry, windows
    xp, a = ctx.xp, ctx.attrs
    X = inputs[0]
    out, begin, end, strides, dilations = conv_geometry(X.shape[2:], a["kernel_shape"], a.get("strides"),
                                                        a.get("pads"), a.get("dilations"),
                                                        a.get("auto_pad", "NOTSET"), a.get("ceil_mode", 0))
    vals = windows(xp, X, a["kernel_shape"], out, begin, end, strides, dilations, fill=-np.inf)
    ids = windows(xp, xp.arange(1, X.size + 1, dtype=np.int64).reshape(X.shape), a["kernel_shape"], out, begin,
                  end, strides, dilations, fill=0)
    k = int(np.prod(a["kernel_shape"]))
    vals = vals.reshape(X.shape[:2] + (k, -1))
    ids = ids.reshape(X.shape[:2] + (k, -1))
    win = xp.take_along_axis(ids, xp.argmax(vals, axis=2)[:, :, None], axis=2)[:, :, 0]
    R = R_out[0].reshape(win.shape)
    flat = xp.bincount(win.reshape(-1), weights=R.reshape(-1).astype(np.float64), minlength=X.size + 1)
    return Result([flat[1:].reshape(X.shape).astype(R.dtype)])
