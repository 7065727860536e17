"""The array namespace (numpy or cupy), device moves and the float dtype policy.

Only this module decides ``xp``; everything else receives it as an argument.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ReflrpError


def cupy_or_none():
    """The ``cupy`` module when it imports and a GPU answers, else ``None``.

    cupy imports without a GPU; its first device call then raises ``CUDARuntimeError``:
    that means "no GPU" here, not an import failure.
    """
    try:
        import cupy
    except Exception:
        return None
    try:
        cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1)
    except Exception:
        return None
    return cupy


def namespace(device: str | None = None, arrays: Any = ()) -> Any:
    """Pick numpy or cupy: cupy when ``device == "cuda"`` or any of ``arrays`` is a cupy array."""
    is_cupy = any(type(a).__module__.startswith("cupy") for a in arrays)
    if device in (None, "cpu") and not is_cupy:
        return np
    if device not in (None, "cpu", "cuda"):
        raise ReflrpError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    cp = cupy_or_none()
    if cp is None:
        raise ReflrpError("device='cuda' was asked but cupy is not installed or no GPU is available")
    return cp


def to_numpy(a: Any) -> np.ndarray:
    """A host numpy copy of ``a`` (no copy for numpy input)."""
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def erf(xp: Any, x):
    """The error function on ``xp`` arrays (scipy.special / cupyx.scipy.special)."""
    if xp is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)


def quiet(xp: Any):
    """A context that silences numpy's floating-point warnings (inf/NaN are handled explicitly)."""
    from contextlib import nullcontext
    return np.errstate(all="ignore") if xp is np else nullcontext()


FLOAT_POLICIES = ("float64", "float32", "float16")


def float_policy(dtype: Any) -> np.dtype | None:
    """Normalise the ``dtype`` argument: None keeps the model's floats, else every float tensor becomes
    it (one of float64, float32, float16)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or isinstance(dtype, bool) or dt.name not in FLOAT_POLICIES:
        raise ReflrpError(f"dtype={dtype!r} is not a float policy; choose one of {list(FLOAT_POLICIES)} or None "
                          "(the model's own types)")
    return dt
