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
