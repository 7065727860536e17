"""The forward's shape cache: shape arithmetic and masks that depend only on the feeds' shapes (and
integer values), computed once per input signature instead of at every call."""
from __future__ import annotations

from ..ops import kinds as K
from ..ops import record

MAX_SIGNATURES = 16


class ShapeCache:
    """Outputs of the shape-only steps, per feed signature (bounded: the oldest is forgotten)."""

    def __init__(self, shape_only: frozenset, steps):
        self.n_steps = len(steps)
        self.value_steps = tuple(i for i in range(len(steps)) if i not in shape_only)
        self.outputs = frozenset(n for i in shape_only for n in steps[i].outputs if n)
        self.entries: dict = {}

    @classmethod
    def for_steps(cls, graph, steps, constants) -> "ShapeCache | None":
        """A cache for these steps, or None when there is nothing to cache or float values may turn into
        integers that could become shapes (then a signature would not determine the shape steps)."""
        shape_only, known = set(), set(constants)
        float_dependent = {v.name for v in graph.inputs if v.dtype is not None and v.dtype.kind == "f"}
        for i, step in enumerate(steps):
            rec = record(step.node.op_type)
            if rec.reads_shape_only or all(not n or n in known for n in step.inputs):
                shape_only.add(i)
                known.update(n for n in step.outputs if n)
            elif any(n in float_dependent for n in step.inputs):
                float_dependent.update(n for n in step.outputs if n)
                if rec.kind == K.CONSTANT or (rec.output_is_float is not None and not rec.output_is_float(step.attrs)):
                    return None
        return cls(frozenset(shape_only), steps) if shape_only else None

    @staticmethod
    def signature(feeds: dict) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype.str, v.tobytes() if v.dtype.kind in "iub" else None)
                     for k, v in sorted(feeds.items()))

    def restore(self, env: dict, feeds: dict) -> tuple:
        """Put the cached shape-step outputs for these feeds into ``env``. Returns the steps still to run
        and the tensors to keep alive so that :meth:`remember` can store them (none when cached)."""
        cached = self.entries.get(self.signature(feeds))
        if cached is None:
            return range(self.n_steps), self.outputs
        env.update(cached)
        return self.value_steps, frozenset()

    def remember(self, env: dict, feeds: dict, handed_out: set) -> None:
        """Store this call's shape-step outputs; tensors handed to the caller are copied, so the cache's
        arrays stay as they are."""
        key = self.signature(feeds)
        if key not in self.entries:
            if len(self.entries) >= MAX_SIGNATURES:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = {n: env[n] for n in self.outputs if n in env}
        for n in handed_out & set(self.entries[key]):
            env[n] = env[n].copy()
