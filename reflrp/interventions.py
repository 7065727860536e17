"""Interventions: change chosen units of a tensor where it is produced, before its consumers read it.

``model.run(feeds, interventions={tensor: spec})`` (and the same argument on ``explain``): each spec
becomes nodes inserted into a copy of the graph right after the tensor, so an intervened run equals any
ONNX runtime on the edited model, and the relevance rules apply to the inserted nodes like to any other.

=========================================== ================================ =========================
spec                                        inserted node                    relevance through it
=========================================== ================================ =========================
``{"units": [...], "scale": s}``            ``Mul(t, m)``, ``m`` = 1, s at   identity (Mul by a
                                            the units                        constant)
``{"units": [...], "set": v}``              ``Where(mask, v, t)``            the set units are
                                                                             constants: absorbed
``{"units": [...], "zero": True}``          ``Where(mask, 0, t)``            absorbed likewise
``{"add": vector}`` (broadcast to t)        ``Add(t, vector)``               epsilon: the addend absorbs
a function ``f(x) -> x'`` (same shape)      ``Apply(t)`` running ``f``       identity
=========================================== ================================ =========================

Units index the tensor's last axis (``"axis": a`` picks another); ``scale`` and ``set`` take one number or
one per unit. Unknown tensors, empty or out-of-range units, values that are not numbers, vectors that do
not broadcast and functions that change the shape are errors naming the tensor.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from .errors import ReflrpError
from .graph import Graph, Node

SPEC_KEYS = {"units", "scale", "set", "zero", "add", "axis"}


class InterventionError(ReflrpError):
    """An intervention names no tensor, units out of range, or a spec reflrp does not know."""


def key_of(interventions: Mapping) -> tuple:
    """A hashable key for caching the edited model (arrays by their bytes, functions by themselves)."""
    def part(v):
        if callable(v):
            return ("fn", v)
        if isinstance(v, Mapping):
            return tuple(sorted((k, part(x)) for k, x in v.items()))
        a = np.asarray(v)
        return (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
    return tuple(sorted((name, part(spec)) for name, spec in interventions.items()))


def check_specs(graph: Graph, interventions) -> None:
    if not isinstance(interventions, Mapping):
        raise InterventionError(f"interventions= must be a mapping {{tensor name: spec}}, not {type(interventions).__name__}")
    known = set(graph.input_names) | {o for n in graph.nodes for o in n.outputs if o} | set(graph.initializers)
    for name, spec in interventions.items():
        if name not in known:
            from .options import did_you_mean
            raise InterventionError(f"interventions: the graph has no tensor {name!r}{did_you_mean(name, known)}")
        if callable(spec):
            continue
        if not isinstance(spec, Mapping) or not spec or set(spec) - SPEC_KEYS:
            raise InterventionError(f"interventions[{name!r}] = {spec!r}: a spec is a function or a mapping with "
                                    f"'units' and one of 'scale', 'set', 'zero', or 'add' (keys {sorted(SPEC_KEYS)})")
        actions = [k for k in ("scale", "set", "zero", "add") if k in spec]
        if len(actions) != 1:
            raise InterventionError(f"interventions[{name!r}]: give exactly one of scale / set / zero / add, not {actions}")
        if actions[0] != "add" and "units" not in spec:
            raise InterventionError(f"interventions[{name!r}]: {actions[0]!r} needs 'units' (indices on the last axis)")
        if actions[0] == "add" and "units" in spec:
            raise InterventionError(f"interventions[{name!r}]: 'add' takes a vector broadcast to the tensor, not 'units' "
                                    "(put zeros where nothing is added)")
        if actions[0] == "zero" and spec["zero"] is not True:
            raise InterventionError(f"interventions[{name!r}]: 'zero' must be True, not {spec['zero']!r} "
                                    "(leave the intervention out to keep the units)")


def edited(graph: Graph, interventions: Mapping, shapes: Mapping[str, tuple], dtypes: Mapping[str, np.dtype]) -> Graph:
    """A copy of ``graph`` with each intervention's node inserted after its tensor. ``shapes``/``dtypes``:
    the intervened tensors' runtime shapes and dtypes (for the unit masks)."""
    nodes, inits, inputs = list(graph.nodes), dict(graph.initializers), graph.input_names
    for name, spec in interventions.items():
        before = f"{name}/before intervention"
        new, consts = _inserted(name, before, spec, shapes[name], dtypes[name])
        if name in inputs or name in graph.initializers:
            # the tensor is fed or constant: its readers read the intervened copy instead
            after = f"{name}/intervened"
            new = [_renamed_output(n, name, after) for n in new]
            new = [_renamed_input(n, before, name) for n in new]
            nodes = [_renamed_input(n, name, after) for n in nodes]
        else:
            nodes = [_renamed_output(n, name, before) for n in nodes]
        nodes += new
        inits.update(consts)
    return Graph.build(nodes, graph.inputs, graph.outputs, inits, graph.opset, graph.metadata, graph.opsets,
                       graph.expansions, graph.value_info, graph.defaults)


def _inserted(name: str, source: str, spec, shape: tuple, dtype) -> tuple[list[Node], dict]:
    """The node(s) computing ``name`` from ``source`` under ``spec``, and their constants."""
    tag = f"intervention on {name}"
    if callable(spec):
        return [Node(tag, "Apply", "reflrp", (source,), (name,), {"fn": spec, "tensor": name})], {}
    if "add" in spec:
        vector = _numbers(name, "add", spec["add"], dtype)
        try:
            np.broadcast_shapes(tuple(shape), vector.shape)
        except ValueError:
            raise InterventionError(f"interventions[{name!r}]: 'add' of shape {vector.shape} does not broadcast to "
                                    f"the tensor's shape {tuple(shape)}") from None
        return [Node(tag, "Add", "", (source, f"{tag}/add"), (name,), {})], {f"{tag}/add": vector}
    mask_shape, index = _unit_mask(name, spec, shape)
    if "scale" in spec:
        m = np.ones(mask_shape, dtype=dtype)
        m[index] = _per_unit(name, "scale", spec["scale"], len(index[axis_of(index)]), dtype)
        return [Node(tag, "Mul", "", (source, f"{tag}/scale"), (name,), {})], {f"{tag}/scale": m}
    chosen = np.zeros(mask_shape, dtype=bool)
    chosen[index] = True
    value = np.zeros(mask_shape, dtype=dtype)
    if "set" in spec:
        value[index] = _per_unit(name, "set", spec["set"], len(index[axis_of(index)]), dtype)
    return ([Node(tag, "Where", "", (f"{tag}/units", f"{tag}/value", source), (name,), {})],
            {f"{tag}/units": chosen, f"{tag}/value": value})


def _unit_mask(name: str, spec, shape: tuple):
    """The shape of a per-unit constant along the spec's axis (broadcast over the others) and the index."""
    rank = len(shape)
    axis = spec.get("axis", -1)
    if not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
        raise InterventionError(f"interventions[{name!r}]: axis {axis!r} is out of range for a rank-{rank} tensor")
    axis %= rank
    n = shape[axis]
    units = np.asarray(spec["units"]).reshape(-1)
    if units.size == 0:
        raise InterventionError(f"interventions[{name!r}]: 'units' is empty (axis {axis} has {n} units)")
    if units.dtype.kind not in "iu" or units.min() < -n or units.max() >= n:
        raise InterventionError(f"interventions[{name!r}]: units {units.tolist()} must be integers in -{n}..{n - 1} "
                                f"(axis {axis} has {n} units)")
    mask_shape = tuple(n if i == axis else 1 for i in range(rank))
    index = tuple(units % n if i == axis else 0 for i in range(rank))
    return mask_shape, index


def axis_of(index: tuple) -> int:
    """The axis of a unit index from :func:`_unit_mask` (the one entry that is an array)."""
    return next(i for i, part in enumerate(index) if isinstance(part, np.ndarray))


def _numbers(name: str, key: str, value, dtype) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InterventionError(f"interventions[{name!r}]: {key!r} must be numbers, not {value!r}") from None
    return out


def _per_unit(name: str, key: str, value, count: int, dtype) -> np.ndarray:
    """A number, or one number per chosen unit."""
    out = _numbers(name, key, value, dtype)
    if out.ndim > 1 or (out.ndim == 1 and out.size != count):
        raise InterventionError(f"interventions[{name!r}]: {key!r} is one number or one per unit ({count} units), "
                                f"not shape {out.shape}")
    return out


def _renamed_output(node: Node, old: str, new: str) -> Node:
    if old not in node.outputs:
        return node
    return Node(node.name, node.op_type, node.domain, node.inputs, tuple(new if o == old else o for o in node.outputs),
                node.attrs)


def _renamed_input(node: Node, old: str, new: str) -> Node:
    if old not in node.inputs:
        return node
    return Node(node.name, node.op_type, node.domain, tuple(new if i == old else i for i in node.inputs), node.outputs,
                node.attrs)


def apply_function(xp, x, fn: Callable, tensor: str):
    """The ``Apply`` kernel: ``fn(x)``, which must keep the shape."""
    y = xp.asarray(fn(x))
    if y.shape != x.shape:
        raise InterventionError(f"interventions[{tensor!r}]: the function changed the shape {x.shape} to {y.shape}")
    return y.astype(x.dtype, copy=False)
