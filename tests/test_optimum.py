"""Bar: optimum's graphs run as onnxruntime runs them.

The decoder is models/optimum/gpt2_decoder.onnx, exported by ``optimum-cli export onnx --task
text-generation-with-past`` (tools/export_optimum.py). Its attention mask goes through
``Flatten(axis=2)`` of a rank-2 tensor: ``axis == rank``, which a kernel computing ``axis % rank``
turns into 0 (every optimum decoder hit that: gpt2, llama, mistral, phi3, gpt-neox).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp
from zoo import MODELS

DECODER = MODELS / "optimum" / "gpt2_decoder.onnx"


def test_flatten_at_rank_of_a_mask_then_mul_and_reduce():
    """``Flatten(mask, axis=2)`` of a [b, s] mask is [b*s, 1]; times the mask as a column, summed:
    ``sum(mask**2)``. With axis 0 instead ([1, b*s]) the product broadcasts to the outer product."""
    nodes = [helper.make_node("Flatten", ["mask"], ["flat"], axis=2),
             helper.make_node("Reshape", ["mask", "column"], ["col"]),
             helper.make_node("Mul", ["flat", "col"], ["prod"]),
             helper.make_node("ReduceSum", ["prod"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "optimum_mask",
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[numpy_helper.from_array(np.array([-1, 1], np.int64), "column")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    mask = np.arange(12, dtype=np.float32).reshape(2, 6)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"mask": mask})[0]
    got = reflrp.load(model).run({"mask": mask})["y"]
    assert float(want) == float((mask ** 2).sum()) == 506.0  # the oracle agrees with the formula
    assert got.shape == want.shape and float(got) == float(want)


def decoder_feeds(session, batch, seq, past, pad, seed=0):
    """A decoding step: ``seq`` new tokens after ``past`` cached ones, row 0 left-padded by ``pad``."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, past + seq), np.int64)
    mask[0, :pad] = 0
    position = np.cumsum(mask, -1) - 1
    position[mask == 0] = 1
    feeds = {"input_ids": rng.integers(0, 64, (batch, seq)).astype(np.int64), "attention_mask": mask,
             "position_ids": position[:, past:].astype(np.int64)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = rng.standard_normal((batch, i.shape[1], past, i.shape[3])).astype(np.float32)
    return feeds


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(DECODER), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch,seq,past,pad", [(2, 5, 0, 2), (2, 1, 4, 3), (3, 3, 2, 0), (1, 4, 0, 0), (2, 6, 1, 5)],
                         ids=["first-step-padded", "one-token-after-4", "3-after-2", "batch1", "padded-past"])
def test_optimum_decoder_equals_onnxruntime(session, batch, seq, past, pad):
    feeds = decoder_feeds(session, batch, seq, past, pad)
    want = session.run(None, feeds)
    got = reflrp.load(DECODER).run(feeds)
    for output, w in zip(session.get_outputs(), want):
        assert got[output.name].shape == w.shape, output.name
        np.testing.assert_allclose(got[output.name], w, rtol=1e-5, atol=1e-6, err_msg=output.name)


def test_the_committed_decoder_is_the_manifests():
    entry = json.loads((MODELS / "optimum" / "MANIFEST.json").read_text())["gpt2"]
    data = DECODER.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) < 1_000_000
    assert entry["command"].startswith("optimum-cli export onnx")
