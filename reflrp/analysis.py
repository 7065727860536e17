"""The plan: which tensors are dynamic (taint), which nodes form elementwise regions, which products
are normalizers or gates, and so every node's role and, through a preset, its rule (docs/rules.md).
Every decision comes from the ops' kinds (reflrp.ops.kinds) and the graph's structure."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dtypes import is_float
from .errors import RuleError
from .graph import Graph, Node
from .ops import kinds as K
from .ops import record


@dataclass(frozen=True)
class Layer:
    """A weight layer as Zennit sees one (a Conv / Linear module): the weight product (Conv,
    ConvTranspose, Gemm, MatMul with a constant weight) and, when its bias is a node of its own (a
    MatMul of 3-D inputs exports as MatMul + Add), the Add of that constant bias. Such a pair is planned
    as one node at the Add: its rule reads ``(x, W, b)``."""

    type: str  # conv | dense
    product: Node
    data: int  # the product's dynamic input
    weight: int
    bias_add: Node | None = None
    bias_side: int = 1  # which input of the Add the bias is

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors the layer's rule reads: the product's inputs, then the separate bias if any."""
        if self.bias_add is None:
            return self.product.inputs
        return tuple(self.product.inputs[:2]) + (self.bias_add.inputs[self.bias_side],)

    @property
    def bias(self) -> int | None:
        """The position of the bias among :attr:`inputs` (None: the layer has none)."""
        ins = self.inputs
        return 2 if len(ins) > 2 and ins[2] else None


@dataclass
class NodePlan:
    """The decision for one node: its role, layer type and rule (None: no relevance of its own), the
    rule's parameters (``params``; ``eps`` stabilises its ratios, None: the pass's epsilon), dynamic
    inputs, facts the rule needs (``info``), the weight layer it closes (``layer``) and a note."""

    node: Node
    role: str | None
    rule: str | None
    dynamic: tuple[bool, ...]
    info: dict = field(default_factory=dict)
    why: str = ""
    type: str | None = None
    params: dict = field(default_factory=dict)
    eps: float | None = None
    layer: Layer | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        """The tensors the rule reads: the node's inputs, or a two-node layer's ``(x, W, b)``."""
        return self.layer.inputs if self.layer is not None and self.layer.bias_add is not None else self.node.inputs

    @property
    def start(self) -> Node:
        """The first node of what the rule covers (the weight product of a two-node layer)."""
        return self.layer.product if self.layer is not None else self.node


@dataclass
class Plan:
    """Rules for every node that a dynamic tensor reaches, in topological order."""

    preset: str
    epsilon: float
    wrt: tuple[str, ...]
    dynamic: frozenset
    nodes: list[NodePlan]
    first_layer: str | None = None  # the node the first-layer map chose
    options: dict = field(default_factory=dict)

    def table(self) -> str:
        """A readable table: node, op, role, layer type, rule (with its parameters), dynamic inputs."""
        rows = [("node", "op", "role", "layer", "rule", "dynamic inputs / note")]
        for p in self.nodes:
            dyn = ", ".join(n for n, d in zip(p.reads, p.dynamic) if d)
            params = ", ".join(f"{k}={_shown(v)}" for k, v in p.params.items())
            rows.append((p.node.name, p.node.op_type, p.role or "-", p.type or "-",
                         (p.rule or "-") + (f"({params})" if params else ""), dyn + ("  # " + p.why if p.why else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"preset {self.preset!r}, epsilon {self.epsilon:g}, relevance to {list(self.wrt)}"
                 + (f", first layer {self.first_layer!r}" if self.first_layer else "")]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def rule_of(self, node_name: str) -> str | None:
        return next((p.rule for p in self.nodes if p.node.name == node_name), None)

    def node_plan(self, node_name: str) -> NodePlan | None:
        return next((p for p in self.nodes if p.node.name == node_name), None)


def _shown(v) -> str:
    return f"array{tuple(v.shape)}" if hasattr(v, "shape") and getattr(v, "ndim", 0) else f"{v:g}" \
        if isinstance(v, float) else str(v)


def kind_of(node: Node) -> str:
    rec = record(node.op_type)
    return rec.kind if rec is not None else K.NONLINEAR


def _relayout(node: Node | None) -> bool:
    """Does ``node`` only copy or re-lay-out its one data input (Cast, Identity, Reshape, Transpose, ...)?"""
    rec = record(node.op_type) if node is not None else None
    return rec is not None and (rec.kind == K.CAST or rec.relayout)


def default_wrt(graph: Graph) -> tuple[str, ...]:
    """The tensors relevance is attributed to by default: every float graph input, and for token-id
    inputs the output of the embedding lookup that reads them: a data movement from a constant table
    (an initializer, or computed from initializers alone, e.g. a dequantized table) indexed by the ids."""
    floats = [v.name for v in graph.inputs if v.dtype is not None and is_float(v.dtype)]
    ints = {v.name for v in graph.inputs if v.dtype is not None and v.dtype.kind in "iu"}
    ids = {n for n in ints if "input_ids" in n} or ints
    constant = input_free(graph)
    embeddings = [node.outputs[0] for node in graph.nodes
                  if kind_of(node) == K.MOVE and len(node.inputs) > 1 and node.inputs[0] in constant
                  and _source_input(graph, node.inputs[1]) in ids]
    return tuple(embeddings) + tuple(floats)


def input_free(graph: Graph) -> set:
    """The tensors whose values depend on no graph input: initializers, and what nodes compute from
    them alone (folded at load)."""
    free = set(graph.initializers)
    for node in graph.nodes:
        if all(not i or i in free for i in node.inputs):
            free.update(o for o in node.outputs if o)
    return free


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
    rec = record(node.op_type)
    if rec is not None and rec.quantizer:
        return "activation", {}, "quantize→dequantize: identity"
    if rec is not None and rec.centred is not None and kind == K.CONTRACTION and n == 1:
        return "linear", {}, "integer product: epsilon on the zero-point-centred operands (x - x_zp)"
    simple = {K.ACTIVATION: "activation", K.CAST: "activation", K.SUM: "linear", K.LINEAR: "linear",
              K.ROTARY: "rotary", K.MOVE: "move", K.SELECT: "select", K.LAYERNORM: "layernorm",
              K.RMSNORM: "rmsnorm", K.ATTENTION: "attention", K.NONLINEAR: "nonlinear"}
    if kind == K.CONTROL:
        return "control-flow", {}, ("control flow decided at run time: its subgraphs run in the forward, but "
                                    "relevance has no rule through them (an If whose condition is known at "
                                    "load is folded into its branch)")
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


# ---------------------------------------------------------------------------- layer types and layers

def _static_value(graph: Graph, name: str):
    if name in graph.initializers:
        return graph.initializers[name]
    p = graph.producer.get(name)
    if p is not None and p.op_type == "Constant" and not p.domain and hasattr(p.attrs.get("value"), "shape"):
        return p.attrs["value"]
    return None


def static_shape(graph: Graph, name: str, depth: int = 8) -> tuple | None:
    """The shape of a constant tensor as the graph fixes it: an initializer or Constant, or computed
    from those by elementwise ops, Transpose or Reshape (a legacy export's ``Transpose(weight)``, the
    BatchNorm fold's products); None when unknown."""
    value = _static_value(graph, name)
    if value is not None:
        return tuple(value.shape)
    p = graph.producer.get(name)
    if p is None or depth == 0 or p.domain:
        return None
    rec = record(p.op_type)
    shapes = [static_shape(graph, i, depth - 1) if i else None for i in p.inputs]
    if rec is not None and rec.elementwise and all(s is not None for s in shapes):
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            return None
    if p.op_type == "Transpose" and shapes and shapes[0] is not None:
        perm = p.attrs.get("perm") or list(range(len(shapes[0])))[::-1]
        return tuple(shapes[0][i] for i in perm)
    target = _static_value(graph, p.inputs[1]) if p.op_type == "Reshape" and len(p.inputs) > 1 else None
    if target is not None and shapes[0] is not None and not p.attrs.get("allowzero", 0):
        dims = [shapes[0][i] if d == 0 else int(d) for i, d in enumerate(target.tolist())]
        if dims.count(-1) == 1:
            known = int(np.prod([d for d in dims if d != -1]))
            dims[dims.index(-1)] = int(np.prod(shapes[0])) // max(known, 1)
        return tuple(dims) if -1 not in dims else None
    return None


def weight_operands(node: Node, dyn) -> tuple[int, int] | None:
    """(data, weight) positions of a weight product: one of its first two inputs is dynamic, the other
    (the weight) and a bias are constant; a Conv's data is its first input."""
    rec = record(node.op_type)
    if rec is None or rec.layer not in ("conv", "dense") or len(dyn) < 2 or dyn[0] == dyn[1] or any(dyn[2:]):
        return None
    data = 0 if dyn[0] else 1
    return None if rec.layer == "conv" and data else (data, 1 - data)


def layer_type(node: Node, dyn, role: str | None) -> str | None:
    """The node's layer type for a composite's type map (presets.LAYER_TYPES), or None."""
    rec = record(node.op_type)
    fact = rec.layer if rec is not None else None
    if role in ("activation", "region"):
        return "activation"
    if fact in ("conv", "dense"):
        return fact if weight_operands(node, dyn) is not None else None
    if fact in ("avgpool", "batchnorm"):
        return fact if dyn[0] and not any(dyn[1:]) else None
    present = [d for i, d in zip(node.inputs, dyn) if i]
    if kind_of(node) == K.SUM and len(present) >= 2 and all(present):
        return "sum"
    return None


def _features(graph: Graph, product: Node, data: int) -> tuple[int, int] | None:
    """(output features of a weight product, rank of its weight) from the weight's static shape; None
    when unknown or when the features are not on the output's last (dense) / channel (conv) axis."""
    shape = static_shape(graph, product.inputs[1 - data])
    if shape is None or data:
        return None
    op, a = product.op_type, product.attrs
    if record(product.op_type).layer == "conv":
        return (shape[1] * a.get("group", 1) if op == "ConvTranspose" else shape[0]), len(shape)
    if len(shape) != 2:
        return None
    return (shape[0] if op == "Gemm" and a.get("transB", 0) else shape[1]), 2


def bias_add(graph: Graph, product: Node, data: int, dynamic: frozenset) -> tuple[Node, int] | None:
    """The Add that adds a constant per-feature bias to a bias-less weight product (and nothing else reads
    the product): (that Add, the bias's input position), or None."""
    if len(product.inputs) > 2 and product.inputs[2]:
        return None
    out = product.outputs[0]
    readers = graph.consumers.get(out, ())
    if len(readers) != 1 or out in graph.output_names:
        return None
    add = readers[0]
    rec = record(add.op_type)
    if rec is None or rec.layer != "bias" or len(add.inputs) != 2 or add.inputs.count(out) != 1:
        return None
    side = 1 - add.inputs.index(out)
    bias = add.inputs[side]
    features = _features(graph, product, data)
    shape = static_shape(graph, bias) if bias not in dynamic else None
    if features is None or shape is None:
        return None
    f, rank = features
    lead = (1,) * (rank - 2) if record(product.op_type).layer == "conv" else ()
    return (add, side) if shape in ((f,) + lead, (1, f) + lead) else None


def first_layer(preset, typed) -> str | None:
    """The node the first-layer map applies to: the first node (in execution order) of a type it lists."""
    for name, t in typed:
        if any(e.matches(t) for e in preset.first):
            return name
    return None


# ------------------------------------------------------------------------------------------- the plan

# the plan facts a structural rule reads, and the role whose analysis provides them
_NEEDS = {"region": ("source", "region"), "normalizer": ("normalized", "normalizer"), "gate-up": ("up", "gate"),
          "bilinear-cp": ("values", "attention-values")}
_LAYERS = ("conv", "dense")


def _check_rule(node: Node, rule: str, role: str, dyn, info: dict, type_: str | None, source: str) -> None:
    """A rule must fit the node: epsilon (and norm) is for ops linear in their dynamic inputs, the
    classic layer rules for weight layers, and the structural rules need the structure the analysis
    found."""
    from .rules import SIGNATURES
    if rule in ("epsilon", "norm") and kind_of(node) in (K.CONTRACTION, K.PRODUCT, K.QUOTIENT) and sum(dyn) >= 2:
        raise RuleError(f"{node.label()}: {source} asks for {rule!r}, but the node multiplies {sum(dyn)} dynamic "
                        "operands (epsilon needs an op linear in its dynamic inputs); use 'bilinear-uniform' "
                        "or 'gate-uniform'")
    if SIGNATURES[rule].layer and type_ not in _LAYERS:
        raise RuleError(f"{node.label()}: {source} asks for {rule!r}, a rule for weight layers (Conv, ConvTranspose, "
                        f"Gemm or MatMul with a constant weight and one dynamic input); this node's role is {role!r}")
    if rule in _NEEDS and _NEEDS[rule][0] not in info:
        raise RuleError(f"{node.label()}: {source} asks for {rule!r}, which applies where the plan finds the role "
                        f"{_NEEDS[rule][1]!r}; this node's role is {role!r}")


def _choice(preset, node: Node, role: str, type_: str | None, first: str | None, overrides) -> tuple:
    """(rule, fixed parameters, parameters of an override, where the rule comes from) for one node:
    ``rules=`` first, then the first-layer map, the type map, the role map."""
    if node.name in overrides:
        rule, params = overrides[node.name]
        return rule, {}, params, "override"
    if node.name == first:
        e = next(e for e in preset.first if e.matches(type_))
        return e.rule, e.params, {}, "the first layer"
    e = next((e for e in preset.layers if e.matches(type_)), None)
    if e is not None:
        return e.rule, e.params, {}, "type map"
    return preset.roles.get(role), {}, {}, "role map"


def rule_params(rule: str, preset, options: dict, type_: str | None, fixed, given, eps: float, where: str):
    """The rule's parameters at one node: its defaults, then the preset's, ``options`` (a ``type.name``
    key before a plain one), the values fixed by the map entry, those of a ``rules=`` override. Returns
    (params, the stabiliser's value or None)."""
    from .rules import PASS_EPSILON, REQUIRED, SIGNATURES
    sig = SIGNATURES[rule]
    out = {}
    for name, value in sig.params.items():
        value = preset.params.get(name, value)
        chosen = options.get(f"{type_}.{name}", options.get(name)) if type_ else options.get(name)
        if chosen is not None:
            value = chosen
        if name in fixed:
            if chosen is not None and not _same(chosen, fixed[name]):
                raise RuleError(f"{where}: options give {name}={_shown(chosen)}, but the preset fixes "
                                f"{name}={_shown(fixed[name])} for this rule")
            value = fixed[name]
        value = given.get(name, value)
        if isinstance(value, str) and value == PASS_EPSILON:
            value = eps
        if isinstance(value, str) and value == REQUIRED:
            raise RuleError(f"{where}: rule {rule!r} needs {name!r}; pass options={{{name!r}: ...}} (or "
                            f"rules={{...: ({rule!r}, {{{name!r}: ...}})}})")
        out[name] = value
    if rule == "alpha-beta" and out["alpha"] - out["beta"] != 1.0:
        raise RuleError(f"{where}: alpha-beta needs alpha - beta = 1 (conservation), got alpha={out['alpha']:g}, "
                        f"beta={out['beta']:g}")
    return out, (out[sig.stabiliser] if sig.stabiliser else None)


def _check_region_overrides(graph: Graph, overrides, ends: dict, inner_of: dict) -> None:
    """An override of a node inside an elementwise region would be ignored (the region takes one rule, at
    its end): refuse it, naming the region, unless its end is overridden too (which dissolves the region)."""
    for node in graph.nodes:
        end = inner_of.get(node.name)
        if end is not None and node.name in overrides:
            raise RuleError(f"{node.label()}: rules= gives it {overrides[node.name][0]!r}, but it is inside the "
                            f"elementwise region from {ends[end][0]!r} ending at {end!r}, which takes one rule at "
                            f"its end; override {end!r} too to plan the region's nodes one by one, or leave "
                            f"{node.name!r} out of rules=")


def _same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _make_layer(plan: NodePlan, operands: tuple[int, int], bias: tuple[Node, int] | None) -> None:
    """Make ``plan`` (a weight product's) the plan of its whole layer: the rule reads ``(x, W, b)`` and,
    with a separate bias Add, sits at that Add."""
    product, (data, weight) = plan.node, operands
    plan.layer = Layer(plan.type, product, data, weight, *(bias or ()))
    plan.info["layer"] = {"data": data, "weight": weight, "bias": plan.layer.bias, "own_bias": bias is None}
    if bias is not None:
        plan.node, plan.dynamic = bias[0], tuple(i == data for i in range(3))
        plan.why = "; ".join(t for t in (f"{plan.type} layer {product.name!r} ({product.op_type}) + its bias Add",
                                         plan.why) if t)


def build_plan(graph: Graph, preset, epsilon: float, wrt, overrides=None, options=None) -> Plan:
    """Decide the role, layer type and rule of every node a dynamic tensor reaches; raise
    :class:`RuleError` where a dynamic tensor reaches a node whose role the preset has no rule for.

    ``preset``: a :class:`reflrp.presets.Preset`; ``overrides``: node name -> (rule, params) (resolved
    by :func:`reflrp.options.resolve_overrides`); ``options``: rule parameters (``options.rule_options``).
    A weight layer's rule covers the layer: with a type map (a composite), or with a rule for weight
    layers, a bias-less weight product and the Add of its bias are planned as one node, whose rule an
    override may name by either node (the product's name first)."""
    from .rules import RULES, SIGNATURES
    overrides, options = overrides or {}, options or {}
    dynamic = taint(graph, wrt)
    view = GraphView(graph, dynamic)
    ends, inner_of = regions(view, graph, set(overrides)) if preset.structure else ({}, {})
    _check_region_overrides(graph, overrides, ends, inner_of)
    decided = []  # (node, dyn, role, info, why, type)
    for node in graph.nodes:
        dyn = tuple(bool(i) and i in dynamic for i in node.inputs)
        if not any(dyn) or not any(o in dynamic for o in node.outputs if o):
            continue
        if node.name in inner_of:
            decided.append((node, dyn, None, {}, f"inside the region ending at {inner_of[node.name]!r}", None))
            continue
        if node.name in ends:
            source, size = ends[node.name]
            role, info, why = "region", {"source": source}, f"elementwise region from {source!r} ({size} nodes)"
        else:
            role, info, why = role_of(view, node, dyn, set(ends), preset.structure)
        decided.append((node, dyn, role, info, why, layer_type(node, dyn, role)))
    first = first_layer(preset, [(d[0].name, d[5]) for d in decided if d[2] is not None]) if preset.first else None
    composite = bool(preset.layers or preset.first)
    ordered, closes = [], {}  # closes: bias Add name -> the NodePlan of the layer it closes
    for node, dyn, role, info, why, type_ in decided:
        if role is None:
            ordered.append(NodePlan(node, None, None, dyn, {}, why))
            continue
        if node.name in closes:
            ordered.append(closes.pop(node.name))
            continue
        rule, fixed, given, source = _choice(preset, node, role, type_, first, overrides)
        found = None
        if type_ in _LAYERS:
            found = bias_add(graph, node, weight_operands(node, dyn)[0], dynamic)
            if found is not None and node.name not in overrides and found[0].name in overrides:
                over = overrides[found[0].name]  # the layer named by its bias Add (the plan's row for it)
                if composite or SIGNATURES[over[0]].layer:
                    (rule, given), fixed, source = over, {}, "override"
        if rule is None:
            raise RuleError(f"{node.label()}: a dynamic tensor reaches op {node.op_type!r} (role {role!r}: {why or kind_of(node)}), "
                            f"which has no relevance rule in preset {preset.name!r} (dynamic inputs: "
                            f"{[i for i, d in zip(node.inputs, dyn) if d]}); pass rules={{op type or node name: rule}} "
                            f"to choose one of {sorted(RULES)}")
        if role == "region" and source != "override" and rule != "region":
            if rule not in ("pass", "identity"):
                raise RuleError(f"{node.label()} ends an elementwise region ({why}); the {source} of preset "
                                f"{preset.name!r} gives it {rule!r}, but a region takes 'pass' / 'identity' only "
                                "(to treat its nodes one by one, name each of them in rules=)")
            rule = "region"  # Pass on an activation that is an elementwise region: the identity over the region
        _check_rule(node, rule, role, dyn, info, type_, source)
        where = f"{node.label()}, rule {rule!r} ({source} of preset {preset.name!r})"
        params, eps = rule_params(rule, preset, options, type_, fixed, given, epsilon, where)
        note = "; ".join(t for t in (source if source in ("override", "the first layer") else "", why) if t)
        plan = NodePlan(node, role, rule, dyn, dict(info), note, type_, params, eps)
        if type_ in _LAYERS and (composite or SIGNATURES[rule].layer):
            _make_layer(plan, weight_operands(node, dyn), found)
            if found is not None:  # the rule moves to the Add, where the layer's relevance arrives
                closes[found[0].name] = plan
                ordered.append(NodePlan(node, role, None, dyn, {}, f"inside the {type_} layer ending at "
                                        f"{found[0].name!r}", type_))
                continue
        if rule == "pass" and type_ == "batchnorm":
            plan.why += "; not merged: load with fold_batchnorm=True to fold it into its layer (Zennit's canonizer)"
        ordered.append(plan)
    _check_options_used(ordered, options, preset)
    return Plan(preset.name, epsilon, tuple(wrt), dynamic, ordered, first, dict(options))


def _check_options_used(planned, options: dict, preset) -> None:
    """An ``options=`` key that no rule of the preset takes is an error (it would be ignored); one the preset's
    rules take but that reaches no node of this graph (``high`` for a box rule on a model without a
    convolution) is a warning."""
    import warnings
    from .explain import ReflrpWarning
    from .rules import SIGNATURES
    offered = set(preset.roles.values()) | {e.rule for e in (*preset.layers, *preset.first)}
    for key in options:
        scope, _, name = key.rpartition(".")
        if not any(name in SIGNATURES[r].params for r in offered):
            raise RuleError(f"options[{key!r}]: no rule of preset {preset.name!r} takes {name!r} (its rules: "
                            f"{', '.join(sorted(offered))})")
        if not any(p.rule and name in SIGNATURES[p.rule].params and (not scope or p.type == scope) for p in planned):
            warnings.warn(f"options[{key!r}] reaches no node: no {'layer of type ' + repr(scope) if scope else 'node'}"
                          f" of this graph has a rule that takes {name!r} under preset {preset.name!r}",
                          ReflrpWarning, stacklevel=4)
