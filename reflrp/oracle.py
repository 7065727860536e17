"""Independent dense float64 oracles of the relevance rules: numpy only, never reflrp's rules.

They are written from the formulas of docs/rules.md, for the rule tests (tests/test_rules_oracle.py) and
the conformance suite (reflrp.conformance), which computes every node case's expected relevance here:

* linear maps: the dense Jacobian ``J`` of the output w.r.t. the dynamic input, probed through the
  forward pass of ``onnx.reference.ReferenceEvaluator`` (independent of reflrp) with unit vectors;
  then ``R_x = x * J^T (R_y / stab(y))``;
* data movement: the same probe gives a 0/1 matrix; ``R_x = J^T R_y``;
* everything else: the formula written out directly.

Where LRP backends legitimately differ (the stabiliser, a bias in the denominator, masked softmax
entries) the oracle takes the convention as a parameter (see ``reflrp.conformance.CONVENTIONS``).
"""
from __future__ import annotations

import numpy as np

MASKED = -65504.0  # float16's lowest value: a logit at or below it can only be a mask


def stab(z: np.ndarray, eps: float, stabilizer: str = "sign") -> np.ndarray:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (``"sign"``), or ``z + eps`` (``"plus"``, LXT's explicit mode)."""
    if stabilizer == "plus":
        return z + eps
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def safe_div(R: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``R / d``, 0 where ``d`` is 0 or not finite (the spec's ``0/0 -> 0``; ``R/-inf`` is no relevance)."""
    R, d = np.broadcast_arrays(np.asarray(R, float), np.asarray(d, float))
    out = np.zeros(R.shape)
    ok = (d != 0) & np.isfinite(d)
    out[ok] = R[ok] / d[ok]
    return out


def unbroadcast(R: np.ndarray, shape) -> np.ndarray:
    """Sum ``R`` over the axes along which an array of ``shape`` was broadcast."""
    shape = tuple(shape)
    lead = R.ndim - len(shape)
    R = R.sum(axis=tuple(range(lead))) if lead else R
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and R.shape[i] != 1)
    return R.sum(axis=axes, keepdims=True) if axes else R


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax with -inf entries (probability 0); a row of only -inf gives zeros."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / np.where(s == 0, 1.0, s)


class Forward:
    """The forward pass of a model by ``onnx.reference`` (independent of reflrp), or by reflrp's own
    float64 interpreter (``engine="reflrp"``) where ``onnx.reference`` cannot run a case."""

    def __init__(self, model, engine: str = "reference"):
        self.names = [o.name for o in model.graph.output]
        if engine == "reference":
            from onnx.reference import ReferenceEvaluator
            ev = ReferenceEvaluator(model)
            self.run = lambda feeds: ev.run(None, feeds)
        else:
            from .model import load
            m = load(model)
            self.run = lambda feeds: [m.run(feeds, dtype="float64")[n] for n in self.names]

    def __call__(self, feeds: dict, output: int = 0) -> np.ndarray:
        return np.asarray(self.run(feeds)[output], dtype=np.float64)


def probe_jacobian(fwd: Forward, feeds: dict, wrt: str):
    """Dense ``J`` (y.size x x.size) of output 0 w.r.t. ``feeds[wrt]`` (other feeds fixed) and ``f0``,
    the output at ``feeds[wrt] = 0``, by probing with unit vectors: ``J[:, i] = f(e_i) - f(0)``.
    Exact for maps that are affine in ``feeds[wrt]``."""
    x = feeds[wrt]
    f0 = fwd({**feeds, wrt: np.zeros_like(x)})
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1.0
        cols.append((fwd({**feeds, wrt: e.reshape(x.shape)}) - f0).ravel())
    return np.stack(cols, axis=1), f0


def oracle_epsilon(J, x, y, R, eps, stabilizer: str = "sign"):
    """LRP-epsilon through ``y = J x + b``: ``R_x = x * J^T (R / stab(y))``; returns ``(R_x, G)``. (A bias
    left out of the denominator: pass ``y - b``.)"""
    G = safe_div(R, stab(y, eps, stabilizer))
    return x * (J.T @ G.ravel()).reshape(x.shape), G


def oracle_sum(op, order, values, R, eps, stabilizer: str = "sign", zeroed=()):
    """Add / Sub / Sum: ``R_xi = (+/-) x_i * R_y / stab(y)`` summed over the broadcast axes of ``x_i``;
    the summands named in ``zeroed`` are left out of the denominator. Returns ``({name: R}, y)``."""
    signs = [1.0] * len(order)
    if op == "Sub":
        signs[1] = -1.0
    y = sum(s * values[n] for s, n in zip(signs, order))
    z = y - sum(s * values[n] for s, n in zip(signs, order) if n in zeroed)
    G = safe_div(R, stab(z, eps, stabilizer))
    with np.errstate(invalid="ignore"):  # a -inf summand (a mask) where G is 0 has no relevance
        share = {n: np.where(G == 0, 0.0, s * values[n] * G) for s, n in zip(signs, order)}
    return {n: unbroadcast(share[n], values[n].shape) for n in order}, y


def oracle_softmax(x, R, axis):
    """AttnLRP softmax rule ``R_x = x * (J^T (R / s))`` with the dense softmax Jacobian ``J = diag(s) - s s^T``
    of every slice along ``axis``. ``J[j, i] / s_j = delta_ij - s_i`` is used where ``s_j = 0``
    (its limit), and ``R_x = 0`` where ``x = -inf``."""
    s = softmax(x, axis)
    xm, sm, Rm = (np.moveaxis(a, axis, -1) for a in (x, s, R))
    out = np.zeros(xm.shape)
    for idx in np.ndindex(xm.shape[:-1]):
        sv, Rv, xv = sm[idx], Rm[idx], xm[idx]
        n = sv.size
        J = np.diag(sv) - np.outer(sv, sv)
        D = np.where(sv[:, None] > 0, J / np.where(sv > 0, sv, 1.0)[:, None], np.eye(n) - sv[None, :])
        g = D.T @ Rv
        out[idx] = np.where(np.isfinite(xv), np.where(np.isfinite(xv), xv, 0.0) * g, 0.0)
    return np.moveaxis(out, -1, axis)


def masked_rows(x, axis) -> np.ndarray:
    """Softmax rows (along ``axis``) whose every logit is a mask value (at or below -65504), broadcast."""
    return np.broadcast_to(np.all(x <= MASKED, axis=axis, keepdims=True), x.shape)


def oracle_softmax_masked(x, R, axis, masked_logits: str = "zero", masked_rows_rule: str = "absorbed"):
    """The softmax rule under the masking conventions: ``masked_logits="zero"`` gives logits at or below
    -65504 nothing (``"formula"``: ``x * (R - s sum R)`` there too, -inf giving 0); ``masked_rows_rule=
    "absorbed"`` gives a fully masked row nothing (``"formula"``: the plain formula). Returns
    ``(R_x, absorbed)``, absorbed being what arrived at the fully masked rows when they absorb."""
    out = oracle_softmax(x, R, axis)
    if masked_logits == "zero":
        out = np.where(x <= MASKED, 0.0, out)
    absorbed = 0.0
    if masked_rows_rule == "absorbed":
        dead = masked_rows(x, axis)
        absorbed = float(np.where(dead, R, 0.0).sum())
        out = np.where(dead, 0.0, out)
    elif masked_logits == "zero":  # the plain formula on fully masked rows, masked logits or not
        dead = masked_rows(x, axis)
        out = np.where(dead, oracle_softmax(x, R, axis), out)
    return out, absorbed


def oracle_layernorm(x, gamma, beta, R, axes, eps_ln, eps, stabilizer: str = "sign", bias: str = "absorbed"):
    """``G = R_y/stab(y)``; ``Gc = gamma*G/sigma``; ``R_x = x*(Gc - mean(Gc))``; beta absorbs ``beta*G``
    (``bias="zeroed"``: beta is left out of the denominator, ``G = R_y / stab(y - beta)``).
    Returns ``(R_x, absorbed, y)``."""
    mu = x.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps_ln)
    y = (x - mu) / sigma * gamma + beta
    G = safe_div(R, stab(y - beta if bias == "zeroed" else y, eps, stabilizer))
    Gc = gamma * G / sigma
    return x * (Gc - Gc.mean(axis=axes, keepdims=True)), float((beta * G).sum()), y


def oracle_maxpool(x, R, kernel, strides, pads):
    """Winner takes all per window (2-D, first maximum in row-major window order; pads and a ceil-mode
    overhang are -inf)."""
    N, C, H, W = x.shape
    need = [(R.shape[2 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    xp = np.full((N, C, max(H + pads[0] + pads[2], need[0]), max(W + pads[1] + pads[3], need[1])), -np.inf)
    xp[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W] = x
    out = np.zeros_like(xp)
    for n, c, i, j in np.ndindex(R.shape):
        r0, c0 = i * strides[0], j * strides[1]
        win = xp[n, c, r0:r0 + kernel[0], c0:c0 + kernel[1]]
        a, b = np.unravel_index(np.argmax(win), win.shape)
        out[n, c, r0 + a, c0 + b] += R[n, c, i, j]
    return out[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W]


def oracle_winner(op, order, values, R):
    """Max / Min elementwise: each element's relevance to the (first) input attaining it, summed over
    that input's broadcast axes. Returns ``{name: R}``."""
    shape = np.broadcast_shapes(*(values[n].shape for n in order))
    stack = np.stack([np.broadcast_to(values[n], shape) for n in order])
    win = (np.argmax if op == "Max" else np.argmin)(stack, axis=0)
    return {n: unbroadcast(np.where(win == i, R, 0.0), values[n].shape) for i, n in enumerate(order)}


# ------------------------------------------------------------------ the opset-23 Attention, written out

def attention_bias(L, Skv, mask, is_causal, past):
    """Additive bias (L, Skv) or broadcastable: float mask, or a bool mask as 0/-inf, plus the causal -inf
    (aligned bottom-right: query i sees keys up to i + past)."""
    if mask is not None and mask.dtype == bool:
        mask = np.where(mask, 0.0, -np.inf)
    bias = np.zeros((L, Skv)) if mask is None else np.zeros((L, Skv)) + mask
    if is_causal:
        bias = bias + np.where(np.tril(np.ones((L, Skv), dtype=bool), k=past), 0.0, -np.inf)
    return bias


def attention_forward(Q, K, V, q_heads=None, kv_heads=None, mask=None, is_causal=0, scale=None, softcap=0.0,
                      past_key=None, past_value=None):
    """The Attention op of the ONNX spec, written out: 4-D heads, past keys/values prepended, ``sqrt(scale)``
    on q and k, GQA by repeating each kv head, ``softcap * tanh(raw / softcap)``, + bias, softmax, ``@ v``.
    Returns every intermediate."""
    def heads(t, h):
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(0, 2, 1, 3) if t.ndim == 3 else t
    q4, k4, v4 = heads(Q, q_heads), heads(K, kv_heads), heads(V, kv_heads)
    past = 0 if past_key is None else past_key.shape[2]
    if past:
        k4, v4 = np.concatenate([past_key, k4], axis=2), np.concatenate([past_value, v4], axis=2)
    d = q4.shape[-1]
    root = np.sqrt(float(np.float32(scale)) if scale is not None else 1 / np.sqrt(d))
    q, k = q4 * root, k4 * root
    reps = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, reps, axis=1), np.repeat(v4, reps, axis=1)
    L, Skv = q.shape[2], k.shape[2]
    bias = attention_bias(L, Skv, mask, is_causal, past)
    raw = q @ np.swapaxes(k, -1, -2)
    scores = softcap * np.tanh(raw / softcap) if softcap else raw
    logits = scores + bias
    s = softmax(logits, -1)
    y4 = s @ v
    y = y4.transpose(0, 2, 1, 3).reshape(Q.shape[0], Q.shape[1], -1) if Q.ndim == 3 else y4
    return dict(q=q, k=k, v=v, raw=raw, scores=scores, bias=np.broadcast_to(bias, logits.shape), logits=logits, s=s,
                y4=y4, y=y, reps=reps, past=past)


def oracle_attention(Q, K, V, R, eps, cp=False, stabilizer: str = "sign", **kw):
    """AttnLRP through the Attention decomposition: uniform rule on ``s @ v`` (CP: all to v), softmax rule,
    the bias absorbing in ``scores + bias``, identity through the softcap, uniform rule on ``q @ k^T``;
    heads merged back (GQA copies summed), the past part split off.
    Returns ``(R_Q, R_K, R_V, R_past_key, R_past_value, absorbed, deficit, forward pieces)``."""
    p = attention_forward(Q, K, V, **kw)
    y4, s, v, q, k = p["y4"], p["s"], p["v"], p["q"], p["k"]
    R4 = R.reshape(R.shape[0], R.shape[1], y4.shape[1], -1).transpose(0, 2, 1, 3) if Q.ndim == 3 else R
    G = safe_div(R4, stab(y4, eps, stabilizer)) / (1 if cp else 2)
    R_v = v * (np.swapaxes(s, -1, -2) @ G)
    R_q = np.zeros_like(q)
    R_k = np.zeros_like(k)
    absorbed = deficit = 0.0
    if not cp:
        R_s = s * (G @ np.swapaxes(v, -1, -2))
        R_l = oracle_softmax(p["logits"], R_s, -1)
        deficit = float(R_s.sum() - R_l.sum())
        G2 = safe_div(R_l, stab(p["logits"], eps, stabilizer))
        absorbed = float(np.where(G2 != 0, np.where(np.isfinite(p["bias"]), p["bias"], 0.0) * G2, 0.0).sum())
        R_raw = p["scores"] * G2  # the softcap is elementwise: identity
        G3 = safe_div(R_raw, stab(p["raw"], eps, stabilizer)) / 2
        R_q, R_k = q * (G3 @ k), k * (np.swapaxes(G3, -1, -2) @ q)

    def merge(r, kv):
        if kv and p["reps"] > 1:
            r = r.reshape(r.shape[0], -1, p["reps"], r.shape[2], r.shape[3]).sum(axis=2)
        past, r = (r[:, :, :p["past"]], r[:, :, p["past"]:]) if kv else (None, r)
        r = r.transpose(0, 2, 1, 3).reshape(r.shape[0], r.shape[2], -1) if Q.ndim == 3 else r
        return r, past
    (rq, _), (rk, rpk), (rv, rpv) = merge(R_q, False), merge(R_k, True), merge(R_v, True)
    return rq, rk, rv, rpk, rpv, absorbed, deficit, p


def rotary_forward_and_oracle(X, cos_cache, sin_cache, pos, interleaved, rot_dim, num_heads, R, eps,
                              stabilizer: str = "sign"):
    """RotaryEmbedding written out (real = cos x1 - sin x2, imag = sin x1 + cos x2) and its relevance:
    the epsilon rule over the two summands of real and of imag (each summand a Mul by a constant);
    features past ``rotary_embedding_dim`` pass unchanged. Returns ``(y, R_X)``."""
    def to_bshd(t):
        return t.transpose(0, 2, 1, 3) if t.ndim == 4 else t.reshape(t.shape[0], t.shape[1], num_heads, -1)

    def back(t):
        return t.transpose(0, 2, 1, 3) if X.ndim == 4 else t.reshape(X.shape)
    x, Ry = to_bshd(X), to_bshd(R)
    cos, sin = (cos_cache[pos], sin_cache[pos]) if pos is not None else (cos_cache, sin_cache)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot = rot_dim or x.shape[-1]
    idx1 = np.arange(0, rot, 2) if interleaved else np.arange(rot // 2)
    idx2 = idx1 + 1 if interleaved else idx1 + rot // 2
    x1, x2, R1, R2 = x[..., idx1], x[..., idx2], Ry[..., idx1], Ry[..., idx2]
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    Gr, Gi = safe_div(R1, stab(real, eps, stabilizer)), safe_div(R2, stab(imag, eps, stabilizer))
    y, Rx = x.copy(), Ry.copy()
    y[..., idx1], y[..., idx2] = real, imag
    Rx[..., idx1] = cos * x1 * Gr + sin * x1 * Gi
    Rx[..., idx2] = -sin * x2 * Gr + cos * x2 * Gi
    return back(y), back(Rx)


# ------------------------------------------------------------------ Zennit 1.0.0's rules for weight layers

def pos(v):
    return np.maximum(v, 0.0)


def neg(v):
    return np.minimum(v, 0.0)


def oracle_layer_rule(rule: str, p: dict, J, a, b_layer, R):
    """Zennit 1.0.0's rule ``rule`` (parameters ``p``) on the dense weight layer ``y = J a + b`` over the
    flattened batch: ``J`` the probed Jacobian (each entry one weight, so ``J+`` is the layer with ``W+``),
    ``b_layer`` the output at ``a = 0`` (the layer's bias, broadcast), ``R`` the relevance at ``y``; all
    1-D / 2-D float64. ``stab(z) = z + s sign(z)`` with ``s = p["stabilizer"]``, ``sign(0) = +1``;
    ``b = 0`` with ``zero_bias``. Formulas: docs/zennit-conventions.md section 2. Returns ``R_a``."""
    b = np.zeros_like(b_layer) if p.get("zero_bias") else b_layer
    s = p.get("stabilizer", 1e-6)
    if rule == "zplus":
        return _alpha_beta(J, a, b, R, 1.0, 0.0, s)
    if rule == "alpha-beta":
        return _alpha_beta(J, a, b, R, p["alpha"], p["beta"], s)
    if rule == "gamma":
        return _gamma(J, a, b, J @ a + b_layer, R, p["gamma"], s)
    if rule == "flat":  # ones for the input and every connection, no bias
        S = (J != 0).astype(np.float64)
        return S.T @ safe_div(R, stab(S @ np.ones_like(a), s))
    if rule == "wsquare":
        W2 = J * J
        return W2.T @ safe_div(R, stab(W2 @ np.ones_like(a) + b * b, s))
    if rule == "zbox":
        lo, hi = p["low"], p["high"]
        d = (J @ a + b) - (pos(J) @ lo + pos(b)) - (neg(J) @ hi + neg(b))
        G = safe_div(R, stab(d, s))
        return a * (J.T @ G) - lo * (pos(J).T @ G) - hi * (neg(J).T @ G)
    raise KeyError(rule)


def _alpha_beta(J, a, b, R, alpha, beta, s):
    """``zp = J+ a+ + J- a- + b+``, ``zn = J- a+ + J+ a- + b-``, each stabilised on its own;
    ``R_a = alpha (a+ J+^T Gp + a- J-^T Gp) - beta (a+ J-^T Gn + a- J+^T Gn)``."""
    Jp, Jn, ap, an = pos(J), neg(J), pos(a), neg(a)
    Gp = safe_div(R, stab(Jp @ ap + Jn @ an + pos(b), s))
    Gn = safe_div(R, stab(Jn @ ap + Jp @ an + neg(b), s))
    return alpha * (ap * (Jp.T @ Gp) + an * (Jn.T @ Gp)) - beta * (ap * (Jn.T @ Gn) + an * (Jp.T @ Gn))


def _gamma(J, a, b, z, R, g, s):
    """``Jg+ = J + g J+``, ``Jg- = J + g J-`` (the bias likewise); ``Gp = [z > 0] R / stab(Jg+ a+ + Jg- a- +
    b + g b+)``, ``Gn = [z < 0] R / stab(Jg- a+ + Jg+ a- + b + g b-)`` with ``z`` the layer's own output
    (its bias in, even with zero_bias); ``R_a = a+ Jg+^T Gp + a- Jg-^T Gp + a+ Jg-^T Gn + a- Jg+^T Gn``."""
    Jgp, Jgn, ap, an = J + g * pos(J), J + g * neg(J), pos(a), neg(a)
    Gp = np.where(z > 0, safe_div(R, stab(Jgp @ ap + Jgn @ an + b + g * pos(b), s)), 0.0)
    Gn = np.where(z < 0, safe_div(R, stab(Jgn @ ap + Jgp @ an + b + g * neg(b), s)), 0.0)
    return ap * (Jgp.T @ Gp) + an * (Jgn.T @ Gp) + ap * (Jgn.T @ Gn) + an * (Jgp.T @ Gn)
