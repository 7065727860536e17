"""Control flow: If, Loop and Scan run their subgraphs in a sub-interpreter.

A subgraph is a :class:`reflrp.graph.Graph` decoded at import; the values of the enclosing scope it
reads (``graph.outer``) are extra trailing inputs of its node, so the forward loop, the taint pass and
the liveness of tensors see them like any other input. Under a float policy the subgraph runs under the
same policy. These ops have no adjoint and no relevance rule: an If whose condition is known at load is
folded into its branch (reflrp.canonical.control); explaining through one decided at run time is an error
naming the node.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..graph import Graph, captured
from . import kernel
from . import kinds as K


class Body:
    """A subgraph under one float policy, prepared on first use per array namespace (one per step)."""

    def __init__(self, graph: Graph, policy):
        self.graph, self.policy = graph, policy
        self._prepared: dict = {}

    @property
    def outer(self) -> tuple[str, ...]:
        return self.graph.outer

    def run(self, xp, values) -> list:
        """The subgraph's outputs for ``values``: its own inputs, then the enclosing ones it reads."""
        from ..interpreter import execute, prepare
        if xp.__name__ not in self._prepared:
            self._prepared[xp.__name__] = prepare(self.graph, self.policy, xp)
        out = execute(self._prepared[xp.__name__], self.graph, dict(zip(self.graph.input_names, values)))
        return [out[n] for n in self.graph.output_names]


def bodies(attrs, policy, node):
    """Subgraph attributes as :class:`Body` objects under the float ``policy``."""
    return {k: Body(v, policy) if isinstance(v, Graph) else v for k, v in attrs.items()}


def split_captured(args, **subgraphs):
    """(the node's own inputs, name -> value of the enclosing values its subgraphs read): those are the
    trailing inputs, in :func:`reflrp.graph.captured`'s order."""
    names = captured(subgraphs)
    own = args[:len(args) - len(names)]
    return list(own), dict(zip(names, args[len(own):]))


def flag(x) -> bool:
    """The value of a one-element condition (on the host: the branch is chosen there)."""
    return bool(to_numpy(x).reshape(-1)[0])


@kernel("If", kind=K.CONTROL, decode_attrs=bodies)
def If(xp, *args, then_branch, else_branch):
    """The outputs of ``then_branch`` if the one-element ``cond`` holds, else of ``else_branch``."""
    (cond,), outer = split_captured(args, then_branch=then_branch, else_branch=else_branch)
    branch = then_branch if flag(cond) else else_branch
    return tuple(branch.run(xp, [outer[n] for n in branch.outer]))


def stacked(xp, pieces: list, like, reverse: bool = False):
    """Per-iteration outputs stacked on a new leading axis (empty: shape (0,) in the declared type)."""
    if not pieces:
        return xp.zeros((0,), dtype=like.dtype if like is not None and like.dtype is not None else np.float32)
    return xp.stack(pieces[::-1] if reverse else pieces)


@kernel("Loop", kind=K.CONTROL, decode_attrs=bodies)
def Loop(xp, *args, body):
    """``for i in range(M) while cond: cond, v, scan = body(i, cond, v)`` (M, cond optional); returns the
    final loop-carried values ``v``, then each scan output stacked over the iterations."""
    own, outer = split_captured(args, body=body)
    M, cond, state = own[0], own[1], own[2:]
    captured = [outer[n] for n in body.outer]
    trips = None if M is None else int(to_numpy(M).reshape(-1)[0])
    going = True if cond is None else flag(cond)
    scans: list[list] = [[] for _ in range(len(body.graph.outputs) - 1 - len(state))]
    i = 0
    while going and (trips is None or i < trips):
        out = body.run(xp, [xp.asarray(np.int64(i)), xp.asarray(np.bool_(going))] + state + captured)
        going, state = flag(out[0]), out[1:1 + len(state)]
        for pieces, value in zip(scans, out[1 + len(state):]):
            pieces.append(value)
        i += 1
    declared = body.graph.outputs[1 + len(state):]
    return tuple(state) + tuple(stacked(xp, p, d) for p, d in zip(scans, declared))


def scan_steps(xp, body, state, sequences, captured, length: int):
    """Run ``body`` over ``length`` steps: step t reads ``sequences[j][t]``; returns the final state and,
    per scan output, the list of its values."""
    n = len(state)
    scans: list[list] = [[] for _ in range(len(body.graph.outputs) - n)]
    for t in range(length):
        out = body.run(xp, list(state) + [s[t] for s in sequences] + captured)
        state = out[:n]
        for pieces, value in zip(scans, out[n:]):
            pieces.append(value)
    return list(state), scans


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@kernel("Scan", since=9, kind=K.CONTROL, decode_attrs=bodies)
def Scan(xp, *args, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    """``state, y_t = body(state, x_t)`` for t along each scan input's axis (forward or reverse); returns
    the final state, then each ``y`` stacked along its output axis (appended or prepended)."""
    own, outer = split_captured(args, body=body)
    m = int(num_scan_inputs)
    state, xs = own[:len(own) - m], own[len(own) - m:]
    in_axes = list(scan_input_axes or [0] * m)
    in_dirs = list(scan_input_directions or [0] * m)
    sequences = []
    for x, axis, reverse in zip(xs, in_axes, in_dirs):
        s = xp.moveaxis(x, _axis(axis, x.ndim), 0)
        sequences.append(s[::-1] if reverse else s)
    length = sequences[0].shape[0] if sequences else 0
    final, scans = scan_steps(xp, body, state, sequences, [outer[n] for n in body.outer], length)
    k = len(scans)
    out_axes, out_dirs = list(scan_output_axes or [0] * k), list(scan_output_directions or [0] * k)
    declared = body.graph.outputs[len(state):]
    ys = []
    for pieces, axis, reverse, d in zip(scans, out_axes, out_dirs, declared):
        y = stacked(xp, pieces, d, bool(reverse))
        ys.append(xp.moveaxis(y, 0, _axis(axis, y.ndim)))
    return tuple(final) + tuple(ys)


@kernel("Scan", since=8)
def Scan_8(xp, *args, body, num_scan_inputs, directions=None):
    """Scan-8: every input has a leading batch axis and scans along axis 1; ``sequence_lens`` (first
    input, optional) gives each batch row's length."""
    own, outer = split_captured(args, body=body)
    lens, rest = own[0], own[1:]
    m = int(num_scan_inputs)
    state, xs = rest[:len(rest) - m], rest[len(rest) - m:]
    dirs = list(directions or [0] * m)
    captured = [outer[n] for n in body.outer]
    finals, outputs = [], []
    for b in range(xs[0].shape[0] if xs else state[0].shape[0]):
        length = int(to_numpy(lens)[b]) if lens is not None else xs[0].shape[1]
        sequences = [x[b, :length][::-1] if reverse else x[b, :length] for x, reverse in zip(xs, dirs)]
        final, scans = scan_steps(xp, body, [s[b] for s in state], sequences, captured, length)
        finals.append(final)
        outputs.append([stacked(xp, p, None) for p in scans])
    per_state = [xp.stack([f[i] for f in finals]) for i in range(len(state))]
    return tuple(per_state) + tuple(xp.stack([o[j] for o in outputs]) for j in range(len(outputs[0]) if outputs else 0))
