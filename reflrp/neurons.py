"""Latent features: which units of a tensor matter for a prediction, and what they respond to.

A *unit* is one index on a tensor's feature axis (the last by default): an MLP neuron, a channel of the
residual stream, a head's output feature. Its relevance for a target is the relevance of that tensor
summed over every other axis (batch, positions) — reflrp keeps every tensor's relevance, so this is a
by-product of ``explain``.

- :func:`neurons`: the top-k units of a tensor in one attribution (per target with ``targets=``);
- :func:`neuron_stats`: over a data set, each unit's mean relevance, mean |relevance| and how often it
  is in the top k;
- :func:`reference_samples`: per unit, the data-set inputs and positions with the highest relevance
  (RelMax) or activation (ActMax), and :func:`reference_html` to look at them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import ReflrpError


@dataclass
class TopUnits:
    """``units[t]``: the k most relevant unit indices for target t (descending), ``relevance[t]`` theirs;
    ``per_unit[t]``: every unit's relevance."""

    tensor: str
    units: np.ndarray
    relevance: np.ndarray
    per_unit: np.ndarray


def unit_relevance(att, tensor: str, axis: int = -1) -> np.ndarray:
    """(K, units) for ``att.many``, else (1, units): the tensor's relevance summed over all other axes."""
    if tensor not in att.relevance:
        kept = sorted(att.relevance)[:8]
        raise ReflrpError(f"no relevance was kept for tensor {tensor!r} (explain with keep=None or keep=[{tensor!r}]); "
                          f"kept e.g. {kept}")
    r = np.asarray(att.relevance[tensor], dtype=np.float64)
    r = r if att.many else r[None]
    axis = axis % (r.ndim - 1) + 1
    return np.moveaxis(r, axis, -1).reshape(r.shape[0], -1, r.shape[axis]).sum(axis=1)


def neurons(att, tensor: str, k: int = 10, axis: int = -1) -> TopUnits:
    """The ``k`` units of ``tensor`` with the highest relevance in attribution ``att``."""
    per_unit = unit_relevance(att, tensor, axis)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ReflrpError(f"k must be a positive integer, not {k!r}")
    k = min(k, per_unit.shape[1])
    order = np.argsort(-per_unit, axis=1, kind="stable")[:, :k]
    return TopUnits(tensor, order, np.take_along_axis(per_unit, order, axis=1), per_unit)


def samples(dataset) -> list[dict]:
    """A data set as a list of feeds: a list of feed dicts, or one dict of arrays with a batch axis."""
    if isinstance(dataset, Mapping):
        n = {len(v) for v in dataset.values()}
        if len(n) != 1:
            raise ReflrpError(f"dataset arrays have different lengths {sorted(n)}")
        return [{k: np.asarray(v)[i:i + 1] for k, v in dataset.items()} for i in range(n.pop())]
    out = list(dataset)
    if not all(isinstance(s, Mapping) for s in out):
        raise ReflrpError("dataset must be a list of feed dicts or a dict of arrays with a batch axis")
    return out


@dataclass
class UnitStats:
    """Per unit over a data set: ``mean`` relevance, ``mean_abs`` |relevance|, ``top_k_rate``: the
    fraction of samples in which the unit is among the k most relevant."""

    tensor: str
    mean: np.ndarray
    mean_abs: np.ndarray
    top_k_rate: np.ndarray
    k: int
    n: int

    def top(self, by: str = "mean", n: int = 10) -> np.ndarray:
        values = {"mean": self.mean, "mean_abs": self.mean_abs, "top_k_rate": self.top_k_rate}[by]
        return np.argsort(-values, kind="stable")[:n]


def neuron_stats(model, dataset, tensor: str, k: int = 10, target=None, preset: str = "attnlrp", axis: int = -1,
                 **explain_options) -> UnitStats:
    """Explain every sample (keeping only ``tensor``'s relevance) and aggregate its units."""
    from .explain import explain
    rows = samples(dataset)
    totals, absolute, hits = None, None, None
    for feeds in rows:
        att = explain(model, feeds, target=target, preset=preset, keep=[tensor], **explain_options)
        top = neurons(att, tensor, k, axis)
        r = top.per_unit[0]
        if totals is None:
            totals, absolute, hits = np.zeros_like(r), np.zeros_like(r), np.zeros_like(r)
        totals += r
        absolute += np.abs(r)
        hits[top.units[0]] += 1
    if totals is None:
        raise ReflrpError("the dataset is empty")
    n = len(rows)
    return UnitStats(tensor, totals / n, absolute / n, hits / n, k, n)


@dataclass
class Reference:
    """One reference sample of a unit: the sample index, the position of the peak, the peak value, and
    the unit's value at every position of that sample (relevance or activation)."""

    sample: int
    position: int
    value: float
    profile: np.ndarray = field(repr=False)


def reference_samples(model, dataset, tensor: str, units: Sequence[int], n: int = 5, by: str = "relevance",
                      target=None, preset: str = "attnlrp", axis: int = -1, **explain_options) -> dict:
    """Per unit, the ``n`` (sample, position) pairs of the data set with the highest relevance of the unit
    (``by="relevance"``: RelMax) or activation (``by="activation"``: ActMax). Tensors of shape
    (batch=1, positions, units) give positions; others are flattened to positions."""
    from .explain import explain
    if by not in ("relevance", "activation"):
        raise ReflrpError(f"by={by!r}: choose 'relevance' (RelMax) or 'activation' (ActMax)")
    rows = samples(dataset)
    units = [int(u) for u in units]
    found: dict[int, list[Reference]] = {u: [] for u in units}
    for i, feeds in enumerate(rows):
        if by == "relevance":
            values = explain(model, feeds, target=target, preset=preset, keep=[tensor], **explain_options).relevance[tensor]
        else:
            values = model.run(feeds, intermediates=[tensor])[tensor]
        values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
        per_position = values.reshape(-1, values.shape[-1])
        for u in units:
            if not -per_position.shape[1] <= u < per_position.shape[1]:
                raise ReflrpError(f"unit {u} is out of range: {tensor!r} has {per_position.shape[1]} units")
            profile = per_position[:, u]
            p = int(np.argmax(profile))
            found[u].append(Reference(i, p, float(profile[p]), profile))
    return {u: sorted(refs, key=lambda r: -r.value)[:n] for u, refs in found.items()}


def reference_html(references: Mapping[int, list], tokens_of, tensor: str, by: str = "relevance",
                   title: str = "reflrp: reference samples") -> str:
    """An HTML page: per unit, its reference samples as token heatmaps of the unit's value per position
    (``tokens_of(sample_index) -> list of strings``), each with a numeric colour scale."""
    from .viz import _rgb
    parts = [f"<h2>{html.escape(title)}</h2><p>tensor <code>{html.escape(tensor)}</code>, ranked by {by} "
             f"({'RelMax' if by == 'relevance' else 'ActMax'})</p>"]
    for unit, refs in references.items():
        parts.append(f"<h3>unit {unit}</h3>")
        for ref in refs:
            toks = list(tokens_of(ref.sample))
            prof = ref.profile[:len(toks)] if len(ref.profile) >= len(toks) else ref.profile
            m = float(np.abs(prof).max()) or 1.0
            spans = []
            for j, tok in enumerate(toks[:len(prof)]):
                r, g, b = _rgb(prof[j] / m)
                bold = "font-weight:bold;outline:1px solid #000;" if j == ref.position else ""
                spans.append(f'<span class="tok" style="background:rgb({r},{g},{b});{bold}" '
                             f'title="{prof[j]:+.4g}">{html.escape(str(tok))}</span>')
            parts.append(f'<div class="ref">sample {ref.sample}, position {ref.position}, peak {ref.value:+.4g} '
                         f'<span class="scale">scale ±{m:.3g}</span><br>{"".join(spans)}</div>')
    style = (".tok{padding:2px 4px;margin:1px;border-radius:3px;display:inline-block;font-size:17px}"
             ".ref{margin:0.6em 0} .scale{color:#666;font-size:12px;margin-left:1em}"
             "body{font-family:sans-serif;margin:2em;max-width:75em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}"
            "<p>blue: negative, white: 0, red: positive (hover a token for its value)</p></body></html>")


def knockout_drop(model, feeds, tensor: str, units, answer_position: int, answer_token: int,
                  interventions_extra: Mapping | None = None, axis: int = -1) -> float:
    """How much the probability of ``answer_token`` at ``answer_position`` falls when ``units`` of
    ``tensor`` are zeroed (a knowledge-neuron test): p(before) - p(after)."""
    def probability(interventions):
        logits = model.run(feeds, interventions=interventions)
        out = np.asarray(next(iter(logits.values())), dtype=np.float64)[0, answer_position]
        e = np.exp(out - out.max())
        return float(e[answer_token] / e.sum())
    base = dict(interventions_extra or {})
    before = probability(base or None)
    after = probability({**base, tensor: {"units": list(map(int, units)), "zero": True, "axis": axis}})
    return before - after
