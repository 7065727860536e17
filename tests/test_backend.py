"""The array namespace: numpy here, cupy when a GPU answers (those cases skip without one)."""
from __future__ import annotations

import numpy as np
import pytest

import reflrp
from reflrp.backend import cupy_or_none, namespace, to_numpy
from zoo import feeds, model, rel_err

CUPY = cupy_or_none()
XPS = [pytest.param(np, id="numpy"),
       pytest.param(CUPY, id="cupy", marks=pytest.mark.skipif(CUPY is None, reason="no GPU / cupy"))]


def test_default_namespace_is_numpy():
    assert namespace(None, [np.zeros(1)]) is np


def test_cuda_without_gpu_is_a_clear_error():
    if CUPY is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(reflrp.ReflrpError, match="cupy is not installed or no GPU"):
        reflrp.explain(model("llama"), feeds("llama"), device="cuda")


@pytest.mark.parametrize("xp", XPS)
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "vit", "cnn"])
def test_same_relevance_on_every_namespace(xp, name):
    base = reflrp.explain(model(name), feeds(name))
    dev = {k: xp.asarray(v) for k, v in feeds(name).items()}
    att = reflrp.explain(model(name), dev)
    w = base.wrt[0]
    assert type(att.relevance[w]).__module__.split(".")[0] == xp.__name__
    assert rel_err(to_numpy(att.relevance[w]), base.relevance[w]) <= 1e-9


def test_gpu_check_cpu_fallback(capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import gpu_check
    assert gpu_check.main(["--models", "llama", "cnn"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    if CUPY is None:
        assert "CPU fallback" in out
