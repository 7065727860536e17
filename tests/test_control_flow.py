"""Control flow: If / Loop / Scan run their subgraphs (with values of the enclosing scopes) equal to
onnxruntime; an If whose condition is known at load (statics, shapes) is folded into its branch; explaining
through control flow decided at run time is a RuleError naming the node. The ONNX node suite's
If / Loop / Scan cases run in tests/test_conformance.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import reflrp

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(8)
F = T.FLOAT


def vi(name, elem=F, shape=None):
    return h.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17):
    m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                     opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def branch(name, nodes, out, inits=()):
    return h.make_graph(nodes, name, [], [vi(out)], initializer=list(inits))


def assert_runs_like_onnxruntime(m, feeds, tol=1e-6):
    theirs = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = list(reflrp.load(m).run(feeds).values())
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.allclose(a, b, rtol=tol, atol=tol), (a, b)


W = RNG.standard_normal((3, 4)).astype(np.float32)


def if_model(cond_from: str):
    """y = If(cond) then (x @ W) * 1.5 (1.5 an initializer of the branch) else relu(x @ W) + b (x, W, b:
    enclosing values)."""
    k = numpy_helper.from_array(np.array(1.5, np.float32), "k")
    then = branch("then", [h.make_node("MatMul", ["x", "w"], ["t0"]), h.make_node("Mul", ["t0", "k"], ["t"])], "t", [k])
    other = branch("else", [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Relu", ["m"], ["r"]),
                            h.make_node("Add", ["r", "b"], ["e"])], "e")
    b = [numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"), numpy_helper.from_array(W, "w")]
    if cond_from == "feed":
        return model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")],
                     [vi("x", F, [2, 3]), vi("c", T.BOOL, [])], [vi("y")], b)
    if cond_from == "initializer":
        c = numpy_helper.from_array(np.array(True), "c")
        return model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")],
                     [vi("x", F, [2, 3])], [vi("y")], b + [c])
    # cond = (Shape(x)[0] == Shape(z)[0]) with z's first dim named like x's ("same") or not ("other")
    dim = "n" if cond_from == "same_dims" else "m"
    nodes = [h.make_node("Shape", ["x"], ["sx"], start=0, end=1), h.make_node("Shape", ["z"], ["sz"], start=0, end=1),
             h.make_node("Equal", ["sx", "sz"], ["eq"]), h.make_node("Squeeze", ["eq"], ["c"]),
             h.make_node("If", ["c"], ["y0"], then_branch=then, else_branch=other, name="if"),
             h.make_node("Add", ["y0", "z"], ["y"])]
    return model(nodes, [vi("x", F, ["n", 3]), vi("z", F, [dim, 4])], [vi("y")], b, opset=18)


@pytest.mark.parametrize("taken", [True, False])
def test_if_with_a_fed_condition_runs_the_branch_like_onnxruntime(taken):
    m = if_model("feed")
    assert_runs_like_onnxruntime(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32), "c": np.array(taken)})
    assert [n.op_type for n in reflrp.load(m).graph.nodes] == ["If"]


def test_explaining_through_a_dynamic_if_names_the_node():
    m = if_model("feed")
    with pytest.raises(reflrp.RuleError, match=r"node 'if' \(If\).*control-flow"):
        reflrp.explain(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32), "c": np.array(True)})


def test_if_with_a_static_condition_is_folded_into_its_branch():
    m = if_model("initializer")
    loaded = reflrp.load(m)
    assert "If" not in [n.op_type for n in loaded.graph.nodes] and "if" in loaded.graph.expansions
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    assert_runs_like_onnxruntime(m, {"x": x})
    att = reflrp.explain(loaded, {"x": x}, target=np.array([1, 2]))
    z = x.astype(np.float64) @ W.astype(np.float64)  # the branch: epsilon through x @ W, dense
    R = np.zeros_like(z)
    R[[0, 1], [1, 2]] = 1.5 * z[[0, 1], [1, 2]]  # the seed: the target logit; Mul by 1.5: identity
    want = x * ((R / z) @ W.T.astype(np.float64))
    assert np.allclose(att.relevance["x"], want, rtol=1e-12, atol=1e-15) and att.conservation.ok
    assert "if" in str(att.plan) or any(n.node.name.startswith("if/") for n in att.plan.nodes)


def test_if_decided_by_equal_symbolic_dims_is_folded():
    m = if_model("same_dims")
    assert "If" not in [n.op_type for n in reflrp.load(m).graph.nodes]
    assert_runs_like_onnxruntime(m, {"x": RNG.standard_normal((5, 3)).astype(np.float32),
                                     "z": RNG.standard_normal((5, 4)).astype(np.float32)})


@pytest.mark.parametrize("rows", [2, 1])  # the condition holds, or not
def test_if_on_different_symbolic_dims_stays_and_runs(rows):
    m = if_model("other_dims")
    assert "If" in [n.op_type for n in reflrp.load(m).graph.nodes]
    assert_runs_like_onnxruntime(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32),
                                     "z": RNG.standard_normal((rows, 4)).astype(np.float32)})


def loop_model():
    """for i < M while sum(v) < limit: v = v * 2 + (i if i is odd else x) (a nested If on i, reading the
    main graph's x across two scopes); scan output: v at each step."""
    odd = h.make_graph([h.make_node("Cast", ["i"], ["fi"], to=F), h.make_node("Add", ["v2", "fi"], ["o"])], "odd", [],
                       [vi("o")])
    even = h.make_graph([h.make_node("Add", ["v2", "x"], ["e"])], "even", [], [vi("e")])
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    body = h.make_graph(
        [h.make_node("Mul", ["v", "two"], ["v2"]),
         h.make_node("Mod", ["i", "k2"], ["par"]), h.make_node("Cast", ["par"], ["is_odd"], to=T.BOOL),
         h.make_node("If", ["is_odd"], ["v_next"], then_branch=odd, else_branch=even),
         h.make_node("ReduceSum", ["v_next"], ["total"], keepdims=0),
         h.make_node("Less", ["total", "limit"], ["go"]), h.make_node("Identity", ["v_next"], ["scan"])],
        "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("v", F, None)],
        [vi("go", T.BOOL, []), vi("v_next", F, None), vi("scan", F, None)],
        initializer=[two, numpy_helper.from_array(np.array(2, np.int64), "k2")])
    nodes = [h.make_node("Loop", ["M", "", "v0"], ["v_final", "steps"], body=body, name="loop")]
    return model(nodes, [vi("M", T.INT64, []), vi("v0", F, [3]), vi("x", F, [3]), vi("limit", F, [])],
                 [vi("v_final"), vi("steps")])


@pytest.mark.parametrize("trips,limit", [(5, 1e9), (10, 40.0), (0, 1e9)])
def test_loop_with_nested_if_and_scan_outputs_runs_like_onnxruntime(trips, limit):
    feeds = {"M": np.array(trips, np.int64), "v0": np.array([0.5, -1.0, 2.0], np.float32),
             "x": np.array([1.0, 0.25, -0.5], np.float32), "limit": np.array(limit, np.float32)}
    m = loop_model()
    if trips == 0:  # no iteration: the final value is v0 and the scan output empty
        out = reflrp.load(m).run(feeds)
        assert np.array_equal(out["v_final"], feeds["v0"]) and out["steps"].shape[0] == 0
        return
    assert_runs_like_onnxruntime(m, feeds)


def test_explaining_through_a_loop_names_the_node():
    feeds = {"M": np.array(3, np.int64), "v0": np.ones(3, np.float32), "x": np.ones(3, np.float32),
             "limit": np.array(1e9, np.float32)}
    with pytest.raises(reflrp.RuleError, match=r"node 'loop' \(Loop\)"):
        reflrp.explain(loop_model(), feeds, output="steps", target=np.ones((3, 3)))


@pytest.mark.parametrize("in_dir,out_dir,out_axis", [(0, 0, 0), (1, 0, 1), (0, 1, -1)])
def test_scan_runs_like_onnxruntime(in_dir, out_dir, out_axis):
    """Scan-9: a running sum (state) over the rows of a scan input on axis 1, plus an enclosing weight."""
    body = h.make_graph([h.make_node("Add", ["s", "row"], ["s_next"]), h.make_node("Mul", ["s_next", "w"], ["y"])],
                        "body", [vi("s", F, [2]), vi("row", F, [2])], [vi("s_next", F, [2]), vi("y", F, [2])])
    node = h.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], body=body, num_scan_inputs=1,
                       scan_input_axes=[1], scan_input_directions=[in_dir], scan_output_axes=[out_axis],
                       scan_output_directions=[out_dir])
    w = numpy_helper.from_array(np.array([1.0, -2.0], np.float32), "w")
    m = model([node], [vi("s0", F, [2]), vi("xs", F, [2, 5])], [vi("s_final"), vi("ys")], [w])
    xs = RNG.standard_normal((2, 5)).astype(np.float32)
    assert_runs_like_onnxruntime(m, {"s0": np.zeros(2, np.float32), "xs": xs})


def test_unsupported_op_inside_a_subgraph_is_refused_at_load_naming_where():
    then = branch("then", [h.make_node("Frobnicate", ["x"], ["t"], name="inner")], "t")
    other = branch("else", [h.make_node("Relu", ["x"], ["e"])], "e")
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")],
              [vi("x", F, [2]), vi("c", T.BOOL, [])], [vi("y")])
    with pytest.raises(reflrp.UnsupportedOpError, match=r"Frobnicate.*'if\.then_branch/inner'"):
        reflrp.load(m)


# ------------------------------------------------------------------ deberta-v2 (If on shapes only)

DEPLOYED = Path(__file__).resolve().parents[1] / "models" / "deployed"


def test_deberta_ifs_fold_at_load_and_explain():
    """The legacy export's two ``If(q_len != k_len)`` are decided by onnx's symbolic shapes: folded."""
    path = DEPLOYED / "deberta.onnx"
    m = reflrp.load(str(path))
    folded = [e for e in m.graph.expansions.values() if e.original.op_type == "If"]
    assert len(folded) == 2 and "If" not in [n.op_type for n in m.graph.nodes]
    feeds = dict(np.load(DEPLOYED / "deberta.feeds.npz"))
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ours = m.run(feeds)["logits"]
    assert float(np.abs(ours - theirs).max()) <= 1e-5 * float(np.abs(theirs).max())
    att = reflrp.explain(m, feeds)
    r = np.asarray(att.relevance[att.wrt[0]])
    assert att.conservation.ok and np.isfinite(r).all() and np.abs(r).max() > 0
    assert json.loads((DEPLOYED / "MANIFEST.json").read_text())  # listed with its source call
