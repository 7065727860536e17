"""Regressions found in review: shape cache keys and aliasing, checkpoint corner cases, duplicate node
names, and rules that must refuse (not crash) on unsupported forms."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import reflrp
from onnx_builders import graph_model, node

RNG = np.random.default_rng(0)


def load(m):
    return reflrp.load(m.SerializeToString())


def test_shape_cache_keys_integer_feed_values():
    m = graph_model([node("Slice", ["x", "zero", "n"], ["s"]), node("Shape", ["s"], ["sh"]),
                     node("Cast", ["sh"], ["y"], to=TensorProto.DOUBLE)],
                    {"x": [8], "n": [1]}, ["y"], consts={"zero": np.array([0], np.int64)},
                    input_types={"n": TensorProto.INT64})
    model, x = load(m), np.arange(8.0)
    for k in (2, 5, 2):
        assert model.run({"x": x, "n": np.array([k], np.int64)})["y"].tolist() == [k]


def test_shape_cache_arrays_are_not_handed_out():
    m = graph_model([node("Shape", ["x"], ["sh"]), node("ConstantOfShape", ["sh"], ["mask"]),
                     node("Add", ["x", "mask"], ["y"])], {"x": [2]}, ["y", "mask"])
    model, x = load(m), np.array([3.0, 4.0])
    for _ in range(3):
        out = model.run({"x": x})
        assert out["mask"].tolist() == [0.0, 0.0] and out["y"].tolist() == [3.0, 4.0]
        out["mask"][:] = 7.0  # the caller's copy; the cache must not see it


def test_checkpoint_with_folded_and_unreached_wrt():
    m = graph_model([node("Identity", ["P"], ["pos"]), node("Relu", ["pos"], ["pr"]),
                     node("Add", ["x", "pr"], ["h"]), node("Relu", ["x"], ["unused"]),
                     node("Shape", ["unused"], ["sh"]), node("MatMul", ["h", "W"], ["y"])],
                    {"x": [2, 3]}, ["y", "sh"], consts={"P": RNG.normal(size=(2, 3)), "W": RNG.normal(size=(3, 4))})
    model, feeds = load(m), {"x": RNG.normal(size=(2, 3))}
    wrt = ["x", "pos", "unused"]
    a = reflrp.explain(model, feeds, wrt=wrt, target=1)
    b = reflrp.explain(model, feeds, wrt=wrt, target=1, checkpoint="sqrt")
    for w in wrt:
        np.testing.assert_allclose(b.relevance[w], a.relevance[w], rtol=0, atol=1e-15)
    assert not np.any(b.relevance["unused"]) and np.any(b.relevance["pos"])


def test_duplicate_node_names_are_made_unique():
    m = graph_model([node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name=""),
                     node("MatMul", ["xt", "W"], ["h"], name="Transpose_0"),
                     node("Transpose", ["h"], ["y"], perm=[0, 2, 1], name="Transpose_0")],
                    {"x": [2, 3, 4]}, ["y"], consts={"W": RNG.normal(size=(4, 5))})
    model = load(m)
    assert len({n.name for n in model.graph.nodes}) == 3
    x = RNG.normal(size=(2, 3, 4))
    seed = RNG.normal(size=(3, 5, 2))
    for checkpoint in (None, "sqrt"):
        att = reflrp.explain(model, {"x": x}, target=seed, checkpoint=checkpoint)
        assert att.relevance["x"].shape == x.shape
        assert abs(att.relevance["x"].sum() - seed.sum()) < 1e-9  # MatMul epsilon, no bias: conserves


@pytest.mark.parametrize("nodes,consts,needle", [
    ([node("Einsum", ["x", "W"], ["y"], equation="...i,ij->...j")], {"W": np.ones((3, 4))}, "ellipsis"),
    ([node("LogSoftmax", ["x"], ["y"])], {}, "no relevance rule"),
])
def test_unsupported_rule_forms_refuse_clearly(nodes, consts, needle):
    shape = [2, 3]
    model = load(graph_model(nodes, {"x": shape}, ["y"], consts=consts))
    with pytest.raises(reflrp.RuleError, match=needle):
        reflrp.explain(model, {"x": RNG.normal(size=shape)})
