"""Elementwise kernels: unary math, activations, binary arithmetic, comparisons, logic, Where."""
from __future__ import annotations

import math


from ..backend import erf
from ..dtypes import is_float, is_integer
from ..errors import UnsupportedOpError
from . import kernel


def _unary(op: str, fn, since: int):
    def run(xp, x):
        return fn(xp, x)
    run.__name__ = op
    kernel(op, since)(run)


# since: the first opset whose form the kernel takes (opset 1 versions of the old ops carry the
# legacy ``consumed_inputs`` attribute: they start at 6)
for _op, (_since, _fn) in {
    "Abs": (6, lambda xp, x: xp.abs(x)), "Neg": (6, lambda xp, x: -x), "Exp": (6, lambda xp, x: xp.exp(x)),
    "Log": (6, lambda xp, x: xp.log(x)), "Sqrt": (6, lambda xp, x: xp.sqrt(x)),
    "Floor": (6, lambda xp, x: xp.floor(x)), "Ceil": (6, lambda xp, x: xp.ceil(x)),
    "Round": (11, lambda xp, x: xp.round(x)), "Sign": (9, lambda xp, x: xp.sign(x)),
    "Sin": (7, lambda xp, x: xp.sin(x)), "Cos": (7, lambda xp, x: xp.cos(x)), "Tan": (7, lambda xp, x: xp.tan(x)),
    "Asin": (7, lambda xp, x: xp.arcsin(x)), "Acos": (7, lambda xp, x: xp.arccos(x)),
    "Atan": (7, lambda xp, x: xp.arctan(x)), "Sinh": (9, lambda xp, x: xp.sinh(x)),
    "Cosh": (9, lambda xp, x: xp.cosh(x)), "Tanh": (6, lambda xp, x: xp.tanh(x)),
    "Asinh": (9, lambda xp, x: xp.arcsinh(x)), "Acosh": (9, lambda xp, x: xp.arccosh(x)),
    "Atanh": (9, lambda xp, x: xp.arctanh(x)),
    "Reciprocal": (6, lambda xp, x: (1 / x).astype(x.dtype, copy=False)),
    "Not": (1, lambda xp, x: xp.logical_not(x)), "IsNaN": (9, lambda xp, x: xp.isnan(x)),
    "Erf": (9, lambda xp, x: erf(xp, x).astype(x.dtype, copy=False)),
    "Relu": (6, lambda xp, x: xp.maximum(x, x.dtype.type(0))),
    "Sigmoid": (6, lambda xp, x: _sigmoid(xp, x)),
    "Softsign": (1, lambda xp, x: x / (1 + xp.abs(x))),
    "Softplus": (1, lambda xp, x: xp.logaddexp(x, x.dtype.type(0))),
    "Mish": (18, lambda xp, x: x * xp.tanh(xp.logaddexp(x, x.dtype.type(0)))),
    "HardSwish": (14, lambda xp, x: x * xp.clip(x / 6 + x.dtype.type(0.5), 0, 1)),
}.items():
    _unary(_op, _fn, _since)


def _sigmoid(xp, x):
    """``1 / (1 + exp(-x))`` in place on one buffer; exp overflowing to inf gives exactly 0."""
    y = xp.negative(x)
    xp.exp(y, out=y)
    y += 1
    xp.reciprocal(y, out=y)
    return y


@kernel("Identity")
def Identity(xp, x):
    return x


@kernel("Dropout", since=10)
def Dropout(xp, data, ratio=None, training_mode=None, seed=None):
    if training_mode is not None and bool(training_mode) and (ratio is None or float(ratio) > 0):
        raise UnsupportedOpError("Dropout in training mode is random; reflrp runs inference graphs only")
    return data, xp.ones(data.shape, dtype=bool)


@kernel("IsInf", since=10)
def IsInf(xp, x, detect_negative=1, detect_positive=1):
    return xp.isinf(x) & (((x < 0) & bool(detect_negative)) | ((x > 0) & bool(detect_positive)))


@kernel("LeakyRelu", since=6)
def LeakyRelu(xp, x, alpha=0.01):
    return xp.where(x >= 0, x, x * x.dtype.type(alpha))


@kernel("Elu", since=6)
def Elu(xp, x, alpha=1.0):
    return xp.where(x >= 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


@kernel("Celu", since=12)
def Celu(xp, x, alpha=1.0):
    a = x.dtype.type(alpha)
    return xp.maximum(x, 0) + xp.minimum(0, a * xp.expm1(x / a))


@kernel("Selu", since=6)
def Selu(xp, x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    t = x.dtype.type
    return t(gamma) * xp.where(x > 0, x, t(alpha) * xp.expm1(xp.minimum(x, 0)))


@kernel("ThresholdedRelu", since=10)
def ThresholdedRelu(xp, x, alpha=1.0):
    return xp.where(x > alpha, x, x.dtype.type(0))


@kernel("HardSigmoid", since=6)
def HardSigmoid(xp, x, alpha=0.2, beta=0.5):
    t = x.dtype.type
    return xp.clip(x * t(alpha) + t(beta), 0, 1).astype(x.dtype, copy=False)


@kernel("Gelu", since=20)
def Gelu(xp, x, approximate="none"):
    t = x.dtype.type
    if approximate == "tanh":
        inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)
        return t(0.5) * x * (1 + xp.tanh(inner))
    return t(0.5) * x * (1 + erf(xp, x / t(math.sqrt(2))).astype(x.dtype, copy=False))


@kernel("PRelu", since=7)
def PRelu(xp, x, slope):
    return xp.where(x >= 0, x, x * slope)


@kernel("Clip", since=6)
def Clip(xp, x, min=None, max=None):
    if min is not None:
        x = xp.maximum(x, xp.asarray(min, dtype=x.dtype))
    if max is not None:
        x = xp.minimum(x, xp.asarray(max, dtype=x.dtype))
    return x


# ---- binary arithmetic (numpy broadcasting is ONNX's multidirectional broadcasting, from opset 7;
# before it a ``broadcast``/``axis`` attribute pair chose another rule) ----

@kernel("Add", since=7)
def Add(xp, a, b):
    return a + b


@kernel("Sub", since=7)
def Sub(xp, a, b):
    return a - b


@kernel("Mul", since=7)
def Mul(xp, a, b):
    return a * b


@kernel("Div", since=7)
def Div(xp, a, b):
    if is_integer(a.dtype):  # ONNX integer division truncates toward zero
        q = xp.abs(a) // xp.abs(b)
        return xp.where((a < 0) != (b < 0), -q, q).astype(a.dtype, copy=False)
    return a / b


@kernel("Mod", since=10)
def Mod(xp, a, b, fmod=0):
    return xp.fmod(a, b) if fmod else xp.mod(a, b)


@kernel("Pow", since=7)
def Pow(xp, a, b):
    if is_float(a.dtype) and is_float(b.dtype) and b.ndim == 0 and float(b) == 2.0:
        return a * a
    if is_integer(a.dtype) and is_integer(b.dtype):
        return xp.power(a, b.astype(a.dtype) if b.dtype.kind == "u" else xp.maximum(b, 0).astype(a.dtype))
    return xp.power(a, b.astype(a.dtype) if is_float(a.dtype) else b).astype(a.dtype, copy=False)


def _variadic(op: str, fn, since: int = 6):
    def run(xp, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(xp, out, x)
        return out if len(xs) > 1 else out.copy()
    run.__name__ = op
    kernel(op, since)(run)


_variadic("Sum", lambda xp, a, b: a + b)
_variadic("Max", lambda xp, a, b: xp.maximum(a, b))
_variadic("Min", lambda xp, a, b: xp.minimum(a, b))


@kernel("Mean", since=6)
def Mean(xp, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return (out / len(xs)).astype(xs[0].dtype, copy=False)


for _op, (_since, _fn) in {
    "Equal": (7, lambda xp, a, b: a == b), "Less": (7, lambda xp, a, b: a < b),
    "Greater": (7, lambda xp, a, b: a > b), "LessOrEqual": (12, lambda xp, a, b: a <= b),
    "GreaterOrEqual": (12, lambda xp, a, b: a >= b),
    "And": (7, lambda xp, a, b: a & b), "Or": (7, lambda xp, a, b: a | b), "Xor": (7, lambda xp, a, b: a ^ b),
    "BitwiseAnd": (18, lambda xp, a, b: a & b), "BitwiseOr": (18, lambda xp, a, b: a | b),
    "BitwiseXor": (18, lambda xp, a, b: a ^ b),
}.items():
    kernel(_op, _since)((lambda f: lambda xp, a, b: f(xp, a, b))(_fn))


@kernel("BitwiseNot", since=18)
def BitwiseNot(xp, x):
    return ~x


@kernel("Where", since=9)
def Where(xp, condition, x, y):
    return xp.where(condition, x, y)
