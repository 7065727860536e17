"""Perturbation curves and their statistics: the removal order of units, MoRF / LeRF target values of
every perturbed copy in one batched run, precision@k against ground truth, bootstrap intervals."""
from __future__ import annotations

import math

import numpy as np

from .attribute import run_at


def order(scores, allowed, ties, most_first: bool) -> np.ndarray:
    """The rank of every unit in removal order (0 = first); units not allowed come last."""
    flat = scores.reshape(len(scores), -1)
    key = np.where(allowed.reshape(flat.shape), -flat if most_first else flat, np.inf)
    idx = np.lexsort((ties.reshape(flat.shape), key), axis=-1)
    rank = np.empty_like(idx)
    np.put_along_axis(rank, idx, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=-1)
    return rank


def curves(subject, feeds, x, x0, scores, allowed, ties, classes, fractions, measure, units):
    """(MoRF, LeRF) target values, ``(samples, len(fractions))``: all ``2 * len(fractions)`` perturbed
    copies of each sample in one batched run."""
    counts = np.rint(fractions[None] * allowed.reshape(len(x), -1).sum(-1)[:, None]).astype(int)  # (n, S)
    ranks = np.stack([order(scores, allowed, ties, True), order(scores, allowed, ties, False)], axis=1)  # (n, 2, U)
    removed = ranks[:, :, None, :] < counts[:, None, :, None]                               # (n, 2, S, U)
    s = len(fractions)
    masks = units.expand(removed.reshape((-1,) + units.grid)).reshape((len(x), 2 * s) + x.shape[1:])
    variants = np.where(masks, x0[:, None], x[:, None]).reshape((-1,) + x.shape[1:])
    values = run_at(subject, feeds, variants, classes, measure).reshape(len(x), 2, s)
    return values[:, 0], values[:, 1]


def precision_at_k(scores, truth, allowed, ties) -> np.ndarray:
    """Per sample: the share of its ``k`` most relevant allowed units that are decisive, ``k`` = its number
    of decisive allowed units (NaN where it has none)."""
    rank = order(scores, allowed, ties, True)
    t = (truth & allowed).reshape(len(scores), -1)
    k = t.sum(-1)
    hits = (t & (rank < k[:, None])).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, hits / np.maximum(k, 1), np.nan)


def bootstrap_ci(values, seed: int, resamples: int = 2000, level: float = 0.95) -> tuple:
    """The percentile bootstrap interval of the mean of ``values`` (seeded)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))
