"""``reflrp.explain``: forward pass, seed at the target, relevance pass, conservation report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .analysis import Plan, default_wrt
from .backend import namespace, quiet, to_numpy
from .conservation import ConservationReport, report
from .dtypes import is_float
from .errors import ReflrpError, TargetError
from .interpreter import check_feeds, execute, execute_segments, run_segment
from .memory import apply_allocator_policy
from .presets import EPSILON
from .propagate import propagate
from .rules import total


@dataclass
class Attribution:
    """The result of :func:`explain`.

    Attributes
    ----------
    relevance : tensor name -> relevance array, for every tensor that received relevance
        (the attributed inputs and every latent tensor).
    outputs : graph output name -> value (in the dtype the explanation ran in).
    target : the class per batch row (int array), or the seed array when one was given.
    seed : the initial relevance at ``output``.
    output : the name of the explained graph output.
    wrt : the tensors relevance is attributed to.
    plan : the rule of every node.
    conservation : per-node and total bookkeeping.
    """

    relevance: dict
    outputs: dict
    target: Any
    seed: Any
    output: str
    wrt: tuple
    plan: Plan
    conservation: ConservationReport

    def __getitem__(self, name: str):
        return self.relevance[name]

    @property
    def inputs(self) -> dict:
        """Relevance at the attributed tensors (zeros where none arrived)."""
        return {w: self.relevance[w] for w in self.wrt if w in self.relevance}

    def numpy(self) -> "Attribution":
        """A copy with every array on the host as numpy."""
        return Attribution({k: to_numpy(v) for k, v in self.relevance.items()},
                           {k: to_numpy(v) for k, v in self.outputs.items()}, to_numpy(self.target),
                           to_numpy(self.seed), self.output, self.wrt, self.plan, self.conservation)


def make_seed(xp, logits, target):
    """The initial relevance at the explained output, and the target as reported.

    None: per batch row the argmax (at the last position for 3-D logits). An int or 1-D int array:
    the class per row (last position for 3-D). An array of the output's shape: the seed itself.
    Otherwise the seed is the target logit's value there and zero elsewhere (LXT's convention)."""
    shape = logits.shape
    if target is not None and hasattr(target, "shape") and tuple(target.shape) == tuple(shape) and len(shape) > 1:
        seed = xp.asarray(target).astype(logits.dtype)
        if not bool(xp.isfinite(seed).all()):
            raise TargetError("the target (initial relevance) array contains NaN or Inf")
        return seed, seed
    if logits.ndim < 2:
        raise TargetError(f"cannot pick a class from an output of shape {tuple(shape)}; pass an initial "
                          "relevance array of that shape as target")
    rows = shape[0]
    last = logits[:, -1] if logits.ndim == 3 else logits.reshape(rows, -1)
    n = last.shape[-1]
    if target is None:
        classes = xp.argmax(last, axis=-1)
    else:
        t = np.asarray(to_numpy(target) if not isinstance(target, (int, np.integer, list, tuple)) else target)
        if t.dtype.kind not in "iu":
            raise TargetError(f"target must be class indices (int), got dtype {t.dtype}; or pass an array of "
                              f"the output's shape {tuple(shape)} as the initial relevance")
        t = np.broadcast_to(t, (rows,)) if t.ndim == 0 else t
        if t.shape != (rows,):
            raise TargetError(f"target has shape {t.shape}; expected one class per batch row ({rows},) or an "
                              f"array of the output's shape {tuple(shape)}")
        if t.min() < -n or t.max() >= n:
            raise TargetError(f"target class out of range: got {t.tolist()}, the output has {n} classes")
        classes = xp.asarray(t % n)
    seed_last = xp.zeros(last.shape, dtype=logits.dtype)
    idx = xp.arange(rows)
    seed_last[idx, classes] = last[idx, classes]
    seed = xp.zeros(shape, dtype=logits.dtype)
    if logits.ndim == 3:
        seed[:, -1] = seed_last
    else:
        seed = seed_last.reshape(shape)
    return seed, classes


def _seed(xp, logits, target, output):
    if not is_float(logits.dtype):
        raise ReflrpError(f"output {output!r} is not a float tensor")
    return make_seed(xp, logits, target)


def explain(model, feeds: Mapping[str, Any], target: Any = None, preset: str = "attnlrp", dtype: Any = "float64",
            epsilon: float | None = None, wrt=None, rules: dict | None = None, output: str | None = None,
            device: str | None = None, checkpoint: str | None = None, keep=None) -> Attribution:
    """Explain one output of ``model`` on ``feeds`` with Layer-wise Relevance Propagation.

    Parameters
    ----------
    model : a :class:`reflrp.Model` (``reflrp.load(path)``) or anything ``reflrp.load`` accepts.
    feeds : graph input name -> array.
    target : None (argmax per batch row, last position for 3-D logits), class indices per row, or an
        array of the output's shape used as the initial relevance.
    preset : ``"attnlrp"`` (AttnLRP, equal to LXT 2.1 efficient mode), ``"cp-lrp"`` or ``"epsilon"``.
    dtype : ``"float64"`` (reference, default), ``"float32"``, or None to keep the model's types.
    epsilon : the stabiliser; None uses the preset's (0 for attnlrp / cp-lrp, 1e-6 for epsilon).
    wrt : tensor names to attribute to; default the float graph inputs (for a model fed token ids,
        the output of the embedding Gather).
    rules : overrides: op type or node-name pattern (glob, or ``re:`` regex) -> rule name.
    output : which graph output to explain (default the first).
    device : None/"cpu" or "cuda" (cupy).
    checkpoint : None keeps every activation for the relevance pass; ``"sqrt"`` keeps only the live
        tensors at ~sqrt(steps) segment boundaries and recomputes each segment during the relevance
        pass (peak activation memory ~ sqrt(layers); same numbers).
    keep : None keeps the relevance of every tensor (without ``checkpoint``); a list of names keeps
        only those and the attributed tensors, dropping latent relevance once it is passed on (less
        memory). With ``checkpoint`` latent relevance is always dropped except for ``keep``.
    """
    from .model import Model, load
    if not isinstance(model, Model):
        model = load(model)
    apply_allocator_policy()
    graph = model.graph
    xp = namespace(device, feeds.values())
    eps = EPSILON.get(preset, 0.0) if epsilon is None else float(epsilon)
    wrt = tuple(wrt) if wrt is not None else default_wrt(graph)
    if isinstance(wrt, str):
        wrt = (wrt,)
    known = set(graph.input_names) | {o for n in graph.nodes for o in n.outputs}
    bad = [w for w in wrt if w not in known]
    if bad or not wrt:
        raise ReflrpError(f"wrt names no tensor of the graph: {bad or 'nothing to attribute to'}")
    output = output or graph.output_names[0]
    if output not in graph.output_names:
        raise ReflrpError(f"output {output!r} is not a graph output; outputs: {list(graph.output_names)}")
    if checkpoint not in (None, "sqrt"):
        raise ReflrpError(f"checkpoint must be None or 'sqrt', not {checkpoint!r}")
    plan = model.plan(preset, epsilon=eps, wrt=wrt, rules=rules)
    prep = model.prepared(dtype, xp)
    checked = check_feeds(graph, feeds, prep.policy, xp)
    kernels = {s.node.name: s for s in prep.steps}
    accounts: list = []
    if checkpoint is None:
        values = execute(prep, graph, checked, keep=True)
        outputs = {n: values[n] for n in graph.output_names}
        shapes = {w: values[w].shape for w in wrt}
        seed, classes = _seed(xp, outputs[output], target, output)
        relevance = {output: seed}
        kept = None if keep is None else set(wrt) | set(keep)
        with quiet(xp):
            propagate(plan.nodes, kernels, values, relevance, accounts, xp, eps, frozenset(wrt), kept)
        del values
    else:
        n = len(prep.steps)
        size = max(1, int(round(n ** 0.5)))
        bounds = list(range(0, n, size)) + [n]
        shapes = {w: checked[w].shape if w in checked else prep.constants[w].shape if w in prep.constants else None
                  for w in wrt}
        outputs, snapshots = execute_segments(prep, graph, checked, bounds, shapes)
        seed, classes = _seed(xp, outputs[output], target, output)
        relevance = {output: seed}
        position = {s.node.name: i for i, s in enumerate(prep.steps)}
        kept = set(wrt) | set(keep or ())
        for seg in reversed(range(len(bounds) - 1)):
            lo, hi = bounds[seg], bounds[seg + 1]
            # folded nodes (no step) read only constants: they belong to the first segment
            nodes = [p for p in plan.nodes if lo <= position.get(p.node.name, 0) < hi]
            if not nodes:
                continue
            values = run_segment(prep, snapshots[seg], lo, hi)
            with quiet(xp):
                propagate(nodes, kernels, values, relevance, accounts, xp, eps, frozenset(wrt), kept)
            del values
            snapshots[seg] = None
    at_wrt = sum(total(xp, relevance[w]) for w in wrt if w in relevance)
    dt = outputs[output].dtype
    for w in wrt:
        if w not in relevance:
            relevance[w] = xp.zeros(shapes[w], dtype=dt)
    return Attribution(relevance, outputs, classes, seed, output, wrt, plan,
                       report(total(xp, seed), at_wrt, accounts))
