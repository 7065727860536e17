#!/usr/bin/env python
"""Reference gradients from plain torch autograd (no LXT) in float64 for the zoo models.

Usage:
    python tools/make_grad_goldens.py                 # every zoo model -> models/<name>.grad.npz
    python tools/make_grad_goldens.py --only llama cnn

The model is rebuilt with its exact zoo weights (tools/zoo.py), upcast with ``.double()`` and run
on the feeds of ``<name>.ref.npz`` under torch_common.float64_mode(graph_constants=True): HF's
float32 round trips (softmax dtype, RMSNorm casts, .float()) stay float64, and the constants the
ONNX graph holds as float32 are float32 here too (Python float arguments rounded to float32,
finfo(float64).min masks -> float32's min, GELU as the exporter decomposes it, RoPE inv_freq kept
as the float32 buffer, Gemma3's folded 1 + weight rounded), so the golden is the ONNX graph's
function evaluated in float64 (its float64 logits agree with a float64 run of the graph to ~1e-15,
where the LXT goldens' float64 conventions leave 1e-9..1e-7).

Key layout of ``<name>.grad.npz``:
    inputs:<graph input>   the .ref.npz feed, unchanged
    target                 int64 [batch]: argmax of the logits (decoders: at the last position),
                           the same rule as the LXT goldens
    logits                 float64: first graph output of the float64 model
    grad:<tensor>          float64 d(sum_b logits[b, (-1,) target[b]]) / d(tensor), for every
                           attributed tensor (the LXT goldens' ones: the float graph inputs; for
                           token-id models the embedding Gather output, by its ONNX name; for
                           llama_past also each past key/value)
    fully_padded_rows      (masked models) int64 rows whose attention_mask is all zeros
    meta                   JSON string (conventions, versions, float64 rewrites, the central
                           finite-difference check of each gradient, target vs the LXT golden)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_common import (attributed_tensors, float64_mode,  # noqa: E402
                          fold_constants_as_exported, save_npz, select_target)

FD_STEP = 1e-5  # central differences in float64: truncation ~ step^2, rounding ~ 1e-16 / step


def _ref_feeds(name: str) -> dict[str, np.ndarray]:
    with np.load(MODELS_DIR / f"{name}.ref.npz") as z:
        return {k: z[k] for k in z.files if not k.startswith("out:")}


def _seed(call, mode, target, output_name):
    """sum_b logits[b, (-1,) target[b]] of a fresh forward (``target`` fixed)."""
    import torch
    with mode:
        y = call()
    rows = torch.arange(y.shape[0])
    if output_name == "last_hidden_state":
        return y[rows, 0, target].sum()
    return (y[rows, -1, target] if y.dim() == 3 else y[rows, target]).sum()


def _finite_difference_check(call, mode, leaves, grads, target, output_name, rows) -> dict:
    """Directional derivatives, one random unit direction per leaf and batch row in ``rows`` (zero
    on the other rows): autograd's sum(grad * d) against (f(x + h d) - f(x - h d)) / 2h.

    In a fully padded row the float64 forward rounds score + min to min (uniform attention), so
    the computed function is flat in the scores, while autograd chains softmax's adjoint at that
    output, y * (g - sum(g * y)), as any adjoint-based gradient does: there the two differ."""
    import torch
    g = torch.Generator().manual_seed(0)
    out = {}
    for (n, leaf), grad in zip(leaves.items(), grads):
        base = leaf.detach().clone()
        out[n] = {}
        for r in rows:
            d = torch.zeros_like(base)
            d[r] = torch.randn(base[r].shape, generator=g, dtype=base.dtype)
            d /= d.norm()  # a unit step, so FD_STEP is the step length
            values = []
            with torch.no_grad():
                for sign in (1.0, -1.0):
                    leaf.copy_(base + sign * FD_STEP * d)
                    values.append(float(_seed(call, mode, target, output_name)))
                leaf.copy_(base)
            fd = (values[0] - values[1]) / (2 * FD_STEP)
            ad = float((grad * d).sum())
            out[n][str(r)] = {"autograd": ad, "central_difference": fd,
                              "abs_err": abs(ad - fd), "rel_err": abs(ad - fd) / max(abs(fd), 1e-300)}
    return out


def make_one(name: str) -> dict:
    import torch
    import transformers
    from zoo import MASKED_KINDS, SPECS, build_model
    spec = SPECS[name]
    wrapper, _, _ = build_model(name)
    wrapper.double().eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    folded = fold_constants_as_exported(wrapper)
    mode = float64_mode(graph_constants=True)
    feeds = _ref_feeds(name)
    leaves, call, notes = attributed_tensors(name, wrapper, feeds, MODELS_DIR / f"{name}.onnx")

    with mode:
        y = call()
    assert y.dtype == torch.float64
    target, sel = select_target(y, spec.output_name)
    grads = torch.autograd.grad(sel.sum(), list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves.values(), grads)]

    arrays = {f"inputs:{k}": v for k, v in feeds.items()}
    arrays["target"] = target.numpy().astype(np.int64)
    arrays["logits"] = y.detach().numpy()
    arrays.update({f"grad:{n}": gr.numpy() for n, gr in zip(leaves, grads)})
    meta = {
        "model": name,
        "gradient_of": "sum_b seed[b], seed[b] = logits[b, -1, target[b]] (decoders) or "
                       "logits[b, target[b]] (classifiers); rows are independent",
        "target_convention": "argmax at the last position per row (decoders), argmax per row "
                             "(classifiers): the LXT goldens' rule",
        "tensors": list(leaves),
        "float64": "model.double(); torch_common.float64_mode(graph_constants=True): float32 "
                   "casts / dtype arguments -> float64, Python float arguments -> float32-rounded "
                   "(the ONNX graph's constants), finfo(float64).min -> float32 min, F.gelu -> "
                   "the exporter's decomposition with float32 constants; RoPE inv_freq is the "
                   "float32 buffer upcast (as the graph's initializer); what the exporter folds "
                   "into float32 initializers is rounded likewise (folded_as_float32)",
        "folded_as_float32": folded,
        "float64_rewrites": dict(mode.hits),
        "float32_leaks": dict(mode.leaks),
        "notes": notes + ([f"zoo: {spec.notes}"] if spec.notes else []),
    }
    meta["finite_difference_check"] = _finite_difference_check(
        call, mode, leaves, grads, target, spec.output_name, range(y.shape[0]))
    padded = (np.flatnonzero(~feeds["attention_mask"].any(1)).tolist()
              if spec.input_kind in MASKED_KINDS else [])
    meta["finite_difference_max_rel_err_rows_with_tokens"] = max(
        c["rel_err"] for t in meta["finite_difference_check"].values()
        for r, c in t.items() if int(r) not in padded and c["central_difference"] != 0)
    lxt = MODELS_DIR / f"{name}.lxt.npz"
    if lxt.exists():
        with np.load(lxt) as z:
            meta["target_equals_lxt_golden"] = bool(np.array_equal(z["target"], arrays["target"]))
            meta["logits_max_abs_diff_vs_lxt_golden"] = float(np.abs(z["logits"] - arrays["logits"]).max())
        assert meta["target_equals_lxt_golden"], f"{name}: target differs from the LXT golden"
    with np.load(MODELS_DIR / f"{name}.ref.npz") as z:
        meta["max_abs_diff_vs_ref_npz_float32"] = float(np.abs(arrays["logits"] - z[f"out:{spec.output_name}"]).max())
    if spec.input_kind in MASKED_KINDS:
        arrays["fully_padded_rows"] = np.array(padded, np.int64)
        meta["fully_padded_rows"] = padded
    meta["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    save_npz(MODELS_DIR / f"{name}.grad.npz", arrays)
    return meta


def main(argv=None) -> int:
    import torch
    from zoo import DEFAULT_MODELS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=DEFAULT_MODELS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # reproducible float reductions
    for name in args.only or DEFAULT_MODELS:
        meta = make_one(name)
        fd = meta["finite_difference_max_rel_err_rows_with_tokens"]
        print(f"[grad] {name:12s} tensors {len(meta['tensors'])}  finite differences (rows with "
              f"tokens) max rel err {fd:.1e}  logits vs LXT golden max abs diff "
              f"{meta.get('logits_max_abs_diff_vs_lxt_golden', '-')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
