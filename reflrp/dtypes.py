"""ONNX element types <-> numpy dtypes, and ONNX's Cast (kept here so kernels need not import onnx).

numpy has no bfloat16, float8, float6, float4 or 4-/2-bit integers; ml_dtypes (the package onnx
itself decodes them with) adds them as numpy dtypes. Their ``dtype.kind`` is ``'V'`` (float8_e5m2
even says ``'f'``), so "is this a float / an integer type" is asked through :func:`is_float` and
:func:`is_integer`, never through ``dtype.kind``.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .errors import UnsupportedOpError

ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
    16: ml_dtypes.bfloat16, 17: ml_dtypes.float8_e4m3fn, 18: ml_dtypes.float8_e4m3fnuz,
    19: ml_dtypes.float8_e5m2, 20: ml_dtypes.float8_e5m2fnuz, 21: ml_dtypes.uint4, 22: ml_dtypes.int4,
    23: ml_dtypes.float4_e2m1fn, 24: ml_dtypes.float8_e8m0fnu, 25: ml_dtypes.uint2, 26: ml_dtypes.int2,
    27: ml_dtypes.float6_e2m3fn, 28: ml_dtypes.float6_e3m2fn,
}
UNSUPPORTED_TYPES = {0: "undefined", 8: "string", 14: "complex64", 15: "complex128"}

_EXTRA_FLOATS = frozenset(np.dtype(ONNX_TO_NUMPY[c]) for c in (16, 17, 18, 19, 20, 23, 24, 27, 28))
_EXTRA_INTEGERS = frozenset(np.dtype(ONNX_TO_NUMPY[c]) for c in (21, 22, 25, 26))
# the float8 types Cast's ``saturate`` applies to (float8e8m0 has its own rounding, below)
_SATURATING = frozenset(np.dtype(ONNX_TO_NUMPY[c]) for c in (17, 18, 19, 20))
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)


def numpy_dtype(code: int, where: str = "") -> np.dtype:
    """The numpy dtype of ONNX element type ``code``; an error names ``where`` for types reflrp lacks."""
    try:
        return np.dtype(ONNX_TO_NUMPY[int(code)])
    except (KeyError, TypeError, ValueError):
        name = UNSUPPORTED_TYPES.get(code, "unknown")
        raise UnsupportedOpError(f"{where}: ONNX element type {code} ({name}) is not supported"
                                 if where else f"ONNX element type {code} ({name}) is not supported") from None


def is_float(dtype) -> bool:
    """True for every floating-point type: numpy's and ml_dtypes' (bfloat16, float8, float6, float4)."""
    dt = np.dtype(dtype)
    return dt.kind == "f" or dt in _EXTRA_FLOATS


def is_integer(dtype) -> bool:
    """True for signed and unsigned integers, the 4- and 2-bit ones included (not bool)."""
    dt = np.dtype(dtype)
    return dt.kind in "iu" or dt in _EXTRA_INTEGERS


def is_numpy_native(dtype) -> bool:
    """False for the ml_dtypes types, which some numpy routines (einsum, linalg) do not take."""
    dt = np.dtype(dtype)
    return dt not in _EXTRA_FLOATS and dt not in _EXTRA_INTEGERS


def family(dtype) -> str:
    """``"float"``, ``"integer"``, ``"bool"`` or numpy's kind letter: feeds convert within a family."""
    dt = np.dtype(dtype)
    if dt.kind in "USO":
        return "string"
    return "float" if is_float(dt) else "integer" if is_integer(dt) else "bool" if dt.kind == "b" else dt.kind


def finfo(dtype):
    """Range and precision of any float type (ml_dtypes.finfo also knows numpy's)."""
    return ml_dtypes.finfo(np.dtype(dtype))


def cast(x: np.ndarray, dtype, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """``x`` converted to ``dtype`` by the rules of ONNX Cast (opset 25).

    - to float8 e4m3fn/e4m3fnuz/e5m2/e5m2fnuz with ``saturate``: values beyond the finite range,
      infinities included, become +-FLT_MAX of the target; NaN stays NaN; the rest round to
      nearest even. Without ``saturate``: plain conversion (overflow gives NaN, or inf for e5m2).
    - to float8e8m0: a power of two, rounded as ``round_mode`` says (:func:`to_e8m0`).
    - everything else: numpy's conversion (round to nearest even between floats; integers wrap).
    """
    dt = np.dtype(dtype)
    if dt == _E8M0:
        return to_e8m0(x, saturate, round_mode)
    if saturate and dt in _SATURATING:
        x = x if is_float(x.dtype) else x.astype(np.float32)
        top = float(finfo(dt).max)
        if float(finfo(x.dtype).max) >= top:  # else x cannot leave the range (and has no inf)
            x = np.clip(x, x.dtype.type(-top), x.dtype.type(top))
    return x.astype(dt, copy=False)


def to_e8m0(x: np.ndarray, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """``x`` as float8e8m0 (``2**(e - 127)``, e = 0..254; 255 is NaN), from x's float32 bits.

    The float32 biased exponent is the e8m0 code; its mantissa decides the rounding: ``up`` adds one
    when the mantissa is not zero, ``down`` truncates, ``nearest`` adds one from half way up (for
    subnormal inputs strictly above it: their half way point 2**-127 is itself a code). NaN and inf
    become NaN; with ``saturate`` rounding never goes past the largest code 254 (2**127).
    Matches onnx.numpy_helper.to_float8e8m0, which the ONNX node tests use.
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    mantissa = bits & 0x7FFFFF
    special = exponent == 0xFF
    if round_mode == "up":
        step = mantissa > 0
    elif round_mode == "down":
        step = np.zeros(bits.shape, dtype=bool)
    elif round_mode == "nearest":
        step = np.where(exponent > 0, mantissa >= 0x400000, mantissa > 0x400000)
    else:
        raise UnsupportedOpError(f"round_mode {round_mode!r}: ONNX knows 'up', 'down' and 'nearest'")
    if saturate:
        step = step & (exponent < 0xFE)
    code = np.where(special, 0xFF, np.minimum(exponent + step, 0xFF)).astype(np.uint8)
    return code.view(_E8M0)


def under_policy(dt: np.dtype, policy: np.dtype | None) -> np.dtype:
    """The dtype a tensor of dtype ``dt`` gets under the float policy (None: unchanged)."""
    return policy if policy is not None and is_float(dt) else dt
