"""The plan: which tensors are dynamic (taint), which nodes form elementwise regions, which products
are normalizers or gates, and the rule of every node under a preset (see ../shared/RULES.md)."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from .dtypes import is_float
from .errors import RuleError
from .graph import Graph, Node

UNARY = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Asin",
         "Acos", "Atan", "Sinh", "Cosh", "Tanh", "Asinh", "Acosh", "Atanh", "Reciprocal", "Erf", "Relu",
         "Sigmoid", "Softsign", "Softplus", "Mish", "HardSwish", "LeakyRelu", "Elu", "Celu", "Selu",
         "ThresholdedRelu", "HardSigmoid", "Gelu", "PRelu", "Clip", "Cast", "CastLike", "Identity", "Dropout"}
ELEMENTWISE = UNARY | {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Mod"}
PASS_THROUGH = {"Cast", "CastLike", "Identity", "Dropout", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
ACTIVATIONS = UNARY - {"Cast", "CastLike", "Identity", "Dropout", "Neg", "Abs"}
CONSTANT_OUTPUT = {"Shape", "Size", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
                   "Xor", "Not", "IsNaN", "IsInf", "ArgMax", "ArgMin", "ConstantOfShape", "EyeLike", "Range",
                   "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "OneHot"}
ROUTE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather", "GatherElements",
         "GatherND", "Concat", "Split", "Expand", "Tile", "Pad", "Identity", "Dropout", "Trilu", "ScatterND"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool"}
FLOAT_CODES = {1, 10, 11, 16}
# Every op reflrp runs, by how the plan treats it when a dynamic tensor reaches it. A test checks
# that each registered kernel appears here.
RULE_DECISIONS = {
    **{op: "identity (elementwise function of one dynamic input)" for op in UNARY},
    **{op: "route (exact adjoint of the data movement)" for op in ROUTE},
    **{op: "constant output: relevance stops (shapes, masks, indices)" for op in CONSTANT_OUTPUT},
    "Add": "epsilon-sum", "Sub": "epsilon-sum", "Sum": "epsilon-sum",
    "Mul": "identity / region / normalizer / gate", "Div": "identity / region / normalizer / gate",
    "Pow": "identity (constant exponent) or inside a region", "Mod": "identity or inside a region",
    "Mean": "inside a region only, else error", "Max": "winner-takes-all", "Min": "winner-takes-all",
    "Where": "where (route by a constant condition)",
    "MatMul": "epsilon / bilinear-uniform / bilinear-cp", "Einsum": "epsilon / bilinear-uniform",
    "Gemm": "epsilon", "Conv": "epsilon", "BatchNormalization": "epsilon", "AveragePool": "epsilon",
    "GlobalAveragePool": "epsilon", "ReduceSum": "epsilon", "ReduceMean": "epsilon",
    "MaxPool": "maxpool (winner-takes-all)", "Softmax": "softmax", "LayerNormalization": "layernorm",
    "RMSNormalization": "identity", "Attention": "attention", "RotaryEmbedding": "rotary",
    **{op: "error: no relevance rule" for op in ("LogSoftmax", "ReduceMax", "ReduceMin", "ReduceProd",
                                                 "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                                                 "ReduceLogSumExp", "GlobalMaxPool", "CumSum",
                                                 "InstanceNormalization", "Constant")},
}


@dataclass
class NodePlan:
    """The decision for one node: its rule (None: no relevance of its own), dynamic inputs, facts."""

    node: Node
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
        """A readable table: node, op, rule, dynamic inputs."""
        rows = [("node", "op", "rule", "dynamic inputs / note")]
        for p in self.nodes:
            dyn = ", ".join(n for n, d in zip(p.node.inputs, p.dynamic) if d)
            rows.append((p.node.name, p.node.op_type, p.rule or "-", (dyn + ("  # " + p.why if p.why else ""))))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"preset {self.preset!r}, epsilon {self.epsilon:g}, relevance to {list(self.wrt)}"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def rule_of(self, node_name: str) -> str | None:
        return next((p.rule for p in self.nodes if p.node.name == node_name), None)


def default_wrt(graph: Graph) -> tuple[str, ...]:
    """The float graph inputs; for a model fed token ids, the output of the embedding Gather(s)."""
    floats = tuple(v.name for v in graph.inputs if v.dtype is not None and is_float(v.dtype))
    if floats:
        return floats
    ints = [v.name for v in graph.inputs if v.dtype is not None and v.dtype.kind in "iu"]
    preferred = [n for n in ints if "input_ids" in n] or ints
    found = []
    for node in graph.nodes:
        if node.op_type == "Gather" and node.inputs[0] in graph.initializers and _source_input(graph, node.inputs[1]) in preferred:
            found.append(node.outputs[0])
    return tuple(found)


def _source_input(graph: Graph, name: str) -> str | None:
    """Follow single-input pass-through nodes (Cast, Reshape, ...) up to a graph input."""
    seen = 0
    while name not in graph.input_names and seen < 8:
        node = graph.producer.get(name)
        if node is None or node.op_type not in PASS_THROUGH:
            return None
        name, seen = node.inputs[0], seen + 1
    return name if name in graph.input_names else None


def taint(graph: Graph, wrt) -> frozenset:
    """The dynamic tensors: those computed from ``wrt`` by float-valued ops."""
    dynamic = set(wrt)
    for node in graph.nodes:
        if node.op_type in CONSTANT_OUTPUT:
            continue
        if node.op_type == "Cast" and node.attrs.get("to") not in FLOAT_CODES:
            continue
        if not any(i in dynamic for i in node.inputs if i):
            continue
        outs = node.outputs
        if node.op_type in ("Dropout", "MaxPool"):
            outs = outs[:1]
        elif node.op_type == "LayerNormalization":
            outs = outs[:1]
        dynamic.update(o for o in outs if o and o not in wrt)
    return frozenset(dynamic)


class _Graph:
    """Topological positions and dynamic-edge walks used by the region and normalizer tests."""

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


def find_region(G: _Graph, end: Node, limit: int = 64):
    """The elementwise region ending at ``end``: its source tensor and inner nodes, or None.

    The source is the latest tensor that every dynamic path into ``end`` passes through, with only
    elementwise nodes in between, none of whose outputs leaves the region."""
    ancestors, stack = set(), list(G.dyn_inputs(end))
    while stack and len(ancestors) < limit:
        t = stack.pop()
        if t in ancestors:
            continue
        ancestors.add(t)
        p = G.producer(t)
        if p is not None and p.op_type in ELEMENTWISE:
            stack.extend(G.dyn_inputs(p))
    for cand in sorted(ancestors, key=G.tpos, reverse=True):
        inner = _dominated_nodes(G, end, cand)
        if inner is None:
            continue
        for node in inner:
            if node is end:
                continue
            for o in node.outputs:
                if o and any(c not in inner for c in G.g.consumers.get(o, ())):
                    return None
                if o in G.g.output_names:
                    return None
        return cand, inner
    return None


def _dominated_nodes(G: _Graph, end: Node, source: str):
    """Nodes between ``source`` and ``end`` if every dynamic path into ``end`` goes elementwise back to ``source``."""
    inner = {end}
    stack = [t for t in G.dyn_inputs(end)]
    if sum(1 for t in stack if t == source) == len(stack) and len(stack) < 2:
        return None
    seen = set()
    while stack:
        t = stack.pop()
        if t == source or t in seen:
            continue
        seen.add(t)
        p = G.producer(t)
        if p is None or p.op_type not in ELEMENTWISE or not G.dyn_inputs(p):
            return None
        inner.add(p)
        stack.extend(G.dyn_inputs(p))
    return inner


def _roots(G: _Graph, t: str) -> set:
    """``t`` and the tensors it is a pass-through copy of (Cast, Identity, Reshape, ...)."""
    roots = {t}
    p = G.producer(t)
    while p is not None and p.op_type in PASS_THROUGH and len(G.dyn_inputs(p)) == 1:
        t = G.dyn_inputs(p)[0]
        roots.add(t)
        p = G.producer(t)
    return roots


def only_through_reduction(G: _Graph, b: str, a: str) -> bool:
    """True if ``b`` depends on ``a`` and every such dependency passes through a reduction."""
    roots = _roots(G, a)
    floor = min(G.tpos(r) for r in roots)
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
        p = G.producer(t)
        if p is None or G.pos[p.name] < floor:
            continue
        r2 = reduced or p.op_type in REDUCTIONS
        stack.extend((u, r2) for u in G.dyn_inputs(p))
    return reached


def _origin(G: _Graph, t: str):
    """The node that computed ``t``'s values, looking through pass-through copies (Cast, Reshape, ...)."""
    p = G.producer(t)
    while p is not None and p.op_type in PASS_THROUGH:
        p = G.producer(p.inputs[0])
    return p


def _from_softmax(G: _Graph, t: str) -> bool:
    p = _origin(G, t)
    return p is not None and p.op_type == "Softmax"


def _is_activation_output(G: _Graph, t: str, region_ends: set) -> bool:
    p = _origin(G, t)
    return p is not None and (p.op_type in ACTIVATIONS or p.name in region_ends)


def _override(node: Node, rules: dict | None) -> str | None:
    if not rules:
        return None
    if node.op_type in rules:
        return rules[node.op_type]
    for pattern, name in rules.items():
        if fnmatch.fnmatchcase(node.name, pattern) or (pattern.startswith("re:") and re.search(pattern[3:], node.name)):
            return name
    return None


def build_plan(graph: Graph, preset: str, epsilon: float, wrt, rules: dict | None = None) -> Plan:
    """Decide the rule of every node a dynamic tensor reaches; raise :class:`RuleError` where none fits."""
    from .presets import PRESETS
    from .rules import RULES
    if preset not in PRESETS:
        raise RuleError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    for name in (rules or {}).values():
        if name not in RULES and name is not None:
            raise RuleError(f"unknown rule {name!r} in rules=; known rules: {sorted(RULES)}")
    dynamic = taint(graph, wrt)
    G = _Graph(graph, dynamic)
    plans: dict[str, NodePlan] = {}
    region_ends: set = set()
    inner_of: dict[str, str] = {}
    # regions first, latest end first, so an outer region claims its inner products
    for node in reversed(graph.nodes):
        if node.name in inner_of or node.op_type not in ("Mul", "Div"):
            continue
        if len([i for i in node.inputs if i in dynamic]) < 2:
            continue
        found = find_region(G, node)
        if found:
            source, inner = found
            region_ends.add(node.name)
            plans[node.name] = NodePlan(node, "region", (), {"source": source},
                                        f"elementwise region from {source!r} ({len(inner)} nodes)")
            for n in inner:
                if n is not node:
                    inner_of[n.name] = node.name
    ordered = []
    for node in graph.nodes:
        dyn = tuple(bool(i) and i in dynamic for i in node.inputs)
        if not any(dyn) or not any(o in dynamic for o in node.outputs if o):
            continue
        if node.name in inner_of:
            ordered.append(NodePlan(node, None, dyn, {}, f"inside the region ending at {inner_of[node.name]!r}"))
            continue
        if node.name in plans:
            p = plans[node.name]
            p.dynamic = dyn
            ordered.append(p)
            continue
        chosen = _override(node, rules)
        p = _decide(G, node, dyn, preset, region_ends) if chosen is None else NodePlan(node, chosen, dyn, {}, "override")
        if p.rule is not None and p.rule not in RULES:
            raise RuleError(f"{node.label()}: rule {p.rule!r} does not exist")
        if p.rule == "route":
            p.info.setdefault("data_inputs", _data_inputs(node))
        ordered.append(p)
    return Plan(preset, epsilon, tuple(wrt), dynamic, ordered)


def _data_inputs(node: Node) -> tuple[int, ...]:
    if node.op_type == "Concat":
        return tuple(range(len(node.inputs)))
    if node.op_type == "ScatterND":
        return (0, 2)
    return (0,)


def _decide(G: _Graph, node: Node, dyn: tuple[bool, ...], preset: str, region_ends: set) -> NodePlan:
    from .presets import PRESETS
    op, n = node.op_type, sum(dyn)
    table = PRESETS[preset]
    if op in ("Mul", "Div") and n >= 2:
        a, b = node.inputs[0], node.inputs[1]
        if only_through_reduction(G, b, a):
            return NodePlan(node, "normalizer", dyn, {"normalized": 0}, f"{b!r} normalizes {a!r}")
        if op == "Mul" and only_through_reduction(G, a, b):
            return NodePlan(node, "normalizer", dyn, {"normalized": 1}, f"{a!r} normalizes {b!r}")
        if op == "Mul" and table.get("gate") == "gate-up":
            acts = [_is_activation_output(G, t, region_ends) for t in (a, b)]
            if acts.count(True) == 1:
                return NodePlan(node, "gate-up", dyn, {"up": acts.index(False)}, "CP-LRP: all to the non-activation factor")
        if op == "Mul":
            return NodePlan(node, "gate-uniform", dyn, {}, "product of two dynamic factors (gating)")
        raise RuleError(f"{node.label()}: Div of two dynamic tensors that is neither an elementwise region "
                        "nor a normalization has no relevance rule")
    if op in ("MatMul", "Einsum") and n >= 2:
        if op == "MatMul" and table.get("bilinear") == "bilinear-cp" and _from_softmax(G, node.inputs[0]):
            return NodePlan(node, "bilinear-cp", dyn, {}, "CP-LRP: attention weights held constant")
        return NodePlan(node, "bilinear-uniform", dyn)
    if op == "Einsum" and "." in node.attrs.get("equation", ""):
        raise RuleError(f"{node.label()}: Einsum relevance needs an equation without ellipsis, got "
                        f"{node.attrs['equation']!r}")
    if op == "Conv" and len(dyn) > 1 and dyn[1]:
        raise RuleError(f"{node.label()}: Conv with a dynamic weight has no relevance rule (only the input may be dynamic)")
    if op in ("Gemm", "Conv", "BatchNormalization") and n >= 2:
        raise RuleError(f"{node.label()}: more than one dynamic operand (weights computed from the input) is not supported")
    if op == "ScatterND" and node.attrs.get("reduction", "none") != "none":
        raise RuleError(f"{node.label()}: ScatterND with reduction={node.attrs['reduction']!r} has no relevance rule")
    if op in table:
        name = table[op]
        info = {"cp": True} if op == "Attention" and preset == "cp-lrp" else {}
        if op == "Where" and dyn[0]:
            raise RuleError(f"{node.label()}: Where with a dynamic condition has no relevance rule")
        return NodePlan(node, name, dyn, info)
    if op in UNARY or (op in ELEMENTWISE and n == 1 and op not in ("Add", "Sub", "Sum", "Mean")):
        return NodePlan(node, "identity", dyn)
    raise RuleError(f"{node.label()}: a dynamic tensor reaches op {op!r}, which has no relevance rule "
                    f"in preset {preset!r} (dynamic inputs: {[i for i, d in zip(node.inputs, dyn) if d]}); "
                    "pass rules={op or node name: rule} to choose one")
