#!/usr/bin/env python
"""reflrp's forward against onnxruntime call by call, interleaved in one process (one thread each): where
the forward / onnxruntime ratio of tools/bench.py moves between runs on a shared machine.

Usage:
    python tools/fwd_vs_ort.py [--shape 1x128] [--calls 30] [--layers 4]

Each round runs one reflrp forward (its MatMul kernels timed apart from every other kernel) and then one
onnxruntime call on the same input, so both see the machine in the same state. Printed: every round, then
medians, quartiles and the spread (max / min) of each column, and the ratio of the medians. The bench
LLaMA is tools/bench.py's (built and cached in .cache/bench/ by it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def timed_kernels(prep, totals: dict) -> None:
    """Wrap every step's kernel of a prepared forward so that its time is added to ``totals`` under
    "MatMul" or "other" (a measuring copy of the steps: the Step objects are frozen)."""
    for step in prep.steps:
        fn, key = step.fn, "MatMul" if step.node.op_type == "MatMul" else "other"

        def kernel(xp, *args, _fn=fn, _key=key, **attrs):
            t = time.perf_counter()
            out = _fn(xp, *args, **attrs)
            totals[_key] += time.perf_counter() - t
            return out
        object.__setattr__(step, "fn", kernel)


def quartiles(v):
    q = statistics.quantiles(v, n=4)
    return q[0], statistics.median(v), q[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1x128", help="batch x seq of inputs_embeds")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    import onnxruntime as ort
    import reflrp
    from bench import HIDDEN, embeds, model_path
    from reflrp.interpreter import Prepared

    path = model_path(args.layers, 1)[0]
    b, s = (int(v) for v in args.shape.split("x"))
    feeds = {"inputs_embeds": embeds(b, s, HIDDEN)}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    model = reflrp.load(path)
    totals = {"MatMul": 0.0, "other": 0.0}
    with threadpool_limits(1), np.errstate(all="ignore"):
        for _ in range(3):
            model.run(feeds, dtype="float32")
            sess.run(None, feeds)
        import gc
        for prep in [o for o in gc.get_objects() if isinstance(o, Prepared)]:
            timed_kernels(prep, totals)
        rows = []
        for _ in range(args.calls):
            totals.update(MatMul=0.0, other=0.0)
            t = time.perf_counter()
            model.run(feeds, dtype="float32")
            fwd = time.perf_counter() - t
            t = time.perf_counter()
            sess.run(None, feeds)
            rows.append((fwd, totals["MatMul"], totals["other"], time.perf_counter() - t))
    names = ("reflrp forward", "its MatMul kernels", "its other kernels", "onnxruntime")
    print(f"{args.layers} layers, shape {args.shape}, one thread each, ms per call\n")
    print("| round | " + " | ".join(names) + " |\n|---:|" + "---:|" * len(names))
    for i, r in enumerate(rows):
        print(f"| {i} | " + " | ".join(f"{1e3 * v:.1f}" for v in r) + " |")
    print("\n| column | 25 % | median | 75 % | max / min |\n|---|---:|---:|---:|---:|")
    for j, name in enumerate(names):
        col = [r[j] for r in rows]
        lo, med, hi = quartiles(col)
        print(f"| {name} | {1e3 * lo:.1f} | {1e3 * med:.1f} | {1e3 * hi:.1f} | {max(col) / min(col):.2f} |")
    fwd, ort_ = (statistics.median(r[j] for r in rows) for j in (0, 3))
    print(f"\nforward / onnxruntime (medians): {fwd / ort_:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
