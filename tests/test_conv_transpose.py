"""ConvTranspose's forward against onnxruntime over its geometry attributes: strides, pads, dilations,
groups, output_padding, output_shape and auto_pad, in 1-D, 2-D and 3-D. onnxruntime has ConvTranspose in
float32 only; the float64 run gets the same (float32-exact) data and is held to float32's tolerance."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp

CASES = [  # id, x shape, weight shape, bias?, attributes
    ("plain", (2, 3, 4, 5), (3, 2, 3, 3), True, {}),
    ("strides-pads-dilations", (1, 2, 4, 4), (2, 3, 3, 2), True,
     dict(strides=[2, 3], pads=[1, 0, 0, 1], dilations=[1, 2])),
    ("groups-output_padding", (1, 4, 3, 3), (4, 1, 2, 2), True, dict(group=2, strides=[2, 2], output_padding=[1, 0])),
    ("output_shape", (1, 2, 3, 3), (2, 2, 3, 3), True, dict(strides=[2, 2], output_shape=[6, 7])),
    ("output_shape-same_upper", (1, 2, 3, 3), (2, 2, 3, 3), True,
     dict(strides=[2, 2], output_shape=[6, 7], auto_pad="SAME_UPPER")),
    ("output_shape-past-the-full-output", (1, 1, 3, 3), (1, 2, 3, 3), True,
     dict(strides=[3, 2], output_shape=[10, 8])),
    ("same_upper-odd", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ("same_lower-odd", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ("same_lower-even", (1, 2, 3, 4), (2, 2, 2, 2), False, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ("valid", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(auto_pad="VALID", strides=[2, 1])),
    ("1d-no-bias", (2, 2, 5), (2, 3, 3), False, dict(strides=[2])),
    ("3d", (1, 2, 3, 3, 2), (2, 2, 2, 2, 2), True, dict(strides=[1, 2, 1])),
    ("depthwise", (1, 3, 4, 4), (3, 1, 3, 3), True, dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1])),
]


def model_of(x_shape, w, b, attrs, elem):
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if b is not None else [])
    node = helper.make_node("ConvTranspose", ["x", "W"] + (["B"] if b is not None else []), ["y"], name="ct", **attrs)
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,bias,attrs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conv_transpose_matches_onnxruntime(x_shape, w_shape, bias, attrs, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((x_shape, w_shape, attrs)).encode()))
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32) if bias else None
    model = model_of(x_shape, w, b, attrs, TensorProto.FLOAT)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = reflrp.load(model).run({"x": x.astype(dtype)}, dtype=dtype)["y"]
    assert got.shape == want.shape and got.dtype == dtype
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
