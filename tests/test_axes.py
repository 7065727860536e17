"""Axis handling of every kernel with an ``axis``/``axes`` attribute or input, against onnxruntime.

One-node models over every legal axis value of each such op (negative axes; ``axis == rank`` where
the spec allows it, as Flatten's) and a few illegal ones, on tensors whose dimensions all differ
(a wrong axis cannot pass by symmetry), plus a zero-size dimension. A legal case must equal
onnxruntime; an illegal one must be a ``KernelError`` naming the node where onnxruntime fails too.
The op list comes from onnx's schemas: an op registered with an axis argument and no case here fails.
"""
from __future__ import annotations

import numpy as np
import onnx.defs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import reflrp
import zoo

SHAPE = (2, 3, 4)
RANK = len(SHAPE)
LEGAL = range(-RANK, RANK)          # -3..2
ILLEGAL = (RANK, -RANK - 1, 7)
REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
          "ReduceProd", "ReduceSum", "ReduceSumSquare")


def model(op, inputs, consts=(), n_outputs=1, opset=18, **attrs):
    """One node named ``node``: ``inputs`` name -> array (graph inputs), ``consts`` name -> array
    (initializers, after the inputs in the node's input order unless named in ``order``)."""
    consts = dict(consts)
    order = attrs.pop("order", list(inputs) + list(consts))
    outs = [f"y{i}" for i in range(n_outputs)]
    graph = helper.make_graph(
        [helper.make_node(op, order, outs, name="node", **attrs)], "axes",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m, inputs


def data(shape=SHAPE, seed=0, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def case(cid, built, legal=True):
    return pytest.param(built, legal, id=cid)


def flatten_cases():
    yield from (case(f"axis{a}", model("Flatten", {"x": data()}, axis=a)) for a in range(-RANK, RANK + 1))
    yield case("zero-size", model("Flatten", {"x": data((2, 0, 4))}, axis=2))
    yield from (case(f"axis{a}", model("Flatten", {"x": data()}, axis=a), False) for a in (RANK + 1, -RANK - 1))


def concat_cases():
    for a in LEGAL:
        other = list(SHAPE)
        other[a] = 5  # a different length along the axis only: a wrong axis cannot concatenate
        yield case(f"axis{a}", model("Concat", {"x": data(), "z": data(tuple(other), 1)}, axis=a))
    yield case("zero-size", model("Concat", {"x": data((2, 0, 4)), "z": data((2, 2, 4))}, axis=1))
    yield from (case(f"axis{a}", model("Concat", {"x": data(), "z": data()}, axis=a), False) for a in ILLEGAL)


def split_cases():
    for a in LEGAL:
        yield case(f"axis{a}", model("Split", {"x": data()}, n_outputs=2, axis=a, num_outputs=2))
        yield case(f"axis{a}-sizes", model("Split", {"x": data()}, {"s": np.array([1, SHAPE[a] - 1])},
                                           n_outputs=2, axis=a))
    yield from (case(f"axis{a}", model("Split", {"x": data()}, n_outputs=2, axis=a, num_outputs=2), False)
                for a in ILLEGAL)


def squeeze_cases():
    x = data((2, 1, 4, 1))
    for axes in ([1], [3], [-1], [-3], [1, -1], [1, -3]):  # an axis named twice counts once, as in onnxruntime
        yield case(f"axes{axes}", model("Squeeze", {"x": x}, {"axes": np.array(axes)}))
    yield case("all", model("Squeeze", {"x": x}))
    for axes in ([0], [4], [-5]):  # a dimension of size 2, out of range
        yield case(f"axes{axes}", model("Squeeze", {"x": x}, {"axes": np.array(axes)}), False)


def unsqueeze_cases():
    x = data((2, 3))
    for a in range(-3, 3):  # the output has rank 3
        yield case(f"axes[{a}]", model("Unsqueeze", {"x": x}, {"axes": np.array([a])}))
    yield case("axes[0,-1]", model("Unsqueeze", {"x": x}, {"axes": np.array([0, -1])}))
    yield case("axes[3,1]", model("Unsqueeze", {"x": x}, {"axes": np.array([3, 1])}))
    for axes in ([3], [-4], [1, 1], [1, -3]):
        yield case(f"axes{axes}", model("Unsqueeze", {"x": x}, {"axes": np.array(axes)}), False)


def gather_cases():
    for a in LEGAL:
        yield case(f"axis{a}", model("Gather", {"x": data()}, {"i": np.array([[1, -1], [0, 1]])}, axis=a))
    yield case("zero-size", model("Gather", {"x": data((2, 0, 4))}, {"i": np.array([1, 0])}, axis=-1))
    yield from (case(f"axis{a}", model("Gather", {"x": data()}, {"i": np.array([0])}, axis=a), False)
                for a in ILLEGAL)


def gather_elements_cases():
    rng = np.random.default_rng(1)
    for a in LEGAL:
        n = SHAPE[a]
        yield case(f"axis{a}", model("GatherElements", {"x": data()},
                                     {"i": rng.integers(-n, n, size=SHAPE)}, axis=a))
    yield from (case(f"axis{a}", model("GatherElements", {"x": data()}, {"i": np.zeros(SHAPE, np.int64)}, axis=a),
                     False) for a in ILLEGAL)


def slice_cases():
    for a in LEGAL:
        yield case(f"axes[{a}]", model("Slice", {"x": data()}, {"s": np.array([1]), "e": np.array([100]),
                                                                "a": np.array([a])}))
    yield case("axes[-1,0]", model("Slice", {"x": data()}, {"s": np.array([-2, 1]), "e": np.array([100, 2]),
                                                            "a": np.array([-1, 0])}))
    for a in ILLEGAL:
        yield case(f"axes[{a}]", model("Slice", {"x": data()}, {"s": np.array([0]), "e": np.array([1]),
                                                                "a": np.array([a])}), False)
    yield case("axes[1,-2]", model("Slice", {"x": data()}, {"s": np.array([0, 1]), "e": np.array([1, 2]),
                                                            "a": np.array([1, -2])}), False)


def pad_cases():
    for a in LEGAL:
        yield case(f"axes[{a}]", model("Pad", {"x": data()}, {"p": np.array([1, 2]), "v": np.array(0.5, np.float32),
                                                              "a": np.array([a])}))
    yield case("axes[-1,0]", model("Pad", {"x": data()}, {"p": np.array([1, 0, 0, 2]),
                                                          "v": np.array(0.0, np.float32), "a": np.array([-1, 0])}))
    for a in ILLEGAL:
        yield case(f"axes[{a}]", model("Pad", {"x": data()}, {"p": np.array([1, 1]), "v": np.array(0.0, np.float32),
                                                              "a": np.array([a])}), False)
    yield case("axes[1,-2]", model("Pad", {"x": data()}, {"p": np.array([1, 1, 1, 1]),
                                                          "v": np.array(0.0, np.float32), "a": np.array([1, -2])}),
               False)


def reduce_cases(op):
    positive = op in ("ReduceLogSum", "ReduceProd")
    opset = 18
    for a in LEGAL:
        for keep in (0, 1):
            yield case(f"axes[{a}]-keep{keep}", model(op, {"x": data(positive=positive)}, {"a": np.array([a])},
                                                      keepdims=keep, opset=opset))
    yield case("axes[0,-1]", model(op, {"x": data(positive=positive)}, {"a": np.array([0, -1])}, opset=opset))
    yield case("axes[1,-2]", model(op, {"x": data(positive=positive)}, {"a": np.array([1, -2])}, opset=opset))
    yield case("all", model(op, {"x": data(positive=positive)}, opset=opset))
    if op == "ReduceSum":  # axes: an input from opset 13 (ReduceSum), 18 (the others)
        yield case("opset13-input", model(op, {"x": data()}, {"a": np.array([-2])}, opset=13))
    else:
        yield case("opset13-attribute", model(op, {"x": data(positive=positive)}, opset=13, axes=[-2]))
    empty = data((2, 0, 4), positive=positive)
    yield case("zero-size-kept-axis", model(op, {"x": empty}, {"a": np.array([-1])}, opset=opset))
    yield case("zero-size-reduced-axis", model(op, {"x": empty}, {"a": np.array([1])}, opset=opset))  # identities
    for a in ILLEGAL:
        yield case(f"axes[{a}]", model(op, {"x": data(positive=positive)}, {"a": np.array([a])}, opset=opset), False)


def softmax_cases(op):
    for a in LEGAL:
        yield case(f"axis{a}", model(op, {"x": data()}, axis=a))
        yield case(f"opset11-axis{a}", model(op, {"x": data()}, axis=a, opset=11))  # coerced to 2-D at axis
    yield case("zero-size", model(op, {"x": data((2, 0, 4))}, axis=1))
    yield from (case(f"axis{a}", model(op, {"x": data()}, axis=a), False) for a in ILLEGAL)


def layernorm_cases():
    for a in LEGAL:
        tail = SHAPE[a:]
        yield case(f"axis{a}", model("LayerNormalization", {"x": data()}, {"g": data(tail, 1), "b": data(tail, 2)},
                                     axis=a, opset=17))
    for a in ILLEGAL:
        yield case(f"axis{a}", model("LayerNormalization", {"x": data()}, {"g": data((4,), 1)}, axis=a, opset=17),
                   False)


def rmsnorm_cases():
    for a in LEGAL:
        yield case(f"axis{a}", model("RMSNormalization", {"x": data()}, {"g": data(SHAPE[a:], 1)}, axis=a, opset=23))
    for a in ILLEGAL:
        yield case(f"axis{a}", model("RMSNormalization", {"x": data()}, {"g": data((4,), 1)}, axis=a, opset=23),
                   False)


def cumsum_cases():
    for a in LEGAL:
        for exclusive, reverse in ((0, 0), (1, 0), (0, 1), (1, 1)):
            yield case(f"axis{a}-ex{exclusive}-rev{reverse}", model("CumSum", {"x": data()}, {"a": np.array(a)},
                                                                    exclusive=exclusive, reverse=reverse))
    for exclusive, reverse in ((0, 0), (1, 0), (1, 1)):
        yield case(f"zero-size-ex{exclusive}-rev{reverse}", model("CumSum", {"x": data((2, 0, 4))}, {"a": np.array(1)},
                                                                   exclusive=exclusive, reverse=reverse))
    yield from (case(f"axis{a}", model("CumSum", {"x": data()}, {"a": np.array(a)}), False) for a in ILLEGAL)


def onehot_cases():
    indices = np.array([[0, 2, -1], [1, 4, -5]])  # 4 and -5: outside depth 4 (all-off rows)
    extra = {"d": np.array(4), "v": np.array([0.5, 2.0], np.float32)}
    for a in range(-3, 3):  # the output has rank indices.ndim + 1 = 3
        yield case(f"axis{a}", model("OneHot", {"i": indices}, extra, axis=a))
    yield from (case(f"axis{a}", model("OneHot", {"i": indices}, extra, axis=a), False) for a in (3, -4))


def arg_cases(op):
    x = np.round(data() * 2) / 2  # ties, so select_last_index matters
    for a in LEGAL:
        for keep, last in ((1, 0), (0, 0), (1, 1)):
            yield case(f"axis{a}-keep{keep}-last{last}", model(op, {"x": x}, axis=a, keepdims=keep,
                                                               select_last_index=last))
    yield from (case(f"axis{a}", model(op, {"x": x}, axis=a), False) for a in ILLEGAL)


def quantize_cases(op):
    """Per-axis scales and zero points (one per element of the axis; a 1-element axis would be per tensor)."""
    for a in LEGAL:
        n = SHAPE[a]
        scale = np.linspace(0.01, 0.03, n).astype(np.float32)
        zp = np.arange(120, 120 + n).astype(np.uint8)
        x = data() if op == "QuantizeLinear" else np.random.default_rng(a + 9).integers(0, 255, SHAPE).astype(np.uint8)
        yield case(f"axis{a}", model(op, {"x": x}, {"s": scale, "z": zp}, axis=a, opset=19))
    for a in ILLEGAL:
        x = data() if op == "QuantizeLinear" else np.zeros(SHAPE, np.uint8)
        yield case(f"axis{a}", model(op, {"x": x}, {"s": np.full(4, 0.02, np.float32), "z": np.zeros(4, np.uint8)},
                                     axis=a, opset=19), False)


def shape_cases():  # start/end clamp to [0, rank] (no error)
    for start, end in ((0, None), (1, None), (-1, None), (-2, -1), (-10, 10), (5, 1), (1, 3)):
        kw = {"start": start} | ({} if end is None else {"end": end})
        yield case(f"start{start}-end{end}", model("Shape", {"x": data()}, **kw))


CASES = {
    "Flatten": flatten_cases, "Concat": concat_cases, "Split": split_cases, "Squeeze": squeeze_cases,
    "Unsqueeze": unsqueeze_cases, "Gather": gather_cases, "GatherElements": gather_elements_cases,
    "Slice": slice_cases, "Pad": pad_cases, "Softmax": lambda: softmax_cases("Softmax"),
    "LogSoftmax": lambda: softmax_cases("LogSoftmax"), "LayerNormalization": layernorm_cases,
    "RMSNormalization": rmsnorm_cases, "CumSum": cumsum_cases, "OneHot": onehot_cases,
    "ArgMax": lambda: arg_cases("ArgMax"), "ArgMin": lambda: arg_cases("ArgMin"), "Shape": shape_cases,
    "QuantizeLinear": lambda: quantize_cases("QuantizeLinear"),
    "DequantizeLinear": lambda: quantize_cases("DequantizeLinear"),
    **{op: (lambda op=op: reduce_cases(op)) for op in REDUCE},
}
ALL = [pytest.param(op, *p.values, id=f"{op}-{p.id}") for op, make in CASES.items() for p in make()]


def axis_ops() -> set[str]:
    """Registered ops whose newest onnx schema has an attribute or input named axis or axes."""
    out = set()
    for op in reflrp.supported_ops():
        schema = onnx.defs.get_schema(op)
        if {"axis", "axes"} & (set(schema.attributes) | {i.name for i in schema.inputs}):
            out.add(op)
    return out


def test_every_op_with_an_axis_has_cases():
    missing = axis_ops() - set(CASES)
    assert not missing, f"registered ops with an axis/axes argument and no case in test_axes: {sorted(missing)}"


def onnxruntime(m, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("op,built,legal", ALL)
def test_axis_against_onnxruntime(op, built, legal):
    m, feeds = built
    if not legal:
        with pytest.raises(Exception):
            onnxruntime(m, feeds)  # the case is illegal for onnxruntime too
        with pytest.raises(reflrp.KernelError, match="node 'node'"):
            reflrp.load(m).run(feeds)
        return
    want = onnxruntime(m, feeds)
    got = reflrp.load(m).run(feeds)
    for w, name in zip(want, [o.name for o in m.graph.output]):
        have = got[name]
        assert have.shape == w.shape and have.dtype == w.dtype, (have.shape, w.shape, have.dtype, w.dtype)
        np.testing.assert_allclose(have, w, rtol=1e-5, atol=1e-6)


# ---- zero-size dimensions through whole models ----

ORT_CANNOT_RUN = {"llama_op23": "onnxruntime rejects its opset-23 RotaryEmbedding at any size"}


@pytest.mark.parametrize("empty", ["batch", "sequence"])
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_on_empty_batches_and_sequences(name, empty):
    """A zero-size batch or sequence runs and gives the empty outputs onnxruntime gives; where
    onnxruntime fails (a pooler Gather of token 0 of no tokens), reflrp raises a ReflrpError."""
    m = zoo.model(name)
    full = zoo.feeds(name)
    cut = (lambda v: v[:0]) if empty == "batch" else (lambda v: v[:, :0])
    feeds = {k: cut(v) if v.ndim >= 2 and (empty == "batch" or v.ndim <= 3) else v for k, v in full.items()}
    if name in ORT_CANNOT_RUN:
        out = m.run(feeds)[m.output_names[0]]
        shape = list(m.run(full)[m.output_names[0]].shape)
        shape[0 if empty == "batch" else 1] = 0
        assert out.shape == tuple(shape)
        return
    session = ort.InferenceSession(str(zoo.MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    try:
        want = session.run(None, feeds)
    except Exception:
        with pytest.raises(reflrp.ReflrpError):
            m.run(feeds)
        return
    got = m.run(feeds)
    for name_, w in zip(m.output_names, want):
        assert got[name_].shape == w.shape
        np.testing.assert_allclose(got[name_], w, rtol=1e-5, atol=1e-6)
