"""A/B timings of reflrp's performance choices, forward and explain (float32), single-threaded (BLAS
1 thread), CPU time of the calling thread, best of the calls:

- ``--knob fast``: the speed layer (``reflrp.fast``) off against on (the default): ``fast=False`` and
  ``fast=True`` in one process, alternating call by call (the order flips every call);
- ``--knob allocator``: ``REFLRP_MALLOC=call`` (the default: glibc keeps freed buffers for reuse
  during fast calls and for ``REFLRP_MALLOC_LINGER`` = 1 s after the last) against ``call-nolinger``
  (the same with ``REFLRP_MALLOC_LINGER=0``: glibc restored as each call returns), ``reuse`` (the same,
  process-wide) and ``system`` (glibc left alone), in fresh processes, alternating (the order rotates every round), since the policy is
  per process;
- ``--knob plain-after-fast``: the plain path (``fast=False``) in a fresh process where the speed layer
  never ran against one where a fast call ran first (whose "call" policy sets glibc's thresholds back
  to their defaults explicitly, which ends glibc's own adaptation of them for the process), fresh
  processes, alternating;
- ``--knob engine --other DIR``: this tree's reflrp against the one in the checkout ``DIR`` (an older
  commit, e.g. a ``git worktree add DIR cb7d23e``), each with its defaults, in fresh processes,
  alternating (the order rotates every round): the direct old-versus-new A/B behind issue 10's bar;
- ``--knob job-scope``: ``reflrp.evaluate`` (AttnLRP and random, 5 steps, float32, one call over a batch of the
  shape) as one allocator scope (the default, ``reflrp.memory.one_job``) against a scope per inner call
  (``reflrp.evaluate.__wrapped__``), in one process, alternating call by call; wall and CPU the same here
  (one thread).

    python tools/ab.py --knob fast [--layers 4] [--shapes 1x128 1x512 8x128] [--calls 5]
    python tools/ab.py [--knob allocator] [--rounds 3] [--calls 5]
    python tools/ab.py --knob plain-after-fast --shapes 1x512 8x128
    python tools/ab.py --knob engine --other ../old [--targets 16] [--rounds 5]
    python tools/ab.py --knob job-scope --shapes 8x128 --calls 4

Uses the benchmark LLaMA that ``python tools/bench.py`` caches in .cache/bench/.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOBS = {  # knob -> its arms, the default first
    "fast": ("fast=True", "fast=False"),
    "allocator": ("call", "call-nolinger", "reuse", "system"),
    "plain-after-fast": ("fresh", "after-fast"),
    "engine": ("this", "other"),
    "job-scope": ("one scope", "per call"),
}


def worker(path: str, shapes: list[str], calls: int, knob: str, arm: str | None = None, root: str = str(ROOT),
           targets: int = 0) -> dict:
    """Best CPU ms per "call shape [arm]"; for ``fast`` both arms, alternating call by call; for
    ``allocator`` the policy this process was started with (``REFLRP_MALLOC``); for
    ``plain-after-fast`` the plain path only, after one fast call at a tiny shape when ``arm`` says so;
    for ``engine`` the reflrp of ``root`` with its defaults (``targets`` > 0: also one call explaining the
    top-``targets`` classes of the last position, when that reflrp has ``targets=``)."""
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    sys.path.insert(0, root)
    import reflrp
    model = reflrp.load(path)
    hidden = model.graph.inputs[0].shape[-1]
    arms = {"fast": (True, False), "plain-after-fast": (False,), "job-scope": KNOBS["job-scope"]}.get(knob, (None,))
    fast_kw = (lambda fast: {}) if knob == "engine" else (lambda fast: {"fast": fast})
    if arm == "after-fast":
        tiny = {"inputs_embeds": np.zeros((1, 8, hidden), np.float32)}
        reflrp.explain(model, tiny, dtype="float32", fast=True)
    out = {}
    for shape in shapes:
        b, s = map(int, shape.split("x"))
        feeds = {"inputs_embeds": np.random.default_rng(0).standard_normal((b, s, hidden)).astype(np.float32)}
        calls_here = [("forward", lambda fast: model.run(feeds, dtype="float32", **fast_kw(fast))),
                      ("explain32", lambda fast: reflrp.explain(model, feeds, dtype="float32", **fast_kw(fast)))]
        if knob == "job-scope":
            def evaluate(arm, feeds=feeds):
                fn = reflrp.evaluate if arm == "one scope" else reflrp.evaluate.__wrapped__
                fn(model, feeds, methods=["attnlrp", "random"], steps=5, bootstrap=50, progress=False, dtype="float32")
            calls_here = [("evaluate", evaluate)]
        if targets and "targets" in inspect.signature(reflrp.explain).parameters:
            logits = model.run(feeds, dtype="float32")["logits"]
            top = [int(c) for c in np.argsort(-logits[0, -1], kind="stable")[:targets]]
            calls_here.append((f"explain32 targets={targets}",
                               lambda fast: reflrp.explain(model, feeds, dtype="float32", targets=top)))
        for name, fn in calls_here:
            for fast in arms:
                fn(fast)  # warm-up (plans, shape cache)
            for i in range(calls):
                for fast in (arms if i % 2 == 0 else arms[::-1]):
                    t = time.thread_time()
                    fn(fast)
                    key = f"{name} {shape}" + (f" [fast={fast}]" if knob == "fast" else f" [{fast}]" if knob == "job-scope" else "")
                    out[key] = min(out.get(key, float("inf")), (time.thread_time() - t) * 1e3)
    return out


def _fresh(args, arm: str) -> dict:
    cmd = [sys.executable, __file__, "--layers", str(args.layers), "--calls", str(args.calls),
           "--shapes", *args.shapes, "--knob", args.knob, "--worker", arm, "--targets", str(args.targets)]
    if args.knob == "engine" and arm == "other":
        cmd += ["--other", args.other]
    env = dict(os.environ)
    if args.knob == "allocator":
        env.update(REFLRP_MALLOC=arm.split("-")[0], REFLRP_MALLOC_LINGER="0" if arm == "call-nolinger" else "1")
    run = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(run.stdout.splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shapes", nargs="+", default=["1x128", "1x512", "8x128"])
    ap.add_argument("--rounds", type=int, default=3, help="fresh-process rounds per arm (allocator)")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per arm (and per process)")
    ap.add_argument("--knob", choices=sorted(KNOBS), default="allocator")
    ap.add_argument("--other", default=None, help="engine: the checkout whose reflrp to compare with")
    ap.add_argument("--targets", type=int, default=0, help="engine: also K targets in one call (top-K classes)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.knob == "engine" and not args.other and not args.worker:
        ap.error("--knob engine needs --other DIR")
    found = sorted((ROOT / ".cache" / "bench").glob(f"llama_h256_L{args.layers}_*.onnx"))
    if not found:
        print(f"no cached benchmark model for {args.layers} layers: run python tools/bench.py first", file=sys.stderr)
        return 2
    path = str(found[-1])
    if args.worker:
        root = str(Path(args.other).resolve()) if args.knob == "engine" and args.worker == "other" else str(ROOT)
        print(json.dumps(worker(path, args.shapes, args.calls, args.knob, args.worker, root, args.targets)))
        return 0
    arms = KNOBS[args.knob]
    results: dict[str, dict] = {arm: {} for arm in arms}
    if args.knob in ("fast", "job-scope"):
        for key, v in worker(path, args.shapes, args.calls, args.knob).items():
            call, arm = key.rsplit(" [", 1)
            results[arm[:-1]][call] = v
        label = "in one process, alternating call by call"
    else:
        for r in range(args.rounds):
            for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
                for k, v in _fresh(args, arm).items():
                    results[arm][k] = min(v, results[arm].get(k, float("inf")))
        label = (f"{'REFLRP_MALLOC in ' if args.knob == 'allocator' else ''}fresh processes, {args.rounds} rounds, "
                 "order rotated" + (f"; other = {args.other}" if args.knob == "engine" else ""))
    print(f"model {Path(path).name}; knob {args.knob} ({label}); best CPU ms of {args.calls} calls, 1 thread")
    default = arms[0]
    mark = " (reference)" if args.knob == "plain-after-fast" else " (default)"
    print("| call | " + " | ".join(f"{a}{mark if a == default else ''}" for a in arms) + " | "
          + " | ".join(f"{a} / {default}" for a in arms[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(arms) - 1))
    for call, base in results[default].items():
        if any(call not in results[a] for a in arms):  # a call the other engine does not have
            print(f"| {call} | {base:.1f} | " + " | ".join("—" for _ in range(2 * len(arms) - 2)) + " |")
            continue
        vals = [results[a][call] for a in arms]
        print(f"| {call} | " + " | ".join(f"{v:.1f}" for v in vals) + " | "
              + " | ".join(f"{v / base:.2f}" for v in vals[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
