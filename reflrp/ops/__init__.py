"""The op records: for each ONNX op, its forward kernels (by opset), its adjoint and its kind.

A kernel is a plain function named after its op: ``fn(xp, *inputs, **attributes)`` with the spec's
defaults as keyword defaults; it returns one array or a tuple (one per output). Inputs that ONNX moved
from attributes to inputs over the opsets share one parameter name, so one function serves both.

An adjoint (vector-Jacobian product) is ``vjp(xp, G, inputs, outputs, attrs, need) -> list``: ``G``
holds one gradient per output (None where none arrived), each with one extra **leading target axis**
``(K,) + output.shape``; it returns, for every input ``i`` with ``need[i]``, the gradient of shape
``(K,) + input.shape`` (None for inputs that are not differentiable: indices, shapes, flags).

The kind (:mod:`reflrp.ops.kinds`) tells the analysis what sort of function the op is; relevance
rules are decided from kinds, never from op names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UnsupportedOpError
from . import kinds

Kernel = Callable[..., object]
Adjoint = Callable[..., list]


@dataclass
class OpRecord:
    """Everything reflrp knows about one op type.

    ``addends``: inputs that enter the output as separate summands (biases): what an epsilon rule gives
    them is what they absorb. ``relayout``: the output holds exactly the input's values, re-laid out
    (reshape-like), so analysis may look through it. ``reduces``: the output aggregates over axes (a
    normalizer statistic is computed by such ops). ``elementwise``: each output element depends only on
    the input elements at the same (broadcast) position. ``relevant_outputs``: how many leading outputs
    carry relevance (Dropout's mask, LayerNormalization's statistics do not); None: all.
    ``output_is_float``: for ops whose output type is an attribute (Cast), whether it is a float.
    ``quantizer``: maps values onto or off an integer grid (QuantizeLinear, DequantizeLinear): a cast
    that keeps the values up to rounding. ``centred``: integer arithmetic (MatMulInteger, ConvInteger,
    QLinearMatMul, QLinearConv): ``(xp, inputs, outputs, attrs, dtype) -> (inputs, outputs)`` with the
    integer operands and outputs replaced by the numbers they stand for, zero points subtracted, in
    ``dtype``: the ``x_i`` and ``z`` a rule's formula reads (the adjoint centres them itself).
    ``layer``: the layer type the op is for the composites' type maps (Zennit's module types): "conv"
    and "dense" for weight products (Conv/ConvTranspose, Gemm/MatMul: layers when their weight is
    constant), "avgpool", "batchnorm", and "bias" for an Add that can hold a weight product's bias."""

    op_type: str
    kind: str
    versions: list = field(default_factory=list)  # (since, kernel), ascending
    adjoints: dict = field(default_factory=dict)  # since -> adjoint (0: every version)
    addends: tuple[int, ...] | str = ()  # or "all"
    relayout: bool = False
    reduces: bool = False
    elementwise: bool = False
    relevant_outputs: int | None = None
    output_is_float: Callable[[dict], bool] | None = None
    reads_shape_only: bool = False  # Shape, Size: the output depends on the input's shape, not its values
    decode_attrs: Callable | None = None  # (attrs, float policy, node) -> attrs as the kernel takes them
    domain: str = ""  # "reflrp" for reflrp's own ops (an intervention's Apply), not ONNX's
    quantizer: bool = False
    centred: Callable | None = None
    layer: str | None = None

    def kernel_for(self, opset: int) -> Kernel | None:
        usable = [fn for since, fn in self.versions if since <= opset]
        return usable[-1] if usable else None

    def adjoint_for(self, opset: int) -> Adjoint | None:
        """The adjoint of the version that runs at ``opset`` (or the one registered for every version)."""
        since = max((s for s, _ in self.versions if s <= opset), default=None)
        return self.adjoints.get(since, self.adjoints.get(0))

    def attrs_for(self, node, policy=None) -> dict:
        """The node's attributes as the kernel takes them under the float ``policy`` (types decoded)."""
        attrs = dict(node.attrs)
        return self.decode_attrs(attrs, policy, node) if self.decode_attrs is not None else attrs

    def addend_inputs(self, n_inputs: int) -> tuple[int, ...]:
        return tuple(range(n_inputs)) if self.addends == "all" else tuple(self.addends)

    @property
    def since(self) -> int:
        return self.versions[0][0]


_RECORDS: dict[str, OpRecord] = {}


def kernel(op_type: str, since: int = 1, kind: str | None = None, **facts):
    """Register ``fn`` as the kernel of ``op_type`` from opset ``since`` on; the first registration of an
    op gives its ``kind`` and facts (see :class:`OpRecord`)."""

    def register(fn: Kernel) -> Kernel:
        rec = _RECORDS.get(op_type)
        if rec is None:
            if kind is None:
                raise ValueError(f"the first kernel of {op_type} must declare its kind")
            elementwise = facts.pop("elementwise", kind in kinds.ELEMENTWISE_KINDS)
            rec = _RECORDS[op_type] = OpRecord(op_type, kind, elementwise=elementwise, **facts)
        elif kind is not None and kind != rec.kind:
            raise ValueError(f"{op_type}: kind {kind!r} differs from the registered {rec.kind!r}")
        rec.versions.append((since, fn))
        rec.versions.sort(key=lambda v: v[0])
        return fn

    return register


def adjoint(op_type: str, since: int = 0):
    """Register ``fn`` as the vector-Jacobian product of ``op_type``: of its version ``since``, or of
    every version (``since=0``)."""

    def register(fn: Adjoint) -> Adjoint:
        _RECORDS[op_type].adjoints[since] = fn
        return fn

    return register


def record(op_type: str) -> OpRecord | None:
    """The record of ``op_type``, or None when reflrp has no kernel for it."""
    return _RECORDS.get(op_type)


def records() -> dict[str, OpRecord]:
    """Every registered op, by name (a copy)."""
    return dict(sorted(_RECORDS.items()))


def resolve(op_type: str, opset: int, node_label: str = "") -> Kernel:
    """The kernel for ``op_type`` at ``opset``: the newest one whose ``since`` <= ``opset``."""
    rec = _RECORDS.get(op_type)
    where = f"{node_label}: " if node_label else ""
    if rec is None:
        raise UnsupportedOpError(
            f"{where}op {op_type!r} (domain '', opset {opset}) has no kernel in reflrp. "
            f"Supported ops: {', '.join(sorted(_RECORDS))}")
    fn = rec.kernel_for(opset)
    if fn is None:
        raise UnsupportedOpError(f"{where}op {op_type!r} is supported from opset {rec.since}, "
                                 f"the model uses opset {opset}")
    return fn


def supported_ops() -> dict[str, tuple[int, ...]]:
    """ONNX op type -> the opset versions at which reflrp's kernel for it changes."""
    return {op: tuple(s for s, _ in rec.versions) for op, rec in sorted(_RECORDS.items()) if not rec.domain}


from . import elementwise, tensor, reduce, linalg, nn, quant, control  # noqa: E402,F401  (registration side effects)
