"""Conservation books: per node, relevance in and out, absorbed by constants, epsilon loss and softmax
deficit; a ledger per explain call (one column per target) and a report per target with an ``ok``
verdict."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# (node residual, totals) tolerances by the dtype the relevance pass ran in
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 3e-2, "bfloat16": 3e-2}


@dataclass(frozen=True)
class NodeAccount:
    """One node's books for one target: ``inflow = outflow + absorbed + loss + deficit + residual``."""

    node: str
    op: str
    rule: str
    inflow: float
    outflow: float
    absorbed: float
    loss: float
    deficit: float

    scale: float = 0.0  # the relevance moving through (sum |R|) where the inflow nets out to much less

    @property
    def residual(self) -> float:
        """What no term explains: rounding only (the ``ok`` verdict bounds it)."""
        return self.inflow - self.outflow - self.absorbed - self.loss - self.deficit


@dataclass
class ConservationReport:
    """Totals of one target's attribution, its relevance per attributed tensor, every node's account."""

    target: float            # total initial relevance (the target logits)
    at_wrt: float            # relevance that reached the attributed tensors
    absorbed: float          # by biases, position/token-type embeddings, masks, pad values
    loss: float              # eaten by the epsilon stabiliser (or 0/0 with eps = 0)
    deficit: float           # softmax (and attention) non-conservation by design
    nodes: list[NodeAccount]
    at_each: dict = field(default_factory=dict)  # attributed tensor -> its relevance
    tolerance: float = 1e-9

    @property
    def ratio(self) -> float:
        """Relevance at the inputs over the target (1.0 = conservative)."""
        return self.at_wrt / self.target if self.target else float("nan")

    @property
    def max_residual(self) -> float:
        """The largest per-node residual relative to ``max(|inflow|, sum |R_in|, 1e-12 |target|)``: rounding
        scales with the relevance that moves, which a cancelling inflow understates."""
        floor = 1e-12 * abs(self.target)
        worst = 0.0
        for a in self.nodes:
            worst = max(worst, abs(a.residual) / max(abs(a.inflow), a.scale, floor, 1e-300))
        return worst

    @property
    def closing_error(self) -> float:
        """``|target - (at inputs + absorbed + loss + deficit)|`` relative to the largest term."""
        terms = (self.target, self.at_wrt, self.absorbed, self.loss, self.deficit)
        scale = max(max(abs(t) for t in terms), 1e-300)
        return abs(self.target - self.at_wrt - self.absorbed - self.loss - self.deficit) / scale

    @property
    def ok(self) -> bool:
        """Every node's account and the totals close within the tolerance of the pass's dtype."""
        values = [self.target, self.at_wrt, self.absorbed, self.loss, self.deficit]
        return (all(np.isfinite(values)) and self.max_residual <= self.tolerance
                and self.closing_error <= self.tolerance)

    def text(self, top: int = 8) -> str:
        lines = [
            f"target relevance      {self.target: .6e}",
            f"relevance at inputs   {self.at_wrt: .6e}  (ratio {self.ratio:.6f})",
        ]
        if len(self.at_each) > 1:
            lines += [f"  at {name}: {value: .6e}" for name, value in self.at_each.items()]
        lines += [
            f"absorbed by constants {self.absorbed: .6e}",
            f"epsilon loss          {self.loss: .6e}",
            f"softmax deficit       {self.deficit: .6e}",
            f"max node residual     {self.max_residual:.2e} (relative)",
            f"books                 {'ok' if self.ok else 'NOT OK'} (tolerance {self.tolerance:g})",
        ]
        big = sorted(self.nodes, key=lambda a: -abs(a.absorbed))[:top]
        if big and abs(big[0].absorbed) > 0:
            lines.append("largest absorbers:")
            lines += [f"  {a.node} ({a.op}, {a.rule}): {a.absorbed: .4e}" for a in big if a.absorbed]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


class Ledger:
    """The books of one relevance pass, one column per target.

    ``mass[t]`` is the relevance that has arrived at tensor ``t`` so far (the per-target sum of every
    piece sent there); a node's inflow is the mass of its outputs. ``rows`` are the node accounts."""

    def __init__(self, k: int):
        self.k = k
        self.mass: dict[str, np.ndarray] = {}
        self.rows: list[tuple] = []
        self.sole: dict[str, tuple] = {}  # tensor -> (the one piece that arrived there, its total), until read

    def arrive(self, name: str, amount: np.ndarray, piece=None) -> None:
        if name in self.mass:
            self.mass[name] = self.mass[name] + amount
            self.sole.pop(name, None)
        else:
            self.mass[name] = amount
            if piece is not None:
                self.sole[name] = (piece, amount)

    def inflow(self, names) -> np.ndarray:
        arrived = [self.mass[n] for n in names if n in self.mass]
        return arrived[0] if len(arrived) == 1 else sum(arrived, np.zeros(self.k))

    def book(self, node, rule: str, inflow, outflow, absorbed, loss, deficit, scale=0.0) -> None:
        """One node's account: each value a per-target vector (or a scalar for every target)."""
        self.rows.append((node.name, node.op_type, rule, (inflow, outflow, absorbed, loss, deficit, scale)))

    def table(self) -> np.ndarray:
        """The accounts as one (nodes, 6, K) float64 array (a scalar fills its K columns)."""
        table = np.zeros((len(self.rows), 6, self.k))
        for i, (*_, values) in enumerate(self.rows):
            for c, v in enumerate(values):
                if not (isinstance(v, float) and v == 0.0):
                    table[i, c] = v
        return table

    def reports(self, targets: np.ndarray, at_each: dict, dtype: str) -> list[ConservationReport]:
        """One report per target column."""
        tol = TOLERANCE.get(dtype, 1e-4)
        table = self.table()
        out = []
        for j in range(self.k):
            column = table[:, :, j].tolist()  # host floats, one list per node
            nodes = [NodeAccount(n, op, rule, *values) for (n, op, rule, _), values in zip(self.rows, column)]
            each = {name: float(v[j]) for name, v in at_each.items()}
            out.append(ConservationReport(float(targets[j]), sum(each.values()), sum(a.absorbed for a in nodes),
                                          sum(a.loss for a in nodes), sum(a.deficit for a in nodes), nodes, each, tol))
        return out
