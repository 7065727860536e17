"""onnxruntime's QOperator ops (reflrp.canonical.qoperator) against onnxruntime's own kernels.

Each case is a one-node com.microsoft model built with onnx.helper, random scales and zero points,
uint8 and int8 data. reflrp runs the expansion ``Q(op(DQ(x)))`` in float32; its integers must equal
onnxruntime's. Measured by ``python tools/qoperator_sweep.py --seeds 100`` (these cases, 472k integers):
0 differ, although onnxruntime computes these ops with lookup tables (Sigmoid, LeakyRelu, Concat, Where,
Softmax), integer sums (GlobalAveragePool) or MLAS's requantization (QGemm, Add, Mul); QGemm's float
output (no y_scale) agrees to float32 rounding (4.9e-7 relative). QLinearReduceMean has no onnxruntime
CPU kernel: it is checked against its documented formula in float64.
Weights are 7-bit (|w| < 64) where onnxruntime's u8s8 kernels would saturate pair sums to int16
(tests/test_quantized.py::test_u8s8_saturation_is_onnxruntimes_not_the_spec).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import reflrp
from reflrp.canonical import supported_rewrites
from reflrp.canonical.qoperator import QOPERATOR_OPS

ort = pytest.importorskip("onnxruntime")
MS = "com.microsoft"
QTYPES = {"uint8": np.uint8, "int8": np.int8}
S = (2, 3, 6, 5)  # N, C, H, W


def model(op, inputs, dynamic=("x", "a", "b", "cond"), **attrs):
    """One ``com.microsoft::op`` node; ``inputs`` name -> array in input order ("_" names skip an input);
    the names in ``dynamic`` are graph inputs, the others initializers."""
    names = [n if not n.startswith("_") else "" for n in inputs]
    node = helper.make_node(op, names, ["y"], name="qop", domain=MS, **attrs)
    fed = {n: v for n, v in inputs.items() if n in dynamic}
    g = helper.make_graph([node], "case", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                         list(v.shape)) for n, v in fed.items()],
                          [helper.make_empty_tensor_value_info("y")],
                          initializer=[numpy_helper.from_array(v, n) for n, v in inputs.items()
                                       if n not in fed and not n.startswith("_")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)])
    m.ir_version = 9
    return m, fed


def ort_run(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def ours(m, feeds):
    return next(iter(reflrp.load(m).run(feeds).values()))


# ------------------------------------------------------------------ random quantization parameters

def ints(rng, dtype, shape, bound=None):
    lo, hi = (np.iinfo(dtype).min, np.iinfo(dtype).max) if bound is None else (-bound, bound)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def scale(rng, lo=0.005, hi=0.05):
    return np.array(rng.uniform(lo, hi), np.float32)


def zp(rng, dtype):
    return np.array(rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1), dtype)


def probability_zp(dtype):
    """The output zero point quantize_static gives a softmax or sigmoid (scale 1/256)."""
    return np.array(0 if dtype == np.uint8 else -128, dtype)


def binary(rng, t, b_shape=S):
    return dict(a=ints(rng, t, S), sa=scale(rng), za=zp(rng, t), b=ints(rng, t, b_shape), sb=scale(rng),
                zb=zp(rng, t))


def unary(rng, t, y_scale=None, y_zp=None, shape=S, x_scale=(0.005, 0.05)):
    return dict(x=ints(rng, t, shape), sx=scale(rng, *x_scale), zx=zp(rng, t),
                sy=scale(rng) if y_scale is None else np.array(y_scale, np.float32),
                zy=zp(rng, t) if y_zp is None else y_zp)


def qgemm(rng, t, trans_a=0, per_column=True, bias="row", float_out=False):
    M, K, N = 4, 24, 6
    a = ints(rng, t, (K, M) if trans_a else (M, K))
    inputs = dict(a=a, sa=scale(rng, 0.01, 0.03), za=zp(rng, t), b=ints(rng, np.int8, (N, K), bound=63),
                  sb=(rng.random(N) * 0.01 + 0.001).astype(np.float32) if per_column else scale(rng, 0.001, 0.01),
                  zb=np.zeros(N, np.int8) if per_column else np.array(0, np.int8))
    inputs["c" if bias else "_c"] = (rng.integers(-3000, 3000, {"row": (N,), "full": (M, N)}[bias]).astype(np.int32)
                                     if bias else np.zeros(0))
    if not float_out:
        inputs.update(sy=scale(rng, 0.05, 0.2), zy=zp(rng, t))
    return inputs


# case -> (op, inputs(rng, dtype), attributes)
CASES = {
    "add": ("QLinearAdd", lambda r, t: {**binary(r, t), "sc": scale(r), "zc": zp(r, t)}, {}),
    "add_broadcast": ("QLinearAdd", lambda r, t: {**binary(r, t, S[-1:]), "sc": scale(r), "zc": zp(r, t)}, {}),
    "mul": ("QLinearMul", lambda r, t: {**binary(r, t), "sc": scale(r, 0.04, 0.4), "zc": zp(r, t)}, {}),
    "sigmoid": ("QLinearSigmoid", lambda r, t: unary(r, t, 1 / 256, probability_zp(t), x_scale=(0.01, 0.1)), {}),
    "leaky_relu": ("QLinearLeakyRelu", lambda r, t: unary(r, t), dict(alpha=0.1)),
    "softmax": ("QLinearSoftmax", lambda r, t: unary(r, t, 1 / 256, probability_zp(t), x_scale=(0.01, 0.1)),
                dict(opset=13, axis=-1)),
    "softmax_inner_axis": ("QLinearSoftmax", lambda r, t: unary(r, t, 0.0037, probability_zp(t), x_scale=(0.01, 0.1)),
                           dict(opset=13, axis=1)),  # a y_scale that is not 1/2^k: onnxruntime's floor(1/y_scale)
    "softmax_opset12": ("QLinearSoftmax", lambda r, t: unary(r, t, 1 / 256, probability_zp(t), x_scale=(0.01, 0.1)),
                        dict(opset=12, axis=2)),  # softmax over the flattened axes 2..
    "concat": ("QLinearConcat", lambda r, t: dict(sy=scale(r), zy=zp(r, t), **{k: v for k, v in binary(r, t).items()}),
               dict(axis=1)),
    "where": ("QLinearWhere", lambda r, t: dict(cond=r.random(S) > 0.5, **binary(r, t), sz=scale(r), zz=zp(r, t)), {}),
    "average_pool": ("QLinearAveragePool", lambda r, t: unary(r, t),
                     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "average_pool_nhwc": ("QLinearAveragePool", lambda r, t: unary(r, t, shape=(2, 6, 5, 3)),
                          dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0], count_include_pad=1,
                               channels_last=1)),
    "global_average_pool": ("QLinearGlobalAveragePool", lambda r, t: unary(r, t, shape=(2, 16, 7, 5)), {}),
    "global_average_pool_nhwc": ("QLinearGlobalAveragePool", lambda r, t: unary(r, t, shape=(2, 7, 5, 16)),
                                 dict(channels_last=1)),
    "conv_nhwc": ("QLinearConv", lambda r, t: dict(
        x=ints(r, t, (1, 6, 5, 3)), sx=scale(r), zx=zp(r, t), w=ints(r, np.int8, (4, 3, 3, 3), bound=63),
        sw=(r.random(4) * 0.01 + 0.001).astype(np.float32), zw=np.zeros(4, np.int8), sy=scale(r, 0.02, 0.1),
        zy=zp(r, t), bias=r.integers(-500, 500, 4).astype(np.int32)),
        dict(channels_last=1, pads=[1, 1, 1, 1], kernel_shape=[3, 3])),
    "gemm": ("QGemm", lambda r, t: qgemm(r, t), dict(transB=1)),
    "gemm_trans_a_alpha": ("QGemm", lambda r, t: qgemm(r, t, trans_a=1, per_column=False, bias="full"),
                           dict(transA=1, transB=1, alpha=0.5)),  # alpha scales the int32 bias too
    "gemm_no_bias": ("QGemm", lambda r, t: qgemm(r, t, bias=None), dict(transB=1, alpha=2.0)),
}
FLOAT_CASES = {"gemm_float_output": ("QGemm", lambda r, t: qgemm(r, t, trans_a=1, float_out=True),
                                     dict(transA=1, transB=1, alpha=0.5))}


@pytest.mark.parametrize("qtype", sorted(QTYPES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_qoperator_op_equals_onnxruntime(case, qtype):
    op, make, attrs = CASES[case]
    m, feeds = model(op, make(np.random.default_rng(sorted(CASES).index(case)), QTYPES[qtype]), **attrs)
    a, b = ours(m, feeds), ort_run(m, feeds)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b), f"{int((a != b).sum())} of {a.size} differ"


@pytest.mark.parametrize("qtype", sorted(QTYPES))
def test_qgemm_float_output(qtype):
    op, make, attrs = FLOAT_CASES["gemm_float_output"]
    m, feeds = model(op, make(np.random.default_rng(7), QTYPES[qtype]), **attrs)
    a, b = ours(m, feeds), ort_run(m, feeds)
    assert a.dtype == b.dtype == np.float32
    assert float(np.abs(a.astype(np.float64) - b).max()) <= 1e-6 * float(np.abs(b).max())


@pytest.mark.parametrize("qtype", sorted(QTYPES))
def test_qlinear_reduce_mean_is_its_documented_formula(qtype):
    """No onnxruntime CPU kernel: ``Q(ReduceMean(DQ(data)))`` in float64 (one quantum where a float32 mean
    lands on the other side of a rounding tie)."""
    t = QTYPES[qtype]
    inputs = unary(np.random.default_rng(3), t, shape=(2, 3, 8, 8))
    inputs["sy"] = np.array(inputs["sy"] / 4, np.float32)
    m, feeds = model("QLinearReduceMean", inputs, axes=[2, 3], keepdims=0)
    x = (inputs["x"].astype(np.float64) - float(inputs["zx"])) * float(inputs["sx"])
    lo, hi = np.iinfo(t).min, np.iinfo(t).max
    want = np.clip(np.rint(x.mean(axis=(2, 3)) / float(inputs["sy"])) + float(inputs["zy"]), lo, hi)
    got = ours(m, feeds)
    assert got.dtype == t and got.shape == (2, 3)
    assert np.abs(got.astype(np.float64) - want).max() <= 1 and (got == want).mean() >= 0.8


def test_changed_output_scale_changes_the_integers():
    """Negative control: the equality above can fail."""
    op, make, attrs = CASES["add"]
    inputs = make(np.random.default_rng(0), np.uint8)
    m, feeds = model(op, inputs, **attrs)
    m2, _ = model(op, {**inputs, "sc": np.array(inputs["sc"] * 1.05, np.float32)}, **attrs)
    assert not np.array_equal(ours(m2, feeds), ort_run(m, feeds))


def test_every_qoperator_op_has_a_case_and_is_registered():
    ops = {c[0] for c in CASES.values()} | {"QLinearReduceMean"}
    assert ops == set(QOPERATOR_OPS)
    assert {(MS, op) for op in QOPERATOR_OPS} <= set(supported_rewrites())


def test_expansion_is_dequantize_float_op_quantize():
    m, _ = model("QLinearAdd", CASES["add"][1](np.random.default_rng(0), np.uint8))
    graph = reflrp.load(m).graph
    assert graph.expansions["qop"].original.op_type == "QLinearAdd"
    assert [n.op_type for n in graph.nodes] == ["DequantizeLinear", "DequantizeLinear", "Add", "QuantizeLinear"]


def test_qgemm_y_scale_without_zero_point_is_refused_naming_the_node():
    inputs = qgemm(np.random.default_rng(0), np.uint8)
    inputs["_zy"] = inputs.pop("zy")
    m, _ = model("QGemm", inputs, transB=1)
    with pytest.raises(reflrp.UnsupportedOpError, match="qop.*y_zero_point"):
        reflrp.load(m)


# ------------------------------------------------------------------ relevance

def dense_epsilon(x, W, R_z, z):
    """LRP-epsilon (eps = 0) through ``z = x @ W (+ b)`` per row: ``R_x[i] = x[i] sum_j W[i, j] R_z[j] / z[j]``."""
    return x * ((R_z / z) @ W.T)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_qgemm_is_epsilon_on_the_dequantized_layer_with_its_bias(fast):
    """QuantizeLinear -> QGemm -> DequantizeLinear: relevance is the epsilon rule on the dequantized input,
    weight and bias (the quantizers pass relevance on), and the bias absorbs its share."""
    rng = np.random.default_rng(9)
    inputs = qgemm(rng, np.uint8)
    qnode = helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["a"], name="q")
    gemm = helper.make_node("QGemm", ["a", "sa", "za", "b", "sb", "zb", "c", "sy", "zy"], ["yq"], name="qgemm",
                            domain=MS, transB=1)
    back = helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"], name="dq")
    x = rng.standard_normal((4, 24)).astype(np.float32)
    consts = {k: v for k, v in inputs.items() if k != "a"}
    g = helper.make_graph([qnode, gemm, back], "rel", [helper.make_tensor_value_info("x", 1, list(x.shape))],
                          [helper.make_empty_tensor_value_info("y"), helper.make_empty_tensor_value_info("a")],
                          initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y, a_q = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sa, sb = np.float64(inputs["sa"]), inputs["sb"].astype(np.float64)
    a = (a_q.astype(np.float64) - float(inputs["za"])) * sa
    W = (inputs["b"].astype(np.float64) * sb[:, None]).T  # (K, N)
    bias = inputs["c"] * sa * sb
    z = a @ W + bias
    target = np.array([0, 3, 5, 1])
    R = np.zeros_like(z)  # LRP's seed: the target logit's value
    R[np.arange(4), target] = y.astype(np.float64)[np.arange(4), target]
    att = reflrp.explain(reflrp.load(m), {"x": x}, target=target, output="y", dtype="float64", fast=fast)
    want = dense_epsilon(a, W, R, z)
    assert att.conservation.ok, att.conservation
    got = np.asarray(att.relevance["x"])
    assert float(np.abs(got - want).max()) <= 1e-6 * float(np.abs(want).max())
    absorbed = float((R * bias / z).sum())
    assert abs(att.conservation.absorbed - absorbed) <= 1e-6 * abs(absorbed)
    raw = dense_epsilon(a_q.astype(np.float64), W, R, z)  # negative control: the zero point not removed
    assert float(np.abs(raw - want).max()) > 0.1 * float(np.abs(want).max())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_qlinear_add_splits_relevance_in_proportion_to_the_dequantized_addends(fast):
    """x1, x2 -> QuantizeLinear each -> QLinearAdd -> DequantizeLinear: the Add's epsilon rule on the
    dequantized operands, ``R_i = dq_i * R / (dq_1 + dq_2)`` (the requantization straight-through)."""
    rng = np.random.default_rng(4)
    s1, z1, s2, z2, sc, zc = (np.array(0.02, np.float32), np.array(120, np.uint8), np.array(0.03, np.float32),
                              np.array(131, np.uint8), np.array(0.05, np.float32), np.array(128, np.uint8))
    inits = dict(s1=s1, z1=z1, s2=s2, z2=z2, sc=sc, zc=zc)
    nodes = [helper.make_node("QuantizeLinear", ["x1", "s1", "z1"], ["q1"]),
             helper.make_node("QuantizeLinear", ["x2", "s2", "z2"], ["q2"]),
             helper.make_node("QLinearAdd", ["q1", "s1", "z1", "q2", "s2", "z2", "sc", "zc"], ["yq"], domain=MS,
                              name="qadd"),
             helper.make_node("DequantizeLinear", ["yq", "sc", "zc"], ["y"])]
    feeds = {"x1": rng.standard_normal((3, 5)).astype(np.float32), "x2": rng.standard_normal((3, 5)).astype(np.float32)}
    g = helper.make_graph(nodes, "rel", [helper.make_tensor_value_info(k, 1, [3, 5]) for k in feeds],
                          [helper.make_empty_tensor_value_info(o) for o in ("y", "q1", "q2")],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y, q1, q2 = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    d1 = (q1.astype(np.float64) - 120) * np.float64(s1)
    d2 = (q2.astype(np.float64) - 131) * np.float64(s2)
    target = np.array([4, 0, 2])
    att = reflrp.explain(reflrp.load(m), feeds, target=target, output="y", dtype="float64", fast=fast)
    assert att.conservation.ok, att.conservation
    R = np.zeros((3, 5))
    R[np.arange(3), target] = y.astype(np.float64)[np.arange(3), target]
    for name, d in (("x1", d1), ("x2", d2)):
        want = d * R / (d1 + d2)
        assert float(np.abs(np.asarray(att.relevance[name]) - want).max()) <= 1e-6 * float(np.abs(want).max())
