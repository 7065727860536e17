"""Control flow known at load: an ``If`` whose condition can be computed without the feeds is replaced by
the nodes of the branch it takes.

The condition is evaluated over the statics (initializers, Constant outputs) and over shapes: ``Shape``
of a tensor reads its recorded or inferred shape (onnx's shape inference with data propagation runs at
import for models with subgraphs), whose dimensions are ints, symbols or unknown. Two dimensions are
equal when they are the same int or the same symbol: the model's inputs and onnx's inference name
dimensions they know to be equal alike (reflrp checks equal input symbols at every feed). Anything else,
e.g. two different symbols, leaves the condition open and the If runs in the forward (reflrp.ops.control).
This folds deberta-v2's ``If(q_len != k_len)``, which its exports compute from the shapes of q and k.
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph, captured
from ..ops import kinds as K
from ..ops import record
from . import Emit, rewrites

Undecided = None  # a comparison of dimensions the shapes do not settle


def shape_of(e: Emit, name: str):
    """The dimensions of ``name`` (ints, symbol names, or ``("?", name, axis)`` for one unknown to
    everything but itself), or None when its rank is not known."""
    value = e.static(name)
    if value is not None:
        return list(value.shape)
    info = next((v for v in e.graph.inputs if v.name == name), None) or e.graph.value_info.get(name)
    if info is None or info.shape is None:
        return None
    return [("?", name, axis) if d is None else d for axis, d in enumerate(info.shape)]


def objects(values) -> np.ndarray:
    """A 1-D object array of ``values`` (ints, symbol names, unknown-dimension tuples kept whole)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def same(a, b):
    """True / False when the dimensions ``a`` and ``b`` are known equal / different, else Undecided."""
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return bool(a == b)
    return True if a == b else Undecided


def elementwise(fn, *args):
    """``fn`` over broadcast object arrays; None when any element is Undecided."""
    out = np.frompyfunc(fn, len(args), 1)(*[np.asarray(a, dtype=object) for a in args])
    out = np.asarray(out, dtype=object)
    return None if any(v is Undecided for v in out.ravel()) else out


def concrete(fn):
    """A comparison or arithmetic over ints only (a symbol makes it Undecided)."""
    def apply(a, b):
        ok = all(isinstance(v, (int, bool, np.integer, np.bool_)) for v in (a, b))
        return fn(a, b) if ok else Undecided
    return apply


def _cast(args, attrs):
    x = np.asarray(args[0], dtype=object)
    if attrs.get("to") == 9:  # bool: only concrete values have a truth value
        return elementwise(lambda v: bool(v) if isinstance(v, (int, bool, np.integer, np.bool_)) else Undecided, x)
    return x if attrs.get("to") in (2, 3, 4, 5, 6, 7, 12, 13) else None  # integer types keep symbols


# the comparisons and logic a condition is made of; data movement (Gather, Slice, Squeeze, Concat, ...)
# runs through the ops' own kernels on the object arrays
DECIDE = {
    "Equal": lambda args, attrs: elementwise(same, *args),
    "Not": lambda args, attrs: elementwise(lambda v: not v, args[0]),
    "And": lambda args, attrs: elementwise(lambda a, b: bool(a and b), *args),
    "Or": lambda args, attrs: elementwise(lambda a, b: bool(a or b), *args),
    "Greater": lambda args, attrs: elementwise(concrete(lambda a, b: bool(a > b)), *args),
    "Less": lambda args, attrs: elementwise(concrete(lambda a, b: bool(a < b)), *args),
    "GreaterOrEqual": lambda args, attrs: elementwise(concrete(lambda a, b: bool(a >= b)), *args),
    "LessOrEqual": lambda args, attrs: elementwise(concrete(lambda a, b: bool(a <= b)), *args),
    "Add": lambda args, attrs: elementwise(concrete(lambda a, b: a + b), *args),
    "Sub": lambda args, attrs: elementwise(concrete(lambda a, b: a - b), *args),
    "Mul": lambda args, attrs: elementwise(concrete(lambda a, b: a * b), *args),
    "Cast": _cast,
    "Identity": lambda args, attrs: args[0],
}


def value_at_load(e: Emit, name: str, depth: int = 0):
    """The value of ``name`` if it can be computed at load (an object array for shape arithmetic), else None."""
    static = e.static(name)
    if static is not None:
        return static
    node = e.graph.producer.get(name)
    if node is None or node.domain or depth > 64:
        return None
    if node.op_type == "Shape":
        dims = shape_of(e, node.inputs[0])
        return None if dims is None else objects(dims[node.attrs.get("start", 0):node.attrs.get("end")])
    args = [value_at_load(e, i, depth + 1) if i else None for i in node.inputs]
    if any(a is None for a, i in zip(args, node.inputs) if i):
        return None
    if node.op_type in DECIDE:
        return DECIDE[node.op_type](args, node.attrs)
    rec = record(node.op_type)
    if rec is None or rec.kind != K.MOVE:
        return None
    try:
        out = rec.kernel_for(e.opset)(np, *args, **rec.attrs_for(node))
    except Exception:  # the kernel does not take object arrays here: leave the value open
        return None
    out = out if isinstance(out, tuple) else (out,)
    return out[node.outputs.index(name)]


def condition(e: Emit) -> bool | None:
    value = value_at_load(e, e.input(0))
    if value is None or np.asarray(value).size != 1:
        return None
    v = np.asarray(value, dtype=object).reshape(-1)[0]
    return bool(v) if isinstance(v, (bool, int, np.bool_, np.integer)) else None


def inline(e: Emit, branch: Graph, outer: dict) -> None:
    """Emit ``branch``'s nodes with fresh tensor names (its enclosing reads mapped by ``outer``) and
    write its outputs to the If's outputs."""
    names = dict(outer)
    for k, v in branch.initializers.items():
        names[k] = e.const(v)
    for node in branch.nodes:
        outs = e.copy(node, [names.get(i, i) if i else "" for i in node.inputs])
        names.update((o, n) for o, n in zip(node.outputs, outs) if o)
    for i, out in enumerate(branch.output_names):
        e.op("Identity", names.get(out, out), outputs=e.output(i))


@rewrites("", "If")
def fold_if(e: Emit):
    """If(cond) with ``cond`` computable at load: the taken branch's nodes; otherwise the node stays."""
    taken = condition(e)
    if taken is None:
        return False
    then_branch, else_branch = e.attr("then_branch"), e.attr("else_branch")
    if not isinstance(then_branch, Graph) or not isinstance(else_branch, Graph):
        return False
    outer = dict(zip(captured(e.node.attrs), e.node.inputs[1:]))
    branch = then_branch if taken else else_branch
    inline(e, branch, {n: outer[n] for n in branch.outer})
