"""``reflrp.explain`` and ``reflrp.gradient``: forward pass, seed at the target(s), relevance pass, books."""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import fast as fast_layer
from . import options as checks
from .analysis import Plan
from .backend import namespace, to_numpy
from .conservation import Ledger
from .dtypes import is_float
from .errors import FeedError, ReflrpError, TargetError
from .memory import reuse_during_call
from .interpreter import check_feeds, execute, execute_segments, run_segment
from .propagate import Pass, propagate
from .rules import RULES
from .rules import formulas as plain_formulas
from .targets import expand, one_seed, stacked_seeds


class ReflrpWarning(UserWarning):
    """The attribution was computed but its books do not close (e.g. a float16 pass that underflowed)."""


@dataclass
class Attribution:
    """The result of :func:`explain`.

    Attributes
    ----------
    relevance : tensor name -> relevance array, for every tensor that received relevance (the attributed
        tensors and, unless ``keep`` said otherwise, every latent tensor). With ``targets=[...]`` each
        array has a leading target axis: ``(K,) + shape``.
    outputs : graph output name -> value (in the dtype the explanation ran in).
    target : the class per batch row (int array), or the seed array when one was given; a list with
        ``targets=``.
    seed : the initial relevance at ``output`` (``(K,) + shape`` with ``targets=``).
    output : the name of the explained graph output.
    wrt : the tensors relevance is attributed to.
    plan : the rule of every node.
    conservation : the books (a :class:`ConservationReport`; a list of K with ``targets=``; None for the
        gradient presets, whose numbers are gradients, not relevance).
    """

    relevance: dict
    outputs: dict
    target: Any
    seed: Any
    output: str
    wrt: tuple
    plan: Plan
    conservation: Any
    many: bool = False

    def __getitem__(self, name: str):
        return self.relevance[name]

    @property
    def at_wrt(self) -> dict:
        """The relevance of each attributed tensor."""
        return {w: self.relevance[w] for w in self.wrt}

    def numpy(self) -> "Attribution":
        """A copy with every array on the host as numpy."""
        target = [to_numpy(t) for t in self.target] if self.many else to_numpy(self.target)
        return Attribution({k: to_numpy(v) for k, v in self.relevance.items()},
                           {k: to_numpy(v) for k, v in self.outputs.items()}, target, to_numpy(self.seed),
                           self.output, self.wrt, self.plan, self.conservation, self.many)


def explain(model, feeds: Mapping[str, Any], target: Any = None, preset: str = "attnlrp", dtype: Any = "float64",
            epsilon: float | None = None, wrt=None, rules: dict | None = None, output: str | None = None,
            device: str | None = None, checkpoint: str | None = None, keep=None, targets=None,
            fast: bool | None = None, max_memory: float | None = 2**31, interventions=None,
            options: dict | None = None) -> Attribution:
    """Explain one output of ``model`` on ``feeds`` with Layer-wise Relevance Propagation.

    Parameters
    ----------
    model : a :class:`reflrp.Model` (``reflrp.load(path)``) or anything ``reflrp.load`` accepts.
    feeds : graph input name -> array.
    target : None (argmax per batch row, last position for 3-D logits), class indices per row, an array
        of the output's shape used as the initial relevance, or ``reflrp.contrastive(...)``.
    targets : several targets explained in one pass (each anything ``target`` accepts, or the named
        forms ``"all-classes"`` / ``"every-position"``); relevance arrays get a leading target axis.
    preset : ``"attnlrp"`` (AttnLRP, equal to LXT 2.1 efficient mode), ``"cp-lrp"``, ``"epsilon"``,
        ``"gradient"`` or ``"grad-x-input"``; Zennit's composites ``"epsilon-plus"``, ``"epsilon-plus-flat"``,
        ``"epsilon-gamma-box"``, ``"epsilon-alpha2-beta1"``, ``"epsilon-alpha2-beta1-flat"``; LXT's ViT
        recipe ``"cp-lrp-gamma"``; or a composite from :func:`reflrp.composite` (docs/rules.md).
    dtype : ``"float64"`` (reference, default), ``"float32"``, ``"float16"``, or None for the model's types.
    epsilon : the stabiliser, a finite number >= 0; None uses the preset's (0 for attnlrp / cp-lrp,
        1e-6 for epsilon).
    wrt : tensor names to attribute to; default every float graph input and, for token-id inputs, the
        output of the embedding Gather.
    rules : overrides: op type, node-name glob or ``re:`` regex -> rule name or ``(rule name, {parameter:
        value})`` (the first matching key wins).
    output : which graph output to explain (default the first).
    device : None / ``"cpu"`` or ``"cuda"`` (cupy).
    checkpoint : None keeps every activation for the relevance pass; ``"sqrt"`` keeps only the live
        tensors at ~sqrt(steps) segment boundaries and recomputes each segment during the relevance pass
        (peak activation memory ~ sqrt(layers); same numbers).
    keep : None keeps the relevance of every tensor (without ``checkpoint``); a list of names keeps only
        those and the attributed tensors, dropping latent relevance once it is passed on.
    fast : the speed layer (reflrp.fast); None: on unless ``REFLRP_FAST=0``. Same numbers.
    max_memory : with ``targets=``, the relevance of K targets takes K times the memory of one; above this
        many bytes (2 GiB by default; None: no limit) the targets are explained in chunks, one relevance
        pass per chunk over the same forward (the same numbers). Only with ``keep`` or ``checkpoint``:
        when every tensor's relevance is returned, chunks cannot lower the peak (the result is that
        large) and joining them would copy it once more.
    interventions : ``{tensor: spec}`` as for ``Model.run``: the intervened model is explained (its
        inserted nodes get their rules: scaling passes relevance, set units absorb it).
    options : rule parameters for every rule that takes them (``epsilon``, ``stabilizer``, ``gamma``,
        ``alpha``, ``beta``, ``low``, ``high``, ``zero_bias``); ``"conv.gamma"`` for one layer type.
    """
    from .model import Model, load
    if not isinstance(model, Model):
        model = load(model)
    if isinstance(feeds, Mapping):
        model = model.for_feeds(feeds)
        if interventions:
            model = model.intervened(interventions, feeds, dtype)
    graph = model.graph
    chosen = checks.preset(preset)
    output = checks.output(graph, output)
    checkpoint = checks.checkpoint(checkpoint)
    keep = checks.names(graph, keep, "keep")
    if target is not None and targets is not None:
        raise TargetError("pass either target= or targets=, not both")
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a mapping of graph input name to array, not {type(feeds).__name__}")
    plan = model.plan(preset, epsilon=epsilon, wrt=wrt, rules=rules, options=options)
    eps = plan.epsilon
    xp = namespace(device, feeds.values())
    fast = fast_layer.enabled(fast)
    prep = model.prepared(dtype, xp, fast)
    checked = check_feeds(graph, feeds, prep.policy, xp)
    _check_attributed_feeds(xp, checked, plan.wrt)
    kept = None if keep is None and checkpoint is None else frozenset(plan.wrt) | set(keep or ())
    run = Pass(xp, eps, prep.by_node, fast_layer.formulas if fast else plain_formulas,
               frozenset(plan.wrt), kept, _hint(prep), fast_layer.rule_table(RULES) if fast else None,
               prep.op_facts)

    with reuse_during_call() if fast else nullcontext():  # every temporary is freed inside the scope
        return _attribution(run, prep, plan, graph, checked, chosen, output, target, targets, checkpoint,
                            max_memory, xp)


def _attribution(run, prep, plan, graph, checked, chosen, output, target, targets, checkpoint, max_memory, xp):
    """The forward, the seeds and the relevance pass(es) of one explain call, and its Attribution."""
    def seeds_for(outputs):
        logits = outputs[output]
        _check_logits(xp, logits, output)
        if targets is None:
            seed, reported = one_seed(xp, logits, target, chosen.seed)
            seed = seed[None]
        else:
            seed, reported = stacked_seeds(xp, logits, expand(xp, logits, targets, chosen.seed), chosen.seed)
        if not bool(xp.isfinite(seed).all()):
            raise TargetError(f"the seed at output {output!r} is NaN or infinite: the target logit is not finite "
                              "for these feeds (a non-finite feed, or a model overflowing in its dtype: try "
                              "dtype='float64')")
        return seed, reported

    outputs, state = _forward(prep, graph, plan, checked, checkpoint)
    # grad-x-input multiplies by the attributed values: an inner tensor's (an embedding output) is read
    # before the relevance pass uses the forward state up
    inner = {w: state.values[w] for w in plan.wrt if chosen.times_input and state.values and w in state.values}
    seed, reported = seeds_for(outputs)
    k = seed.shape[0]
    step = _chunk(k, max_memory, state, prep) if run.keep is not None else k
    parts, ledgers = [], []
    for lo in range(0, k, step):
        relevance, ledger = _relevance(run, prep, plan, state, seed[lo:lo + step], output, lo + step >= k)
        parts.append(relevance)
        ledgers.append(ledger)
    relevance = _joined(parts) if len(parts) > 1 else parts[0]
    dt = outputs[output].dtype
    for w in plan.wrt:
        if w not in relevance:
            relevance[w] = xp.zeros((k,) + tuple(state.shapes[w]), dtype=dt)
        elif chosen.times_input:
            relevance[w] = relevance[w] * _value_of(prep, {**inner, **checked}, w, relevance[w])
    reports = None
    if chosen.conserving:
        reports = []
        for i, ledger in enumerate(ledgers):
            chunk = slice(i * step, i * step + ledger.k)
            at_each = {w: run.formulas.totals(xp, relevance[w][chunk]) for w in plan.wrt}
            reports += ledger.reports(run.formulas.totals(xp, seed[chunk]), at_each, _books_precision(prep, dt))
    _warn_if_open(reports)
    many = targets is not None
    if not many:
        relevance = {n: r[0] for n, r in relevance.items()}
        seed = seed[0]
        reports = reports[0] if reports else None
    return Attribution(relevance, outputs, reported, seed, output, plan.wrt, plan, reports, many)


@dataclass
class _Forward:
    """What the relevance pass reads: every activation (``values``), or the checkpoint snapshots and the
    segment bounds to recompute them; the shapes of the attributed tensors."""

    shapes: dict
    values: dict | None = None
    snapshots: list | None = None
    bounds: list | None = None


def _forward(prep, graph, plan, checked, checkpoint):
    """The forward pass, keeping every activation or (checkpoint "sqrt") ~sqrt(steps) snapshots."""
    if checkpoint is None:
        values = execute(prep, graph, checked, retain=True)
        return {n: values[n] for n in graph.output_names}, _Forward({w: values[w].shape for w in plan.wrt}, values)
    n = len(prep.steps)
    size = max(1, int(round(n ** 0.5)))
    bounds = list(range(0, n, size)) + [n]
    shapes = {w: checked[w].shape if w in checked else prep.constants[w].shape if w in prep.constants else None
              for w in plan.wrt}
    outputs, snapshots = execute_segments(prep, graph, checked, bounds, shapes)
    return outputs, _Forward(shapes, snapshots=snapshots, bounds=bounds)


def _relevance(run, prep, plan, state: _Forward, seed, output, last: bool):
    """One relevance pass from ``seed`` (a chunk of targets) at ``output``; the forward state is used up
    by the ``last`` pass only (earlier chunks leave it for the next)."""
    ledger = Ledger(seed.shape[0])
    ledger.arrive(output, run.formulas.totals(run.xp, seed))
    relevance = {output: seed}
    if state.values is not None:
        propagate(run, plan.nodes, state.values if last else dict(state.values), relevance, ledger)
        return relevance, ledger
    position = {s.node.name: i for i, s in enumerate(prep.steps)}
    bounds = state.bounds
    for seg in reversed(range(len(bounds) - 1)):
        lo, hi = bounds[seg], bounds[seg + 1]
        # folded nodes (no step) read only constants: they belong to the first segment
        nodes = [p for p in plan.nodes if lo <= position.get(p.start.name, 0) < hi]
        if nodes:
            values = run_segment(prep, state.snapshots[seg], lo, hi)
            propagate(run, nodes, values, relevance, ledger)
            del values
        if last:
            state.snapshots[seg] = None
    return relevance, ledger


def _chunk(k: int, max_memory, state: _Forward, prep) -> int:
    """How many targets one relevance pass takes: all of them, unless their relevance arrays (about one
    activation-sized array per target and tensor) would exceed ``max_memory`` bytes."""
    if max_memory is None or k == 1:
        return k
    if state.values is not None:
        per_target = sum(getattr(v, "nbytes", 0) for n, v in state.values.items() if n not in prep.constants)
    else:
        per_target = sum(getattr(v, "nbytes", 0) for snap in state.snapshots for v in snap.values())
    return max(1, min(k, int(max_memory // max(per_target, 1))))


def _joined(parts: list) -> dict:
    """The relevance of several target chunks, concatenated on the target axis (tensors every chunk has)."""
    names = set.intersection(*(set(p) for p in parts))
    return {n: namespace(None, [parts[0][n]]).concatenate([p[n] for p in parts], axis=0) for n in names}


def _books_precision(prep, dt) -> str:
    """The float type whose tolerance the books are held to: the policy's, else the narrowest float the
    pass computes in (a float16 model with float32 inputs and outputs computes in float16 inside)."""
    if prep.policy is not None:
        return str(np.dtype(prep.policy))
    floats = {np.dtype(v.dtype) for v in prep.constants.values() if is_float(v.dtype)} | {np.dtype(dt)}
    return str(min(floats, key=lambda d: d.itemsize))


def _value_of(prep, checked, name, like):
    value = checked.get(name, prep.constants.get(name))
    if value is None:
        raise ReflrpError(f"grad-x-input: the value of {name!r} is not kept with checkpoint='sqrt' (attribute to a "
                          "graph input, or run without checkpoint)")
    return value.astype(like.dtype, copy=False)


def _check_attributed_feeds(xp, checked, wrt) -> None:
    # an empty batch explains to empty relevance, an empty cache to an empty array; only nothing at all fails
    empty = [w for w in wrt if w in checked and 0 in checked[w].shape[1:]]
    if empty and len(empty) == len(wrt):
        raise FeedError(f"input {empty[0]!r} is attributed (wrt) but has an empty axis (shape "
                        f"{tuple(checked[empty[0]].shape)}): nothing to explain")
    for w in wrt:
        v = checked.get(w)
        if v is not None and is_float(v.dtype) and v.size and not bool(xp.isfinite(v.astype(np.float64, copy=False)).all()):
            raise FeedError(f"input {w!r} is attributed (wrt) but contains NaN or Inf; relevance of non-finite "
                            "values is undefined")


def _check_logits(xp, logits, output) -> None:
    if not is_float(logits.dtype):
        raise TargetError(f"output {output!r} is not a float tensor (dtype {logits.dtype})")


def _hint(prep) -> str:
    forward = " Or the forward itself holds NaN/inf there (model.run shows it: e.g. a softmax row of only -inf)."
    if prep.policy is not None and prep.policy.itemsize >= 8:
        return forward
    better = "'float64'" if prep.policy is not None and prep.policy.itemsize == 4 else "'float64' or 'float32'"
    return f" Try dtype={better}: the pass ran in a lower precision." + forward


def _warn_if_open(reports) -> None:
    for i, r in enumerate(reports or ()):
        if not r.ok:
            warnings.warn(f"the relevance books do not close{f' for target {i}' if len(reports) > 1 else ''}: "
                          f"max node residual {r.max_residual:.2e}, totals off by {r.closing_error:.2e} "
                          f"(tolerance {r.tolerance:g}); the attribution is not trustworthy", ReflrpWarning,
                          stacklevel=3)


def gradient(model, feeds: Mapping[str, Any], target: Any = None, wrt=None, dtype: Any = "float64",
             output: str | None = None, targets=None, device: str | None = None, fast: bool | None = None) -> dict:
    """The exact gradient of the target logit (summed over batch rows; per target with ``targets=``) with
    respect to each ``wrt`` tensor, by chaining every op's adjoint: ``{name: array}``."""
    att = explain(model, feeds, target=target, preset="gradient", dtype=dtype, wrt=wrt, output=output,
                  targets=targets, device=device, fast=fast, keep=())
    return att.at_wrt
