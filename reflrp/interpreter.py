"""The forward pass: a prepared step list per (float policy, array namespace), then a short loop.

Preparation resolves each node's kernel for the model's opset, applies the float policy to
attributes and constants, folds every node that does not depend on a graph input, and works out
when each intermediate tensor can be freed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .backend import quiet
from .dtypes import family, is_float, under_policy
from .errors import FeedError, KernelError, ReflrpError, UnsupportedOpError
from .graph import Graph, Node
from .ops import record, resolve


@dataclass(frozen=True)
class Step:
    """One node ready to run: its kernel and adjoint for the model's opset, attributes under the policy."""

    node: Node
    fn: Callable
    attrs: dict
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    adjoint: Callable | None = None


@dataclass
class Prepared:
    """What one (policy, xp, fast) needs to run: folded constants, steps, free lists, and (fast layer)
    the shape cache."""

    xp: Any
    policy: np.dtype | None
    constants: dict
    steps: list[Step]
    frees: tuple = ()  # per step: the intermediates whose last reader it is
    shape_cache: Any = None  # reflrp.fast.ShapeCache when the fast layer is on

    def __post_init__(self):
        self.by_node = {s.node.name: s for s in self.steps}  # the relevance pass looks steps up by node
        self.op_facts: dict = {}  # the relevance pass's per-node op facts (reflrp.propagate._op_facts)


def _call(step: Step, xp, args: list):
    try:
        out = step.fn(xp, *args, **step.attrs)
    except Exception as exc:
        raise _failure(step, args, exc) from None
    return _outputs(step, out)


def _failure(step: Step, args: list, exc: Exception) -> ReflrpError:
    """The error of a kernel that raised: the node named, and for a non-reflrp error the inputs' shapes."""
    if isinstance(exc, ReflrpError):
        return type(exc)(f"{step.node.label()}: {exc}")
    shapes = ", ".join(f"{n or '-'}: {getattr(a, 'shape', None)} {getattr(a, 'dtype', '')}"
                       for n, a in zip(step.inputs, args))
    return KernelError(f"{step.node.label()} failed on inputs ({shapes}): {type(exc).__name__}: {exc}")


def _outputs(step: Step, out) -> tuple:
    """A kernel's result as a tuple; an output the node names but the kernel does not compute is refused."""
    out = out if isinstance(out, tuple) else (out,)
    if len(out) < len(step.outputs) and any(step.outputs[len(out):]):
        raise UnsupportedOpError(f"{step.node.label()}: output(s) {[n for n in step.outputs[len(out):] if n]} "
                                 f"are not supported by reflrp's kernel (it computes {len(out)})")
    return out


def prepare(graph: Graph, policy: np.dtype | None, xp, fast: bool = False) -> Prepared:
    """Resolve kernels and adjoints, cast constants under ``policy``, fold input-independent nodes.
    With ``fast`` the speed layer's kernels and adjoints replace the plain ones where it has them."""
    from . import fast as fast_layer
    constants = {k: xp.asarray(v.astype(under_policy(v.dtype, policy), copy=False))
                 for k, v in graph.initializers.items()}
    steps: list[Step] = []
    inputs = set(graph.input_names)
    for node in graph.nodes:
        fn = resolve(node.op_type, graph.opset, node.label())
        vjp = record(node.op_type).adjoint_for(graph.opset)
        if fast:
            fn, vjp = fast_layer.kernel(node.op_type, fn), fast_layer.adjoint(node.op_type, vjp)
        step = Step(node, fn, record(node.op_type).attrs_for(node, policy), node.inputs, node.outputs, vjp)
        if all(not n or n in constants for n in node.inputs) and not (set(node.inputs) & inputs):
            with quiet(xp):
                values = _call(step, xp, [constants[n] if n else None for n in node.inputs])
            constants.update((n, v) for n, v in zip(node.outputs, values) if n)
        else:
            steps.append(step)
    last_use = {}
    for i, step in enumerate(steps):
        for n in step.inputs:
            if n and n not in constants:
                last_use[n] = i
    outputs = set(graph.output_names)
    frees = tuple(tuple(n for n in dict.fromkeys(step.inputs) if n and last_use.get(n) == i and n not in outputs)
                  for i, step in enumerate(steps))
    prep = Prepared(xp, policy, constants, steps, frees)
    if fast:
        prep.shape_cache = fast_layer.ShapeCache.for_steps(graph, steps, constants)
    return prep


def check_feeds(graph: Graph, feeds: Mapping[str, Any], policy: np.dtype | None, xp, allow_nan=None) -> dict:
    """Validate feeds against the graph's inputs and convert them (names, rank, dims, dtype).

    NaN and +-inf are values like any other, as in onnxruntime (``allow_nan`` is ignored)."""
    expected = {v.name: v for v in graph.inputs}
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing feed(s) " + ", ".join(expected[n].describe() for n in missing))
        if extra:
            parts.append(f"unknown input name(s) {extra}")
        raise FeedError("; ".join(parts) + f". The model's inputs: {[v.describe() for v in graph.inputs]}")
    out, symbols = {}, {}
    for name, info in expected.items():
        value = feeds[name]
        arr = value if hasattr(value, "__array_namespace__") or hasattr(value, "dtype") else _as_array(name, value)
        if info.shape is not None:
            if arr.ndim != len(info.shape):
                raise FeedError(f"input {info.describe()} expects rank {len(info.shape)}, got shape {tuple(arr.shape)}")
            for axis, (want, got) in enumerate(zip(info.shape, arr.shape)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise FeedError(f"input {info.describe()}: axis {axis} must be {want}, got shape {tuple(arr.shape)}")
                if isinstance(want, str):
                    if symbols.setdefault(want, (got, name))[0] != got:
                        first = symbols[want]
                        raise FeedError(f"input {name!r}: dimension {want!r} is {got} here but {first[0]} in input {first[1]!r}")
        if info.dtype is not None:
            if family(arr.dtype) != family(info.dtype):  # a float feed may be any float type, etc.
                raise FeedError(f"input {info.describe()} expects dtype {info.dtype}, got {arr.dtype}")
            target = under_policy(info.dtype, policy)
        else:
            target = under_policy(arr.dtype, policy)
        out[name] = xp.asarray(arr).astype(target, copy=False)
    return out


def _as_array(name: str, value):
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise FeedError(f"input {name!r} is not an array: {exc}") from None


def run_steps(prep: Prepared, env: dict, indices, free: bool = True, kept=frozenset(), shapes=None) -> None:
    """Run ``prep.steps[i]`` for ``i`` in ``indices`` on ``env`` in place (the one forward loop).

    ``free`` drops intermediates after their last reader (except ``kept``); ``shapes`` (a dict keyed
    by tensor names) receives the shapes of those tensors as they are computed."""
    xp, steps, frees = prep.xp, prep.steps, prep.frees
    with quiet(xp):
        for i in indices:  # _call, inlined: this loop runs every node of every forward
            step = steps[i]
            args = [env[n] if n else None for n in step.inputs]
            try:
                out = step.fn(xp, *args, **step.attrs)
            except Exception as exc:
                raise _failure(step, args, exc) from None
            out = _outputs(step, out)
            for n, v in zip(step.outputs, out):
                if n:
                    env[n] = v
            if shapes is not None:
                shapes.update((n, env[n].shape) for n in step.outputs if n in shapes)
            if free:
                for n in frees[i]:
                    if n not in kept:
                        env.pop(n, None)


def execute(prep: Prepared, graph: Graph, feeds: dict, retain=()) -> dict:
    """Run the steps and return the graph outputs, then the tensors named in ``retain``;
    ``retain=True`` returns every tensor (the relevance pass reads them all)."""
    env = dict(prep.constants)
    env.update(feeds)
    keep_all = retain is True
    held = set(graph.output_names) | (set() if keep_all else set(retain))
    order, cached = range(len(prep.steps)), frozenset()
    if prep.shape_cache is not None:
        order, cached = prep.shape_cache.restore(env, feeds)
    run_steps(prep, env, order, free=not keep_all, kept=(held - set(graph.output_names)) | cached)
    if prep.shape_cache is not None:
        prep.shape_cache.remember(env, feeds, held)
    if keep_all:
        return env
    missing = [n for n in held if n not in env]
    if missing:
        raise ReflrpError(f"tensors {missing} were asked to be kept but no node produces them")
    return {n: env[n] for n in graph.output_names} | {n: env[n] for n in retain if n not in graph.output_names}


def execute_segments(prep: Prepared, graph: Graph, feeds: dict, bounds: list[int], shapes=None):
    """Forward pass that snapshots the live tensors at the start of each segment ``bounds[i]:bounds[i+1]``.

    Returns (graph outputs, snapshots); a snapshot plus the constants is enough to rerun its segment
    (``run_segment``). Only tensors still needed later are alive, so snapshots are small."""
    env = dict(prep.constants)
    env.update(feeds)
    snapshots = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        snapshots.append({k: v for k, v in env.items() if k not in prep.constants})
        run_steps(prep, env, range(lo, hi), shapes=shapes)
    return {n: env[n] for n in graph.output_names}, snapshots


def run_segment(prep: Prepared, snapshot: dict, lo: int, hi: int) -> dict:
    """Rerun steps ``lo:hi`` from a snapshot, keeping every tensor (for the relevance pass)."""
    env = dict(prep.constants)
    env.update(snapshot)
    run_steps(prep, env, range(lo, hi), free=False)
    return env
