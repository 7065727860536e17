"""Bar: every zoo model's forward equals onnxruntime (or the torch output saved at export)."""
from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from zoo import MODELS, feeds, manifest, model, names, rel_err, torch_output


def reference(name: str) -> np.ndarray:
    """onnxruntime's output; the exporter's torch output where onnxruntime cannot run the model."""
    try:
        sess = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds(name))[0]
    except Exception:  # onnxruntime's RotaryEmbedding rejects the opset-23 LLaMA export
        return torch_output(name)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("dtype", [None, "float64"])
def test_forward_matches_reference(name, dtype):
    m = model(name)
    out = m.run(feeds(name), dtype=dtype)[m.output_names[0]]
    assert out.dtype == (np.float64 if dtype else np.float32)
    assert rel_err(out, reference(name)) <= 1e-5


@pytest.mark.parametrize("name", names())
def test_manifest_matches_files(name):
    entry = manifest()[name]
    data = (MODELS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) < 1_000_000
    assert [i["name"] for i in entry["inputs"]] == list(model(name).input_names)


def test_keep_returns_intermediates():
    m = model("llama")
    inner = next(n.outputs[0] for n in m.graph.nodes if n.op_type == "Softmax")
    out = m.run(feeds("llama"), intermediates=[inner])
    assert out[inner].shape[-1] == out[inner].shape[-2]
    np.testing.assert_allclose(out[inner].sum(-1), 1.0, rtol=1e-5)


def test_dynamic_batch_and_sequence():
    m = model("llama")
    x = feeds("llama")["inputs_embeds"]
    full = m.run({"inputs_embeds": x})["logits"]
    one = m.run({"inputs_embeds": x[:1, :3]})["logits"]
    np.testing.assert_allclose(one, full[:1, :3], rtol=1e-5, atol=1e-6)


def test_supported_ops_cover_the_zoo():
    import reflrp
    ops = set(reflrp.supported_ops())
    for name in names():
        assert set(manifest()[name]["op_types"]) <= ops, name


def test_nonzero_selects_rows_like_onnxruntime_and_relevance_follows_them():
    """NonZero (Cohere's rotary embedding in an optimum KV export): index rows of x by a mask's non-zero
    entries; the forward equals onnxruntime, the relevance reaches the selected rows only, the books close."""
    import reflrp
    from onnx import TensorProto, helper
    nodes = [helper.make_node("NonZero", ["m"], ["nz"]),
             helper.make_node("Squeeze", ["nz", "zero"], ["rows"]),
             helper.make_node("Gather", ["x", "rows"], ["g"], axis=0),
             helper.make_node("MatMul", ["g", "w"], ["y"])]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    g = helper.make_graph(nodes, "nz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3]),
                                        helper.make_tensor_value_info("m", TensorProto.INT64, [5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                           helper.make_tensor("w", TensorProto.FLOAT, [3, 2], w.ravel().tolist())])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"x": rng.standard_normal((5, 3)).astype(np.float32), "m": np.array([0, 2, 0, 1, 5], np.int64)}
    theirs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    m = reflrp.load(proto)
    np.testing.assert_allclose(m.run(feeds)["y"], theirs, rtol=1e-6)
    att = reflrp.explain(m, feeds, target=np.ones(theirs.shape), wrt=["x"], epsilon=0.0)
    R = np.asarray(att.relevance["x"])
    assert att.conservation.ok and not R[[0, 2]].any() and R[[1, 3, 4]].any()
