"""Run the ONNX backend node conformance cases (generated in memory) through reflrp."""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

import reflrp
from reflrp.dtypes import is_float


@lru_cache(maxsize=1)
def load_cases():
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return tuple(load_model_tests(kind="node"))


def eligible(case, supported) -> bool:
    """A case counts when every node is a default-domain op reflrp registers a kernel for, whatever
    its element types, opset or value types (those are reflrp's to get right, or to refuse)."""
    g = case.model.graph
    return bool(g.node) and all(n.domain in ("", "ai.onnx") and n.op_type in supported for n in g.node)


def run_case(case) -> str | None:
    """None when every data set matches the expected outputs, else a one-line reason."""
    try:
        model = reflrp.load(case.model)
    except reflrp.ReflrpError as exc:
        return f"load: {exc}"[:300]
    from onnx import numpy_helper

    def arr(v):
        return numpy_helper.to_array(v) if hasattr(v, "SerializeToString") else v

    names = model.input_names
    for inputs, expected in case.data_sets:
        inputs, expected = [arr(v) for v in inputs], [arr(v) for v in expected]
        feeds = {n: v for n, v in zip(names, inputs)}
        try:
            got = model.run(feeds)
        except Exception as exc:  # a conformance miss, recorded with its reason
            return f"{type(exc).__name__}: {exc}"[:300]
        for name, want in zip(model.output_names, expected):
            have = np.asarray(got[name])
            want = np.asarray(want)
            if have.shape != want.shape:
                return f"output {name}: shape {have.shape} != {want.shape}"
            if is_float(want.dtype):
                ok = np.allclose(have.astype(np.float64), want.astype(np.float64), rtol=max(case.rtol, 1e-5),
                                 atol=max(case.atol, 1e-6), equal_nan=True)
            else:
                ok = np.array_equal(have, want)
            if not ok or (have.dtype != want.dtype and want.dtype != object):
                return f"output {name}: values or dtype differ ({have.dtype} vs {want.dtype})"
    return None
