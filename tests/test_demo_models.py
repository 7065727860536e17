"""The trained demo models in demo/ (made by tools/train_demo_models.py): files and hashes, forward
vs onnxruntime, test accuracy from the saved test sets, and the attribution-quality bar on the
synthetic sentiment language (the top-relevance token is a decisive word: the sentiment word or its
negator). Needs numpy, onnxruntime and reflrp only (tokenizers for the tokenizer test)."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import reflrp

DEMO = Path(__file__).resolve().parent.parent / "demo"
N_ATTR = 200            # sentences of the sentiment test set used for the attribution bar
ATTNLRP_BAR = 0.90      # top token is decisive in >= 90 % of sentences under AttnLRP
CP_LRP_BAR = 0.80       # looser bound for CP-LRP


def manifest() -> dict:
    return json.loads((DEMO / "MANIFEST.json").read_text())["models"]


@lru_cache(maxsize=None)
def model(name: str) -> reflrp.Model:
    return reflrp.load(DEMO / manifest()[name]["file"])


@lru_cache(maxsize=None)
def saved_test_set(name: str) -> dict:
    with np.load(DEMO / {"digits": "digits_test.npz", "sentiment": "sentiment_test.npz"}[name]) as z:
        return {k: z[k] for k in z.files}


def feeds(name: str, n: int | None = None) -> dict:
    key = {"digits": "pixel_values", "sentiment": "input_ids"}[name]
    return {key: saved_test_set(name)[key][:n]}


def special_ids() -> dict:
    tok = json.loads((DEMO / manifest()["sentiment"]["tokenizer"]).read_text())
    return {t["content"]: t["id"] for t in tok["added_tokens"]}


from reflrp.testing import rel_err  # noqa: E402  (the one relative error)


NAMES = ["digits", "sentiment"]


@pytest.mark.parametrize("name", NAMES)
def test_files_match_manifest(name):
    e = manifest()[name]
    data = (DEMO / e["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == e["sha256"]
    assert len(data) == e["size_bytes"] < 2 * 1024 * 1024
    assert not list(DEMO.glob("*.data")), "ONNX files must be self-contained"
    m = model(name)
    assert m.input_names == tuple(i["name"] for i in e["inputs"])
    assert m.output_names == ("logits",)
    if e.get("tokenizer"):
        tok = (DEMO / e["tokenizer"]).read_bytes()
        assert hashlib.sha256(tok).hexdigest() == e["tokenizer_sha256"]


@pytest.mark.parametrize("dtype", [None, "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_onnxruntime(name, dtype):
    import onnxruntime as ort
    f = feeds(name, 256)
    sess = ort.InferenceSession(str(DEMO / manifest()[name]["file"]), providers=["CPUExecutionProvider"])
    ref = sess.run(["logits"], f)[0]
    out = model(name).run(f, dtype=dtype)["logits"]
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name,bar", [("digits", 0.95), ("sentiment", 0.97)])
def test_accuracy(name, bar):
    t = saved_test_set(name)
    pred = model(name).run(feeds(name))["logits"].argmax(-1)
    acc = float((pred == t["labels"]).mean())
    print(f"{name}: test accuracy {acc:.4f} on {len(pred)}")
    assert acc >= bar
    assert abs(acc - manifest()[name]["test_accuracy"]) <= 1.0 / len(pred)
    assert len(pred) == manifest()[name]["test_size"]


def test_sentiment_test_set_is_consistent():
    t, sp = saved_test_set("sentiment"), special_ids()
    ids, dec = t["input_ids"], t["decisive"]
    assert ids.dtype == np.int64 and dec.dtype == bool and ids.shape == dec.shape
    assert (ids[:, 0] == sp["[CLS]"]).all()
    assert not dec[(ids == sp["[PAD]"]) | (ids == sp["[CLS]"])].any()
    assert (dec.sum(1) == 1 + t["negated"]).all()


def test_tokenizer_gives_the_model_ids():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(DEMO / manifest()["sentiment"]["tokenizer"]))
    vocab = manifest()["sentiment"]["vocabulary"]
    sp = special_ids()
    t = saved_test_set("sentiment")
    for row in t["input_ids"][:50]:
        words = [vocab[i] for i in row if i not in (sp["[PAD]"], sp["[CLS]"])]
        ids = tok.encode(" ".join(words)).ids
        assert ids == [int(i) for i in row if i != sp["[PAD]"]]
    sentences = ["the movie was not good", "i really liked the acting", "this film is not bad at all",
                 "the plot was terrible"]
    batch = [tok.encode(s).ids for s in sentences]
    assert batch[0][0] == sp["[CLS]"] and sp["[UNK]"] not in sum(batch, [])
    # unpadded, one sentence at a time (dynamic seq), and padded as a batch
    pred = [int(model("sentiment").run({"input_ids": np.array([b])})["logits"].argmax()) for b in batch]
    assert pred == [0, 1, 1, 0]
    padded = np.full((len(batch), 12), sp["[PAD]"], np.int64)
    for i, b in enumerate(batch):
        padded[i, :len(b)] = b
    assert model("sentiment").run({"input_ids": padded})["logits"].argmax(-1).tolist() == [0, 1, 1, 0]


def top_token_is_decisive(preset: str) -> tuple[float, np.ndarray]:
    """Fraction of the first N_ATTR test sentences whose highest-relevance token (relevance summed
    over the hidden dim at the embedding Gather; [PAD] and [CLS] ignored) is a decisive word, under
    ``preset`` with target = the predicted class; one batched explain call."""
    m, t, sp = model("sentiment"), saved_test_set("sentiment"), special_ids()
    ids, dec = t["input_ids"][:N_ATTR], t["decisive"][:N_ATTR]
    pred = m.run({"input_ids": ids})["logits"].argmax(-1)
    att = reflrp.explain(m, {"input_ids": ids}, preset=preset, target=pred)
    np.testing.assert_array_equal(np.asarray(att.target), pred)
    r = np.asarray(att.relevance[att.wrt[0]]).sum(-1)
    assert r.shape == ids.shape and np.isfinite(r).all()
    ignore = (ids == sp["[PAD]"]) | (ids == sp["[CLS]"])
    top = np.where(ignore, -np.inf, r).argmax(1)
    hit = dec[np.arange(len(ids)), top]
    return float(hit.mean()), hit


@pytest.mark.parametrize("preset,bar", [("attnlrp", ATTNLRP_BAR), ("cp-lrp", CP_LRP_BAR)])
def test_top_token_is_a_decisive_word(preset, bar):
    rate, hit = top_token_is_decisive(preset)
    neg = saved_test_set("sentiment")["negated"][:N_ATTR]
    print(f"{preset}: top-relevance token is decisive in {rate:.1%} of {len(hit)} sentences "
          f"(negated {hit[neg].mean():.1%}, plain {hit[~neg].mean():.1%})")
    assert rate >= bar, f"{preset}: {rate:.3f} < {bar}"


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_digits_explain(preset):
    with np.load(DEMO / "digits_samples.npz") as z:
        x, y = z["pixel_values"], z["labels"]
    att = reflrp.explain(model("digits"), {"pixel_values": x}, preset=preset, target=y)
    r = np.asarray(att.relevance["pixel_values"])
    assert r.shape == x.shape == (len(y), 1, 8, 8) and np.isfinite(r).all()
    c = att.conservation
    assert c.max_residual <= 1e-9
    assert abs(c.at_wrt + c.absorbed + c.loss + c.deficit - c.target) <= 1e-9 * max(abs(c.target), 1.0)
