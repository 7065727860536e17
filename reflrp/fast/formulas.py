"""The rule formulas of reflrp.rules.formulas in fewer passes: one division or product, and the masked
repair only when the result is not finite (same numbers)."""
from __future__ import annotations

import numpy as np

from ..rules.formulas import ratio as plain_ratio
from ..rules.formulas import stab, totals
from ..rules.formulas import times as plain_times

__all__ = ["stab", "ratio", "times", "totals"]


def ratio(xp, R, z, eps: float):
    """``R / stab(z)``: one division; the masked form only when some element is 0/0, R/0 or R/inf."""
    with np.errstate(all="ignore"):
        G = R / stab(xp, z, eps)
    if bool(xp.isfinite(xp.sum(G))):  # one reduction; an overflowing sum only costs the plain form
        return G
    return plain_ratio(xp, R, z, eps)


def times(xp, x, G):
    """``x * G``: one product; the masked form only when it is not finite (``-inf * 0``)."""
    with np.errstate(all="ignore"):
        r = x * G
    if bool(xp.isfinite(xp.sum(r))):
        return r
    return plain_times(xp, x, G)
