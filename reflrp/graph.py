"""The frozen graph IR: values, nodes, initializers, the opsets and the record of import-time rewrites.

Only :mod:`reflrp.onnx_import` builds it from ONNX; everything else reads it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .errors import GraphError


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element dtype and shape (ints, symbolic names or None)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name}: {self.dtype} {dims}"


@dataclass(frozen=True, eq=False)
class Node:
    """One ONNX node. ``inputs`` keeps ``""`` for omitted optional inputs; attributes are decoded."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]

    def label(self) -> str:
        op = self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"
        return f"node {self.name!r} ({op})"


@dataclass(frozen=True)
class Expansion:
    """An imported node rewritten into core ops at load: the original node and the names of its
    replacement nodes (each prefixed with the original's name)."""

    original: Node
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    """A model graph (or a control-flow op's subgraph) in topological order. Immutable once built."""

    nodes: tuple[Node, ...]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    initializers: Mapping[str, np.ndarray]
    opset: int
    producer: Mapping[str, Node] = field(repr=False)
    consumers: Mapping[str, tuple[Node, ...]] = field(repr=False)
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False)  # ONNX metadata_props
    opsets: Mapping[str, int] = field(default_factory=dict, repr=False)  # every imported domain's version
    expansions: Mapping[str, Expansion] = field(default_factory=dict, repr=False)  # by original node name
    value_info: Mapping[str, ValueInfo] = field(default_factory=dict, repr=False)  # the model's recorded types
    defaults: frozenset = frozenset()  # initializers also listed as graph inputs: feeds may override them
    # a subgraph (If / Loop / Scan body): the enclosing scope's values it reads, listed last among its
    # inputs; the node holding it takes them as extra trailing inputs, in this order
    outer: tuple[str, ...] = ()

    @functools.cached_property
    def tensor_names(self) -> frozenset:
        """Every tensor of the graph: its inputs, its initializers and every node output."""
        return frozenset(self.input_names) | frozenset(self.initializers) | {
            o for n in self.nodes for o in n.outputs if o}

    @classmethod
    def build(cls, nodes, inputs, outputs, initializers, opset, metadata=None, opsets=None,
              expansions=None, value_info=None, defaults=frozenset(), outer=()) -> "Graph":
        ordered = topological_order(nodes, {v.name for v in inputs} | set(initializers))
        producer = {out: n for n in ordered for out in n.outputs if out}
        consumers: dict[str, list[Node]] = {}
        for n in ordered:
            for name in dict.fromkeys(i for i in n.inputs if i):
                consumers.setdefault(name, []).append(n)
        for out in outputs:
            if out.name not in producer and out.name not in initializers and out.name not in {v.name for v in inputs}:
                raise GraphError(f"graph output {out.name!r} is produced by no node")
        return cls(tuple(ordered), tuple(inputs), tuple(outputs), MappingProxyType(dict(initializers)), opset,
                   MappingProxyType(producer), MappingProxyType({k: tuple(v) for k, v in consumers.items()}),
                   MappingProxyType(dict(metadata or {})), MappingProxyType(dict(opsets or {"": opset})),
                   MappingProxyType(dict(expansions or {})), MappingProxyType(dict(value_info or {})),
                   frozenset(defaults), tuple(outer))

    def overriding(self, names) -> "Graph":
        """This graph with the overridable initializers ``names`` turned into graph inputs."""
        names = [n for n in self.defaults if n in set(names)]
        extra = tuple(ValueInfo(n, self.initializers[n].dtype, tuple(self.initializers[n].shape)) for n in names)
        kept = {k: v for k, v in self.initializers.items() if k not in names}
        return Graph.build(self.nodes, self.inputs + extra, self.outputs, kept, self.opset, self.metadata,
                           self.opsets, self.expansions, self.value_info, self.defaults - set(names))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.outputs)


def captured(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The enclosing values a node's subgraph attributes read (anything with ``.outer``), in the order the
    node takes them as trailing inputs: by attribute name, then each subgraph's own order."""
    return tuple(dict.fromkeys(n for _, v in sorted(attrs.items()) if hasattr(v, "outer") for n in v.outer))


def topological_order(nodes, available: set[str]) -> list[Node]:
    """Order ``nodes`` so every input is produced before use (Kahn's algorithm, stable).

    Raises :class:`GraphError` naming a node on a cycle, or a node whose input nobody produces.
    """
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for out in n.outputs:
            if out and out in producer:
                raise GraphError(f"tensor {out!r} is produced by two nodes: {nodes[producer[out]].label()} and "
                                 f"{n.label()} (ONNX is single-assignment)")
            if out and out in available:
                raise GraphError(f"{n.label()} writes {out!r}, which is already a graph input or initializer")
            if out:
                producer[out] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in dict.fromkeys(x for x in n.inputs if x):
            if name in producer:
                waiting[i] += 1
                users.setdefault(producer[name], []).append(i)
            elif name not in available:
                raise GraphError(f"{n.label()} reads {name!r}, which is no graph input, initializer "
                                 "or node output (a missing initializer?)")
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    ready.reverse()
    order: list[Node] = []
    while ready:
        i = ready.pop()
        order.append(nodes[i])
        for j in reversed(users.get(i, [])):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        stuck = [nodes[i] for i in range(len(nodes)) if waiting[i] > 0]
        raise GraphError(f"the graph has a cycle through {stuck[0].label()} "
                         f"({len(stuck)} nodes cannot be ordered)")
    return order
