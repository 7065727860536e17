#!/usr/bin/env python
"""Golden files on Dask vs one process (issue 14, bar 1): 64 inputs on the bench LLaMA (4 layers,
hidden 256, seq 128; tools/bench.py builds and caches it in .cache/bench/), float64.

Usage:
    python tools/bench_scale.py [--inputs 64] [--workers 2] [--layers 4] [--seq 128]
    python tools/bench_scale.py --worker-overhead   # an explain's wall / CPU time inside a Dask worker
    python tools/bench_scale.py --timeline          # where a Dask run's wall time goes

* The inputs: ``--inputs`` .npz files of ``inputs_embeds`` (1, seq, 256), float32, seeded per file, in
  .cache/bench_scale/inputs/.
* Serial: ``reflrp.golden.run(path, inputs, out)`` in a fresh subprocess, BLAS with its default threads
  (all cores) and again with one thread; the time of the call, model load included.
* Dask: a LocalCluster of ``--workers`` processes with one thread each (``reflrp.scale.client``, as
  ``reflrp golden --workers N``), then ``golden.run(..., client=client)`` timed: registering the model
  (each worker loads it), the tasks, the index. The cluster's start is reported apart.
* Every golden file of the Dask run is compared byte for byte with the serial runs'.
* The machine may be shared: the 1-minute load average and the share of CPU that processes other than
  these runs used (``/proc/stat`` minus the runs' own CPU time) are printed with each timing; before
  each run it waits (at most ``--quiet-wait`` s) for a half second in which others use < 25 %.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_scale"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

SERIAL = """
import json, sys, time
from reflrp import golden
t0 = time.perf_counter()
r = golden.run(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0, "written": len(r.written), "failed": len(r.failed)}))
"""


def machine_busy() -> tuple[int, int]:
    """(total, busy) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), sum(v[:8]) - v[3] - v[4]


def others_share(before, after, own_cpu_s: float) -> float:
    """The share of the machine's CPU used by processes other than the measured ones over an interval."""
    hz = os.sysconf("SC_CLK_TCK")
    total, busy = after[0] - before[0], after[1] - before[1]
    return max(0.0, (busy - own_cpu_s * hz) / total) if total > 0 else float("nan")


def load1() -> float:
    return os.getloadavg()[0]


def wait_quiet(cap_s: float, threshold: float = 0.25) -> float:
    """Wait (at most ``cap_s``) for a 0.5 s window in which the machine is less than ``threshold`` busy."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < cap_s:
        a = machine_busy()
        time.sleep(0.5)
        if others_share(a, machine_busy(), 0.0) < threshold:
            break
    return time.perf_counter() - t0


def make_inputs(n: int, seq: int, hidden: int) -> Path:
    folder = CACHE / f"inputs_n{n}_s{seq}_h{hidden}"
    if not folder.is_dir() or len(list(folder.glob("*.npz"))) != n:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x = np.random.default_rng(20_000 + i).standard_normal((1, seq, hidden), dtype=np.float32)
            np.savez(folder / f"x{i:04d}.npz", inputs_embeds=x)
    return folder


def serial_run(model: Path, inputs: Path, out: Path, threads: int | None, quiet_s: float) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(k, None)
        if threads is not None:
            env[k] = str(threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    waited = wait_quiet(quiet_s)
    t0, c0, before = time.perf_counter(), os.times(), machine_busy()
    proc = subprocess.run([sys.executable, "-c", SERIAL, str(model), str(inputs), str(out)], env=env,
                          capture_output=True, text=True)
    wall, c1 = time.perf_counter() - t0, os.times()
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    own = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    return {**res, "process_s": wall, "others": others_share(before, machine_busy(), own), "load1": load1(),
            "waited_s": waited}


def dask_run(model: Path, inputs: Path, out: Path, workers: int, quiet_s: float) -> dict:
    from reflrp import golden, scale
    t0 = time.perf_counter()
    with scale.client(workers=workers) as client:
        client.wait_for_workers(workers)
        start_s = time.perf_counter() - t0
        waited = wait_quiet(quiet_s)
        cpu0 = sum(client.run(lambda: sum(os.times()[:2])).values())
        own0, before = sum(os.times()[:2]), machine_busy()
        t1 = time.perf_counter()
        r = golden.run(model, inputs, out, client=client)
        seconds = time.perf_counter() - t1
        own = sum(client.run(lambda: sum(os.times()[:2])).values()) - cpu0 + sum(os.times()[:2]) - own0
        others = others_share(before, machine_busy(), own)
    return {"seconds": seconds, "cluster_start_s": start_s, "written": len(r.written), "failed": len(r.failed),
            "others": others, "load1": load1(), "waited_s": waited}


def _explains_in_task(model: str, calls: int) -> tuple[float, float]:
    """On a worker: ``calls`` float64 explains of one (1, 128, 256) input after a warm-up; (wall, CPU) ms each."""
    import numpy as np
    import reflrp
    from threadpoolctl import threadpool_limits
    m = reflrp.load(model)
    x = {"inputs_embeds": np.random.default_rng(0).standard_normal((1, 128, 256)).astype(np.float32)}
    with threadpool_limits(1):
        reflrp.explain(m, x)
        t, c = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            reflrp.explain(m, x)
        return (time.perf_counter() - t) / calls * 1e3, (time.thread_time() - c) / calls * 1e3


def worker_overhead(model: Path, workers: int, calls: int = 16) -> None:
    """Wall / CPU time of an explain inside a Dask worker, one task per worker at once: on a LocalCluster with
    Dask's default configuration and on the one ``reflrp.scale.client`` starts (profiler off, slower monitors)."""
    import dask
    import distributed
    from reflrp import scale
    print("\n| workers' configuration | wall ms | CPU ms | wall / CPU |\n|---|---:|---:|---:|")
    for label, config in (("Dask's defaults", {}), ("reflrp.scale.LOCAL_CLUSTER_CONFIG", scale.LOCAL_CLUSTER_CONFIG)):
        with dask.config.set(config), distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                                                processes=True, dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as c:
            c.wait_for_workers(workers)
            futures = [c.submit(_explains_in_task, str(model), calls, pure=False, key=f"probe-{i}") for i in range(workers)]
            for wall, cpu in (f.result() for f in futures):
                print(f"| {label} | {wall:.1f} | {cpu:.1f} | {wall / cpu:.2f} |")


def timeline(model: Path, inputs: Path, workers: int) -> None:
    """One Dask golden run on a started cluster, its phases from Dask's task stream: when each worker's first
    task started and its last ended, against the run's start and return (what is fixed cost, what is work)."""
    import distributed
    from reflrp import golden, scale
    with scale.client(workers=workers) as client, tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        client.wait_for_workers(workers)
        wait_quiet(30.0)
        with distributed.get_task_stream(client) as stream:
            t0 = time.time()
            golden.run(model, inputs, Path(tmp) / "dask", client=client)
            total = time.time() - t0
    spans = {}
    for task in stream.data:
        for ss in task["startstops"]:
            if ss["action"] == "compute":
                lo, hi, n = spans.get(task["worker"], (float("inf"), 0.0, 0))
                spans[task["worker"]] = (min(lo, ss["start"] - t0), max(hi, ss["stop"] - t0), n + 1)
    print(f"\nrun {total:.2f} s; tasks per worker (s from the run's start):\n")
    print("| worker | tasks | first task starts | last task ends | run returns after it |\n|---|---:|---:|---:|---:|")
    for w, (lo, hi, n) in sorted(spans.items()):
        print(f"| {w} | {n} | {lo:.2f} | {hi:.2f} | {total - hi:.2f} |")


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.golden.npz"))
    return names == sorted(p.name for p in b.glob("*.golden.npz")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait for a quiet machine before each run")
    ap.add_argument("--worker-overhead", action="store_true",
                    help="only measure an explain's wall / CPU time inside Dask workers (default and reflrp's configuration)")
    ap.add_argument("--timeline", action="store_true",
                    help="only time the phases of one Dask run (the workers' first and last tasks, the return)")
    args = ap.parse_args(argv)
    from bench import HIDDEN, model_path
    model = model_path(args.layers, 2)[0]
    if args.worker_overhead:
        worker_overhead(model, args.workers)
        return 0
    inputs = make_inputs(args.inputs, args.seq, HIDDEN)
    if args.timeline:
        timeline(model, inputs, args.workers)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        rows = {"serial, BLAS default threads": serial_run(model, inputs, tmp / "serial", None, args.quiet_wait),
                "serial, 1 BLAS thread": serial_run(model, inputs, tmp / "serial1", 1, args.quiet_wait),
                f"Dask, {args.workers} workers x 1 thread": dask_run(model, inputs, tmp / "dask", args.workers,
                                                                        args.quiet_wait)}
        identical = same_bytes(tmp / "serial", tmp / "dask") and same_bytes(tmp / "serial1", tmp / "dask")
    best_serial = min(rows["serial, BLAS default threads"]["seconds"], rows["serial, 1 BLAS thread"]["seconds"])
    dask = rows[f"Dask, {args.workers} workers x 1 thread"]
    print(f"\n{args.inputs} inputs (1, {args.seq}, {HIDDEN}), LLaMA {args.layers} layers, float64, "
          f"{os.cpu_count()} cores; {model.name}\n")
    print("| run | seconds | per input (ms) | others' CPU share | load (1 min) | waited for quiet (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        assert r["written"] == args.inputs and not r["failed"], (name, r)
        print(f"| {name} | {r['seconds']:.2f} | {1000 * r['seconds'] / args.inputs:.0f} | "
              f"{100 * r['others']:.0f} % | {r['load1']:.2f} | {r['waited_s']:.0f} |")
    print(f"\nspeedup (Dask vs the faster serial run): {best_serial / dask['seconds']:.2f}x; "
          f"with the cluster's start ({dask['cluster_start_s']:.2f} s): "
          f"{best_serial / (dask['seconds'] + dask['cluster_start_s']):.2f}x; "
          f"golden files byte-identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
