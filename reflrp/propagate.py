"""The relevance pass: reverse topological order, one rule per node, fan-out sums."""
from __future__ import annotations

from .conservation import NodeAccount
from .rules import RULES, Context, total


def propagate(plan_nodes, kernels: dict, values: dict, relevance: dict, accounts: list, xp, eps: float,
              stop=frozenset(), keep=None) -> None:
    """Walk ``plan_nodes`` backward, updating ``relevance`` (tensor -> array) and ``accounts`` in place.

    ``values`` holds the forward tensors these nodes read and write; ``kernels`` maps node names to
    their prepared forward steps (rules may rerun a kernel). Relevance does not flow past tensors
    in ``stop`` (the attributed tensors). With ``keep`` a set of names, the relevance of other
    tensors is dropped once their producer has passed it on (bounded memory)."""
    for p in reversed(plan_nodes):
        node = p.node
        R_out = [relevance.get(o) if o else None for o in node.outputs]
        if p.rule is None or all(r is None for r in R_out) or set(node.outputs) & stop:
            continue
        step = kernels.get(node.name)
        ctx = Context(node, xp, eps, p.dynamic, step.fn if step else None,
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
        if keep is not None:
            for o in node.outputs:
                if o not in keep:
                    relevance.pop(o, None)
