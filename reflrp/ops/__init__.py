"""Forward kernels: one registry keyed by ONNX op type and the opset version they start at.

A kernel is a plain function named after its op: ``fn(xp, *inputs, **attributes)`` with the
spec's defaults as keyword defaults. It returns one array or a tuple of arrays (one per output).
Inputs that ONNX moved from attributes to inputs over the opsets share one parameter name, so
one function serves both forms.
"""
from __future__ import annotations

from typing import Callable

from ..errors import UnsupportedOpError

Kernel = Callable[..., object]
_REGISTRY: dict[str, list[tuple[int, Kernel]]] = {}


def kernel(op_type: str, since: int = 1, name: str | None = None):
    """Register ``fn`` as the kernel of ``op_type`` from opset ``since`` on."""

    def register(fn: Kernel) -> Kernel:
        versions = _REGISTRY.setdefault(op_type, [])
        versions.append((since, fn))
        versions.sort(key=lambda v: v[0])
        return fn

    return register


def resolve(op_type: str, opset: int, node_label: str = "") -> Kernel:
    """The kernel for ``op_type`` at ``opset``: the newest one whose ``since`` <= ``opset``."""
    versions = _REGISTRY.get(op_type)
    if not versions:
        where = f"{node_label}: " if node_label else ""
        raise UnsupportedOpError(
            f"{where}op {op_type!r} (domain '', opset {opset}) has no kernel in reflrp. "
            f"Supported ops: {', '.join(sorted(_REGISTRY))}")
    usable = [fn for since, fn in versions if since <= opset]
    if not usable:
        raise UnsupportedOpError(f"{node_label}: op {op_type!r} is supported from opset {versions[0][0]}, "
                                 f"the model uses opset {opset}")
    return usable[-1]


def supported_ops() -> dict[str, tuple[int, ...]]:
    """Op type -> the opset versions at which reflrp's kernel for it changes."""
    return {op: tuple(s for s, _ in v) for op, v in sorted(_REGISTRY.items())}


from . import elementwise, tensor, reduce, linalg, nn, quant  # noqa: E402,F401  (registration side effects)
