"""The host allocator policy: keep freed buffers for reuse during calls instead of handing them back.

A forward or relevance pass allocates and frees many arrays of the same few sizes (activations,
attention scores). glibc's default policy serves blocks above ~128 KiB with ``mmap`` and gives them
back on ``free``, and trims the top of the heap as soon as a few hundred KiB there are free; every
new array then costs page faults (the kernel zeroes each 4 KiB page). onnxruntime avoids the same cost
with its memory arena. reflrp's speed layer asks glibc to behave like one *for the duration of its
calls*: every array comes from the heap (no ``mmap``, whatever its size: a batch's attention scores are
often larger than the 32 MiB glibc's mmap threshold can be raised to) and up to 1 GiB of free heap is
kept. When the last call returns, the settings linger for ``REFLRP_MALLOC_LINGER`` seconds (1 by
default; 0: none), so that back-to-back calls (a loop over inputs) reuse each other's memory, the way
jemalloc purges freed pages only after they stayed unused a while; a call in that time cancels the
restore. Then glibc's defaults (mmap above 128 KiB, trim above 128 KiB) are set again and the free heap
is handed back to the OS (``malloc_trim``: also the free memory below arrays the calls returned, which
glibc's own trimming of the heap's top would keep), so the process is left as it was (except that
glibc's own dynamic adjustment of those thresholds stays off once they were set explicitly).

Policies (``set_allocator_policy`` or ``REFLRP_MALLOC`` in the environment):

- ``"call"`` (default): as above, only inside ``run`` / ``explain`` calls with the speed layer on and
  for the linger after them (calls that overlap, in threads or nested, share the scope);
- ``"reuse"``: the same thresholds for the whole process, from now on (what onnxruntime's arena does);
- ``"system"``: glibc is never touched.

Only under glibc (elsewhere a no-op); numbers are identical either way: only where buffers come from
changes. :func:`release_memory` hands the kept free memory back to the OS now (and ends a linger).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time
from contextlib import contextmanager, nullcontext

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
GLIBC_DEFAULT = 128 * 1024
GLIBC_MMAP_MAX = 65536  # glibc's default number of mmapped blocks (0: none, every block from the heap)
POLICIES = ("call", "reuse", "system")


class _Settings:
    """The chosen policy (set by the user, once per process, never by a call)."""

    policy: str | None = None
    reuse_applied: bool = False
    bad_linger: str | None = None  # the REFLRP_MALLOC_LINGER value last warned about


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc as a ctypes library, or None (musl, macOS, Windows); found once (find_library runs a
    subprocess)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (and mallopt with these parameters)
        return libc
    except (OSError, AttributeError):
        return None


def allocator_policy() -> str:
    """``"call"`` (the default), ``"reuse"`` or ``"system"``."""
    if _Settings.policy is None:
        env = os.environ.get("REFLRP_MALLOC", "call").strip().lower()
        _Settings.policy = env if env in POLICIES else "system" if env in ("default", "off", "0") else "call"
        if env not in POLICIES and env not in ("default", "off", "0"):
            _warn(f"REFLRP_MALLOC={env!r} is not one of {list(POLICIES)}: using 'call'")
    return _Settings.policy


def _warn(message: str) -> None:
    import warnings
    from .explain import ReflrpWarning
    warnings.warn(message, ReflrpWarning, stacklevel=3)


def _set(mmap_threshold: int, trim_threshold: int, mmap_max: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return all(bool(libc.mallopt(param, value)) for param, value in
               ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_MMAP_MAX, mmap_max)))


def _keep_buffers() -> bool:
    return _set(MMAP_THRESHOLD, TRIM_THRESHOLD, 0)


def _glibc_defaults() -> bool:
    return _set(GLIBC_DEFAULT, GLIBC_DEFAULT, GLIBC_MMAP_MAX)


def set_allocator_policy(policy: str) -> None:
    """Choose ``"call"``, ``"reuse"`` (applied now, process-wide) or ``"system"`` (glibc's defaults set
    again now, and the kept memory trimmed)."""
    if policy not in POLICIES:
        from .errors import ReflrpError
        raise ReflrpError(f"allocator policy must be one of {list(POLICIES)}, not {policy!r}")
    _settle()
    _Settings.policy = policy
    if policy == "reuse":
        _Settings.reuse_applied = _keep_buffers()
    else:
        _Settings.reuse_applied = False
        _glibc_defaults()
        _trim()


class _Calls:
    """The calls inside the "call" policy's scope right now and the pending restore (process-wide, like
    glibc's settings). ``changed`` guards the state; the restorer thread waits on it for ``deadline``."""

    changed = threading.Condition()
    active = 0
    applied = False  # glibc set up by the scope and not restored yet
    deadline: float | None = None  # time.monotonic() at which an idle scope restores
    restorer: threading.Thread | None = None


def linger_seconds() -> float:
    """How long the "call" scope's settings outlive the last call (``REFLRP_MALLOC_LINGER``, default 1 s)."""
    text = os.environ.get("REFLRP_MALLOC_LINGER", "1")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        if _Settings.bad_linger != text:  # once per value
            _Settings.bad_linger = text
            _warn(f"REFLRP_MALLOC_LINGER={text!r} is not a finite number of seconds >= 0: using 1")
        return 1.0
    return value


@contextmanager
def reuse_during_call():
    """The ``"call"`` policy: reuse freed buffers inside the block and for the linger after the last
    such block, glibc's defaults again then (``"reuse"`` asked for in the environment is applied here
    once, for the process)."""
    policy = allocator_policy()
    if policy == "reuse" and not _Settings.reuse_applied:
        _Settings.reuse_applied = _keep_buffers()
    if policy != "call":
        yield
        return
    with _Calls.changed:  # calls may overlap (threads, a call inside a call): the first applies, the last restores
        _Calls.active += 1
        if _Calls.active == 1 and not _Calls.applied:
            _Calls.applied = _keep_buffers()
    try:
        yield
    finally:
        with _Calls.changed:
            _Calls.active -= 1
            if _Calls.active == 0 and _Calls.applied:
                _restore_later(linger_seconds())


def _restore_later(linger: float) -> None:
    """Restore once the scope stayed idle for ``linger`` s (under ``_Calls.changed``; at once for 0)."""
    if linger <= 0:
        _restore()
        return
    waiting = _Calls.deadline is None
    _Calls.deadline = time.monotonic() + linger  # a call in the meantime moves it later
    if _Calls.restorer is None:
        _Calls.restorer = threading.Thread(target=_restorer, name="reflrp-allocator-restore", daemon=True)
        _Calls.restorer.start()
    elif waiting:
        _Calls.changed.notify_all()


def _restorer() -> None:
    """The thread that restores glibc when a deadline passes with no call running (one per process)."""
    with _Calls.changed:
        while True:
            if _Calls.deadline is None:
                _Calls.changed.wait()
                continue
            left = _Calls.deadline - time.monotonic()
            if left > 0:
                _Calls.changed.wait(left)
                continue
            _Calls.deadline = None
            if _Calls.active == 0 and _Calls.applied:
                _restore()
            _Calls.changed.notify_all()


def _restore() -> None:
    """glibc's defaults again and the free heap handed back (under ``_Calls.changed``)."""
    _glibc_defaults()
    _trim()  # the freed heap, wherever it lies (arrays handed out may sit above it)
    _Calls.applied = False


def _settle() -> None:
    """End the "call" scope's linger now (glibc's defaults set again unless a call is running)."""
    with _Calls.changed:
        _Calls.deadline = None
        if _Calls.active == 0 and _Calls.applied:
            _restore()


def _wait_restored(timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until the scope has restored glibc; whether it has (for tests)."""
    with _Calls.changed:
        return _Calls.changed.wait_for(lambda: not _Calls.applied, timeout)


def _after_fork_in_child() -> None:
    """A forked child has no restorer thread: it restores glibc's defaults at once, unless the forking
    thread is inside a call (whose return then starts the child's own restorer)."""
    _Calls.changed = threading.Condition()
    _Calls.restorer, _Calls.deadline = None, None
    if _Calls.active == 0 and _Calls.applied:
        _restore()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def job_scope():
    """The call scope around a whole job (a golden run, a worker's share of one), with the speed layer on:
    the explain calls inside it reuse each other's freed heap instead of each faulting its memory in again;
    the memory is handed back when the job ends."""
    from . import fast as fast_layer
    return reuse_during_call() if fast_layer.enabled(None) else nullcontext()


def one_job(fn):
    """``fn`` (a library call that runs many forward and relevance passes: evaluate, attribute) as one
    :func:`job_scope`."""
    @functools.wraps(fn)
    def in_one_scope(*args, **kwargs):
        with job_scope():
            return fn(*args, **kwargs)
    return in_one_scope


def release_memory() -> None:
    """Give the free memory glibc keeps back to the operating system now (``malloc_trim``), ending the
    "call" scope's linger (glibc's defaults set again, unless a call is running)."""
    _settle()
    _trim()


def _trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
