"""Bars of the relevance engine on the zoo: LXT agreement, per-node accounting, CP-LRP conservation,
float32 vs float64, equivalent graphs, latent relevance, no NaN on hard inputs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp
from zoo import MODELS, feeds, golden, model, names, rel_err

PRESETS = ("attnlrp", "cp-lrp")
GOLDEN_CASES = [(n, p) for n in names() for p in PRESETS
                if golden(n) is not None and f"{p}:relevance" in golden(n).files]


@pytest.fixture(scope="module")
def explained():
    cache = {}

    def get(name, preset="attnlrp", dtype="float64"):
        key = (name, preset, dtype)
        if key not in cache:
            cache[key] = reflrp.explain(model(name), feeds(name), preset=preset, dtype=dtype)
        return cache[key]
    return get


def test_goldens_exist_for_the_lxt_families():
    have = {n for n, _ in GOLDEN_CASES}
    assert {"llama", "gpt2", "qwen2", "qwen3", "bert"} <= have, have


@pytest.mark.parametrize("name,preset", GOLDEN_CASES)
def test_agrees_with_lxt(name, preset, explained):
    g = golden(name)
    att = explained(name, preset)
    np.testing.assert_array_equal(np.asarray(att.target), g["target"])
    assert rel_err(att.outputs[att.output], g["logits"]) <= 1e-6
    assert rel_err(att.relevance[att.wrt[0]], g[f"{preset}:relevance"]) <= 1e-6


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("preset", PRESETS + ("epsilon",))
def test_node_accounts_close(name, preset, explained):
    c = explained(name, preset).conservation
    assert c.nodes, "no node received relevance"
    assert c.max_residual <= 1e-9
    total = c.at_wrt + c.absorbed + c.loss + c.deficit
    assert abs(total - c.target) <= 1e-9 * max(abs(c.target), 1.0)


@pytest.mark.parametrize("name", ["llama", "llama_ids", "llama_op23", "qwen3", "gemma3"])
def test_cp_lrp_conserves_without_biases(name, explained):
    c = explained(name, "cp-lrp").conservation
    assert abs(c.absorbed) <= 1e-12 * abs(c.target)
    assert abs(c.ratio - 1.0) <= 1e-10


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "qwen2"])
def test_cp_lrp_conserves_with_absorbers(name, explained):
    c = explained(name, "cp-lrp").conservation
    assert abs(c.at_wrt + c.absorbed + c.loss - c.target) <= 1e-10 * abs(c.target)


@pytest.mark.parametrize("name", names())
def test_float32_close_to_float64(name, explained):
    a32, a64 = explained(name, dtype="float32"), explained(name)
    for w in a64.wrt:
        r32 = a32.relevance[w]
        assert r32.dtype == np.float32 and np.isfinite(r32).all()
        assert rel_err(r32, a64.relevance[w]) <= 1e-3


@pytest.mark.parametrize("a,b", [("bert", "bert_legacy"), ("llama", "llama_op23")])
@pytest.mark.parametrize("preset", PRESETS)
def test_equivalent_graphs_agree(a, b, preset, explained):
    ra, rb = explained(a, preset), explained(b, preset)
    np.testing.assert_array_equal(np.asarray(ra.target), np.asarray(rb.target))
    assert rel_err(rb.relevance[rb.wrt[0]], ra.relevance[ra.wrt[0]]) <= 1e-6


@pytest.mark.parametrize("preset", PRESETS)
def test_ids_graph_agrees_with_embeds_graph(preset, explained):
    ids_model = model("llama_ids")
    rb = explained("llama_ids", preset)
    gather = ids_model.graph.producer[rb.wrt[0]]
    table = ids_model.graph.initializers[gather.inputs[0]]
    embeds = table[feeds("llama_ids")["input_ids"]]
    ra = reflrp.explain(model("llama"), {"inputs_embeds": embeds}, preset=preset)
    np.testing.assert_array_equal(np.asarray(ra.target), np.asarray(rb.target))
    assert rel_err(rb.relevance[rb.wrt[0]], ra.relevance["inputs_embeds"]) <= 1e-6


def test_ids_model_attributes_to_embedding_output(explained):
    att = explained("llama_ids")
    (w,) = att.wrt
    node = model("llama_ids").graph.producer[w]
    assert node.op_type == "Gather" and node.inputs[0] in model("llama_ids").graph.initializers


def test_latent_relevance_matches_lxt(explained):
    g = golden("llama")
    if g is None or "attnlrp:latent:mlp0" not in g.files:
        pytest.skip("no latent golden")
    tensor = json.loads(str(g["meta"]))["latent_onnx_tensor"]
    att = explained("llama")
    assert rel_err(att.relevance[tensor], g["attnlrp:latent:mlp0"]) <= 1e-6


def test_relevance_is_kept_for_every_latent_tensor(explained):
    att = explained("llama")
    softmaxes = [n.outputs[0] for n in model("llama").graph.nodes if n.op_type == "Softmax"]
    assert softmaxes and all(s in att.relevance for s in softmaxes)
    assert np.array_equal(att.relevance["logits"], att.seed)


def test_zero_inputs_and_positions_stay_finite():
    x = feeds("llama")["inputs_embeds"].copy()
    x[:, 2] = 0.0
    for dtype in ("float32", "float64"):
        att = reflrp.explain(model("llama"), {"inputs_embeds": x}, dtype=dtype)
        r = att.relevance["inputs_embeds"]
        assert np.isfinite(r).all() and np.all(r[:, 2] == 0)


def _masked_attention_model(full_row=-3.4028234663852886e38):
    """softmax(x @ x^T + mask) @ x with one fully masked row (``full_row``: finfo.min by default) and
    GPT-2 style finfo.min masks added twice (so -inf in float32)."""
    lo = np.finfo(np.float32).min
    mask = np.zeros((4, 4), np.float32)
    mask[1, :] = full_row
    mask[2, 3] = lo
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["s"]),
             helper.make_node("Add", ["s", "mask"], ["sm"]),
             helper.make_node("Add", ["sm", "mask2"], ["sm2"]),
             helper.make_node("Softmax", ["sm2"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["y"])]
    mask2 = np.zeros((4, 4), np.float32)
    mask2[2, 3] = lo  # finfo.min twice: -inf in float32
    inits = [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(mask2, "mask2")]
    g = helper.make_graph(nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])], inits)
    return reflrp.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("preset", PRESETS)
def test_fully_masked_rows_never_nan(dtype, preset):
    m = _masked_attention_model()
    x = np.random.default_rng(0).normal(size=(1, 4, 3)).astype(np.float32)
    seed = np.ones((1, 4, 3))
    att = reflrp.explain(m, {"x": x}, target=seed, dtype=dtype, preset=preset)
    for name, r in att.relevance.items():
        assert np.isfinite(r).all(), name
    c = att.conservation
    assert c.max_residual <= (1e-3 if dtype == "float32" else 1e-9)  # float32: G = R / y cancels in the uniform row
    if preset == "attnlrp":  # the fully masked row's relevance is absorbed by the mask (not a deficit)
        softmax = next(a for a in c.nodes if a.op == "Softmax")
        assert softmax.absorbed != 0.0


def test_a_row_of_only_minus_inf_is_nan_and_refused():
    """ONNX's softmax of a row of -inf is NaN (onnxruntime's too): the forward says so, and explain
    refuses to spread relevance through it rather than returning NaN."""
    m = _masked_attention_model(full_row=-np.inf)
    x = np.random.default_rng(0).normal(size=(1, 4, 3)).astype(np.float32)
    y = m.run({"x": x})["y"]
    assert np.isnan(y[0, 1]).all() and np.isfinite(np.delete(y, 1, axis=1)).all()
    with pytest.raises(reflrp.RuleError, match="NaN or infinite"):
        reflrp.explain(m, {"x": x}, target=np.ones((1, 4, 3)))


def _to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with float16 weights, inputs and outputs (casts to float become float16)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    def half(a):
        with np.errstate(over="ignore"):  # finfo(float32).min masks become -inf, as a real fp16 export has
            return a.astype(np.float16)

    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(t)), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(a.t)), a.t.name))
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float16_model_upcast(dtype, explained):
    proto = onnx.load(MODELS / "llama.onnx")
    m16 = reflrp.load(_to_float16(proto))
    x = feeds("llama")["inputs_embeds"].astype(np.float16)
    att = reflrp.explain(m16, {"inputs_embeds": x}, dtype=dtype)
    r = att.relevance["inputs_embeds"]
    assert r.dtype == np.dtype(dtype) and np.isfinite(r).all()
    assert rel_err(r, explained("llama").relevance["inputs_embeds"]) <= 0.05  # weights rounded to fp16


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert_legacy", "vit", "cnn", "llama_ids", "llama_op23"])
def test_checkpoint_sqrt_gives_identical_relevance(name, explained):
    full = explained(name)
    ck = reflrp.explain(model(name), feeds(name), checkpoint="sqrt")
    w = full.wrt[0]
    assert rel_err(ck.relevance[w], full.relevance[w]) <= 1e-12
    assert set(ck.relevance) == set(full.wrt)  # latent relevance is not kept in checkpoint mode
    assert [a.node for a in ck.conservation.nodes] == [a.node for a in full.conservation.nodes]
    assert ck.conservation.max_residual <= 1e-9


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_keep_without_checkpoint_keeps_only_what_was_asked(name, explained):
    """keep=[...] drops latent relevance once passed on; what is kept is identical to the full run."""
    full = explained(name)
    latent = next(a.node for a in full.conservation.nodes if a.op == "MatMul")
    tensor = next(n for n in model(name).graph.nodes if n.name == latent).outputs[0]
    some = reflrp.explain(model(name), feeds(name), keep=[tensor])
    assert set(some.relevance) == set(full.wrt) | {tensor}
    for k, v in some.relevance.items():
        assert np.array_equal(v, full.relevance[k]), k
    assert [a.node for a in some.conservation.nodes] == [a.node for a in full.conservation.nodes]
