"""GPU check: reflrp on CuPy against reflrp on NumPy (float64, <= 1e-9 relative) on every zoo model,
plus forward/explain timings. Without a GPU it runs the same checks on NumPy (the CPU fallback) and
says the GPU run is pending.

    python tools/gpu_check.py [--out gpu_results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reflrp  # noqa: E402
from reflrp.backend import cupy_or_none, to_numpy  # noqa: E402


def timed(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--models", nargs="*", default=None)
    args = ap.parse_args(argv)
    cp = cupy_or_none()
    device = "cuda" if cp is not None else "cpu"
    manifest = json.loads((ROOT / "models" / "MANIFEST.json").read_text())["models"]
    rows, worst = [], 0.0
    for name in args.models or sorted(manifest):
        m = reflrp.load(ROOT / "models" / f"{name}.onnx")
        ref = np.load(ROOT / "models" / f"{name}.ref.npz")
        feeds = {k: ref[k] for k in m.input_names}
        dev_feeds = {k: cp.asarray(v) for k, v in feeds.items()} if cp is not None else feeds
        base = reflrp.explain(m, feeds)
        for preset in ("attnlrp", "cp-lrp"):
            a = reflrp.explain(m, dev_feeds, preset=preset, device=device)
            b = base if preset == "attnlrp" else reflrp.explain(m, feeds, preset=preset)
            w = b.wrt[0]
            got, want = to_numpy(a.relevance[w]), b.relevance[w]
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))
            worst = max(worst, err)
            rows.append(dict(model=name, preset=preset, device=device, rel_err=err,
                             forward_s=timed(lambda: m.run(dev_feeds, device=device)),
                             explain_s=timed(lambda: reflrp.explain(m, dev_feeds, preset=preset, device=device))))
            print(f"{name:12s} {preset:8s} {device}: max rel err vs numpy {err:.2e}  "
                  f"forward {rows[-1]['forward_s'] * 1e3:.2f} ms  explain {rows[-1]['explain_s'] * 1e3:.2f} ms")
    ok = worst <= 1e-9
    summary = dict(device=device, gpu=cp is not None, worst_rel_err=worst, ok=ok, rows=rows)
    if cp is None:
        print("no GPU (cupy missing or no device answered): ran the CPU fallback; the GPU run is pending")
    print(f"{'PASS' if ok else 'FAIL'}: worst relative error {worst:.2e} (bar 1e-9)")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
