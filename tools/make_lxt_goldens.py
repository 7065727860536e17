#!/usr/bin/env python
"""Reference relevances from LXT (the authors' AttnLRP / CP-LRP code) for the zoo models.

Usage:
    python tools/make_lxt_goldens.py                  # all zoo models -> models/<name>.lxt.npz
    python tools/make_lxt_goldens.py --only llama vit
    python tools/make_lxt_goldens.py --minilm         # also .cache/minilm/minilm.lxt.npz

Each (model, preset) runs in its own subprocess, because LXT patches classes and
modules process-wide and cannot be undone; the parent merges the results.  The
model is rebuilt with its exact zoo weights (tools/zoo.py), upcast with
``.double()``, patched with LXT and run in float64 on the feeds of
``<name>.ref.npz``; relevance = input * d(target)/d(input).

Key layout of ``<name>.lxt.npz``:
    inputs:<graph input>   the .ref.npz feed, unchanged (float32 / int64)
    target                 int64 [batch]: class (decoders: at the last position;
                           minilm: hidden unit at position 0)
    logits                 float64: full output of the patched float64 model
                           (minilm: last_hidden_state)
    <preset>:relevance     float64, shape of inputs_embeds / pixel_values; for
                           llama_ids / llama_past of the embedding output [batch, seq, hidden]
    <preset>:relevance:<t> (llama_past) float64 relevance of the further attributed
                           tensors t = past_key_values.<layer>.key / .value
    fully_padded_rows      (masked models) int64 indices of the rows whose
                           attention_mask is all zeros
    attnlrp:latent:mlp0    (llama only) relevance of the input of
                           model.layers[0].mlp.down_proj
    meta                   JSON string (versions, maps, float64 patches,
                           conservation, conventions; masked models also
                           relevance_tensors = {ONNX tensor name: key after "<preset>:"},
                           fully_padded_rows, pad_tokens_per_row)
presets: attnlrp, cp-lrp (where LXT has one for the family).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
MINILM_DIR = ROOT / ".cache" / "minilm"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_common import (attributed_tensors, float64_mode, import_lxt,  # noqa: E402
                          ort_tensor, rope_to_float64, save_npz, select_target)


# Presets per zoo family; "map" documents where the patch map comes from.
PRESETS = {
    "gpt2": ("attnlrp", "cp-lrp"),
    "llama": ("attnlrp", "cp-lrp"),
    "qwen2": ("attnlrp", "cp-lrp"),
    "qwen3": ("attnlrp", "cp-lrp"),
    "gemma3": ("attnlrp", "cp-lrp"),
    "bert": ("attnlrp",),          # LXT ships no cp_LRP map for BERT
    "vit": ("attnlrp", "cp-lrp"),  # assembled from LXT parts, see _vit_map
}
SKIPPED = {"cnn": "no LXT preset: LXT's efficient maps cover transformer families only"}
LXT_ATTR = {"attnlrp": "attnLRP", "cp-lrp": "cp_LRP"}


# ------------------------------------------------------------------ helpers

def _paths(name: str) -> tuple[Path, Path, Path]:
    d = MINILM_DIR if name == "minilm" else MODELS_DIR
    return d / f"{name}.onnx", d / f"{name}.ref.npz", d / f"{name}.lxt.npz"


def _ref_feeds(name: str) -> dict[str, np.ndarray]:
    with np.load(_paths(name)[1]) as z:
        return {k: z[k] for k in z.files if not k.startswith("out:")}


# --------------------------------------------------------------- patch maps

def _vit_map(preset: str) -> tuple[dict, str]:
    """LXT has no map for HF ViT (only torchvision's).  HF ViT has BERT's layer
    structure, so the map is assembled from LXT's own pieces: the generic HF
    attention wrapper (q,k grad /4, v /2 for AttnLRP; q,k stop-grad for CP-LRP),
    LXT's LayerNorm identity rule, LXT's BERT intermediate (identity rule on GELU)
    and the dropout no-op.  Same rules LXT's torchvision ViT cp_LRP map applies."""
    import torch
    import lxt.efficient.models.bert as lxt_bert
    from lxt.efficient.patches import (dropout_forward, layer_norm_forward, patch_attention,
                                       patch_cp_attention, patch_method)
    from transformers.models.vit import modeling_vit
    attn = patch_attention if preset == "attnlrp" else patch_cp_attention
    pmap = {
        torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        torch.nn.Dropout: partial(patch_method, dropout_forward),
        modeling_vit.ViTIntermediate: partial(patch_method, lxt_bert.BertIntermediate.forward),
        modeling_vit: attn,
    }
    desc = (f"assembled: nn.LayerNorm<-lxt.efficient.patches.layer_norm_forward, "
            f"nn.Dropout<-dropout_forward, ViTIntermediate<-lxt.efficient.models.bert."
            f"BertIntermediate.forward (identity rule on GELU), modeling_vit<-{attn.__name__}")
    return pmap, desc


def _patch(family: str, preset: str):
    """Apply the LXT map; returns (description, hf modeling module)."""
    import importlib
    import_lxt()
    from lxt.efficient import monkey_patch
    if family == "vit":
        pmap, desc = _vit_map(preset)
        from transformers.models.vit import modeling_vit as mod
    else:
        lmod = importlib.import_module(f"lxt.efficient.models.{family}")
        pmap = getattr(lmod, LXT_ATTR[preset])
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        desc = f"lxt.efficient.models.{family}.{LXT_ATTR[preset]}"
    monkey_patch(mod, pmap)
    return desc, mod


# ------------------------------------------------------------------- worker

def _find_down_proj_input(onnx_path: Path, weight: np.ndarray) -> str:
    """Name of the tensor multiplied with layer 0's down_proj weight in the ONNX graph."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    transposed = {n.output[0]: n.input[0] for n in g.node
                  if n.op_type == "Transpose" and n.input[0] in inits}
    hits = []
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2:
            continue
        b = n.input[1]
        trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
        if b in inits:
            w = inits[b] if trans_b else inits[b].T
        elif b in transposed:
            w = inits[transposed[b]]
        else:
            continue
        if w.shape == weight.shape and np.array_equal(w, weight):
            hits.append(n.input[0])
    assert len(hits) == 1, f"down_proj MatMul not unique: {hits}"
    return hits[0]


def worker(name: str, preset: str, out: Path, feeds_path: Path | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from zoo import SPECS, build_model
    torch.set_num_threads(1)
    spec = SPECS[name]
    family = "bert" if name == "minilm" else spec.family

    # Zoo weights first (bit-identical to the ONNX export), then patch.
    wrapper, _, _ = build_model(name)
    hf = wrapper.model
    desc, mod = _patch(family, preset)
    notes = []
    if family == "bert":
        # LXT's BERT map swaps the whole modeling_bert module for its own copy, so
        # existing instances keep the old classes: re-instantiate, load same weights.
        cls = getattr(mod, type(hf).__name__)
        kw = {"add_pooling_layer": False} if getattr(hf, "pooler", 0) is None else {}
        new = cls(hf.config, **kw)
        new.load_state_dict(hf.state_dict(), strict=True)
        hf = wrapper.model = new
        assert type(hf).__module__ == "lxt.efficient.models.bert"
        notes.append("BERT rebuilt from lxt.efficient.models.bert classes (LXT's map "
                     "replaces modeling_bert) with the zoo state_dict")
    hf.double().eval()
    for p in hf.parameters():
        p.requires_grad_(False)

    rope = rope_to_float64(hf)
    mode = float64_mode()

    feeds = _ref_feeds(name) if feeds_path is None else dict(np.load(feeds_path))
    leaves, call, more_notes = attributed_tensors(name, wrapper, feeds, _paths(name)[0])
    notes += more_notes

    # Diagnostic for BERT/ViT: relevance reaching the embedding block's output
    # (position / token-type / CLS embeddings and the patch bias absorb some
    # relevance before it reaches the graph input).
    emb_out = {}
    emb_mod = next((m for n, m in hf.named_modules() if n.endswith("embeddings")
                    and type(m).__name__.endswith("Embeddings")), None)
    if emb_mod is not None:
        def keep(_m, _a, o):
            o.retain_grad()
            emb_out["out"] = o
        emb_mod.register_forward_hook(keep)

    latent = {}
    if name == "llama" and preset == "attnlrp":
        def grab(_m, args):
            args[0].retain_grad()
            latent["mlp0"] = args[0]
        hook = hf.model.layers[0].mlp.down_proj.register_forward_pre_hook(grab)

    with mode:
        y = call()
    assert y.dtype == torch.float64
    target, sel = select_target(y, spec.output_name)
    sel.sum().backward()                            # rows are independent
    # no gradient reaches a leaf the rules cut off (CP-LRP: past keys meet only the softmax)
    rels = {n: (t * t.grad).detach() if t.grad is not None else torch.zeros_like(t).detach()
            for n, t in leaves.items()}

    (first, rel), *more = rels.items()
    arrays = {"target": target.numpy().astype(np.int64), "logits": y.detach().numpy(),
              f"{preset}:relevance": rel.numpy()}
    arrays.update({f"{preset}:relevance:{n}": r.numpy() for n, r in more})
    totals = sum(r.flatten(1).sum(1) for r in rels.values())
    meta = {
        "map": desc,
        "attn_implementation": hf.config._attn_implementation,
        "float64_rewrites": dict(mode.hits),
        "float32_leaks": dict(mode.leaks),
        "rope_inv_freq_float64": rope,
        "conservation": {"relevance_sum": totals.tolist(), "target_logit": sel.tolist(),
                         "ratio": (totals / sel).tolist()},
        "notes": notes,
    }
    if more:
        meta["attributed_tensors"] = list(rels)
        meta["conservation"]["relevance_sum_per_tensor"] = {
            n: r.flatten(1).sum(1).tolist() for n, r in rels.items()}
    if emb_out:
        e = emb_out["out"]
        et = (e * e.grad).flatten(1).sum(1)
        meta["conservation"]["embedding_block_output"] = {
            "module": type(emb_mod).__name__, "relevance_sum": et.tolist(),
            "ratio": (et / sel).tolist()}
    if feeds_path is None:
        with np.load(_paths(name)[1]) as z:
            ref = z[f"out:{spec.output_name}"]
        meta["max_abs_diff_vs_ref_npz_float32"] = float(np.abs(y.detach().numpy() - ref).max())

    if latent:
        hook.remove()
        a = latent["mlp0"]
        arrays[f"{preset}:latent:mlp0"] = (a * a.grad).detach().numpy()
        onnx_path = _paths(name)[0]
        w = hf.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
        tname = _find_down_proj_input(onnx_path, w)
        ort_val = ort_tensor(onnx_path, feeds, tname)
        err = float(np.abs(ort_val - a.detach().numpy()).max() / np.abs(ort_val).max())
        assert err < 1e-4, f"ONNX tensor {tname} does not match down_proj input ({err})"
        meta["latent_onnx_tensor"] = tname
        meta["latent_onnx_check_max_rel_err"] = err

    from importlib.metadata import version
    meta["versions"] = {"lxt": version("lxt"), "torch": torch.__version__,
                        "transformers": transformers.__version__}
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz(out, arrays)


# ------------------------------------------------------------------- parent

TARGET_CONVENTIONS = {
    "decoder": "target[b] = argmax_v logits[b, -1, v]; seed = logits[b, -1, target[b]]",
    "classifier": "target[b] = argmax_c logits[b, c]; seed = logits[b, target[b]]",
    "minilm": "output is last_hidden_state [b, s, h]; target[b] = argmax_h "
              "last_hidden_state[b, 0, h] (CLS position 0); seed = "
              "last_hidden_state[b, 0, target[b]]",
}


def _run_worker(name: str, preset: str, tmp: Path) -> dict:
    out = tmp / f"{name}.{preset}.npz"
    cmd = [sys.executable, __file__, "--worker", name, preset, str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name}/{preset} failed:\n{r.stderr[-3000:]}")
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def make_one(name: str, tmp: Path) -> dict:
    from zoo import MASKED_KINDS, SPECS
    spec = SPECS[name]
    family = "bert" if name == "minilm" else spec.family
    parts = {p: _run_worker(name, p, tmp) for p in PRESETS[family]}
    first = next(iter(parts.values()))
    arrays = {f"inputs:{k}": v for k, v in _ref_feeds(name).items()}
    arrays["target"], arrays["logits"] = first["target"], first["logits"]
    meta = {"model": name, "family": family, "presets": {}, "notes": [],
            "relevance_at": ("embedding output (input_ids graph)" if spec.input_kind == "ids"
                             else f"graph input {spec.input_name} (x * grad)"),
            "target_convention": TARGET_CONVENTIONS[
                "minilm" if name == "minilm" else
                "decoder" if first["logits"].ndim == 3 else "classifier"],
            "output": spec.output_name,
            "seeding": "one backward of sum_b seed[b]; relevance = x * x.grad",
            "float64": "model.double() (float32 zoo weights upcast); forward under a "
                       "TorchFunctionMode that rewrites float32 casts / dtype arguments "
                       "(softmax dtype, .float(), .to(float32), RMSNorm casts) to float64 "
                       "and makes float64 the default dtype; RoPE inv_freq recomputed in "
                       "float64 (counts: presets.<p>.float64_rewrites). The ONNX graphs "
                       "hold float32 constants (e.g. RoPE tables), which this does not mimic.",
            "lxt_rule_notes": "identity rule backward = f(x)/(x + 1e-10) (LXT epsilon); "
                              "norms: stop-gradient on the rsqrt/std factor"}
    for p, z in parts.items():
        assert np.array_equal(z["target"], arrays["target"]), f"{name}: target differs for {p}"
        pm = json.loads(str(z["meta"]))
        pm["logits_max_abs_diff_vs_first_preset"] = float(np.abs(z["logits"] - arrays["logits"]).max())
        for k in ("versions", "notes", "latent_onnx_tensor", "latent_onnx_check_max_rel_err",
                  "attributed_tensors"):
            if k in pm:
                v = pm.pop(k)
                if k == "notes":
                    meta["notes"] += [n for n in v if n not in meta["notes"]]
                else:
                    meta[k] = v
        meta["presets"][p] = pm
        arrays.update({k: v for k, v in z.items() if k.startswith(f"{p}:")})
    if spec.notes:
        meta["notes"].append(f"zoo: {spec.notes}")
    if spec.input_kind in MASKED_KINDS:
        _describe_padded_batch(meta, arrays, spec.input_name)
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    out = _paths(name)[2]
    save_npz(out, arrays)
    return meta


def _describe_padded_batch(meta: dict, arrays: dict, input_name: str) -> None:
    """Masked models: which rows are fully padded, and the npz key of every attributed tensor's
    relevance ("<preset>:" + key; the first is the usual "<preset>:relevance")."""
    mask = arrays["inputs:attention_mask"]
    arrays["fully_padded_rows"] = np.flatnonzero(~mask.any(1)).astype(np.int64)
    meta["fully_padded_rows"] = arrays["fully_padded_rows"].tolist()
    meta["pad_tokens_per_row"] = (mask == 0).sum(1).tolist()
    names = meta.pop("attributed_tensors", None) or [input_name]
    meta["relevance_tensors"] = {n: "relevance" if i == 0 else f"relevance:{n}"
                                 for i, n in enumerate(names)}
    if len(names) > 1:
        meta["relevance_at"] = (f"embedding output (ONNX tensor {names[0]}) and the float graph "
                                f"inputs {', '.join(names[1:])} (x * grad)")


def _ensure_minilm() -> bool:
    if _paths("minilm")[0].exists():
        return True
    print("[lxt] exporting minilm to .cache/minilm (tools/export_models.export_one) ...", flush=True)
    code = ("import json,sys; sys.path.insert(0,'tools'); import torch; torch.set_num_threads(1);"
            "from export_models import export_one, MINILM_DIR; e=export_one('minilm', MINILM_DIR);"
            "(MINILM_DIR/'MANIFEST.json').write_text(json.dumps(e, indent=1)+'\\n')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return r.returncode == 0 and _paths("minilm")[0].exists()


def main(argv=None) -> int:
    from zoo import DEFAULT_MODELS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=DEFAULT_MODELS)
    ap.add_argument("--minilm", action="store_true", help="also .cache/minilm/minilm.lxt.npz")
    ap.add_argument("--worker", nargs=3, metavar=("NAME", "PRESET", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--feeds", help=argparse.SUPPRESS)  # a worker on other feeds (tools/lxt_adapter.py)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]), Path(args.feeds) if args.feeds else None)
        return 0

    names = list(args.only or DEFAULT_MODELS)
    if args.minilm:
        names.append("minilm")
    failed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in SKIPPED:
                print(f"[skip] {name}: {SKIPPED[name]}")
                continue
            if name == "minilm" and not _ensure_minilm():
                failed[name] = "no .cache/minilm/minilm.onnx"
                continue
            try:
                meta = make_one(name, Path(tmp))
            except Exception as e:  # keep going; reported at the end
                failed[name] = str(e)
                print(f"[fail] {name}: {e}", flush=True)
                continue
            for p, pm in meta["presets"].items():
                r = ", ".join(f"{v:.4f}" for v in pm["conservation"]["ratio"])
                print(f"[lxt] {name:12s} {p:8s} sum(R)/logit per row: {r}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
