"""A/B of reflrp's allocator policy: the same forward / explain timings with ``REFLRP_MALLOC=reuse``
(the default) and ``REFLRP_MALLOC=system`` (glibc's own heuristics), each in fresh processes,
alternating, single-threaded (BLAS 1 thread), CPU time of the calling thread, best of the calls.

    python tools/ab_allocator.py [--layers 4] [--shapes 1x128 1x512 8x128] [--rounds 3] [--calls 5]

Uses the benchmark LLaMA that ``python tools/bench.py`` caches in .cache/bench/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(path: str, shapes: list[str], calls: int) -> dict:
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    sys.path.insert(0, str(ROOT))
    import reflrp
    model = reflrp.load(path)
    hidden = model.graph.inputs[0].shape[-1]
    out = {}
    for shape in shapes:
        b, s = map(int, shape.split("x"))
        x = np.random.default_rng(0).standard_normal((b, s, hidden)).astype(np.float32)
        feeds = {"inputs_embeds": x}
        for name, fn in (("forward", lambda: model.run(feeds, dtype="float32")),
                         ("explain32", lambda: reflrp.explain(model, feeds, dtype="float32"))):
            fn()
            best = float("inf")
            for _ in range(calls):
                t = time.thread_time()
                fn()
                best = min(best, time.thread_time() - t)
            out[f"{name} {shape}"] = best * 1e3
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shapes", nargs="+", default=["1x128", "1x512", "8x128"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    found = sorted((ROOT / ".cache" / "bench").glob(f"llama_h256_L{args.layers}_*.onnx"))
    if not found:
        print(f"no cached benchmark model for {args.layers} layers: run python tools/bench.py first", file=sys.stderr)
        return 2
    path = str(found[-1])
    if args.worker:
        print(json.dumps(worker(path, args.shapes, args.calls)))
        return 0
    results: dict[str, dict[str, float]] = {"reuse": {}, "system": {}}
    for r in range(args.rounds):
        for policy in (("reuse", "system") if r % 2 == 0 else ("system", "reuse")):
            cmd = [sys.executable, __file__, "--layers", str(args.layers), "--calls", str(args.calls),
                   "--shapes", *args.shapes, "--worker", "1"]
            env = dict(os.environ, REFLRP_MALLOC=policy)
            got = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for k, v in got.items():
                results[policy][k] = min(v, results[policy].get(k, float("inf")))
    print(f"model {Path(path).name}; best CPU ms over {args.rounds} processes x {args.calls} calls per policy")
    print("| call | REFLRP_MALLOC=system | reuse (default) | system / reuse |")
    print("|---|---:|---:|---:|")
    for k in results["reuse"]:
        a, b = results["system"][k], results["reuse"][k]
        print(f"| {k} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
