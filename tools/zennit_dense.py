"""Dense float64 NumPy re-implementation of Zennit 1.0.0's rules, as docs/zennit-conventions.md states them.

An independent oracle for tools/make_zennit_goldens.py: every layer of a *sequential* model
(Linear, Conv2d, activations, MaxPool2d, AvgPool2d / AdaptiveAvgPool2d(1), Flatten, Identity; no
BatchNorm, no residuals) becomes a dense matrix over the flattened sample, and each rule is the
formula of the conventions file on that matrix.  It reads weights from the torch modules but
never calls Zennit or autograd; the layer map of a golden spec (its JSON meta) is interpreted by
``match`` below, with our own reading of Zennit's type classes.

Notation (per row): a = layer input, W = dense matrix, b = bias per output, R = upper relevance,
x+ = max(x, 0), x- = min(x, 0), stab(z, e) = z + e * sgn(z) with sgn(0) = +1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    """Zennit's stabilizer: z + eps * sign(z), sign(0) = +1."""
    return z + eps * np.where(z >= 0, 1.0, -1.0)


# ------------------------------------------------------------------ layers as matrices

@dataclass
class Layer:
    kind: str                    # dense | conv | act | maxpool | avgpool
    W: np.ndarray | None = None  # [out, in] (maxpool: filled per forward)
    b: np.ndarray | None = None  # [out]
    S: np.ndarray | None = None  # structural 0/1 pattern of W (Flat's ones_like weights)
    fn: object = None            # activation: (forward, derivative)


def conv_matrix(w: np.ndarray, in_shape, stride: int, pad: int):
    """Dense matrix and 0/1 structure of a 2-D convolution (no dilation, no groups), C-order flatten."""
    cout, cin, kh, kw = w.shape
    c, h, wd = in_shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    M = np.zeros((cout, ho, wo, cin, h, wd))
    S = np.zeros_like(M)
    for i in range(ho):
        for j in range(wo):
            for ki in range(kh):
                for kj in range(kw):
                    ii, jj = i * stride - pad + ki, j * stride - pad + kj
                    if 0 <= ii < h and 0 <= jj < wd:
                        M[:, i, j, :, ii, jj] = w[:, :, ki, kj]
                        S[:, i, j, :, ii, jj] = 1.0
    n_in = c * h * wd
    return M.reshape(-1, n_in), S.reshape(-1, n_in), (cout, ho, wo)


def pool_matrix(in_shape, k: int):
    """k x k average pooling with stride k (no padding) as a dense matrix; k = None: global."""
    c, h, w = in_shape
    k_h, k_w = (h, w) if k is None else (k, k)
    ho, wo = h // k_h, w // k_w
    A = np.zeros((c, ho, wo, c, h, w))
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                A[ch, i, j, ch, i * k_h:(i + 1) * k_h, j * k_w:(j + 1) * k_w] = 1.0 / (k_h * k_w)
    return A.reshape(c * ho * wo, c * h * w), (c, ho, wo)


_ERF = np.vectorize(math.erf)
ACTIVATIONS = {
    nn.ReLU: (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    nn.Tanh: (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    nn.GELU: (lambda x: 0.5 * x * (1 + _ERF(x / math.sqrt(2))),
              lambda x: 0.5 * (1 + _ERF(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
}


def layers_from(named, in_shape) -> tuple[list[tuple[str, Layer]], tuple]:
    """(name, Layer) for the (name, leaf module) pairs, applied in that order; and the output shape."""
    out, shape = [], tuple(in_shape)
    for name, m in named:
        p = {k: v.detach().double().numpy() for k, v in m.named_parameters(recurse=False)}
        if isinstance(m, nn.Linear):
            out.append((name, Layer("dense", p["weight"], p.get("bias", np.zeros(m.out_features)),
                                    np.ones_like(p["weight"]))))
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            assert m.dilation == (1, 1) and m.groups == 1 and m.stride[0] == m.stride[1]
            W, S, shape_out = conv_matrix(p["weight"], shape, m.stride[0], m.padding[0])
            bias = p.get("bias", np.zeros(m.out_channels))
            out.append((name, Layer("conv", W, np.repeat(bias, shape_out[1] * shape_out[2]), S)))
            shape = shape_out
        elif isinstance(m, nn.BatchNorm2d):     # eval mode: y = s * x + t per channel
            sc = p["weight"] / np.sqrt(m.running_var.double().numpy() + m.eps)
            t = p["bias"] - m.running_mean.double().numpy() * sc
            hw = shape[1] * shape[2]
            out.append((name, Layer("bn", np.repeat(sc, hw), np.repeat(t, hw))))
        elif type(m) in ACTIVATIONS:
            out.append((name, Layer("act", fn=ACTIVATIONS[type(m)])))
        elif isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == m.stride == 2 and m.padding == 0
            out.append((name, Layer("maxpool", fn=shape)))
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            k = None if isinstance(m, nn.AdaptiveAvgPool2d) else m.kernel_size
            assert k is not None or m.output_size in (1, (1, 1))
            A, shape = pool_matrix(shape, k)
            out.append((name, Layer("avgpool", A, np.zeros(A.shape[0]))))
        elif isinstance(m, (nn.Flatten, nn.Identity)):
            continue
        else:
            raise TypeError(f"dense oracle: unsupported module {name}: {type(m).__name__}")
    return out, shape


def leaves(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def maxpool_routing(a: np.ndarray, shape) -> np.ndarray:
    """[B, out, in] 0/1 matrices selecting each 2x2 window's first maximum (torch's tie rule)."""
    c, h, w = shape
    B = a.shape[0]
    win = a.reshape(B, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, c, h // 2, w // 2, 4)
    arg = win.argmax(-1)
    P = np.zeros((B, c, h // 2, w // 2, c, h, w))
    for bi, ch, i, j in np.ndindex(B, c, h // 2, w // 2):
        ki, kj = divmod(arg[bi, ch, i, j], 2)
        P[bi, ch, i, j, ch, 2 * i + ki, 2 * j + kj] = 1.0
    return P.reshape(B, c * (h // 2) * (w // 2), c * h * w)


# ----------------------------------------------------------------------------- rules

def r_epsilon(a, W, b, R, epsilon):
    z = a @ W.T + b
    return a * ((R / stab(z, epsilon)) @ W)


def r_zplus(a, W, b, R, stabilizer):
    return r_alpha_beta(a, W, b, R, 1.0, 0.0, stabilizer)


def r_alpha_beta(a, W, b, R, alpha, beta, stabilizer):
    ap, an, Wp, Wn = np.maximum(a, 0), np.minimum(a, 0), np.maximum(W, 0), np.minimum(W, 0)
    zp = ap @ Wp.T + an @ Wn.T + np.maximum(b, 0)     # positive contributions, bias+ included
    zn = ap @ Wn.T + an @ Wp.T + np.minimum(b, 0)     # negative contributions, bias- included
    sp, sn = R / stab(zp, stabilizer), R / stab(zn, stabilizer)
    pos = ap * (sp @ Wp) + an * (sp @ Wn)
    neg = ap * (sn @ Wn) + an * (sn @ Wp)
    return alpha * pos - beta * neg


def r_gamma(a, W, b, R, gamma, stabilizer, b_mask):
    """b_mask: the bias in the sign mask z (Zennit keeps it even with zero_params='bias')."""
    ap, an, Wp, Wn = np.maximum(a, 0), np.minimum(a, 0), np.maximum(W, 0), np.minimum(W, 0)
    Wgp, Wgn = W + gamma * Wp, W + gamma * Wn
    z = a @ W.T + b_mask
    zpos = ap @ Wgp.T + an @ Wgn.T + (b + gamma * np.maximum(b, 0))
    zneg = ap @ Wgn.T + an @ Wgp.T + (b + gamma * np.minimum(b, 0))
    sp = (z > 0) * R / stab(zpos, stabilizer)
    sn = (z < 0) * R / stab(zneg, stabilizer)
    return ap * (sp @ Wgp) + an * (sp @ Wgn) + ap * (sn @ Wgn) + an * (sn @ Wgp)


def r_flat(S, R, stabilizer):
    return (R / stab(np.broadcast_to(S.sum(1), R.shape), stabilizer)) @ S


def r_wsquare(W, b, R, stabilizer):
    return (R / stab(np.broadcast_to((W ** 2).sum(1) + b ** 2, R.shape), stabilizer)) @ (W ** 2)


def r_zbox(a, W, b, R, low, high, stabilizer):
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    z = a @ W.T + b
    zl = low @ Wp.T + np.maximum(b, 0)
    zh = high @ Wn.T + np.minimum(b, 0)
    s = R / stab(z - zl - zh, stabilizer)
    return a * (s @ W) - low * (s @ Wp) - high * (s @ Wn)


# ------------------------------------------------------------------------ layer maps

MATCHES = {  # type name in a spec -> layer kinds it matches (our reading of zennit.types)
    "zennit.types.Linear": {"dense", "conv"}, "zennit.types.Convolution": {"conv"},
    "torch.nn.Linear": {"dense"}, "torch.nn.Conv2d": {"conv"}, "zennit.types.Activation": {"act"},
    "zennit.types.AvgPool": {"avgpool"}, "zennit.types.BatchNorm": {"bn"}, "zennit.layer.Sum": {"sum"},
}


def match(entries, kind):
    return next(((rule, kw) for tname, rule, kw in entries if kind in MATCHES[tname]), None)


def assign_rules(layers, spec):
    """Rule per layer: the first layer matching first_map takes it (once), else layer_map, else None."""
    first_done, out = False, []
    for _, layer in layers:
        hit = None if first_done else match(spec.get("first_map", []), layer.kind)
        if hit is not None:
            first_done = True
        else:
            hit = match(spec["layer_map"], layer.kind)
        out.append(hit)
    return out


def apply_rule(layer, rule, kw, a, R, arrays, x_shape):
    W, b = layer.W, layer.b
    zero_b = "bias" in (kw.get("zero_params") or [])
    bz = np.zeros_like(b) if zero_b else b
    st = kw.get("stabilizer", 1e-6)
    if rule == "Epsilon":
        return r_epsilon(a, W, bz, R, kw.get("epsilon", 1e-6))
    if rule == "Norm":
        return r_epsilon(a, W, np.zeros_like(b), R, st)
    if rule == "ZPlus":
        return r_zplus(a, W, bz, R, st)
    if rule == "AlphaBeta":
        return r_alpha_beta(a, W, bz, R, kw["alpha"], kw["beta"], st)
    if rule == "Gamma":
        return r_gamma(a, W, bz, R, kw.get("gamma", 0.25), st, b_mask=b)
    if rule == "Flat":
        return r_flat(layer.S, R, st)
    if rule == "WSquare":
        return r_wsquare(W, bz, R, st)
    if rule == "ZBox":
        assert a.shape[1] == int(np.prod(x_shape[1:])), "ZBox only on the input layer"
        low, high = (_bound(kw[k], arrays, x_shape) for k in ("low", "high"))
        return r_zbox(a, W, bz, R, low, high, st)
    raise KeyError(rule)


def _bound(v, arrays, x_shape):
    """A zbox bound as the spec gives it (a number, or {'array': key} of a shape that broadcasts
    to the input), as [B, n_in]; Zennit turns a Python scalar into a float32 tensor first."""
    arr = np.asarray(arrays[v["array"]]) if isinstance(v, dict) else np.float64(np.float32(v))
    return np.broadcast_to(arr, x_shape).reshape(x_shape[0], -1)


def forward_seq(layers, a):
    """Activations [input, after layer 1, ...]; fills each MaxPool's routing for this batch."""
    acts = [a]
    for _, L in layers:
        if L.kind in ("dense", "conv", "avgpool"):
            acts.append(acts[-1] @ L.W.T + L.b)
        elif L.kind == "bn":
            acts.append(acts[-1] * L.W + L.b)
        elif L.kind == "act":
            acts.append(L.fn[0](acts[-1]))
        else:
            L.W = maxpool_routing(acts[-1], L.fn)
            acts.append(np.einsum("boi,bi->bo", L.W, acts[-1]))
    return acts


def backward_seq(layers, hits, acts, R, arrays, x_shape):
    for (_, L), hit, a in zip(reversed(layers), reversed(hits), reversed(acts[:-1])):
        if L.kind == "maxpool":
            R = np.einsum("boi,bo->bi", L.W, R)          # no rule: the gradient (winner takes all)
        elif L.kind in ("act", "bn"):
            grad = L.fn[1](a) if L.kind == "act" else L.W
            R = R if hit and hit[0] == "Pass" else R * grad
        elif hit is None:
            R = R @ L.W                                    # no rule: the gradient
        else:
            R = apply_rule(L, hit[0], hit[1], a, R, arrays, x_shape)
    return R


def relevance(model: nn.Module, x: np.ndarray, seed: np.ndarray, spec: dict, arrays: dict) -> np.ndarray:
    """Input relevance of ``spec`` (a golden meta entry) for a sequential ``model`` (any BN in it
    is a layer of its own: fold it first to model a BN-merging canonizer)."""
    layers, _ = layers_from(leaves(model), x.shape[1:])
    acts = forward_seq(layers, x.reshape(x.shape[0], -1).astype(np.float64))
    R = backward_seq(layers, assign_rules(layers, spec), acts, seed.astype(np.float64), arrays, x.shape)
    return R.reshape(x.shape)


def resnet_relevance(model: nn.Module, x: np.ndarray, seed: np.ndarray, spec: dict, arrays: dict) -> np.ndarray:
    """The same for tools/zennit_models.ResNet.  With Zennit's ResNet canonizer (in spec) each
    residual sum y = out + identity is a Sum layer (Norm rule: R_k = x_k * R / stab(y));
    without it the add is differentiated: both summands receive R."""
    canon_sum = any(c.endswith("ResNetCanonizer") for c in spec["canonizers"])
    sub = lambda prefix, names: [(f"{prefix}{n}", model.get_submodule(f"{prefix}{n}")) for n in names]  # noqa: E731
    stem, shape = layers_from(sub("", ["conv1", "bn1", "relu", "maxpool"]), x.shape[1:])
    blocks = []
    for bname in [n for n, m in model.named_modules() if type(m).__name__ == "BasicBlock"]:
        blk = model.get_submodule(bname)
        main, out_shape = layers_from(sub(f"{bname}.", ["conv1", "bn1", "relu", "conv2", "bn2"]), shape)
        down = layers_from(leaves(blk.downsample), shape)[0] if blk.downsample is not None else []
        blocks.append((main, down, [("sum", Layer("sum"))], [("relu", Layer("act", fn=ACTIVATIONS[nn.ReLU]))]))
        shape = out_shape
    head, _ = layers_from(sub("", ["avgpool", "fc"]), shape)
    order = stem + [l for b in blocks for part in b[:3] for l in part] + head     # module registration order
    hit_of = dict(zip(map(id, (L for _, L in order)), assign_rules(order, spec)))
    hits = lambda layers: [hit_of[id(L)] for _, L in layers]  # noqa: E731
    relu_hit = hit_of[id(next(L for _, L in blocks[0][0] if L.kind == "act"))]   # one ReLU module, used twice

    a = x.reshape(x.shape[0], -1).astype(np.float64)
    stem_acts = forward_seq(stem, a)
    a, saved = stem_acts[-1], []
    for main, down, _, _ in blocks:
        m_acts, d_acts = forward_seq(main, a), forward_seq(down, a)
        y = m_acts[-1] + d_acts[-1]
        saved.append((m_acts, d_acts, y))
        a = np.maximum(y, 0)
    head_acts = forward_seq(head, a)
    R = backward_seq(head, hits(head), head_acts, seed.astype(np.float64), arrays, x.shape)
    for (main, down, [(_, sum_layer)], _), (m_acts, d_acts, y) in zip(reversed(blocks), reversed(saved)):
        R = R if relu_hit and relu_hit[0] == "Pass" else R * (y > 0)
        if canon_sum:
            st = hit_of[id(sum_layer)][1].get("stabilizer", 1e-6)
            s = R / stab(y, st)
            R_main, R_down = m_acts[-1] * s, d_acts[-1] * s
        else:
            R_main = R_down = R
        R = backward_seq(main, hits(main), m_acts, R_main, arrays, x.shape) + \
            backward_seq(down, hits(down), d_acts, R_down, arrays, x.shape)
    R = backward_seq(stem, hits(stem), stem_acts, R, arrays, x.shape)
    return R.reshape(x.shape)
