"""Elementwise kernels and their adjoints: unary math, activations, binary arithmetic, comparisons,
logic, Where."""
from __future__ import annotations

import math

import numpy as np

from ..backend import erf
from ..dtypes import is_float, is_integer
from ..errors import UnsupportedOpError
from . import adjoint, kernel
from . import kinds as K
from .grad import select, unbroadcast, winners


def _unary(op: str, fn, derivative, kind: str = K.ACTIVATION, since: int = 1):
    """Register a one-input elementwise op: ``y = fn(x)``, adjoint ``G * derivative(x, y)``."""
    def run(xp, x):
        return fn(xp, x)
    run.__name__ = op
    kernel(op, since, kind=kind)(run)

    def vjp(xp, G, inputs, outputs, attrs, need):
        return [G[0] * derivative(xp, inputs[0], outputs[0])]
    adjoint(op)(vjp)


def _zero(xp, x, y):
    return xp.zeros(x.shape, dtype=x.dtype)


def _sigmoid(xp, x):
    """``1 / (1 + exp(-x))`` in place on one buffer; exp overflowing to inf gives exactly 0."""
    y = xp.negative(x)
    xp.exp(y, out=y)
    y += 1
    xp.reciprocal(y, out=y)
    return y


def _mish_derivative(xp, x, y):
    t = xp.tanh(xp.logaddexp(x, x.dtype.type(0)))
    return t + x * _sigmoid(xp, x) * (1 - t * t)


_ROOT_2_OVER_PI = 2 / math.sqrt(math.pi)

# op: (forward, derivative dy/dx as a function of x and y)
UNARY = {
    "Abs": (lambda xp, x: xp.abs(x), lambda xp, x, y: xp.sign(x)),
    "Exp": (lambda xp, x: xp.exp(x), lambda xp, x, y: y),
    "Log": (lambda xp, x: xp.log(x), lambda xp, x, y: 1 / x),
    "Sqrt": (lambda xp, x: xp.sqrt(x), lambda xp, x, y: 0.5 / y),
    "Floor": (lambda xp, x: xp.floor(x), _zero),
    "Ceil": (lambda xp, x: xp.ceil(x), _zero),
    "Round": (lambda xp, x: xp.round(x), _zero),
    "Sign": (lambda xp, x: xp.sign(x), _zero),
    "Sin": (lambda xp, x: xp.sin(x), lambda xp, x, y: xp.cos(x)),
    "Cos": (lambda xp, x: xp.cos(x), lambda xp, x, y: -xp.sin(x)),
    "Tan": (lambda xp, x: xp.tan(x), lambda xp, x, y: 1 + y * y),
    "Asin": (lambda xp, x: xp.arcsin(x), lambda xp, x, y: 1 / xp.sqrt(1 - x * x)),
    "Acos": (lambda xp, x: xp.arccos(x), lambda xp, x, y: -1 / xp.sqrt(1 - x * x)),
    "Atan": (lambda xp, x: xp.arctan(x), lambda xp, x, y: 1 / (1 + x * x)),
    "Sinh": (lambda xp, x: xp.sinh(x), lambda xp, x, y: xp.cosh(x)),
    "Cosh": (lambda xp, x: xp.cosh(x), lambda xp, x, y: xp.sinh(x)),
    "Tanh": (lambda xp, x: xp.tanh(x), lambda xp, x, y: 1 - y * y),
    "Asinh": (lambda xp, x: xp.arcsinh(x), lambda xp, x, y: 1 / xp.sqrt(x * x + 1)),
    "Acosh": (lambda xp, x: xp.arccosh(x), lambda xp, x, y: 1 / xp.sqrt(x * x - 1)),
    "Atanh": (lambda xp, x: xp.arctanh(x), lambda xp, x, y: 1 / (1 - x * x)),
    "Reciprocal": (lambda xp, x: (1 / x).astype(x.dtype, copy=False), lambda xp, x, y: -y * y),
    "Erf": (lambda xp, x: erf(xp, x).astype(x.dtype, copy=False),
            lambda xp, x, y: x.dtype.type(_ROOT_2_OVER_PI) * xp.exp(-x * x)),
    "Relu": (lambda xp, x: xp.maximum(x, x.dtype.type(0)), lambda xp, x, y: (x > 0).astype(x.dtype)),
    "Sigmoid": (_sigmoid, lambda xp, x, y: y * (1 - y)),
    "Softsign": (lambda xp, x: x / (1 + xp.abs(x)), lambda xp, x, y: 1 / (1 + xp.abs(x)) ** 2),
    "Softplus": (lambda xp, x: xp.logaddexp(x, x.dtype.type(0)), lambda xp, x, y: _sigmoid(xp, x)),
    "Mish": (lambda xp, x: x * xp.tanh(xp.logaddexp(x, x.dtype.type(0))), _mish_derivative),
    "HardSwish": (lambda xp, x: x * xp.clip(x / 6 + x.dtype.type(0.5), 0, 1),
                  lambda xp, x, y: xp.where(x < -3, 0, xp.where(x > 3, 1, x / 3 + x.dtype.type(0.5))).astype(x.dtype)),
}
# the first opset whose form each kernel takes (opset 1 versions of the old ops carry the legacy
# ``consumed_inputs`` attribute: they start at 6)
SINCE = {"Abs": 6, "Neg": 6, "Exp": 6, "Log": 6, "Sqrt": 6, "Floor": 6, "Ceil": 6, "Round": 11, "Sign": 9, "Sin": 7,
         "Cos": 7, "Tan": 7, "Asin": 7, "Acos": 7, "Atan": 7, "Sinh": 9, "Cosh": 9, "Tanh": 6, "Asinh": 9, "Acosh": 9,
         "Atanh": 9, "Reciprocal": 6, "Erf": 9, "Relu": 6, "Sigmoid": 6, "Softsign": 1, "Softplus": 1, "Mish": 18,
         "HardSwish": 14}
for _op, (_fn, _d) in UNARY.items():
    _unary(_op, _fn, _d, since=SINCE[_op])
_unary("Neg", lambda xp, x: -x, lambda xp, x, y: -xp.ones(x.shape, dtype=x.dtype), since=SINCE["Neg"])

for _op, (_since, _fn) in {"Not": (1, lambda xp, x: xp.logical_not(x)), "IsNaN": (9, lambda xp, x: xp.isnan(x)),
                           "BitwiseNot": (18, lambda xp, x: ~x)}.items():
    kernel(_op, _since, kind=K.CONSTANT)(_fn)


@kernel("Identity", kind=K.CAST)
def Identity(xp, x):
    return x


@adjoint("Identity")
def _identity_vjp(xp, G, inputs, outputs, attrs, need):
    return [G[0]]


@kernel("Dropout", since=10, kind=K.CAST, relevant_outputs=1)
def Dropout(xp, data, ratio=None, training_mode=None, seed=None):
    if training_mode is not None and bool(training_mode) and (ratio is None or float(ratio) > 0):
        raise UnsupportedOpError("Dropout in training mode is random; reflrp runs inference graphs only")
    return data, xp.ones(data.shape, dtype=bool)


@adjoint("Dropout")
def _dropout_vjp(xp, G, inputs, outputs, attrs, need):
    return [G[0]] + [None] * (len(inputs) - 1)


@kernel("IsInf", since=10, kind=K.CONSTANT)
def IsInf(xp, x, detect_negative=1, detect_positive=1):
    return xp.isinf(x) & (((x < 0) & bool(detect_negative)) | ((x > 0) & bool(detect_positive)))


def _activation(op: str, derivative):
    """Register the adjoint ``G * derivative(x, y, **attrs)`` of a one-input activation with attributes."""
    def vjp(xp, G, inputs, outputs, attrs, need):
        return [G[0] * derivative(xp, inputs[0], outputs[0], **attrs)]
    adjoint(op)(vjp)


@kernel("LeakyRelu", since=6, kind=K.ACTIVATION)
def LeakyRelu(xp, x, alpha=0.01):
    return xp.where(x >= 0, x, x * x.dtype.type(alpha))


@kernel("Elu", since=6, kind=K.ACTIVATION)
def Elu(xp, x, alpha=1.0):
    return xp.where(x >= 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


@kernel("Celu", since=12, kind=K.ACTIVATION)
def Celu(xp, x, alpha=1.0):
    a = x.dtype.type(alpha)
    return xp.maximum(x, 0) + xp.minimum(0, a * xp.expm1(x / a))


@kernel("Selu", since=6, kind=K.ACTIVATION)
def Selu(xp, x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    t = x.dtype.type
    return t(gamma) * xp.where(x > 0, x, t(alpha) * xp.expm1(xp.minimum(x, 0)))


@kernel("ThresholdedRelu", since=10, kind=K.ACTIVATION)
def ThresholdedRelu(xp, x, alpha=1.0):
    return xp.where(x > alpha, x, x.dtype.type(0))


@kernel("HardSigmoid", since=6, kind=K.ACTIVATION)
def HardSigmoid(xp, x, alpha=0.2, beta=0.5):
    t = x.dtype.type
    return xp.clip(x * t(alpha) + t(beta), 0, 1).astype(x.dtype, copy=False)


def _gelu_tanh_inner(xp, x):
    t = x.dtype.type
    return t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)


@kernel("Gelu", since=20, kind=K.ACTIVATION)
def Gelu(xp, x, approximate="none"):
    t = x.dtype.type
    if approximate == "tanh":
        return t(0.5) * x * (1 + xp.tanh(_gelu_tanh_inner(xp, x)))
    return t(0.5) * x * (1 + erf(xp, x / t(math.sqrt(2))).astype(x.dtype, copy=False))


def _gelu_derivative(xp, x, y, approximate="none"):
    t = x.dtype.type
    if approximate == "tanh":
        th = xp.tanh(_gelu_tanh_inner(xp, x))
        inner_d = t(math.sqrt(2 / math.pi)) * (1 + t(3 * 0.044715) * x * x)
        return t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * inner_d
    cdf = t(0.5) * (1 + erf(xp, x / t(math.sqrt(2))).astype(x.dtype, copy=False))
    return cdf + x * xp.exp(-x * x / 2) * t(1 / math.sqrt(2 * math.pi))


_activation("LeakyRelu", lambda xp, x, y, alpha=0.01: xp.where(x >= 0, 1, alpha).astype(x.dtype))
_activation("Elu", lambda xp, x, y, alpha=1.0: xp.where(x >= 0, 1, y + x.dtype.type(alpha)).astype(x.dtype))
_activation("Celu", lambda xp, x, y, alpha=1.0: xp.where(x > 0, 1, xp.exp(x / x.dtype.type(alpha))).astype(x.dtype))
_activation("Selu", lambda xp, x, y, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875:
            x.dtype.type(gamma) * xp.where(x > 0, 1, x.dtype.type(alpha) * xp.exp(xp.minimum(x, 0))).astype(x.dtype))
_activation("ThresholdedRelu", lambda xp, x, y, alpha=1.0: (x > alpha).astype(x.dtype))
_activation("HardSigmoid", lambda xp, x, y, alpha=0.2, beta=0.5:
            xp.where((x * alpha + beta > 0) & (x * alpha + beta < 1), alpha, 0).astype(x.dtype))
_activation("Gelu", _gelu_derivative)


@kernel("PRelu", since=7, kind=K.ELEMENTWISE)
def PRelu(xp, x, slope):
    return xp.where(x >= 0, x, x * slope)


@adjoint("PRelu")
def _prelu_vjp(xp, G, inputs, outputs, attrs, need):
    x, slope = inputs
    g = G[0]
    return [g * xp.where(x >= 0, 1, slope).astype(x.dtype) if need[0] else None,
            unbroadcast(xp, select(xp, x < 0, g * x), slope.shape) if need[1] else None]


@kernel("Clip", since=6, kind=K.ELEMENTWISE)
def Clip(xp, x, min=None, max=None):
    if min is not None:
        x = xp.maximum(x, xp.asarray(min, dtype=x.dtype))
    if max is not None:
        x = xp.minimum(x, xp.asarray(max, dtype=x.dtype))
    return x


@adjoint("Clip")
def _clip_vjp(xp, G, inputs, outputs, attrs, need):
    """``y = min(max(x, lo), hi)``: ``x`` gets the gradient where it is inside [lo, hi], a bound where it
    is the value taken."""
    x, g = inputs[0], G[0]
    lo, hi = (_clip_bound(xp, inputs, attrs, i, name, x.dtype) for i, name in ((1, "min"), (2, "max")))
    floored = x if lo is None else xp.maximum(x, lo)
    from_x = xp.ones(x.shape, dtype=bool) if lo is None else x >= lo
    grads = [None] * len(inputs)
    if lo is not None and len(inputs) > 1 and need[1]:
        grads[1] = unbroadcast(xp, select(xp, (x < lo) & (True if hi is None else lo <= hi), g), lo.shape)
    if hi is not None:
        from_x = from_x & (x <= hi)
        if len(inputs) > 2 and need[2]:
            grads[2] = unbroadcast(xp, select(xp, floored > hi, g), hi.shape)
    if need[0]:
        grads[0] = select(xp, from_x, g)
    return grads


def _clip_bound(xp, inputs, attrs, i, name, dtype):
    """A bound of Clip: input ``i`` (opset 11 on) or the attribute ``name`` (before), or None."""
    if len(inputs) > i:
        return inputs[i]
    return None if attrs.get(name) is None else xp.asarray(attrs[name], dtype=dtype)


# ---- binary arithmetic (numpy broadcasting is ONNX's multidirectional broadcasting, from opset 7;
# before it a ``broadcast``/``axis`` attribute pair chose another rule) ----

@kernel("Add", since=7, kind=K.SUM, addends="all", layer="bias")
def Add(xp, a, b):
    return a + b


@kernel("Sub", since=7, kind=K.SUM, addends="all")
def Sub(xp, a, b):
    return a - b


@adjoint("Add")
def _add_vjp(xp, G, inputs, outputs, attrs, need):
    return [unbroadcast(xp, G[0], x.shape) if n else None for x, n in zip(inputs, need)]


@adjoint("Sub")
def _sub_vjp(xp, G, inputs, outputs, attrs, need):
    a, b = inputs
    return [unbroadcast(xp, G[0], a.shape) if need[0] else None,
            unbroadcast(xp, -G[0], b.shape) if need[1] else None]


@kernel("Mul", since=7, kind=K.PRODUCT)
def Mul(xp, a, b):
    return a * b


@adjoint("Mul")
def _mul_vjp(xp, G, inputs, outputs, attrs, need):
    a, b = inputs
    return [unbroadcast(xp, G[0] * b, a.shape) if need[0] else None,
            unbroadcast(xp, G[0] * a, b.shape) if need[1] else None]


@kernel("Div", since=7, kind=K.QUOTIENT)
def Div(xp, a, b):
    if is_integer(a.dtype):  # ONNX integer division truncates toward zero
        q = xp.abs(a) // xp.abs(b)
        return xp.where((a < 0) != (b < 0), -q, q).astype(a.dtype, copy=False)
    return a / b


@adjoint("Div")
def _div_vjp(xp, G, inputs, outputs, attrs, need):
    a, b = inputs
    return [unbroadcast(xp, G[0] / b, a.shape) if need[0] else None,
            unbroadcast(xp, -G[0] * outputs[0] / b, b.shape) if need[1] else None]


@kernel("Mod", since=10, kind=K.ELEMENTWISE)
def Mod(xp, a, b, fmod=0):
    return xp.fmod(a, b) if fmod else xp.mod(a, b)


@adjoint("Mod")
def _mod_vjp(xp, G, inputs, outputs, attrs, need):
    """``a mod b = a - q * b`` with ``q`` piecewise constant (floor or, for fmod, trunc of ``a / b``)."""
    a, b = inputs
    q = xp.trunc(a / b) if attrs.get("fmod", 0) else xp.floor(a / b)
    return [unbroadcast(xp, G[0], a.shape) if need[0] else None,
            unbroadcast(xp, -G[0] * q, b.shape) if need[1] else None]


@kernel("Pow", since=7, kind=K.ELEMENTWISE)
def Pow(xp, a, b):
    if is_float(a.dtype) and is_float(b.dtype) and b.ndim == 0 and float(b) == 2.0:
        return a * a
    if is_integer(a.dtype) and is_integer(b.dtype):
        return xp.power(a, b.astype(a.dtype) if b.dtype.kind == "u" else xp.maximum(b, 0).astype(a.dtype))
    return xp.power(a, b.astype(a.dtype) if is_float(a.dtype) else b).astype(a.dtype, copy=False)


@adjoint("Pow")
def _pow_vjp(xp, G, inputs, outputs, attrs, need):
    a, b = inputs
    bb = b.astype(a.dtype, copy=False)
    ga = gb = None
    if need[0]:
        ga = unbroadcast(xp, G[0] * bb * xp.power(a, bb - 1), a.shape)
    if need[1] and is_float(b.dtype):  # an integer exponent is not differentiable
        gb = unbroadcast(xp, G[0] * outputs[0] * xp.log(xp.where(a > 0, a, 1).astype(a.dtype)), b.shape)
    return [ga, gb]


def _variadic(op: str, fn, kind: str, since: int = 6, **facts):
    def run(xp, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(xp, out, x)
        return out if len(xs) > 1 else out.copy()
    run.__name__ = op
    kernel(op, since, kind=kind, **facts)(run)


_variadic("Sum", lambda xp, a, b: a + b, K.SUM, addends="all")
_variadic("Max", lambda xp, a, b: xp.maximum(a, b), K.SELECT, elementwise=True)
_variadic("Min", lambda xp, a, b: xp.minimum(a, b), K.SELECT, elementwise=True)


@adjoint("Sum")
def _sum_vjp(xp, G, inputs, outputs, attrs, need):
    return [unbroadcast(xp, G[0], x.shape) if n else None for x, n in zip(inputs, need)]


def _winner_vjp(xp, G, inputs, outputs, attrs, need):
    """Max / Min: the first input that attains the output gets the gradient."""
    masks = winners(xp, outputs[0], inputs)
    return [unbroadcast(xp, select(xp, m, G[0]), x.shape) if n else None for x, m, n in zip(inputs, masks, need)]


adjoint("Max")(_winner_vjp)
adjoint("Min")(_winner_vjp)


@kernel("Mean", since=6, kind=K.SUM, addends="all")
def Mean(xp, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return (out / len(xs)).astype(xs[0].dtype, copy=False)


@adjoint("Mean")
def _mean_vjp(xp, G, inputs, outputs, attrs, need):
    share = G[0] / G[0].dtype.type(len(inputs))
    return [unbroadcast(xp, share, x.shape) if n else None for x, n in zip(inputs, need)]


for _op, (_since, _fn) in {
    "Equal": (7, lambda xp, a, b: a == b), "Less": (7, lambda xp, a, b: a < b),
    "Greater": (7, lambda xp, a, b: a > b), "LessOrEqual": (12, lambda xp, a, b: a <= b),
    "GreaterOrEqual": (12, lambda xp, a, b: a >= b),
    "And": (7, lambda xp, a, b: a & b), "Or": (7, lambda xp, a, b: a | b), "Xor": (7, lambda xp, a, b: a ^ b),
    "BitwiseAnd": (18, lambda xp, a, b: a & b), "BitwiseOr": (18, lambda xp, a, b: a | b),
    "BitwiseXor": (18, lambda xp, a, b: a ^ b),
}.items():
    kernel(_op, _since, kind=K.CONSTANT)((lambda f: lambda xp, a, b: f(xp, a, b))(_fn))


@kernel("Where", since=9, kind=K.SELECT, elementwise=True)
def Where(xp, condition, x, y):
    return xp.where(condition, x, y)


@adjoint("Where")
def _where_vjp(xp, G, inputs, outputs, attrs, need):
    cond, x, y = inputs
    return [None, unbroadcast(xp, select(xp, cond, G[0]), x.shape) if need[1] else None,
            unbroadcast(xp, select(xp, xp.logical_not(cond), G[0]), y.shape) if need[2] else None]
