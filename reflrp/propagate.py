"""The relevance pass: reverse topological order, one rule per node, fan-out sums."""
from __future__ import annotations

from .conservation import NodeAccount
from .errors import ReflrpError, RuleError
from .rules import RULES, Context, forget_totals, note_total, total


def propagate(plan_nodes, kernels: dict, values: dict, relevance: dict, accounts: list, xp, eps: float,
              stop=frozenset(), keep=None) -> None:
    """Walk ``plan_nodes`` backward, updating ``relevance`` (tensor -> array) and ``accounts`` in place.

    ``values`` holds the forward tensors these nodes read and write; ``kernels`` maps node names to
    their prepared forward steps (rules may rerun a kernel). A node's output values are dropped from
    ``values`` once its rule ran: every rule that reads a tensor (its consumers', its producer's)
    comes before that in reverse order, and the memory serves the relevance arrays that follow.
    Relevance does not flow past tensors in ``stop`` (the attributed tensors). With ``keep`` a set
    of names, the relevance of other tensors is dropped once their producer has passed it on."""
    mass = {name: total(xp, r) for name, r in relevance.items()}  # sum of each tensor's relevance so far
    single = set(mass)  # tensors whose relevance array came in one piece: its total is its mass
    try:
        for p in reversed(plan_nodes):
            _node(p, kernels, values, relevance, accounts, xp, eps, stop, keep, mass, single)
            forget_totals()
            for o in p.node.outputs:
                values.pop(o, None)
    finally:
        forget_totals()


def _node(p, kernels, values, relevance, accounts, xp, eps, stop, keep, mass, single) -> None:
    """Apply one node's rule and book it."""
    node = p.node
    R_out = [relevance.get(o) if o else None for o in node.outputs]
    if p.rule is None or all(r is None for r in R_out) or set(node.outputs) & stop:
        return
    for o, r in zip(node.outputs, R_out):
        if r is not None and o in single:
            note_total(r, mass[o])
    step = kernels.get(node.name)
    ctx = Context(node, xp, eps, p.dynamic, step.fn if step else None,
                  step.attrs if step else dict(node.attrs), p.info)
    inputs = [values[i] if i else None for i in node.inputs]
    outputs = [values.get(o) if o else None for o in node.outputs]
    try:
        result = RULES[p.rule](ctx, inputs, outputs, R_out)
    except ReflrpError:
        raise
    except Exception as exc:
        raise RuleError(f"{node.label()}: rule {p.rule!r} failed: {type(exc).__name__}: {exc}") from None
    given = absorbed = 0.0
    for name, dyn, r in zip(node.inputs, p.dynamic, result.inputs):
        if r is None:
            continue
        share = total(xp, r)
        if dyn:
            _add(relevance, single, name, r)
            mass[name] = mass.get(name, 0.0) + share
            given += share
        else:
            absorbed += share
    for name, r in result.extra.items():
        _add(relevance, single, name, r)
        share = total(xp, r)
        mass[name] = mass.get(name, 0.0) + share
        given += share
    inflow = sum(mass.get(o, 0.0) for o, r in zip(node.outputs, R_out) if r is not None)
    accounts.append(NodeAccount(node.name, node.op_type, p.rule, inflow,
                                given, absorbed + result.absorbed, result.loss, result.deficit))
    if keep is not None:
        for o in node.outputs:
            if o not in keep:
                relevance.pop(o, None)


def _add(relevance: dict, single: set, name: str, r) -> None:
    """Accumulate ``r`` into ``relevance[name]`` (fan-out sums), tracking one-piece arrays."""
    if name in relevance:
        relevance[name] = relevance[name] + r
        single.discard(name)
    else:
        relevance[name] = r
        single.add(name)
