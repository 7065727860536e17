"""The node-level cases of tests/test_adjoints.py and the finite-difference oracle they are checked with.

A case is one op, its float64 inputs (None for an omitted optional input) and its attributes as the
kernel receives them, at one opset. Inputs sit away from the kinks of the op (Relu at 0, ties of Max,
integers for Floor, the bounds of Clip...) by far more than the difference step, and inside its domain
(Log > 0, Acosh > 1, |Atanh| < 1, Pow's base > 0 where the exponent's derivative is checked).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

K = 2  # targets stacked on the leading axis of every cotangent
STEP = 1e-6  # central-difference step, relative to max(1, |x|)


@dataclass
class Case:
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)
    opset: int = 23
    label: str = ""
    grad_outputs: tuple | None = None  # outputs that receive a cotangent (None: every float output)
    wrt: tuple | None = None  # float inputs checked against differences (None: all)

    @property
    def id(self) -> str:
        return f"{self.op}[{self.label or 'default'}]"


def rng_for(text: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(text.encode()))


def outputs_of(fn, inputs, attrs) -> tuple:
    out = fn(np, *inputs, **attrs)
    return out if isinstance(out, tuple) else (out,)


def finite_difference(fn, inputs: list, attrs: dict, i: int, G: list) -> np.ndarray:
    """``d/dx_i sum_o <G[o][k], f_o(x)>`` for each target ``k`` by central differences on every element
    of input ``i``: shape ``(K,) + x_i.shape``. An infinite element (a mask's -inf) cannot be stepped; the
    output does not move with it, so its derivative is taken as 0."""
    x = inputs[i]
    grad = np.zeros((K, x.size))
    for j in range(x.size):
        if not np.isfinite(x.flat[j]):
            continue
        h = STEP * max(1.0, abs(float(x.flat[j])))
        plus, minus = x.copy(), x.copy()
        plus.flat[j] += h
        minus.flat[j] -= h
        up = outputs_of(fn, inputs[:i] + [plus] + inputs[i + 1:], attrs)
        down = outputs_of(fn, inputs[:i] + [minus] + inputs[i + 1:], attrs)
        step = plus.flat[j] - minus.flat[j]  # the step actually taken, after rounding
        for g, a, b in zip(G, up, down):
            if g is not None:
                grad[:, j] += (g * (a - b)[None]).reshape(K, -1).sum(axis=1) / step
    return grad.reshape((K,) + x.shape)


# ---- input makers (one generator per op, so adding a case to one op leaves the others' data alone) ----

class Data:
    def __init__(self, op: str):
        self.rng = rng_for(op)

    def normal(self, *shape):
        return self.rng.standard_normal(shape)

    def uniform(self, lo, hi, *shape, kinks=(), margin=0.05):
        """Uniform on [lo, hi], redrawn wherever it comes within ``margin`` of a kink."""
        x = self.rng.uniform(lo, hi, shape)
        while True:
            bad = np.zeros(x.shape, dtype=bool)
            for p in kinks:
                bad |= np.abs(x - p) < margin
            if not bad.any():
                return x
            x[bad] = self.rng.uniform(lo, hi, int(bad.sum()))

    def away(self, *shape, lo=0.2, hi=1.5):
        """Magnitudes in [lo, hi] with random signs (away from 0)."""
        return self.rng.uniform(lo, hi, shape) * self.rng.choice([-1.0, 1.0], shape)

    def positive(self, *shape, lo=0.3, hi=2.0):
        return self.rng.uniform(lo, hi, shape)

    def fractional(self, *shape):
        """Integers plus a fraction in [0.1, 0.4] or [0.6, 0.9] (away from Floor/Ceil/Round's jumps)."""
        frac = self.rng.uniform(0.1, 0.4, shape) + self.rng.choice([0.0, 0.5], shape)
        return self.rng.integers(-3, 3, shape) + frac


def ints(v):
    return np.asarray(v, dtype=np.int64)


def scalar(v):
    return np.asarray(v, dtype=np.float64)


# ---- elementwise ----

def unary_cases() -> list[Case]:
    out = []
    domains = {  # op: how to draw its input (default: normal)
        "Abs": "away", "Sign": "away", "Relu": "away", "Reciprocal": "away",
        "Floor": "fractional", "Ceil": "fractional", "Round": "fractional",
        "Log": "positive", "Sqrt": "positive",
        "Asin": (-0.9, 0.9), "Acos": (-0.9, 0.9), "Atanh": (-0.9, 0.9), "Acosh": (1.2, 3.0), "Tan": (-1.2, 1.2),
    }
    for op in ("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh", "Erf", "Exp",
               "Floor", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Sigmoid", "Sign", "Sin", "Sinh",
               "Softplus", "Softsign", "Sqrt", "Tan", "Tanh"):
        d, how = Data(op), domains.get(op, "normal")
        x = d.uniform(*how, 2, 3) if isinstance(how, tuple) else getattr(d, how)(2, 3) * (
            2.0 if how == "normal" else 1.0)
        out.append(Case(op, [x]))
    d = Data("HardSwish")
    out.append(Case("HardSwish", [d.uniform(-5, 5, 3, 4, kinks=(-3, 3))]))
    d = Data("HardSigmoid")
    out += [Case("HardSigmoid", [d.uniform(-4, 4, 3, 4, kinks=(-2.5, 2.5))]),
            Case("HardSigmoid", [d.uniform(-3, 3, 3, 4, kinks=(-1.2, 0.8))], dict(alpha=0.5, beta=0.6), label="alpha-beta")]
    for op, variants in {"LeakyRelu": [{}, dict(alpha=0.3)], "Elu": [{}, dict(alpha=0.7)],
                         "Celu": [{}, dict(alpha=1.7)], "Selu": [{}, dict(alpha=1.5, gamma=1.1)]}.items():
        d = Data(op)
        out += [Case(op, [d.away(3, 4) * 2], a, label="-".join(a) or "") for a in variants]
    d = Data("ThresholdedRelu")
    out += [Case("ThresholdedRelu", [d.uniform(-2, 3, 3, 4, kinks=(1.0,))]),
            Case("ThresholdedRelu", [d.uniform(-2, 3, 3, 4, kinks=(0.4,))], dict(alpha=0.4), label="alpha")]
    d = Data("Gelu")
    out += [Case("Gelu", [d.normal(3, 4) * 2]),
            Case("Gelu", [d.normal(3, 4) * 2], dict(approximate="tanh"), label="tanh")]
    return out


def casting_cases() -> list[Case]:
    d = Data("cast")
    x = d.normal(2, 3)
    return [Case("Identity", [x]),
            Case("Dropout", [x]),
            Case("Dropout", [x, scalar(0.3), np.asarray(False)], label="ratio-training_mode-inputs"),
            Case("Cast", [x], dict(to=np.dtype(np.float64))),
            Case("CastLike", [x, d.normal(1)])]


def arithmetic_cases() -> list[Case]:
    out = []
    for op in ("Add", "Sub", "Mul"):
        d = Data(op)
        out += [Case(op, [d.normal(2, 3, 4), d.normal(2, 3, 4)], label="same-shape"),
                Case(op, [d.normal(2, 3, 4), d.normal(3, 1)], label="broadcast-b"),
                Case(op, [d.normal(1, 3), d.normal(2, 1)], label="broadcast-both"),
                Case(op, [d.normal(), d.normal(2, 3)], label="scalar-a")]
    d = Data("Div")
    out += [Case("Div", [d.normal(2, 3, 4), d.away(2, 3, 4)], label="same-shape"),
            Case("Div", [d.normal(2, 3, 4), d.away(4)], label="broadcast-b"),
            Case("Div", [d.normal(3, 1), d.away(1, 4)], label="broadcast-both"),
            Case("Div", [d.normal(2, 3), scalar(d.away())], label="scalar-b")]
    d = Data("Pow")
    out += [Case("Pow", [d.positive(2, 3), d.normal(2, 3)], label="same-shape"),
            Case("Pow", [d.positive(2, 3), d.normal(3)], label="broadcast-exponent"),
            Case("Pow", [d.positive(3, 1), d.normal(1, 4)], label="broadcast-both"),
            Case("Pow", [d.positive(2, 3), scalar(2.0)], label="square"),
            # a negative base has no real derivative in the exponent: the base only
            Case("Pow", [d.away(2, 3), scalar(3.0)], label="negative-base", wrt=(0,)),
            Case("Pow", [d.away(2, 3), ints(2)], label="integer-exponent")]
    d = Data("Mod")
    for fmod in (0, 1):
        b = d.away(2, 3)
        q = d.rng.integers(-3, 3, (2, 3))
        a = (q + d.uniform(0.1, 0.9, 2, 3)) * b  # a / b keeps away from the integers where Mod jumps
        out.append(Case("Mod", [a, b], dict(fmod=fmod), label=f"fmod={fmod}"))
    b = d.away(3)
    a = (d.rng.integers(-3, 3, (2, 3)) + d.uniform(0.1, 0.9, 2, 3)) * b
    out.append(Case("Mod", [a, b], dict(fmod=1), label="fmod=1-broadcast"))
    d = Data("PRelu")
    out += [Case("PRelu", [d.away(2, 3, 2, 2), d.normal(3, 1, 1)], label="channel-slope"),
            Case("PRelu", [d.away(2, 3), d.normal(2, 3)], label="same-shape"),
            Case("PRelu", [d.away(2, 3), d.normal(1)], label="one-slope")]
    d = Data("Clip")
    x = d.uniform(-2, 2, 3, 4, kinks=(-1, 1, 0.5))
    out += [Case("Clip", [x, scalar(-1.0), scalar(1.0)], opset=13, label="both-bounds"),
            Case("Clip", [x, scalar(-1.0)], opset=13, label="min-only"),
            Case("Clip", [x, None, scalar(0.5)], opset=13, label="max-only"),
            Case("Clip", [x], opset=13, label="no-bounds"),
            Case("Clip", [x, scalar(1.0), scalar(-1.0)], opset=13, label="min>max"),
            Case("Clip", [x], dict(min=-1.0, max=0.5), opset=6, label="opset6-attributes")]
    return out


def variadic_cases() -> list[Case]:
    out = []
    for op in ("Sum", "Max", "Min", "Mean"):
        d = Data(op)
        out += [Case(op, [d.normal(2, 3), d.normal(3), d.normal(2, 1)], label="3-inputs-broadcast"),
                Case(op, [d.normal(2, 3), d.normal(2, 3)], label="2-inputs"),
                Case(op, [d.normal(2, 3)], label="1-input")]
    d = Data("Where")
    out += [Case("Where", [d.normal(2, 3) > 0, d.normal(2, 3), d.normal(2, 3)], label="same-shape"),
            Case("Where", [d.normal(3) > 0, d.normal(2, 1), d.normal(2, 3)], label="broadcast")]
    return out


# ---- reductions ----

def reduction_cases() -> list[Case]:
    out = []
    draw = {"ReduceL1": "away", "ReduceLogSum": "positive"}
    for op in ("ReduceSum", "ReduceMean", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"):
        d = Data(op)
        x = getattr(d, draw.get(op, "normal"))(2, 3, 4)
        inputs_from = 13 if op == "ReduceSum" else 18  # axes became an input at this opset
        out += [Case(op, [x, ints([1])], dict(keepdims=1), opset=inputs_from, label="axes=[1]"),
                Case(op, [x, ints([-1, 0])], dict(keepdims=0), opset=inputs_from, label="axes=[-1,0]-keepdims=0"),
                Case(op, [x], opset=inputs_from, label="all-axes"),
                Case(op, [x], dict(keepdims=0), opset=inputs_from, label="all-axes-keepdims=0"),
                Case(op, [x, ints([])], dict(noop_with_empty_axes=1), opset=inputs_from, label="noop_with_empty_axes"),
                Case(op, [x], dict(axes=[-2], keepdims=0), opset=inputs_from - 2, label="axes-attribute")]
    d = Data("ReduceProd-zeros")
    x = d.normal(3, 4)
    x[0, 1] = 0.0  # one zero: only it has a non-zero derivative in its row
    x[1, 0] = x[1, 2] = 0.0  # two zeros: every derivative in the row is 0
    out.append(Case("ReduceProd", [x, ints([1])], opset=18, label="with-zeros"))
    return out


# ---- linear algebra ----

def linalg_cases() -> list[Case]:
    d = Data("MatMul")
    out = [Case("MatMul", [d.normal(3, 4), d.normal(4, 2)], label="2d"),
           Case("MatMul", [d.normal(2, 3, 4), d.normal(4, 2)], label="stack-2d"),
           Case("MatMul", [d.normal(2, 1, 2, 3), d.normal(3, 3, 2)], label="broadcast-stacks"),
           Case("MatMul", [d.normal(4), d.normal(2, 4, 3)], label="vector-stack"),
           Case("MatMul", [d.normal(3, 4), d.normal(4)], label="matrix-vector"),
           Case("MatMul", [d.normal(4), d.normal(4)], label="dot")]
    d = Data("Gemm")
    out += [Case("Gemm", [d.normal(3, 4), d.normal(4, 2), d.normal(2)], label="row-bias"),
            Case("Gemm", [d.normal(4, 3), d.normal(4, 2), d.normal(3, 1)], dict(transA=1), label="transA-column-bias"),
            Case("Gemm", [d.normal(3, 4), d.normal(2, 4), d.normal(3, 2)], dict(transB=1, alpha=0.7, beta=1.3),
                 label="transB-alpha-beta"),
            Case("Gemm", [d.normal(4, 3), d.normal(2, 4), scalar(d.normal())], dict(transA=1, transB=1, beta=-0.5),
                 label="both-transposed-scalar-bias"),
            Case("Gemm", [d.normal(3, 4), d.normal(4, 2)], dict(alpha=2.0), label="no-bias")]
    d = Data("Einsum")
    for eq, shapes in [("ij,jk->ik", [(3, 4), (4, 2)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
                       ("i,i->", [(4,), (4,)]), ("ij->ji", [(2, 3)]), ("ij,jk", [(2, 3), (3, 2)]),
                       ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)]), ("ij,k->ik", [(2, 3), (2,)]),
                       ("bhqd,bhkd->bhqk", [(1, 2, 3, 2), (1, 2, 2, 2)]), ("i,j->ij", [(3,), (2,)]),
                       ("ij -> i", [(2, 3)])]:
        out.append(Case("Einsum", [d.normal(*s) for s in shapes], dict(equation=eq), label=eq))
    return out


def conv_cases() -> list[Case]:
    d = Data("Conv")
    return [Case("Conv", [d.normal(2, 2, 5), d.normal(3, 2, 2)], label="1d"),
            Case("Conv", [d.normal(1, 2, 4, 4), d.normal(3, 2, 2, 2), d.normal(3)], label="2d-bias"),
            Case("Conv", [d.normal(2, 2, 5, 4), d.normal(4, 1, 3, 2), d.normal(4)],
                 dict(group=2, strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2]),
                 label="groups-strides-pads-dilations"),
            Case("Conv", [d.normal(1, 3, 5, 5), d.normal(3, 1, 3, 3)], dict(group=3, strides=[2, 2], auto_pad="SAME_UPPER"),
                 label="depthwise-same_upper"),
            Case("Conv", [d.normal(1, 2, 5, 4), d.normal(2, 2, 2, 3)], dict(strides=[2, 2], auto_pad="SAME_LOWER"),
                 label="same_lower"),
            Case("Conv", [d.normal(1, 1, 5, 4), d.normal(2, 1, 3, 3)], dict(auto_pad="VALID", kernel_shape=[3, 3]),
                 label="valid-kernel_shape"),
            Case("Conv", [d.normal(1, 1, 3, 3, 3), d.normal(2, 1, 2, 2, 2), d.normal(2)], dict(pads=[0, 1, 0, 1, 0, 1]),
                 label="3d")] + conv_transpose_cases()


def conv_transpose_cases() -> list[Case]:
    d = Data("ConvTranspose")
    return [Case("ConvTranspose", [d.normal(2, 2, 4), d.normal(2, 3, 2)], label="1d"),
            Case("ConvTranspose", [d.normal(1, 2, 3, 3), d.normal(2, 2, 3, 2), d.normal(2)],
                 dict(strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2], output_padding=[1, 0]),
                 label="strides-pads-dilations-output_padding"),
            Case("ConvTranspose", [d.normal(1, 4, 3, 3), d.normal(4, 1, 2, 2), d.normal(2)], dict(group=2, strides=[2, 2]),
                 label="groups"),
            Case("ConvTranspose", [d.normal(1, 2, 3, 3), d.normal(2, 2, 3, 3)],
                 dict(strides=[2, 2], output_shape=[6, 7], auto_pad="SAME_UPPER"), label="output_shape-same_upper"),
            Case("ConvTranspose", [d.normal(1, 1, 3, 3), d.normal(1, 2, 3, 3)], dict(strides=[3, 2], output_shape=[10, 8]),
                 label="output_shape-past-the-full-output"),
            Case("ConvTranspose", [d.normal(1, 1, 2, 2, 2), d.normal(1, 2, 2, 2, 2), d.normal(2)], label="3d")]


# ---- pooling and normalization ----

def pool_cases() -> list[Case]:
    d = Data("AveragePool")
    x = d.normal(1, 2, 5, 5)
    out = []
    for include in (0, 1):
        out += [Case("AveragePool", [x], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                              count_include_pad=include), label=f"pads-count_include_pad={include}"),
                Case("AveragePool", [x], dict(kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1,
                                              count_include_pad=include), label=f"ceil_mode-count_include_pad={include}")]
    out += [Case("AveragePool", [d.normal(2, 2, 6)], dict(kernel_shape=[3], strides=[1]), label="1d"),
            Case("AveragePool", [x], dict(kernel_shape=[2, 2], dilations=[2, 1]), opset=19, label="dilations"),
            Case("AveragePool", [x], dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"), label="same_upper")]
    d = Data("MaxPool")
    x = d.normal(1, 2, 5, 5)
    out += [Case("MaxPool", [x], dict(kernel_shape=[2, 2], strides=[2, 2]), label="2x2"),
            Case("MaxPool", [x], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), label="overlap-pads"),
            Case("MaxPool", [x], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[1, 0, 0, 0]),
                 label="ceil_mode"),
            Case("MaxPool", [x], dict(kernel_shape=[2, 2], dilations=[2, 2]), label="dilations"),
            Case("MaxPool", [d.normal(2, 2, 7)], dict(kernel_shape=[3], strides=[2], auto_pad="SAME_LOWER"),
                 label="1d-same_lower")]
    d = Data("GlobalPool")
    out += [Case("GlobalAveragePool", [d.normal(2, 3, 2, 3)]), Case("GlobalMaxPool", [d.normal(2, 3, 2, 3)]),
            Case("GlobalAveragePool", [d.normal(2, 3, 4)], label="1d"), Case("GlobalMaxPool", [d.normal(2, 3, 4)], label="1d")]
    return out


def softmax_cases() -> list[Case]:
    out = []
    for op in ("Softmax", "LogSoftmax"):
        d = Data(op)
        x = d.normal(2, 3, 4) * 2
        out += [Case(op, [x], opset=11, label="opset11-default-axis=1-flattened"),
                Case(op, [x], dict(axis=-1), opset=11, label="opset11-axis=-1"),
                Case(op, [x], dict(axis=0), opset=11, label="opset11-axis=0-one-row"),
                Case(op, [x], opset=13, label="opset13-default-axis=-1"),
                Case(op, [x], dict(axis=1), opset=13, label="opset13-axis=1"),
                Case(op, [x], dict(axis=-3), opset=13, label="opset13-axis=-3")]
    masked = Data("Softmax-inf").normal(3, 4)
    masked[0, [1, 3]] = masked[2, 0] = -np.inf  # masked entries (a row masked entirely is NaN, as in ONNX)
    out.append(Case("Softmax", [masked], opset=13, label="opset13-inf-entries"))  # (LogSoftmax is -inf there)
    return out


def normalization_cases() -> list[Case]:
    d = Data("LayerNormalization")
    x = d.normal(2, 3, 4) * 2 + 0.5
    out = [Case("LayerNormalization", [x, d.normal(4), d.normal(4)], opset=17, label="axis=-1"),
           Case("LayerNormalization", [x, d.normal(3, 4), d.normal(3, 4)], dict(axis=1, epsilon=1e-3), opset=17,
                label="axis=1-epsilon"),
           Case("LayerNormalization", [x, d.normal(3, 4)], dict(axis=-2), opset=17, label="axis=-2-no-bias"),
           Case("LayerNormalization", [x, d.normal(4), d.normal(4)], dict(stash_type=0), opset=17, label="stash_type=0"),
           Case("LayerNormalization", [x, d.normal(1), d.normal(4)], opset=17, label="broadcast-scale")]
    d = Data("RMSNormalization")
    x = d.normal(2, 3, 4) + 0.3
    out += [Case("RMSNormalization", [x, d.normal(4)], label="axis=-1"),
            Case("RMSNormalization", [x, d.normal(3, 4)], dict(axis=1, epsilon=1e-2), label="axis=1-epsilon"),
            Case("RMSNormalization", [x, d.normal(4)], dict(stash_type=0), label="stash_type=0")]
    d = Data("BatchNormalization")
    for shape in ((2, 3, 2, 2), (4, 3), (2, 3, 4)):
        out.append(Case("BatchNormalization", [d.normal(*shape), d.normal(3), d.normal(3), d.normal(3), d.positive(3)],
                        dict(epsilon=1e-3) if len(shape) == 2 else {}, opset=15, label=f"{len(shape)}d"))
    d = Data("InstanceNormalization")
    out += [Case("InstanceNormalization", [d.normal(2, 3, 4), d.normal(3), d.normal(3)], label="3d"),
            Case("InstanceNormalization", [d.normal(2, 2, 3, 2), d.normal(2), d.normal(2)], dict(epsilon=1e-2), label="4d")]
    return out


# ---- data movement ----

def movement_cases() -> list[Case]:
    d = Data("movement")
    x = d.normal(2, 3, 4)
    out = [Case("Reshape", [x, ints([0, -1])], label="zero-and-minus-one"),
           Case("Reshape", [x, ints([4, 6])], label="explicit"),
           Case("Flatten", [x]), Case("Flatten", [x], dict(axis=0), label="axis=0"),
           Case("Flatten", [x], dict(axis=-1), label="axis=-1"),
           Case("Transpose", [x]), Case("Transpose", [x], dict(perm=[1, 2, 0]), label="perm"),
           Case("Squeeze", [d.normal(2, 1, 3, 1), ints([1])], label="axes-input"),
           Case("Squeeze", [d.normal(2, 1, 3, 1)], label="all"),
           Case("Squeeze", [d.normal(2, 1, 3, 1)], dict(axes=[-1]), opset=11, label="axes-attribute"),
           Case("Unsqueeze", [x, ints([0, -1])], label="axes-input"),
           Case("Unsqueeze", [x], dict(axes=[1]), opset=11, label="axes-attribute"),
           Case("Concat", [d.normal(2, 3, 1), d.normal(2, 3, 2), d.normal(2, 3, 3)], dict(axis=-1), label="3-inputs-axis=-1"),
           Case("Concat", [d.normal(1, 3), d.normal(2, 3)], dict(axis=0), label="axis=0"),
           Case("Split", [d.normal(2, 6)], dict(axis=1, _n_outputs=3), label="equal"),
           Case("Split", [d.normal(2, 5), ints([1, 4])], dict(axis=-1, _n_outputs=2), label="sizes-input"),
           Case("Split", [d.normal(5, 2)], dict(num_outputs=3, _n_outputs=3), opset=18, label="num_outputs-uneven"),
           Case("Split", [d.normal(5, 2)], dict(split=[2, 3], _n_outputs=2), opset=11, label="split-attribute"),
           Case("Split", [d.normal(2, 6)], dict(axis=1, _n_outputs=3), grad_outputs=(0, 2), label="one-piece-no-gradient"),
           Case("Slice", [x, ints([1]), ints([3]), ints([2])], label="one-axis"),
           Case("Slice", [x, ints([-1, 2]), ints([-100, 0]), ints([2, 1]), ints([-1, -1])], label="negative-steps"),
           Case("Slice", [x, ints([0, 3]), ints([2, -5]), ints([0, -1]), ints([1, -2])], label="step-2-negative-axis"),
           Case("Slice", [x, ints([1]), ints([1000])], label="default-axes-clamped-end"),
           Case("Slice", [x], dict(starts=[1, 0], ends=[3, 2], axes=[1, 2]), opset=9, label="opset9-attributes"),
           Case("Gather", [x, ints([1, -1, 0, 1])], label="axis=0-negative-repeated"),
           Case("Gather", [x, ints([[-1, 0], [1, 1]])], dict(axis=-1), label="axis=-1-2d-indices"),
           Case("Gather", [x, ints(1)], dict(axis=1), label="scalar-index"),
           Case("GatherElements", [x, ints(d.rng.integers(-3, 3, (2, 2, 4)))], dict(axis=1), label="axis=1-negative"),
           Case("GatherND", [x, ints([[0, 1], [1, -1], [0, 1]])], label="batch_dims=0-repeated"),
           Case("GatherND", [x, ints([[[2]], [[0]]])], dict(batch_dims=1), label="batch_dims=1"),
           Case("GatherND", [x, ints([[0, 2, 3], [1, 0, -1]])], label="full-index"),
           Case("ScatterND", [x, ints([[0, 1], [1, 2]]), d.normal(2, 4)], label="none"),
           Case("ScatterND", [x, ints([[-1, 0, -1]]), d.normal(1)], label="none-negative-index"),
           Case("ScatterND", [x, ints([[0, 1, 3], [1, 0, 0], [0, 1, 3]]), d.normal(3)], dict(reduction="add"),
                label="add-repeated"),
           Case("Expand", [d.normal(3, 1), ints([2, 3, 4])], label="rank-up"),
           Case("Expand", [d.normal(2, 1, 4), ints([1, 3, 1])], label="shape-with-ones"),
           Case("Tile", [x, ints([2, 1, 3])]),
           Case("Trilu", [d.normal(2, 3, 4)], label="upper"),
           Case("Trilu", [d.normal(3, 4), ints(1)], label="upper-k=1"),
           Case("Trilu", [d.normal(3, 4), ints(-1)], dict(upper=0), label="lower-k=-1")]
    x2 = d.normal(3, 4)
    out += [Case("Pad", [x2, ints([1, 0, 2, 1]), scalar(0.7)], label="constant-value"),
            Case("Pad", [x2, ints([1, 2, 0, 1])], label="constant-zero"),
            Case("Pad", [x2, ints([2, 1, 1, 2])], dict(mode="reflect"), label="reflect"),
            Case("Pad", [x2, ints([2, 1, 1, 2])], dict(mode="edge"), label="edge"),
            Case("Pad", [x2, ints([2, 1, 1, 5])], dict(mode="wrap"), opset=19, label="wrap"),
            Case("Pad", [x2, ints([-1, 1, 0, -2]), scalar(-0.4)], label="negative-pads-crop"),
            Case("Pad", [x, ints([1, 2]), scalar(0.5), ints([-1])], opset=18, label="axes-input"),
            Case("Pad", [x2], dict(pads=[0, 1, 1, 0], value=0.3), opset=2, label="opset2-attributes")]
    for exclusive in (0, 1):
        for reverse in (0, 1):
            out.append(Case("CumSum", [x, ints(1)], dict(exclusive=exclusive, reverse=reverse),
                            label=f"exclusive={exclusive}-reverse={reverse}"))
    out.append(Case("CumSum", [x, ints(-1)], dict(reverse=1), label="negative-axis"))
    return out


# ---- fused transformer ops (opset 23) ----

def attention_cases() -> list[Case]:
    d = Data("Attention")
    n = d.normal
    causal_bool = np.tril(np.ones((3, 5), dtype=bool), 2)
    masked_row = np.ones((2, 1, 3, 5), dtype=bool)
    masked_row[0, 0, 1] = False  # a fully masked query row: its output is 0
    masked_row[1, 0, 2, :3] = False
    return [
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 5, 4), n(2, 2, 5, 3)], label="4d"),
        Case("Attention", [n(1, 4, 3, 4), n(1, 2, 3, 4), n(1, 2, 3, 4)], dict(is_causal=1), label="4d-gqa-causal"),
        Case("Attention", [n(2, 3, 8), n(2, 4, 4), n(2, 4, 6)], dict(q_num_heads=2, kv_num_heads=1, scale=0.3),
             label="3d-gqa-scale"),
        Case("Attention", [n(2, 3, 8), n(2, 4, 8), n(2, 4, 8), n(3, 4)], dict(q_num_heads=2, kv_num_heads=2),
             label="3d-float-mask-2d"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 5, 4), n(2, 2, 5, 4), causal_bool], label="bool-mask-2d"),
        Case("Attention", [n(2, 1, 3, 4), n(2, 1, 5, 4), n(2, 1, 5, 4), masked_row], label="bool-mask-4d-masked-row"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 5, 4), n(2, 2, 5, 4), n(2, 1, 3, 5)], label="float-mask-4d"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 5, 4), n(2, 2, 5, 4), n(2, 3, 5)], label="float-mask-3d-heads"),
        Case("Attention", [n(1, 2, 3, 4), n(1, 2, 5, 4), n(1, 2, 5, 4), n(3, 3)], label="float-mask-shorter-than-kv"),
        Case("Attention", [n(1, 2, 3, 4), n(1, 2, 4, 4), n(1, 2, 4, 4), np.where(np.tril(np.ones((3, 4))) > 0, n(3, 4), -np.inf)],
             label="float-mask-with-inf"),
        Case("Attention", [n(1, 2, 2, 4), n(1, 2, 2, 4), n(1, 2, 2, 4), n(2, 5), n(1, 2, 3, 4), n(1, 2, 3, 4)],
             dict(is_causal=1, softcap=2.0), label="past-causal-softcap-float-mask"),
        Case("Attention", [n(1, 2, 2, 4), n(1, 2, 2, 4), n(1, 2, 2, 4), None, n(1, 2, 3, 4), n(1, 2, 3, 4)],
             grad_outputs=(0,), label="past-output-only"),
        Case("Attention", [n(1, 2, 2, 4), n(1, 2, 2, 4), n(1, 2, 2, 4), None, n(1, 2, 3, 4), n(1, 2, 3, 4)],
             grad_outputs=(1, 2), label="past-present-outputs-only"),
        Case("Attention", [n(2, 2, 8), n(2, 2, 4), n(2, 2, 4), None, n(2, 1, 3, 4), n(2, 1, 3, 4)],
             dict(q_num_heads=2, kv_num_heads=1, is_causal=1, scale=0.7), label="3d-past-gqa-causal"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 4, 4), n(2, 2, 4, 4)], dict(softcap=1.5, scale=0.9),
             label="softcap-scale"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 4, 4), n(2, 2, 4, 4)], dict(qk_matmul_output_mode=1),
             label="qk-output-mode-1"),
        Case("Attention", [n(2, 2, 3, 4), n(2, 2, 4, 4), n(2, 2, 4, 4), None, None, None, ints([4, 2])],
             opset=24, label="nonpad_kv_seqlen"),
        Case("Attention", [n(1, 2, 4, 4), n(1, 2, 4, 4), n(1, 2, 4, 4)], dict(left_window_size=1, right_window_size=1),
             label="sliding-window"),
    ]


def rotary_cases() -> list[Case]:
    d = Data("RotaryEmbedding")

    def caches(*shape):
        angle = d.uniform(-math.pi, math.pi, *shape)
        return [np.cos(angle), np.sin(angle)]

    pos = ints([[0, 2, 5], [1, 1, 3]])
    return [
        Case("RotaryEmbedding", [d.normal(2, 2, 3, 4)] + caches(2, 3, 2), label="4d"),
        Case("RotaryEmbedding", [d.normal(2, 2, 3, 4)] + caches(6, 2) + [pos], dict(interleaved=1),
             label="4d-interleaved-position_ids"),
        Case("RotaryEmbedding", [d.normal(1, 2, 3, 6)] + caches(1, 3, 2), dict(rotary_embedding_dim=4),
             label="4d-partial"),
        Case("RotaryEmbedding", [d.normal(2, 3, 8)] + caches(6, 2) + [pos], dict(num_heads=2), label="3d-num_heads"),
        Case("RotaryEmbedding", [d.normal(2, 3, 12)] + caches(2, 3, 2), dict(num_heads=2, rotary_embedding_dim=4,
                                                                               interleaved=1),
             label="3d-partial-interleaved"),
    ]


CASES: list[Case] = (unary_cases() + casting_cases() + arithmetic_cases() + variadic_cases() + reduction_cases()
                     + linalg_cases() + conv_cases() + pool_cases() + softmax_cases() + normalization_cases()
                     + movement_cases() + attention_cases() + rotary_cases())


def cases_of(op: str) -> list[Case]:
    return [c for c in CASES if c.op == op]
