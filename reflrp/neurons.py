"""Latent features: which units of a tensor matter for a prediction, and what they respond to.

A *unit* is one index on a tensor's feature axis (the last by default): an MLP neuron, a channel of the
residual stream, a head's output feature. Its relevance for a target is the relevance of that tensor
summed over every other axis (batch, positions) — reflrp keeps every tensor's relevance, so this is a
by-product of ``explain``.

- :func:`neurons`: the top-k units of a tensor in one attribution (per target with ``targets=``);
- :func:`neuron_stats`: over a data set, each unit's mean relevance, mean |relevance| and how often it
  is in the top k;
- :func:`reference_samples`: per unit, the data-set inputs and positions with the highest relevance
  (RelMax) or activation (ActMax), and :func:`reference_html` to look at them;
- :func:`scan`: both in one pass over the data set (what ``reflrp neurons`` runs), and
  :func:`neurons_html` for its page.
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
    fraction of samples in which the unit is among the k most relevant; ``mean_peak``: the mean over
    samples of the unit's largest activation over positions (None when activations were not read)."""

    tensor: str
    mean: np.ndarray
    mean_abs: np.ndarray
    top_k_rate: np.ndarray
    k: int
    n: int
    mean_peak: np.ndarray | None = None

    def top(self, by: str = "mean", n: int = 10) -> np.ndarray:
        """The ``n`` units with the highest ``by``: ``mean``, ``mean_abs``, ``top_k_rate`` or ``mean_peak``."""
        values = {"mean": self.mean, "mean_abs": self.mean_abs, "top_k_rate": self.top_k_rate,
                  "mean_peak": self.mean_peak}
        if by not in values or values[by] is None:
            raise ReflrpError(f"by={by!r}: choose one of {[k for k, v in values.items() if v is not None]}")
        return np.argsort(-values[by], kind="stable")[:n]


@dataclass
class Reference:
    """One reference sample of a unit: the sample index, the position of the peak, the peak value, and
    the unit's value at every position of that sample (relevance or activation)."""

    sample: int
    position: int
    value: float
    profile: np.ndarray = field(repr=False)


@dataclass
class Scan:
    """A tensor over a data set, one attribution per sample: ``relevance[i]`` and ``activation[i]`` are
    sample i's ``(positions, units)`` arrays (the unit axis last, every other axis flattened into
    positions); ``target[i]`` the class explained."""

    tensor: str
    relevance: list
    activation: list
    target: list

    @property
    def units(self) -> int:
        return self.relevance[0].shape[1]

    def stats(self, k: int = 10) -> UnitStats:
        """Each unit's mean relevance, mean |relevance|, top-k rate and mean peak activation."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ReflrpError(f"k must be a positive integer, not {k!r}")
        per_sample = np.stack([r.sum(axis=0) for r in self.relevance])  # (samples, units)
        hits = np.zeros(self.units)
        for row in per_sample:
            hits[np.argsort(-row, kind="stable")[:min(k, self.units)]] += 1
        n = len(per_sample)
        peaks = np.stack([a.max(axis=0) for a in self.activation]).mean(axis=0) if self.activation else None
        return UnitStats(self.tensor, per_sample.mean(0), np.abs(per_sample).mean(0), hits / n, int(k), n, peaks)

    def references(self, units: Sequence[int], n: int = 5, by: str = "relevance") -> dict:
        """Per unit, the ``n`` samples whose largest value of the unit (over positions) is highest:
        ``by="relevance"`` (RelMax) or ``"activation"`` (ActMax)."""
        if by not in ("relevance", "activation"):
            raise ReflrpError(f"by={by!r}: choose 'relevance' (RelMax) or 'activation' (ActMax)")
        arrays = self.relevance if by == "relevance" else self.activation
        if not arrays:
            raise ReflrpError("this scan read no activations (scan(..., activations=True) for ActMax)")
        out = {}
        for u in units:
            u = int(u)
            if not -self.units <= u < self.units:
                raise ReflrpError(f"unit {u} is out of range: {self.tensor!r} has {self.units} units")
            found = []
            for i, a in enumerate(arrays):
                p = int(np.argmax(a[:, u]))
                found.append(Reference(i, p, float(a[p, u]), a[:, u]))
            out[u] = sorted(found, key=lambda r: -r.value)[:n]
        return out


def _per_position(values, axis: int) -> np.ndarray:
    """A (batch=1, ...) tensor as (positions, units): the unit axis last, the rest flattened."""
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    return v.reshape(-1, v.shape[-1])


def scan(model, dataset, tensor: str, target=None, preset: str = "attnlrp", axis: int = -1,
         activations: bool = True, interventions=None, **explain_options) -> Scan:
    """Explain every sample of ``dataset`` (keeping only ``tensor``'s relevance) and read the tensor's
    activation in the same dtype. ``target``: None (each sample's argmax), one class for all, or one per
    sample."""
    from .explain import explain
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    rows = samples(dataset)
    if not rows:
        raise ReflrpError("the dataset is empty")
    known = {o for n in model.graph.nodes for o in n.outputs if o} | set(model.graph.input_names)
    if tensor not in known:
        from .options import did_you_mean
        raise ReflrpError(f"the model has no tensor {tensor!r}{did_you_mean(tensor, known)}")
    per_sample = _targets(target, len(rows))
    dtype = explain_options.get("dtype", "float64")
    relevance, activation, explained = [], [], []
    for feeds, t in zip(rows, per_sample):
        att = explain(model, feeds, target=t, preset=preset, keep=[tensor], interventions=interventions,
                      **explain_options)
        if tensor not in att.relevance:
            raise ReflrpError(f"tensor {tensor!r} receives no relevance from the explained output (it is not a float "
                              "tensor on a path to it)")
        relevance.append(_per_position(att.relevance[tensor], axis))
        explained.append(np.asarray(att.target).tolist())
        if activations:
            value = model.run(feeds, dtype=dtype, intermediates=[tensor], interventions=interventions)[tensor]
            activation.append(_per_position(value, axis))
    return Scan(tensor, relevance, activation, explained)


def _targets(target, n: int) -> list:
    if target is None or np.ndim(target) == 0:
        return [target] * n
    t = list(target)
    if len(t) != n:
        raise ReflrpError(f"target has {len(t)} entries; give one class for all samples or one per sample ({n})")
    return t


def neuron_stats(model, dataset, tensor: str, k: int = 10, target=None, preset: str = "attnlrp", axis: int = -1,
                 **explain_options) -> UnitStats:
    """Explain every sample (keeping only ``tensor``'s relevance) and aggregate its units."""
    return scan(model, dataset, tensor, target, preset, axis, **explain_options).stats(k)


def reference_samples(model, dataset, tensor: str, units: Sequence[int], n: int = 5, by: str = "relevance",
                      target=None, preset: str = "attnlrp", axis: int = -1, **explain_options) -> dict:
    """Per unit, the ``n`` samples of the data set with the highest relevance of the unit at some
    position (``by="relevance"``: RelMax) or activation (``by="activation"``: ActMax), with the position."""
    if by not in ("relevance", "activation"):
        raise ReflrpError(f"by={by!r}: choose 'relevance' (RelMax) or 'activation' (ActMax)")
    return scan(model, dataset, tensor, target, preset, axis, **explain_options).references(units, n, by)


STYLE = """body{font-family:sans-serif;margin:1.5em 2em;max-width:80em;color:#222}
.tok{padding:2px 4px;margin:1px;border-radius:3px;display:inline-block;font-size:15px;border:1px solid #ddd}
.peak{outline:2px solid #000;font-weight:bold} .unit{border-top:2px solid #888;margin-top:1.2em;padding-top:.4em}
.cols{display:flex;gap:2em} .col{flex:1;min-width:0} .col h4{margin:.3em 0} .ref{margin:.35em 0;line-height:1.9}
.meta{display:block;color:#555;font-size:12px;line-height:1.3} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right} th{background:#f4f4f4}
.scale{width:260px;margin:6px 0 22px 0} .scale .bar{height:12px;border:1px solid #999}
.scale .ticks{position:relative;height:14px;font-size:11px} .scale .ticks span{position:absolute;top:2px}
.scalelabel{font-size:11px;color:#555;margin-top:4px}"""


def _heatmap(tokens, ref: Reference, clean, label: str = "") -> str:
    """One reference sample as tokens coloured by the unit's value / its largest |value| in the sample."""
    from .viz import _rgb
    prof = ref.profile
    m = float(np.abs(prof).max()) or 1.0
    toks = list(tokens) if tokens is not None and len(tokens) == len(prof) else [f"@{j}" for j in range(len(prof))]
    spans = []
    for j, tok in enumerate(toks):
        r, g, b = _rgb(prof[j] / m)
        spans.append(f'<span class="tok{" peak" if j == ref.position else ""}" style="background:rgb({r},{g},{b})" '
                     f'title="{prof[j]:+.4g}">{html.escape(clean(str(tok)))}</span>')
    said = f" {html.escape(label)}," if label else ""
    return (f'<div class="ref"><span class="meta">#{ref.sample}{said} peak {ref.value:+.3g} at {ref.position} '
            f'(scale ±{m:.3g})</span>{"".join(spans)}</div>')


def neurons_html(scan_: Scan, stats: UnitStats, units: Sequence[int], tokens_of, n: int = 5,
                 title: str = "reflrp: neurons", subtitle: str = "", label_of=None) -> str:
    """The page of ``reflrp neurons``: the units' statistics, then per unit its RelMax and ActMax
    reference samples side by side as token heatmaps (``tokens_of(i)``: sample i's token strings, or
    None for positions; ``label_of(i)``: a note on sample i, e.g. its explained target). Each sample is
    coloured on its own scale (shown beside it), so the peak is red."""
    label_of = label_of or (lambda i: "")
    from .viz import clean_token, colour_scale
    rel = scan_.references(units, n, "relevance")
    act = scan_.references(units, n, "activation") if scan_.activation else {}
    head = ("<tr><th>unit</th><th>mean relevance</th><th>mean |relevance|</th><th>top-%d rate</th>"
            "<th>mean peak activation</th></tr>" % stats.k)
    body = "".join(f"<tr><td>{u}</td><td>{stats.mean[u]:+.4g}</td><td>{stats.mean_abs[u]:.4g}</td>"
                   f"<td>{stats.top_k_rate[u]:.2f}</td><td>"
                   f"{'' if stats.mean_peak is None else format(stats.mean_peak[u], '+.4g')}</td></tr>" for u in units)
    parts = [f"<h2>{html.escape(title)}</h2><p>{html.escape(subtitle)}</p>",
             f"<p>tensor <code>{html.escape(scan_.tensor)}</code>, {stats.n} samples. RelMax: the samples where the "
             "unit's relevance peaks highest; ActMax: where its activation does. Each sample has its own scale "
             "(largest |value| in it); the outlined token is the peak.</p>",
             colour_scale(1.0, label="value / largest |value| of the sample (hover a token for its value)"),
             f"<table>{head}{body}</table>"]
    for u in units:
        cols = [f'<div class="col"><h4>RelMax (relevance)</h4>'
                + "".join(_heatmap(tokens_of(r.sample), r, clean_token, label_of(r.sample)) for r in rel[int(u)])
                + "</div>"]
        if act:
            cols.append(f'<div class="col"><h4>ActMax (activation)</h4>'
                        + "".join(_heatmap(tokens_of(r.sample), r, clean_token, label_of(r.sample))
                                  for r in act[int(u)]) + "</div>")
        parts.append(f'<div class="unit"><h3>unit {int(u)}</h3><div class="cols">{"".join(cols)}</div></div>')
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def reference_html(references: Mapping[int, list], tokens_of, tensor: str, by: str = "relevance",
                   title: str = "reflrp: reference samples") -> str:
    """An HTML page: per unit, its reference samples as token heatmaps of the unit's value per position
    (``tokens_of(sample_index) -> list of strings``), each with its scale."""
    from .viz import clean_token
    parts = [f"<h2>{html.escape(title)}</h2><p>tensor <code>{html.escape(tensor)}</code>, ranked by {by} "
             f"({'RelMax' if by == 'relevance' else 'ActMax'})</p>"]
    for unit, refs in references.items():
        parts.append(f'<div class="unit"><h3>unit {unit}</h3>'
                     + "".join(_heatmap(tokens_of(r.sample), r, clean_token) for r in refs) + "</div>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}"
            "<p>blue: negative, white: 0, red: positive (hover a token for its value)</p></body></html>\n")


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
