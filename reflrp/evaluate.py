"""``reflrp.evaluate``: is an attribution faithful? Perturbation curves, their area, ground truth.

For each sample and method, the input units are removed in the order of their relevance: most relevant
first (MoRF) and least relevant first (LeRF); after removing ``round(f * n)`` of the ``n`` units, for
``f = 0, 1/steps, ..., 1``, the target's logit (or probability) is recorded. A faithful attribution makes
the MoRF curve fall fast and the LeRF curve stay high; the area between them (ABC, as in the AttnLRP
paper, Achtibat et al. 2024, after Bluecher et al. 2024)

    ABC = integral_0^1 (LeRF(f) - MoRF(f)) df        (trapezoid rule on the ``steps + 1`` points)

is larger for a more faithful one. Removing a unit replaces its elements of the attributed tensor by a
baseline (``mode``): ``"zero"``, ``"token:ID"`` (that token's embedding; the rest of the graph still sees
the original ids), ``"blur"`` (images) or ``"value:V"``. Ties are broken by one seeded random order
shared by every method. Per-sample ABCs give a mean with a seeded bootstrap 95 % interval. Where the
dataset holds ground truth (a boolean mask of decisive units, ``decisive``), precision@k is the share of
the ``k`` most relevant units that are decisive, ``k`` being the number of decisive units of the sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .attribute import (MEASURES, METHODS, Subject, attribute, batch_size_of, intervened, make_subject, run_at,
                        value_of)
from .baselines import baseline_value, check_baseline, check_seed
from .errors import FeedError, ReflrpError, TargetError
from .memory import one_job
from .perturbation import bootstrap_ci, curves, precision_at_k

TARGETS = ("auto", "labels", "predicted")
METHOD_OPTIONS = ("steps", "baseline", "samples", "noise", "seed", "epsilon")


@dataclass
class MethodResult:
    """One method's numbers: mean ABC with its 95 % interval, the mean curves, per-sample values."""

    method: str
    abc: float
    ci: tuple
    morf: np.ndarray
    lerf: np.ndarray
    per_sample: np.ndarray
    scores: np.ndarray                      # unit scores of every sample (for the report's heatmaps)
    morf_samples: np.ndarray | None = None  # (samples, steps + 1)
    lerf_samples: np.ndarray | None = None
    precision_at_k: float | None = None
    precision_ci: tuple | None = None
    per_sample_precision: np.ndarray | None = None
    completeness: float | None = None       # integrated gradients: mean |sum(attr) - (f(x) - f(x0))|
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Evaluation:
    """What :func:`evaluate` returns; :meth:`to_json` gives the report's JSON."""

    model: str
    wrt: str
    units: str
    grid: tuple
    samples: int
    steps: int
    fractions: np.ndarray
    mode: str
    measure: str
    target: str
    classes: np.ndarray
    clean: np.ndarray
    allowed: np.ndarray
    methods: dict
    feeds: dict
    ground_truth: str | None = None
    truth: np.ndarray | None = None
    ignored: tuple = ()
    seed: int = 0
    ids: str | None = None                  # the token-id input, for a model fed ids

    @property
    def unit_plural(self) -> str:
        return "patches" if self.units == "patch" else self.units + "s"

    def to_json(self, per_sample: bool = True) -> dict:
        def fl(a):  # arrays to 7 significant digits (the JSON stays small; the scalars keep every digit)
            return [float(f"{v:.7g}") for v in np.asarray(a, dtype=np.float64).ravel()]
        out = {"model": self.model, "wrt": self.wrt, "units": self.units, "samples": self.samples,
               "steps": self.steps, "fractions": fl(self.fractions), "mode": self.mode, "measure": self.measure,
               "target": self.target, "clean_mean": float(self.clean.mean()), "ground_truth": self.ground_truth,
               "ignored_arrays": list(self.ignored), "seed": self.seed, "methods": {}}
        for name, r in self.methods.items():
            m = {"abc": r.abc, "ci": list(r.ci), "morf": fl(r.morf), "lerf": fl(r.lerf),
                 "settings": _jsonable(r.settings), "seconds": round(r.seconds, 3)}
            if r.precision_at_k is not None:
                m.update(precision_at_k=r.precision_at_k, precision_ci=list(r.precision_ci))
            if r.completeness is not None:
                m["completeness_error"] = r.completeness
            if per_sample:
                m["abc_per_sample"] = fl(r.per_sample)
            out["methods"][name] = m
        return out

    def table(self) -> str:
        """The methods table as text (ABC with CI, precision@k)."""
        rows = [("method", "ABC", "95% CI", "precision@k" if self.ground_truth else "")]
        for name, r in sorted(self.methods.items(), key=lambda kv: -kv[1].abc):
            p = f"{r.precision_at_k:.3f} [{r.precision_ci[0]:.3f}, {r.precision_ci[1]:.3f}]" \
                if r.precision_at_k is not None else ""
            rows.append((name, f"{r.abc:.4f}", f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]", p))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _jsonable(settings: dict) -> dict:
    return {k: (v if not isinstance(v, np.ndarray) else "array") for k, v in settings.items()}


def load_dataset(path) -> dict:
    """An ``.npz`` file, or a folder of them (concatenated along the batch axis in name order)."""
    from .golden import read_npz
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npz"))
        if not files:
            raise ReflrpError(f"dataset folder {str(p)!r} holds no .npz file")
        parts = [read_npz(f, "dataset file") for f in files]
        keys = set(parts[0])
        for f, part in zip(files, parts):
            if set(part) != keys:
                raise ReflrpError(f"dataset file {f.name} holds {sorted(part)}, {files[0].name} {sorted(keys)}")
        try:
            return {k: np.concatenate([part[k] for part in parts]) for k in sorted(keys)}
        except ValueError as exc:
            raise ReflrpError(f"the dataset files in {str(p)!r} do not stack along the batch axis: {exc}") from None
    if not p.exists():
        raise ReflrpError(f"dataset {str(p)!r} does not exist")
    return read_npz(p, "dataset file")


def check_methods(methods) -> tuple:
    from .options import did_you_mean
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m]
    try:
        methods = tuple(methods)
    except TypeError:
        raise ReflrpError(f"methods={methods!r} must be a list of method names") from None
    if not methods:
        raise ReflrpError(f"methods= is empty; choose from {list(METHODS)}")
    for m in methods:
        if not isinstance(m, str) or m not in METHODS:
            raise ReflrpError(f"unknown method {m!r}; choose from {list(METHODS)}"
                              + (did_you_mean(m, METHODS) if isinstance(m, str) else ""))
    if len(set(methods)) != len(methods):
        raise ReflrpError(f"methods= names a method twice: {list(methods)}")
    return methods


def check_choice(value, choices, what: str):
    from .options import did_you_mean
    if not isinstance(value, str) or value not in choices:
        raise ReflrpError(f"{what}={value!r}; choose one of {list(choices)}"
                          + (did_you_mean(value, choices) if isinstance(value, str) else ""))
    return value


def check_options(options, methods) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ReflrpError("method_options= must map a method name to its keyword arguments")
    for m, kw in options.items():
        if m not in methods:
            raise ReflrpError(f"method_options names {m!r}, which is not among methods={list(methods)}")
        if not isinstance(kw, Mapping) or any(k not in METHOD_OPTIONS for k in kw):
            raise ReflrpError(f"method_options[{m!r}] must be a mapping with keys among {list(METHOD_OPTIONS)}, "
                              f"got {kw!r}")
    return {m: dict(kw) for m, kw in options.items()}


def split_dataset(model, dataset: Mapping, labels: str, truth: str) -> tuple[dict, dict, tuple]:
    """(model feeds, known extras: labels and ground truth, names of the other arrays, which are ignored)."""
    if not isinstance(dataset, Mapping):
        raise ReflrpError(f"dataset must be a mapping of array name to array (or a path), not "
                          f"{type(dataset).__name__}")
    missing = [v.describe() for v in model.graph.inputs if v.name not in dataset]
    if missing:
        raise FeedError(f"the dataset lacks model input(s) {missing}; it holds {sorted(dataset)}")
    feeds = {k: np.asarray(v) for k, v in dataset.items() if k in model.input_names}
    extras = {k: np.asarray(dataset[k]) for k in (labels, truth) if k in dataset and k not in feeds}
    ignored = tuple(sorted(k for k in dataset if k not in feeds and k not in extras))
    batch_size_of(feeds)
    return feeds, extras, ignored


@one_job
def evaluate(model, dataset, methods=("attnlrp", "random"), steps: int = 10, mode: str = "zero",
             measure: str = "logit", target: str = "auto", samples: int | None = None, ignore_ids=None,
             labels: str = "labels", ground_truth: str = "decisive", wrt=None, output=None, patch=None,
             dtype="float64", batch_size=None, method_options=None, scores=None, seed: int = 0,
             bootstrap: int = 2000, progress: bool = True, interventions=None) -> Evaluation:
    """MoRF / LeRF perturbation curves, ABC with bootstrap 95 % CIs and precision@k for each method.

    Parameters
    ----------
    model : a :class:`reflrp.Model` or a path.
    dataset : a mapping (or an ``.npz`` path / folder) holding the model inputs (batch axis first) and
        optionally ``labels`` (a class per sample) and ``ground_truth`` (a boolean mask over the units).
        Other arrays are ignored (listed in ``Evaluation.ignored``).
    methods : names from :data:`reflrp.attribute.METHODS`.
    steps : the curves' points beyond the start (fractions ``0, 1/steps, ..., 1`` of the units removed).
    mode : the removal baseline (``"zero"``, ``"token:ID"``, ``"blur"``, ``"value:V"``); also the default
        baseline of integrated gradients and occlusion.
    measure : ``"logit"`` or ``"probability"`` of the target class.
    target : ``"auto"`` (the labels when the dataset has them, else the prediction), ``"labels"`` or
        ``"predicted"``.
    samples : use the first ``samples`` rows (None: all).
    ignore_ids : token ids that are never units (e.g. ``[PAD]``, ``[CLS]``); rows of an
        ``attention_mask`` input that are 0 are never units either.
    method_options : method -> keyword arguments of :func:`reflrp.attribute` (steps, baseline, samples,
        noise, seed, epsilon).
    scores : name -> unit scores ``(samples,) + units`` of an attribution computed elsewhere, evaluated
        beside ``methods`` (``methods=()`` evaluates only these).
    seed : seeds the tie-breaking order, the bootstrap, and (unless overridden) random and SmoothGrad.
    bootstrap : bootstrap resamples for the intervals.
    interventions : ``{tensor: spec}`` as for ``Model.run``: the curves and every method run on the
        intervened model (e.g. with chosen neurons zeroed).
    """
    from .model import Model, load
    if isinstance(dataset, (str, Path)):
        dataset = load_dataset(dataset)
    if not isinstance(model, Model):
        model = load(model)
    methods = check_methods(methods) if scores is None or methods else ()
    steps = _positive(steps, "steps")
    mode = check_baseline(mode)
    if not isinstance(mode, str):
        raise ReflrpError("mode= must be a string ('zero', 'token:ID', 'blur', 'value:V')")
    measure = check_choice(measure, MEASURES, "measure")
    target = check_choice(target, TARGETS, "target")
    seed, bootstrap = check_seed(seed), _positive(bootstrap, "bootstrap")
    options = check_options(method_options, methods)
    feeds, extras, ignored = split_dataset(model, dataset, labels, ground_truth)
    n = batch_size_of(feeds)
    if samples is not None:
        n = min(n, _positive(samples, "samples"))
        feeds = {k: v[:n] for k, v in feeds.items()}
        extras = {k: v[:n] for k, v in extras.items()}
    if n == 0:
        raise FeedError("the dataset has no samples")
    subject = make_subject(intervened(model, interventions, feeds, dtype), wrt, output, patch, dtype, batch_size)
    x = value_of(subject, feeds)
    units = subject.units(x)
    classes, target_used = _classes(subject, feeds, extras.get(labels), target, labels)
    allowed = _allowed(subject, feeds, units, ignore_ids)
    truth = _truth(extras.get(ground_truth), units, n, ground_truth)
    fractions = np.arange(steps + 1) / steps
    x0 = baseline_value(subject, feeds, x, mode)
    clean = run_at(subject, feeds, x, classes, measure)
    ties = np.random.default_rng(seed).random((n,) + units.grid)
    given = check_scores(scores, methods, (n,) + units.grid)
    results = {}
    bar = _bar(progress, n * (len(methods) + len(given)))
    try:
        for name in methods + tuple(given):
            kw = {"seed": seed, **({"baseline": mode} if name in ("integrated-gradients", "occlusion") else {}),
                  **options.get(name, {})}
            results[name] = _evaluate_method(subject, feeds, x, x0, units, classes, name, kw, fractions, measure,
                                             allowed, ties, truth, seed, bootstrap, bar, given.get(name))
    finally:
        if bar is not None:
            bar.close()
    return Evaluation(model.source, subject.wrt, units.kind, units.grid, n, steps, fractions, mode, measure,
                      target_used, classes, clean, allowed, results, feeds,
                      ground_truth if truth is not None else None, truth, ignored, seed, subject.ids)


def check_scores(scores, methods, shape) -> dict:
    """Precomputed unit scores by name, each of ``shape`` (extra rows beyond the samples are cut)."""
    if scores is None:
        return {}
    if not isinstance(scores, Mapping) or not scores:
        raise ReflrpError("scores= must map a name to an array of unit scores")
    out = {}
    for name, a in scores.items():
        a = np.asarray(a, dtype=np.float64)
        if not isinstance(name, str) or name in methods:
            raise ReflrpError(f"scores= name {name!r} must be a string and not one of methods=")
        if a.shape[1:] != shape[1:] or len(a) < shape[0] or not np.isfinite(a[:shape[0]]).all():
            raise ReflrpError(f"scores[{name!r}] has shape {a.shape}; expected finite unit scores of shape {shape}")
        out[name] = a[:shape[0]]
    return out


def _positive(value, what: str) -> int:
    from .attribute import check_positive_int
    return check_positive_int(value, what)


def _bar(progress: bool, total: int):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="sample", leave=False)


def _classes(subject: Subject, feeds, labels, target: str, labels_name: str):
    """The class per sample and how it was chosen (``labels`` or ``predicted``)."""
    from .attribute import classes_for
    if target == "labels" and labels is None:
        raise TargetError(f"target='labels' but the dataset has no {labels_name!r} array")
    if labels is None or target == "predicted":
        return classes_for(subject, feeds, None)[0], "predicted"
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TargetError(f"dataset array {labels_name!r} must hold one integer class per sample, got "
                          f"{labels.dtype} {labels.shape}")
    return classes_for(subject, feeds, labels)[0], "labels"


def _allowed(subject: Subject, feeds, units, ignore_ids) -> np.ndarray:
    """Which units may be removed: all but ignored token ids and masked-out positions."""
    n = batch_size_of(feeds)
    allowed = np.ones((n,) + units.grid, dtype=bool)
    if ignore_ids is not None:
        if units.kind != "token" or subject.ids is None:
            raise ReflrpError("ignore_ids= is for models fed token ids")
        ids = list(ignore_ids) if not isinstance(ignore_ids, (int, np.integer)) else [ignore_ids]
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in ids):
            raise ReflrpError(f"ignore_ids={ignore_ids!r} must be token ids (integers >= 0)")
        allowed &= ~np.isin(np.asarray(feeds[subject.ids]), ids)
    for name, v in feeds.items():
        if units.kind == "token" and "mask" in name and np.shape(v) == allowed.shape:
            allowed &= np.asarray(v) != 0
    empty = np.flatnonzero(~allowed.any(axis=tuple(range(1, allowed.ndim))))
    if empty.size:
        raise ReflrpError(f"samples {empty[:10].tolist()}{' ...' if empty.size > 10 else ''} have no unit left to "
                          "remove (every token ignored or masked): leave them out of the dataset")
    return allowed


def _truth(mask, units, n: int, name: str):
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,) + units.grid:
        raise ReflrpError(f"dataset array {name!r} (ground truth) must be a boolean mask of shape "
                          f"{(n,) + units.grid} (one value per {units.kind}), got {mask.dtype} {mask.shape}")
    return mask


def _chunk_seed(seed: int, lo: int) -> int:
    return int(np.random.SeedSequence([seed, lo]).generate_state(1)[0])


def _evaluate_method(subject, feeds, x, x0, units, classes, name, kw, fractions, measure, allowed, ties, truth,
                     seed, bootstrap, bar, given=None) -> MethodResult:
    """Attribute by ``name`` (or take the ``given`` scores) and measure its curves, by chunks of samples."""
    start = time.perf_counter()
    n = len(x)
    chunk = max(1, subject.rows // max(2 * len(fractions), 16))
    scores, morf, lerf, errors = [], [], [], []
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        part = {k: v[lo:hi] for k, v in feeds.items()}
        info = {}
        if given is None:
            att = attribute(subject, part, name, target=classes[lo:hi], **{**kw, "seed": _chunk_seed(kw["seed"], lo)})
            chunk_scores, info = att.scores, att.info
            if att.completeness is not None:
                errors.append(np.abs(att.completeness))
        else:
            chunk_scores = given[lo:hi]
        scores.append(chunk_scores)
        m, le = curves(subject, part, x[lo:hi], x0[lo:hi], chunk_scores, allowed[lo:hi], ties[lo:hi],
                       classes[lo:hi], fractions, measure, units)
        morf.append(m)
        lerf.append(le)
        if bar is not None:
            bar.set_description(name)
            bar.update(hi - lo)
    scores, morf, lerf = np.concatenate(scores), np.concatenate(morf), np.concatenate(lerf)
    per_sample = np.trapezoid(lerf - morf, fractions, axis=1)
    result = MethodResult(name, float(per_sample.mean()), bootstrap_ci(per_sample, seed, bootstrap),
                          morf.mean(0), lerf.mean(0), per_sample, scores, morf, lerf,
                          settings={**info, **({"seed": kw["seed"]} if "seed" in info else {})})
    if truth is not None:
        p = precision_at_k(scores, truth, allowed, ties)
        valid = p[np.isfinite(p)]
        result.per_sample_precision = p
        if valid.size:
            result.precision_at_k = float(valid.mean())
            result.precision_ci = bootstrap_ci(valid, seed, bootstrap)
    if errors:
        result.completeness = float(np.concatenate(errors).mean())
    result.seconds = time.perf_counter() - start
    return result
