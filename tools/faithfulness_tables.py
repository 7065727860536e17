#!/usr/bin/env python
"""Markdown tables of ``reflrp evaluate --json`` results, as recorded in docs/faithfulness.md.

Usage:
    python tools/faithfulness_tables.py RESULT.json [RESULT.json ...] [--split ARRAY --dataset FILE.npz]
    python tools/faithfulness_tables.py --tiny-lm docs/faithfulness [--samples N]

One table per file: methods sorted by ABC, with the 95 % interval, precision@k where the dataset had
ground truth, and the integrated-gradients completeness error. ``--split negated --dataset
demo/sentiment_test.npz`` adds the mean ABC of the samples where that boolean array is true / false.

``--tiny-lm DIR`` runs the trained tiny language model's evaluation (demo/tiny_lm.onnx) and writes its
JSON files and curves into DIR, then prints their tables:

- retrieval (demo/tiny_lm_retrieval.npz, 300 prompts "NAME has a COLOUR OBJECT . ... what does NAME have ?
  a"): target the next-token logit of the answer's colour at the last position ("a"); ground truth
  ``decisive`` = the supporting sentence "NAME has a COLOUR OBJECT" (k = 5). Two stricter readings are
  added per method: ``precision_content`` (k = 3: the supporting name, the supporting colour and the
  name in the question, the tokens the answer cannot be found without) and ``top1_colour`` (the share of
  prompts whose most relevant token is the supporting colour itself).
- agreement (demo/tiny_lm_agreement.npz, 300 "the (ADJ) NOUN PREP the NOUN'" prompts whose distractor
  noun has the other number): ground truth the subject noun (k = 1); two targets: the next-token logit of
  the correct verb form (``tiny_lm_agreement_zero.json``) and the minimal-pair contrast logit(correct
  form) - logit(wrong form) of that verb (``tiny_lm_agreement_contrast_zero.json``), the quantity that
  carries the number. The contrast is the same model with the unembedding column of each verb form
  replaced by (its column - its other form's column), a constant linear head (the embedding, tied to
  the head in the file, keeps the original matrix).

Tokens are removed by a zero embedding; the tokenizer's special tokens ([PAD], [BOS], [EOS], [UNK]) and
padding are never removed; 10 steps; seeded (seed 0), one BLAS thread.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TINY_METHODS = ("attnlrp", "cp-lrp", "epsilon", "gradient", "grad-x-input", "integrated-gradients", "smoothgrad",
                "random", "rollout", "occlusion")
TINY_SPECIALS = (0, 1, 2, 3)   # [PAD], [BOS], [EOS], [UNK] of demo/tiny_lm_tokenizer.json


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


def retrieval_content(decisive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the supporting name + colour + the question's name, the supporting colour's position).

    Rows end "... what does NAME have ? a", so the question's name is 4 from the end; the supporting span
    is "NAME has a COLOUR OBJECT" (its 1st and 4th positions)."""
    content = np.zeros_like(decisive)
    colour = np.empty(len(decisive), dtype=np.int64)
    for i, row in enumerate(decisive):
        span = np.flatnonzero(row)
        assert len(span) == 5, f"retrieval row {i}: the supporting span has {len(span)} tokens, not 5"
        content[i, [span[0], span[3], decisive.shape[1] - 4]] = True
        colour[i] = span[3]
    return content, colour


def tiny_lm_extras(ev, data: dict, seed: int = 0) -> dict:
    """Per method: precision@k on the content tokens and the top-1 = supporting colour rate, with CIs."""
    from reflrp.perturbation import bootstrap_ci, order, precision_at_k
    content, colour = retrieval_content(data["decisive"][:ev.samples])
    ties = ev_ties(ev)
    out = {}
    for name, r in ev.methods.items():
        p = precision_at_k(r.scores, content, ev.allowed, ties)
        first = order(r.scores, ev.allowed, ties, True).argmin(axis=1)   # the unit ranked 0
        top1 = (first == colour).astype(np.float64)
        out[name] = {"precision_content": float(p.mean()), "precision_content_ci": list(bootstrap_ci(p, seed)),
                     "top1_colour": float(top1.mean()), "top1_colour_ci": list(bootstrap_ci(top1, seed))}
    return out


def ev_ties(ev) -> np.ndarray:
    """The seeded tie-breaking order reflrp.evaluate used (same seed, same shape)."""
    return np.random.default_rng(ev.seed).random((ev.samples,) + tuple(ev.grid))


def contrast_model(path: Path, pairs: list) -> "onnx.ModelProto":
    """The tiny LM whose logit of each verb form is logit(form) - logit(other form) (see the docstring)."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(str(path))
    head = next(n for n in proto.graph.node if n.op_type == "Transpose" and n.output[0] in
                {i for m in proto.graph.node if m.op_type == "MatMul" and "logits" in m.output for i in m.input})
    init = {i.name: i for i in proto.graph.initializer}
    w = numpy_helper.to_array(init[head.input[0]])            # (vocab, hidden), tied with the embedding
    c = w.copy()
    for a, b in pairs:
        c[a], c[b] = w[a] - w[b], w[b] - w[a]
    proto.graph.initializer.append(numpy_helper.from_array(c, "contrast_head.weight"))
    head.input[0] = "contrast_head.weight"
    return proto


def verb_pairs(demo: Path) -> list:
    import json as _json
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(demo / "tiny_lm_tokenizer.json"))
    verbs = _json.loads((demo / "tiny_lm_ground_truth.json").read_text())["agreement"]["verbs"]
    return [(tok.token_to_id(s), tok.token_to_id(p)) for s, p in verbs]


def run_tiny_lm(out_dir: Path, samples=None) -> list[Path]:
    import reflrp
    from reflrp import report
    from reflrp.evaluate_cli import dumps
    demo = Path(__file__).resolve().parent.parent / "demo"
    model = reflrp.load(demo / "tiny_lm.onnx")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    contrast = reflrp.load(contrast_model(demo / "tiny_lm.onnx", verb_pairs(demo)))
    for task, net, tag in (("retrieval", model, ""), ("agreement", model, ""), ("agreement", contrast, "_contrast")):
        with np.load(demo / f"tiny_lm_{task}.npz") as z:
            data = {k: z[k] for k in z.files}
        ev = reflrp.evaluate(net, data, methods=TINY_METHODS, steps=10, mode="zero", samples=samples,
                             ignore_ids=list(TINY_SPECIALS), progress=sys.stderr.isatty())
        result = ev.to_json()
        result["task"] = task + (" (target: logit(correct verb) - logit(wrong form))" if tag else "")
        if task == "retrieval":
            for name, extra in tiny_lm_extras(ev, data).items():
                result["methods"][name].update(extra)
        path = out_dir / f"tiny_lm_{task}{tag}_zero.json"
        path.write_text(dumps(result))
        (out_dir / f"tiny_lm_{task}{tag}_zero.png").write_bytes(report.curves_png(ev))
        written.append(path)
    return written


def content_table(data: dict) -> str:
    """The retrieval extras: precision on the content tokens and the top-1 = colour rate."""
    lines = ["| method | precision@3, content tokens | 95% CI | top-1 = supporting colour | 95% CI |",
             "|---|---|---|---|---|"]
    for name, m in sorted(data["methods"].items(), key=lambda kv: -kv[1]["precision_content"]):
        lines.append(f"| {name} | {m['precision_content']:.3f} | [{m['precision_content_ci'][0]:.3f}, "
                     f"{m['precision_content_ci'][1]:.3f}] | {m['top1_colour']:.3f} | "
                     f"[{m['top1_colour_ci'][0]:.3f}, {m['top1_colour_ci'][1]:.3f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", help="reflrp evaluate --json files")
    ap.add_argument("--tiny-lm", type=Path, metavar="DIR", help="run the tiny LM's evaluation, write into DIR")
    ap.add_argument("--samples", type=int, help="with --tiny-lm: the first N prompts of each task (default all)")
    ap.add_argument("--split", help="a boolean array of the dataset to split the ABC by")
    ap.add_argument("--dataset", help="the .npz holding --split")
    args = ap.parse_args(argv)
    split = None
    if args.split:
        with np.load(args.dataset) as z:
            split = (args.split, z[args.split].astype(bool))
    results = list(args.results)
    if args.tiny_lm is not None:
        results += [str(p) for p in run_tiny_lm(args.tiny_lm, args.samples)]
    if not results:
        ap.error("give RESULT.json files or --tiny-lm DIR")
    for path in results:
        data = json.loads(open(path).read())
        units = "patches" if data["units"] == "patch" else data["units"] + "s"
        print(f"{path}: {data['samples']} samples, {units} removed by '{data['mode']}', {data['steps']} steps, "
              f"target {data['measure']} of the {data['target']} class\n")
        print(table(data, split) + "\n")
        if "precision_content" in next(iter(data["methods"].values())):
            print(content_table(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
