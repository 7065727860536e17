"""The speed layer: faster kernels, adjoints and rule formulas that compute the same numbers as the plain
ones in reflrp.ops and reflrp.rules.formulas, plus the forward's shape cache.

It is on by default and switched off with ``fast=False`` on ``run`` / ``explain`` or ``REFLRP_FAST=0``
in the environment; tests run the zoo both ways (tests/test_fast_layer.py). Nothing here changes what
is computed, only how: BLAS-friendly layouts, products restricted to the non-zero rows of a gradient,
one-pass formulas where no masking is needed, rules that write their products into arrays they just
made, and shape arithmetic computed once per input signature.
"""
from __future__ import annotations

import os

from . import formulas, linalg
from .rules import FASTER
from .shape_cache import ShapeCache

KERNELS = {"MatMul": linalg.MatMul}
ADJOINTS = {"MatMul": linalg.matmul_vjp}

__all__ = ["ShapeCache", "formulas", "enabled", "kernel", "adjoint", "rule_table"]


def enabled(fast: bool | None) -> bool:
    """The ``fast`` argument, or (None) the environment: ``REFLRP_FAST=0`` turns the layer off."""
    if fast is None:
        return os.environ.get("REFLRP_FAST", "1").strip().lower() not in ("0", "off", "false", "no")
    if not isinstance(fast, bool):
        from ..errors import ReflrpError
        raise ReflrpError(f"fast must be True, False or None, not {fast!r}")
    return fast


def kernel(op_type: str, plain):
    return KERNELS.get(op_type, plain)


def adjoint(op_type: str, plain):
    return ADJOINTS.get(op_type, plain)


def rule_table(plain: dict) -> dict:
    """The rule table with the faster versions of some rules (reflrp.fast.rules) in place of the plain ones
    (a rule registered over a plain one under its name is kept)."""
    return {name: FASTER.get(fn, fn) for name, fn in plain.items()}
