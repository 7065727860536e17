"""The host allocator policy: keep freed buffers for reuse instead of handing them back to the OS.

A forward or relevance pass allocates and frees many arrays of the same few sizes (activations,
attention scores). glibc's default policy serves blocks above ~128 KiB with ``mmap`` and gives them
back on ``free``, and trims the top of the heap as soon as a few hundred KiB there are free; every
new array then costs page faults (the kernel zeroes each 4 KiB page): a quarter of an explain call
at the larger benchmark shapes (``python tools/ab.py --knob allocator``). onnxruntime avoids the same cost
with its memory arena; reflrp asks glibc to behave like one:

- arrays up to 32 MiB (glibc's largest mmap threshold) come from the heap, and
- up to 1 GiB of free memory at the top of the heap is kept for the next arrays.

The policy is applied once, on the first :meth:`reflrp.Model.run` or :func:`reflrp.explain` call
(importing reflrp changes nothing), only under glibc (elsewhere it is a no-op), and can be turned
off with ``REFLRP_MALLOC=system`` in the environment or :func:`set_allocator_policy("system")`
before the first call. :func:`release_memory` hands the kept free memory back to the OS.
Numbers are identical either way: only where buffers come from changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30

_state = {"policy": None, "applied": False}


def _libc():
    """glibc as a ctypes library, or None (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (and mallopt with these parameters)
        return libc
    except (OSError, AttributeError):
        return None


def allocator_policy() -> str:
    """``"reuse"`` (the default) or ``"system"`` (glibc's own heuristics left alone)."""
    if _state["policy"] is None:
        env = os.environ.get("REFLRP_MALLOC", "reuse").strip().lower()
        _state["policy"] = "system" if env in ("system", "default", "off", "0") else "reuse"
    return _state["policy"]


def set_allocator_policy(policy: str) -> None:
    """Choose ``"reuse"`` or ``"system"``. It takes effect at the next call if none was made yet;
    once ``"reuse"`` was applied, ``"system"`` restores glibc's default thresholds (128 KiB) and trims."""
    if policy not in ("reuse", "system"):
        raise ValueError(f"allocator policy must be 'reuse' or 'system', not {policy!r}")
    _state["policy"] = policy
    if _state["applied"] and policy == "system":
        libc = _libc()
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
            libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)
        _state["applied"] = False
    elif policy == "reuse":
        _state["applied"] = False  # applied again at the next call


def apply_allocator_policy() -> bool:
    """Apply the policy (once); True when glibc's thresholds were set."""
    if _state["applied"] or allocator_policy() != "reuse":
        return False
    _state["applied"] = True
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_memory() -> None:
    """Give the free memory glibc keeps back to the operating system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
