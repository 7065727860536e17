#!/usr/bin/env python
"""Architectures reflrp was never built with: tiny random-weight models of many transformers families, exported
to ONNX, loaded, run against onnxruntime and explained (default preset, default ``wrt``).

Usage:
    python tools/hf_sweep.py                      # every family below -> docs/architectures.md
    python tools/hf_sweep.py --only Mistral Bert  # some families, the tables printed only
    python tools/hf_sweep.py --no-kv              # without the KV-cache exports (optimum-cli)

Each (family, exporter) runs in its own subprocess (a crash or a hang is one row). A family is built from its
config class with 2 layers, hidden 32, 4 heads (2 key/value heads where the family has GQA), vocabulary 100,
eager attention, seeded weights; decoders as ``*ForCausalLM``, encoders as ``*ForSequenceClassification``, both
fed ``input_ids`` and ``attention_mask`` (batch 2, 7 tokens, the second row padded after 5). Exporters:
``torch.onnx.export(dynamo=True, opset_version=18)`` with dynamic batch and sequence, and the legacy exporter
(opset 17). Columns: onnxruntime against torch (the export's own error), reflrp's forward against onnxruntime,
whether ``reflrp.explain`` closed its books with finite relevance, and ``reflrp.gradient`` against torch
autograd (float64). Needs torch and transformers (the optional tool dependencies, README).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architectures.md"

DECODERS = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma", "Gemma2", "Phi", "Olmo", "Cohere", "StableLm",
            "Starcoder2", "Granite", "GPT2", "GPTNeoX", "GPTJ", "CodeGen", "Falcon", "Bloom", "OPT", "BioGpt", "GPTNeo")
ENCODERS = ("Bert", "Roberta", "DistilBert", "Albert", "Electra", "XLMRoberta", "MPNet")
GQA = {"Llama", "Mistral", "Qwen2", "Qwen3", "Gemma", "Gemma2", "Phi", "Olmo", "Cohere", "StableLm", "Starcoder2",
       "Granite"}
LAYERS, HIDDEN, HEADS, VOCAB, POSITIONS = 2, 32, 4, 100, 64
# variants: a family with config changes that reach other graph patterns (windowed masks, rope scalings, biases)
VARIANTS = {
    "Phi3": ("Phi3", {"pad_token_id": 0}),
    "Llama+bias": ("Llama", {"attention_bias": True, "mlp_bias": True}),
    "Llama+rope-llama3": ("Llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "Llama+rope-yarn": ("Llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 16}}),
    "Llama+rope-linear": ("Llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "Mistral+window4": ("Mistral", {"sliding_window": 4}),
    "Qwen2+window4": ("Qwen2", {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 1}),
    "Gemma2+window4": ("Gemma2", {"sliding_window": 4}),
}


def config(name: str):
    """The family's tiny config (each family names its sizes its own way), with a variant's changes."""
    import transformers
    family, changes = VARIANTS.get(name, (name, {}))
    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=2 * HIDDEN,
                  vocab_size=VOCAB, max_position_embeddings=POSITIONS)
    special = {
        "GPT2": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=POSITIONS),
        "GPTJ": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=POSITIONS, rotary_dim=4),
        "CodeGen": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=POSITIONS,
                        n_ctx=POSITIONS, rotary_dim=4),
        "GPTNeo": dict(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, vocab_size=VOCAB,
                       max_position_embeddings=POSITIONS, attention_types=[[["global", "local"], 1]], window_size=8),
        "Falcon": dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB,
                       new_decoder_architecture=False, multi_query=True),
        "Bloom": dict(hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB),
        "OPT": dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=2 * HIDDEN,
                    vocab_size=VOCAB, max_position_embeddings=POSITIONS, word_embed_proj_dim=HIDDEN),
        "DistilBert": dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=2 * HIDDEN, vocab_size=VOCAB,
                           max_position_embeddings=POSITIONS),
        "Albert": dict(common, embedding_size=16),
        "GPTNeoX": dict(common, rotary_pct=0.5),
        "Gemma": dict(common, head_dim=8),
        "Gemma2": dict(common, head_dim=8),
    }
    kwargs = special.get(family, common)
    if family in GQA:
        kwargs = dict(kwargs, num_key_value_heads=2)
    cfg = getattr(transformers, f"{family}Config")(**dict(kwargs, **changes))
    cfg._attn_implementation = "eager"
    cfg.use_cache = False
    return cfg


def one(family: str, exporter: str) -> dict:
    """Build, export, run and explain one family; the row (in a subprocess: see main)."""
    import numpy as np
    import torch
    import transformers
    torch.manual_seed(0)
    encoder = VARIANTS.get(family, (family,))[0] in ENCODERS
    auto = transformers.AutoModelForSequenceClassification if encoder else transformers.AutoModelForCausalLM
    model = auto.from_config(config(family)).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            extra = {} if encoder else {"use_cache": False}
            return self.m(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    wrapped = Logits(model).eval()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 5:] = 0
    path = Path(tempfile.gettempdir()) / f"hf_sweep_{family.replace('+', '_')}_{exporter}.onnx"
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["logits"])
    with torch.no_grad():
        ref = wrapped(ids, mask).numpy()
        if exporter == "dynamo":
            dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
            torch.onnx.export(wrapped, (ids, mask), str(path), dynamo=True, opset_version=18, dynamic_shapes=dims, **names)
        else:
            axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
            torch.onnx.export(wrapped, (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    import onnxruntime as ort
    import reflrp
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    row = {"ort_vs_torch": float(np.abs(theirs - ref).max() / np.abs(ref).max())}
    m = reflrp.load(str(path))
    ours = next(iter(m.run(feeds).values()))
    row["forward_vs_ort"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    att = reflrp.explain(m, feeds)
    relevance = np.asarray(att.relevance[att.wrt[0]])
    row["explain"] = "ok" if att.conservation.ok and np.isfinite(relevance).all() else (
        f"books {'closed' if att.conservation.ok else 'open'}, finite: {bool(np.isfinite(relevance).all())}")
    seed = argmax_seed(ref)
    ours_g = np.asarray(reflrp.gradient(m, feeds, target=seed, dtype="float64")[att.wrt[0]])
    theirs_g = torch_gradient_at_lookup(wrapped, model.get_input_embeddings(), ids, mask, seed)
    row["gradient_vs_torch"] = float(np.abs(ours_g - theirs_g).max() / np.abs(theirs_g).max())
    return row


def argmax_seed(logits):
    """1 at each row's largest logit (a decoder's at the last position), 0 elsewhere: the output gradient."""
    import numpy as np
    seed = np.zeros(logits.shape)
    last = logits if logits.ndim == 2 else logits[:, -1]
    rows = np.arange(len(last))
    if logits.ndim == 2:
        seed[rows, last.argmax(-1)] = 1.0
    else:
        seed[rows, -1, last.argmax(-1)] = 1.0
    return seed


def torch_gradient_at_lookup(wrapped, embedding, ids, mask, seed):
    """torch autograd in float64: d sum(seed * logits) / d (the word-embedding lookup's output), the tensor the
    ONNX graph's embedding Gather computes (before any scaling a family applies after the lookup); HF's float32
    casts run in float64 and Python constants as the graph's float32 ones (tools/torch_common.float64_mode)."""
    import torch
    import torch.nn.functional as F
    looked_up, plain = [], F.embedding

    def lookup(input, weight, *args, **kwargs):
        out = plain(input, weight, *args, **kwargs)
        if weight is embedding.weight:
            out.retain_grad()
            looked_up.append(out)
        return out
    from torch_common import float64_mode
    model64 = wrapped.double()
    F.embedding = lookup
    try:
        with float64_mode(graph_constants=True):  # HF's float32 round trips in float64, constants as the graph's
            logits = model64(ids, mask)
            (logits * torch.as_tensor(seed)).sum().backward()
    finally:
        F.embedding = plain
    return looked_up[0].grad.numpy()


def one_kv(family: str, new_tokens: int = 6) -> dict:
    """The family exported with its KV cache by optimum (``optimum-cli export onnx --task
    text-generation-with-past``): ``reflrp.generate`` with and without the cache (same tokens?), and its logits
    against onnxruntime decoding the same tokens step by step on the same file; a left-padded row included."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers
    import reflrp
    from reflrp.generate import positions_of
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix=f"hf_sweep_kv_{family.replace('+', '_')}_"))
    transformers.AutoModelForCausalLM.from_config(config(family)).eval().save_pretrained(work / "hf")
    done = subprocess.run(["optimum-cli", "export", "onnx", "--model", str(work / "hf"), "--task",
                           "text-generation-with-past", str(work / "onnx")], capture_output=True, text=True)
    if done.returncode:
        said = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise RuntimeError(f"optimum-cli export failed: {said[-1][:120]}")
    path = work / "onnx" / "model.onnx"
    ids = np.random.default_rng(2).integers(1, VOCAB, (2, 5))
    mask = np.ones((2, 5), np.int64)
    mask[1, :2] = 0  # left padding
    model = reflrp.load(str(path))
    cached = reflrp.generate(model, ids, new_tokens, attention_mask=mask, use_cache=True)
    full = reflrp.generate(model, ids, new_tokens, attention_mask=mask, use_cache=False)
    row = {"same_tokens": bool(np.array_equal(cached.tokens, full.tokens))}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past = [n for n in inputs if n.startswith("past_key_values")]
    feeds = {"input_ids": ids, "attention_mask": mask}
    for n in past:
        heads, size = inputs[n].shape[1], inputs[n].shape[3]
        feeds[n] = np.zeros((2, heads, 0, size), np.float32)
    tokens, steps = ids, []
    for k in range(new_tokens):
        if "position_ids" in inputs:
            feeds["position_ids"] = positions_of(feeds["attention_mask"])[:, -feeds["input_ids"].shape[1]:]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {n: feeds[n] for n in inputs})))
        last = outs["logits"][:, -1]
        steps.append(last)
        nxt = cached.tokens[:, ids.shape[1] + k][:, None]  # onnxruntime is fed reflrp's choice
        tokens = np.concatenate([tokens, nxt], axis=1)
        feeds = {"input_ids": nxt, "attention_mask": np.concatenate([feeds["attention_mask"], np.ones((2, 1), np.int64)], 1),
                 **{n: outs[n.replace("past_key_values", "present")] for n in past}}
    theirs = np.stack(steps, axis=1)
    row["logits_vs_ort"] = float(np.abs(cached.logits - theirs).max() / np.abs(theirs).max())
    row["ort_picks_same"] = bool(np.array_equal(theirs.argmax(-1), cached.new))
    matrix, att = cached.explain()
    causal = all(not np.any(matrix[:, k, ids.shape[1] + k:]) for k in range(new_tokens))  # no later token gets any
    row["explain"] = "ok" if all(c.ok for c in att.conservation) and np.isfinite(matrix).all() and causal else (
        f"books {'closed' if all(c.ok for c in att.conservation) else 'open'}, lower triangular: {causal}")
    return row


def run_child(family: str, exporter: str, timeout: float = 600) -> dict:
    call = f"one_kv({family!r})" if exporter == "optimum-kv" else f"one({family!r}, {exporter!r})"
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tools')!r}); " \
           f"import hf_sweep; print('ROW', json.dumps(hf_sweep.{call}))"
    try:
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if rows:
        return json.loads(rows[-1])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]  # the exception's first line
    last = (raised or lines or ["(no output)"])[-1]
    where = "export" if any(k in proc.stderr for k in ("torch.onnx", "torch.export", "optimum-cli export")) else "run"
    if "reflrp" in proc.stderr.split("Traceback")[-1]:
        where = "reflrp"
    return {"error": f"{where}: {last[:160]}"}


def markdown(columns: list[tuple[str, str, object]], rows: list[dict]) -> str:
    """A markdown table of ``columns`` (title, alignment "l" / "r", cell function of a row, or None for the
    explain column); a failed row shows its family (and exporter), dashes, and its error where explain goes."""
    out = ["| " + " | ".join(t for t, _, _ in columns) + " |", "|" + "|".join("---:" if a == "r" else "---"
                                                                          for _, a, _ in columns) + "|"]
    for r in rows:
        if "error" in r:
            cells = [r["error"].replace("|", "/") if cell is None else cell(r) if title in ("family", "exporter")
                     else "—" for title, _, cell in columns]
        else:
            cells = [r["explain"] if cell is None else cell(r) for _, _, cell in columns]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    return markdown([("family", "l", lambda r: r["family"]), ("exporter", "l", lambda r: r["exporter"]),
                     ("onnxruntime vs torch", "r", lambda r: f"{r['ort_vs_torch']:.1e}"),
                     ("reflrp forward vs onnxruntime", "r", lambda r: f"{r['forward_vs_ort']:.1e}"),
                     ("explain", "l", None),
                     ("reflrp.gradient vs torch autograd (float64)", "r", lambda r: f"{r['gradient_vs_torch']:.1e}")],
                    rows)


def kv_table(rows: list[dict]) -> str:
    yes = lambda flag: "yes" if flag else "NO"  # noqa: E731
    return markdown([("family", "l", lambda r: r["family"]),
                     ("generate: same tokens with and without the cache", "l", lambda r: yes(r["same_tokens"])),
                     ("logits vs onnxruntime step by step", "r", lambda r: f"{r['logits_vs_ort']:.1e}"),
                     ("onnxruntime picks the same tokens", "l", lambda r: yes(r["ort_picks_same"])),
                     ("explain the generated tokens", "l", None)], rows)


def is_decoder(name: str) -> bool:
    return VARIANTS.get(name, (name,))[0] not in ENCODERS


def sweep(families, exporters) -> list[dict]:
    rows = []
    for family in families:
        for exporter in exporters:
            row = {"family": family, "exporter": exporter, **run_child(family, exporter)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="family names (config class without 'Config')")
    ap.add_argument("--exporters", nargs="*", default=["dynamo", "legacy"])
    ap.add_argument("--no-kv", action="store_true", help="skip the KV-cache exports (optimum) of the decoders")
    args = ap.parse_args(argv)
    families = args.only or list(DECODERS + ENCODERS + tuple(VARIANTS))
    rows = sweep(families, args.exporters)
    kv_rows = [] if args.no_kv else sweep([f for f in families if is_decoder(f)], ["optimum-kv"])
    text = table(rows) + ("\n\n" + KV_HEAD + kv_table(kv_rows) if kv_rows else "")
    if args.only is None:
        import torch
        import transformers
        DOC.write_text(DOC_HEAD.format(torch=torch.__version__, transformers=transformers.__version__) + text + "\n")
        print(f"wrote {DOC.relative_to(ROOT)}")
    else:
        print(text)
    return 0


DOC_HEAD = """# Architectures beyond the zoo

Generated by `python tools/hf_sweep.py` (torch {torch}, transformers {transformers}): tiny random-weight models of
transformers families that reflrp's zoo and tests do not hold, each exported by both torch exporters, loaded by
reflrp, run against onnxruntime on the same file and explained with the default preset (books closed and finite
relevance: "ok"). Relative errors are max |difference| / max |reference| over the logits. A row with an error
names where it happened: "export" (torch could not export the model: not reflrp's), "run" (onnxruntime or torch),
"reflrp" (a load, forward or explain failure: a bug to fix). The last column checks the adjoints every rule is
built on, against an independent source: `reflrp.gradient` of each row's top logit (a decoder's at the last
position) at the word-embedding lookup, in float64, against torch autograd on the same weights in float64 (HF's
float32 casts kept in float64, constants as the graph's). Variants (`+`) change a family's config to reach other
graph patterns: biases, RoPE scalings, sliding windows shorter than the 7 tokens. The relevance itself is checked
against LXT on the zoo's families (models/*.lxt.npz).

"""

KV_HEAD = """## With the KV cache

Each decoder saved from its config and exported by `optimum-cli export onnx --task text-generation-with-past`
(`past_key_values.<i>.key/value` inputs, `present.<i>.*` outputs). `reflrp.generate` decodes 6 tokens greedily
after a 5-token prompt (the second row left-padded by 2) with the cache and without it; onnxruntime then decodes
the same tokens step by step on the same file, fed the cache it returns, and its logits are compared with the
ones reflrp chose from (max |difference| / max |logit|). The generated tokens are explained in one pass
(`Generation.explain`: one target per token); "ok": every token's books closed, the matrix finite and lower
triangular (no token gets relevance from tokens after it).

"""


if __name__ == "__main__":
    sys.exit(main())
