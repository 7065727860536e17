"""The relevance pass: reverse topological order, one rule per node, fan-out sums, the books."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ReflrpError, RuleError
from .ops import record
from .rules import RULES, Context


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


def propagate(run: Pass, plan_nodes, values: dict, relevance: dict, ledger) -> None:
    """Walk ``plan_nodes`` backward, updating ``relevance`` (tensor -> array with a leading target axis)
    and the ``ledger`` in place. A node's output values are dropped from ``values`` once its rule ran:
    every rule that reads them comes before that in reverse order."""
    for p in reversed(plan_nodes):
        _node(run, p, values, relevance, ledger)
        for o in p.node.outputs:
            values.pop(o, None)


def _context(run: Pass, p) -> Context:
    node = p.node
    step = run.steps.get(node.name)
    rec = record(node.op_type)
    return Context(node, run.xp, run.eps, p.dynamic, step.attrs if step else dict(node.attrs), p.info,
                   step.fn if step else None, step.adjoint if step else None,
                   rec.addend_inputs(len(node.inputs)) if rec else (), run.formulas)


def _node(run: Pass, p, values, relevance, ledger) -> None:
    """Apply one node's rule, check it stayed finite, send the pieces on and book it."""
    node = p.node
    R_out = [relevance.get(o) if o else None for o in node.outputs]
    if p.rule is None or all(r is None for r in R_out) or set(node.outputs) & run.stop:
        return
    ctx = _context(run, p)
    inputs = [values[i] if i else None for i in node.inputs]
    outputs = [values.get(o) if o else None for o in node.outputs]
    try:
        result = RULES[p.rule](ctx, inputs, outputs, R_out)
    except ReflrpError as exc:  # a limitation of the rule or adjoint at this node
        raise RuleError(f"{node.label()}: {exc}" if node.name not in str(exc) else str(exc)) from None
    except Exception as exc:
        raise RuleError(f"{node.label()}: rule {p.rule!r} failed: {type(exc).__name__}: {exc}") from None
    inflow = ledger.inflow([o for o, r in zip(node.outputs, R_out) if r is not None])
    given, absorbed = np.zeros(ledger.k), np.asarray(result.absorbed, dtype=np.float64)
    pieces = [(name, dyn, r) for name, dyn, r in zip(node.inputs, p.dynamic, result.inputs) if r is not None]
    pieces += [(name, True, r) for name, r in result.extra.items()]
    for name, dyn, r in pieces:
        share = ctx.totals(r)
        if not np.all(np.isfinite(share)):
            raise _non_finite(run, p, name)
        if dyn:
            _accumulate(relevance, name, r)
            ledger.arrive(name, share)
            given = given + share
        else:
            absorbed = absorbed + share
    if not (np.all(np.isfinite(absorbed)) and np.all(np.isfinite(result.loss)) and np.all(np.isfinite(result.deficit))):
        raise _non_finite(run, p, "its books")
    ledger.book(node, p.rule, inflow, given, absorbed, result.loss, result.deficit)
    if run.keep is not None:
        for o in node.outputs:
            if o not in run.keep:
                relevance.pop(o, None)


def _non_finite(run: Pass, p, where: str) -> RuleError:
    return RuleError(f"{p.node.label()}: relevance became NaN or infinite (rule {p.rule!r}, at {where!r}); "
                     f"this is the first node where it happened.{run.hint}")


def _accumulate(relevance: dict, name: str, r) -> None:
    """Fan-out: a tensor read by several nodes receives the sum of what they send."""
    relevance[name] = relevance[name] + r if name in relevance else r
