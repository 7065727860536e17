#!/usr/bin/env python
"""Export a tiny random decoder with ``optimum-cli export onnx`` (the KV-cache graph optimum users
deploy: input_ids, attention_mask, position_ids, past_key_values.* -> logits, present.*).

Usage:
    python tools/export_optimum.py                      # gpt2 -> models/optimum/gpt2_decoder.onnx
    python tools/export_optimum.py --family llama --out /tmp/opt   # another family, for a look

Nothing is downloaded: the model is built from a config under a fixed seed, every parameter gets
``0.1 * N(0, 1)`` noise (tools/zoo.perturb_), it is saved with ``save_pretrained`` into a temporary
folder and exported from there by optimum's CLI with ``HF_HUB_OFFLINE=1``. models/optimum/MANIFEST.json
records the config, command, versions, sha256 and onnxruntime-vs-torch logits error on a padded batch.
tests/test_optimum.py compares reflrp with onnxruntime on the committed file (no torch there).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
FAMILIES = {  # family -> (config class, model class, config)
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_layer=2, n_head=2, n_embd=32, n_inner=64, vocab_size=64,
                                                   n_positions=32)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", TINY),
    "mistral": ("MistralConfig", "MistralForCausalLM", TINY | {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", TINY),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", TINY | {"pad_token_id": 0}),
    "gptneox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {k: v for k, v in TINY.items() if k != "num_key_value_heads"}),
}
COMMAND = ["optimum-cli", "export", "onnx", "--task", "text-generation-with-past"]


def build(family: str, folder: Path):
    """The random model, saved with save_pretrained into ``folder``."""
    import torch
    import transformers
    sys.path.insert(0, str(ROOT / "tools"))
    from zoo import perturb_
    cfg_cls, model_cls, config = FAMILIES[family]
    torch.manual_seed(SEED)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**config)).eval()
    perturb_(model, SEED)
    model.save_pretrained(folder)
    return model


def export(folder: Path, out: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run(COMMAND + ["--model", str(folder), str(out)], check=True, env=env)


def padded_feeds(batch: int = 2, seq: int = 5, pad: int = 2, vocab: int = 64) -> dict:
    """A first step (no past) with row 0 left-padded by ``pad`` tokens, as generate() feeds it."""
    rng = np.random.default_rng(SEED)
    mask = np.ones((batch, seq), np.int64)
    mask[0, :pad] = 0
    position = np.cumsum(mask, -1) - 1
    position[mask == 0] = 1
    return {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64), "attention_mask": mask,
            "position_ids": position.astype(np.int64)}


def ort_vs_torch(model, path: Path) -> float:
    """Max |onnxruntime - torch| of the logits on the padded first step (empty past)."""
    import onnxruntime as ort
    import torch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = padded_feeds(vocab=model.config.vocab_size)
    full = dict(feeds)
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            full[i.name] = np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
    names = [i.name for i in session.get_inputs()]
    logits = session.run(["logits"], {k: v for k, v in full.items() if k in names})[0]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, use_cache=False).logits.numpy()
    return float(np.abs(logits - want).max())


def versions() -> dict:
    from importlib.metadata import version
    return {p: version(p) for p in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="gpt2")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "optimum", help="folder for NAME_decoder.onnx")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.family, Path(tmp) / "model")
        export(Path(tmp) / "model", Path(tmp) / "onnx")
        target = args.out / f"{args.family}_decoder.onnx"
        shutil.copyfile(Path(tmp) / "onnx" / "model.onnx", target)
    data = target.read_bytes()
    entry = {"file": target.name, "family": args.family, "hf_class": FAMILIES[args.family][1],
             "config": FAMILIES[args.family][2], "seed": SEED, "perturbation": "0.1 * N(0, 1) (tools/zoo.perturb_)",
             "command": " ".join(COMMAND + ["--model", "<save_pretrained folder>", "<out>"]),
             "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "ort_vs_torch_logits_max_abs": ort_vs_torch(model, target), **versions()}
    manifest_path = args.out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[args.family] = entry
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
