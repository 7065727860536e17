"""The relevance pass: reverse topological order, one rule per node, fan-out sums."""
from __future__ import annotations

from .conservation import NodeAccount
from .rules import RULES, Context, total


def propagate(plan, prep, values: dict, seeds: dict, xp) -> tuple[dict, list[NodeAccount]]:
    """Walk ``plan`` backward from ``seeds`` (tensor -> initial relevance).

    Returns the relevance of every tensor that received some, and the per-node accounts.
    ``values`` holds every forward tensor; ``prep`` supplies the kernels rules may rerun.
    """
    kernels = {s.node.name: s for s in prep.steps}
    relevance: dict = dict(seeds)
    accounts: list[NodeAccount] = []
    stop = set(plan.wrt)
    for p in reversed(plan.nodes):
        node = p.node
        R_out = [relevance.get(o) if o else None for o in node.outputs]
        if p.rule is None or all(r is None for r in R_out) or set(node.outputs) & stop:
            continue
        step = kernels.get(node.name)
        ctx = Context(node, xp, plan.epsilon, p.dynamic, step.fn if step else None,
                      step.attrs if step else dict(node.attrs), p.info)
        inputs = [values[i] if i else None for i in node.inputs]
        outputs = [values.get(o) if o else None for o in node.outputs]
        result = RULES[p.rule](ctx, inputs, outputs, R_out)
        given = absorbed = 0.0
        for name, dyn, r in zip(node.inputs, p.dynamic, result.inputs):
            if r is None:
                continue
            if dyn:
                relevance[name] = relevance[name] + r if name in relevance else r
                given += total(xp, r)
            else:
                absorbed += total(xp, r)
        for name, r in result.extra.items():
            relevance[name] = relevance[name] + r if name in relevance else r
            given += total(xp, r)
        accounts.append(NodeAccount(node.name, node.op_type, p.rule, sum(total(xp, r) for r in R_out),
                                    given, absorbed + result.absorbed, result.loss, result.deficit))
    return relevance, accounts
