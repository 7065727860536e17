"""The attribution baselines :func:`reflrp.attribute` offers besides LRP, each on reflrp's interpreter.

- integrated gradients (Sundararajan et al., 2017): ``attr = (x - x0) * mean_i grad f(x0 + a_i (x - x0))``
  with midpoint nodes ``a_i = (i + 1/2) / steps``; its completeness error
  ``sum(attr) - (f(x) - f(x0))`` (zero for the exact integral) is reported per row.
- SmoothGrad (Smilkov et al., 2017): ``mean_j grad f(x + n_j)``, ``n_j ~ N(0, (noise (max x - min x))^2)``.
- random: i.i.d. N(0, 1) unit scores (a floor every method should beat).
- attention rollout (Abnar & Zuidema, 2020): per layer ``A = mean over heads of the attention
  probabilities + I``, rows normalised, multiplied through the layers; read out at the positions the
  output depends on (see :func:`readout`).
- occlusion (Zeiler & Fergus, 2014): ``f(x) - f(x with one unit replaced by the baseline)``.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ReflrpError

GRADIENT_PRESET = {"gradient": "gradient", "grad-x-input": "grad-x-input"}


def settings(method: str, steps, baseline, samples, noise, seed, epsilon) -> dict:
    """The settings that matter for ``method``, checked (each named in its error)."""
    from .attribute import check_positive_int
    out: dict = {}
    if method == "integrated-gradients":
        out.update(steps=check_positive_int(steps, "steps"), baseline=check_baseline(baseline))
    elif method == "occlusion":
        out.update(baseline=check_baseline(baseline))
    elif method == "smoothgrad":
        out.update(samples=check_positive_int(samples, "samples"), noise=check_noise(noise), seed=check_seed(seed))
    elif method == "random":
        out.update(seed=check_seed(seed))
    elif method in ("attnlrp", "cp-lrp", "epsilon") and epsilon is not None:
        from .options import epsilon as check_epsilon
        out.update(epsilon=check_epsilon(epsilon, 0.0))
    return out


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ReflrpError(f"seed={seed!r} must be an integer >= 0")
    return int(seed)


def check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not math.isfinite(noise) \
            or noise < 0:
        raise ReflrpError(f"noise={noise!r} must be a finite number >= 0 (SmoothGrad's noise level)")
    return float(noise)


def check_baseline(spec):
    """``"zero"``, ``"blur"``, ``"token:ID"``, ``"value:V"`` or an array (checked against the tensor later)."""
    if isinstance(spec, np.ndarray):
        return spec
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if spec in ("zero", "blur"):
            return spec
        if kind == "token" and arg.lstrip("-").isdigit() and int(arg) >= 0:
            return spec
        if kind == "value":
            try:
                if math.isfinite(float(arg)):
                    return spec
            except ValueError:
                pass
    raise ReflrpError(f"baseline={spec!r}: use 'zero', 'blur' (images), 'token:ID' (a token id's embedding), "
                      "'value:V' (a finite number) or an array of the attributed tensor's shape")


def baseline_value(subject, feeds, x, spec) -> np.ndarray:
    """The reference value of ``wrt`` for each row of ``x``."""
    if isinstance(spec, np.ndarray):
        b = np.asarray(spec, dtype=x.dtype)
        if b.shape not in (x.shape, x.shape[1:]):
            raise ReflrpError(f"baseline array has shape {b.shape}; the attributed tensor {subject.wrt!r} has "
                              f"shape {x.shape} (give that, or one row {x.shape[1:]})")
        return np.array(np.broadcast_to(b, x.shape))
    kind, _, arg = spec.partition(":")
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "value":
        return np.full_like(x, float(arg))
    if kind == "blur":
        if x.ndim != 4:
            raise ReflrpError(f"baseline/mode 'blur' is for images (batch, C, H, W); {subject.wrt!r} has shape "
                              f"{x.shape}")
        return blurred(x)
    return token_embedding(subject, feeds, x, int(arg))


def token_embedding(subject, feeds, x, token: int) -> np.ndarray:
    """The embedding of token id ``token`` at every position (the embedding Gather run on that id)."""
    if subject.ids is None:
        raise ReflrpError(f"baseline/mode 'token:{token}' needs a model fed token ids whose embedding is "
                          f"attributed; {subject.wrt!r} is not an embedding output")
    ids = np.asarray(feeds[subject.ids])
    table = subject.model.graph.initializers[subject.model.graph.producer[subject.wrt].inputs[0]]
    if token >= table.shape[0]:
        raise ReflrpError(f"token:{token} is out of range: the embedding has {table.shape[0]} rows")
    same = {**feeds, subject.ids: np.full_like(ids, token)}
    return np.asarray(subject.model.run(same, dtype=subject.dtype, intermediates=[subject.wrt])[subject.wrt],
                      dtype=x.dtype)


def blurred(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A separable Gaussian blur of each channel (radius 2 sigma, edges reflected)."""
    r = max(1, int(round(2 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = x
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect" if x.shape[axis] > r else "edge")
        out = sum(k[i] * np.take(p, range(i, i + x.shape[axis]), axis=axis) for i in range(2 * r + 1))
    return out


def run(method: str, subject, feeds, x, units, classes, value, s: dict):
    """(full-resolution array, unit scores, completeness or None) of ``method``."""
    from .attribute import LRP_METHODS, lrp
    if method in LRP_METHODS or method == "grad-x-input":
        full = lrp(subject, feeds, units, classes, method, s.get("epsilon"))
        return full, units.sum(full), None
    if method == "gradient":
        full = lrp(subject, feeds, units, classes, "gradient")
        return full, units.norm(full), None
    if method == "integrated-gradients":
        return integrated_gradients(subject, feeds, x, units, classes, value, s["steps"], s["baseline"])
    if method == "smoothgrad":
        full = smoothgrad(subject, feeds, x, classes, s["samples"], s["noise"], s["seed"])
        return full, units.norm(full), None
    if method == "random":
        scores = np.random.default_rng(s["seed"]).standard_normal((len(x),) + units.grid)
        return units.spread(scores), scores, None
    if method == "rollout":
        scores = rollout(subject, feeds, units, classes)
        return units.spread(scores), scores, None
    scores = occlusion(subject, feeds, x, units, classes, value, s["baseline"])
    return units.spread(scores), scores, None


def integrated_gradients(subject, feeds, x, units, classes, value, steps: int, spec):
    """IG along the straight path from the baseline, one gradient call per chunk of (row, step) pairs."""
    from .attribute import gradient_at, run_at
    x0 = baseline_value(subject, feeds, x, spec)
    alphas = (np.arange(steps) + 0.5) / steps
    shape = (1, steps) + (1,) * (x.ndim - 1)
    path = (x0[:, None] + alphas.reshape(shape) * (x - x0)[:, None]).reshape((-1,) + x.shape[1:])
    grads = gradient_at(subject, feeds, path, classes).reshape((len(x), steps) + x.shape[1:])
    full = (x - x0) * grads.mean(axis=1)
    start = run_at(subject, feeds, x0, classes)
    completeness = full.reshape(len(x), -1).sum(-1) - (value - start)
    return full, units.sum(full), completeness


def smoothgrad(subject, feeds, x, classes, samples: int, noise: float, seed: int) -> np.ndarray:
    """The mean gradient over ``samples`` noisy copies of each row."""
    from .attribute import gradient_at
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    sigma = noise * (flat.max(-1) - flat.min(-1))
    eps = rng.standard_normal((len(x), samples) + x.shape[1:]) * sigma.reshape((-1, 1) + (1,) * (x.ndim - 1))
    noisy = (x[:, None] + eps).reshape((-1,) + x.shape[1:])
    return gradient_at(subject, feeds, noisy, classes).reshape((len(x), samples) + x.shape[1:]).mean(axis=1)


def attention_tensors(model, wrt: str) -> list[tuple[str, str]]:
    """``(probabilities, product output)`` of every ``A @ V`` in topological order: the first operand of
    each node whose role is ``attention-values`` (its origin a Softmax, by reflrp's analysis)."""
    plan = model.plan("attnlrp", wrt=[wrt])
    found = [(p.node.inputs[0], p.node.outputs[0]) for p in plan.nodes if p.role == "attention-values"]
    if not found:
        raise ReflrpError("rollout: the model has no attention (no Softmax output feeding an A @ V product that "
                          "the relevance of the attributed tensor reaches)")
    return found


def readout(subject, feeds, classes, last_product: str) -> np.ndarray:
    """Weights over the positions of the last attention layer's output that the target depends on:
    ``|d target / d (A @ V)|`` summed per query position, normalised to 1 (one-hot on [CLS] for a
    classifier that pools it, the last position for a language model, uniform for mean pooling)."""
    from .explain import gradient
    g = np.abs(np.asarray(gradient(subject.model, feeds, target=classes, wrt=[last_product], dtype=subject.dtype,
                                   output=subject.output)[last_product], dtype=np.float64))
    per_position = np.moveaxis(g, -2, 1).reshape(g.shape[0], g.shape[-2], -1).sum(-1)
    total = per_position.sum(-1, keepdims=True)
    return per_position / np.where(total > 0, total, 1.0)


def rollout(subject, feeds, units, classes) -> np.ndarray:
    """Attention rollout per unit, one forward for every row (attention read as intermediates)."""
    from .attribute import batch_size_of
    pairs = attention_tensors(subject.model, subject.wrt)
    b = batch_size_of(feeds)
    out = subject.model.run(feeds, dtype=subject.dtype, intermediates=[a for a, _ in pairs])
    flow = None
    for name, _ in pairs:
        a = _head_mean(np.asarray(out[name], dtype=np.float64), b, name)
        a = a + np.eye(a.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        flow = a if flow is None else a @ flow
    weights = readout(subject, feeds, classes, pairs[-1][1])
    if weights.shape[-1] != flow.shape[-1]:
        raise ReflrpError(f"rollout: the last attention output has {weights.shape[-1]} positions, its "
                          f"probabilities {flow.shape[-1]}")
    return to_units(np.einsum("bq,bqk->bk", weights, flow), units)


def _head_mean(a: np.ndarray, batch: int, name: str) -> np.ndarray:
    """Attention probabilities (batch, heads, q, k) or (batch*heads, q, k) averaged over the heads."""
    if a.ndim == 4 and a.shape[0] == batch:
        return a.mean(axis=1)
    if a.ndim == 3 and a.shape[0] % batch == 0:
        return a.reshape(batch, -1, *a.shape[1:]).mean(axis=1)
    raise ReflrpError(f"rollout: attention probabilities {name!r} have shape {a.shape}; expected "
                      f"(batch, heads, seq, seq) or (batch*heads, seq, seq) with batch {batch}")


def to_units(per_position: np.ndarray, units) -> np.ndarray:
    """Attention positions onto input units: tokens one to one; an image's patch grid (after its leading
    extra tokens such as [CLS]) onto its pixels or patches, each pixel an equal share of its patch."""
    b, s = per_position.shape
    if units.kind == "token":
        if s != units.grid[0]:
            raise ReflrpError(f"rollout: the attention has {s} positions, the input {units.grid[0]} tokens")
        return per_position
    if units.kind not in ("pixel", "patch"):
        raise ReflrpError(f"rollout needs token or image inputs; the attributed tensor has shape {units.shape}")
    _, h, w = units.shape
    for extra in (1, 0, 2):
        gh = math.isqrt((s - extra) * h // w) if s > extra else 0
        if gh and (s - extra) % gh == 0 and h % gh == 0 and w % ((s - extra) // gh) == 0:
            gw = (s - extra) // gh
            grid = per_position[:, extra:].reshape(b, gh, gw)
            pixels = np.kron(grid, np.ones((h // gh, w // gw))) / ((h // gh) * (w // gw))
            p = units.patch
            return pixels.reshape(b, h // p, p, w // p, p).sum(axis=(2, 4))
    raise ReflrpError(f"rollout: {s} attention positions do not tile a {h}x{w} image into patches")


def occlusion(subject, feeds, x, units, classes, value, spec) -> np.ndarray:
    """``f(x) - f(x with unit u replaced by the baseline)`` for every unit, all variants batched."""
    from .attribute import run_at
    x0 = baseline_value(subject, feeds, x, spec)
    n = math.prod(units.grid)
    masks = np.eye(n, dtype=bool).reshape((n,) + units.grid)
    variants = np.empty((len(x), n) + x.shape[1:], dtype=x.dtype)
    for i in range(len(x)):
        m = units.expand(masks)
        variants[i] = np.where(m, x0[i], x[i])
    f = run_at(subject, feeds, variants.reshape((-1,) + x.shape[1:]), classes).reshape((len(x),) + units.grid)
    return value.reshape((-1,) + (1,) * len(units.grid)) - f
