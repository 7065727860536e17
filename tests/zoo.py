"""Helpers over the committed model zoo in models/ (MANIFEST.json, <name>.ref.npz, <name>.lxt.npz)."""
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
    return sorted(manifest())


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


from reflrp.testing import rel_err  # noqa: E402,F401  (the one helper, re-exported for the tests)
