"""Relevance through quantized models: an integer product is LRP-epsilon on its zero-point-centred
operands, i.e. the linear layer with dequantized operands, and quantize / dequantize pass relevance on
(identity). Each one-layer case is checked against a dense float64 oracle built from onnxruntime's own
integers (the quantized activations it computes), and the committed quantized deployments explain with
finite relevance, closed books and per-token relevance close to their float32 source's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(5)


def graph_model(nodes, inputs, outputs, inits, opset=21):
    """``inputs``: name -> array fed; ``inits``: name -> array; ``outputs``: names (untyped)."""
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                     list(v.shape)) for n, v in inputs.items()],
                          [helper.make_empty_tensor_value_info(o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def ort_outputs(m, feeds) -> dict:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def seed_at(y, target):
    """LRP's seed: the target logit's value in each row, 0 elsewhere."""
    R = np.zeros_like(y, dtype=np.float64)
    R[np.arange(len(y)), target] = y[np.arange(len(y)), target]
    return R


def dense_epsilon(x, M, R_z, z):
    """LRP-epsilon (eps = 0) through ``z = M @ x`` per row, written as the dense matrix ``M``
    (out x in): ``R_x[i] = sum_j x[i] M[j, i] R_z[j] / z[j]``."""
    return np.stack([x[b] * (M.T @ (R_z[b] / z[b])) for b in range(len(x))])


def assert_close(a, b, tol=1e-9):
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) <= tol * float(np.abs(b).max()), float(np.abs(a - b).max())


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def explained(request):
    """``explain`` in float64 on the speed layer and on the plain path; the books must close."""
    def run(m, feeds, target, output="y"):
        att = reflrp.explain(reflrp.load(m), feeds, target=target, output=output, dtype="float64",
                             fast=request.param)
        assert att.conservation.ok, att.conservation
        return att
    return run


# ------------------------------------------------------------------ one quantized layer each

def dynamic_layer(per_column: bool):
    """quantize_dynamic's pattern: DynamicQuantizeLinear, MatMulInteger, Cast, Mul by both scales, Add bias."""
    wq = RNG.integers(0, 256, (8, 5)).astype(np.uint8)
    wz = RNG.integers(100, 156, (5,)).astype(np.uint8) if per_column else np.array(128, np.uint8)
    inits = {"wq": wq, "wz": wz, "ws": np.array(0.01, np.float32), "b": RNG.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"], name="matmul_integer"),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["y"])]
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    return graph_model(nodes, {"x": x}, ["y", "xq", "xs", "xz"], inits), {"x": x}, inits


@pytest.mark.parametrize("per_column", [False, True])
def test_dynamic_quantized_matmul_is_epsilon_on_the_dequantized_layer(explained, per_column):
    m, feeds, w = dynamic_layer(per_column)
    o = ort_outputs(m, feeds)
    x_dq = (o["xq"].astype(np.float64) - float(o["xz"])) * float(o["xs"])
    W = (w["wq"].astype(np.float64) - w["wz"].astype(np.float64)) * float(w["ws"])
    z = x_dq @ W
    y = z + w["b"]
    target = np.array([0, 3, 1, 4])
    R_z = z * seed_at(y, target) / y  # the bias Add's epsilon rule
    want = dense_epsilon(x_dq, W.T, R_z, z)
    att = explained(m, feeds, target)
    assert_close(np.asarray(att.relevance["x"]), want)
    assert_close(np.asarray(att.relevance["xq"]), want)  # DynamicQuantizeLinear: identity
    raw = dense_epsilon(o["xq"].astype(np.float64), W.T, R_z, z)  # negative control: operands not centred
    assert float(np.abs(raw - want).max()) > 0.1 * float(np.abs(want).max())


def test_plan_shows_integer_products_and_quantizers():
    m, feeds, _ = dynamic_layer(False)
    plan = reflrp.load(m).plan()
    rows = {p.node.op_type: p for p in plan.nodes}
    assert rows["MatMulInteger"].rule == "epsilon" and "zero-point-centred" in rows["MatMulInteger"].why
    assert rows["DynamicQuantizeLinear"].rule == "identity"
    assert "quantize→dequantize: identity" in rows["DynamicQuantizeLinear"].why
    assert "zero-point-centred" in str(plan)


def test_static_qdq_matmul_is_epsilon_on_the_dequantized_layer(explained):
    """quantize_static's QDQ pattern: Q -> DQ on the activation, DQ on the weight (per column), MatMul, Add."""
    wq = RNG.integers(-127, 128, (8, 5)).astype(np.int8)
    ws = (RNG.random(5) * 0.02 + 0.005).astype(np.float32)
    inits = {"sx": np.array(0.03, np.float32), "zx": np.array(120, np.uint8), "wq": wq, "ws": ws,
             "wz": np.zeros(5, np.int8), "b": RNG.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xdq"], name="dq"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
             helper.make_node("MatMul", ["xdq", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["y"])]
    feeds = {"x": RNG.standard_normal((4, 8)).astype(np.float32)}
    m = graph_model(nodes, feeds, ["y", "xdq"], inits)
    o = ort_outputs(m, feeds)
    x_dq = o["xdq"].astype(np.float64)
    W = wq.astype(np.float64) * ws.astype(np.float64)
    z = x_dq @ W
    target = np.array([1, 1, 0, 2])
    want = dense_epsilon(x_dq, W.T, z * seed_at(z + inits["b"], target) / (z + inits["b"]), z)
    att = explained(m, feeds, target)
    assert_close(np.asarray(att.relevance["x"]), want, 1e-7)  # W in float32 (the DQ kernel's type)
    notes = {p.node.name: p.why for p in att.plan.nodes}
    assert notes["q"] == notes["dq"] == "quantize→dequantize: identity"


def conv_matrix(w, in_shape, pad):
    """The dense matrix of a stride-1 2-D convolution (no bias), by explicit loops."""
    c_in, h, wd = in_shape
    c_out, _, kh, kw = w.shape
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    M = np.zeros((c_out, oh, ow, c_in, h, wd))
    for o in range(c_out):
        for i in range(oh):
            for j in range(ow):
                for c in range(c_in):
                    for a in range(kh):
                        for b in range(kw):
                            r, s = i + a - pad, j + b - pad
                            if 0 <= r < h and 0 <= s < wd:
                                M[o, i, j, c, r, s] += w[o, c, a, b]
    return M.reshape(c_out * oh * ow, c_in * h * wd)


def test_conv_integer_is_epsilon_on_the_dequantized_conv(explained):
    w = RNG.integers(0, 256, (3, 2, 3, 3)).astype(np.uint8)
    inits = {"w": w, "wz": np.array(131, np.uint8), "ws": np.array(0.02, np.float32)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("ConvInteger", ["xq", "w", "xz", "wz"], ["acc"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["z"]),
             helper.make_node("Flatten", ["z"], ["y"])]
    feeds = {"x": RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    m = graph_model(nodes, feeds, ["y", "xq", "xs", "xz"], inits)
    o = ort_outputs(m, feeds)
    x_dq = ((o["xq"].astype(np.float64) - float(o["xz"])) * float(o["xs"])).reshape(2, -1)
    M = conv_matrix((w.astype(np.float64) - 131) * float(inits["ws"]), (2, 4, 4), 1)
    z = x_dq @ M.T
    target = np.array([5, 40])
    want = dense_epsilon(x_dq, M, seed_at(z, target), z).reshape(2, 2, 4, 4)
    assert_close(np.asarray(explained(m, feeds, target).relevance["x"]), want)


def test_qlinear_matmul_is_epsilon_on_the_dequantized_layer_before_rounding(explained):
    """QLinearMatMul requantizes its accumulator; the rule reads the product before rounding (the rounding
    is straight-through), so the books close exactly and the layer is the dequantized one."""
    b = RNG.integers(0, 256, (8, 5)).astype(np.uint8)
    inits = {"sa": np.array(0.03, np.float32), "za": np.array(128, np.uint8), "b": b,
             "sb": np.array(0.01, np.float32), "zb": np.array(125, np.uint8), "sy": np.array(0.05, np.float32),
             "zy": np.array(100, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    feeds = {"x": RNG.standard_normal((4, 8)).astype(np.float32)}
    m = graph_model(nodes, feeds, ["y", "xq"], inits)
    o = ort_outputs(m, feeds)
    x_dq = (o["xq"].astype(np.float64) - 128) * float(inits["sa"])
    W = (b.astype(np.float64) - 125) * float(inits["sb"])
    z = x_dq @ W
    target = np.array([0, 1, 2, 3])
    want = dense_epsilon(x_dq, W.T, seed_at(o["y"].astype(np.float64), target), z)
    att = explained(m, feeds, target)
    assert_close(np.asarray(att.relevance["x"]), want, 1e-6)  # the requantization multiplier is float32


def test_qlinear_conv_bias_absorbs_its_share(explained):
    w = RNG.integers(-63, 64, (3, 2, 3, 3)).astype(np.int8)
    ws = (RNG.random(3) * 0.02 + 0.005).astype(np.float32)
    bias = RNG.integers(-300, 300, 3).astype(np.int32)
    inits = {"sx": np.array(0.03, np.float32), "zx": np.array(128, np.uint8), "w": w, "ws": ws,
             "wz": np.zeros(3, np.int8), "sy": np.array(0.04, np.float32), "zy": np.array(110, np.uint8), "B": bias}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "sx", "zx", "w", "ws", "wz", "sy", "zy", "B"], ["yq"],
                              pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["yc"]),
             helper.make_node("Flatten", ["yc"], ["y"])]
    feeds = {"x": RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    m = graph_model(nodes, feeds, ["y", "xq"], inits)
    o = ort_outputs(m, feeds)
    x_dq = ((o["xq"].astype(np.float64) - 128) * float(inits["sx"])).reshape(2, -1)
    scale = np.float64(np.float32(0.03)) * ws.astype(np.float64)  # the int32 bias is in x_scale * w_scale
    M = conv_matrix(w.astype(np.float64) * ws.astype(np.float64)[:, None, None, None], (2, 4, 4), 1)
    b_real = np.repeat(bias * scale, 16)
    z = x_dq @ M.T + b_real
    target = np.array([3, 30])
    R = seed_at(o["y"].astype(np.float64), target)
    want = dense_epsilon(x_dq, M, R, z).reshape(2, 2, 4, 4)
    att = explained(m, feeds, target)
    assert_close(np.asarray(att.relevance["x"]), want, 1e-6)
    absorbed = sum(float(R[i, t] * b_real[t] / z[i, t]) for i, t in enumerate(target))
    assert abs(att.conservation.absorbed - absorbed) <= 1e-6 * abs(absorbed)


# ------------------------------------------------------------------ the committed quantized deployments

DEPLOYED = Path(__file__).resolve().parents[1] / "models" / "deployed"
MANIFEST = json.loads((DEPLOYED / "MANIFEST.json").read_text())["models"]
QUANTIZED = [e for e in MANIFEST if e.get("committed") and e["pipeline"].startswith(("qdyn", "qdq", "qop", "nbits"))]
# per-token Pearson r against the float32 source measured on the committed models (tools/make_deployed_models.py
# --check writes the table): 0.954 (cnn.qdq, per pixel) .. 1.0; the bar allows quantization error, not a wrong rule
MIN_R = 0.95


def per_position(r):
    """Relevance per token (rank 3: summed over features) or per pixel (rank 4: summed over channels)."""
    return r.sum(-1).ravel() if r.ndim == 3 else r.sum(1).ravel()


def typed_feeds(entry, graph):
    feeds = dict(np.load(DEPLOYED / entry["feeds"]))
    return {v.name: feeds[v.name].astype(v.dtype) if v.dtype is not None and v.dtype.kind == "f" else feeds[v.name]
            for v in graph.inputs}


def source_of(entry):
    own = DEPLOYED / f"{entry['source']}.onnx"  # exported for the deployments (bert_ids), else the zoo's
    return reflrp.load(str(own if own.exists() else DEPLOYED.parent / f"{entry['source']}.onnx"))


@pytest.mark.parametrize("entry", QUANTIZED, ids=lambda e: e["file"])
def test_quantized_deployment_explains_close_to_its_source(entry):
    model, source = reflrp.load(str(DEPLOYED / entry["file"])), source_of(entry)
    ours = reflrp.explain(model, typed_feeds(entry, model.graph))
    theirs = reflrp.explain(source, typed_feeds(entry, source.graph))
    r_q, r_src = (np.asarray(a.relevance[a.wrt[0]]) for a in (ours, theirs))
    assert np.isfinite(r_q).all() and ours.conservation.ok
    assert r_q.shape == r_src.shape
    r = np.corrcoef(per_position(r_q), per_position(r_src))[0, 1]
    assert r >= MIN_R, r
    shuffled = np.random.default_rng(0).permutation(per_position(r_src))  # negative control
    assert np.corrcoef(per_position(r_q), shuffled)[0, 1] < MIN_R


def test_dequantized_embedding_table_is_found_as_the_lookup():
    """bert_ids.qdq: the embedding Gather reads DequantizeLinear(table) (folded at load), not an
    initializer; the default wrt is still its output, and it matches the fp32 source's relevance."""
    entry = next(e for e in MANIFEST if e.get("file") == "bert_ids.qdq.onnx")
    model = reflrp.load(str(DEPLOYED / entry["file"]))
    ours = reflrp.explain(model, typed_feeds(entry, model.graph))
    assert ours.wrt == ("/m/bert/embeddings/word_embeddings/Gather_output_0",)
    theirs = reflrp.explain(source_of(entry), typed_feeds(entry, model.graph))
    r = np.corrcoef(per_position(np.asarray(ours.relevance[ours.wrt[0]])),
                    per_position(np.asarray(theirs.relevance[theirs.wrt[0]])))[0, 1]
    assert r >= MIN_R and ours.conservation.ok
