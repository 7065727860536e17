"""Faithfulness: reflrp.attribute's methods against independent oracles (onnxruntime on edited inputs,
numpy rollout on onnxruntime's attention, exact identities), reflrp.evaluate's curves and statistics, the
``reflrp evaluate`` command and its errors, and explain --html's rows, colour scale and relevance flow."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import reflrp
from onnx_builders import graph_model, node
from reflrp.attribute import fed_at
from reflrp.cli import main
from reflrp.evaluate import bootstrap_ci, precision_at_k
from zoo import rel_err

DEMO = Path(__file__).resolve().parent.parent / "demo"
SENT, DIGITS, TOK = DEMO / "sentiment.onnx", DEMO / "digits_vit.onnx", DEMO / "sentiment_tokenizer.json"
PAD, CLS = 0, 2
N_CI = 48   # sentences for the AttnLRP-vs-random interval test
TINY_LM = DEMO / "tiny_lm.onnx"
N_LM = 24   # retrieval prompts for the tiny LM's interval test


@lru_cache(maxsize=None)
def model(path) -> reflrp.Model:
    return reflrp.load(path)


@lru_cache(maxsize=None)
def sentiment() -> dict:
    with np.load(DEMO / "sentiment_test.npz") as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=None)
def digits() -> dict:
    with np.load(DEMO / "digits_test.npz") as z:
        return {k: z[k] for k in z.files}


def ort_logits(path, feeds) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds)[0].astype(np.float64)


def embedding(ids) -> np.ndarray:
    return model(SENT).run({"input_ids": ids}, dtype="float64", intermediates=["embedding"])["embedding"]


# ---------------------------------------------------------------- the area between the curves

def test_attnlrp_area_exceeds_random_with_separate_intervals():
    ev = reflrp.evaluate(model(SENT), sentiment(), methods=["attnlrp", "random"], samples=N_CI,
                         ignore_ids=[PAD, CLS], progress=False)
    a, r = ev.methods["attnlrp"], ev.methods["random"]
    print(f"n={ev.samples}: attnlrp {a.abc:.3f} {a.ci}, random {r.abc:.3f} {r.ci}")
    assert a.ci[0] > r.ci[1]
    assert a.ci[0] <= a.abc <= a.ci[1] and r.ci[0] <= r.abc <= r.ci[1]
    assert a.precision_at_k > 0.9 > 0.5 > r.precision_at_k
    # negative control: the reversed attribution scores below zero
    rev = reflrp.evaluate(model(SENT), sentiment(), methods=(), scores={"reversed": -a.scores}, samples=N_CI,
                          ignore_ids=[PAD, CLS], progress=False).methods["reversed"]
    assert rev.ci[1] < 0


@pytest.mark.skipif(not TINY_LM.exists(), reason="demo/tiny_lm.onnx is not on this branch")
def test_tiny_lm_retrieval_attnlrp_beats_random():
    """The trained tiny LM's retrieval prompts (target: the answer's colour after "a"; ground truth: the
    supporting sentence): AttnLRP's ABC and precision@k exceed random's with separate intervals."""
    with np.load(DEMO / "tiny_lm_retrieval.npz") as z:
        data = {k: z[k] for k in z.files}
    ev = reflrp.evaluate(model(TINY_LM), data, methods=["attnlrp", "random"], samples=N_LM,
                         ignore_ids=[0, 1, 2, 3], progress=False)
    a, r = ev.methods["attnlrp"], ev.methods["random"]
    print(f"n={ev.samples}: attnlrp {a.abc:.3f} {a.ci} p@k {a.precision_at_k:.3f}, random {r.abc:.3f} {r.ci} "
          f"p@k {r.precision_at_k:.3f}")
    assert ev.target == "labels" and ev.ground_truth == "decisive"
    assert not ev.allowed[data["input_ids"][:N_LM] <= 3].any()   # [PAD], [BOS] never removed
    assert a.ci[0] > r.ci[1]
    assert a.precision_ci[0] > r.precision_ci[1]
    # negative control: the reversed attribution scores below zero
    rev = reflrp.evaluate(model(TINY_LM), data, methods=(), scores={"reversed": -a.scores}, samples=N_LM,
                          ignore_ids=[0, 1, 2, 3], progress=False).methods["reversed"]
    assert rev.ci[1] < 0


def test_curves_equal_onnxruntime_on_edited_ids():
    """MoRF / LeRF with mode token:ID remove a token by its embedding: the same as feeding that id."""
    t = sentiment()
    ids, labels, unk = t["input_ids"][:6], t["labels"][:6], 1
    ev = reflrp.evaluate(model(SENT), {"input_ids": ids, "labels": labels}, methods=["attnlrp"], steps=4,
                         mode=f"token:{unk}", ignore_ids=[PAD, CLS], progress=False)
    r = ev.methods["attnlrp"]
    for i in range(len(ids)):
        units = np.flatnonzero((ids[i] != PAD) & (ids[i] != CLS))
        for curve, sign in ((r.morf_samples, -1), (r.lerf_samples, 1)):
            ranked = units[np.argsort(sign * r.scores[i, units], kind="stable")]
            for j, frac in enumerate(ev.fractions):
                edited = ids[i].copy()
                edited[ranked[:round(frac * len(units))]] = unk
                ref = ort_logits(SENT, {"input_ids": edited[None]})[0, labels[i]]
                assert abs(curve[i, j] - ref) < 1e-4 * max(1.0, abs(ref)), (i, j)
    np.testing.assert_allclose(r.morf[0], ev.clean.mean(), rtol=1e-12)
    assert rel_err(r.morf_samples, r.lerf_samples) > 0.1  # negative control: the orders differ


def test_precision_at_k_and_bootstrap_by_hand():
    scores = np.array([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.5, 0.2, 0.1]])
    truth = np.array([[True, False, True], [False, True, False], [False, False, False]])
    allowed = np.ones_like(truth)
    p = precision_at_k(scores, truth, allowed, np.zeros(scores.shape))
    assert p[0] == 1.0 and p[1] == 0.0 and np.isnan(p[2])
    allowed[0, 0] = False  # an ignored unit is never counted: top-1 of {1, 2} is 2, decisive
    assert precision_at_k(scores, truth, allowed, np.zeros(scores.shape))[0] == 1.0
    v = np.arange(50.0)
    lo, hi = bootstrap_ci(v, seed=3)
    assert lo < v.mean() < hi and (lo, hi) == bootstrap_ci(v, seed=3) != bootstrap_ci(v, seed=4)


# ---------------------------------------------------------------- the methods

def test_integrated_gradients_completeness_error_shrinks_with_steps():
    f = {"input_ids": sentiment()["input_ids"][:8]}
    errors = [float(np.abs(reflrp.attribute(model(SENT), f, "integrated-gradients", steps=s).completeness).mean())
              for s in (2, 8, 32)]
    print("IG mean |completeness error| at 2, 8, 32 steps:", errors)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


def test_integrated_gradients_is_exact_on_a_linear_model():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    proto = graph_model([node("Gemm", ["x", "w", "b"], ["logits"])], {"x": ["batch", 5]}, ["logits"],
                        {"w": w, "b": b})
    x = rng.normal(size=(4, 5))
    a = reflrp.attribute(reflrp.load(proto), {"x": x}, "integrated-gradients", steps=1, target=[0, 1, 2, 0])
    np.testing.assert_allclose(a.full, x * w[:, [0, 1, 2, 0]].T, rtol=1e-12)
    assert np.abs(a.completeness).max() < 1e-12


@pytest.mark.parametrize("path,key", [(SENT, "input_ids"), (DIGITS, "pixel_values")])
def test_grad_x_input_equals_gradient_times_input(path, key):
    f = {key: (sentiment() if path == SENT else digits())[key][:6]}
    gx = reflrp.attribute(model(path), f, "grad-x-input")
    g = reflrp.attribute(model(path), f, "gradient")
    wrt = gx.wrt
    x = model(path).run(f, dtype="float64", intermediates=[wrt])[wrt] if wrt not in f else f[wrt]
    grad = reflrp.gradient(model(path), f, target=gx.target, wrt=[wrt])[wrt]
    np.testing.assert_allclose(gx.full, grad * x, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(g.full, grad)
    axes = (2,) if path == SENT else (1,)
    np.testing.assert_allclose(gx.scores, (grad * x).sum(axes), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g.scores, np.sqrt((grad ** 2).sum(axes)), rtol=1e-12)


def relu_mlp(activation: str = "Relu"):
    """x (4) -> Gemm+bias (6) -> act -> Gemm+bias (5) -> act -> Gemm+bias (3)."""
    rng = np.random.default_rng(1)
    consts = {f"w{i}": rng.normal(size=s) for i, s in enumerate([(4, 6), (6, 5), (5, 3)])}
    consts.update({f"b{i}": rng.normal(size=s[1]) * 0.3 for i, s in enumerate([(4, 6), (6, 5), (5, 3)])})
    nodes = [node("Gemm", ["x", "w0", "b0"], ["z0"]), node(activation, ["z0"], ["a0"]),
             node("Gemm", ["a0", "w1", "b1"], ["z1"]), node(activation, ["z1"], ["a1"]),
             node("Gemm", ["a1", "w2", "b2"], ["logits"])]
    return reflrp.load(graph_model(nodes, {"x": ["batch", 4]}, ["logits"], consts))


def test_epsilon_lrp_tends_to_grad_x_input_on_relu_networks():
    """LRP-epsilon with epsilon -> 0 equals gradient x input when every node on the relevance path is
    affine in one input (Gemm/Conv/BatchNorm/average pool, biases in the denominator), a sum, a ReLU
    (identity rule: ReLU(z) / z = ReLU'(z)), a move or a max pool (route = where the gradient goes), and
    no pre-activation is exactly 0: then R / z at every layer is the gradient there."""
    from zoo import feeds as zoo_feeds, model as zoo_model
    x = np.random.default_rng(2).normal(size=(7, 4))
    cases = [(relu_mlp(), {"x": x}), (zoo_model("cnn"), zoo_feeds("cnn"))]
    for m, f in cases:
        gx = reflrp.attribute(m, f, "grad-x-input").full
        errors = [rel_err(reflrp.attribute(m, f, "epsilon", epsilon=e).full, gx) for e in (1e-3, 1e-6, 1e-9)]
        assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors
        assert rel_err(reflrp.attribute(m, f, "epsilon", epsilon=0.0).full, gx) < 1e-12
    # negative control: tanh(z) / z is not tanh'(z)
    m = relu_mlp("Tanh")
    assert rel_err(reflrp.attribute(m, {"x": x}, "epsilon", epsilon=0.0).full,
                   reflrp.attribute(m, {"x": x}, "grad-x-input").full) > 1e-2


def test_occlusion_equals_onnxruntime_on_replaced_ids():
    ids = sentiment()["input_ids"][:3]
    a = reflrp.attribute(model(SENT), {"input_ids": ids}, "occlusion", baseline="token:1")
    base = ort_logits(SENT, {"input_ids": ids})
    for i in range(len(ids)):
        for u in range(ids.shape[1]):
            edited = ids[i].copy()
            edited[u] = 1
            ref = base[i, a.target[i]] - ort_logits(SENT, {"input_ids": edited[None]})[0, a.target[i]]
            assert abs(a.scores[i, u] - ref) < 1e-4
    np.testing.assert_allclose(a.full.sum(-1), a.scores, rtol=1e-12)


def _attention_outputs(path):
    """The model with every Softmax output (found by op type here, in the test) as an extra graph output."""
    proto = onnx.load(str(path))
    names = [n.output[0] for n in proto.graph.node if n.op_type == "Softmax"]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return proto.SerializeToString(), names


@pytest.mark.parametrize("path,key", [(SENT, "input_ids"), (DIGITS, "pixel_values")])
def test_rollout_equals_numpy_on_onnxruntime_attention(path, key):
    """Rollout read at [CLS] (position 0: both models pool it) from onnxruntime's attention probabilities."""
    import onnxruntime as ort
    f = {key: (sentiment() if path == SENT else digits())[key][:4]}
    data, names = _attention_outputs(path)
    probs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(names, f)
    flow = np.eye(probs[0].shape[-1])[None]
    for p in probs:
        a = p.astype(np.float64).mean(1) + np.eye(p.shape[-1])
        flow = (a / a.sum(-1, keepdims=True)) @ flow
    cls = flow[:, 0]
    a = reflrp.attribute(model(path), f, "rollout")
    if path == SENT:
        np.testing.assert_allclose(a.scores, cls, rtol=1e-5, atol=1e-7)
    else:  # 16 patches of 2x2 pixels after [CLS], each pixel a quarter
        patches = cls[:, 1:].reshape(-1, 4, 4)
        np.testing.assert_allclose(a.scores, np.kron(patches, np.ones((1, 2, 2))) / 4, rtol=1e-5, atol=1e-7)
    assert rel_err(a.scores, np.roll(a.scores, 1, axis=-1)) > 0.1  # negative control: the order matters


def test_smoothgrad_and_random_are_seeded():
    f = {"input_ids": sentiment()["input_ids"][:3]}
    g = reflrp.attribute(model(SENT), f, "gradient")
    s0 = reflrp.attribute(model(SENT), f, "smoothgrad", noise=0.0, samples=3)
    np.testing.assert_allclose(s0.full, g.full, rtol=1e-12)
    s1, s2 = (reflrp.attribute(model(SENT), f, "smoothgrad", samples=4, seed=k) for k in (5, 5))
    np.testing.assert_array_equal(s1.full, s2.full)
    assert rel_err(s1.full, reflrp.attribute(model(SENT), f, "smoothgrad", samples=4, seed=6).full) > 1e-3
    r = [reflrp.attribute(model(SENT), f, "random", seed=k).scores for k in (1, 1, 2)]
    np.testing.assert_array_equal(r[0], r[1])
    assert not np.array_equal(r[0], r[2])


# ---------------------------------------------------------------- the command line

def test_evaluate_cli_json_png_html(tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(SENT), "--inputs", str(DEMO / "sentiment_test.npz"), "--tokenizer", str(TOK),
                 "--samples", "12", "--steps", "5", "--ig-steps", "4", "--methods",
                 "attnlrp,random,integrated-gradients", "--json", str(out), "--png", str(tmp_path / "c.png"),
                 "--html", str(tmp_path / "r.html"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "attnlrp" in text and "ignored: ['negated']" in text
    data = json.loads(out.read_text())
    assert data["samples"] == 12 and data["units"] == "token" and data["ground_truth"] == "decisive"
    for name in ("attnlrp", "random", "integrated-gradients"):
        m = data["methods"][name]
        assert {"abc", "ci", "morf", "lerf", "precision_at_k"} <= set(m)
        assert len(m["morf"]) == len(m["lerf"]) == 6 and m["ci"][0] <= m["abc"] <= m["ci"][1]
        assert len(m["abc_per_sample"]) == 12
    assert "completeness_error" in data["methods"]["integrated-gradients"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and 'class="scale"' in page and "amazing" in page


def test_evaluate_cli_on_images(tmp_path):
    out = tmp_path / "d.json"
    assert main(["evaluate", str(DIGITS), "--inputs", str(DEMO / "digits_test.npz"), "--samples", "6",
                 "--methods", "attnlrp,rollout,occlusion", "--mode", "blur", "--steps", "4", "--json", str(out),
                 "--html", str(tmp_path / "d.html"), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["units"] == "pixel" and data["ground_truth"] is None and data["ignored_arrays"] == ["dataset_index"]
    assert "precision_at_k" not in data["methods"]["attnlrp"]
    assert (tmp_path / "d.html").read_text().count("data:image/png;base64,") == 2


def test_evaluate_cli_text_file(tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("the movie was not good\ni really liked the acting\n\nthe plot was terrible\n")
    out = tmp_path / "t.json"
    assert main(["evaluate", str(SENT), "--text-file", str(text), "--tokenizer", str(TOK), "--methods", "attnlrp",
                 "--steps", "3", "--json", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["samples"] == 3 and data["target"] == "predicted" and data["ground_truth"] is None


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "attnlrp,atnlrp"], "did you mean 'attnlrp'"),
    (["--methods", "attnlrp,attnlrp"], "names a method twice"),
    (["--steps", "0"], "--steps: must be a positive integer"),
    (["--samples", "x"], "--samples: must be a positive integer"),
    (["--seed", "-1"], "--seed: must be an integer >= 0"),
    (["--mode", "blur"], "'blur' is for images"),
    (["--mode", "token:[NOPE]", "--tokenizer", str(TOK)], "no token '[NOPE]'"),
    (["--mode", "token:[UNK]"], "pass --tokenizer"),
    (["--mode", "smudge"], "baseline='smudge'"),
    (["--measure", "odds"], "invalid choice: 'odds'"),
    (["--patch", "2"], "patch=2 is for image inputs"),
    (["--sg-noise", "-1", "--methods", "smoothgrad"], "noise=-1.0 must be a finite number >= 0"),
    (["--text-file", "x.txt"], "exactly one of --inputs"),
])
def test_evaluate_cli_errors(argv, needle, capsys):
    base = ["evaluate", str(SENT), "--inputs", str(DEMO / "sentiment_test.npz"), "--samples", "2", "--no-progress"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reflrp: error:") and needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("kwargs,needle", [
    (dict(method="lrp"), "unknown method 'lrp'"),
    (dict(method="integrated-gradients", steps=0), "steps=0 must be a positive integer"),
    (dict(method="smoothgrad", samples=1.5), "samples=1.5 must be a positive integer"),
    (dict(method="occlusion", baseline="token:x"), "baseline='token:x'"),
    (dict(method="occlusion", baseline=np.zeros(3)), "baseline array has shape (3,)"),
    (dict(method="occlusion", baseline="token:999"), "out of range"),
    (dict(method="random", seed=-2), "seed=-2 must be an integer >= 0"),
    (dict(method="attnlrp", target=7), "target class out of range"),
    (dict(method="attnlrp", wrt=["a", "b"]), "must be one tensor name"),
])
def test_attribute_argument_errors(kwargs, needle):
    with pytest.raises(reflrp.ReflrpError, match=None) as info:
        reflrp.attribute(model(SENT), {"input_ids": sentiment()["input_ids"][:2]}, **kwargs)
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("change,needle", [
    (dict(methods=[]), "methods= is empty"),
    (dict(target="gold"), "target='gold'"),
    (dict(measure="odds"), "measure='odds'"),
    (dict(method_options={"smoothgrad": {"samples": 2}}), "not among methods"),
    (dict(method_options={"random": {"alpha": 2}}), "keys among"),
    (dict(dataset={"labels": np.zeros(2, int)}), "lacks model input"),
    (dict(dataset={"input_ids": np.full((2, 4), 5), "labels": np.zeros((2, 2), int)}), "one integer class"),
    (dict(dataset={"input_ids": np.full((2, 4), 5), "decisive": np.zeros((2, 3), bool)}), "boolean mask of shape"),
    (dict(dataset={"input_ids": np.full((2, 4), 5)}, target="labels"), "no 'labels' array"),
    (dict(ignore_ids=[-1]), "must be token ids"),
    (dict(dataset={"input_ids": np.full((2, 4), PAD)}, ignore_ids=[PAD]), "no unit left"),
])
def test_evaluate_argument_errors(change, needle):
    kw = dict(dataset={"input_ids": np.full((2, 4), 5)}, methods=["random"], progress=False) | change
    with pytest.raises(reflrp.ReflrpError) as info:
        reflrp.evaluate(model(SENT), **kw)
    assert needle in str(info.value), str(info.value)


def test_fed_model_equals_the_original():
    ids = sentiment()["input_ids"][:4]
    fed = fed_at(model(SENT), "embedding")
    assert "embedding" in fed.input_names and "node_embedding" not in {n.name for n in fed.graph.nodes}
    out = fed.run({"input_ids": ids, "embedding": embedding(ids)}, dtype="float64")["logits"]
    np.testing.assert_allclose(out, ort_logits(SENT, {"input_ids": ids}), rtol=1e-5)


# ---------------------------------------------------------------- explain --html

def test_explain_html_every_row_scale_and_flow(tmp_path):
    ids = sentiment()["input_ids"][:3]
    np.savez(tmp_path / "s.npz", input_ids=ids)
    assert main(["explain", str(SENT), "--input", str(tmp_path / "s.npz"), "--tokenizer", str(TOK), "--no-color",
                 "--html", str(tmp_path / "e.html")]) == 0
    page = (tmp_path / "e.html").read_text()
    assert page.count('class="tok"') == ids.size and page.count("row ") >= 3
    assert 'class="scale"' in page and "Where relevance went" in page and "data:image/png;base64," in page
    assert "amazing" in page


def test_relevance_flow_closes_on_the_books():
    from reflrp.report import node_groups, relevance_flow
    m = model(SENT)
    att = reflrp.explain(m, {"input_ids": sentiment()["input_ids"][:5]})
    flows = relevance_flow(att.conservation, m.graph)
    c = att.conservation
    assert [f.group for f in flows] == ["head", "layer 1", "layer 0", "embeddings"]
    assert abs(flows[-1].kept - c.at_wrt) <= 1e-9 * abs(c.target)
    assert abs(sum(f.deficit for f in flows) - c.deficit) <= 1e-9 * abs(c.target) and c.deficit > 0
    groups = node_groups(m.graph)
    assert groups["node_embedding"] == "embeddings" and groups["node_softmax_1"] == "layer 1"


def test_language_model_next_token_targets():
    """A causal LM (zoo llama_mask: left-padded, masked): the target is the label's logit at the last
    position, padding is never removed, and rollout reads out at the last position only."""
    import onnxruntime as ort
    from zoo import MODELS, feeds as zoo_feeds, model as zoo_model
    from reflrp.attribute import make_subject
    from reflrp.baselines import attention_tensors, readout
    f = {k: v[:2] for k, v in zoo_feeds("llama_mask").items()}
    labels = np.array([3, 11])
    ev = reflrp.evaluate(zoo_model("llama_mask"), {**f, "labels": labels}, methods=["attnlrp", "rollout"], steps=3,
                         progress=False)
    ref = ort.InferenceSession(str(MODELS / "llama_mask.onnx"), providers=["CPUExecutionProvider"]).run(None, f)[0]
    np.testing.assert_allclose(ev.clean, ref[np.arange(2), -1, labels], rtol=1e-5)
    np.testing.assert_array_equal(ev.allowed, f["attention_mask"] == 1)
    s = make_subject(zoo_model("llama_mask"))
    w = readout(s, f, labels, attention_tensors(s.model, s.wrt)[-1][1])
    np.testing.assert_allclose(w, np.eye(f["attention_mask"].shape[1])[[-1, -1]], atol=1e-12)
