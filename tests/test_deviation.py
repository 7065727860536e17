"""float16 / bfloat16 deployments: explain runs the float64 reference by default, and reflrp.deviation (printed
by ``reflrp explain`` for 16-bit models) reports how far the model's own type is from it."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import reflrp
from reflrp.cli import main

ort = pytest.importorskip("onnxruntime")
DEPLOYED = Path(__file__).resolve().parents[1] / "models" / "deployed"
MANIFEST = {e["file"]: e for e in json.loads((DEPLOYED / "MANIFEST.json").read_text())["models"] if "file" in e}


def feeds_for(name, model):
    feeds = dict(np.load(DEPLOYED / MANIFEST[name]["feeds"]))
    return {v.name: feeds[v.name].astype(v.dtype) if v.dtype is not None and v.dtype.kind == "f" else feeds[v.name]
            for v in model.graph.inputs}


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["bert.opt_fp16.onnx", "llama.fp16.onnx", "bert_ids.opt_fp16.onnx"])
def test_float16_deviation_is_the_size_of_onnxruntimes_own(name):
    """The forward deviation reflrp reports for the model's float16 is of the size onnxruntime's float16
    kernels deviate from the float64 reference (an independent float16 implementation)."""
    model = reflrp.load(str(DEPLOYED / name))
    feeds = feeds_for(name, model)
    d = reflrp.deviation(model, feeds)
    assert d.dtype == "float16" and d.books_ok
    reference = model.run(feeds, dtype="float64")[model.output_names[0]]
    theirs = ort.InferenceSession(str(DEPLOYED / name), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ort_dev = relative(theirs, reference)
    assert 1e-5 < d.forward and 0.1 * ort_dev < d.forward < 10 * ort_dev, (d.forward, ort_dev)
    assert 1e-5 < d.relevance < 0.05 and d.pearson_r > 0.999


def test_bfloat16_deviation():
    model = reflrp.load(str(DEPLOYED / "llama.bf16.onnx"))
    d = reflrp.deviation(model, feeds_for("llama.bf16.onnx", model))
    assert d.dtype == "bfloat16" and d.books_ok
    assert 1e-4 < d.forward < 0.05 and 1e-4 < d.relevance < 0.1 and d.pearson_r > 0.99  # 8 bits of mantissa


def test_float32_model_deviates_by_float32_rounding_only():
    """Negative control: the same measure on an fp32 model is float32-small."""
    model = reflrp.load(str(DEPLOYED / "bert.opt.onnx"))
    d = reflrp.deviation(model, feeds_for("bert.opt.onnx", model))
    assert d.dtype == "float32" and d.forward < 1e-5 and d.relevance < 1e-4


def test_float16_inside_float32_io_books_are_held_to_float16():
    """llama.fp16 keeps float32 inputs and outputs but computes in float16: explaining in the model's types
    holds the books to float16's tolerance, not float32's (which its rounding cannot meet)."""
    model = reflrp.load(str(DEPLOYED / "llama.fp16.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", reflrp.ReflrpWarning)
        att = reflrp.explain(model, feeds_for("llama.fp16.onnx", model), dtype=None)
    assert att.conservation.ok and att.conservation.tolerance == 3e-2


def test_cli_prints_the_deviation_of_a_float16_model(capsys):
    assert main(["explain", str(DEPLOYED / "bert.opt_fp16.onnx"), "--input", str(DEPLOYED / "bert.feeds.npz")]) == 0
    out = capsys.readouterr().out
    assert "model dtype float16: forward deviates" in out and "relevance" in out
    assert main(["explain", str(DEPLOYED / "bert.opt.onnx"), "--input", str(DEPLOYED / "bert.feeds.npz")]) == 0
    assert "model dtype" not in capsys.readouterr().out  # fp32: not by default
