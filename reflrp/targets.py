"""What to explain: a target becomes a seed, the initial relevance at the explained output.

A target is None (per batch row the argmax; at the last position for 3-D logits), a class index or
one class per row, or an array of the output's shape used as the seed itself. Several targets
(``explain(..., targets=[...])``) stack into one seed with a leading target axis; the named forms
``"all-classes"`` and ``"every-position"`` and :func:`contrastive` expand into several.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import to_numpy
from .errors import TargetError


@dataclass(frozen=True)
class Contrastive:
    """LXT's contrastive seed for language models: +1 on the target's logit, -1/(N-1) on every other
    logit of that position (times the logits with ``seed="logit"``)."""

    target: object = None


def contrastive(target=None) -> Contrastive:
    """A contrastive target (see :class:`Contrastive`)."""
    return Contrastive(target)


def _rows(logits):
    """The logits that hold the classes, (rows, classes): the last position of 3-D logits."""
    return logits[:, -1] if logits.ndim == 3 else logits.reshape(logits.shape[0], math.prod(logits.shape[1:]))


def _place(xp, logits, rows_seed):
    seed = xp.zeros(logits.shape, dtype=logits.dtype)
    if logits.ndim == 3:
        seed[:, -1] = rows_seed
    else:
        seed = rows_seed.reshape(logits.shape)
    return seed


def classes_of(xp, logits, target):
    """One class per batch row for ``target`` (None: the argmax)."""
    rows = _rows(logits)
    n = rows.shape[-1]
    if target is None:
        return xp.argmax(rows, axis=-1)
    t = np.asarray(to_numpy(target) if not isinstance(target, (int, np.integer, list, tuple)) else target)
    if t.dtype.kind not in "iu":
        raise TargetError(f"target must be class indices (int), got dtype {t.dtype}; or pass an array of the "
                          f"output's shape {tuple(logits.shape)} as the initial relevance")
    t = np.broadcast_to(t, (rows.shape[0],)) if t.ndim == 0 else t
    if t.shape != (rows.shape[0],):
        raise TargetError(f"target has shape {t.shape}; expected one class per batch row ({rows.shape[0]},) or "
                          f"an array of the output's shape {tuple(logits.shape)}")
    if t.size and (t.min() < -n or t.max() >= n):
        raise TargetError(f"target class out of range: got {t.tolist()}, the output has {n} classes")
    return xp.asarray(t % n)


def one_seed(xp, logits, target, mode: str):
    """(seed, target as reported) for one target. ``mode``: ``"logit"`` seeds with the target logit's
    value (LXT's convention), ``"one"`` with 1 (a gradient)."""
    shape = tuple(logits.shape)
    if isinstance(target, Contrastive):
        return _contrastive_seed(xp, logits, target, mode)
    if target is not None and hasattr(target, "shape") and tuple(target.shape) == shape and (
            len(shape) > 1 or np.asarray(to_numpy(target)).dtype.kind == "f"):
        seed = xp.asarray(target).astype(logits.dtype)
        if not bool(xp.isfinite(seed).all()):
            raise TargetError("the target (initial relevance) array contains NaN or Inf")
        return seed, seed
    if isinstance(target, str):
        raise TargetError(f"target {target!r}: named targets ('all-classes', 'every-position') go in targets=[...]")
    if logits.ndim < 2:
        raise TargetError(f"cannot pick a class from an output of shape {shape}; pass an initial relevance array "
                          "of that shape as target")
    if logits.ndim == 3 and logits.shape[1] == 0:
        raise TargetError(f"the output has no position to explain (shape {shape}): the sequence is empty")
    classes = classes_of(xp, logits, target)
    rows = _rows(logits)
    idx = xp.arange(rows.shape[0])
    picked = xp.zeros(rows.shape, dtype=logits.dtype)
    picked[idx, classes] = rows[idx, classes] if mode == "logit" else 1
    return _place(xp, logits, picked), classes


def _contrastive_seed(xp, logits, spec: Contrastive, mode: str):
    classes = classes_of(xp, logits, spec.target)
    rows = _rows(logits)
    n = rows.shape[-1]
    if n < 2:
        raise TargetError("a contrastive target needs at least two classes")
    weights = xp.full(rows.shape, -1.0 / (n - 1), dtype=logits.dtype)
    weights[xp.arange(rows.shape[0]), classes] = 1
    return _place(xp, logits, weights * rows if mode == "logit" else weights), classes


def expand(xp, logits, targets, mode: str = "logit") -> list:
    """The list of single targets that ``targets`` names (named forms expanded)."""
    if isinstance(targets, (str, Contrastive)) or not hasattr(targets, "__iter__"):
        targets = [targets]
    out = []
    for t in targets:
        if isinstance(t, str) and t == "all-classes":
            if logits.ndim < 2:
                raise TargetError("'all-classes' needs an output with a class axis")
            out += list(range(_rows(logits).shape[-1]))
        elif isinstance(t, str) and t == "every-position":
            out += _every_position(xp, logits, mode)
        elif isinstance(t, str):
            raise TargetError(f"unknown named target {t!r}; use 'all-classes', 'every-position', a class, a seed "
                              "array or reflrp.contrastive(...)")
        else:
            out.append(t)
    if not out:
        raise TargetError("targets= is empty")
    return out


def _every_position(xp, logits, mode: str) -> list:
    """For a language model (batch, seq, vocab): one seed per position, each at its argmax token."""
    if logits.ndim != 3:
        raise TargetError(f"'every-position' needs language-model logits (batch, seq, vocab), got shape "
                          f"{tuple(logits.shape)}")
    seeds = []
    for pos in range(logits.shape[1]):
        rows = logits[:, pos]
        cls = xp.argmax(rows, axis=-1)
        seed = xp.zeros(logits.shape, dtype=logits.dtype)
        idx = xp.arange(rows.shape[0])
        seed[idx, pos, cls] = rows[idx, cls] if mode == "logit" else 1
        seeds.append(seed)
    return seeds


def stacked_seeds(xp, logits, targets, mode: str):
    """(seeds with a leading target axis, targets as reported) for a list of targets."""
    pairs = [one_seed(xp, logits, t, mode) for t in targets]
    return xp.stack([s for s, _ in pairs]), [r for _, r in pairs]
