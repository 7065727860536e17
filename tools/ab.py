"""A/B timings of reflrp's performance choices, off against on (the default), forward and explain
(float32), single-threaded (BLAS 1 thread), CPU time of the calling thread, best of the calls:

- ``--knob allocator``: ``REFLRP_MALLOC=system`` (glibc's own heuristics) against ``reuse``, in
  fresh processes, alternating (the policy is process-wide);
- ``--knob weight-rows`` (relevance-pass weight products on the non-zero rows only),
  ``transposed-matmul`` (``A^T @ G`` as ``(G^T @ A)^T`` instead of copying ``A^T``), ``sums`` (the
  books reuse sums the rules computed anyway): in one process, alternating call by call; "off"
  swaps in the plain computation.

    python tools/ab.py --knob allocator [--layers 4] [--shapes 1x128 1x512 8x128] [--rounds 3] [--calls 5]
    python tools/ab.py --knob transposed-matmul --shapes 1x512 --calls 12

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


def _plain_matmul(xp, a, b):
    """reflrp's MatMul before the transposed route: strided stacked operands copied contiguous."""
    if b.ndim == 2 and a.ndim > 2:
        a = a if a.flags.c_contiguous else xp.ascontiguousarray(a)
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if a.ndim > 2 or b.ndim > 2:
        a = a if a.flags.c_contiguous else xp.ascontiguousarray(a)
        b = b if b.flags.c_contiguous else xp.ascontiguousarray(b)
    return xp.matmul(a, b)


class _Forget(dict):
    """A dict that keeps nothing (the rules' memo of exact ratios, switched off)."""

    def __setitem__(self, key, value):
        pass


def _switch(knob: str):
    """set(on: bool) for an in-process knob."""
    import reflrp.ops.linalg as linalg
    import reflrp.rules as rules
    import reflrp.rules.linear as linear
    import reflrp.rules.special as special
    real = {"rows": linear._rows_times_matrix, "matmul": linalg.matmul, "note": rules.note_total,
            "exact": rules._exact}

    def set_(on: bool) -> None:
        if knob == "weight-rows":
            linear._rows_times_matrix = real["rows"] if on else (lambda xp, g, m: None)
        elif knob == "transposed-matmul":
            linalg.matmul = linear.matmul = real["matmul"] if on else _plain_matmul
        elif knob == "sums":
            rules.note_total = special.note_total = real["note"] if on else (lambda a, s: a)
            rules._exact = real["exact"] if on else _Forget()
    return set_


def worker(path: str, shapes: list[str], calls: int, knob: str) -> dict:
    """Best CPU ms per call; for an in-process knob "off" and "on", alternating call by call."""
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    sys.path.insert(0, str(ROOT))
    import reflrp
    model = reflrp.load(path)
    hidden = model.graph.inputs[0].shape[-1]
    modes = (None,) if knob == "allocator" else (False, True)
    switch = _switch(knob) if knob != "allocator" else None
    out = {}
    for shape in shapes:
        b, s = map(int, shape.split("x"))
        feeds = {"inputs_embeds": np.random.default_rng(0).standard_normal((b, s, hidden)).astype(np.float32)}
        for name, fn in (("forward", lambda: model.run(feeds, dtype="float32")),
                         ("explain32", lambda: reflrp.explain(model, feeds, dtype="float32"))):
            fn()
            for i in range(calls):
                for on in (modes if i % 2 == 0 else modes[::-1]):
                    if switch is not None:
                        switch(on)
                    t = time.thread_time()
                    fn()
                    key = f"{name} {shape}" + ("" if on is None else (" [on]" if on else " [off]"))
                    out[key] = min(out.get(key, float("inf")), (time.thread_time() - t) * 1e3)
            if switch is not None:
                switch(True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shapes", nargs="+", default=["1x128", "1x512", "8x128"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--knob", choices=["allocator", "weight-rows", "transposed-matmul", "sums"], default="allocator")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    found = sorted((ROOT / ".cache" / "bench").glob(f"llama_h256_L{args.layers}_*.onnx"))
    if not found:
        print(f"no cached benchmark model for {args.layers} layers: run python tools/bench.py first", file=sys.stderr)
        return 2
    path = str(found[-1])
    if args.worker:
        print(json.dumps(worker(path, args.shapes, args.calls, args.knob)))
        return 0
    if args.knob != "allocator":
        got = worker(path, args.shapes, args.calls, args.knob)
        results = {"off": {k[:-6]: v for k, v in got.items() if k.endswith(" [off]")},
                   "on": {k[:-5]: v for k, v in got.items() if k.endswith(" [on]")}}
        names = (f"{args.knob} off", "on (default)")
    else:
        results = {"off": {}, "on": {}}
        for r in range(args.rounds):
            for label in (("on", "off") if r % 2 == 0 else ("off", "on")):
                cmd = [sys.executable, __file__, "--layers", str(args.layers), "--calls", str(args.calls),
                       "--shapes", *args.shapes, "--worker", "1"]
                env = dict(os.environ, REFLRP_MALLOC="reuse" if label == "on" else "system")
                got = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                                text=True).stdout.splitlines()[-1])
                for k, v in got.items():
                    results[label][k] = min(v, results[label].get(k, float("inf")))
        names = ("REFLRP_MALLOC=system", "reuse (default)")
    print(f"model {Path(path).name}; {args.knob}; best CPU ms")
    print(f"| call | {names[0]} | {names[1]} | off / on |")
    print("|---|---:|---:|---:|")
    for k in results["on"]:
        a, b = results["off"][k], results["on"][k]
        print(f"| {k} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
