#!/usr/bin/env python
"""Markdown tables of ``reflrp evaluate --json`` results, as recorded in docs/faithfulness.md.

Usage:
    python tools/faithfulness_tables.py RESULT.json [RESULT.json ...] [--split ARRAY --dataset FILE.npz]

One table per file: methods sorted by ABC, with the 95 % interval, precision@k where the dataset had
ground truth, and the integrated-gradients completeness error. ``--split negated --dataset
demo/sentiment_test.npz`` adds the mean ABC of the samples where that boolean array is true / false.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def table(data: dict, split=None) -> str:
    head = ["method", "ABC", "95% CI"]
    if data["ground_truth"]:
        head += ["precision@k", "95% CI"]
    if split is not None:
        head += [f"ABC where {split[0]}", f"ABC where not {split[0]}"]
    head += ["IG mean abs completeness error"]
    rows = []
    for name, m in sorted(data["methods"].items(), key=lambda kv: -kv[1]["abc"]):
        row = [name, f"{m['abc']:.3f}", f"[{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"]
        if data["ground_truth"]:
            row += [f"{m['precision_at_k']:.3f}", f"[{m['precision_ci'][0]:.3f}, {m['precision_ci'][1]:.3f}]"]
        if split is not None:
            per = np.asarray(m["abc_per_sample"])
            mask = split[1][:len(per)]
            row += [f"{per[mask].mean():.3f}", f"{per[~mask].mean():.3f}"]
        row += [f"{m['completeness_error']:.1e}" if "completeness_error" in m else ""]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="reflrp evaluate --json files")
    ap.add_argument("--split", help="a boolean array of the dataset to split the ABC by")
    ap.add_argument("--dataset", help="the .npz holding --split")
    args = ap.parse_args(argv)
    split = None
    if args.split:
        with np.load(args.dataset) as z:
            split = (args.split, z[args.split].astype(bool))
    for path in args.results:
        data = json.loads(open(path).read())
        units = "patches" if data["units"] == "patch" else data["units"] + "s"
        print(f"{path}: {data['samples']} samples, {units} removed by '{data['mode']}', {data['steps']} steps, "
              f"target {data['measure']} of the {data['target']} class\n")
        print(table(data, split) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
