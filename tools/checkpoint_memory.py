"""Peak memory of reflrp.explain by default, with keep=() and with checkpoint="sqrt" (bar: <= 0.5x
at 16 layers), and the agreement of the input relevance (bar: identical to 1e-12).

    python tools/checkpoint_memory.py [MODEL.onnx] [--batch 1] [--seq 512] [--dtype float64] [--targets K]

``--targets K`` explains the top-K classes at the last position in one pass (``targets=[...]``; every
relevance array then has a leading axis K, and memory grows with K).

MODEL defaults to the 16-layer benchmark LLaMA that `python tools/bench.py` caches in .cache/bench/.
Peak memory = tracemalloc's peak of traced allocations (numpy reports its buffers to tracemalloc)
during one explain call, above the level before it; the model's weights and prepared plans are
loaded (and warmed up) before, so they are not counted. Each mode runs in its own subprocess.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(path: str, batch: int, seq: int, dtype: str, mode: str, targets: int = 0) -> dict:
    """One explain call in ``mode``: "none" (default: every relevance kept), "keep" (``keep=()``: only
    the input's relevance) or "sqrt" (``checkpoint="sqrt"``); with ``targets`` > 0 the top-``targets``
    classes of row 0 at the last position in one call."""
    import tracemalloc

    import numpy as np

    sys.path.insert(0, str(ROOT))
    import reflrp
    model = reflrp.load(path)
    hidden = model.graph.inputs[0].shape[-1]
    x = np.random.default_rng(0).normal(size=(batch, seq, hidden)).astype(np.float32)
    options = {"none": {}, "keep": {"keep": ()}, "sqrt": {"checkpoint": "sqrt"}}[mode]
    if targets:
        logits = model.run({"inputs_embeds": x}, dtype=dtype)[model.output_names[0]]
        options["targets"] = [int(c) for c in np.argsort(-logits[0, -1], kind="stable")[:targets]]
    reflrp.explain(model, {"inputs_embeds": x[:, :8]}, dtype=dtype, **options)  # warm plans
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    att = reflrp.explain(model, {"inputs_embeds": x}, dtype=dtype, **options)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rel = att.relevance["inputs_embeds"]
    out = Path(f"/tmp/reflrp_ckpt_{mode}.npy")
    np.save(out, rel)
    return {"mode": mode, "peak_mib": peak / 2**20, "relevance": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--targets", type=int, default=0, help="K > 0: the top-K classes in one call (targets=)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    found = sorted((ROOT / ".cache" / "bench").glob("llama_h256_L16_*.onnx"))
    if args.model is None and not found:
        print("no cached 16-layer benchmark model: run python tools/bench.py first, or name a model", file=sys.stderr)
        return 2
    path = args.model or str(found[-1])
    if args.worker is not None:
        print(json.dumps(measure(path, args.batch, args.seq, args.dtype, args.worker, args.targets)))
        return 0
    rows = []
    for mode in ("none", "keep", "sqrt"):
        cmd = [sys.executable, __file__, path, "--batch", str(args.batch), "--seq", str(args.seq),
               "--dtype", args.dtype, "--targets", str(args.targets), "--worker", mode]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    import numpy as np
    a = np.load(rows[0]["relevance"])
    errs = [float(np.abs(a - np.load(r["relevance"])).max() / np.abs(a).max()) for r in rows[1:]]
    print(f"model {Path(path).name}, batch {args.batch}, seq {args.seq}, dtype {args.dtype}"
          + (f", {args.targets} targets in one call" if args.targets else ""))
    print(f"peak MiB: default {rows[0]['peak_mib']:.1f}, keep=() {rows[1]['peak_mib']:.1f} "
          f"(ratio {rows[1]['peak_mib'] / rows[0]['peak_mib']:.3f}), checkpoint='sqrt' {rows[2]['peak_mib']:.1f} "
          f"(ratio {rows[2]['peak_mib'] / rows[0]['peak_mib']:.3f}); input relevance max rel diff vs default: "
          f"keep=() {errs[0]:.1e}, sqrt {errs[1]:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
