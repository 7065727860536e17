"""The relevance pass: reverse topological order, one rule per node, fan-out sums, the books."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backend import quiet
from .conservation import TOLERANCE
from .errors import ReflrpError, RuleError
from .ops import record
from .ops.grad import unbroadcast
from .rules import RULES, Context
from .rules import formulas as plain_formulas


@dataclass(frozen=True)
class Pass:
    """What one relevance pass needs besides the values: the namespace, epsilon, the prepared forward
    steps (kernels, attributes, adjoints) by node name, the formulas, where relevance stops, and which
    latent relevance to keep (None: all)."""

    xp: Any
    eps: float
    steps: dict
    formulas: Any
    stop: frozenset
    keep: frozenset | None = None
    hint: str = ""  # appended to a non-finite error (what to try)
    rules: dict = None  # rule name -> function (None: reflrp.rules.RULES; the speed layer's faster ones)
    facts: dict = field(default_factory=dict)  # each node's op facts (see _op_facts), kept per prepared forward


def propagate(run: Pass, plan_nodes, values: dict, relevance: dict, ledger) -> None:
    """Walk ``plan_nodes`` backward, updating ``relevance`` (tensor -> array with a leading target axis)
    and the ``ledger`` in place. A node's output values are dropped from ``values`` once its rule ran:
    every rule that reads them comes before that in reverse order. numpy's floating-point warnings are
    off throughout (non-finite values are checked in the books)."""
    with quiet(run.xp):
        for p in reversed(plan_nodes):
            _node(run, p, values, relevance, ledger)
            for o in p.node.outputs:
                values.pop(o, None)


def _context(run: Pass, p, inflow) -> Context:
    node = p.node
    eps = run.eps if p.eps is None else p.eps
    attrs, kernel, vjp, addends, centred = _op_facts(run, p)
    return Context(node, run.xp, eps, p.dynamic, attrs, p.info, kernel, vjp, addends, run.formulas, inflow,
                   centred=centred, params=p.params)


def _op_facts(run: Pass, p) -> tuple:
    """(attributes, kernel, adjoint, addend inputs, centred) of a plan node's op, worked out once per
    prepared forward (``run.facts``: they depend on the node and its steps only)."""
    layer = p.layer if p.layer is not None and p.layer.bias_add is not None else None
    key = (p.node.name,) if layer is None else (p.node.name, layer.product.name, layer.bias_side)
    facts = run.facts.get(key)
    if facts is None:
        if layer is not None:  # one weight layer over two nodes
            product = run.steps[layer.product.name]
            kernel, vjp = layer_op(product, run.steps[p.node.name], layer.bias_side)
            facts = (product.attrs, kernel, vjp, (2,), None)
        else:
            step, rec = run.steps.get(p.node.name), record(p.node.op_type)
            facts = (step.attrs if step else dict(p.node.attrs), step.fn if step else None,
                     step.adjoint if step else None, rec.addend_inputs(len(p.node.inputs)) if rec else (),
                     rec.centred if rec else None)
        run.facts[key] = facts
    return facts


def layer_op(product, add, side: int):
    """Kernel and adjoint of ``Add(product(x, W), b)`` as one op of ``(x, W, b)`` (a weight layer whose
    bias is a node of its own; ``b`` None: without it), from the two nodes' own kernels and adjoints."""
    def kernel(xp, x, W, b, **attrs):
        y = product.fn(xp, x, W, **attrs)
        return y if b is None else add.fn(xp, *((b, y) if side == 0 else (y, b)))

    def vjp(xp, G, inputs, outputs, attrs, need):
        grads = list(product.adjoint(xp, G, list(inputs[:2]), [None], attrs, tuple(need[:2])))[:2]
        b = inputs[2]
        return grads + [unbroadcast(xp, G[0], b.shape) if need[2] and b is not None else None]
    return kernel, vjp


def _node(run: Pass, p, values, relevance, ledger) -> None:
    """Apply one node's rule, check it stayed finite, send the pieces on and book it."""
    node = p.node
    R_out = [relevance.get(o) if o else None for o in node.outputs]
    if p.rule is None or all(r is None for r in R_out) or any(o in run.stop for o in node.outputs):
        return
    inflow = ledger.inflow([o for o, r in zip(node.outputs, R_out) if r is not None])
    inputs = [values[i] if i else None for i in p.reads]
    outputs = [values.get(o) if o else None for o in node.outputs]
    ctx = _context(run, p, inflow)
    if p.layer is not None and outputs[0] is None:  # a checkpointed layer split over two segments
        outputs[0] = ctx.kernel(ctx.xp, *inputs, **ctx.attrs)
    arrived = [ledger.sole.pop(o) for o in node.outputs if o in ledger.sole]
    pieces, shares, books = _apply(ctx, p, (run.rules or RULES)[p.rule], inputs, outputs, R_out, inflow, arrived)
    finite = _finite(books[0])
    if not finite and (not ctx.f.EXACT or run.rules is not None):  # the speed layer: redo it plainly
        ctx = replace(ctx, f=plain_formulas)
        pieces, shares, books = _apply(ctx, p, RULES[p.rule], inputs, outputs, R_out, inflow, arrived)
        finite = _finite(books[0])
    accounted, given, absorbed, result = books
    if not finite:
        where = next((name for (name, _, _), s in zip(pieces, shares) if not np.isfinite(s).all()), "its books")
        raise _non_finite(run, p, where)
    for (name, dyn, r), share in zip(pieces, shares):
        if dyn:
            _accumulate(relevance, name, r)
            ledger.arrive(name, share, r)
    ledger.book(node, p.rule, inflow, given, absorbed, result.loss, result.deficit,
                _scale(ctx, R_out, inflow, inflow - accounted))
    if run.keep is not None:
        for o in node.outputs:
            if o not in run.keep:
                relevance.pop(o, None)


def _apply(ctx, p, rule, inputs, outputs, R_out, inflow, arrived=()):
    """Run ``rule``; its pieces (input name, dynamic?, relevance), their per-target totals, and the books:
    (what they account for, ``given + absorbed + loss + deficit`` per target; given; absorbed; the result).
    ``arrived``: (array, total) of output relevance that came as one piece (see :func:`_share`)."""
    node = p.node
    try:
        result = rule(ctx, inputs, outputs, R_out)
    except ReflrpError as exc:  # a limitation of the rule or adjoint at this node
        raise RuleError(f"{node.label()}: {exc}" if node.name not in str(exc) else str(exc)) from None
    except Exception as exc:
        raise RuleError(f"{node.label()}: rule {p.rule!r} failed: {type(exc).__name__}: {exc}") from None
    pieces = [(name, dyn, r) for name, dyn, r in zip(p.reads, p.dynamic, result.inputs) if r is not None]
    if result.extra:
        pieces += [(name, True, r) for name, r in result.extra.items()]
    shares = [_share(ctx, r, arrived) for _, _, r in pieces]
    given, absorbed = 0.0, result.absorbed  # what went to dynamic inputs; to constant ones (and fill values)
    for (_, dyn, _), share in zip(pieces, shares):
        if dyn:
            given = _sum((share,), given)
        else:
            absorbed = _sum((share,), absorbed)
    given = np.zeros(len(inflow)) if isinstance(given, float) else given
    if result.rest_absorbed:  # fill values: what arrived and went to no input
        absorbed = inflow - given
    return pieces, shares, (_sum((absorbed, result.loss, result.deficit), given), given, absorbed, result)


def _share(ctx, r, arrived):
    """The per-target total of piece ``r``; ``arrived``: (array, total) of the relevance that came to the
    node's outputs as one piece each, whose totals the speed layer reuses (reflrp.fast.formulas.known_total)."""
    total = ctx.f.known_total(r, arrived) if arrived else None
    return ctx.f.totals(ctx.xp, r) if total is None else total


def _sum(terms, start):
    """``start`` plus the per-target vectors (or scalars) in ``terms``; exact zeros are skipped."""
    for t in terms:
        if not (isinstance(t, float) and t == 0.0):
            start = start + t if not (isinstance(start, float) and start == 0.0) else t
    return start


def _finite(v) -> bool:
    """Every entry of a per-target vector is finite (a NaN or inf anywhere makes the sum non-finite)."""
    return math.isfinite(sum(v.tolist()))


def _scale(ctx, R_out, inflow, residual):
    """0 where the residual is rounding-small against the inflow; else the relevance that arrived in
    absolute terms, ``sum |R_y|``, the yardstick of rounding when the inflow cancels (measured only then)."""
    tol = _tolerance((R_out[0] if R_out[0] is not None else next(r for r in R_out if r is not None)).dtype)
    if all(abs(r) <= tol * abs(i) for r, i in zip(residual.tolist(), inflow.tolist())):  # K host floats
        return 0.0
    return sum(ctx.totals(ctx.xp.abs(r)) for r in R_out if r is not None)


# the books' tolerances by the dtype's one-letter code (``dtype.name`` costs microseconds, paid at every node)
_TOLERANCE_OF = {np.dtype(name).char: tol for name, tol in TOLERANCE.items() if name in ("float64", "float32", "float16")}


def _tolerance(dtype) -> float:
    tol = _TOLERANCE_OF.get(dtype.char) if dtype.kind == "f" else None
    return tol if tol is not None else TOLERANCE.get(str(dtype), 1e-4)


def _non_finite(run: Pass, p, where: str) -> RuleError:
    return RuleError(f"{p.node.label()}: relevance became NaN or infinite (rule {p.rule!r}, at {where!r}); "
                     f"this is the first node where it happened.{run.hint}")


def _accumulate(relevance: dict, name: str, r) -> None:
    """Fan-out: a tensor read by several nodes receives the sum of what they send."""
    relevance[name] = relevance[name] + r if name in relevance else r
