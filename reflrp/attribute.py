"""``reflrp.attribute``: every attribution method called alike, relevance per input token or pixel.

Methods: the LRP presets (``attnlrp``, ``cp-lrp``, ``epsilon``), ``gradient``, ``grad-x-input``,
``integrated-gradients``, ``smoothgrad``, ``random``, ``rollout`` and ``occlusion`` (the last five in
:mod:`reflrp.baselines`). All of them run on reflrp's interpreter; forward passes of many variants (IG
steps, SmoothGrad samples, occluded inputs) go through one ``model.run`` per chunk of rows.

The attributed tensor (``wrt``) is the model's float input, or for a model fed token ids the output of
its embedding Gather. To run the model at a chosen value of that tensor (IG's path, SmoothGrad's noise,
a zeroed embedding), a *fed* variant of the graph takes the tensor as a graph input in place of the
node that computed it (:func:`fed_at`); the other inputs (the ids, a mask) are fed as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import FeedError, GraphError, ReflrpError, TargetError
from .memory import one_job

LRP_METHODS = ("attnlrp", "cp-lrp", "epsilon")
METHODS = LRP_METHODS + ("gradient", "grad-x-input", "integrated-gradients", "smoothgrad", "random", "rollout",
                         "occlusion")
MEASURES = ("logit", "probability")
ROWS = 1024  # rows per model.run / gradient call unless batch_size says otherwise


@dataclass
class Attributions:
    """What :func:`attribute` returns.

    Attributes
    ----------
    method : the method's name.
    scores : relevance per input unit, ``(batch,) + units.grid``: per token ``(batch, seq)``, per pixel
        ``(batch, H, W)`` (channels summed), per patch ``(batch, H/p, W/p)``.
    full : the full-resolution array at ``wrt``, ``(batch,) + wrt shape``.
    wrt : the attributed tensor.
    units : how ``full`` splits into units (:class:`Units`).
    target : the explained class per batch row.
    value : the target logit per row on the given feeds.
    completeness : integrated gradients only: ``sum(attr) - (f(x) - f(baseline))`` per row.
    info : the method's settings (steps, baseline, samples, noise, seed, ...).
    """

    method: str
    scores: np.ndarray
    full: np.ndarray
    wrt: str
    units: "Units"
    target: np.ndarray
    value: np.ndarray
    completeness: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Units:
    """How the attributed tensor (batch axis excluded, ``shape``) splits into the units a reader sees:
    ``token`` (one row of hidden features per position), ``pixel`` (all channels of one pixel of a
    ``(C, H, W)`` image), ``patch`` (``p x p`` pixels) or ``feature`` (every element on its own)."""

    kind: str
    shape: tuple
    patch: int = 1

    @property
    def grid(self) -> tuple:
        if self.kind == "token":
            return self.shape[:1]
        if self.kind in ("pixel", "patch"):
            return self.shape[1] // self.patch, self.shape[2] // self.patch
        return (math.prod(self.shape),)

    def _blocks(self, full: np.ndarray) -> np.ndarray:
        """``full`` as ``(batch,) + grid + (elements of one unit,)``."""
        b = full.shape[0]
        if self.kind == "token":
            return full.reshape(b, self.shape[0], -1)
        if self.kind in ("pixel", "patch"):
            c, p = self.shape[0], self.patch
            gh, gw = self.grid
            x = full.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)
            return x.reshape(b, gh, gw, c * p * p)
        return full.reshape(b, -1, 1)

    def sum(self, full) -> np.ndarray:
        """Relevance per unit: the sum over its elements."""
        return self._blocks(np.asarray(full, dtype=np.float64)).sum(-1)

    def norm(self, full) -> np.ndarray:
        """Sensitivity per unit: the L2 norm over its elements (for gradients, whose sum has no meaning)."""
        return np.sqrt((self._blocks(np.asarray(full, dtype=np.float64)) ** 2).sum(-1))

    def expand(self, per_unit: np.ndarray) -> np.ndarray:
        """A per-unit array ``(batch,) + grid`` repeated onto every element of its unit."""
        b = per_unit.shape[0]
        if self.kind == "token":
            return np.broadcast_to(per_unit[..., None], (b,) + self.shape)
        if self.kind in ("pixel", "patch"):
            p = self.patch
            x = np.repeat(np.repeat(per_unit, p, axis=1), p, axis=2)[:, None]
            return np.broadcast_to(x, (b,) + self.shape)
        return per_unit.reshape((b,) + self.shape)

    def spread(self, per_unit: np.ndarray) -> np.ndarray:
        """A full-resolution array whose unit sums are ``per_unit`` (each element an equal share)."""
        size = math.prod(self.shape) // math.prod(self.grid)
        return np.array(self.expand(np.asarray(per_unit, dtype=np.float64))) / size


@dataclass
class Subject:
    """A model ready for attribution: the original, its fed variant (``wrt`` a graph input), the
    attributed tensor, the token-id input the embedding reads (None for float inputs), the explained
    output, the unit kind and the row chunk of one ``model.run``."""

    model: Any
    fed: Any
    wrt: str
    ids: str | None
    output: str
    kind: str
    patch: int
    dtype: Any
    rows: int

    def units(self, value) -> Units:
        return Units(self.kind, tuple(value.shape[1:]), self.patch)


def make_subject(model, wrt=None, output=None, patch=None, dtype="float64", batch_size=None) -> Subject:
    """Check the arguments once and build the fed variant (see :class:`Subject`)."""
    from . import options
    from .analysis import _source_input, default_wrt
    from .model import Model, load
    if not isinstance(model, Model):
        model = load(model)
    graph = model.graph
    output = options.output(graph, output)
    if wrt is None:
        found = default_wrt(graph)
        if not found:
            raise ReflrpError(f"the model has no float input or embedding output to attribute to; pass wrt= "
                              f"(inputs: {[v.describe() for v in graph.inputs]})")
        wrt = found[0]
    elif not isinstance(wrt, str):
        raise ReflrpError(f"wrt={wrt!r} must be one tensor name (attribute() attributes to one tensor)")
    options.names(graph, wrt, "wrt")
    producer = graph.producer.get(wrt)
    ids = None
    if producer is not None and len(producer.inputs) > 1:
        ids = _source_input(graph, producer.inputs[1])
    batched = all(v.shape is None or not v.shape or not isinstance(v.shape[0], int) or v.shape[0] <= 0
                  for v in graph.inputs)
    rows = check_positive_int(batch_size, "batch_size") if batch_size is not None else ROWS
    return Subject(model, fed_at(model, wrt), wrt, ids, output, None, check_patch(patch), dtype,
                   rows if batched else 1)


def intervened(model, interventions, feeds, dtype=None):
    """``model`` (a Model or a path) with ``interventions`` inserted (reflrp.interventions); itself without."""
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    return model.intervened(interventions, feeds, dtype) if interventions else model


def fed_at(model, name: str):
    """``model`` with tensor ``name`` as a graph input: the node that computed it is dropped, every other
    node and input stays (so the ids still reach their other readers, e.g. a Shape)."""
    from .graph import Graph, ValueInfo
    from .model import Model
    graph = model.graph
    if name in graph.input_names:
        return model
    producer = graph.producer.get(name)
    if producer is None:
        raise GraphError(f"wrt={name!r} is an initializer, not a tensor computed from the inputs")
    others = [o for o in producer.outputs if o and o != name and graph.consumers.get(o)]
    if others:
        raise GraphError(f"cannot feed {name!r}: its producer {producer.label()} also computes {others}, which "
                         "other nodes read")
    dtype = graph.initializers[producer.inputs[0]].dtype if producer.inputs[0] in graph.initializers else None
    nodes = [n for n in graph.nodes if n is not producer]
    inputs = graph.inputs + (ValueInfo(name, dtype, None),)
    cut = Graph.build(nodes, inputs, graph.outputs, graph.initializers, graph.opset, graph.metadata, graph.opsets,
                      graph.expansions, graph.value_info, graph.defaults)
    return Model(cut, model.source + f" (fed at {name})", model.sha256)


def check_patch(patch) -> int:
    return 1 if patch is None else check_positive_int(patch, "patch")


def check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ReflrpError(f"{what}={value!r} must be a positive integer")
    return int(value)


def unit_kind(subject: Subject, value) -> str:
    """``token`` for an embedding output or a (batch, seq, hidden) input, ``pixel``/``patch`` for a
    (batch, C, H, W) input, else ``feature``."""
    if value.ndim == 4:
        _, _, h, w = value.shape
        p = subject.patch
        if h % p or w % p:
            raise ReflrpError(f"patch={p} does not divide the image size {h}x{w}")
        return "patch" if p > 1 else "pixel"
    if subject.patch > 1:
        raise ReflrpError(f"patch={subject.patch} is for image inputs (batch, C, H, W); {subject.wrt!r} has shape "
                          f"{tuple(value.shape)}")
    return "token" if value.ndim == 3 else "feature"


def value_of(subject: Subject, feeds: Mapping) -> np.ndarray:
    """The attributed tensor's value on ``feeds`` (float64 unless the subject's dtype says otherwise)."""
    if subject.wrt in feeds:
        v = np.asarray(feeds[subject.wrt])
    else:
        v = np.asarray(subject.model.run(feeds, dtype=subject.dtype, intermediates=[subject.wrt])[subject.wrt])
    if subject.kind is None:
        subject.kind = unit_kind(subject, v)
    return v.astype(np.float64) if subject.dtype == "float64" else v


def repeated(feeds: Mapping, reps: int) -> dict:
    """Every feed with each batch row repeated ``reps`` times (rows of one sample stay together)."""
    return {k: np.repeat(np.asarray(v), reps, axis=0) for k, v in feeds.items()}


def _rows_of(feeds: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in feeds.items()}


def target_values(logits, classes, measure: str = "logit") -> np.ndarray:
    """The target's logit (or softmax probability) per row: 3-D logits are read at the last position."""
    from .targets import _rows
    rows = np.asarray(_rows(np.asarray(logits, dtype=np.float64)))
    picked = rows[np.arange(rows.shape[0]), classes]
    if measure == "logit":
        return picked
    top = rows.max(-1, keepdims=True)
    return np.exp(picked - top[:, 0]) / np.exp(rows - top).sum(-1)


def run_at(subject: Subject, feeds: Mapping, x, classes, measure: str = "logit", progress=None) -> np.ndarray:
    """The target value for every row of ``x`` (values of ``wrt``; ``len(x)`` a multiple of the feeds'
    batch, rows of one sample together), one ``model.run`` of the fed variant per chunk of rows."""
    reps = len(x) // batch_size_of(feeds)
    many = {**repeated(_plain(subject, feeds), reps)}
    classes = np.repeat(np.asarray(classes), reps)
    out = np.empty(len(x))
    for lo in range(0, len(x), subject.rows):
        hi = min(lo + subject.rows, len(x))
        logits = subject.fed.run({**_rows_of(many, lo, hi), subject.wrt: x[lo:hi]}, dtype=subject.dtype)
        out[lo:hi] = target_values(logits[subject.output], classes[lo:hi], measure)
        if progress is not None:
            progress(hi - lo)
    return out


def gradient_at(subject: Subject, feeds: Mapping, x, classes) -> np.ndarray:
    """The gradient of each row's target logit at the rows of ``x`` (as :func:`run_at`), by chunks."""
    from .explain import gradient
    reps = len(x) // batch_size_of(feeds)
    many = repeated(_plain(subject, feeds), reps)
    classes = np.repeat(np.asarray(classes), reps)
    out = np.empty(x.shape)
    for lo in range(0, len(x), subject.rows):
        hi = min(lo + subject.rows, len(x))
        g = gradient(subject.fed, {**_rows_of(many, lo, hi), subject.wrt: x[lo:hi]}, target=classes[lo:hi],
                     wrt=[subject.wrt], dtype=subject.dtype, output=subject.output)
        out[lo:hi] = g[subject.wrt]
    return out


def _plain(subject: Subject, feeds: Mapping) -> dict:
    """The feeds of the fed variant besides ``wrt`` itself."""
    return {k: v for k, v in feeds.items() if k != subject.wrt}


def batch_size_of(feeds: Mapping) -> int:
    sizes = {int(np.asarray(v).shape[0]) for v in feeds.values() if np.ndim(v) > 0}
    if len(sizes) != 1:
        raise FeedError(f"the feeds disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def classes_for(subject: Subject, feeds: Mapping, target) -> tuple[np.ndarray, np.ndarray]:
    """(class per row, target logit per row): the argmax for ``target=None``."""
    from .targets import classes_of
    logits = np.asarray(subject.model.run(feeds, dtype=subject.dtype)[subject.output])
    if logits.ndim < 2:
        raise TargetError(f"output {subject.output!r} has shape {logits.shape}: attribute() needs a class axis")
    if target is not None and np.ndim(target) > 1:
        raise TargetError("attribute(): target must be a class index or one class per batch row")
    classes = np.asarray(classes_of(np, logits, target)).astype(np.int64)
    return classes, target_values(logits, classes)


@one_job
def attribute(model, feeds: Mapping[str, Any], method: str = "attnlrp", target: Any = None, *, wrt=None,
              output=None, dtype="float64", epsilon=None, steps: int = 32, baseline: Any = "zero",
              samples: int = 32, noise: float = 0.15, seed: int = 0, patch=None, batch_size=None,
              interventions=None) -> Attributions:
    """Relevance per input token or pixel by ``method`` (one of :data:`METHODS`).

    Parameters
    ----------
    model, feeds : as for :func:`reflrp.explain`.
    method : ``attnlrp``, ``cp-lrp``, ``epsilon`` (the LRP presets), ``gradient`` (unit score: the L2 norm
        of the gradient over the unit's elements), ``grad-x-input``, ``integrated-gradients`` (``steps``,
        ``baseline``), ``smoothgrad`` (``samples``, ``noise``, ``seed``; unit score as for gradient),
        ``random`` (``seed``), ``rollout`` (attention rollout), ``occlusion`` (``baseline``).
    target : None (the argmax per row; the last position of 3-D logits), a class or one class per row.
    wrt : the attributed tensor (default: the float input, or the embedding output for token ids).
    epsilon : the LRP stabiliser (LRP presets only; None: the preset's). Settings a method does not use
        are ignored.
    steps : integrated gradients' steps (midpoint rule: ``alpha = (i + 1/2) / steps``).
    baseline : ``"zero"``, ``"token:ID"`` (that token's embedding), ``"blur"`` (images), ``"value:V"``
        or an array of ``wrt``'s shape; the reference input of integrated gradients and occlusion.
    samples, noise, seed : SmoothGrad: ``samples`` noisy copies, noise std = ``noise * (max - min)`` of
        each row; ``seed`` also seeds ``random``.
    patch : image units of ``patch x patch`` pixels (default 1: pixels).
    batch_size : rows per ``model.run`` (default 1024; 1 for a model without a batch axis).
    interventions : ``{tensor: spec}`` as for ``Model.run``: every method runs on the intervened model
        (an intervention on ``wrt`` itself fixes the value the methods start from).
    """
    from . import baselines
    from .options import did_you_mean
    if not isinstance(method, str) or method not in METHODS:
        raise ReflrpError(f"unknown method {method!r}; choose one of {list(METHODS)}"
                          + (did_you_mean(method, METHODS) if isinstance(method, str) else ""))
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a mapping of graph input name to array, not {type(feeds).__name__}")
    if isinstance(model, Subject):
        if interventions:
            raise ReflrpError("attribute(): pass interventions= with a model, not with a prepared Subject")
        subject = model
    else:
        subject = make_subject(intervened(model, interventions, feeds, dtype), wrt, output, patch, dtype, batch_size)
    settings = baselines.settings(method, steps=steps, baseline=baseline, samples=samples, noise=noise, seed=seed,
                                  epsilon=epsilon)
    x = value_of(subject, feeds)
    units = subject.units(x)
    classes, value = classes_for(subject, feeds, target)
    full, scores, completeness = baselines.run(method, subject, feeds, x, units, classes, value, settings)
    return Attributions(method, scores, full, subject.wrt, units, classes, value, completeness, settings)


def lrp(subject: Subject, feeds, units, classes, preset: str, epsilon=None):
    """An LRP preset (or ``gradient`` / ``grad-x-input``) at ``wrt``, by chunks of rows."""
    from .explain import explain
    n = batch_size_of(feeds)
    parts = []
    for lo in range(0, n, subject.rows):
        chunk = _rows_of({k: np.asarray(v) for k, v in feeds.items()}, lo, min(lo + subject.rows, n))
        att = explain(subject.model, chunk, target=classes[lo:lo + subject.rows], preset=preset, wrt=[subject.wrt],
                      dtype=subject.dtype, epsilon=epsilon, output=subject.output, keep=())
        parts.append(np.asarray(att.relevance[subject.wrt], dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros((0,) + units.shape)
