"""Bar: bad input gets the specific error class and a message naming the culprit."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import reflrp
from zoo import MODELS, feeds, model


def tiny(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vinfo(name, shape=(2, 3), t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_truncated_file(tmp_path):
    data = (MODELS / "llama.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(reflrp.ModelLoadError, match="cut.onnx"):
        reflrp.load(path)


def test_not_onnx(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_text("hello, this is not a protobuf")
    with pytest.raises(reflrp.ModelLoadError, match="x.onnx"):
        reflrp.load(path)


def test_missing_file():
    with pytest.raises(reflrp.ModelLoadError, match="no ONNX file"):
        reflrp.load("/nonexistent/model.onnx")


def test_unknown_op_names_node_op_opset():
    m = tiny([helper.make_node("Frobnicate", ["x"], ["y"], name="weird")], [vinfo("x")], [vinfo("y")])
    with pytest.raises(reflrp.UnsupportedOpError) as e:
        reflrp.load(m)
    assert "weird" in str(e.value) and "Frobnicate" in str(e.value) and "opset 18" in str(e.value)
    assert "MatMul" in str(e.value)  # lists what is supported


def test_unknown_domain():
    m = tiny([helper.make_node("Attention", ["x"], ["y"], name="fused", domain="com.microsoft")],
             [vinfo("x")], [vinfo("y")])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(reflrp.UnsupportedOpError, match="com.microsoft"):
        reflrp.load(m)


def test_missing_initializer():
    m = tiny([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [vinfo("x")], [vinfo("y")])
    with pytest.raises(reflrp.GraphError, match="'W'"):
        reflrp.load(m)


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")]
    with pytest.raises(reflrp.GraphError, match="cycle"):
        reflrp.load(tiny(nodes, [vinfo("x")], [vinfo("b")]))


def test_missing_and_extra_feed():
    m = model("llama")
    with pytest.raises(reflrp.FeedError, match="missing feed.*inputs_embeds"):
        m.run({})
    x = feeds("llama")["inputs_embeds"]
    with pytest.raises(reflrp.FeedError, match="unknown input.*attention_mask"):
        m.run({"inputs_embeds": x, "attention_mask": x})


def test_wrong_rank_shape_dtype():
    m = model("llama")
    x = feeds("llama")["inputs_embeds"]
    with pytest.raises(reflrp.FeedError, match="inputs_embeds.*rank 3"):
        m.run({"inputs_embeds": x[0]})
    with pytest.raises(reflrp.FeedError, match="inputs_embeds.*axis 2 must be 32"):
        m.run({"inputs_embeds": x[..., :16]})
    with pytest.raises(reflrp.FeedError, match="inputs_embeds.*dtype float32.*int64"):
        m.run({"inputs_embeds": x.astype(np.int64)})


def test_nan_and_inf_feeds_run_like_onnxruntime():
    """NaN and +-inf are values (run is onnxruntime's forward): they propagate as onnxruntime's do."""
    import onnxruntime as ort
    x = feeds("llama")["inputs_embeds"].copy()
    x[0, 1, 2], x[0, 0, 3] = np.nan, np.inf  # row 0 only: row 1 stays finite
    got = model("llama").run({"inputs_embeds": x})
    session = ort.InferenceSession(str(MODELS / "llama.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"inputs_embeds": x})[0]
    have = got[model("llama").output_names[0]]
    assert np.isnan(want).any() and np.isfinite(want).any()  # the case exercises both
    np.testing.assert_array_equal(np.isnan(have), np.isnan(want))
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    with pytest.raises(reflrp.FeedError, match="inputs_embeds.*NaN"):
        reflrp.explain(model("llama"), {"inputs_embeds": x})


def test_kernel_failure_names_node():
    # Reshape to an impossible shape: the kernel error names node, op and input shapes
    shape = helper.make_tensor("s", TensorProto.INT64, [1], [7])
    m = tiny([helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")], [vinfo("x")],
             [vinfo("y", (7,))], [shape])
    with pytest.raises(reflrp.KernelError, match="bad_reshape.*Reshape.*x: \\(2, 3\\)"):
        reflrp.load(m).run({"x": np.ones((2, 3), np.float32)})


def test_target_out_of_range():
    with pytest.raises(reflrp.TargetError, match="out of range"):
        reflrp.explain(model("llama"), feeds("llama"), target=np.array([1, 999]))
    with pytest.raises(reflrp.TargetError, match="one class per batch row"):
        reflrp.explain(model("llama"), feeds("llama"), target=np.array([1, 2, 3]))


def test_unknown_preset_and_rule():
    with pytest.raises(reflrp.RuleError, match="unknown preset"):
        reflrp.explain(model("llama"), feeds("llama"), preset="magic")
    with pytest.raises(reflrp.RuleError, match="unknown rule"):
        reflrp.explain(model("llama"), feeds("llama"), rules={"Softmax": "nonsense"})


def test_override_inside_an_elementwise_region_is_refused_not_ignored():
    """SiLU's Sigmoid is inside the region ending at its Mul: an override there would change nothing."""
    m = model("llama")
    inner = [p for p in m.plan("attnlrp").nodes if p.rule is None and "inside the region" in p.why]
    assert inner
    name = inner[0].node.name
    with pytest.raises(reflrp.RuleError, match=f"{name}.*inside the elementwise region.*ending at"):
        m.plan("attnlrp", rules={name: "identity"})
    with pytest.raises(reflrp.RuleError, match="inside the elementwise region"):
        m.plan("attnlrp", rules={inner[0].node.op_type: "identity"})


def test_dynamic_input_without_rule_names_node():
    nodes = [helper.make_node("ReduceL2", ["x", "ax"], ["y"], name="running_total")]
    ax = helper.make_tensor("ax", TensorProto.INT64, [1], [1])
    m = reflrp.load(tiny(nodes, [vinfo("x")], [vinfo("y")], [ax]))
    with pytest.raises(reflrp.RuleError, match="running_total.*ReduceL2"):
        reflrp.explain(m, {"x": np.ones((2, 3), np.float32)})


def test_options_no_rule_takes_is_an_error_and_one_reaching_no_node_a_warning():
    m = reflrp.load(MODELS / "zennit" / "cnn_bn_folded.onnx")
    with pytest.raises(reflrp.RuleError, match="no rule of preset 'epsilon-plus' takes 'gamma'"):
        m.plan("epsilon-plus", options={"gamma": 0.3})
    with pytest.warns(reflrp.ReflrpWarning, match=r"options\['dense.gamma'\] reaches no node"):
        m.plan("epsilon-gamma-box", options={"dense.gamma": 0.3, "low": -1.0, "high": 1.0})


def test_inference_session_arguments_are_checked_not_ignored():
    """onnxruntime's arguments: providers choose the device (unknown names refused), an unknown keyword or
    provider options are errors, session options are accepted (they change no number)."""
    import onnxruntime as ort
    path = str(MODELS / "llama.onnx")
    session = reflrp.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert reflrp.InferenceSession(path, providers="CPUExecutionProvider").get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(reflrp.ReflrpError, match="TensorrtExecutionProvider"):
        reflrp.InferenceSession(path, providers=["TensorrtExecutionProvider"])
    with pytest.raises(reflrp.ReflrpError, match="unknown argument.*sess_opts"):
        reflrp.InferenceSession(path, sess_opts=None)
    with pytest.raises(reflrp.ReflrpError, match="provider options"):
        reflrp.InferenceSession(path, providers=[("CPUExecutionProvider", {"arena_extend_strategy": 1})])


@pytest.mark.parametrize("listed_as_input", [False, True])
def test_schema_types_flow_from_large_initializers(listed_as_input):
    """Type inference sees a large initializer as a graph input of its type and shape (its values are not
    serialized for it): a float64 weight of 4096 elements reaching a float32 Add through an Identity is
    still refused at load, naming the Add; the same weight in float32 loads, and a small shape initializer
    still reaches Reshape."""
    def build(weight_type):
        w = helper.make_tensor("w", weight_type, (64, 64), np.ones(4096).tolist())
        shape = helper.make_tensor("shape", TensorProto.INT64, (2,), [64, 64])
        inputs = [vinfo("x", (64, 64))] + ([vinfo("w", (64, 64), weight_type)] if listed_as_input else [])
        nodes = [helper.make_node("Identity", ["w"], ["w1"]), helper.make_node("Reshape", ["w1", "shape"], ["w2"]),
                 helper.make_node("Add", ["x", "w2"], ["y"], name="the_add")]
        return tiny(nodes, inputs, [vinfo("y", (64, 64))], [w, shape])
    with pytest.raises(reflrp.ModelLoadError, match="'the_add' .*Add.*breaks its ONNX schema"):
        reflrp.load(build(TensorProto.DOUBLE).SerializeToString())
    m = reflrp.load(build(TensorProto.FLOAT).SerializeToString())
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)
    np.testing.assert_array_equal(m.run({"x": x})["y"], x + 1)
