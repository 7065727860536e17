"""``reflrp.load`` and the :class:`Model` it returns."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import onnx_import
from .backend import float_policy, namespace
from .graph import Graph
from .interpreter import Prepared, check_feeds, execute, prepare
from .memory import apply_allocator_policy


class Model:
    """A loaded ONNX model: the frozen graph plus prepared forward plans, cached per dtype and device."""

    def __init__(self, graph: Graph, source: str = "<model>"):
        self.graph = graph
        self.source = source
        self._prepared: dict[tuple, Prepared] = {}
        self._plans: dict[tuple, object] = {}

    def __repr__(self) -> str:
        return (f"Model({self.source!r}, opset {self.graph.opset}, {len(self.graph.nodes)} nodes, "
                f"inputs {[v.describe() for v in self.graph.inputs]})")

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.graph.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.graph.output_names

    def prepared(self, dtype: Any = None, xp: Any = np) -> Prepared:
        """The forward plan for float policy ``dtype`` on namespace ``xp`` (built once, then cached)."""
        policy = float_policy(dtype)
        key = (None if policy is None else policy.str, xp.__name__)
        if key not in self._prepared:
            self._prepared[key] = prepare(self.graph, policy, xp)
        return self._prepared[key]

    def run(self, feeds: Mapping[str, Any], dtype: Any = None, keep=(), device: str | None = None,
            allow_nan: bool = False) -> dict:
        """Run the forward pass.

        Parameters
        ----------
        feeds : mapping of graph input name to array (numpy, or cupy for a GPU run).
        dtype : None keeps the model's float types; ``"float64"`` upcasts every float initializer,
            constant, cast and feed so the whole model runs in float64 (the reference mode).
        keep : names of intermediate tensors to return besides the graph outputs.
        device : None / ``"cpu"`` (numpy unless the feeds are cupy arrays) or ``"cuda"`` (cupy).
        allow_nan : deprecated and ignored: NaN and +-inf feeds run, as in onnxruntime.

        Returns
        -------
        dict of tensor name to array, graph outputs first.
        """
        apply_allocator_policy()
        xp = namespace(device, feeds.values())
        prep = self.prepared(dtype, xp)
        return execute(prep, self.graph, check_feeds(self.graph, feeds, prep.policy, xp, allow_nan), keep)


    def plan(self, preset: str = "attnlrp", epsilon: float | None = None, wrt=None, rules: dict | None = None):
        """The rule of every node under ``preset`` (a :class:`reflrp.analysis.Plan`; print it for a table)."""
        from .analysis import build_plan, default_wrt
        from .presets import EPSILON
        eps = EPSILON.get(preset, 0.0) if epsilon is None else float(epsilon)
        wrt = tuple(wrt) if wrt is not None else default_wrt(self.graph)
        key = (preset, eps, wrt, tuple(sorted((rules or {}).items())))
        if key not in self._plans:
            self._plans[key] = build_plan(self.graph, preset, eps, wrt, rules)
        return self._plans[key]


def load(source: Any) -> Model:
    """Load an ONNX model from a path, bytes or ``onnx.ModelProto``.

    Raises :class:`reflrp.ModelLoadError` for unreadable input, :class:`reflrp.UnsupportedOpError`
    for ops reflrp cannot run (naming node, op, domain and opset) and :class:`reflrp.GraphError`
    for cycles, missing initializers and undefined tensors.
    """
    proto, base = onnx_import.read_model(source)
    graph = onnx_import.to_graph(proto, base)
    refuse_unsupported_nodes(graph)  # at load, not at the first run
    name = str(source) if isinstance(source, (str,)) or hasattr(source, "__fspath__") else "<model>"
    return Model(graph, name)


def refuse_unsupported_nodes(graph: Graph) -> None:
    """One :class:`UnsupportedOpError` listing every node reflrp cannot run, grouped by op and domain."""
    from .errors import UnsupportedOpError
    from .ops import supported_ops
    kernels = supported_ops()
    groups: dict[tuple[str, str, str], list[str]] = {}
    for node in graph.nodes:
        why = _why_unsupported(node, graph.opset, kernels)
        if why:
            groups.setdefault((node.domain, node.op_type, why), []).append(node.name)
    if not groups:
        return
    count = sum(len(v) for v in groups.values())
    lines = [f"{count} node(s) of this opset-{graph.opset} model cannot run in reflrp:"]
    for (domain, op, why), names in sorted(groups.items()):
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(f"  {op} (domain {domain!r}), {len(names)} node(s) {shown}: {why}")
    lines.append(f"Supported ops (default domain): {', '.join(kernels)}")
    raise UnsupportedOpError("\n".join(lines))


def _why_unsupported(node, opset: int, kernels: Mapping[str, tuple[int, ...]]) -> str | None:
    from .onnx_import import UndecodedAttribute
    if node.domain:
        return f"domain {node.domain!r} is not run by reflrp (the default ONNX domain only)"
    if node.op_type not in kernels:
        return f"no kernel in reflrp (opset {opset})"
    if opset < kernels[node.op_type][0]:
        return f"reflrp's kernel starts at opset {kernels[node.op_type][0]}, the model uses opset {opset}"
    undecoded = [v.reason for v in node.attrs.values() if isinstance(v, UndecodedAttribute)]
    return "; ".join(undecoded) or None
