"""Helpers over the committed model zoo in models/ (MANIFEST.json, <name>.ref.npz, <name>.lxt.npz,
<name>.grad.npz)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

import reflrp

MODELS = Path(__file__).resolve().parent.parent / "models"


def manifest() -> dict:
    return json.loads((MODELS / "MANIFEST.json").read_text())["models"]


def names() -> list[str]:
    """The zoo models whose reference batch has no padding (the masked ones: ``padded_names``)."""
    return sorted(n for n, e in manifest().items() if "ref_padding" not in e)


def padded_names() -> list[str]:
    """The masked / KV-cache models: their reference batch holds padded and fully padded rows."""
    return sorted(n for n, e in manifest().items() if "ref_padding" in e)


def fully_padded_rows(name: str) -> list[int]:
    return manifest()[name]["ref_padding"]["fully_padded_rows"]


@lru_cache(maxsize=None)
def model(name: str) -> reflrp.Model:
    return reflrp.load(MODELS / f"{name}.onnx")


def feeds(name: str) -> dict:
    ref = np.load(MODELS / f"{name}.ref.npz")
    return {k: ref[k] for k in model(name).input_names}


def torch_output(name: str) -> np.ndarray:
    ref = np.load(MODELS / f"{name}.ref.npz")
    return ref["out:" + model(name).output_names[0]]


def golden(name: str):
    path = MODELS / f"{name}.lxt.npz"
    return np.load(path) if path.exists() else None


def grad_golden(name: str):
    """torch autograd float64 gradients (tools/make_grad_goldens.py): grad:<tensor>, target, logits."""
    path = MODELS / f"{name}.grad.npz"
    return np.load(path) if path.exists() else None


from reflrp.testing import rel_err  # noqa: E402,F401  (the one helper, re-exported for the tests)
