"""ONNX element type codes <-> numpy dtypes (kept here so kernels need not import onnx)."""
from __future__ import annotations

import numpy as np

from .errors import UnsupportedOpError

ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}

def numpy_dtype(code: int, where: str = "") -> np.dtype:
    """The numpy dtype of ONNX element type ``code``; an error names ``where`` for types reflrp lacks."""
    try:
        return np.dtype(ONNX_TO_NUMPY[int(code)])
    except KeyError:
        raise UnsupportedOpError(f"{where}: ONNX element type {code} (e.g. bfloat16, float8, string, complex) "
                                 "is not supported") from None


def under_policy(dt: np.dtype, policy: np.dtype | None) -> np.dtype:
    """The dtype a tensor of dtype ``dt`` gets under the float policy (None: unchanged)."""
    return policy if policy is not None and dt.kind == "f" else dt
