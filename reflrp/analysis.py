"""The plan: which tensors are dynamic (taint), which nodes form elementwise regions, which products
are normalizers or gates, and so every node's role and, through a preset, its rule (docs/rules.md).
Every decision comes from the ops' kinds (reflrp.ops.kinds) and the graph's structure."""
from __future__ import annotations

from dataclasses import dataclass, field

from .dtypes import is_float
from .errors import RuleError
from .graph import Graph, Node
from .ops import kinds as K
from .ops import record


@dataclass
class NodePlan:
    """The decision for one node: its role and rule (None: no relevance of its own), dynamic inputs,
    facts the rule needs (``info``) and a note for the plan table."""

    node: Node
    role: str | None
    rule: str | None
    dynamic: tuple[bool, ...]
    info: dict = field(default_factory=dict)
    why: str = ""


@dataclass
class Plan:
    """Rules for every node that a dynamic tensor reaches, in topological order."""

    preset: str
    epsilon: float
    wrt: tuple[str, ...]
    dynamic: frozenset
    nodes: list[NodePlan]

    def table(self) -> str:
        """A readable table: node, op, role, rule, dynamic inputs."""
        rows = [("node", "op", "role", "rule", "dynamic inputs / note")]
        for p in self.nodes:
            dyn = ", ".join(n for n, d in zip(p.node.inputs, p.dynamic) if d)
            rows.append((p.node.name, p.node.op_type, p.role or "-", p.rule or "-",
                         dyn + ("  # " + p.why if p.why else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"preset {self.preset!r}, epsilon {self.epsilon:g}, relevance to {list(self.wrt)}"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def rule_of(self, node_name: str) -> str | None:
        return next((p.rule for p in self.nodes if p.node.name == node_name), None)


def kind_of(node: Node) -> str:
    rec = record(node.op_type)
    return rec.kind if rec is not None else K.NONLINEAR


def _relayout(node: Node | None) -> bool:
    """Does ``node`` only copy or re-lay-out its one data input (Cast, Identity, Reshape, Transpose, ...)?"""
    rec = record(node.op_type) if node is not None else None
    return rec is not None and (rec.kind == K.CAST or rec.relayout)


def default_wrt(graph: Graph) -> tuple[str, ...]:
    """The tensors relevance is attributed to by default: every float graph input, and for token-id
    inputs the output of the embedding Gather that reads them (a Gather from an initializer)."""
    floats = [v.name for v in graph.inputs if v.dtype is not None and is_float(v.dtype)]
    ints = {v.name for v in graph.inputs if v.dtype is not None and v.dtype.kind in "iu"}
    ids = {n for n in ints if "input_ids" in n} or ints
    embeddings = [node.outputs[0] for node in graph.nodes
                  if kind_of(node) == K.MOVE and node.inputs[0] in graph.initializers and len(node.inputs) > 1
                  and _source_input(graph, node.inputs[1]) in ids]
    return tuple(embeddings) + tuple(floats)


def _source_input(graph: Graph, name: str) -> str | None:
    """Follow copy/re-layout nodes (Cast, Reshape, ...) up to a graph input."""
    for _ in range(8):
        if name in graph.input_names:
            return name
        node = graph.producer.get(name)
        if not _relayout(node):
            return None
        name = node.inputs[0]
    return name if name in graph.input_names else None


def carries_relevance(node: Node) -> tuple[bool, ...]:
    """Which outputs of ``node`` can carry relevance when a dynamic tensor reaches it."""
    rec = record(node.op_type)
    if rec is None or rec.kind == K.CONSTANT:
        return (False,) * len(node.outputs)
    if rec.output_is_float is not None and not rec.output_is_float(rec.attrs_for(node)):
        return (False,) * len(node.outputs)
    n = rec.relevant_outputs if rec.relevant_outputs is not None else len(node.outputs)
    return tuple(i < n for i in range(len(node.outputs)))


def taint(graph: Graph, wrt) -> frozenset:
    """The dynamic tensors: those computed from ``wrt`` by nodes whose outputs carry relevance."""
    dynamic = set(wrt)
    for node in graph.nodes:
        if any(i in dynamic for i in node.inputs if i):
            dynamic.update(o for o, c in zip(node.outputs, carries_relevance(node)) if o and c and o not in wrt)
    return frozenset(dynamic)


class GraphView:
    """Topological positions and walks over dynamic edges, for the region and normalizer tests."""

    def __init__(self, graph: Graph, dynamic: frozenset):
        self.g, self.dynamic = graph, dynamic
        self.pos = {n.name: i for i, n in enumerate(graph.nodes)}

    def producer(self, t):
        return self.g.producer.get(t)

    def dyn_inputs(self, node):
        return [i for i in dict.fromkeys(node.inputs) if i and i in self.dynamic]

    def tpos(self, t):
        p = self.producer(t)
        return -1 if p is None else self.pos[p.name]

    def elementwise(self, node) -> bool:
        rec = record(node.op_type)
        return rec is not None and rec.elementwise

    def origin(self, t: str):
        """The node that computed ``t``'s values, looking through copies and re-layouts."""
        p = self.producer(t)
        while _relayout(p) and p.inputs[0] in self.dynamic:
            p = self.producer(p.inputs[0])
        return p


def find_region(view: GraphView, end: Node, limit: int = 64):
    """The elementwise region ending at ``end``: its source tensor and inner nodes, or None.

    The source is the latest tensor that every dynamic path into ``end`` passes through, with only
    elementwise nodes in between, none of whose outputs leaves the region."""
    ancestors, stack = set(), list(view.dyn_inputs(end))
    while stack and len(ancestors) < limit:
        t = stack.pop()
        if t in ancestors:
            continue
        ancestors.add(t)
        p = view.producer(t)
        if p is not None and view.elementwise(p):
            stack.extend(view.dyn_inputs(p))
    for cand in sorted(ancestors, key=view.tpos, reverse=True):
        inner = _dominated_nodes(view, end, cand)
        if inner is None:
            continue
        for node in inner:
            if node is end:
                continue
            for o in node.outputs:
                if o and any(c not in inner for c in view.g.consumers.get(o, ())):
                    return None
                if o in view.g.output_names:
                    return None
        return cand, inner
    return None


def _dominated_nodes(view: GraphView, end: Node, source: str):
    """Nodes between ``source`` and ``end`` if every dynamic path into ``end`` goes elementwise back to
    ``source``."""
    inner = {end}
    stack = list(view.dyn_inputs(end))
    if sum(1 for t in stack if t == source) == len(stack) and len(stack) < 2:
        return None
    seen = set()
    while stack:
        t = stack.pop()
        if t == source or t in seen:
            continue
        seen.add(t)
        p = view.producer(t)
        if p is None or not view.elementwise(p) or not view.dyn_inputs(p):
            return None
        inner.add(p)
        stack.extend(view.dyn_inputs(p))
    return inner


def _copies_of(view: GraphView, t: str) -> set:
    """``t`` and the tensors it is a copy or re-layout of."""
    roots = {t}
    p = view.producer(t)
    while _relayout(p) and len(view.dyn_inputs(p)) == 1:
        t = view.dyn_inputs(p)[0]
        roots.add(t)
        p = view.producer(t)
    return roots


def only_through_reduction(view: GraphView, b: str, a: str) -> bool:
    """True if ``b`` depends on ``a`` and every such dependency passes through a reduction."""
    roots = _copies_of(view, a)
    floor = min(view.tpos(r) for r in roots)
    reached, seen, stack = False, set(), [(b, False)]
    while stack:
        t, reduced = stack.pop()
        if (t, reduced) in seen:
            continue
        seen.add((t, reduced))
        if t in roots:
            if not reduced:
                return False
            reached = True
            continue
        p = view.producer(t)
        if p is None or view.pos[p.name] < floor:
            continue
        rec = record(p.op_type)
        r2 = reduced or (rec is not None and rec.reduces)
        stack.extend((u, r2) for u in view.dyn_inputs(p))
    return reached


def _is_activation_output(view: GraphView, t: str, region_ends: set) -> bool:
    p = view.origin(t)
    return p is not None and (kind_of(p) == K.ACTIVATION or p.name in region_ends)


def _from_softmax(view: GraphView, t: str) -> bool:
    p = view.origin(t)
    return p is not None and kind_of(p) == K.SOFTMAX


def role_of(view: GraphView, node: Node, dyn: tuple[bool, ...], region_ends: set, structure: bool) -> tuple:
    """(role, facts, note) of a node a dynamic tensor reaches, from its kind and the graph around it."""
    kind, n = kind_of(node), sum(dyn)
    simple = {K.ACTIVATION: "activation", K.CAST: "activation", K.SUM: "linear", K.LINEAR: "linear",
              K.ROTARY: "rotary", K.MOVE: "move", K.SELECT: "select", K.LAYERNORM: "layernorm",
              K.RMSNORM: "rmsnorm", K.ATTENTION: "attention", K.NONLINEAR: "nonlinear"}
    if kind == K.SOFTMAX:  # before opset 13 the softmax runs over the flattened trailing axes
        old = view.g.opset < 13
        return "softmax", {"axis": node.attrs.get("axis", 1 if old else -1), "flattened": old}, ""
    if kind in simple:
        return simple[kind], {}, ""
    if kind == K.ELEMENTWISE:
        return ("activation", {}, "") if n == 1 else ("nonlinear", {}, "several dynamic inputs")
    if kind == K.CONTRACTION:
        if n == 1:
            return "linear", {}, ""
        if structure and n == 2 and dyn[:2] == (True, True) and _from_softmax(view, node.inputs[0]):
            return "attention-values", {"values": 1}, "attention weights @ values"
        return "bilinear", {}, ""
    if kind in (K.PRODUCT, K.QUOTIENT):
        return _product_role(view, node, dyn, region_ends, structure)
    return "nonlinear", {}, f"kind {kind!r}"


def _product_role(view: GraphView, node: Node, dyn, region_ends: set, structure: bool) -> tuple:
    """Mul / Div: by a constant (activation), normalized by the other operand, a gate, or a product."""
    quotient = kind_of(node) == K.QUOTIENT
    if sum(dyn) == 1:
        return "activation", {}, "elementwise function of one dynamic input"
    a, b = node.inputs[0], node.inputs[1]
    if structure and sum(dyn) == 2 and only_through_reduction(view, b, a):
        return "normalizer", {"normalized": 0}, f"{b!r} normalizes {a!r}"
    if structure and not quotient and sum(dyn) == 2 and only_through_reduction(view, a, b):
        return "normalizer", {"normalized": 1}, f"{a!r} normalizes {b!r}"
    if quotient:
        return "nonlinear", {}, "a quotient by a dynamic tensor that is neither a region nor a normalization"
    if structure:
        acts = [_is_activation_output(view, t, region_ends) for t in (a, b)]
        if sum(dyn) == 2 and acts.count(True) == 1:
            return "gate", {"up": acts.index(False)}, "activation output * the other factor"
    return "product", {}, "product of dynamic factors"


def regions(view: GraphView, graph: Graph, skip: set) -> tuple[dict, dict]:
    """Region ends (node name -> source tensor) and inner nodes (name -> end), latest end first so an
    outer region claims its inner products."""
    ends, inner_of = {}, {}
    for node in reversed(graph.nodes):
        if node.name in inner_of or node.name in skip or kind_of(node) not in (K.PRODUCT, K.QUOTIENT):
            continue
        if len(view.dyn_inputs(node)) < 2:
            continue
        found = find_region(view, node)
        if found:
            source, inner = found
            ends[node.name] = (source, len(inner))
            for n in inner:
                if n is not node:
                    inner_of[n.name] = node.name
    return ends, inner_of


# the plan facts a structural rule reads, and the role whose analysis provides them
_NEEDS = {"region": ("source", "region"), "normalizer": ("normalized", "normalizer"), "gate-up": ("up", "gate"),
          "bilinear-cp": ("values", "attention-values")}


def _check_override(node: Node, rule: str, role: str, dyn, info: dict) -> None:
    """An overriding rule must fit the node: epsilon is for ops linear in their dynamic inputs, and the
    structural rules need the structure the analysis found."""
    if rule == "epsilon" and kind_of(node) in (K.CONTRACTION, K.PRODUCT, K.QUOTIENT) and sum(dyn) >= 2:
        raise RuleError(f"{node.label()}: rules= asks for 'epsilon', but the node multiplies {sum(dyn)} dynamic "
                        "operands (epsilon needs an op linear in its dynamic inputs); use 'bilinear-uniform' "
                        "or 'gate-uniform'")
    if rule in _NEEDS and _NEEDS[rule][0] not in info:
        raise RuleError(f"{node.label()}: rules= asks for {rule!r}, which applies where the plan finds the role "
                        f"{_NEEDS[rule][1]!r}; this node's role is {role!r}")


def build_plan(graph: Graph, preset, epsilon: float, wrt, overrides=None) -> Plan:
    """Decide the role and rule of every node a dynamic tensor reaches; raise :class:`RuleError` where a
    dynamic tensor reaches a node whose role the preset has no rule for.

    ``preset``: a :class:`reflrp.presets.Preset`; ``overrides``: node name -> rule (resolved by
    :func:`reflrp.options.resolve_overrides`)."""
    from .rules import RULES
    overrides = overrides or {}
    dynamic = taint(graph, wrt)
    view = GraphView(graph, dynamic)
    ends, inner_of = regions(view, graph, set(overrides)) if preset.structure else ({}, {})
    ordered = []
    for node in graph.nodes:
        dyn = tuple(bool(i) and i in dynamic for i in node.inputs)
        if not any(dyn) or not any(o in dynamic for o in node.outputs if o):
            continue
        if node.name in inner_of:
            ordered.append(NodePlan(node, None, None, dyn, {}, f"inside the region ending at {inner_of[node.name]!r}"))
            continue
        if node.name in ends:
            source, size = ends[node.name]
            role, info, why = "region", {"source": source}, f"elementwise region from {source!r} ({size} nodes)"
        else:
            role, info, why = role_of(view, node, dyn, set(ends), preset.structure)
        if node.name in overrides:
            rule, why = overrides[node.name], "override" + (f" ({why})" if why else "")
            _check_override(node, rule, role, dyn, info)
        else:
            rule = preset.roles.get(role)
        if rule is None:
            raise RuleError(f"{node.label()}: a dynamic tensor reaches op {node.op_type!r} (role {role!r}: {why or kind_of(node)}), "
                            f"which has no relevance rule in preset {preset.name!r} (dynamic inputs: "
                            f"{[i for i, d in zip(node.inputs, dyn) if d]}); pass rules={{op type or node name: rule}} "
                            f"to choose one of {sorted(RULES)}")
        ordered.append(NodePlan(node, role, rule, dyn, info, why))
    return Plan(preset.name, epsilon, tuple(wrt), dynamic, ordered)
