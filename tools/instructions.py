#!/usr/bin/env python
"""Instructions per call (valgrind's callgrind): a timing-free measure of per-call overhead, for a shared
machine whose speed drifts by 10-30 % between runs (BENCHMARKS.md). Counts do not depend on the load.

Usage:
    python tools/instructions.py [--shape 1x8] [--other ../old] [--what explain32 forward]

For each tree (this one, and ``--other DIR`` if given) and each call, two fresh processes under
``valgrind --tool=callgrind`` run the call ``--few`` and ``--many`` times after three warm-up calls on
the bench LLaMA (tools/bench.py builds it); the difference of their instruction totals over the
difference of the call counts is the per-call count (start-up, imports and warm-up cancel out).
BLAS runs on one thread. Needs valgrind (``apt-get install valgrind``); slow (about 180x native).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

CALLS = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, reflrp
model = reflrp.load(sys.argv[2])
b, s = map(int, sys.argv[3].split("x"))
x = {"inputs_embeds": np.random.default_rng(0).standard_normal((b, s, 256)).astype(np.float32)}
call = {"explain32": lambda: reflrp.explain(model, x, dtype="float32"),
        "forward": lambda: model.run(x, dtype="float32")}[sys.argv[4]]
for _ in range(3 + int(sys.argv[5])):
    call()
"""


def instructions(root: str, model: Path, shape: str, what: str, calls: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CALLS,
           root, str(model), shape, what, str(calls)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if not found:
        raise RuntimeError(f"callgrind printed no total:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1x8", help="batch x seq of inputs_embeds (default 1x8: overhead only)")
    ap.add_argument("--other", help="another checkout whose reflrp to count too (e.g. the old engine's)")
    ap.add_argument("--what", nargs="+", default=["explain32", "forward"], choices=["explain32", "forward"])
    ap.add_argument("--few", type=int, default=1)
    ap.add_argument("--many", type=int, default=5)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        ap.error("needs valgrind (apt-get install valgrind)")
    from bench import model_path
    model = model_path(4, 2)[0]
    trees = [("this", str(ROOT))] + ([("other", str(Path(args.other).resolve()))] if args.other else [])
    print(f"model {model.name}, shape {args.shape}, million instructions per call "
          f"(callgrind, ({args.many} - {args.few}) calls)\n")
    print("| call | " + " | ".join(name for name, _ in trees) + (" | other / this |" if args.other else " |"))
    print("|---|" + "---:|" * (len(trees) + bool(args.other)))
    for what in args.what:
        per = [(instructions(root, model, args.shape, what, args.many)
                - instructions(root, model, args.shape, what, args.few)) / (args.many - args.few) / 1e6
               for _, root in trees]
        ratio = f" {per[1] / per[0]:.2f} |" if args.other else ""
        print(f"| {what} {args.shape} | " + " | ".join(f"{v:.1f}" for v in per) + " |" + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
