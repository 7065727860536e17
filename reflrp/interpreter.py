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
from .dtypes import family, is_float, numpy_dtype
from .errors import FeedError, KernelError, ReflrpError, UnsupportedOpError
from .graph import Graph, Node
from .ops import resolve


@dataclass(frozen=True)
class Step:
    node: Node
    fn: Callable
    attrs: dict
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Prepared:
    """What one (policy, xp) needs to run: folded constants, steps, and free lists."""

    xp: Any
    policy: np.dtype | None
    constants: dict
    steps: list[Step]
    frees: tuple = ()  # per step: the intermediates whose last reader it is
    shape_only: frozenset = frozenset()  # step indices whose outputs depend on input shapes only
    value_steps: tuple = ()  # the other step indices, in order
    shape_cache: dict = None  # feed shape signature -> outputs of the shape-only steps

    def __post_init__(self):
        if self.shape_cache is None:
            self.shape_cache = {}


def _policy_dtype(dt: np.dtype, policy: np.dtype | None) -> np.dtype:
    return policy if policy is not None and is_float(dt) else dt


def _attrs_for(node: Node, policy: np.dtype | None) -> dict:
    """Decode attributes that carry types or tensors into what the kernel takes, under the policy."""
    attrs = dict(node.attrs)
    if node.op_type == "Cast":
        attrs["to"] = _policy_dtype(numpy_dtype(attrs["to"], node.label()), policy)
    elif node.op_type == "EyeLike" and "dtype" in attrs:
        attrs["dtype"] = _policy_dtype(numpy_dtype(attrs["dtype"], node.label()), policy)
    elif node.op_type in ("Constant", "ConstantOfShape"):
        for key in ("value",):
            if key in attrs and isinstance(attrs[key], np.ndarray):
                attrs[key] = attrs[key].astype(_policy_dtype(attrs[key].dtype, policy))
        if node.op_type == "Constant":
            attrs["_float"] = policy if policy is not None else np.float32
    elif node.op_type in ("Split", "MaxPool"):  # Split's chunk count; MaxPool's Indices output
        attrs["_n_outputs"] = len(node.outputs)
    return attrs


def _call(step: Step, xp, args: list):
    try:
        out = step.fn(xp, *args, **step.attrs)
    except ReflrpError as exc:
        raise type(exc)(f"{step.node.label()}: {exc}") from None
    except Exception as exc:
        shapes = ", ".join(f"{n or '-'}: {getattr(a, 'shape', None)} {getattr(a, 'dtype', '')}"
                           for n, a in zip(step.inputs, args))
        raise KernelError(f"{step.node.label()} failed on inputs ({shapes}): {type(exc).__name__}: {exc}") from None
    out = out if isinstance(out, tuple) else (out,)
    if len(out) < len(step.outputs) and any(step.outputs[len(out):]):
        raise UnsupportedOpError(f"{step.node.label()}: output(s) {[n for n in step.outputs[len(out):] if n]} "
                                 f"are not supported by reflrp's kernel (it computes {len(out)})")
    return out


def prepare(graph: Graph, policy: np.dtype | None, xp) -> Prepared:
    """Resolve kernels, cast constants under ``policy``, fold input-independent nodes."""
    constants = {k: xp.asarray(v.astype(_policy_dtype(v.dtype, policy), copy=False))
                 for k, v in graph.initializers.items()}
    steps: list[Step] = []
    inputs = set(graph.input_names)
    for node in graph.nodes:
        step = Step(node, resolve(node.op_type, graph.opset, node.label()), _attrs_for(node, policy),
                    node.inputs, node.outputs)
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
    # shape arithmetic and masks that depend on the feeds' shapes but not their values: computed
    # once per shape signature (Shape reads only a shape; everything else needs shape-only inputs)
    shape_only, known = set(), set(constants)
    float_dependent = {v.name for v in graph.inputs if v.dtype is not None and is_float(v.dtype)}
    cacheable = True
    for i, step in enumerate(steps):
        if step.node.op_type in ("Shape", "Size") or all(not n or n in known for n in step.inputs):
            shape_only.add(i)
            known.update(n for n in step.outputs if n)
        elif any(n in float_dependent for n in step.inputs):
            float_dependent.update(n for n in step.outputs if n)
            # float values turned into integers could become shape arguments: no shape cache then
            # (integer feeds are part of the cache key, so ids-driven shapes are safe)
            to_int = step.node.op_type in ("ArgMax", "ArgMin") or (
                step.node.op_type == "Cast" and not is_float(step.attrs["to"]))
            cacheable = cacheable and not to_int
    if not cacheable:
        shape_only = set()
    value_steps = tuple(i for i in range(len(steps)) if i not in shape_only)
    outputs = set(graph.output_names)
    frees = tuple(tuple(n for n in dict.fromkeys(step.inputs) if n and last_use.get(n) == i and n not in outputs)
                  for i, step in enumerate(steps))
    return Prepared(xp, policy, constants, steps, frees, frozenset(shape_only), value_steps)


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
        arr = value if hasattr(value, "__array_namespace__") or hasattr(value, "dtype") else np.asarray(value)
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
            target = _policy_dtype(info.dtype, policy)
        else:
            target = _policy_dtype(arr.dtype, policy)
        out[name] = xp.asarray(arr).astype(target, copy=False)
    return out


def _run_steps(prep: Prepared, env: dict, indices, free: bool = True, kept=frozenset(), fresh=None,
               shapes=None) -> None:
    """Run ``prep.steps[i]`` for ``i`` in ``indices`` on ``env`` in place (the one forward loop).

    ``free`` drops intermediates after their last reader (except ``kept``); ``fresh`` collects the
    outputs of shape-only steps for the shape cache."""
    xp, steps, frees, shape_only = prep.xp, prep.steps, prep.frees, prep.shape_only
    with quiet(xp):
        for i in indices:
            step = steps[i]
            try:
                out = step.fn(xp, *[env[n] if n else None for n in step.inputs], **step.attrs)
            except Exception:  # redo through _call for the error that names the node
                _call(step, xp, [env[n] if n else None for n in step.inputs])
                raise
            if type(out) is not tuple:
                if len(step.outputs) > 1 and any(step.outputs[1:]):  # outputs the kernel does not compute
                    _call(step, xp, [env[n] if n else None for n in step.inputs])
                env[step.outputs[0]] = out
            else:
                if len(out) < len(step.outputs):
                    out = _call(step, xp, [env[n] if n else None for n in step.inputs])
                for n, v in zip(step.outputs, out):
                    if n:
                        env[n] = v
            if fresh is not None and i in shape_only:
                fresh.update((n, env[n]) for n in step.outputs if n)
            if shapes is not None:
                shapes.update((n, env[n].shape) for n in step.outputs if n in shapes)
            if free:
                for n in frees[i]:
                    if n not in kept:
                        env.pop(n, None)


def execute(prep: Prepared, graph: Graph, feeds: dict, keep=()) -> dict:
    """Run the steps. ``keep`` names intermediates to return too; ``keep=True`` keeps every tensor."""
    env = dict(prep.constants)
    env.update(feeds)
    keep_all = keep is True
    held = set(graph.output_names) | (set() if keep_all else set(keep))
    signature = tuple((k, tuple(v.shape), v.dtype.str, v.tobytes() if not is_float(v.dtype) else None)
                      for k, v in sorted(feeds.items()))
    cached = prep.shape_cache.get(signature)
    fresh = None if cached is not None or not prep.shape_only else {}
    if cached is not None:
        env.update(cached)
    order = prep.value_steps if cached is not None else range(len(prep.steps))
    _run_steps(prep, env, order, free=not keep_all, kept=held - set(graph.output_names), fresh=fresh)
    if fresh is not None:
        if len(prep.shape_cache) >= 16:  # bounded: forget the oldest signature
            prep.shape_cache.pop(next(iter(prep.shape_cache)))
        prep.shape_cache[signature] = fresh
    shared = cached if cached is not None else fresh
    if shared:  # the caller gets copies: the cache's arrays must stay as they are
        for n in held & shared.keys():  # (with keep=True only the graph outputs leave explain)
            env[n] = env[n].copy()
    if keep_all:
        return env
    missing = [n for n in held if n not in env]
    if missing:
        raise ReflrpError(f"tensors {missing} were asked to be kept but no node produces them")
    return {n: env[n] for n in graph.output_names} | {n: env[n] for n in keep if n not in graph.output_names}


def execute_segments(prep: Prepared, graph: Graph, feeds: dict, bounds: list[int], shapes=None):
    """Forward pass that snapshots the live tensors at the start of each segment ``bounds[i]:bounds[i+1]``.

    Returns (graph outputs, snapshots); a snapshot plus the constants is enough to rerun its segment
    (``run_segment``). Only tensors still needed later are alive, so snapshots are small. ``shapes``
    (a dict keyed by tensor names) receives the shapes of those tensors as they are computed."""
    env = dict(prep.constants)
    env.update(feeds)
    snapshots = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        snapshots.append({k: v for k, v in env.items() if k not in prep.constants})
        _run_steps(prep, env, range(lo, hi), shapes=shapes)
    return {n: env[n] for n in graph.output_names}, snapshots


def run_segment(prep: Prepared, snapshot: dict, lo: int, hi: int) -> dict:
    """Rerun steps ``lo:hi`` from a snapshot, keeping every tensor (for the relevance pass)."""
    env = dict(prep.constants)
    env.update(snapshot)
    _run_steps(prep, env, range(lo, hi), free=False)
    return env
