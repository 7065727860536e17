"""Conservation bookkeeping: per node, relevance in and out, absorbed by constants, epsilon loss and
softmax deficit; totals for a whole attribution, and a readable text form."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAccount:
    """One node's books: ``inflow = outflow + absorbed + loss + deficit + residual``."""

    node: str
    op: str
    rule: str
    inflow: float
    outflow: float
    absorbed: float
    loss: float
    deficit: float

    @property
    def residual(self) -> float:
        """What no term explains; rounding only (the tests bound it)."""
        return self.inflow - self.outflow - self.absorbed - self.loss - self.deficit


@dataclass
class ConservationReport:
    """Totals of an attribution plus every node's account."""

    target: float            # total initial relevance (the target logits)
    at_wrt: float            # relevance that reached the attributed tensors
    absorbed: float          # by biases, position/token-type embeddings, masks, pad values
    loss: float              # eaten by the epsilon stabiliser (or 0/0 with eps = 0)
    deficit: float           # softmax (and attention) non-conservation by design
    nodes: list[NodeAccount]

    @property
    def ratio(self) -> float:
        """Relevance at the inputs over the target (1.0 = conservative)."""
        return self.at_wrt / self.target if self.target else float("nan")

    @property
    def max_residual(self) -> float:
        """The largest per-node residual relative to that node's inflow."""
        worst = 0.0
        for a in self.nodes:
            scale = max(abs(a.inflow), abs(a.outflow), abs(a.absorbed), 1e-300)
            worst = max(worst, abs(a.residual) / scale)
        return worst

    def text(self, top: int = 8) -> str:
        lines = [
            f"target relevance      {self.target: .6e}",
            f"relevance at inputs   {self.at_wrt: .6e}  (ratio {self.ratio:.6f})",
            f"absorbed by constants {self.absorbed: .6e}",
            f"epsilon loss          {self.loss: .6e}",
            f"softmax deficit       {self.deficit: .6e}",
            f"max node residual     {self.max_residual:.2e} (relative)",
        ]
        big = sorted(self.nodes, key=lambda a: -abs(a.absorbed))[:top]
        if big and abs(big[0].absorbed) > 0:
            lines.append("largest absorbers:")
            lines += [f"  {a.node} ({a.op}, {a.rule}): {a.absorbed: .4e}" for a in big if a.absorbed]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def report(target_total: float, at_wrt: float, accounts: list[NodeAccount]) -> ConservationReport:
    return ConservationReport(target_total, at_wrt, sum(a.absorbed for a in accounts),
                              sum(a.loss for a in accounts), sum(a.deficit for a in accounts), accounts)
