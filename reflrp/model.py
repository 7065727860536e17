"""``reflrp.load``, the :class:`Model` it returns, and an onnxruntime-style :class:`InferenceSession`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from . import onnx_import
from .backend import float_policy, namespace
from .canonical import batchnorm, canonicalize, supported_rewrites
from .errors import FeedError, ReflrpError, UnsupportedOpError
from .graph import Graph
from .interpreter import Prepared, check_feeds, execute, prepare
from .ops import resolve


class Model:
    """A loaded ONNX model: the frozen graph plus prepared forward plans, cached per dtype, device and
    speed layer, and relevance plans, cached per preset and options."""

    def __init__(self, graph: Graph, source: str = "<model>", digest: str | None = None):
        self.graph = graph
        self.source = source
        self.sha256 = digest  # of the model bytes, when loaded from a file or bytes
        self._prepared: dict[tuple, Prepared] = {}
        self._plans: dict[tuple, object] = {}
        self._variants: dict[frozenset, "Model"] = {}
        self._intervened: dict[tuple, "Model"] = {}
        self._facts: dict[str, tuple] = {}  # tensor -> (shape, dtype) seen in a run, for intervention masks
        self._wrt: tuple[str, ...] | None = None  # the default wrt, once worked out

    def intervened(self, interventions, feeds, dtype: Any = None) -> "Model":
        """This model with ``interventions`` (reflrp.interventions) inserted; built once per spec set and
        float policy ``dtype`` (the inserted constants of a float tensor take it, so a float64 run uses the
        given scales and values unrounded)."""
        from . import interventions as iv
        if not interventions:
            return self
        iv.check_specs(self.graph, interventions)
        policy = float_policy(dtype)
        key = (iv.key_of(interventions), None if policy is None else policy.str)
        if key not in self._intervened:
            self._learn_facts([n for n in interventions if n not in self._facts], feeds)
            shapes = {n: self._facts[n][0] for n in interventions}
            dtypes = {n: policy if policy is not None and self._facts[n][1].kind == "f" else self._facts[n][1]
                      for n in interventions}
            graph = iv.edited(self.graph, interventions, shapes, dtypes)
            self._intervened[key] = Model(graph, self.source, self.sha256)
        return self._intervened[key]

    def _learn_facts(self, names, feeds) -> None:
        """Shapes and dtypes of ``names`` in a plain run on ``feeds`` (inputs and constants directly)."""
        inner = [n for n in names if n not in self.graph.initializers and n not in self.graph.input_names]
        out = self.run(feeds, intermediates=inner) if inner else {}
        for n in names:
            value = feeds[n] if n in self.graph.input_names else self.graph.initializers.get(n, out.get(n))
            value = np.asarray(value)
            self._facts[n] = (tuple(value.shape), value.dtype)

    def for_feeds(self, feeds) -> "Model":
        """This model, or (when ``feeds`` override initializers the model lists as inputs, IR >= 4) the
        variant where those initializers are graph inputs."""
        overridden = frozenset(n for n in feeds if n in self.graph.defaults) if self.graph.defaults else frozenset()
        if not overridden:
            return self
        if overridden not in self._variants:
            self._variants[overridden] = Model(self.graph.overriding(overridden), self.source, self.sha256)
        return self._variants[overridden]

    def __repr__(self) -> str:
        return (f"Model({self.source!r}, opset {self.graph.opset}, {len(self.graph.nodes)} nodes, "
                f"inputs {[v.describe() for v in self.graph.inputs]})")

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.graph.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.graph.output_names

    def prepared(self, dtype: Any = None, xp: Any = np, fast: bool = True) -> Prepared:
        """The forward plan for float policy ``dtype`` on namespace ``xp`` (built once, then cached)."""
        policy = float_policy(dtype)
        key = (None if policy is None else policy.str, xp.__name__, fast)
        if key not in self._prepared:
            self._prepared[key] = prepare(self.graph, policy, xp, fast)
        return self._prepared[key]

    def run(self, feeds: Mapping[str, Any], dtype: Any = None, intermediates=(), device: str | None = None,
            fast: bool | None = None, interventions: Mapping | None = None) -> dict:
        """Run the forward pass.

        Parameters
        ----------
        feeds : mapping of graph input name to array (numpy, or cupy for a GPU run).
        dtype : None keeps the model's float types; ``"float64"`` upcasts every float initializer,
            constant, cast and feed so the whole model runs in float64 (the reference mode).
        intermediates : names of inner tensors to return besides the graph outputs.
        device : None / ``"cpu"`` (numpy unless the feeds are cupy arrays) or ``"cuda"`` (cupy).
        fast : the speed layer (reflrp.fast); None: on unless ``REFLRP_FAST=0``. Same numbers.
        interventions : ``{tensor name: spec}`` changes chosen units of tensors where they are produced
            (reflrp.interventions: scale / set / zero / add, or a function).

        Returns
        -------
        dict of tensor name to array, graph outputs first.
        """
        if feeds is None or not isinstance(feeds, Mapping):
            raise FeedError(_run_usage(feeds, dtype))
        model = self.for_feeds(feeds)
        if interventions:
            model = model.intervened(interventions, feeds, dtype)
        return model._run(feeds, dtype, intermediates, device, fast)

    def _run(self, feeds, dtype, intermediates, device, fast) -> dict:
        from . import fast as fast_layer
        from .memory import reuse_during_call
        from .options import names
        xp = namespace(device, feeds.values())
        fast = fast_layer.enabled(fast)
        prep = self.prepared(dtype, xp, fast)
        names(self.graph, intermediates, "intermediates")
        with reuse_during_call() if fast else nullcontext():
            return execute(prep, self.graph, check_feeds(self.graph, feeds, prep.policy, xp, allow_nan=True),
                           intermediates)

    def plan(self, preset: str = "attnlrp", epsilon: float | None = None, wrt=None, rules: dict | None = None,
             options: dict | None = None):
        """The rule of every node under ``preset`` (a :class:`reflrp.analysis.Plan`; print it for a table).
        ``options``: rule parameters (see :func:`reflrp.explain`)."""
        from . import options as checks
        from .analysis import build_plan
        chosen = checks.preset(preset)
        opts = checks.rule_options(options)
        if "epsilon" in opts:  # the same epsilon as the argument
            if epsilon is not None and checks.epsilon(epsilon, 0.0) != opts["epsilon"]:
                raise ReflrpError(f"epsilon={epsilon!r} and options['epsilon']={opts['epsilon']!r} differ: give one")
            epsilon = opts.pop("epsilon")
        eps = checks.epsilon(epsilon, chosen.epsilon)
        wrt = checks.names(self.graph, wrt, "wrt")
        if wrt is not None and not wrt:
            raise ReflrpError("wrt= is empty: name the tensors to attribute to, or pass None for the default")
        wrt = wrt or self._default_wrt()
        if not wrt:
            raise ReflrpError(f"the model has no float input or embedding output to attribute to; pass wrt=[...] "
                              f"(inputs: {[v.describe() for v in self.graph.inputs]})")
        overrides = checks.resolve_overrides(self.graph, rules)
        if not isinstance(preset, str):  # a composite made by the caller: planned afresh
            return build_plan(self.graph, chosen, eps, wrt, overrides, opts)
        key = (preset, eps, wrt, checks.frozen(overrides), checks.frozen(opts))
        if key not in self._plans:
            self._plans[key] = build_plan(self.graph, chosen, eps, wrt, overrides, opts)
        return self._plans[key]


    def _default_wrt(self) -> tuple[str, ...]:
        """:func:`reflrp.analysis.default_wrt` of the graph, worked out once (it walks every node)."""
        if self._wrt is None:
            from .analysis import default_wrt
            self._wrt = default_wrt(self.graph)
        return self._wrt


def _run_usage(feeds, second) -> str:
    if feeds is None and isinstance(second, Mapping):
        return ("Model.run takes the feeds first: model.run({name: array}) (onnxruntime's "
                "session.run(None, feeds) habit? use reflrp.InferenceSession(path).run(None, feeds))")
    return f"feeds must be a mapping of graph input name to array, not {type(feeds).__name__}"


def load(source: Any, fold_batchnorm: bool = False) -> Model:
    """Load an ONNX model from a path, bytes or ``onnx.ModelProto``.

    Fused and contrib ops (com.microsoft, onnxruntime's own default-domain ops) are rewritten into
    core ONNX ops first (:func:`reflrp.canonical.canonicalize`); ``model.graph.expansions`` records
    each rewritten node. ``fold_batchnorm=True`` merges every inference BatchNormalization into the
    Conv / ConvTranspose / Gemm that feeds it (Zennit's MergeBatchNorm canonizer; the fold is computed
    in the precision of each run, see :mod:`reflrp.canonical.batchnorm`).

    Raises :class:`reflrp.ModelLoadError` for unreadable input, :class:`reflrp.UnsupportedOpError`
    for ops reflrp cannot run (naming node, op, domain and opset) and :class:`reflrp.GraphError`
    for cycles, missing initializers and undefined tensors.
    """
    proto, base, sha256 = onnx_import.read_model(source)
    graph = canonicalize(onnx_import.to_graph(proto, base))
    if not isinstance(fold_batchnorm, bool):
        raise ReflrpError(f"fold_batchnorm must be True or False, not {fold_batchnorm!r}")
    if fold_batchnorm:
        graph = batchnorm.fold_batchnorm(graph)
    refuse_unsupported_nodes(graph)  # at load, not at the first run
    name = str(source) if isinstance(source, (str,)) or hasattr(source, "__fspath__") else "<model>"
    return Model(graph, name, sha256)


class _ValueInfo:
    """What onnxruntime's ``NodeArg`` tells: name, shape and type (``tensor(float)``)."""

    def __init__(self, info):
        self.name, self.shape = info.name, list(info.shape) if info.shape is not None else None
        self.type = f"tensor({_ORT_TYPE.get(str(info.dtype), str(info.dtype))})"

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape})"


_ORT_TYPE = {"float32": "float", "float64": "double", "int64": "int64", "int32": "int32", "bool": "bool",
             "float16": "float16", "uint8": "uint8", "int8": "int8"}


class InferenceSession:
    """reflrp's forward with onnxruntime's interface, so test suites written for onnxruntime can swap it
    in: ``InferenceSession(path).run(output_names, input_feed) -> list of arrays``.

    ``providers``: onnxruntime's names; ``"CPUExecutionProvider"`` runs on NumPy,
    ``"CUDAExecutionProvider"`` (first in the list) on CuPy; any other name is an error.
    ``sess_options`` / ``run_options`` are accepted as onnxruntime objects (or None): they tune
    onnxruntime's own execution (threads, graph optimisation, logging), none of which exists in
    reflrp's interpreter, and none changes a number. Any other keyword is an error."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **unknown):
        if unknown:
            raise ReflrpError(f"InferenceSession: unknown argument(s) {', '.join(sorted(unknown))} (reflrp takes "
                              f"path_or_bytes, sess_options, providers, provider_options)")
        self.device = _device_of(providers)
        if provider_options is not None and (not isinstance(provider_options, Sequence) or any(provider_options)):
            raise ReflrpError("InferenceSession: provider_options are not supported by reflrp (give None or empty "
                              "dicts); the device is chosen by providers=")
        self.model = path_or_bytes if isinstance(path_or_bytes, Model) else load(path_or_bytes)

    def get_inputs(self):
        return [_ValueInfo(v) for v in self.model.graph.inputs]

    def get_outputs(self):
        return [_ValueInfo(v) for v in self.model.graph.outputs]

    def get_providers(self):
        return ["CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"]

    def run(self, output_names, input_feed, run_options=None) -> list:
        if not isinstance(input_feed, Mapping):
            raise FeedError(f"InferenceSession.run(output_names, input_feed): input_feed must be a mapping "
                            f"of input name to array, not {type(input_feed).__name__}")
        wanted = list(output_names) if output_names else list(self.model.output_names)
        extra = [n for n in wanted if n not in self.model.output_names]
        out = self.model.run(input_feed, intermediates=extra, device=self.device)
        return [out[n] for n in wanted]


_PROVIDERS = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}


def _device_of(providers) -> str:
    """The device of onnxruntime's ``providers`` list: its first entry (a name or a (name, options) pair)."""
    if providers is None or len(providers) == 0:
        return "cpu"
    if isinstance(providers, str):  # one name, where onnxruntime wants a list of them
        providers = [providers]
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    if any(isinstance(p, (tuple, list)) and len(p) > 1 and p[1] for p in providers):
        raise ReflrpError("InferenceSession: provider options are not supported by reflrp (give the names only)")
    bad = [n for n in names if n not in _PROVIDERS]
    if bad:
        raise ReflrpError(f"InferenceSession: providers {bad} are not available in reflrp (it has "
                          f"{', '.join(_PROVIDERS)})")
    return _PROVIDERS[names[0]]


def refuse_unsupported_nodes(graph: Graph) -> None:
    """One :class:`UnsupportedOpError` listing every node reflrp cannot run, grouped by op and domain."""
    from .errors import UnsupportedOpError
    from .ops import supported_ops
    kernels = supported_ops()
    groups: dict[tuple[str, str, str], list[str]] = {}
    for node, where in _every_node(graph):
        why = _why_unsupported(node, graph.opset, kernels, graph.opsets)
        if why:
            groups.setdefault((node.domain, node.op_type, why), []).append(where + node.name)
    if not groups:
        return
    count = sum(len(v) for v in groups.values())
    lines = [f"{count} node(s) of this opset-{graph.opset} model cannot run in reflrp:"]
    for (domain, op, why), names in sorted(groups.items()):
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(f"  {op} (domain {domain!r}), {len(names)} node(s) {shown}: {why}")
    if any(domain for domain, _, _ in groups):
        lines.append("Rewritten into core ops at load: "
                     + ", ".join(f"{d}::{o}" if d else o for d, o in supported_rewrites()))
    lines.append(f"Supported ops (default domain): {', '.join(kernels)}")
    raise UnsupportedOpError("\n".join(lines))


def _every_node(graph: Graph, where: str = ""):
    """(node, where) for the graph's nodes and, recursively, those of its subgraphs (If / Loop / Scan
    bodies; ``where`` names the holding node and attribute)."""
    for node in graph.nodes:
        yield node, where
        for attr, value in node.attrs.items():
            if isinstance(value, Graph):
                yield from _every_node(value, f"{where}{node.name}.{attr}/")


def _why_unsupported(node, opset: int, kernels: Mapping[str, tuple[int, ...]], opset_of=None) -> str | None:
    opset_of = opset_of or {}
    from .onnx_import import UndecodedAttribute
    if node.domain:
        return (f"domain {node.domain!r} (version {opset_of.get(node.domain, '?')}) has no rewrite into core "
                f"ONNX ops in reflrp")
    if node.op_type not in kernels:
        return f"no kernel in reflrp (opset {opset})"
    if opset < kernels[node.op_type][0]:
        return f"reflrp's kernel starts at opset {kernels[node.op_type][0]}, the model uses opset {opset}"
    undecoded = [v.reason for v in node.attrs.values() if isinstance(v, UndecodedAttribute)]
    return "; ".join(undecoded) or None
