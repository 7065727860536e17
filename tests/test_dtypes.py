"""Element types beyond numpy's (ml_dtypes: bfloat16, float8, float6, float4, int4/uint4, int2/uint2) in
initializers, feeds, graph values, Cast and CastLike, against onnx's reference implementation (the
ONNX node tests' oracle for these types; onnxruntime runs few of them); value types reflrp refuses."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import reflrp
from reflrp.dtypes import family, is_float, is_integer

FLOAT8 = {"FLOAT8E4M3FN": ml_dtypes.float8_e4m3fn, "FLOAT8E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
          "FLOAT8E5M2": ml_dtypes.float8_e5m2, "FLOAT8E5M2FNUZ": ml_dtypes.float8_e5m2fnuz}
OTHER_FLOATS = {"BFLOAT16": ml_dtypes.bfloat16, "FLOAT4E2M1": ml_dtypes.float4_e2m1fn,
                "FLOAT8E8M0": ml_dtypes.float8_e8m0fnu, "FLOAT6E2M3": ml_dtypes.float6_e2m3fn,
                "FLOAT6E3M2": ml_dtypes.float6_e3m2fn}
SMALL_INTS = {"INT4": ml_dtypes.int4, "UINT4": ml_dtypes.uint4, "INT2": ml_dtypes.int2, "UINT2": ml_dtypes.uint2}
ALL = FLOAT8 | OTHER_FLOATS | SMALL_INTS
# onnx's reference warns where numpy's casts meet NaN or inf (the values are chosen for that)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
OPSET = 25  # Cast-25 knows every one of them (float6: 28 in the installed onnx is newer than needed)

# special and ordinary values: signed zeros, NaN, infinities, beyond every float8 range, ties of
# every mantissa width, subnormals of the small types, a huge and a tiny float32
VALUES = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e6, -1e6, 448.0, 464.0, 57344.0, 61440.0, 240.0, 250.0,
                   0.5, 1.0, 1.25, 1.5, 1.75, 2.5, 3.0, 3.5, -2.5, 5.0, 6.0, 7.0, 1 / 3, 0.1, -0.7, 0.015625,
                   0.0009765625, 2.0 ** -9, 2.0 ** -17, 1e-30, 3e38, 1.5 * 2.0 ** -127, 2.0 ** 127 * 1.7,
                   100.0, -100.0, 12.0, -3.0], dtype=np.float32)


def code(name: str) -> int:
    return getattr(TensorProto, name)


def one_node(op, inputs, out_type, opset=OPSET, **attrs):
    """A one-node model: ``inputs`` name -> (ONNX type, shape); one output ``y`` of ``out_type``."""
    graph = helper.make_graph([helper.make_node(op, list(inputs), ["y"], name="node", **attrs)], "dtypes",
                              [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info("y", out_type, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def same_bits(have: np.ndarray, want: np.ndarray):
    assert have.dtype == want.dtype and have.shape == want.shape, (have.dtype, want.dtype, have.shape, want.shape)
    np.testing.assert_array_equal(have.view(np.uint8), want.view(np.uint8))


def test_type_predicates():
    for t in list(FLOAT8.values()) + list(OTHER_FLOATS.values()) + [np.float16, np.float32, np.float64]:
        assert is_float(t) and not is_integer(t) and family(t) == "float", t
    for t in list(SMALL_INTS.values()) + [np.int8, np.uint64]:
        assert is_integer(t) and not is_float(t) and family(t) == "integer", t
    assert family(np.bool_) == "bool" and not is_float(np.bool_) and not is_integer(np.bool_)


@pytest.mark.parametrize("source", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("target", sorted(ALL))
def test_cast_to_matches_onnx_reference(target, saturate, source):
    with np.errstate(over="ignore"):  # 1e6 and 3e38 overflow float16 to inf: one more case
        x = VALUES.astype(source)
    if target in SMALL_INTS:  # float -> int4/int2 is undefined out of range (and for NaN, inf)
        x = x[np.isfinite(x) & (np.abs(x) < 2)]
    if target == "FLOAT8E8M0":  # casting negative values to e8m0 is undefined
        x = x[~(x < 0)]
    model = one_node("Cast", {"x": (helper.np_dtype_to_tensor_dtype(x.dtype), [x.size])}, code(target),
                     to=code(target), saturate=saturate)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    same_bits(reflrp.load(model).run({"x": x})["y"], want)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0_round_modes(round_mode, saturate):
    x = np.abs(VALUES[~np.isnan(VALUES)])
    x = np.concatenate([x, np.float32(2.0) ** np.arange(-20, 20, dtype=np.float32) * np.float32(1.5),
                        np.array([2.0 ** 127 * 1.9, 1e-40, 1.5e-39, 3e-39], np.float32)])
    model = one_node("Cast", {"x": (TensorProto.FLOAT, [x.size])}, TensorProto.FLOAT8E8M0,
                     to=TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    same_bits(reflrp.load(model).run({"x": x})["y"], want)


@pytest.mark.parametrize("dest", ["FLOAT", "FLOAT16", "DOUBLE", "INT32", "BFLOAT16", "FLOAT8E5M2"])
@pytest.mark.parametrize("source", sorted(FLOAT8 | {"BFLOAT16": ml_dtypes.bfloat16, "FLOAT4E2M1":
                                                    ml_dtypes.float4_e2m1fn} | SMALL_INTS))
def test_cast_from_the_small_types_matches_onnx_reference(source, dest):
    x = VALUES.astype(ALL[source]) if source not in SMALL_INTS else np.arange(-2, 2).astype(ALL[source])
    if dest == "INT32":
        x = x[np.isfinite(x.astype(np.float32))]
    model = one_node("Cast", {"x": (code(source), [x.size])}, code(dest), to=code(dest))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    same_bits(reflrp.load(model).run({"x": x})["y"], want)


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("target", sorted(FLOAT8) + ["BFLOAT16", "INT4"])
def test_castlike_matches_onnx_reference(target, saturate):
    x = VALUES if target != "INT4" else np.array([-1.5, 0.0, 2.0, 7.0], np.float32)
    like = np.zeros(1, ALL[target])
    model = one_node("CastLike", {"x": (TensorProto.FLOAT, [x.size]), "like": (code(target), [1])}, code(target),
                     saturate=saturate)
    want = ReferenceEvaluator(model).run(None, {"x": x, "like": like})[0]
    same_bits(reflrp.load(model).run({"x": x, "like": like})["y"], want)


@pytest.mark.parametrize("name", sorted(ALL))
def test_feeds_outputs_and_initializers_of_every_type(name):
    """A graph input, an initializer and a Constant node's tensor of the type (decoded from the model),
    Concat-ed: the output carries all three unchanged; the graph's declared types decode to the
    ml_dtypes dtype."""
    dtype = np.dtype(ALL[name])
    values = np.array([1, 0, 1, 1], np.float32) if name not in ("FLOAT8E8M0",) else np.array([1, 2, 4, 0.5], np.float32)
    x, init, const = values.astype(dtype), values[::-1].astype(dtype), values[[1, 0, 3, 2]].astype(dtype)
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(const)),
                               helper.make_node("Concat", ["x", "w", "c"], ["y"], axis=0)], "g",
                              [helper.make_tensor_value_info("x", code(name), [4])],
                              [helper.make_tensor_value_info("y", code(name), [12])],
                              initializer=[numpy_helper.from_array(init, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m = reflrp.load(model.SerializeToString())
    assert m.graph.inputs[0].dtype == dtype and m.graph.outputs[0].dtype == dtype
    same_bits(m.run({"x": x})["y"], ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_a_float_feed_converts_to_a_bfloat16_input():
    model = one_node("Identity", {"x": (TensorProto.BFLOAT16, [3])}, TensorProto.BFLOAT16)
    x = np.array([1.00390625, 3.3, -7.77], np.float32)  # the first is a tie: rounds to even
    same_bits(reflrp.load(model).run({"x": x})["y"], x.astype(ml_dtypes.bfloat16))
    with pytest.raises(reflrp.FeedError, match="bfloat16"):
        reflrp.load(model).run({"x": np.array([1, 2, 3])})  # integers are not a float feed


def bf16_matmul_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["b", 3])],
                              initializer=[numpy_helper.from_array(w, "w")])
    x = rng.standard_normal((2, 4)).astype(ml_dtypes.bfloat16)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), x, w


def test_bfloat16_model_runs_as_onnx_reference_and_upcasts_to_float64():
    model, x, w = bf16_matmul_model()
    m = reflrp.load(model)
    got = m.run({"x": x})["y"]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2 ** -7)
    # dtype="float64": the bfloat16 values, exactly, multiplied and normalised in float64
    h = x.astype(np.float64) @ w.astype(np.float64)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    up = m.run({"x": x}, dtype="float64")["y"]
    assert up.dtype == np.float64
    np.testing.assert_allclose(up, e / e.sum(axis=1, keepdims=True), rtol=1e-14)


def seq(name):
    return helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, [2])


def opt(name):
    inner = helper.make_tensor_type_proto(TensorProto.FLOAT, [2])
    return helper.make_value_info(name, helper.make_optional_type_proto(inner))


def tensor(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])


@pytest.mark.parametrize("inputs,outputs,value_info,named", [
    ([seq("s")], [tensor("y")], [], "input 's' is a seq(tensor(float))"),
    ([tensor("x")], [seq("y")], [], "output 'y' is a seq(tensor(float))"),
    ([opt("o")], [tensor("y")], [], "input 'o' is a optional(tensor(float))"),
    ([tensor("x")], [tensor("y")], [seq("y")], "value_info 'y' is a seq(tensor(float))"),
    ([helper.make_value_info("m", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(
        TensorProto.FLOAT, [2])))], [tensor("y")], [], "input 'm' is a map(int64, tensor(float))"),
    ([helper.make_value_info("sp", helper.make_sparse_tensor_type_proto(TensorProto.FLOAT, [2]))], [tensor("y")], [],
     "input 'sp' is a sparse_tensor(float)"),
], ids=["seq-input", "seq-output", "optional-input", "seq-value-info", "map-input", "sparse-input"])
def test_non_tensor_values_are_refused_at_load(inputs, outputs, value_info, named):
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["y"])], "g", inputs, outputs,
                              value_info=value_info)
    with pytest.raises(reflrp.UnsupportedOpError) as e:
        reflrp.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert named in str(e.value)
