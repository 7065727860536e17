"""Knowledge neurons in the trained tiny language model (demo/tiny_lm.onnx): zeroing the MLP units most
relevant (AttnLRP) for a memorised fact's answer lowers p(answer) more than zeroing as many random
units, with non-overlapping 95 % bootstrap intervals over facts; the same units barely touch the other
facts. Computed here with reflrp on a subset of the facts (every 4th of the 40: 5 capitals and 5
languages), k = 5 units in each of the two MLP activations; docs/latent-features.md has the full tables
(tools/knowledge_neurons.py)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import reflrp

DEMO = Path(__file__).resolve().parent.parent / "demo"
K, DRAWS, SEED = 5, 5, 0

if not (DEMO / "tiny_lm.onnx").is_file():  # it comes from branch tinylm (tools/train_tiny_lm.py)
    pytest.skip("demo/tiny_lm.onnx is not on this branch yet", allow_module_level=True)


@lru_cache(maxsize=None)
def setup():
    model = reflrp.load(DEMO / "tiny_lm.onnx")
    gt = json.loads((DEMO / "tiny_lm_ground_truth.json").read_text())
    chosen = gt["facts"][::4]
    items = gt["test_set"]["facts"]  # the trained templates of every fact
    width = max(len(it["input_ids"]) for it in items)
    ids = np.zeros((len(items), width), np.int64)  # left padding with [PAD] = 0, as trained
    mask = np.zeros_like(ids)
    for r, it in enumerate(items):
        ids[r, width - len(it["input_ids"]):], mask[r, width - len(it["input_ids"]):] = it["input_ids"], 1
    rows = {(f["relation"], f["entity"]): [r for r, it in enumerate(items)
                                           if (it["relation"], it["entity"]) == (f["relation"], f["entity"])]
            for f in chosen}
    return model, {"input_ids": ids, "attention_mask": mask}, items, rows


def mlp_activations(model) -> list[str]:
    """What each down projection reads: the input of a MatMul by an (intermediate, hidden) weight."""
    g = model.graph
    shapes = {n.name: g.initializers[n.inputs[1]].shape for n in g.nodes
              if n.op_type == "MatMul" and n.inputs[1] in g.initializers}
    widest = max(s[0] for s in shapes.values())
    return [n.inputs[0] for n in g.nodes if n.name in shapes and shapes[n.name][0] == widest > shapes[n.name][1]]


def p_answer(model, feeds, answers, interventions=None) -> np.ndarray:
    z = np.asarray(model.run(feeds, interventions=interventions)["logits"], np.float64)[:, -1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p[np.arange(len(z)), answers] / p.sum(axis=1)


def interval(values, seed=SEED, resamples=2000) -> tuple[float, float]:
    v = np.asarray(values)
    means = v[np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))].mean(axis=1)
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_relevant_units_hurt_their_fact_more_than_random_units():
    model, feeds, items, rows = setup()
    answers = np.array([it["answer_ids"][0] for it in items])
    tensors = mlp_activations(model)
    assert len(tensors) == 2
    base = p_answer(model, feeds, answers)
    assert base.min() > 0.5  # every trained fact is memorised
    att = reflrp.explain(model, feeds, target=answers, keep=tensors)
    assert att.conservation.ok
    units = {t: model.run(feeds, intermediates=[t])[t].shape[-1] for t in tensors}
    rng = np.random.default_rng(SEED)
    relevant, random_, others = [], [], []
    for fact, r in rows.items():
        spec = {}
        for t in tensors:
            score = np.asarray(att.relevance[t])[r].sum(axis=1).mean(axis=0)  # (units,): over positions, prompts
            spec[t] = {"units": np.argsort(-score)[:K].tolist(), "zero": True}
        drop = base - p_answer(model, feeds, answers, spec)
        relevant.append(drop[r].mean())
        rest = [i for i, it in enumerate(items) if it["answer_ids"][0] != answers[r[0]]]
        others.append(drop[rest].mean())
        draws = [base[r] - p_answer(model, feeds, answers, {t: {"units": rng.choice(units[t], K, replace=False).tolist(),
                                                               "zero": True} for t in tensors})[r]
                 for _ in range(DRAWS)]
        random_.append(np.mean(draws))
    lo_relevant, _ = interval(relevant)
    _, hi_random = interval(random_)
    assert lo_relevant > hi_random, (np.mean(relevant), np.mean(random_))
    assert np.mean(relevant) > 5 * np.mean(others)  # specific: the other facts keep most of their answers
