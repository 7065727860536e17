#!/usr/bin/env python
"""Knowledge neurons in the trained tiny language model (demo/tiny_lm.onnx), found by relevance.

Usage:
    python tools/knowledge_neurons.py [--demo DIR] [--out docs/latent-features] [--draws 8] [--facts N]

For every memorised fact ("the capital of france is" -> "paris", 40 facts, 4 trained templates each):

1. **Choosing units.** In each layer's MLP activation (the input of the down projection, 192 units) and
   residual stream (the block's output, 64 units), a unit's score for the fact is its AttnLRP relevance
   for the answer's logit, summed over positions and averaged over the fact's 4 prompts. Baselines: k
   random units (``--draws`` draws per fact), the k most activated units (activation at the last
   position, averaged over the prompts), the k largest |activation| (summed over positions), and
   gradient x activation (summed over positions) — the attribution knowledge-neuron papers use.
2. **Knockout.** Zero the k units (every position) and measure the drop of p(answer) on the fact's own
   prompts, on its held-out paraphrase (a template it was never trained in, never used to choose the
   units), and on the *other* facts' prompts (same relation with another answer; the other relation):
   specificity. "layers": k units in every layer at once.
3. **Steering.** Multiply the fact's k most relevant units by a scale s (every position) in prompts that
   do not ask for the fact (the same relation for another entity whose answer differs; the other
   relation) and count the prompts whose greedy next token becomes the fact's answer; the same with k
   random units.

Per fact the values are averaged over its prompts (and random draws); the tables give the mean over facts
with a percentile-bootstrap 95 % interval over facts (2000 resamples, seeded). Writes
``knockout.json`` and ``steering.json`` under ``--out``. Only reflrp and numpy: no torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one BLAS thread (a shared machine)
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reflrp  # noqa: E402
from reflrp.perturbation import bootstrap_ci  # noqa: E402

KS = (1, 5, 20)
SCALES = (2.0, 5.0, 10.0, 20.0)
STEER_KS = (5, 20)
METHODS = ("relevance", "random", "activation", "abs activation", "grad x act")
GROUPS = ("target", "paraphrase", "same relation", "other relation", "agreement")
STEERED = ("same relation", "other relation", "agreement")
SEED = 0


@dataclass
class Fact:
    relation: str
    entity: str
    answer: int             # the answer's token id
    rows: list              # rows of the prompt batch holding its trained templates
    paraphrase: int         # row of its held-out template
    scores: dict = field(default_factory=dict)   # (tensor, method) -> per-unit score


def prompt_batch(items: list[dict], pad: int) -> dict:
    """Left-padded ``input_ids`` / ``attention_mask`` (as the model was trained and exported)."""
    width = max(len(it["input_ids"]) for it in items)
    ids = np.full((len(items), width), pad, np.int64)
    mask = np.zeros_like(ids)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, width - n:], mask[r, width - n:] = it["input_ids"], 1
    return {"input_ids": ids, "attention_mask": mask}


def layer_tensors(model) -> dict:
    """Per layer the MLP activation (what the down projection reads: a MatMul with an (intermediate,
    hidden) weight) and the residual stream after the block (the Add of that projection's output)."""
    g = model.graph
    out = {}
    weights = {n.name: g.initializers[n.inputs[1]].shape for n in g.nodes
               if n.op_type == "MatMul" and n.inputs[1] in g.initializers}
    widest = max(shape[0] for shape in weights.values())  # the intermediate size
    downs = [n for n in g.nodes if n.name in weights and weights[n.name][0] == widest > weights[n.name][1]]
    for i, node in enumerate(downs):
        out[f"mlp{i}"] = node.inputs[0]
        adds = [c for c in g.consumers[node.outputs[0]] if c.op_type == "Add"]
        out[f"resid{i}"] = adds[0].outputs[0]
    return out


NEUTRAL = 40  # agreement prompts ("the dog near the cats" -> a verb) as prompts of another task


def facts_of(gt: dict, limit: int | None) -> tuple[list[Fact], list[dict]]:
    """The facts, and the prompt items in batch order: the trained templates, the held-out ones, then
    ``NEUTRAL`` agreement prompts."""
    items = gt["test_set"]["facts"] + gt["test_set"]["paraphrase"] + gt["test_set"]["agreement"][:NEUTRAL]
    facts = []
    for f in gt["facts"]:
        rows = [r for r, it in enumerate(items) if it.get("entity") == f["entity"] and it.get("relation") == f["relation"]]
        trained = [r for r in rows if not items[r]["held_out"]]
        held = [r for r in rows if items[r]["held_out"]]
        facts.append(Fact(f["relation"], f["entity"], items[rows[0]]["answer_ids"][0], trained, held[0]))
    return (facts[:limit] if limit else facts), items


def good_tokens(items: list[dict]) -> np.ndarray:
    """(rows, vocabulary) True where a next token is right: a fact's answer; for agreement any verb of
    the subject's number."""
    return [it.get("correct_ids", it["answer_ids"][:1]) for it in items]


def answer_probability(logits: np.ndarray, good: list) -> np.ndarray:
    """p(a right next token) at the last position of every row (float64 softmax)."""
    z = np.asarray(logits, np.float64)[:, -1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.array([p[r, ids].sum() for r, ids in enumerate(good)])


def unit_scores(model, feeds, answers, tensors: dict) -> dict:
    """(tensor, method) -> (rows, units): relevance, activation at the last position, |activation| and
    gradient x activation summed over positions."""
    names = list(tensors.values())
    att = reflrp.explain(model, feeds, target=answers, keep=names)
    grad = reflrp.explain(model, feeds, target=answers, preset="gradient", keep=names)
    acts = model.run(feeds, dtype="float64", intermediates=names)
    out = {}
    for name in names:
        a = np.asarray(acts[name], np.float64)
        out[name, "relevance"] = np.asarray(att.relevance[name]).sum(axis=1)
        out[name, "activation"] = a[:, -1]
        out[name, "abs activation"] = np.abs(a).sum(axis=1)
        out[name, "grad x act"] = (np.asarray(grad.relevance[name]) * a).sum(axis=1)
    assert att.conservation.ok, att.conservation.text(top=3)
    return out


def top_units(score: np.ndarray, k: int) -> list[int]:
    return [int(u) for u in np.argsort(-score, kind="stable")[:k]]


def chosen(fact: Fact, tensor: str, method: str, k: int, n_units: int, rng) -> list[int]:
    if method == "random":
        return [int(u) for u in rng.choice(n_units, size=k, replace=False)]
    return top_units(fact.scores[tensor, method], k)


def summary(values) -> dict:
    v = np.asarray(values, np.float64)
    lo, hi = bootstrap_ci(v, seed=SEED)
    return {"mean": float(v.mean()), "ci": [lo, hi], "n": int(v.size)}


def groups(facts: list[Fact], items: list[dict], f: Fact) -> dict:
    """Rows per group for fact ``f``: its prompts, its paraphrase, the same relation with another answer,
    the other relation, and prompts of another task (agreement)."""
    facts_rows = [(r, it) for r, it in enumerate(items) if it["task"] == "facts" and not it["held_out"]]
    same = [r for r, it in facts_rows if it["relation"] == f.relation and it["answer_ids"][0] != f.answer]
    other = [r for r, it in facts_rows if it["relation"] != f.relation]
    agreement = [r for r, it in enumerate(items) if it["task"] == "agreement"]
    return {"target": f.rows, "paraphrase": [f.paraphrase], "same relation": same, "other relation": other,
            "agreement": agreement}


def knockout(model, feeds, answers, facts, items, tensors, draws: int, log) -> dict:
    good = good_tokens(items)
    base = answer_probability(model.run(feeds)["logits"], good)
    sets = {**{k: [v] for k, v in tensors.items()},
            "mlp layers": [v for k, v in tensors.items() if k.startswith("mlp")]}
    n_units = {v: model.run(feeds, intermediates=[v])[v].shape[-1] for v in tensors.values()}
    rng = np.random.default_rng(SEED)
    table = {}
    for set_name, names in sets.items():
        for k in KS:
            if any(k >= n_units[n] for n in names):
                continue
            per_method = {}
            for method in METHODS:
                runs = draws if method == "random" else 1
                per_fact = {g: [] for g in GROUPS + ("lost",)}
                for f in facts:
                    rows = groups(facts, items, f)
                    acc = {g: 0.0 for g in per_fact}
                    for _ in range(runs):
                        spec = {n: {"units": chosen(f, n, method, k, n_units[n], rng), "zero": True} for n in names}
                        logits = model.run(feeds, interventions=spec)["logits"]
                        p = answer_probability(logits, good)
                        drop = base - p
                        for g, r in rows.items():
                            acc[g] += drop[r].mean() / runs
                        acc["lost"] += np.mean(logits[f.rows, -1].argmax(-1) != f.answer) / runs
                    for g in per_fact:
                        per_fact[g].append(acc[g])
                per_method[method] = {g: summary(v) for g, v in per_fact.items()}
            table[f"{set_name} k={k}"] = {"set": set_name, "tensors": names, "k": k, "methods": per_method}
            log(f"knockout {set_name:12s} k={k:2d}: " + ", ".join(
                f"{m} {per_method[m]['target']['mean']:.3f}" for m in METHODS))
    return {"baseline_probability": summary([base[f.rows].mean() for f in facts]), "table": table}


def steering(model, feeds, answers, facts, items, tensors, draws: int, log) -> dict:
    sets = {"mlp0": [tensors["mlp0"]], "mlp1": [tensors["mlp1"]],
            "mlp layers": [v for k, v in tensors.items() if k.startswith("mlp")]}
    n_units = {v: model.run(feeds, intermediates=[v])[v].shape[-1] for v in tensors.values()}
    rng = np.random.default_rng(SEED + 1)
    plain = model.run(feeds)["logits"][:, -1].argmax(-1)
    table = {}
    for set_name, names in sets.items():
        for k in STEER_KS:
            for s in SCALES:
                per_method = {}
                for method in ("relevance", "random"):
                    runs = draws if method == "random" else 1
                    per_fact = {g: [] for g in STEERED}
                    for f in facts:
                        rows = groups(facts, items, f)
                        acc = {g: 0.0 for g in per_fact}
                        for _ in range(runs):
                            spec = {n: {"units": chosen(f, n, method, k, n_units[n], rng), "scale": s} for n in names}
                            pred = model.run(feeds, interventions=spec)["logits"][:, -1].argmax(-1)
                            for g in per_fact:
                                acc[g] += np.mean(pred[rows[g]] == f.answer) / runs
                        for g in per_fact:
                            per_fact[g].append(acc[g])
                    per_method[method] = {g: summary(v) for g, v in per_fact.items()}
                table[f"{set_name} k={k} scale={s:g}"] = {"set": set_name, "tensors": names, "k": k, "scale": s,
                                                          "methods": per_method}
                log(f"steering {set_name:10s} k={k:2d} s={s:4g}: " + ", ".join(
                    f"{m} " + " / ".join(f"{per_method[m][g]['mean']:.3f}" for g in STEERED) for m in per_method))
    before = {g: summary([np.mean(plain[groups(facts, items, f)[g]] == f.answer) for f in facts]) for g in STEERED}
    return {"unsteered": before, "table": table}


def label(row: dict) -> str:
    """"MLP 0 (mul_366)", "residual 1 (add_751)", "MLP 0 + 1"."""
    name = row["set"]
    if name == "mlp layers":
        return "MLP " + " + ".join(str(i) for i in range(len(row["tensors"])))
    kind = "MLP" if name.startswith("mlp") else "residual"
    return f"{kind} {name[-1]} (`{row['tensors'][0]}`)"


def cell(v: dict, digits: int = 3) -> str:
    return f"{v['mean']:.{digits}f} [{v['ci'][0]:.{digits}f}, {v['ci'][1]:.{digits}f}]"


def markdown(ko: dict, st: dict | None) -> str:
    """The tables of docs/latent-features.md from the two JSON files."""
    out = ["Knockout: drop of p(answer) on the fact's own prompts, mean over facts [95 % CI]", "",
           "| units zeroed | k | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for row in ko["table"].values():
        out.append(f"| {label(row)} | {row['k']} | " + " | ".join(cell(row["methods"][m]["target"]) for m in METHODS) + " |")
    out += ["", "Specificity of the relevance-chosen units (random units in brackets): drop of p(right token)",
            "", "| units zeroed | k | own prompts | paraphrase | same relation | other relation | agreement "
            "| answer lost |", "|---|---|---|---|---|---|---|---|"]
    for row in ko["table"].values():
        rel, rnd = row["methods"]["relevance"], row["methods"]["random"]
        out.append(f"| {label(row)} | {row['k']} | "
                   + " | ".join(f"{rel[g]['mean']:.3f} ({rnd[g]['mean']:.3f})" for g in GROUPS + ("lost",)) + " |")
    if st:
        out += ["", "Steering: fraction of prompts that do not ask for the fact whose greedy next token becomes its "
                "answer, mean over facts [95 % CI]", "",
                "| units scaled | k | scale | relevance: same relation | other relation | agreement "
                "| random: same relation | other relation | agreement |", "|---|---|---|---|---|---|---|---|---|"]
        for row in st["table"].values():
            rel, rnd = row["methods"]["relevance"], row["methods"]["random"]
            out.append(f"| {label(row)} | {row['k']} | {row['scale']:g} | "
                       + " | ".join(cell(rel[g], 2) for g in STEERED) + " | "
                       + " | ".join(cell(rnd[g], 2) for g in STEERED) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "demo", help="folder with tiny_lm.onnx and its files")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "latent-features")
    ap.add_argument("--draws", type=int, default=8, help="random unit draws per fact (default 8)")
    ap.add_argument("--facts", type=int, help="only the first N facts (a quick run)")
    ap.add_argument("--skip-steering", action="store_true")
    ap.add_argument("--tables", action="store_true", help="print the Markdown tables of the JSON in --out and stop")
    args = ap.parse_args(argv)
    if args.tables:
        steer = args.out / "steering.json"
        print(markdown(json.loads((args.out / "knockout.json").read_text()),
                       json.loads(steer.read_text()) if steer.exists() else None))
        return 0
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    model = reflrp.load(args.demo / "tiny_lm.onnx")
    gt = json.loads((args.demo / "tiny_lm_ground_truth.json").read_text())
    facts, items = facts_of(gt, args.facts)
    feeds = prompt_batch(items, gt["special_tokens"]["[PAD]"])
    answers = np.array([it["answer_ids"][0] for it in items])
    tensors = layer_tensors(model)
    scores = unit_scores(model, feeds, answers, tensors)
    for f in facts:
        f.scores = {key: s[f.rows].mean(axis=0) for key, s in scores.items()}
    predicted = model.run(feeds)["logits"][:, -1].argmax(-1)
    correct = np.array([predicted[r] in ids for r, ids in enumerate(good_tokens(items))])
    log(f"{len(facts)} facts, {len(items)} prompts, greedy accuracy {correct.mean():.3f}; tensors {tensors}")
    path = (args.demo / "tiny_lm.onnx").resolve()
    common = {"model": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), "sha256": model.sha256, "facts": len(facts), "prompts": len(items),
              "accuracy": float(correct.mean()), "tensors": tensors, "random_draws": args.draws,
              "steering_random_draws": max(2, args.draws // 2),
              "ci": "percentile bootstrap over facts, 2000 resamples, seed 0", "preset": "attnlrp",
              "tool": "tools/knowledge_neurons.py"}
    common["units"] = {f"{f.relation}:{f.entity}": {t: top_units(f.scores[n, "relevance"], 20) for t, n in tensors.items()}
                       for f in facts}  # the 20 most relevant units per fact and tensor, best first
    args.out.mkdir(parents=True, exist_ok=True)
    ko = knockout(model, feeds, answers, facts, items, tensors, args.draws, log)
    (args.out / "knockout.json").write_text(json.dumps({**common, **ko}, indent=1) + "\n")
    if not args.skip_steering:
        st = steering(model, feeds, answers, facts, items, tensors, max(2, args.draws // 2), log)
        (args.out / "steering.json").write_text(json.dumps({**common, **st}, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
