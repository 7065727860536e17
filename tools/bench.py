#!/usr/bin/env python
"""Benchmark reflrp against onnxruntime, onnx.reference and LXT 2.1 (torch) on CPU.

Usage:
    python tools/bench.py                      # full run -> BENCHMARKS.md
    python tools/bench.py --quick              # seq 128, batch 1 only
    python tools/bench.py --layers 2 4 8 16 --seq 128 512 --batch 1 8 --out BENCHMARKS.md
    python tools/bench.py --profile            # also cProfile reflrp forward / explain
    python tools/bench.py --baseline cb7d23e   # compare the ratios with BENCHMARKS.md at that commit

To benchmark, run it with OpenBLAS's core-type overrides removed, e.g.
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench.py
(the report records which OpenBLAS kernel actually ran, from threadpoolctl).

What it does
------------
* Builds a deterministic random ``LlamaForCausalLM`` (hidden 256, 8 query heads, 2 key/value heads,
  intermediate 688, vocab 1024; ``--layers`` decoder layers, eager attention, seed 0) and exports it
  with the dynamo exporter (opset 18, dynamic batch and sequence, ``inputs_embeds`` input) to
  ``.cache/bench/`` (git-ignored; reused while the config / torch / transformers versions match),
  together with its ``state_dict`` so that LXT runs on exactly the same weights.
* In this process, with the same number of threads everywhere (numpy's BLAS via threadpoolctl,
  onnxruntime ``intra_op_num_threads``, torch ``set_num_threads`` in the LXT worker), it times
  onnxruntime, ``reflrp.load(path).run(feeds)`` (float32), ``reflrp.explain(model, feeds,
  dtype=float32 / float64)``, the same two with the speed layer off (``fast=False``: the plain path,
  "fwd-plain" and "explain32-plain") and ``onnx.reference.ReferenceEvaluator``.  LXT 2.1 (AttnLRP,
  float32 forward + backward + ``x * grad``) runs in a subprocess, because LXT patches transformers
  process-wide, and reports its timing as JSON.  Numbers are medians over the timed repetitions
  after warm-up.
* Two passes: wall clock with ``--threads`` (default: all cores), then (unless ``--no-cpu-pass``)
  the main and scaling tables again with 1 thread everywhere, timed by the calling thread's CPU
  time, which other processes on a shared machine cannot inflate.
* Many targets (L = main, batch 1, seq 128): ``explain(..., targets=[c_1..c_K])`` for the top-K
  next-token classes at the last position (K = 1, 4, 16, 64) and ``targets=["every-position"]``,
  against K single ``explain`` calls and against LXT's K backward passes over one forward
  (``retain_graph=True``); the relevance pass's GFLOP/s (K x :func:`relevance_flops`) against the
  BLAS ceiling; peak memory per K. Single-threaded CPU time in full, K = 16 also in the wall pass.
* Peak memory, after the main timings, in the same process, single-threaded: glibc is pinned to
  mmap every allocation >= 128 KiB and to trim (reflrp's allocator policy set to "system" meanwhile),
  the kernel's RSS high-water mark is reset via ``/proc/self/clear_refs``, and ``VmHWM - VmRSS``
  around one call is reported (onnxruntime on a session without its arena; LXT likewise in its
  worker); for reflrp also tracemalloc's peak during a second call.
* The machine may be shared: the share of CPU used by other processes during every cell is
  recorded (``/proc/stat``) and reported next to the timings.
* Cells that would not fit ``--max-minutes`` (default 16) are skipped, not started.
* The tiny zoo models (``models/*.onnx`` with ``models/<name>.ref.npz``): per-call time of reflrp
  forward (fast and plain) / explain, ReferenceEvaluator and onnxruntime; these are overhead-dominated.
* A scaling table over ``--layers`` at seq 128, batch 1.
* all-MiniLM-L6-v2 (``.cache/minilm/minilm.onnx``, from ``python tools/export_models.py
  --minilm``) if present.
* ``--profile``: cProfile of reflrp forward and explain (float32 and float64) at seq 128 and of
  explain float32 at seq 512 (batch 1), plus time per op type (forward) and per rule (relevance pass).
* ``--baseline REV``: the summary ratios of the BENCHMARKS.md at git revision REV (or a file), from
  its raw JSON, next to this run's (issue 10's bar: no worse than 1.10x).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
MINILM = ROOT / ".cache" / "minilm" / "minilm.onnx"
MODELS = ROOT / "models"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from torch_common import import_lxt  # noqa: E402

HIDDEN, HEADS, KV_HEADS, INTER, VOCAB = 256, 8, 2, 688, 1024
MAX_POS = 1024
WEIGHT_SEED = 0
LLAMA_CFG = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=HEADS,
                 num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS, attention_bias=False,
                 mlp_bias=False, tie_word_embeddings=False, rms_norm_eps=1e-6)
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ------------------------------------------------------------------ helpers shared with workers

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def embeds(batch: int, seq: int, hidden: int = HIDDEN) -> np.ndarray:
    """The deterministic float32 ``inputs_embeds`` of a shape (same in every process)."""
    rng = np.random.default_rng(10_000 + 100 * batch + seq)
    return rng.standard_normal((batch, seq, hidden), dtype=np.float32)


def llama_flops(layers: int, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward pass (2 per multiply-add): the linear layers (q, k, v, o, gate,
    up, down, lm_head) plus attention's Q K^T and A V (computed in full: 4 b H s^2 d)."""
    d = HIDDEN // HEADS
    tokens = batch * seq
    per_layer = HIDDEN * HIDDEN * 2 + HIDDEN * KV_HEADS * d * 2 + 3 * HIDDEN * INTER
    linear = 2 * tokens * (layers * per_layer + HIDDEN * VOCAB)
    attention = layers * 4 * batch * HEADS * seq * seq * d
    return float(linear + attention)


def relevance_flops(layers: int, batch: int, seq: int) -> float:
    """Matmul FLOPs of one target's relevance pass, seeded at one logit of the last position per row.

    Every product of the pass is a vector-Jacobian product of a forward product: for a weight layer
    ``y = x W`` the epsilon rule needs ``G W^T`` (the weights are constant: no ``x^T G``), as many FLOPs
    as the forward on the rows where ``G`` is non-zero; for each of attention's two bilinear products
    (``Q K^T`` and ``A V``, uniform rule) both operands' adjoints, twice the forward's FLOPs.
    The seed has one non-zero row per batch row, and it stays one row through the lm_head, the last
    layer's MLP, o_proj, the ``A V`` and ``Q K^T`` adjoints of the query row (``G V^T``, ``G K``: one
    row; ``A^T G``, ``G^T Q``: outer products, ``s d`` each per head) and q_proj; the key and value
    paths spread it over every position, so k_proj / v_proj and every earlier layer are dense:

        last layer: 2 b (V H + 3 H I + 2 H^2) + 8 b n_heads s d + 4 b s H (n_kv d)
        each earlier layer: 2 b s (2 H^2 + 2 H n_kv d + 3 H I) + 8 b n_heads s^2 d

    (attention counted in full as in :func:`llama_flops`, causal zeros included). K targets need K times
    this; elementwise work (ratios, products, softmax rule, the books) is not counted."""
    d = HIDDEN // HEADS
    kv = KV_HEADS * d
    last = (2 * batch * (VOCAB * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN * HIDDEN)
            + 8 * batch * HEADS * seq * d + 4 * batch * seq * HIDDEN * kv)
    dense = (2 * batch * seq * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv + 3 * HIDDEN * INTER)
             + 8 * batch * HEADS * seq * seq * d)
    return float(last + (layers - 1) * dense)


def cfg_key_light(layers: int) -> str:
    """Cache key of an exported model: config, seed and the torch / transformers versions."""
    from importlib.metadata import version
    blob = json.dumps([LLAMA_CFG, layers, WEIGHT_SEED, version("torch"), version("transformers"), 2],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line[:5]] = int(line.split()[1])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuMonitor:
    """The share of the machine's CPU time used by *other* processes over an interval (0..1).

    From /proc/stat (busy = all but idle and iowait, steal included) minus this process's own
    user+system time including waited-for children; the machine is shared, so this qualifies
    every timing."""

    def __init__(self):
        self.t0 = self._sample()

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        total = sum(v[:8])
        busy = total - v[3] - v[4]
        with open("/proc/self/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        own = sum(int(x) for x in st[11:15])  # utime stime cutime cstime
        return total, busy, own

    def others(self) -> float | None:
        try:
            t1 = self._sample()
        except OSError:
            return None
        dt = t1[0] - self.t0[0]
        if dt <= 0:
            return None
        return max(0.0, min(1.0, ((t1[1] - self.t0[1]) - (t1[2] - self.t0[2])) / dt))


def pin_malloc() -> bool:
    """glibc: serve every allocation >= 128 KiB by mmap and trim freed heap, so that the RSS
    follows live memory (used before memory measurements only; it slows allocation-heavy code)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 131072)  # M_MMAP_THRESHOLD (also turns off the dynamic threshold)
        libc.mallopt(-1, 131072)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
        return True
    except Exception:
        return False


def unpin_malloc(policy: str = "call") -> None:
    """After pin_malloc: reflrp's allocator policy back to ``policy`` (the state the main timings ran in:
    "call", glibc's default thresholds between calls and ``reflrp.memory``'s reuse inside fast calls)."""
    import reflrp
    reflrp.set_allocator_policy(policy)


def pin_for_memory() -> str:
    """pin_malloc, and reflrp's allocator policy "system" so that its calls do not raise glibc's
    thresholds meanwhile; returns the policy to restore."""
    import reflrp.memory
    policy = reflrp.memory.allocator_policy()
    reflrp.set_allocator_policy("system")
    pin_malloc()
    return policy


def measure_memory(call, numpy_peak: bool = False, numpy_max_s: float = 5.0) -> dict:
    """Peak RSS above the pre-call RSS during one ``call()`` (MiB; needs pin_malloc first), and
    optionally, in a second call, tracemalloc's peak of traced (numpy) allocations above the
    level before it. The second call is skipped when the first took longer than numpy_max_s."""
    import reflrp
    gc.collect()
    reflrp.release_memory()
    ok = reset_peak()
    before, hwm0 = rss_kib()
    if not ok:  # fall back to ru_maxrss semantics (only meaningful when the peak grows)
        before = hwm0
    t0 = time.perf_counter()
    call()
    took = time.perf_counter() - t0
    _, hwm = rss_kib()
    out = {"peak_rss_mib": max(hwm - before, 0) / 1024, "call_s": took}
    if numpy_peak and took <= numpy_max_s:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        call()
        out["tracemalloc_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = "wall"  # "cpu": CPU time of the calling thread (single-threaded engines only)


def timed(fn, reps: int, budget_s: float, min_reps: int = 3) -> dict:
    """Time ``fn``: the first call at the shape is a warm-up, then up to ``reps`` timed calls while
    the (wall-clock) budget lasts (at least ``min_reps``). A first call longer than budget/min_reps
    needs only one timed call after it, and one longer than half the budget is itself timed (the
    per-model caches were built by a priming call at a tiny shape), the count then possibly 1.
    Median and min in seconds of the CLOCK, n timed calls, and the share of the machine's CPU that
    other processes used meanwhile."""
    clock = CLOCKS[CLOCK]
    mon = CpuMonitor()
    start = time.perf_counter()
    c0 = clock()
    fn()
    first, first_wall = clock() - c0, time.perf_counter() - start
    long_call = first_wall * 2 > budget_s
    times, walls = ([first], [first_wall]) if long_call else ([], [])
    need = 1 if first_wall * min_reps > budget_s else min_reps
    while len(times) < reps:
        spent = time.perf_counter() - start
        est = statistics.median(walls) if walls else first_wall
        if len(times) >= need and spent + est > budget_s:
            break
        t0, c0 = time.perf_counter(), clock()
        fn()
        times.append(clock() - c0)
        walls.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "n": len(times), "clock": CLOCK,
            "median_wall": statistics.median(walls), "first_timed": long_call, "others_cpu": mon.others()}


def set_blas_threads(n: int):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="blas")


# ------------------------------------------------------------------ workers (subprocesses)

def _build_torch_llama(layers: int):
    import torch
    import transformers
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, **LLAMA_CFG)
    cfg._attn_implementation = "eager"
    torch.manual_seed(WEIGHT_SEED)
    return transformers.LlamaForCausalLM(cfg).eval()


def worker_export(spec: dict) -> dict:
    """Export the benchmark Llama with ``spec['layers']`` layers (and save its state_dict)."""
    import warnings

    import onnx
    import torch

    torch.set_num_threads(spec["threads"])
    layers = spec["layers"]
    onnx_path, pt_path = Path(spec["onnx"]), Path(spec["pt"])
    model = _build_torch_llama(layers)

    class EmbedsToLogits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inputs_embeds):
            return self.m(inputs_embeds=inputs_embeds, use_cache=False, return_dict=True).logits

    wrapped = EmbedsToLogits(model).eval()
    x = torch.from_numpy(embeds(2, 8))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=MAX_POS)}
    tmp = onnx_path.with_suffix(".tmp.onnx")
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (), str(tmp), kwargs={"inputs_embeds": x}, dynamo=True, opset_version=18,
                          input_names=["inputs_embeds"], output_names=["logits"],
                          dynamic_shapes={"inputs_embeds": dims}, external_data=False, verbose=False)
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    tmp.replace(onnx_path)
    torch.save(model.state_dict(), str(pt_path))
    return {"seconds": time.perf_counter() - t0, "nodes": len(proto.graph.node),
            "params": int(sum(p.numel() for p in model.parameters()))}


def _import_lxt():
    import_lxt()
    import lxt.efficient.models.llama
    from lxt.efficient import monkey_patch
    return monkey_patch, lxt.efficient.models.llama


def _lxt_model(spec: dict):
    """The LXT-patched benchmark Llama in float32 with the exported weights, parameters frozen."""
    global CLOCK
    import torch
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    CLOCK = spec.get("clock", "wall")
    monkey_patch, lxt_llama = _import_lxt()
    from transformers.models.llama import modeling_llama
    monkey_patch(modeling_llama, lxt_llama.attnLRP)
    model = _build_torch_llama(spec["layers"])  # built after patching
    model.load_state_dict(torch.load(spec["pt"], weights_only=True))
    model.requires_grad_(False)
    return model


def worker_lxt(spec: dict) -> dict:
    """LXT 2.1 AttnLRP on the benchmark Llama, float32: forward + backward + ``x * grad``.

    Parameters do not require grad (LXT's recommended setup), so backward computes input
    gradients only. Timing first (default malloc), then optionally one call for peak memory."""
    import torch
    model = _lxt_model(spec)

    def call(x_np):
        x = torch.from_numpy(x_np).requires_grad_()
        logits = model(inputs_embeds=x, use_cache=False).logits
        rows = torch.arange(logits.shape[0])
        target = logits[:, -1].argmax(-1)
        logits[rows, -1, target].sum().backward()  # rows are independent: one backward for all
        return (x * x.grad).detach(), target

    x = embeds(spec["batch"], spec["seq"])
    call(embeds(1, 8))  # priming at a tiny shape
    out = timed(lambda: call(x), spec["reps"], spec["budget"])
    if spec.get("save"):
        rel, target = call(x)
        np.savez(spec["save"], relevance=rel.numpy(), target=target.numpy())
    if spec.get("mem"):
        pin_malloc()
        out.update({k: v for k, v in measure_memory(lambda: call(x)).items() if k != "call_s"})
    out["torch_threads"] = torch.get_num_threads()
    return out


def worker_lxt_many(spec: dict) -> dict:
    """LXT 2.1 with K targets (batch 1): one forward, then K backward passes over its graph
    (``retain_graph=True``), ``x * grad`` after each. ``spec["cases"]``: name -> (positions, classes);
    timings first, then (``mem``) one call per case for peak memory; ``save``: the relevance of the
    case ``spec["save_case"]`` (K x seq x hidden)."""
    import torch
    model = _lxt_model(spec)

    def call(x_np, positions, classes):
        x = torch.from_numpy(x_np).requires_grad_()
        logits = model(inputs_embeds=x, use_cache=False).logits
        rel = []
        for i, (p, c) in enumerate(zip(positions, classes)):
            x.grad = None
            logits[0, p, c].backward(retain_graph=i + 1 < len(classes))
            rel.append((x * x.grad).detach()[0])
        return torch.stack(rel)

    x = embeds(1, spec["seq"])
    call(embeds(1, 8), [7, 7], [0, 1])  # priming at a tiny shape
    out = {}
    for name, (positions, classes) in spec["cases"].items():
        if CLOCK == "wall":
            IdleWait(spec.get("idle_wait", 0), spec.get("idle_wait", 0))()
        out[name] = timed(lambda: call(x, positions, classes), spec["reps"], spec["budget"])
    if spec.get("save"):
        positions, classes = spec["cases"][spec["save_case"]]
        np.save(spec["save"], call(x, positions, classes).numpy())
    if spec.get("mem"):
        pin_malloc()
        for name, (positions, classes) in spec["cases"].items():
            got = measure_memory(lambda: call(x, positions, classes))
            out[name]["peak_rss_mib"] = got["peak_rss_mib"]
    out["torch_threads"] = torch.get_num_threads()
    return out


def worker_plain(spec: dict) -> dict:
    """reflrp's plain path (``fast=False``: forward and explain float32) at one shape, in a process where
    the speed layer never ran: glibc's allocator is then as the plain path leaves it (glibc's own adaptive
    thresholds; a fast call before would have fixed them, see ``tools/ab.py --knob plain-after-fast``)."""
    global CLOCK, IDLE
    import reflrp
    CLOCK = spec["clock"]
    IDLE = IdleWait(spec["idle_wait"], 2 * spec["idle_wait"])
    limiter = set_blas_threads(spec["threads"])  # noqa: F841  (held for the whole worker)
    model = reflrp.load(spec["onnx"])
    calls = {"fwd-plain": lambda f: model.run(f, dtype="float32", fast=False),
             "explain32-plain": lambda f: reflrp.explain(model, f, dtype="float32", fast=False)}
    feeds = {"inputs_embeds": embeds(spec["batch"], spec["seq"])}
    out = {}
    with np.errstate(all="ignore"):
        for fn in calls.values():
            fn({"inputs_embeds": embeds(1, 8)})  # priming at a tiny shape, as in the main process
        for name, fn in calls.items():
            time.sleep(0.2)
            waited = IDLE()
            out[name] = timed(lambda: fn(feeds), spec["reps"], spec["budget"])
            out[name]["idle_wait_s"] = round(waited, 1)
    out["allocator"] = reflrp.memory.allocator_policy()
    return out


def _ort_session(path, threads: int, arena: bool = True):
    import onnxruntime as ort
    ort.set_default_logger_severity(4)  # failures are recorded from the exception
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


WORKERS = {"export": worker_export, "lxt": worker_lxt, "lxt_many": worker_lxt_many, "plain": worker_plain}


def run_worker(kind: str, spec: dict, timeout: float = 1200) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    mon = CpuMonitor()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"worker {kind} timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"worker {kind} rc={p.returncode}: {' | '.join(tail)[:400]}"}
    out = json.loads(lines[-1])
    out.setdefault("worker_others_cpu", mon.others())
    return out


# ------------------------------------------------------------------ main-process measurements

def model_path(layers: int, threads: int) -> tuple[Path, Path, dict]:
    CACHE.mkdir(parents=True, exist_ok=True)
    key = cfg_key_light(layers)
    stem = f"llama_h{HIDDEN}_L{layers}_{key}"
    onnx_path, pt_path = CACHE / f"{stem}.onnx", CACHE / f"{stem}.pt"
    info = {"cached": True}
    if not (onnx_path.exists() and pt_path.exists()):
        log(f"[export] llama L={layers} -> {onnx_path.relative_to(ROOT)}")
        info = run_worker("export", {"layers": layers, "onnx": str(onnx_path), "pt": str(pt_path),
                                     "threads": threads})
        if "error" in info:
            raise RuntimeError(info["error"])
        info["cached"] = False
    return onnx_path, pt_path, info


def blas_ceiling(n: int = 1024) -> dict:
    out = {}
    for dt in (np.float32, np.float64):
        a = np.random.default_rng(0).standard_normal((n, n)).astype(dt)
        b = a.copy()
        r = timed(lambda: a @ b, 15, 2.0)
        out[np.dtype(dt).name] = 2 * n ** 3 / r["median"] / 1e9
        out[np.dtype(dt).name + "_others_cpu"] = r["others_cpu"]
    return out


class IdleWait:
    """Before a cell, wait (at most ``per_wait`` s, ``cap`` s in all) for a 0.5 s window in which other
    processes use less than ``threshold`` of the machine's CPU."""

    def __init__(self, per_wait: float, cap: float, threshold: float = 0.25):
        self.per_wait, self.cap, self.threshold, self.spent = per_wait, cap, threshold, 0.0

    def __call__(self) -> float:
        t0 = time.perf_counter()
        limit = min(self.per_wait, self.cap - self.spent)
        while time.perf_counter() - t0 < limit:
            mon = CpuMonitor()
            time.sleep(0.5)
            o = mon.others()
            if o is None or o < self.threshold:
                break
        waited = time.perf_counter() - t0
        self.spent += waited
        return waited


IDLE = IdleWait(0, 0)


class Deadline:
    def __init__(self, minutes: float):
        self.end = time.perf_counter() + 60 * minutes

    def left(self) -> float:
        return self.end - time.perf_counter()

    def fits(self, est_s: float, reserve: float = 20.0) -> bool:
        return est_s + reserve <= self.left()


SKIP = {"skipped": "time budget (--max-minutes)"}
ENGINE_NAMES = ("ort", "fwd", "fwd-plain", "explain32", "explain32-plain", "explain64", "refeval")
PLAIN = ("fwd-plain", "explain32-plain")  # timed in a worker (worker_plain), peak memory in this process
FAST = ("ort", "fwd", "explain32", "explain64")  # timed in this process (ReferenceEvaluator: first shape only)


class Engines:
    """The in-process engines on one ONNX model, and a cost model (seconds per FLOP) per engine
    so that cells that would not fit the time budget are skipped, not started."""

    def __init__(self, path: Path, threads: int, hidden: int):
        import reflrp
        self.path, self.threads, self.hidden = path, threads, hidden
        self.reflrp = reflrp
        self.model = reflrp.load(path)
        self.sess = _ort_session(path, threads)
        self._ref = None
        self.cost: dict[str, float] = {}  # engine -> seconds per FLOP (last measurement)

    @property
    def ref(self):
        if self._ref is None:
            from onnx.reference import ReferenceEvaluator
            self._ref = ReferenceEvaluator(str(self.path))
        return self._ref

    def calls(self, feeds: dict) -> dict:
        r = self.reflrp
        return {
            "ort": lambda: self.sess.run(None, feeds),
            "fwd": lambda: self.model.run(feeds, dtype="float32"),
            "fwd-plain": lambda: self.model.run(feeds, dtype="float32", fast=False),
            "explain32": lambda: r.explain(self.model, feeds, dtype="float32"),
            "explain32-reuse": lambda: r.explain(self.model, feeds, dtype="float32"),  # see measure()
            "explain32-plain": lambda: r.explain(self.model, feeds, dtype="float32", fast=False),
            "explain64": lambda: r.explain(self.model, feeds, dtype="float64"),
            "refeval": lambda: self.ref.run(None, feeds),
        }

    def prime(self, which=ENGINE_NAMES) -> None:
        """One call per engine at a tiny shape: builds reflrp's prepared plans and relevance plan,
        onnxruntime's first-run state; later first calls at a real shape are then ordinary."""
        tiny = self.calls({"inputs_embeds": embeds(1, 8, self.hidden)})
        with np.errstate(all="ignore"):
            for name in which:
                tiny[name]()

    def estimate(self, name: str, flops: float, reps: int, budget: float) -> float:
        c = self.cost.get(name)
        if c is None:
            return 0.0
        one = 1.3 * c * flops
        return one if 3 * one > budget else budget + one

    def measure(self, feeds: dict, flops: float, reps: int, budget: float, deadline: Deadline,
                which=ENGINE_NAMES, reserve: float = 20.0) -> dict:
        res = {}
        calls = self.calls(feeds)
        with np.errstate(all="ignore"):
            for name in which:
                rb = budget / 2 if name == "refeval" else budget
                rr = max(2, reps // 3) if name == "refeval" else reps
                if not deadline.fits(self.estimate(name, flops, rr, rb), reserve):
                    res[name] = dict(SKIP)
                    log(f"    {name:10s} skipped (time budget)")
                    continue
                time.sleep(0.2)  # let spinning worker threads of the previous engine go idle
                waited = IDLE()
                policy = self.reflrp.memory.allocator_policy()
                if name == "explain32-reuse":  # the opt-in policy: freed heap kept between calls
                    self.reflrp.set_allocator_policy("reuse")
                try:
                    res[name] = timed(calls[name], rr, rb, min_reps=2 if name == "refeval" else 3)
                    res[name]["idle_wait_s"] = round(waited, 1)
                    self.cost[name] = res[name]["median_wall"] / flops
                except Exception as e:  # recorded, not fatal
                    res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                finally:
                    if name == "explain32-reuse":
                        self.reflrp.set_allocator_policy(policy)
                log(f"    {name:10s} {_fmt_res(res[name])}")
        return res

    def memory(self, feeds: dict, which, est: dict, deadline: Deadline) -> dict:
        """Peak memory per engine (call after pin_malloc); onnxruntime on a session without arena."""
        out = {}
        calls = self.calls(feeds)
        with np.errstate(all="ignore"):
            for name in which:
                e = est.get(name)
                if e is None or "median" not in e:
                    continue
                if not deadline.fits(2.5 * e["median_wall"] + 1):
                    out[name] = dict(SKIP)
                    continue
                if name == "ort":
                    sess = _ort_session(self.path, self.threads, arena=False)
                    sess.run(None, {"inputs_embeds": embeds(1, 8, self.hidden)})
                    call = lambda: sess.run(None, feeds)  # noqa: E731
                else:
                    call = calls[name]
                try:
                    out[name] = measure_memory(call, numpy_peak=name not in ("ort", "refeval"))
                except Exception as ex:
                    out[name] = {"error": f"{type(ex).__name__}: {ex}"[:200]}
                log(f"    mem {name:10s} {out[name]}")
        return out

    def check(self, feeds: dict) -> dict:
        """Max |reflrp - ort| / max |ort| of the forward (float32), a sanity check."""
        with np.errstate(all="ignore"):
            o = self.sess.run(None, feeds)[0]
            f = next(iter(self.model.run(feeds, dtype="float32").values()))
        return {"fwd_vs_ort": float(np.abs(f - o).max() / max(np.abs(o).max(), 1e-30))}


def _fmt_res(r):
    if "error" in r:
        return r["error"]
    if "skipped" in r:
        return "skipped"
    return (f"{r['median'] * 1e3:9.2f} ms (min {r['min'] * 1e3:.2f}, n={r['n']}, others' CPU "
            f"{(r.get('others_cpu') or 0) * 100:.0f}%)")


# ------------------------------------------------------------------ environment facts

def machine_info(threads: int) -> dict:
    import onnx
    import onnxruntime
    from threadpoolctl import threadpool_info
    cpu = "unknown"
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    vers = {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
    for mod in ("reflrp", "threadpoolctl", "scipy"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:
            pass
    # torch / transformers / lxt versions without importing torch here
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("torch", "transformers", "lxt"):
        try:
            vers[dist] = version(dist)
        except PackageNotFoundError:
            vers[dist] = "not installed"
    blas = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads",
                                   "prefix")} for d in threadpool_info() if d.get("user_api") == "blas"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=str(ROOT)).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "reflrp"], capture_output=True, text=True,
                                    cwd=str(ROOT)).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    import reflrp.memory
    allocator = reflrp.memory.allocator_policy() + (" (glibc)" if reflrp.memory._libc() is not None else
                                                     " (no glibc: no-op)")
    return {"allocator": allocator, "cpu": cpu, "simd": simd, "cores": os.cpu_count(), "threads": threads, "blas": blas,
            "env": {k: os.environ.get(k, "(unset)") for k in BLAS_ENV + ("OMP_NUM_THREADS",)},
            "versions": vers, "platform": platform.platform(),
            "commit": commit + (" (reflrp/ modified)" if dirty else "")}


# ------------------------------------------------------------------ report

def ms(r):
    if not r:
        return "—"
    if "error" in r:
        return "error"
    if "skipped" in r:
        return "skipped"
    v = r["median"] * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def ok(r) -> bool:
    return bool(r) and "median" in r


def ratio(a, b, key="median"):
    return f"{a[key] / b[key]:.2f}" if ok(a) and ok(b) else "—"


def mib(m, key="peak_rss_mib"):
    if not m:
        return "—"
    if "skipped" in m:
        return "skipped"
    if key not in m:
        return "error" if "error" in m else "—"
    return f"{m[key]:.0f}" if m[key] >= 10 else f"{m[key]:.1f}"


def gflops(flops, r):
    return f"{flops / r['median'] / 1e9:.1f}" if ok(r) else "—"


def others(*rs):
    v = [r["others_cpu"] for r in rs if r and r.get("others_cpu") is not None]
    return f"{max(v) * 100:.0f}%" if v else "—"


def write_report(path: Path, args, info: dict, data: dict, elapsed: float) -> None:
    L = []
    w = L.append
    c = data["ceiling"]
    w("# reflrp benchmarks\n")
    w("Generated by `tools/bench.py` (rerun it to refresh this file); all numbers come from one run on the "
      "machine below, CPU only.\n")
    w("## Machine and command\n")
    w(f"- Command: `{data['command']}`, wall time {elapsed / 60:.1f} min")
    w(f"- CPU: {info['cpu']} ({', '.join(info['simd']) or 'no SIMD flags found'}), {info['cores']} logical "
      f"cores; **{info['threads']} threads** in every engine (numpy's BLAS via threadpoolctl, onnxruntime "
      "intra_op_num_threads, torch.set_num_threads in the LXT worker)")
    for bl in info["blas"]:
        w(f"- BLAS (threadpoolctl): {bl['internal_api']} {bl['version']}, kernel **{bl['architecture']}**, "
          f"{bl['threading_layer']}, {bl['num_threads']} threads ({bl['prefix']})")
    w("- Environment: " + ", ".join(f"`{k}`={v}" for k, v in info["env"].items()))
    w(f"- BLAS ceiling measured in this run (numpy 1024×1024 matmul, median, best of start/end): "
      f"**{c['float32']:.0f} GFLOP/s float32**, {c['float64']:.0f} GFLOP/s float64")
    oc = info.get("others_cpu_run")
    w(f"- Machine load: load average {' '.join(info['loadavg_start'])} at the start, "
      f"{' '.join(info['loadavg_end'])} at the end; other processes used "
      f"**{(oc or 0) * 100:.0f}% of the machine's CPU** during the run (from /proc/stat minus this "
      "process and its workers). The machine is shared: the *others' CPU* columns give that share "
      "during each row's cells (max over the row's engines); read ratios from rows where it is low.")
    w(f"- Before each cell the script waited up to {args.idle_wait:g} s for a quiet moment (other "
      f"processes < 25% CPU over 0.5 s); {info.get('idle_wait_s', 0):.0f} s spent waiting in all.")
    w("- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    w(f"- Platform: {info['platform']}; reflrp at commit {info['commit']}\n")

    w("## Method\n")
    w(f"- Model: random `LlamaForCausalLM` (hidden {HIDDEN}, {HEADS} query / {KV_HEADS} key-value heads, "
      f"head dim {HIDDEN // HEADS}, intermediate {INTER}, vocab {VOCAB}, untied lm_head, eager attention, "
      f"`torch.manual_seed({WEIGHT_SEED})` initialisation), exported with `torch.onnx.export(..., dynamo=True, "
      "opset_version=18)`, dynamic batch and sequence, input `inputs_embeds` (float32, N(0, 1)), output "
      "logits; cached in `.cache/bench/`.")
    w("- Engines: **ort** = onnxruntime CPUExecutionProvider (sequential executor, default graph "
      "optimisations, memory arena on); **fwd** = `reflrp.load(path).run(feeds, dtype=\"float32\")`; "
      "**explain32 / explain64** = `reflrp.explain(model, feeds, dtype=...)` (AttnLRP preset, target = "
      "argmax at the last position; includes its own forward pass); **fwd-plain / explain32-plain** = the "
      "same with `fast=False` (the plain path: no speed layer `reflrp.fast`, no allocator policy), timed in a "
      "worker process in which the speed layer never ran (in a process that made fast calls before, glibc's "
      "thresholds stay fixed at their defaults and the plain path is slower: `python tools/ab.py --knob "
      "plain-after-fast`); "
      "**RefEval** = `onnx.reference.ReferenceEvaluator` forward; **LXT** = LXT 2.1 `attnLRP` "
      "monkey-patched HF Llama (float32, same weights via the state_dict), one forward, one backward from "
      "the target logits of all rows, `x * grad`; parameters frozen (`requires_grad_(False)`); in a "
      "subprocess.")
    w(f"- Time: ms, median of the timed calls. Each engine is primed once per model at a tiny shape "
      f"(builds reflrp's cached plans); at each shape the first call is a warm-up, then up to "
      f"{args.reps} calls within a {args.budget:g} s budget (at least 3; ReferenceEvaluator a third of "
      "the calls, at least 2, half the budget). When one call takes more than a third of the budget, one "
      "timed call suffices; above half the budget the first call is timed too and `n` may be 1 (see the "
      "raw data). Cells that would not fit "
      f"`--max-minutes {args.max_minutes:g}` are skipped (ReferenceEvaluator and MiniLM first).")
    w(f"- Allocator: reflrp's policy `{info.get('allocator', '?')}` (`reflrp.memory`). Under the default "
      "\"call\", glibc serves every array from the heap (no mmap) and keeps up to 1 GiB of freed heap "
      "during each run / explain call with the speed layer on and for `REFLRP_MALLOC_LINGER` (1 s) after "
      "the last one (onnxruntime's counterpart is its memory arena, on by default), then is set back to its "
      "defaults (128 KiB thresholds) and hands the free heap back (`malloc_trim`), so a cell's back-to-back "
      "calls reuse each other's memory; *explain32 reuse* keeps it for the whole process (opt-in); "
      "glibc stops adapting its mmap threshold once one was set, so onnxruntime and ReferenceEvaluator run "
      "with fixed default thresholds in this process. The plain path's worker and LXT run with glibc's "
      "defaults (adaptive).")
    w("- GFLOP/s: analytic matmul FLOPs of the forward (2 × tokens × linear weights including lm_head, "
      "plus 4·b·H·s²·d for Q·Kᵀ and A·V) over the median forward time; compare with the BLAS ceiling.")
    w("- Peak memory (MiB), measured after the main timings, in the same process, single-threaded (memory "
      "does not depend on the thread count): glibc is set to serve every "
      "allocation ≥ 128 KiB by mmap and to trim (`mallopt`, `malloc_trim`), so freed buffers leave the "
      "RSS; then the kernel's high-water mark is reset (`/proc/self/clear_refs`) and **peak RSS = VmHWM − "
      "VmRSS around one call**. It counts what the call allocates and returns (explain returns the "
      "relevance of every tensor), not the weights or plans loaded before. onnxruntime is measured on a "
      "second session without its memory arena. LXT is measured the same way in its worker after its "
      "timings (with the pass's thread count). reflrp's allocator policy is \"system\" meanwhile and "
      "restored afterwards for the remaining ReferenceEvaluator / MiniLM timings. *np peak* = tracemalloc's peak of traced allocations (numpy "
      "arrays and Python objects) "
      "during a second reflrp call, above the level before it (only when a call takes < 5 s).\n")

    def summary():
        w("## Summary: the optimisation targets\n")
        w("Targets: reflrp forward / onnxruntime ≤ 1.3; explain / forward ≤ 2.0; explain / LXT ≤ 1.0 "
          "(explain in float32, the dtype LXT runs in; explain64 shown for reference). Ratios of medians; "
          "*plain* = the same call with `fast=False`; *explain32 reuse* = explain32 under the opt-in allocator "
          "policy \"reuse\" (`reflrp.set_allocator_policy(\"reuse\")`: freed heap kept between calls).\n")
        w("| pass | shape (L, b, s) | fwd / ort | explain32 / fwd | explain32 / LXT | explain32 reuse / LXT | "
          "plain fwd / ort | plain explain32 / plain fwd | plain explain32 / LXT | explain64 / fwd | explain64 / LXT "
          "| others' CPU |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, rows in (("single-thread CPU time", data.get("cpu_main") or []),
                            (f"wall, {info['threads']} threads", data["main"])):
            for row in rows:
                t = row["times"]
                f, fp, lx = t.get("fwd"), t.get("fwd-plain"), row.get("lxt")
                w(f"| {label} | {row['layers']}, {row['batch']}, {row['seq']} | {ratio(f, t.get('ort'))} | "
                  f"{ratio(t.get('explain32'), f)} | {ratio(t.get('explain32'), lx)} | "
                  f"{ratio(t.get('explain32-reuse'), lx)} | {ratio(fp, t.get('ort'))} | "
                  f"{ratio(t.get('explain32-plain'), fp)} | {ratio(t.get('explain32-plain'), lx)} | "
                  f"{ratio(t.get('explain64'), f)} | {ratio(t.get('explain64'), lx)} | "
                  f"{others(*t.values(), lx)} |")
        w("")

    def busy_note(rows):
        v = [r["others_cpu"] for row in rows for r in list(row["times"].values()) + [row.get("lxt")]
             if r and r.get("others_cpu") is not None]
        if v and statistics.mean(v) > 0.2:
            w(f"**Caution:** other processes used {statistics.mean(v) * 100:.0f}% of the machine's CPU on "
              "average during these cells. Multi-threaded engines then stall at every parallel region "
              "waiting for a descheduled thread (torch's OpenMP worst, then OpenBLAS, then onnxruntime), so "
              "these wall-clock numbers and their ratios mostly measure the interference; the single-thread "
              "CPU-time tables are the ones to compare.\n")

    summary()
    if data.get("baseline"):
        baseline_section(w, data)

    def time_tables(rows, with_lxt=True, flops_name="GFLOP", ceiling=None):
        rows = [r for r in rows if any(ok(v) for v in r["times"].values())]
        if not rows:
            w("(nothing measured within the time budget)\n")
            return
        ceiling = ceiling or c
        w(f"| shape (L, b, s) | {flops_name} | ort ms | reflrp fwd ms | fwd-plain ms | explain32 ms | "
          "explain32-plain ms | explain64 ms | LXT fwd+bwd ms | RefEval ms | others' CPU |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            t = row["times"]
            w(f"| {row.get('layers', '—')}, {row['batch']}, {row['seq']} | {row['flops'] / 1e9:.2f} | "
              f"{ms(t.get('ort'))} | {ms(t.get('fwd'))} | {ms(t.get('fwd-plain'))} | {ms(t.get('explain32'))} | "
              f"{ms(t.get('explain32-plain'))} | {ms(t.get('explain64'))} | "
              f"{ms(row.get('lxt')) if with_lxt else '—'} | {ms(t.get('refeval'))} | "
              f"{others(*t.values(), row.get('lxt'))} |")
        w("")
        for key, title in (("median", "Ratios of the medians"),
                           ("min", "Ratios of the minimum times (less sensitive to the other processes)")):
            w(f"*{title}:*\n")
            w("| shape (L, b, s) | fwd / ort | explain32 / fwd | explain64 / fwd | explain32 / LXT | "
              "explain64 / LXT | plain fwd / ort | plain explain32 / plain fwd | plain explain32 / LXT | "
              "RefEval / fwd | GFLOP/s ort | GFLOP/s fwd | GFLOP/s plain fwd | fwd % of BLAS f32 |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for row in rows:
                t = row["times"]
                f, fp, lx = t.get("fwd"), t.get("fwd-plain"), row.get("lxt")
                pct = f"{row['flops'] / f[key] / 1e9 / ceiling['float32'] * 100:.0f}%" if ok(f) else "—"
                gf = (lambda r: f"{row['flops'] / r[key] / 1e9:.1f}" if ok(r) else "—")
                w(f"| {row.get('layers', '—')}, {row['batch']}, {row['seq']} | {ratio(f, t.get('ort'), key)} | "
                  f"{ratio(t.get('explain32'), f, key)} | {ratio(t.get('explain64'), f, key)} | "
                  f"{ratio(t.get('explain32'), lx, key)} | {ratio(t.get('explain64'), lx, key)} | "
                  f"{ratio(fp, t.get('ort'), key)} | {ratio(t.get('explain32-plain'), fp, key)} | "
                  f"{ratio(t.get('explain32-plain'), lx, key)} | {ratio(t.get('refeval'), f, key)} | "
                  f"{gf(t.get('ort'))} | {gf(f)} | {gf(fp)} | {pct} |")
            w("")

    if data["main"]:
        w(f"## Llama (hidden {HIDDEN}, GQA {HEADS}/{KV_HEADS}, {data['main'][0]['layers']} layers), wall clock, "
          f"{info['threads']} threads\n")
        w("### Time per call (median ms)\n")
        busy_note(data["main"])
        time_tables(data["main"])
        w("### Peak memory per call (MiB)\n")
        w("| shape (L, b, s) | ort | RefEval | reflrp fwd | fwd np peak | fwd-plain | explain32 | "
          "explain32 np peak | explain32-plain | explain64 | explain64 np peak | LXT |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in data["main"]:
            m = row.get("mem", {})
            w(f"| {row['layers']}, {row['batch']}, {row['seq']} | {mib(m.get('ort'))} | {mib(m.get('refeval'))} | "
              f"{mib(m.get('fwd'))} | {mib(m.get('fwd'), 'tracemalloc_mib')} | {mib(m.get('fwd-plain'))} | "
              f"{mib(m.get('explain32'))} | {mib(m.get('explain32'), 'tracemalloc_mib')} | "
              f"{mib(m.get('explain32-plain'))} | {mib(m.get('explain64'))} | "
              f"{mib(m.get('explain64'), 'tracemalloc_mib')} | {mib(row.get('lxt'))} |")
        w("")
        chk = [r for r in data["main"] if r.get("check")]
        if chk:
            w("### Sanity checks\n")
            for r in chk:
                ck = r["check"]
                w(f"- L={r['layers']}, b={r['batch']}, s={r['seq']}: reflrp fwd vs ort, max |diff| / max |ort| "
                  f"= {ck['fwd_vs_ort']:.1e}")
                for k in ("explain32_vs_lxt", "explain64_vs_lxt"):
                    if k in ck:
                        v = ck[k]
                        w(f"- {k.split('_')[0]} relevance at `inputs_embeds` vs LXT (float32): max |diff| / "
                          f"max |R_LXT| = {v['max_rel']:.1e}, correlation {v['corr']:.8f}, same targets: "
                          f"{v['same_target']}")
            w("")
    def scaling_table(rows):
        w("| layers | GFLOP | ort ms | reflrp fwd ms | explain32 ms | explain64 ms | LXT ms | fwd / ort | "
          "explain32 / fwd | explain32 / LXT | fwd ms / layer | explain32 ms / layer | others' CPU |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, row in enumerate(rows):
            t = row["times"]

            def per(k):
                if not i:
                    return "—"
                prev = rows[i - 1]
                a, b = t.get(k), prev["times"].get(k)
                if not ok(a) or not ok(b):
                    return "—"
                return f"{(a['median'] - b['median']) / (row['layers'] - prev['layers']) * 1e3:.1f}"
            w(f"| {row['layers']} | {row['flops'] / 1e9:.2f} | {ms(t.get('ort'))} | {ms(t.get('fwd'))} | "
              f"{ms(t.get('explain32'))} | {ms(t.get('explain64'))} | {ms(row.get('lxt'))} | "
              f"{ratio(t.get('fwd'), t.get('ort'))} | {ratio(t.get('explain32'), t.get('fwd'))} | "
              f"{ratio(t.get('explain32'), row.get('lxt'))} | {per('fwd')} | {per('explain32')} | "
              f"{others(*t.values(), row.get('lxt'))} |")
        w("\n(median ms; ms / layer: difference to the previous row over the layers added.)\n")

    for key, label in (("cpu_many", "single-threaded, timed by CPU time"),
                       ("many", f"wall clock, {info['threads']} threads")):
        if data.get(key):
            ceil = data.get("ceiling_1t", c) if key == "cpu_many" else c
            many_section(w, data[key], label, ceil, data.get("cpu_many", {}).get("mem") if key == "cpu_many" else None,
                         first=key == "cpu_many" or not data.get("cpu_many"))
    if data["scaling"]:
        w(f"## Scaling over layers (seq 128, batch 1), wall clock, {info['threads']} threads\n")
        busy_note(data["scaling"])
        scaling_table(data["scaling"])
    if data.get("cpu_main"):
        c1 = data.get("ceiling_1t", c)
        w("## Single-threaded, timed by CPU time\n")
        w("The same cells with **1 thread** in every engine (BLAS, onnxruntime intra-op, torch), each call "
          "timed by the calling thread's CPU time (`time.thread_time`; with one thread all work runs on the "
          "calling thread, torch's CPU backward included). Time slices taken by other processes do not count, "
          "so these ratios are the robust ones on a shared machine (cache and memory-bandwidth interference "
          f"still do). Single-thread BLAS ceiling: {c1['float32']:.0f} GFLOP/s float32, "
          f"{c1['float64']:.0f} GFLOP/s float64.\n")
        time_tables(data["cpu_main"], ceiling=c1)
        if data.get("cpu_scaling"):
            w("### Scaling over layers (seq 128, batch 1), single-threaded CPU time\n")
            scaling_table(data["cpu_scaling"])
    if data.get("minilm"):
        w("## all-MiniLM-L6-v2 (`.cache/minilm/minilm.onnx`: BertModel, 6 layers, hidden 384, 12 heads), "
          f"wall clock, {info['threads']} threads\n")
        busy_note(data["minilm"])
        time_tables(data["minilm"], with_lxt=False)
        if any(r.get("mem") for r in data["minilm"]):
            w("| shape (b, s) | peak MiB ort | reflrp fwd | explain32 | explain32 np peak |")
            w("|---|---:|---:|---:|---:|")
            for row in data["minilm"]:
                m = row.get("mem", {})
                if not m:
                    continue
                w(f"| {row['batch']}, {row['seq']} | {mib(m.get('ort'))} | {mib(m.get('fwd'))} | "
                  f"{mib(m.get('explain32'))} | {mib(m.get('explain32'), 'tracemalloc_mib')} |")
            w("")
        w("(no LXT column: it would need the pretrained weights in torch, see tools/make_lxt_goldens.py; "
          "L = — as the layer count is fixed.)\n")
    elif data.get("minilm_note"):
        w(f"## all-MiniLM-L6-v2\n\n{data['minilm_note']}\n")
    if data["zoo"]:
        w("## Tiny zoo models (per-call overhead)\n")
        w("`models/*.onnx` on the feeds of `models/<name>.ref.npz` (batch 2, seq 6, hidden 32): the arithmetic "
          "is negligible, so this is each engine's per-node dispatch cost. µs per call, median; reflrp in the "
          "model's own dtype (float32), explain in its default float64.\n")
        w("| model | nodes (run) | ort µs | reflrp fwd µs | fwd-plain µs | explain64 µs | RefEval µs | fwd / ort | "
          "fwd-plain / ort | RefEval / fwd | fwd µs per node run |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def us(r):
            return "error" if not ok(r) else f"{r['median'] * 1e6:.0f}"
        for row in data["zoo"]:
            t = row["times"]
            per_node = f"{t['fwd']['median'] * 1e6 / max(row['steps'], 1):.1f}" if ok(t.get("fwd")) else "—"
            w(f"| {row['name']} | {row['nodes']} ({row['steps']}) | {us(t.get('ort'))} | {us(t.get('fwd'))} | "
              f"{us(t.get('fwd-plain'))} | {us(t.get('explain64'))} | {us(t.get('refeval'))} | "
              f"{ratio(t.get('fwd'), t.get('ort'))} | {ratio(t.get('fwd-plain'), t.get('ort'))} | "
              f"{ratio(t.get('refeval'), t.get('fwd'))} | {per_node} |")
        errs = [(row["name"], k, v["error"]) for row in data["zoo"] for k, v in row["times"].items() if "error" in v]
        if errs:
            w("")
            for n, k, e in errs:
                w(f"- {n} / {k}: {e}")
        w("\n(nodes: graph nodes; run: nodes left after reflrp folds the input-independent ones.)\n")
    if data.get("profile"):
        w(data["profile"])
    w("## Raw data\n")
    w("<details><summary>JSON</summary>\n\n```json")
    w(json.dumps({k: v for k, v in data.items() if k not in ("profile", "baseline")}, indent=1, default=str))
    w("```\n</details>\n")
    path.write_text("\n".join(L) + "\n")


def many_section(w, m: dict, label: str, ceiling: dict, mem: dict | None, first: bool) -> None:
    """The many-targets tables (see :func:`many_targets`)."""
    L = m.get("layers", 4)
    if first:
        w(f"## Many targets in one pass (L={L}, batch 1, seq 128)\n")
        w("`reflrp.explain(model, feeds, dtype=\"float32\", targets=[c_1, ..., c_K])` with the top-K next-token "
          "classes at the last position (K seeds, each the target logit's value, stacked on a leading target "
          "axis: one forward and one relevance pass) against K single `explain(..., target=c_i)` calls and "
          "against LXT 2.1 running one forward and K backward passes over its graph (`retain_graph=True`, "
          "`x * grad` after each, same weights, in its worker). *every-position*: `targets=[\"every-position\"]`, "
          "one target per position (its argmax token; K = 128); the single calls and LXT get the same seeds. "
          "*keep=()*: the one call keeping only the input's relevance (LXT keeps only the input gradient). "
          "*relevance pass*: the time inside the one call's relevance pass (`propagate`, wrapped), forward "
          "excluded. *GFLOP*: K × the matrix FLOPs of one target's relevance pass, "
          f"{relevance_flops(L, 1, 128) / 1e9:.3f} GFLOP at this shape (`relevance_flops` in tools/bench.py: "
          "each product of the pass is the adjoint of a forward product, `G W^T` for a weight layer on the rows "
          "where G is non-zero, both operands' adjoints for Q·Kᵀ and A·V; the seed stays one row through the "
          "lm_head and the last layer's MLP, o_proj and q_proj, k_proj / v_proj and every earlier layer are "
          f"dense; the forward is {llama_flops(L, 1, 128) / 1e9:.3f} GFLOP); GFLOP/s against the BLAS ceiling "
          "measured in this run. Ratios of medians.\n")
    w(f"### {label}\n")
    w("| targets | K | one call ms | one call, keep=() ms | relevance pass ms | K single calls ms | "
      "LXT fwd + K bwd ms | one / single call | one / K singles | one / LXT | GFLOP | pass GFLOP/s | "
      "% of BLAS f32 | others' CPU |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in m["cases"].items():
        one, singles, lx, ps = row.get("one"), row.get("singles"), row.get("lxt"), row.get("pass")
        per_single = {"median": singles["median"] / row["K"]} if ok(singles) else None
        gf = row["flops"] / ps["median"] / 1e9 if ps else None
        pct = f"{gf / ceiling['float32'] * 100:.0f}%" if gf else "—"
        w(f"| {name} | {row['K']} | {ms(one)} | {ms(row.get('one_keep'))} | {ms(ps)} | {ms(singles)} | {ms(lx)} | "
          f"{ratio(one, per_single)} | {ratio(one, singles)} | {ratio(one, lx)} | {row['flops'] / 1e9:.2f} | "
          f"{f'{gf:.1f}' if gf else '—'} | {pct} | "
          f"{others(one, row.get('one_keep'), singles, lx)} |")
    w("")
    checks = []
    if "check_one_vs_singles" in m:
        checks.append(f"K = 4 in one call vs 4 single calls, relevance at `inputs_embeds`: max |diff| / max |R| = "
                      f"{m['check_one_vs_singles']:.1e} (float32)")
    if "check_vs_lxt" in m:
        checks.append(f"K = 4 in one call vs LXT's 4 backward passes: max |diff| / max |R_LXT| = {m['check_vs_lxt']:.1e}")
    for ck in checks:
        w(f"- {ck}")
    if checks:
        w("")
    if mem:
        w("Peak memory per call (MiB; measured as in the main table: peak RSS above the RSS before the call, "
          "glibc pinned to mmap; *np peak* = tracemalloc's peak). A single call's is the main table's "
          "explain32 at (4, 1, 128).\n")
        w("| targets | K | one call | one call np peak | keep=() | keep=() np peak | LXT fwd + K bwd |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for name, row in m["cases"].items():
            mm = mem.get(name, {})
            w(f"| {name} | {row['K']} | {mib(mm.get('one'))} | {mib(mm.get('one'), 'tracemalloc_mib')} | "
              f"{mib(mm.get('one_keep'))} | {mib(mm.get('one_keep'), 'tracemalloc_mib')} | {mib(row.get('lxt'))} |")
        w("")


def load_baseline(spec: str) -> dict:
    """The raw JSON and the reflrp commit of an earlier BENCHMARKS.md: a git revision or a file."""
    import re
    path = Path(spec)
    if path.exists():
        text = path.read_text()
    else:
        text = subprocess.run(["git", "show", f"{spec}:BENCHMARKS.md"], capture_output=True, text=True, check=True,
                              cwd=str(ROOT)).stdout
    raw = text[text.index("```json\n") + 8:text.index("\n```\n</details>")]
    commit = re.search(r"reflrp at commit (\S+)", text)
    return {"source": spec, "commit": commit.group(1) if commit else "?", "data": json.loads(raw)}


def baseline_section(w, data: dict) -> None:
    """This run's summary ratios next to those of an earlier report (issue 10's bar: ≤ 1.10 × old)."""
    base = data["baseline"]
    old = base["data"]
    w(f"## Against the earlier benchmarks (BENCHMARKS.md at `{base['source']}`, reflrp {base['commit']})\n")
    w("The old numbers were measured in an earlier run on this machine (same script, same model and shapes, "
      "old engine); the machine is shared and its speed drifts by 10-20 % between runs, so compare the "
      "single-thread CPU-time rows first. Ratios of medians; *new / old* ≤ 1.10 is issue 10's bar.\n")
    w("*explain32 reuse* is the same call under the opt-in allocator policy \"reuse\" (freed heap kept between "
      "calls, what the old engine did for the whole process without being asked); *new* runs under the "
      "default \"call\" policy, which hands the calls' memory back 1 s after the last one returns.\n")
    w("| pass | shape (L, b, s) | fwd / ort old | new | new / old | explain32 / LXT old | new | new / old | "
      "explain32 reuse / LXT new | reuse new / old | plain fwd / ort new | plain explain32 / LXT new |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def r(row, a, b):
        t = row["times"]
        x, y = t.get(a), (row.get("lxt") if b == "lxt" else t.get(b))
        return x["median"] / y["median"] if ok(x) and ok(y) else None

    def f(v):
        return f"{v:.2f}" if v is not None else "—"
    for key, label in (("cpu_main", "single-thread CPU time"), ("main", "wall, all threads")):
        before = {(x["layers"], x["batch"], x["seq"]): x for x in old.get(key) or []}
        for row in data.get(key) or []:
            prev = before.get((row["layers"], row["batch"], row["seq"]))
            if prev is None:
                continue
            fo, fn = r(prev, "fwd", "ort"), r(row, "fwd", "ort")
            eo, en = r(prev, "explain32", "lxt"), r(row, "explain32", "lxt")
            er = r(row, "explain32-reuse", "lxt")
            w(f"| {label} | {row['layers']}, {row['batch']}, {row['seq']} | {f(fo)} | {f(fn)} | "
              f"{f(fn / fo) if fo and fn else '—'} | {f(eo)} | {f(en)} | {f(en / eo) if eo and en else '—'} | "
              f"{f(er)} | {f(er / eo) if eo and er else '—'} | "
              f"{f(r(row, 'fwd-plain', 'ort'))} | {f(r(row, 'explain32-plain', 'lxt'))} |")
    w("")


# ------------------------------------------------------------------ profile

def _cprofile(title: str, fn, top: int, clock) -> list[str]:
    """cProfile of 3 calls of ``fn`` (after 2 warm-up calls), top ``top`` by cumulative and own time."""
    import cProfile
    import io
    import pstats
    fn()
    fn()
    pr = cProfile.Profile(clock)
    pr.enable()
    for _ in range(3):
        fn()
    pr.disable()
    out = []
    for sort in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(pr, stream=s).strip_dirs().sort_stats(sort).print_stats(top)
        text = s.getvalue()
        body = text[text.find("ncalls"):] if "ncalls" in text else text
        out.append(f"### {title}: top {top} by {sort} (3 calls)\n")
        out.append("```")
        out.extend(ln.strip() for ln in text.splitlines() if "function calls" in ln)
        out.append(body.rstrip())
        out.append("```\n")
    return out


def _per_op(model, feeds: dict, dt: str, shape: str, clock) -> list[str]:
    """CPU time per op type of the (fast) forward, rerunning the prepared steps one by one the way
    ``interpreter.execute`` does (shape cache, each tensor freed after its last use)."""
    from reflrp.interpreter import check_feeds
    prep = model.prepared(dt, np, True)
    model.run(feeds, dtype=dt)  # fills the shape cache
    per_op: dict[str, list[float]] = {}
    outs = set(model.graph.output_names)
    steps_run = 0
    for _ in range(3):
        env = dict(prep.constants)
        checked = check_feeds(model.graph, feeds, prep.policy, np)
        env.update(checked)
        order, cached = range(len(prep.steps)), frozenset()
        if prep.shape_cache is not None:
            order, cached = prep.shape_cache.restore(env, checked)
        steps_run = len(order)
        for i in order:
            st = prep.steps[i]
            args = [env[n] if n else None for n in st.inputs]
            t0 = clock()
            res = st.fn(np, *args, **st.attrs)
            dtm = clock() - t0
            res = res if isinstance(res, tuple) else (res,)
            env.update((n, v) for n, v in zip(st.outputs, res) if n)
            del args, res
            for n in prep.frees[i]:
                if n not in outs and n not in cached:
                    env.pop(n, None)
            per_op.setdefault(st.node.op_type, []).append(dtm)
    tot = sum(map(sum, per_op.values()))
    t0 = clock()
    for _ in range(3):
        model.run(feeds, dtype=dt)
    whole = (clock() - t0) / 3
    out = [f"### Forward {dt} at {shape}: CPU time per op type (mean of 3 runs)\n",
           f"`model.run` {whole * 1e3:.1f} ms; {steps_run} of {len(prep.steps)} steps run (the rest come from "
           f"the shape cache), {tot / 3 * 1e3:.1f} ms inside kernels.\n",
           "| op | steps | ms | % |", "|---|---:|---:|---:|"]
    for op, ts in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))[:20]:
        out.append(f"| {op} | {len(ts) // 3} | {sum(ts) / 3 * 1e3:.2f} | {sum(ts) / tot * 100:.1f} |")
    out.append("")
    return out


def _per_rule(model, feeds: dict, dt: str, shape: str, clock) -> list[str]:
    """CPU time per rule of the relevance pass (the rule registry and the pass wrapped for the
    duration), and explain split into forward, rules, the rest of the pass, the rest of the call."""
    import reflrp
    from reflrp import rules as rules_mod
    from reflrp.interpreter import check_feeds, execute
    explain_mod = sys.modules["reflrp.explain"]
    per_rule: dict[tuple, list[float]] = {}
    passes: list[float] = []
    saved, saved_propagate = dict(rules_mod.RULES), explain_mod.propagate

    def wrap(name, fn):
        def timed_rule(ctx, *a):
            t0 = clock()
            r = fn(ctx, *a)
            per_rule.setdefault((name, ctx.node.op_type), []).append(clock() - t0)
            return r
        return timed_rule

    def timed_propagate(*a, **k):
        t0 = clock()
        saved_propagate(*a, **k)
        passes.append(clock() - t0)
    try:
        for k, fn in saved.items():
            rules_mod.RULES[k] = wrap(k, fn)
        explain_mod.propagate = timed_propagate
        reflrp.explain(model, feeds, dtype=dt)
        per_rule.clear()
        passes.clear()
        t0 = clock()
        for _ in range(3):
            reflrp.explain(model, feeds, dtype=dt)
        whole = (clock() - t0) / 3
    finally:
        rules_mod.RULES.clear()
        rules_mod.RULES.update(saved)
        explain_mod.propagate = saved_propagate
    prep = model.prepared(dt, np, True)
    t0 = clock()
    for _ in range(3):
        execute(prep, model.graph, check_feeds(model.graph, feeds, prep.policy, np), retain=True)
    fwd_keep = (clock() - t0) / 3
    t0 = clock()
    for _ in range(3):
        model.run(feeds, dtype="float32")
    fwd32 = (clock() - t0) / 3
    tot = sum(map(sum, per_rule.values()))
    prop = sum(passes) / 3
    out = [f"### Explain {dt} at {shape}: CPU time per rule (mean of 3 runs)\n",
           f"explain {whole * 1e3:.1f} ms (= {whole / fwd32:.1f} × the float32 forward's {fwd32 * 1e3:.1f} ms) = "
           f"forward keeping every tensor {fwd_keep * 1e3:.1f} ms + relevance pass {prop * 1e3:.1f} ms (rules "
           f"{tot / 3 * 1e3:.1f} ms, the rest of the pass {(prop - tot / 3) * 1e3:.1f} ms: per-piece totals, "
           f"the ledger's books, fan-out sums, contexts) + the rest of the call (feeds, plan, seed, "
           f"reports) {(whole - fwd_keep - prop) * 1e3:.1f} ms.\n",
           "| rule | op | nodes | ms | % of rules |", "|---|---|---:|---:|---:|"]
    for (rname, op), ts in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        out.append(f"| {rname} | {op} | {len(ts) // 3} | {sum(ts) / 3 * 1e3:.2f} | {sum(ts) / tot * 100:.1f} |")
    out.append("")
    return out


def profile_section(path: Path, layers: int, top: int = 25) -> str:
    """cProfile of reflrp forward and explain at seq 128 (and explain float32 at seq 512), batch 1,
    plus time per op type and per rule.

    Run single-threaded (numpy's BLAS limited to 1 thread by the caller) and timed by the main
    thread's CPU time, so that other processes on a shared machine do not distort it."""
    import reflrp
    clock = time.thread_time
    model = reflrp.load(path)
    out = [f"## Profile (reflrp with the speed layer, L={layers}, batch 1, seq 128 and 512)\n",
           "Single-threaded (BLAS 1 thread), timed by the thread's CPU time (`time.thread_time`), so other "
           "processes on the machine do not distort it. cProfile's own overhead inflates the many small "
           "calls; the per-op and per-rule tables below time whole kernels / rules without cProfile.\n"]
    with np.errstate(all="ignore"):
        for seq, dts, profiled in ((128, ("float32", "float64"), ("forward float32", "explain float32",
                                                                   "explain float64")),
                                   (512, ("float32",), ("explain float32",))):
            feeds = {"inputs_embeds": embeds(1, seq)}
            shape = f"(1, {seq})"
            for title in profiled:
                dt = title.split()[1]
                fn = ((lambda: model.run(feeds, dtype=dt)) if title.startswith("forward") else
                      (lambda: reflrp.explain(model, feeds, dtype=dt)))
                out += _cprofile(f"{title} at {shape}", fn, top, clock)
            for dt in dts:
                out += _per_op(model, feeds, dt, shape, clock)
            for dt in dts:
                out += _per_rule(model, feeds, dt, shape, clock)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main

def relevance_check(eng: Engines, feeds: dict, lxt_file: Path) -> dict:
    out = {}
    with np.load(lxt_file) as z:
        R_l, t_l = z["relevance"].astype(np.float64), z["target"]
    with np.errstate(all="ignore"):
        for dt in ("float32", "float64"):
            a = eng.reflrp.explain(eng.model, feeds, dtype=dt)
            R = np.asarray(a.at_wrt["inputs_embeds"], dtype=np.float64)
            out[f"explain{dt[-2:]}_vs_lxt"] = {
                "max_rel": float(np.abs(R - R_l).max() / max(np.abs(R_l).max(), 1e-30)),
                "corr": float(np.corrcoef(R.ravel(), R_l.ravel())[0, 1]),
                "same_target": bool(np.array_equal(np.asarray(a.target).ravel(), t_l.ravel()))}
    return out


class PassTimer:
    """Times the relevance pass inside ``explain`` (``reflrp.explain``'s ``propagate``, wrapped while
    the block runs) by CLOCK; ``times`` lists one entry per pass."""

    def __enter__(self):
        self.module = sys.modules["reflrp.explain"]
        self.saved, self.times = self.module.propagate, []
        clock, saved = CLOCKS[CLOCK], self.saved

        def timed_propagate(*a, **k):
            t0 = clock()
            saved(*a, **k)
            self.times.append(clock() - t0)
        self.module.propagate = timed_propagate
        return self

    def __exit__(self, *exc):
        self.module.propagate = self.saved


def target_cases(model, feeds: dict, ks, every: bool) -> dict:
    """name -> (K, targets for one call, the K single targets, LXT's (positions, classes)): the top-K
    next-token classes at the last position (float32 logits), and "every-position" (each position's
    argmax, as a seed array for the single calls: the logit's value there, LXT's seed)."""
    logits = model.run(feeds, dtype="float32")["logits"]
    seq = logits.shape[1]
    top = [int(c) for c in np.argsort(-logits[0, -1], kind="stable")]
    cases = {f"K={k}": (k, top[:k], top[:k], ([seq - 1] * k, top[:k])) for k in ks}
    if every:
        best = logits[0].argmax(-1)
        singles = []
        for p in range(seq):
            seed = np.zeros_like(logits)
            seed[0, p, best[p]] = logits[0, p, best[p]]
            singles.append(seed)
        cases["every-position"] = (seq, ["every-position"], singles, (list(range(seq)), [int(c) for c in best]))
    return cases


def many_targets(eng: Engines, layers: int, cases: dict, args, deadline: Deadline, lxt_spec: dict | None) -> dict:
    """One ``explain(..., targets=[...])`` call (default and ``keep=()``) against K single calls, per
    case, timed by CLOCK; the relevance pass timed inside the one call; LXT's forward + K backward
    passes in a worker (``lxt_spec``: its spec without the cases, or None)."""
    r = eng.reflrp
    feeds = {"inputs_embeds": embeds(1, 128)}
    out = {"cases": {}}
    flops1 = relevance_flops(layers, 1, 128)
    with np.errstate(all="ignore"):
        for name, (k, many, singles, _) in cases.items():
            row = {"K": k, "flops": k * flops1}
            calls = {"one": lambda: r.explain(eng.model, feeds, dtype="float32", targets=many),
                     "one_keep": lambda: r.explain(eng.model, feeds, dtype="float32", targets=many, keep=()),
                     "singles": lambda: [r.explain(eng.model, feeds, dtype="float32", target=t) for t in singles]}
            for key, fn in calls.items():
                est = eng.cost.get(("many", key), 0.0) * k
                if not deadline.fits(est + (args.budget if est * 3 < args.budget else est), reserve=60):
                    row[key] = dict(SKIP)
                    log(f"    {name:14s} {key:8s} skipped (time budget)")
                    continue
                time.sleep(0.2)
                waited = IDLE()
                with PassTimer() as pt:
                    row[key] = timed(fn, args.reps, args.budget)
                row[key]["idle_wait_s"] = round(waited, 1)
                eng.cost[("many", key)] = row[key]["median_wall"] / k
                if key == "one" and pt.times:
                    n = row[key]["n"]
                    row["pass"] = {"median": statistics.median(pt.times[-n:]), "min": min(pt.times[-n:]), "n": n}
                log(f"    {name:14s} {key:8s} {_fmt_res(row[key])}")
            out["cases"][name] = row
        if "K=4" in cases:  # K targets in one pass = K single passes (float32 rounding apart)
            _, many, singles, _ = cases["K=4"]
            one = np.asarray(r.explain(eng.model, feeds, dtype="float32", targets=many).at_wrt["inputs_embeds"])
            each = np.stack([np.asarray(r.explain(eng.model, feeds, dtype="float32", target=t).at_wrt["inputs_embeds"])
                             for t in singles])
            out["check_one_vs_singles"] = float(np.abs(one - each).max() / np.abs(each).max())
            out["relevance_K4"] = one[:, 0]
    if lxt_spec is not None:
        todo = {n: c[3] for n, c in cases.items() if ok(out["cases"][n].get("one"))}
        if todo:
            if CLOCK == "wall":
                IDLE()
            got = run_worker("lxt_many", dict(lxt_spec, cases=todo))
            for n in todo:
                out["cases"][n]["lxt"] = got.get(n) or {"error": got.get("error", "missing")}
                log(f"    {n:14s} lxt      {_fmt_res(out['cases'][n]['lxt'])}")
            save = lxt_spec.get("save")
            if save and Path(save).exists() and "relevance_K4" in out:
                R_l = np.load(save).astype(np.float64)
                out["check_vs_lxt"] = float(np.abs(out["relevance_K4"] - R_l).max() / np.abs(R_l).max())
    out.pop("relevance_K4", None)
    return out


def many_targets_memory(eng: Engines, cases: dict, est: dict, deadline: Deadline) -> dict:
    """Peak RSS of one ``targets=`` call per case, default and ``keep=()`` (after pin_for_memory)."""
    r = eng.reflrp
    feeds = {"inputs_embeds": embeds(1, 128)}
    out = {}
    with np.errstate(all="ignore"):
        for name, (k, many, _, _) in cases.items():
            for key, extra in (("one", {}), ("one_keep", {"keep": ()})):
                e = est.get(name, {}).get(key)
                if not ok(e) or not deadline.fits(2.5 * e["median_wall"] + 1, reserve=30):
                    continue
                got = measure_memory(lambda: r.explain(eng.model, feeds, dtype="float32", targets=many, **extra),
                                     numpy_peak=True)
                out.setdefault(name, {})[key] = got
                log(f"    mem {name:14s} {key:8s} {got['peak_rss_mib']:.0f} MiB")
    return out


def minilm_flops(batch: int, seq: int) -> float:
    """Matmul FLOPs of all-MiniLM-L6-v2's encoder (6 layers, hidden 384, 12 heads, intermediate 1536)."""
    h, inter, heads, layers = 384, 1536, 12, 6
    tokens = batch * seq
    linear = 2 * tokens * layers * (4 * h * h + 2 * h * inter)
    return float(linear + layers * 4 * batch * heads * seq * seq * (h // heads))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only seq 128, batch 1 (and the main model)")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16], help="scaling table layer counts")
    ap.add_argument("--main-layers", type=int, default=4, help="layers of the main table's model")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=7, help="max timed repetitions per cell")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per cell (soft)")
    ap.add_argument("--many-k", type=int, nargs="*", default=[1, 4, 16, 64],
                    help="target counts of the many-targets section (plus every-position)")
    ap.add_argument("--no-many", action="store_true", help="skip the many-targets section")
    ap.add_argument("--baseline", default=None,
                    help="git revision (or file) of an earlier BENCHMARKS.md whose summary ratios to compare with")
    ap.add_argument("--max-minutes", type=float, default=16.0,
                    help="overall time budget; optional cells that would not fit are skipped")
    ap.add_argument("--idle-wait", type=float, default=8.0,
                    help="before each cell wait up to this many seconds for other processes to leave "
                         "the CPU (< 25%% busy over 0.5 s); at most a sixth of --max-minutes in all")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--no-cpu-pass", dest="cpu_pass", action="store_false",
                    help="skip the second, single-threaded pass timed by CPU time")
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--profile", action="store_true", help="append a cProfile section (L=main, b=1, s=128)")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, spec = args.worker
        print(json.dumps(WORKERS[kind](json.loads(spec))), flush=True)
        return 0

    global IDLE, CLOCK
    t_start = time.perf_counter()
    deadline = Deadline(args.max_minutes)
    IDLE = IdleWait(args.idle_wait, 60 * args.max_minutes / 6)
    run_mon = CpuMonitor()
    if args.quick:
        args.seq, args.batch, args.layers = [128], [1], [args.main_layers]
        args.many_k = [k for k in args.many_k if k <= 16]
    for k in BLAS_ENV:
        if k in os.environ:
            log(f"[warn] {k}={os.environ[k]} is set; benchmark with `env -u {k} ...`")
    threads = args.threads
    limiter = set_blas_threads(threads)  # noqa: F841  (held for the whole run)
    info = machine_info(threads)
    info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    log(f"[machine] {info['cpu']}, {info['cores']} cores, threads {threads}, blas {info['blas']}, "
        f"load {info['loadavg_start']}")
    argv_used = sys.argv[1:] if argv is None else list(argv)
    data = {"command": "python tools/bench.py " + " ".join(shlex.quote(a) for a in argv_used),
            "main": [], "scaling": [], "zoo": [], "minilm": [], "cpu_main": [], "cpu_scaling": []}
    if args.baseline:
        data["baseline"] = load_baseline(args.baseline)
    ceil0 = blas_ceiling()
    log(f"[blas] {ceil0}")

    layer_set = sorted(set(args.layers) | {args.main_layers})
    paths = {L: model_path(L, threads) for L in layer_set}
    data["exports"] = {L: {"file": str(p[0].relative_to(ROOT)), **p[2]} for L, p in paths.items()}
    shapes = sorted(((b, s) for s in args.seq for b in args.batch), key=lambda bs: llama_flops(4, *bs))
    lxt_cost: dict[tuple, float] = {}  # (clock, layers) -> wall seconds per FLOP
    L = args.main_layers

    def lxt(Lx, b, s, nthreads, save=None, mem=False):
        flops = llama_flops(Lx, b, s)
        c = lxt_cost.get((CLOCK, Lx)) or max((v for (ck, _), v in lxt_cost.items() if ck == CLOCK), default=None)
        est = 15 + (1.3 * c * flops * (3 if mem else 2) if c else 0)
        if not deadline.fits(est):
            log("    lxt        skipped (time budget)")
            return dict(SKIP)
        if CLOCK == "wall":
            IDLE()
        r = run_worker("lxt", {"threads": nthreads, "reps": args.reps, "budget": args.budget, "clock": CLOCK,
                               "layers": Lx, "batch": b, "seq": s, "pt": str(paths[Lx][1]),
                               "save": str(save) if save else None, "mem": mem})
        if "median" in r:
            lxt_cost[(CLOCK, Lx)] = r["median_wall"] / flops
        log(f"    {'lxt':10s} {_fmt_res(r)}")
        return r

    def plain(b, s, nthreads, eng):
        """fwd-plain and explain32-plain at (b, s) in a worker (see worker_plain)."""
        flops = llama_flops(L, b, s)
        est = 10 + sum(eng.estimate(n, flops, args.reps, args.budget) for n in ("fwd", "explain32"))
        if not deadline.fits(est, reserve=60):
            log("    plain      skipped (time budget)")
            return {n: dict(SKIP) for n in PLAIN}
        r = run_worker("plain", {"threads": nthreads, "reps": args.reps, "budget": args.budget, "clock": CLOCK,
                                 "onnx": str(paths[L][0]), "batch": b, "seq": s, "idle_wait": args.idle_wait})
        if "error" in r:
            return {n: {"error": r["error"]} for n in PLAIN}
        for n in PLAIN:
            r[n]["others_cpu"] = max(r[n].get("others_cpu") or 0, r.get("worker_others_cpu") or 0)
            eng.cost[n] = r[n]["median_wall"] / flops
            log(f"    {n:10s} {_fmt_res(r[n])} (worker)")
        return {n: r[n] for n in PLAIN}

    def main_pass(nthreads, main_rows, first_pass):
        """The main table with ``nthreads`` threads, timed by CLOCK."""
        eng = Engines(paths[L][0], nthreads, HIDDEN)
        eng.prime(FAST + ("refeval",) if first_pass else FAST)
        rows = {}
        for b, s in shapes:
            log(f"[main {CLOCK}, {nthreads} thr] L={L} batch={b} seq={s}  ({deadline.left() / 60:.1f} min left)")
            feeds = {"inputs_embeds": embeds(b, s)}
            row = {"layers": L, "batch": b, "seq": s, "flops": llama_flops(L, b, s)}
            first = (b, s) == shapes[0]
            which = (FAST + ("refeval",) if first and first_pass else FAST) + ("explain32-reuse",)
            row["times"] = eng.measure(feeds, row["flops"], args.reps, args.budget, deadline, which, reserve=60)
            row["times"].update(plain(b, s, nthreads, eng))
            save = CACHE / f"lxt_rel_L{L}_b{b}_s{s}.npz" if first and first_pass else None
            row["lxt"] = lxt(L, b, s, nthreads, save=save, mem=first_pass and not args.no_mem)
            if save:
                row["check"] = eng.check(feeds)
                if save.exists():
                    row["check"].update(relevance_check(eng, feeds, save))
                log(f"    check {row['check']}")
            main_rows.append(row)
            rows[(b, s)] = row
        return eng, rows

    def scaling_pass(nthreads, eng, rows, scaling_rows):
        """The scaling table (seq 128, batch 1) with ``nthreads`` threads, timed by CLOCK."""
        if args.quick:
            return
        for Ls in sorted(set(args.layers)):
            prev = rows.get((1, 128)) if Ls == L else None
            if prev is not None:
                scaling_rows.append({k: prev[k] for k in ("layers", "batch", "seq", "flops", "times", "lxt")})
                continue
            log(f"[scaling {CLOCK}, {nthreads} thr] L={Ls}  ({deadline.left() / 60:.1f} min left)")
            e = Engines(paths[Ls][0], nthreads, HIDDEN)
            e.cost = {k: v * 1.1 for k, v in eng.cost.items()}
            e.prime(FAST)
            feeds = {"inputs_embeds": embeds(1, 128)}
            row = {"layers": Ls, "batch": 1, "seq": 128, "flops": llama_flops(Ls, 1, 128)}
            row["times"] = e.measure(feeds, row["flops"], args.reps, args.budget, deadline, FAST)
            row["lxt"] = lxt(Ls, 1, 128, nthreads)
            scaling_rows.append(row)
            del e
        scaling_rows.sort(key=lambda r: r["layers"])

    def many_pass(nthreads, eng, ks, every, key, lxt_extra):
        """The many-targets section with ``nthreads`` threads, timed by CLOCK."""
        if args.no_many or not ks:
            return
        log(f"[many targets {CLOCK}, {nthreads} thr] L={L} K={list(ks)}{' + every-position' if every else ''}  "
            f"({deadline.left() / 60:.1f} min left)")
        cases = target_cases(eng.model, {"inputs_embeds": embeds(1, 128)}, ks, every)
        spec = {"threads": nthreads, "reps": args.reps, "budget": args.budget, "clock": CLOCK, "layers": L,
                "seq": 128, "pt": str(paths[L][1]), "idle_wait": args.idle_wait, **lxt_extra}
        data[key] = many_targets(eng, L, cases, args, deadline, spec)
        data[key].update(threads=nthreads, layers=L)
        many_cases[key] = cases

    many_cases: dict = {}

    # 1. main table, wall clock, all threads; K = 16 targets
    eng, rows = main_pass(threads, data["main"], True)
    many_pass(threads, eng, [k for k in args.many_k if k == 16][:1], False, "many", {})

    # 2. the same single-threaded, timed by the thread's CPU time (robust to other processes); many targets
    cpu_rows = {}
    if args.cpu_pass:
        CLOCK = "cpu"
        with set_blas_threads(1):
            data["ceiling_1t"] = blas_ceiling()
            eng1, cpu_rows = main_pass(1, data["cpu_main"], False)
            many_pass(1, eng1, args.many_k, True, "cpu_many",
                      {"mem": not args.no_mem, "save": str(CACHE / f"lxt_many_L{L}.npy"), "save_case": "K=4"})
            scaling_pass(1, eng1, cpu_rows, data["cpu_scaling"])
            del eng1
        CLOCK = "wall"

    # 3. scaling table, wall clock
    scaling_pass(threads, eng, rows, data["scaling"])

    # 4. zoo: per-call overhead
    if not args.no_zoo:
        log(f"[zoo]  ({deadline.left() / 60:.1f} min left)")
        data["zoo"] = zoo_suite(threads, deadline)

    # 5. profile (single-threaded, CPU time of the main thread)
    if args.profile and deadline.fits(60):
        log(f"[profile]  ({deadline.left() / 60:.1f} min left)")
        with set_blas_threads(1):
            try:
                data["profile"] = profile_section(paths[L][0], L)
            except Exception as exc:  # a report without the profile beats no report
                data["profile"] = f"## Profile\n\nfailed: {type(exc).__name__}: {exc}\n"

    # 6. MiniLM at the smallest shape
    me = None
    if MINILM.exists():
        me = Engines(MINILM, threads, 384)
        if deadline.fits(40):
            me.prime(FAST + ("refeval",))
            b, s = shapes[0]
            log(f"[minilm] batch={b} seq={s}  ({deadline.left() / 60:.1f} min left)")
            data["minilm"].append({"batch": b, "seq": s, "flops": minilm_flops(b, s), "times": me.measure(
                {"inputs_embeds": embeds(b, s, 384)}, minilm_flops(b, s), args.reps, args.budget, deadline,
                FAST + ("refeval",))})
    else:
        data["minilm_note"] = ("not run: `.cache/minilm/minilm.onnx` is missing (make it with "
                               "`python tools/export_models.py --minilm`).")

    # 7. peak memory: single-threaded (faster on a busy machine; memory does not depend on it), with
    #    glibc pinned to mmap and reflrp's allocator policy "system"; afterwards the policy is restored
    ceil1 = blas_ceiling()
    if not args.no_mem:
        policy = pin_for_memory()
        data["malloc_pinned"] = True
        with set_blas_threads(1):
            mem_eng = Engines(paths[L][0], 1, HIDDEN)
            mem_eng.prime(ENGINE_NAMES[:-1])
            for b, s in shapes:
                log(f"[memory] batch={b} seq={s}  ({deadline.left() / 60:.1f} min left)")
                est = dict(rows[(b, s)]["times"])
                est.update({k: v for k, v in cpu_rows.get((b, s), {}).get("times", {}).items() if ok(v)})
                rows[(b, s)]["mem"] = mem_eng.memory({"inputs_embeds": embeds(b, s)}, ENGINE_NAMES, est, deadline)
            key = "cpu_many" if "cpu_many" in many_cases else "many"  # memory does not depend on threads
            if key in many_cases:
                log(f"[memory] many targets ({key})  ({deadline.left() / 60:.1f} min left)")
                data[key]["mem"] = many_targets_memory(mem_eng, many_cases[key], data[key]["cases"], deadline)
            del mem_eng
            if me is not None and data["minilm"]:
                me1 = Engines(MINILM, 1, 384)
                me1.prime(("ort", "fwd", "explain32"))
                for row in data["minilm"]:
                    log(f"[memory] minilm batch={row['batch']} seq={row['seq']}")
                    row["mem"] = me1.memory({"inputs_embeds": embeds(row["batch"], row["seq"], 384)},
                                            ("ort", "fwd", "explain32"), row["times"], deadline)
                del me1
        unpin_malloc(policy)

    # 8. ReferenceEvaluator at the other shapes (it is slow)
    for b, s in shapes[1:]:
        log(f"[refeval] batch={b} seq={s}  ({deadline.left() / 60:.1f} min left)")
        rows[(b, s)]["times"].update(eng.measure({"inputs_embeds": embeds(b, s)}, rows[(b, s)]["flops"],
                                                 args.reps, args.budget, deadline, ("refeval",)))

    # 9. MiniLM at the other shapes (seq <= 512), if time is left
    if me is not None and data["minilm"]:
        for b, s in shapes[1:]:
            if s > 512:
                continue
            log(f"[minilm] batch={b} seq={s}  ({deadline.left() / 60:.1f} min left)")
            fl = minilm_flops(b, s)
            data["minilm"].append({"batch": b, "seq": s, "flops": fl, "times": me.measure(
                {"inputs_embeds": embeds(b, s, 384)}, fl, args.reps, args.budget, deadline, FAST)})
        # their peak memory too (no timings follow, so glibc may stay pinned)
        todo = [r for r in data["minilm"] if not r.get("mem") and any(ok(v) for v in r["times"].values())]
        if todo and not args.no_mem:
            pin_for_memory()
            with set_blas_threads(1):
                me1 = Engines(MINILM, 1, 384)
                me1.prime(("ort", "fwd", "explain32"))
                for row in todo:
                    log(f"[memory] minilm batch={row['batch']} seq={row['seq']}  ({deadline.left() / 60:.1f} min left)")
                    row["mem"] = me1.memory({"inputs_embeds": embeds(row["batch"], row["seq"], 384)},
                                            ("ort", "fwd", "explain32"), row["times"], deadline)

    data["ceiling"] = {k: max(ceil0[k], ceil1[k]) for k in ("float32", "float64")}
    data["ceiling_start_end"] = {"start": ceil0, "end": ceil1}
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    info["others_cpu_run"] = run_mon.others()
    info["idle_wait_s"] = IDLE.spent
    elapsed = time.perf_counter() - t_start
    write_report(args.out, args, info, data, elapsed)
    log(f"[done] {elapsed / 60:.1f} min -> {args.out}")
    return 0


def zoo_suite(threads: int, deadline: Deadline) -> list:
    import reflrp
    out = []
    for p in sorted(MODELS.glob("*.onnx")):
        ref = p.with_suffix("").with_suffix(".ref.npz")
        if not ref.exists() or not deadline.fits(10, reserve=60):
            continue
        with np.load(ref) as z:
            feeds = {k: z[k] for k in z.files if not k.startswith("out:")}
        try:
            e = Engines(p, threads, 0)
        except Exception as ex:
            out.append({"name": p.stem, "nodes": 0, "steps": 0,
                        "times": {"fwd": {"error": f"{type(ex).__name__}: {ex}"[:200]}}})
            continue
        times = {}
        with np.errstate(all="ignore"):
            for name, fn in (("ort", lambda: e.sess.run(None, feeds)),
                             ("fwd", lambda: e.model.run(feeds)),
                             ("fwd-plain", lambda: e.model.run(feeds, fast=False)),
                             ("explain64", lambda: reflrp.explain(e.model, feeds)),
                             ("refeval", lambda: e.ref.run(None, feeds))):
                try:
                    for _ in range(2):
                        fn()
                    times[name] = timed(fn, 300, 0.5, min_reps=5)
                except Exception as ex:
                    times[name] = {"error": f"{type(ex).__name__}: {str(ex).splitlines()[0][:160]}"}
        steps = len(e.model.prepared(None).steps)
        out.append({"name": p.stem, "nodes": len(e.model.graph.nodes), "steps": steps, "times": times})
        log(f"    {p.stem:12s} " + ", ".join(f"{k} {v['median'] * 1e6:.0f} us" if "median" in v else f"{k} error"
                                           for k, v in times.items()))
    return out


if __name__ == "__main__":
    sys.exit(main())
