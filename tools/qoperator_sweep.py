#!/usr/bin/env python
"""How often reflrp's QOperator expansions (reflrp.canonical.qoperator) and onnxruntime's kernels disagree:
every one-node case of tests/test_qoperator.py, uint8 and int8, over many random seeds.

Usage:
    python tools/qoperator_sweep.py [--seeds 10]

Prints per case and type: integers compared, how many differ, the largest difference (quanta).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import test_qoperator as cases  # noqa: E402  (the case builders)


def sweep(seeds: int) -> list[tuple[str, str, int, int, int]]:
    rows = []
    for name, (op, make, attrs) in sorted(cases.CASES.items()):
        for qtype, dtype in sorted(cases.QTYPES.items()):
            compared = differ = worst = 0
            for seed in range(seeds):
                m, feeds = cases.model(op, make(np.random.default_rng(1000 + seed), dtype), **attrs)
                d = np.abs(cases.ours(m, feeds).astype(np.int64) - cases.ort_run(m, feeds).astype(np.int64))
                compared, differ, worst = compared + d.size, differ + int((d > 0).sum()), max(worst, int(d.max()))
            rows.append((name, qtype, compared, differ, worst))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args(argv)
    cases.ort.set_default_logger_severity(3)
    rows = sweep(args.seeds)
    print(f"{'case':28s} {'type':6s} {'compared':>9s} {'differ':>7s} {'max':>4s}")
    for name, qtype, compared, differ, worst in rows:
        print(f"{name:28s} {qtype:6s} {compared:9d} {differ:7d} {worst:4d}")
    print(f"total: {sum(r[3] for r in rows)} of {sum(r[2] for r in rows)} integers differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
