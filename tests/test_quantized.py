"""Quantized kernels (reflrp.ops.quant) against onnxruntime on one-node models, and the committed
quantized deployments (models/deployed) against onnxruntime on the same file.

Integer outputs must be equal; float outputs equal to float32 rounding. The documented exception:
onnxruntime's uint8 x int8 MatMulInteger on AVX2 saturates pair sums to int16, which
test_u8s8_saturation_is_onnxruntimes_not_the_spec pins down (reflrp computes the exact product).
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(21)


NARROW = ("uint4", "int4", "e4m3fn", "e5m2")  # types onnxruntime's python API cannot hand over


def one_node(op, inputs, consts=(), opset=21, then_dequantize=False, **attrs):
    """A one-node model; ``inputs`` name -> array in order; names in ``consts`` are initializers.
    ``then_dequantize`` appends DequantizeLinear (same scale, zero point, attributes) so that a 4-bit
    or float8 result leaves the graph as float."""
    node = helper.make_node(op, list(inputs), ["y"] if op != "DynamicQuantizeLinear" else ["y", "s", "z"],
                            name="q", **attrs)
    if then_dequantize:
        node.output[0] = "yq"
        back = helper.make_node("DequantizeLinear", ["yq"] + list(inputs)[1:], ["y"], name="dq",
                                **{k: v for k, v in attrs.items() if k in ("axis", "block_size")})
    dyn = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for n, v in inputs.items() if n not in consts]
    inits = [numpy_helper.from_array(v, n) for n, v in inputs.items() if n in consts]
    nodes = [node, back] if then_dequantize else [node]
    outs = [helper.make_empty_tensor_value_info(o) for o in nodes[-1].output]
    m = helper.make_model(helper.make_graph(nodes, "q", dyn, outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m, {n: v for n, v in inputs.items() if n not in consts}


def both(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = list(reflrp.load(m).run(feeds).values())
    return ours, theirs


def assert_equal_outputs(m, feeds, float_tol=0.0):
    ours, theirs = both(m, feeds)
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and np.dtype(a.dtype) == np.dtype(b.dtype), (a.dtype, b.dtype)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if float_tol:
            assert np.allclose(a64, b64, rtol=float_tol, atol=float_tol * np.abs(b64).max(), equal_nan=True)
        else:
            assert np.array_equal(a64, b64, equal_nan=True), np.argwhere(a64 != b64)[:5]


def floats(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


QTYPES = {"uint8": np.uint8, "int8": np.int8, "uint4": ml_dtypes.uint4, "int4": ml_dtypes.int4,
          "e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "uint16": np.uint16, "int16": np.int16}


def zero_point(qtype, shape=()):
    dtype = np.dtype(QTYPES[qtype])
    if qtype.startswith("e"):
        return np.zeros(shape, dtype)
    value = {"uint8": 128, "int8": -3, "uint4": 8, "int4": -1, "uint16": 30000, "int16": -7}[qtype]
    return np.full(shape, value).astype(dtype)


@pytest.mark.parametrize("qtype", sorted(QTYPES))
@pytest.mark.parametrize("layout", ["tensor", "axis", "block"])
def test_quantize_linear(qtype, layout):
    x = floats(4, 6, 8, scale=3.0)
    x[0, 0, :4] = [0.25, -0.25, 0.75, 1e6]  # ties at half and a saturating value
    if layout == "tensor":
        scale, zp, attrs = np.array(0.5, np.float32), zero_point(qtype), {}
    elif layout == "axis":
        scale, zp, attrs = (RNG.random(6) * 0.5 + 0.1).astype(np.float32), zero_point(qtype, (6,)), dict(axis=1)
    else:
        scale = (RNG.random((4, 6, 2)) * 0.5 + 0.1).astype(np.float32)
        zp, attrs = zero_point(qtype, (4, 6, 2)), dict(axis=2, block_size=4)
    m, feeds = one_node("QuantizeLinear", dict(x=x, s=scale, z=zp), ("s", "z"), then_dequantize=qtype in NARROW, **attrs)
    assert_equal_outputs(m, feeds)


@pytest.mark.parametrize("qtype", sorted(QTYPES))
@pytest.mark.parametrize("layout", ["tensor", "axis", "block"])
def test_dequantize_linear(qtype, layout):
    dtype = np.dtype(QTYPES[qtype])
    if qtype.startswith("e"):
        q = floats(4, 6, 8, scale=4.0).astype(dtype)
    else:
        lo, hi = (-8, 8) if qtype == "int4" else (0, 16) if qtype == "uint4" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        q = RNG.integers(lo, hi, (4, 6, 8)).astype(dtype)
    if layout == "tensor":
        scale, zp, attrs = np.array(0.05, np.float32), zero_point(qtype), {}
    elif layout == "axis":
        scale, zp, attrs = (RNG.random(8) * 0.1).astype(np.float32), zero_point(qtype, (8,)), dict(axis=-1)
    else:
        scale = (RNG.random((2, 6, 8)) * 0.1).astype(np.float32)
        zp, attrs = zero_point(qtype, (2, 6, 8)), dict(axis=0, block_size=2)
    consts = ("q", "s", "z") if qtype in NARROW else ("s", "z")
    m, feeds = one_node("DequantizeLinear", dict(q=q, s=scale, z=zp), consts, **attrs)
    assert_equal_outputs(m, feeds, float_tol=1e-7)


def test_quantize_without_zero_point_defaults_to_uint8_and_saturates():
    x = np.array([-1.0, 0.4, 0.5, 0.6, 1.5, 2.5, 300.0, np.inf], np.float32)
    m, feeds = one_node("QuantizeLinear", dict(x=x, s=np.array(1.0, np.float32)), ("s",))
    ours, theirs = both(m, feeds)
    assert ours[0].dtype == np.uint8 and np.array_equal(ours[0], theirs[0])
    assert ours[0].tolist() == [0, 0, 0, 1, 2, 2, 255, 255]  # half to even, saturation


@pytest.mark.parametrize("case", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize_linear(case):
    x = {"mixed": floats(3, 7, scale=2), "positive": np.abs(floats(3, 7)) + 0.1,
         "negative": -np.abs(floats(3, 7)) - 0.1, "zeros": np.zeros((3, 7), np.float32)}[case]
    m, feeds = one_node("DynamicQuantizeLinear", dict(x=x))
    assert_equal_outputs(m, feeds)


@pytest.mark.parametrize("a_type,b_type,zps", [(np.uint8, np.uint8, "tensor"), (np.uint8, np.uint8, "rows_cols"),
                                               (np.int8, np.int8, "tensor"), (np.uint8, np.int8, "small")])
def test_matmul_integer(a_type, b_type, zps):
    def ints(dtype, shape, small=False):
        info = np.iinfo(dtype)
        lo, hi = (info.min // 2, info.max // 2) if small else (info.min, info.max)
        return RNG.integers(lo, hi + 1, shape).astype(dtype)
    a, b = ints(a_type, (2, 5, 16)), ints(b_type, (16, 6), small=zps == "small")
    if zps == "rows_cols":  # onnxruntime's CPU kernel takes a per-column B zero point, a scalar A one
        za, zb = np.array(ints(a_type, ())), ints(b_type, (6,))
    else:
        za, zb = np.array(ints(a_type, ())), np.array(ints(b_type, ()) if zps != "small" else 0, b_type)
    m, feeds = one_node("MatMulInteger", dict(a=a, b=b, za=za, zb=zb), ("b", "za", "zb"))
    assert_equal_outputs(m, feeds)


def test_u8s8_saturation_is_onnxruntimes_not_the_spec():
    """uint8 x int8 with large values: onnxruntime's AVX2 kernel saturates adjacent product pairs to
    int16; reflrp's exact result differs, and equals the exact integer product."""
    a = np.full((2, 16), 255, np.uint8)
    b = np.full((16, 3), 127, np.int8)
    m, feeds = one_node("MatMulInteger", dict(a=a, b=b), ("b",))
    ours, theirs = both(m, feeds)
    assert ours[0].tolist() == [[16 * 255 * 127] * 3] * 2
    exact_equals_ort = np.array_equal(ours[0], theirs[0])
    saturated = np.array_equal(theirs[0], np.full((2, 3), 8 * 32767, np.int32))
    assert exact_equals_ort or saturated  # the two behaviours onnxruntime has (VNNI / AVX2)


@pytest.mark.parametrize("with_zp,pads,group", [(True, [1, 1, 1, 1], 1), (False, [0, 0, 0, 0], 1), (True, [1, 0, 1, 0], 2)])
def test_conv_integer(with_zp, pads, group):
    x = RNG.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    w = RNG.integers(0, 256, (6, 4 // group, 3, 3)).astype(np.uint8)
    inputs = dict(x=x, w=w)
    if with_zp:
        inputs.update(zx=np.array(100, np.uint8), zw=np.array(120, np.uint8))
    m, feeds = one_node("ConvInteger", inputs, ("w", "zx", "zw"), pads=pads, group=group)
    assert_equal_outputs(m, feeds)


def test_qlinear_matmul():
    a = RNG.integers(0, 256, (3, 16)).astype(np.uint8)
    b = RNG.integers(0, 256, (16, 5)).astype(np.uint8)
    inputs = dict(a=a, sa=np.array(0.02, np.float32), za=np.array(128, np.uint8), b=b, sb=np.array(0.01, np.float32),
                  zb=np.array(120, np.uint8), sy=np.array(0.05, np.float32), zy=np.array(100, np.uint8))
    m, feeds = one_node("QLinearMatMul", inputs, tuple(k for k in inputs if k != "a"))
    assert_equal_outputs(m, feeds)


@pytest.mark.parametrize("per_channel,bias", [(False, False), (True, True)])
def test_qlinear_conv(per_channel, bias):
    x = RNG.integers(0, 256, (1, 3, 6, 6)).astype(np.uint8)
    w = RNG.integers(-63, 64, (4, 3, 3, 3)).astype(np.int8)  # 7-bit: no int16 pair saturation on AVX2
    sw = (RNG.random(4) * 0.01 + 0.001).astype(np.float32) if per_channel else np.array(0.004, np.float32)
    zw = np.zeros(4, np.int8) if per_channel else np.array(0, np.int8)
    inputs = dict(x=x, sx=np.array(0.02, np.float32), zx=np.array(128, np.uint8), w=w, sw=sw, zw=zw,
                  sy=np.array(0.03, np.float32), zy=np.array(110, np.uint8))
    if bias:
        inputs["b"] = RNG.integers(-500, 500, 4).astype(np.int32)
    m, feeds = one_node("QLinearConv", inputs, tuple(k for k in inputs if k != "x"), pads=[1, 1, 1, 1])
    assert_equal_outputs(m, feeds)


def test_quantize_negative_control():
    """A different scale changes the integers: the equality checks above can fail."""
    x = floats(4, 8, scale=3)
    m1, feeds = one_node("QuantizeLinear", dict(x=x, s=np.array(0.5, np.float32)), ("s",))
    m2, _ = one_node("QuantizeLinear", dict(x=x, s=np.array(0.51, np.float32)), ("s",))
    assert not np.array_equal(both(m1, feeds)[0][0], both(m2, feeds)[1][0])


# ------------------------------------------------------------------ the committed quantized deployments

DEPLOYED = Path(__file__).resolve().parents[1] / "models" / "deployed"
MANIFEST = json.loads((DEPLOYED / "MANIFEST.json").read_text())["models"]
QUANTIZED = [e for e in MANIFEST if e.get("committed") and e["pipeline"].startswith(("qdyn", "qdq", "qop", "nbits"))]
# one quantum of an activation quantizer after float32 AveragePool sums that differ from
# onnxruntime's in the last bit (a rounding tie lands on the other side)
ONE_QUANTUM = {"cnn.qdq.onnx": 1e-2, "cnn.qdq_pc.onnx": 1e-2}


@pytest.mark.parametrize("entry", QUANTIZED, ids=lambda e: e["file"])
def test_deployed_quantized_model_runs_like_onnxruntime(entry):
    path = DEPLOYED / entry["file"]
    m = reflrp.load(str(path))
    feeds = dict(np.load(DEPLOYED / entry["feeds"]))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ours = next(iter(m.run(feeds).values()))
    tol = ONE_QUANTUM.get(entry["file"], 1e-6)
    assert float(np.abs(ours.astype(np.float64) - theirs).max()) <= tol * float(np.abs(theirs).max())


def test_qoperator_models_load_as_core_ops():
    """The QOperator deployments (QGemm, QLinearAdd, QLinearSoftmax, ...) load as core ops: no com.microsoft
    node is left, and each rewritten node is recorded as an expansion."""
    for entry in (e for e in QUANTIZED if e["pipeline"].startswith("qop")):
        graph = reflrp.load(str(DEPLOYED / entry["file"])).graph
        contrib = [o.split("::")[1] for o in entry["op_types"] if o.startswith("com.microsoft::")]
        assert contrib and all(n.domain == "" for n in graph.nodes), entry["file"]
        assert {x.original.op_type for x in graph.expansions.values()} == set(contrib)


def contrib_model(node, graph_inputs: dict, consts: dict):
    """A one-node com.microsoft model: ``graph_inputs`` fed, ``consts`` initializers; every output kept."""
    dyn = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for n, v in graph_inputs.items()]
    g = helper.make_graph([node], "q", dyn, [helper.make_empty_tensor_value_info(o) for o in node.output if o],
                          initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m


def qattention_model(per_column=False, zero_points=True, mask="2d", past=False, **attrs):
    """QAttention on a uint8 (2, 5, 16) input, uint8 weights (16, 48) for 4 heads (onnxruntime's uint8 x int8
    product saturates on AVX2, see above); the input's scale and zero point fed, as DynamicQuantizeLinear
    gives them."""
    rng = np.random.default_rng(7)
    w_scale = (rng.uniform(0.01, 0.03, 48) if per_column else np.array(0.02)).astype(np.float32)
    w_zp = (rng.integers(100, 156, 48) if per_column else np.array(128)).astype(np.uint8)
    feeds = {"x": rng.integers(0, 256, (2, 5, 16)).astype(np.uint8), "sx": np.array(0.05, np.float32),
             "zx": np.array(120, np.uint8)}
    consts = {"w": rng.integers(0, 256, (16, 48)).astype(np.uint8), "b": rng.standard_normal(48).astype(np.float32),
              "sw": w_scale, "zw": w_zp}
    names = ["x", "w", "b", "sx", "sw", "", "zx", "zw"]
    if mask == "2d":
        feeds["m"] = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
        names[5] = "m"
    elif mask == "lengths":
        feeds["m"] = np.array([5, 3], np.int32)
        names[5] = "m"
    if not zero_points:
        names, feeds = names[:6], {k: v for k, v in feeds.items() if k != "zx"}
        consts.pop("zw")
        consts["w"] = rng.integers(0, 128, (16, 48)).astype(np.uint8)
    outputs = ["y"]
    if past:  # a decoder step: 3 cached positions of (key, value) per head, the new ones appended
        feeds["past"] = rng.standard_normal((2, 2, 4, 3, 4)).astype(np.float32)
        names, outputs = names + [""] * (8 - len(names)) + ["past"], ["y", "present"]
    node = helper.make_node("QAttention", names, outputs, name="qattn", domain="com.microsoft", num_heads=4, **attrs)
    return contrib_model(node, feeds, consts), feeds


@pytest.mark.parametrize("case", [dict(), dict(per_column=True), dict(mask="lengths"), dict(mask=None, unidirectional=1),
                                  dict(zero_points=False), dict(scale=0.3), dict(mask=None, past=True, unidirectional=1)],
                         ids=str)
def test_qattention_runs_like_onnxruntime(case):
    """QAttention = com.microsoft Attention on the dequantized input and weights (reflrp.canonical.qtransformer):
    per tensor and per column, padding masks in both formats, causal, without zero points, a given scale."""
    m, feeds = qattention_model(**case)
    ours, theirs = both(m, feeds)
    assert reflrp.load(m).graph.expansions and all(n.domain == "" for n in reflrp.load(m).graph.nodes)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    assert len(ours) == len(theirs) == (2 if case.get("past") else 1)


def test_qattention_explains_with_closed_books():
    m, feeds = qattention_model(per_column=True)
    att = reflrp.explain(reflrp.load(m), feeds, wrt=None)
    assert att.conservation.ok and all(np.isfinite(np.asarray(r)).all() for r in att.relevance.values())


@pytest.mark.parametrize("attrs, why", [(dict(do_rotary=1), "do_rotary=1"),
                                        (dict(past_present_share_buffer=1), "past_present_share_buffer=1")])
def test_qattention_options_it_cannot_expand_are_refused_naming_the_node(attrs, why):
    m, _ = qattention_model(**attrs)
    with pytest.raises(reflrp.UnsupportedOpError, match=f"qattn.*{why}"):
        reflrp.load(m)


def test_qattention_weight_scale_of_another_shape_is_refused():
    m, _ = qattention_model(per_column=True)
    sw = next(i for i in m.graph.initializer if i.name == "sw")
    sw.CopyFrom(numpy_helper.from_array(np.full(12, 0.02, np.float32), "sw"))
    with pytest.raises(reflrp.UnsupportedOpError, match=r"qattn.*weight_scale of shape \(12,\)"):
        reflrp.load(m)


@pytest.mark.parametrize("segments", [True, False])
def test_qembed_layer_normalization_runs_like_onnxruntime(segments):
    """QEmbedLayerNormalization = EmbedLayerNormalization on the five dequantized tables; the mask index too."""
    rng = np.random.default_rng(8)
    tables = {"word": (50, 16), "pos": (8, 16), "seg": (2, 16), "gamma": (16,), "beta": (16,)}
    consts = {}
    for k, shape in tables.items():
        consts[k] = rng.integers(0, 256, shape).astype(np.uint8)
        consts[k + "_s"] = np.array(rng.uniform(0.005, 0.02), np.float32)
        consts[k + "_z"] = np.array(rng.integers(100, 156), np.uint8)
    feeds = {"ids": rng.integers(0, 50, (2, 6)).astype(np.int32), "mask": np.array([[1] * 6, [1] * 4 + [0] * 2], np.int32)}
    if segments:
        feeds["seg_ids"] = rng.integers(0, 2, (2, 6)).astype(np.int32)
    order = ["word", "pos", "seg", "gamma", "beta"]
    use = [k if segments or k != "seg" else "" for k in order]
    names = (["ids", "seg_ids" if segments else "", *use[:3], *use[3:], "mask"] + [k + "_s" if k else "" for k in use]
             + [k + "_z" if k else "" for k in use])
    if not segments:
        consts = {k: v for k, v in consts.items() if not k.startswith("seg")}
    node = helper.make_node("QEmbedLayerNormalization", names, ["y", "mask_index"], name="qemb", domain="com.microsoft",
                            epsilon=1e-12)
    m = contrib_model(node, feeds, consts)
    ours, theirs = both(m, feeds)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_straight_through_adjoints():
    """Quantize -> Dequantize chains to the identity gradient where nothing saturates (the straight-through
    estimator), and the integer products' adjoints are the float products' on the centred operands."""
    from reflrp.ops import record
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 5))
    scale, zp = np.float64(0.01), np.uint8(128)
    q = record("QuantizeLinear").kernel_for(19)(np, x, scale, zp)
    y = record("DequantizeLinear").kernel_for(19)(np, q, scale, zp)
    g = rng.standard_normal((3,) + x.shape)
    gq = record("DequantizeLinear").adjoint_for(19)(np, [g], [q, scale, zp], [y], {}, (True, False, False))[0]
    gx = record("QuantizeLinear").adjoint_for(19)(np, [gq], [x, scale, zp], [q], {}, (True, False, False))[0]
    np.testing.assert_allclose(gx, g, rtol=1e-12)
    big = record("QuantizeLinear").kernel_for(19)(np, np.array([5.0, -5.0, 0.3]), scale, zp)  # first two saturate
    gs = record("QuantizeLinear").adjoint_for(19)(np, [np.ones((1, 3))], [np.array([5.0, -5.0, 0.3]), scale, zp],
                                                  [big], {}, (True, False, False))[0]
    assert gs.tolist() == [[0.0, 0.0, 100.0]]
    A = rng.integers(0, 255, (2, 3, 4)).astype(np.uint8)
    B = rng.integers(-128, 127, (4, 5)).astype(np.int8)
    azp, bzp = np.uint8(120), np.int8(3)
    out = record("MatMulInteger").kernel_for(10)(np, A, B, azp, bzp)
    G = rng.standard_normal((2,) + out.shape)
    ga, gb = record("MatMulInteger").adjoint_for(10)(np, [G], [A, B, azp, bzp], [out], {}, (True, True, False, False))[:2]
    a, b = A.astype(float) - 120, B.astype(float) - 3
    np.testing.assert_allclose(ga, G @ b.T, rtol=1e-12)
    np.testing.assert_allclose(gb, np.einsum("bmi,kbmj->kij", a, G), rtol=1e-12)
