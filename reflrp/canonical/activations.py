"""GELU family and bias-add fusions, expanded as torch exports the unfused activations."""
from __future__ import annotations

import math

from . import Emit, rewrites


def gelu_erf(e: Emit, x: str, out: str, like: str = "") -> str:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` (torch's GELU: Div, Erf, Add, Mul, Mul)."""
    phi = e.op("Add", e.op("Erf", e.op("Div", x, e.scalar(math.sqrt(2.0), like))), e.scalar(1.0, like))
    return e.op("Mul", e.op("Mul", x, phi), e.scalar(0.5, like), outputs=out or 1)


def gelu_tanh(e: Emit, x: str, out: str, like: str = "") -> str:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2's gelu_new as torch exports it)."""
    half = e.op("Mul", x, e.scalar(0.5, like))
    cubic = e.op("Add", x, e.op("Mul", e.op("Pow", x, e.scalar(3.0, like)), e.scalar(0.044715, like)))
    t = e.op("Add", e.op("Tanh", e.op("Mul", cubic, e.scalar(math.sqrt(2.0 / math.pi), like))), e.scalar(1.0, like))
    return e.op("Mul", half, t, outputs=out or 1)


def with_bias(e: Emit, x: str, bias: str) -> str:
    return e.op("Add", x, bias) if bias else x


@rewrites("com.microsoft", "Gelu")
def gelu(e: Emit):
    gelu_erf(e, e.input(0), e.output(0))


@rewrites("com.microsoft", "BiasGelu")
def bias_gelu(e: Emit):
    """BiasGelu(A, B) = Gelu(A + B)."""
    gelu_erf(e, with_bias(e, e.input(0), e.input(1)), e.output(0), e.input(1))


@rewrites("com.microsoft", "FastGelu")
def fast_gelu(e: Emit):
    """FastGelu(X, bias?) = the tanh approximation of Gelu(X + bias)."""
    gelu_tanh(e, with_bias(e, e.input(0), e.input(1)), e.output(0), e.input(1))


@rewrites("com.microsoft", "QuickGelu")
def quick_gelu(e: Emit):
    """QuickGelu(X) = X * Sigmoid(alpha X); alpha = 1 is SiLU (no Mul emitted, as torch exports it)."""
    x, alpha = e.input(0), float(e.attr("alpha", 1.702))
    scaled = x if alpha == 1.0 else e.op("Mul", x, e.scalar(alpha))
    e.op("Mul", x, e.op("Sigmoid", scaled), outputs=e.output(0))


@rewrites("com.microsoft", "BiasAdd")
def bias_add(e: Emit):
    """BiasAdd(X, bias, skip) = (X + bias) + skip."""
    e.op("Add", e.op("Add", e.input(0), e.input(1)), e.input(2), outputs=e.output(0))


@rewrites("com.microsoft", "BiasSplitGelu")
def bias_split_gelu(e: Emit):
    """BiasSplitGelu(X, bias) = left * Gelu(right), where (left, right) are the halves of X + bias."""
    x = e.op("Add", e.input(0), e.input(1))
    left, right = e.op("Split", x, axis=-1, outputs=2, **({"num_outputs": 2} if e.opset >= 18 else {}))
    e.op("Mul", left, gelu_erf(e, right, ""), outputs=e.output(0))
