"""Bar: padded-batch, masked and KV-cache zoo models (issue 9, item 10 / bar 3).

Each reference batch holds an unpadded row, left-padded rows and one fully padded row (attention_mask
all zeros). reflrp's forward equals onnxruntime; in float64 its relevance agrees with LXT 2.1 (tools/
make_lxt_goldens.py) on every row with a real token, at every attributed tensor (llama_past: the token
embedding and each past key/value); the books close with the fully padded row in the batch.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import reflrp
from zoo import MODELS, feeds, fully_padded_rows, golden, grad_golden, manifest, model, padded_names

PRESETS = ("attnlrp", "cp-lrp")
CASES = [(n, p) for n in padded_names() for p in PRESETS if f"{p}:relevance" in golden(n).files]


@pytest.fixture(scope="module")
def explained():
    cache = {}

    def get(name, preset):
        if (name, preset) not in cache:
            cache[name, preset] = reflrp.explain(model(name), feeds(name), preset=preset)
        return cache[name, preset]
    return get


def real_rows(name: str) -> np.ndarray:
    """Rows of the reference batch with at least one real token."""
    return np.flatnonzero(feeds(name)["attention_mask"].any(1))


def rel_err_rows(got, want, rows, scale=None) -> float:
    """max|got - want| / max|want| over ``rows`` (``scale`` replaces max|want| when given)."""
    got, want = np.asarray(got, np.float64)[rows], np.asarray(want, np.float64)[rows]
    return float(np.abs(got - want).max() / max(np.abs(want).max() if scale is None else scale, 1e-300))


def test_the_masked_models_are_in_the_zoo():
    assert set(padded_names()) == {"bert_mask", "gpt2_mask", "llama_mask", "llama_past"}
    assert {n for n, _ in CASES} == set(padded_names())


@pytest.mark.parametrize("name", padded_names())
def test_reference_batch_has_a_fully_padded_row(name):
    mask = feeds(name)["attention_mask"]
    pads = (mask == 0).sum(1)
    assert (pads == 0).any() and ((pads >= 2) & (pads < mask.shape[1])).any()
    assert [int(r) for r in np.flatnonzero(pads == mask.shape[1])] == fully_padded_rows(name) != []
    assert golden(name)["fully_padded_rows"].tolist() == fully_padded_rows(name)
    assert (MODELS / manifest()[name]["file"]).stat().st_size < 1_000_000


@pytest.mark.parametrize("name", padded_names())
@pytest.mark.parametrize("dtype", [None, "float64"])
def test_forward_matches_onnxruntime(name, dtype):
    m = model(name)
    sess = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds(name))))
    got = m.run(feeds(name), dtype=dtype)
    assert list(want) == list(m.output_names)
    for out, w in want.items():
        assert rel_err_rows(got[out], w, slice(None)) <= 1e-5, out


@pytest.mark.parametrize("name", padded_names())
def test_float64_forward_matches_torch_float64(name):
    """The torch autograd golden evaluates the graph's function (its float32 constants) in float64."""
    m, g = model(name), grad_golden(name)
    got = m.run(feeds(name), dtype="float64")[m.output_names[0]]
    assert rel_err_rows(got, g["logits"], slice(None)) <= 1e-12


@pytest.mark.parametrize("name,preset", CASES)
def test_agrees_with_lxt_on_rows_with_tokens(name, preset, explained):
    g, rows = golden(name), real_rows(name)
    att = explained(name, preset)
    np.testing.assert_array_equal(np.asarray(att.target)[rows], g["target"][rows])
    assert rel_err_rows(att.outputs[att.output], g["logits"], rows) <= 1e-6
    tensors = json.loads(str(g["meta"]))["relevance_tensors"]  # ONNX tensor -> golden key
    assert set(tensors) <= set(att.wrt), f"attributed {att.wrt}, LXT golden at {list(tensors)}"
    # a tensor LXT gives no relevance (CP-LRP: past keys) is held to the largest golden relevance
    scale = max(np.abs(g[f"{preset}:{k}"][rows]).max() for k in tensors.values())
    errs = {}
    for t, key in tensors.items():
        want = g[f"{preset}:{key}"]
        own = np.abs(want[rows]).max()
        errs[t] = [rel_err_rows(att.relevance[t], want, [r], own or scale) for r in rows]
    assert max(max(e) for e in errs.values()) <= 1e-6, f"per-row relative error: {errs}"


@pytest.mark.parametrize("name", padded_names())
@pytest.mark.parametrize("preset", PRESETS + ("epsilon",))
def test_books_close_with_a_fully_padded_row(name, preset, explained):
    att = explained(name, preset)
    assert all(np.isfinite(att.relevance[w]).all() for w in att.wrt)
    c = att.conservation
    assert c.nodes, "no node received relevance"
    assert c.max_residual <= 1e-9, f"max node residual {c.max_residual}"
    total = c.at_wrt + c.absorbed + c.loss + c.deficit
    assert abs(total - c.target) <= 1e-9 * max(abs(c.target), 1.0), (
        f"target {c.target} != at_wrt {c.at_wrt} + absorbed {c.absorbed} + loss {c.loss} + deficit {c.deficit}")
