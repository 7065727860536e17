"""Neuron relevance and reference samples (reflrp.neurons) and ``reflrp neurons``.

Oracles: a unit's grad-x-input relevance is the derivative of the target logit along a scaling of that
unit (central differences on ``run(..., interventions=)`` in float64); activations and their ActMax
order come from onnxruntime with the tensor added as a graph output."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import reflrp
from reflrp.cli import main
from reflrp.neurons import neurons, scan

DEMO = Path(__file__).resolve().parent.parent / "demo"
SENT, TOK = DEMO / "sentiment.onnx", DEMO / "sentiment_tokenizer.json"
TENSOR = "gelu"  # the first MLP activation of the sentiment model (128 units)
N = 10


@lru_cache(maxsize=None)
def model() -> reflrp.Model:
    return reflrp.load(SENT)


@lru_cache(maxsize=None)
def ids() -> np.ndarray:
    with np.load(DEMO / "sentiment_test.npz") as z:
        return z["input_ids"][:N]


def rows():
    return [{"input_ids": ids()[i:i + 1]} for i in range(N)]


def ort_activation(feeds) -> np.ndarray:
    m = onnx.load(str(SENT))
    m.graph.output.append(onnx.helper.make_tensor_value_info(TENSOR, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([TENSOR], feeds)[0][0].astype(np.float64)  # (seq, units)


def test_unit_relevance_is_the_derivative_along_the_unit():
    """grad-x-input at the tensor: R_u = sum over positions of x * dy/dx = d/dh y(x_u * (1 + h)) at h = 0."""
    s = scan(model(), rows()[:2], TENSOR, preset="grad-x-input", wrt=[TENSOR])
    h = 1e-5
    for i, feeds in enumerate(rows()[:2]):
        t = s.target[i][0]
        for u in (3, 31, 77, 120):
            up, down = (model().run(feeds, dtype="float64", interventions={TENSOR: {"units": [u], "scale": 1 + d}})
                        ["logits"][0, t] for d in (h, -h))
            assert abs(s.relevance[i][:, u].sum() - (up - down) / (2 * h)) <= 1e-6 * abs((up - down) / (2 * h)) + 1e-12


def test_stats_aggregate_the_per_sample_top_units():
    s = scan(model(), rows(), TENSOR)
    stats = s.stats(k=5)
    per_sample = []
    for feeds in rows():  # independently: one explain per sample and neurons()'s top 5
        att = reflrp.explain(model(), feeds, keep=[TENSOR])
        per_sample.append(neurons(att, TENSOR, 5))
    total = np.sum([p.per_unit[0] for p in per_sample], axis=0)
    np.testing.assert_allclose(stats.mean, total / N, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.mean_abs, np.mean([np.abs(p.per_unit[0]) for p in per_sample], axis=0), rtol=1e-12)
    hits = np.zeros(stats.mean.shape)
    for p in per_sample:
        hits[p.units[0]] += 1
        assert np.all(np.diff(p.relevance[0]) <= 0) and p.relevance[0][0] == p.per_unit[0].max()
    assert np.array_equal(stats.top_k_rate, hits / N) and stats.top_k_rate.sum() == 5
    assert list(stats.top("mean", 3)) == list(np.argsort(-total)[:3])


def test_actmax_equals_onnxruntime_activations():
    s = scan(model(), rows(), TENSOR)
    acts = [ort_activation(f) for f in rows()]
    for i, a in enumerate(acts):
        np.testing.assert_allclose(s.activation[i], a, rtol=1e-5, atol=1e-6)
    for u in (0, 31, 93):
        refs = s.references([u], n=4, by="activation")[u]
        peaks = np.array([a[:, u].max() for a in acts])
        np.testing.assert_allclose([r.value for r in refs], np.sort(peaks)[::-1][:4], rtol=1e-5)
        for r in refs:
            assert r.position == int(np.argmax(acts[r.sample][:, u]))
        rel = s.references([u], n=N, by="relevance")[u]  # RelMax: every sample, by its relevance peak
        assert [r.value for r in rel] == sorted((s.relevance[i][:, u].max() for i in range(N)), reverse=True)


def test_scan_errors():
    with pytest.raises(reflrp.ReflrpError, match="no tensor 'gelux'.*gelu"):
        scan(model(), rows()[:1], "gelux")
    with pytest.raises(reflrp.ReflrpError, match="receives no relevance"):
        scan(model(), rows()[:1], "input_ids")
    with pytest.raises(reflrp.ReflrpError, match="one per sample"):
        scan(model(), rows()[:3], TENSOR, target=[0, 1])
    with pytest.raises(reflrp.ReflrpError, match="out of range"):
        scan(model(), rows()[:1], TENSOR).references([500])


def test_cli_json_html_and_text_inputs(tmp_path, capsys):
    np.savez(tmp_path / "inputs.npz", input_ids=ids(), labels=np.zeros(N, np.int64))
    out_json, out_html = tmp_path / "n.json", tmp_path / "n.html"
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "inputs.npz"), "--tokenizer", str(TOK),
                 "--tensor", TENSOR, "--k", "4", "--n", "3", "--json", str(out_json), "--html", str(out_html)]) == 0
    assert "the 4 units with the highest relevance" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    stats = scan(model(), rows(), TENSOR).stats(4)
    assert data["samples"] == N and data["k"] == 4 and data["units_in_tensor"] == 128
    assert [u["unit"] for u in data["units"]] == list(stats.top("mean", 4))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(TOK))
    for u in data["units"]:
        assert u["mean_relevance"] == pytest.approx(stats.mean[u["unit"]], rel=1e-12)
        assert u["top_k_rate"] == stats.top_k_rate[u["unit"]]
        assert len(u["relmax"]) == 3 and len(u["actmax"]) == 3
        values = [r["value"] for r in u["relmax"]]
        assert values == sorted(values, reverse=True)
        for r in u["relmax"] + u["actmax"]:
            assert r["token"] == tok.id_to_token(int(ids()[r["sample"], r["position"]]))
    page = out_html.read_text()
    assert page.count('<div class="unit">') == 4 and page.count("RelMax (relevance)") == 4
    assert page.count('class="tok peak"') == 4 * 3 * 2  # one outlined peak per reference sample
    # a text file, ranked by activation, with the target named by its token
    (tmp_path / "t.txt").write_text("it is never a boring film\n\nthe plot was great\n")
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "t.txt"), "--tokenizer", str(TOK), "--tensor",
                 TENSOR, "--k", "2", "--by", "activation", "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["samples"] == 2 and data["by"] == "activation"
    peaks = [u["mean_peak_activation"] for u in data["units"]]
    assert peaks == sorted(peaks, reverse=True)


@pytest.mark.parametrize("extra,needle", [
    (["--tensor", "nope"], "no tensor 'nope'"),
    (["--tensor", TENSOR, "--target", "zzz"], "--target 'zzz' is a name"),
    (["--tensor", TENSOR, "--k", "0"], "positive integer"),
    (["--tensor", TENSOR, "--by", "size"], "invalid choice"),
])
def test_cli_errors(tmp_path, capsys, extra, needle):
    np.savez(tmp_path / "inputs.npz", input_ids=ids()[:2])
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "inputs.npz"), *extra]) == 2
    assert needle in capsys.readouterr().err


def test_cli_input_errors(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a film\n")
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "t.txt"), "--tensor", TENSOR]) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 3)))
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "other.npz"), "--tensor", TENSOR]) == 2
    assert "no array for model input(s) ['input_ids']" in capsys.readouterr().err


def test_rows_are_cut_to_their_attention_mask():
    from reflrp.neurons_cli import _unpadded
    ids = np.array([[0, 0, 5, 6, 7]])
    left = _unpadded(None, {"input_ids": ids, "attention_mask": np.array([[0, 0, 1, 1, 1]])})
    assert left["input_ids"].tolist() == [[5, 6, 7]] and left["attention_mask"].tolist() == [[1, 1, 1]]
    right = _unpadded(None, {"input_ids": np.array([[5, 6, 0]]), "attention_mask": np.array([[1, 1, 0]])})
    assert right["input_ids"].tolist() == [[5, 6]]
    holes = {"input_ids": ids, "attention_mask": np.array([[1, 0, 1, 1, 1]])}
    assert _unpadded(None, holes) is holes


def test_cli_target_labels(tmp_path, capsys):
    labels = np.array([1, 0, 1, 0])
    np.savez(tmp_path / "inputs.npz", input_ids=ids()[:4], labels=labels)
    out = tmp_path / "n.json"
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "inputs.npz"), "--tensor", TENSOR, "--k", "3",
                 "--target", "labels", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["targets"] == [[1], [0], [1], [0]]
    np.savez(tmp_path / "plain.npz", input_ids=ids()[:2])
    assert main(["neurons", str(SENT), "--inputs", str(tmp_path / "plain.npz"), "--tensor", TENSOR,
                 "--target", "labels"]) == 2
    assert "no 'labels' array" in capsys.readouterr().err
