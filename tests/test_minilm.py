"""Real weights: all-MiniLM-L6-v2 (exported on demand by `python tools/export_models.py --minilm`,
LXT golden by `python tools/make_lxt_goldens.py --minilm`). Skips when the export is absent (CI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import reflrp

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "minilm"
pytestmark = pytest.mark.skipif(not (CACHE / "minilm.onnx").exists(), reason="MiniLM export not in .cache/")


@pytest.fixture(scope="module")
def minilm():
    return reflrp.load(CACHE / "minilm.onnx")


def test_forward_matches_onnxruntime(minilm):
    import onnxruntime as ort
    x = np.load(CACHE / "minilm.ref.npz")["inputs_embeds"]
    ref = ort.InferenceSession(str(CACHE / "minilm.onnx"), providers=["CPUExecutionProvider"]).run(None, {"inputs_embeds": x})[0]
    out = minilm.run({"inputs_embeds": x})["last_hidden_state"]
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


def test_agrees_with_lxt(minilm):
    path = CACHE / "minilm.lxt.npz"
    if not path.exists():
        pytest.skip("no MiniLM LXT golden")
    g = np.load(path)
    meta = json.loads(str(g["meta"]))
    assert "CLS position 0" in meta["target_convention"]
    x = g["inputs:inputs_embeds"]
    hidden = minilm.run({"inputs_embeds": x}, dtype="float64")["last_hidden_state"]
    seed = np.zeros_like(hidden)
    for b, unit in enumerate(g["target"]):  # LXT seeded last_hidden_state[b, 0, unit] with its value
        seed[b, 0, unit] = hidden[b, 0, unit]
    att = reflrp.explain(minilm, {"inputs_embeds": x}, target=seed)
    want = g["attnlrp:relevance"]
    assert np.abs(att.relevance["inputs_embeds"] - want).max() / np.abs(want).max() <= 1e-6
    assert att.conservation.max_residual <= 1e-9
