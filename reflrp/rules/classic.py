"""Zennit 1.0.0's LRP rules for weight layers, as modified gradients over the layer's own kernel and adjoint.

A weight layer (Conv, ConvTranspose, Gemm, or MatMul with a constant weight plus the Add of its bias;
see reflrp.analysis) computes ``z = f(a, W, b)``, linear in its input ``a``. Each rule re-runs that
kernel on modified inputs and parameters (``ctx.kernel``), turns the relevance ``R`` at the output into
modified gradients ``G_k``, and takes the adjoint with respect to the input (``ctx.vjp``), exactly as
Zennit's ``BasicHook`` does with autograd. Notation: ``v+ = max(v, 0)``, ``v- = min(v, 0)``
(elementwise, for inputs, weights and biases alike), ``stab(z) = z + s sign(z)`` with ``sign(0) = +1``
and ``s`` the rule's ``stabilizer``; ``R / stab(z)`` is 0 where ``stab(z)`` is 0 (Zennit: NaN).

The books (docs/rules.md): what a rule gives the layer input is the outflow; what it gives the bias
terms (``b * vjp_b(G)``) is absorbed; the loss is ``sum R - sum_k c_k sum(z_k G_k)`` over the passes,
i.e. what the stabiliser (and Gamma's ``z = 0`` mask) did not pass on. ``c_k`` is alpha / -beta for
AlphaBeta and 1 elsewhere, so ``inflow = outflow + absorbed + loss`` holds for every rule.

References: Bach et al. 2015 (epsilon, alpha-beta); Montavon et al. 2017 (z+, w^2, z^B); Montavon et al.
2019 and Andeol et al. 2021 (gamma); Lapuschkin et al. 2019 (flat); Anders et al. 2021 (Zennit).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import RuleError
from . import REQUIRED, Result, rule
from .lrp import epsilon_rule, identity_rule

STABILIZER = 1e-6  # Zennit's default stabilizer
_LAYER = {"stabilizer": STABILIZER, "zero_bias": False}


class Layer:
    """The weight layer a rule works on: ``z = f(a, W, b)`` by the node's kernel, linear in ``a``.

    A Gemm's ``alpha`` and ``beta`` are folded into its weight and bias first, so the rules modify the
    layer's effective parameters. ``b`` is None without a bias or with ``zero_bias``."""

    def __init__(self, ctx, inputs):
        spec = ctx.info["layer"]
        self.data, self.weight, self.bias = spec["data"], spec["weight"], spec["bias"]
        inputs = list(inputs)
        alpha, beta = ctx.attrs.get("alpha", 1.0), ctx.attrs.get("beta", 1.0)
        if alpha != 1.0 or beta != 1.0:
            inputs[self.weight] = inputs[self.weight] * inputs[self.weight].dtype.type(alpha)
            if self.bias is not None and spec.get("own_bias", True):  # beta scales a Gemm's own C only
                inputs[self.bias] = inputs[self.bias] * inputs[self.bias].dtype.type(beta)
            ctx = replace(ctx, attrs={**ctx.attrs, "alpha": 1.0, "beta": 1.0})
        self.ctx, self.xp, self.inputs = ctx, ctx.xp, inputs
        self.a, self.W = inputs[self.data], inputs[self.weight]
        self.b = None if self.bias is None or ctx.params.get("zero_bias") else inputs[self.bias]

    def _args(self, a, W, b):
        args = list(self.inputs)
        args[self.data], args[self.weight] = a, W
        if self.bias is not None:
            args[self.bias] = b
        return args

    def run(self, a, W, b=None):
        """``f(a, W, b)``: the layer's forward on modified values (``b`` None: without a bias)."""
        return self.ctx.kernel(self.xp, *self._args(a, W, b), **self.ctx.attrs)

    def back(self, W, G, b=None):
        """``(vjp_a(G), vjp_b(G))`` of the layer with weight ``W``; the bias's only when ``b`` is given."""
        args = self._args(self.a, W, b)
        need = [i == self.data or (b is not None and i == self.bias) for i in range(len(args))]
        grads = self.ctx.vjp(args, [None], [G], need)
        return grads[self.data], (grads[self.bias] if b is not None else None)

    def signed(self, ap, an, W_pos, W_neg, b, G):
        """``a+ * vjp_{W_pos}(G) + a- * vjp_{W_neg}(G)`` and the bias's share ``b * vjp_b(G)``: one
        modified gradient through the passes ``(a+, W_pos, b)`` and ``(a-, W_neg, 0)``."""
        g_pos, g_b = self.back(W_pos, G, b)
        g_neg, _ = self.back(W_neg, G)
        t = self.ctx.times
        return t(ap, g_pos) + t(an, g_neg), (t(b, g_b) if b is not None else None)

    def result(self, R_a, R_b, loss) -> Result:
        """The rule's result: ``R_a`` to the layer input, ``R_b`` to the bias (absorbed), the loss."""
        parts = [None] * len(self.inputs)
        parts[self.data] = R_a
        if R_b is not None:
            parts[self.bias] = R_b
        return Result(parts, loss=loss)


def split(xp, v):
    """``(v+, v-)``; None stays None (no bias)."""
    if v is None:
        return None, None
    zero = v.dtype.type(0)
    return xp.maximum(v, zero), xp.minimum(v, zero)


def _alpha_beta(ctx, inputs, R, alpha: float, beta: float) -> Result:
    L = Layer(ctx, inputs)
    xp = ctx.xp
    (ap, an), (Wp, Wn), (bp, bn) = split(xp, L.a), split(xp, L.W), split(xp, L.b)
    zp = L.run(ap, Wp, bp) + L.run(an, Wn)
    Gp = ctx.ratio(R, zp)
    R_a, R_b = L.signed(ap, an, Wp, Wn, bp, Gp)
    loss = ctx.inflow - alpha * ctx.passed(zp, Gp)
    if alpha != 1.0:
        R_a = R_a * R.dtype.type(alpha)
        R_b = R_b * R.dtype.type(alpha) if R_b is not None else None
    if beta:
        zn = L.run(ap, Wn, bn) + L.run(an, Wp)
        Gn = ctx.ratio(R, zn)
        N_a, N_b = L.signed(ap, an, Wn, Wp, bn, Gn)
        R_a = R_a - R.dtype.type(beta) * N_a
        if N_b is not None:
            R_b = (R_b if R_b is not None else 0) - R.dtype.type(beta) * N_b
        loss = loss + beta * ctx.passed(zn, Gn)
    return L.result(R_a, R_b, loss)


@rule("zplus", params=_LAYER, stabiliser="stabilizer", layer=True)
def zplus_rule(ctx, inputs, outputs, R_out):
    """Zennit's ZPlus, i.e. alpha-beta with ``alpha = 1, beta = 0``: ``zp = W+ a+ + W- a- + b+``,
    ``G = R / stab(zp)``, ``R_a = a+ * vjp_{W+}(G) + a- * vjp_{W-}(G)``; ``b+`` absorbs ``b+ * G``. The
    negative inputs through the negative weights count (not the textbook positive-inputs-only z+)."""
    return _alpha_beta(ctx, inputs, R_out[0], 1.0, 0.0)


@rule("alpha-beta", params={"alpha": 2.0, "beta": 1.0, **_LAYER}, stabiliser="stabilizer", layer=True)
def alpha_beta_rule(ctx, inputs, outputs, R_out):
    """LRP-alpha-beta (Bach et al. 2015; ``alpha - beta = 1``, both >= 0): the positive contributions
    ``zp = W+ a+ + W- a- + b+`` and the negative ones ``zn = W- a+ + W+ a- + b-``, each stabilised on
    its own: ``R_a = alpha (a+ vjp_{W+}(Gp) + a- vjp_{W-}(Gp)) - beta (a+ vjp_{W-}(Gn) + a- vjp_{W+}(Gn))``
    with ``Gp = R / stab(zp)``, ``Gn = R / stab(zn)``; the bias terms absorb ``alpha b+ Gp - beta b- Gn``."""
    return _alpha_beta(ctx, inputs, R_out[0], float(ctx.params["alpha"]), float(ctx.params["beta"]))


@rule("gamma", params={"gamma": 0.25, **_LAYER}, stabiliser="stabilizer", layer=True)
def gamma_rule(ctx, inputs, outputs, R_out):
    """Zennit's generalised LRP-gamma: ``Wg+ = W + g W+``, ``Wg- = W + g W-`` (the bias likewise),
    ``zpos = Wg+ a+ + Wg- a- + (b + g b+)``, ``zneg = Wg- a+ + Wg+ a- + (b + g b-)``,
    ``Gp = [z > 0] R / stab(zpos)``, ``Gn = [z < 0] R / stab(zneg)`` with ``z`` the layer's own output
    (bias included even with ``zero_bias``), and
    ``R_a = a+ vjp_{Wg+}(Gp) + a- vjp_{Wg-}(Gp) + a+ vjp_{Wg-}(Gn) + a- vjp_{Wg+}(Gn)``. Where ``z = 0``
    nothing flows (booked as loss). ``g = 0`` is epsilon with ``stab(z)`` on ``z != 0``."""
    L = Layer(ctx, inputs)
    xp, R, z = ctx.xp, R_out[0], outputs[0]
    g = L.W.dtype.type(ctx.params["gamma"])
    (ap, an), (Wp, Wn), (bp, bn) = split(xp, L.a), split(xp, L.W), split(xp, L.b)
    Wgp, Wgn = L.W + g * Wp, L.W + g * Wn
    bgp, bgn = (None, None) if L.b is None else (L.b + g * bp, L.b + g * bn)
    zpos = L.run(ap, Wgp, bgp) + L.run(an, Wgn)
    zneg = L.run(ap, Wgn, bgn) + L.run(an, Wgp)
    zero = R.dtype.type(0)
    Gp = xp.where(z > 0, ctx.ratio(R, zpos), zero)
    Gn = xp.where(z < 0, ctx.ratio(R, zneg), zero)
    P_a, P_b = L.signed(ap, an, Wgp, Wgn, bgp, Gp)
    N_a, N_b = L.signed(ap, an, Wgn, Wgp, bgn, Gn)
    R_b = None if P_b is None else P_b + N_b
    return L.result(P_a + N_a, R_b, ctx.inflow - ctx.passed(zpos, Gp) - ctx.passed(zneg, Gn))


@rule("flat", params={"stabilizer": STABILIZER}, stabiliser="stabilizer", layer=True)
def flat_rule(ctx, inputs, outputs, R_out):
    """LRP-flat (Lapuschkin et al. 2019): every input and weight one, no bias: ``z = S 1`` with ``S``
    the layer's connectivity (a conv's in-bounds taps times input channels), ``R_a = vjp_S(R / stab(z))``.
    Independent of the input's values."""
    L = Layer(ctx, inputs)
    xp = ctx.xp
    ones_a, ones_W = xp.ones_like(L.a), xp.ones_like(L.W)
    z = L.run(ones_a, ones_W)
    G = ctx.ratio(R_out[0], z)
    R_a, _ = L.back(ones_W, G)
    return L.result(R_a, None, ctx.inflow - ctx.passed(z, G))


@rule("wsquare", params=_LAYER, stabiliser="stabilizer", layer=True)
def wsquare_rule(ctx, inputs, outputs, R_out):
    """LRP-w^2 (Montavon et al. 2017): ``z = W^2 1 + b^2``, ``R_a = vjp_{W^2}(R / stab(z))``; the squared
    bias sits in the denominator and absorbs ``b^2 G`` (``zero_bias`` drops it). Independent of the input."""
    L = Layer(ctx, inputs)
    W2 = L.W * L.W
    b2 = None if L.b is None else L.b * L.b
    z = L.run(ctx.xp.ones_like(L.a), W2, b2)
    G = ctx.ratio(R_out[0], z)
    R_a, g_b = L.back(W2, G, b2)
    return L.result(R_a, None if b2 is None else ctx.times(b2, g_b), ctx.inflow - ctx.passed(z, G))


def bounds(ctx, a, value, name: str):
    """A zbox bound as an array of the layer input's shape (NumPy broadcasting from the right)."""
    arr = ctx.xp.asarray(np.asarray(value, dtype=np.float64), dtype=a.dtype)
    try:
        shape = np.broadcast_shapes(arr.shape, a.shape)
    except ValueError:
        shape = None
    if shape != tuple(a.shape):
        raise RuleError(f"zbox: {name} of shape {tuple(arr.shape)} does not broadcast to the layer input's shape "
                        f"{tuple(a.shape)} (a per-channel bound of an image is (C, 1, 1) or (1, C, 1, 1))")
    return ctx.xp.broadcast_to(arr, a.shape)


@rule("zbox", params={"low": REQUIRED, "high": REQUIRED, **_LAYER}, stabiliser="stabilizer", layer=True)
def zbox_rule(ctx, inputs, outputs, R_out):
    """LRP-z^B (Montavon et al. 2017) for inputs bounded by ``low <= a <= high`` (L, H):
    ``d = z - (W+ L + b+) - (W- H + b-)``, ``G = R / stab(d)``,
    ``R_a = a vjp_W(G) - L vjp_{W+}(G) - H vjp_{W-}(G)``. The bias cancels (``b - b+ - b- = 0``): nothing
    is absorbed. The bounds are not checked against the input (as in Zennit)."""
    L = Layer(ctx, inputs)
    xp, R, t = ctx.xp, R_out[0], ctx.times
    lo, hi = bounds(ctx, L.a, ctx.params["low"], "low"), bounds(ctx, L.a, ctx.params["high"], "high")
    (Wp, Wn), (bp, bn) = split(xp, L.W), split(xp, L.b)
    z = L.run(L.a, L.W, None) if ctx.params.get("zero_bias") else outputs[0]
    d = z - (L.run(lo, Wp, bp) + L.run(hi, Wn, bn))
    G = ctx.ratio(R, d)
    g, g_lo, g_hi = L.back(L.W, G)[0], L.back(Wp, G)[0], L.back(Wn, G)[0]
    return L.result(t(L.a, g) - (t(lo, g_lo) + t(hi, g_hi)), None, ctx.inflow - ctx.passed(d, G))


@rule("norm", params={"stabilizer": STABILIZER}, stabiliser="stabilizer")
def norm_rule(ctx, inputs, outputs, R_out):
    """Zennit's Norm on parameter-free linear layers (average pooling, the residual Sum of its ResNet
    canonizer): LRP-epsilon with the stabilizer, ``R_i = x_i * vjp_i(R / stab(y))``."""
    return epsilon_rule(ctx, inputs, outputs, R_out)


rule("pass")(identity_rule)  # Zennit's Pass (on activations and unmerged BatchNorm): R_x = R_y
