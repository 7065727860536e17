"""Every relevance rule against an independent dense float64 oracle (the "zennit idea").

Each case is a tiny ONNX model (``reflrp/onnx_build.py``, float64 throughout) with random inputs of
a few elements (deterministic seeds). reflrp explains it with a random initial relevance ``R_y`` of the
output's shape (passed as ``target``), and the relevance at the inputs is compared with an oracle
computed from first principles with numpy only (``reflrp/oracle.py``) -- never with reflrp's rules:

* linear maps: the dense Jacobian ``J`` of the output w.r.t. the dynamic input, recovered by probing the
  forward pass of ``onnx.reference.ReferenceEvaluator`` (independent of reflrp) with unit vectors
  (the response to a zero input, the bias, subtracted); then ``R_x = x * J^T (R_y / stab(y))``;
* data movement: the same probe gives a 0/1 matrix; ``R_x = J^T R_y``;
* everything else: the formula of ``shared/RULES.md`` written out directly.

Every case also checks that each node's conservation account closes (``assert_books``).
Tolerance: 1e-10 relative (max abs diff / max abs oracle) unless a comment gives a reason.

Run with ``-s`` to see the worst relative error per rule family at the end of the module.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from onnx import TensorProto

import reflrp
from reflrp.testing import rel_err as shared_rel_err
from reflrp.ops import kinds, records
from reflrp.presets import PRESETS
from reflrp.onnx_build import (LN_EPS, REGIONS, f32 as F32, graph_model, ints as I64, node, one_node_model, rand,
                               rng_for, scalar as S)
from reflrp.onnx_build import layernorm_decomposed as _ln_decomposed, rmsnorm_decomposed as _rms_decomposed
from reflrp.conformance_cases import softmax_av
from reflrp.oracle import (Forward, attention_bias, attention_forward, oracle_attention, oracle_epsilon,  # noqa: F401
                           oracle_layernorm, oracle_maxpool, oracle_softmax, oracle_sum, probe_jacobian,
                           rotary_forward_and_oracle, safe_div, softmax, stab, unbroadcast)

TOL = 1e-10
BOOKS_TOL = 1e-9

# (preset, epsilon passed to explain, epsilon the oracle uses)
EPS_RUNS = [pytest.param("attnlrp", 0.0, 0.0, id="eps0"),
            pytest.param("attnlrp", 1e-2, 1e-2, id="eps1e-2"),
            pytest.param("epsilon", None, 1e-6, id="preset-epsilon")]

WORST: dict[str, float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print("\nworst relative error per rule family:")
    for fam, err in sorted(WORST.items()):
        print(f"  {fam:<40s} {err:.2e}")


# ----------------------------------------------------------------------------------------------------
# assertions (the oracles are in reflrp/oracle.py)
# ----------------------------------------------------------------------------------------------------

def rel_err(got, want) -> float:
    """The shared relative error, with the shape and finiteness checked loudly first."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "reflrp returned NaN/Inf"
    return shared_rel_err(got, want)


def check(family: str, got, want, tol: float = TOL, what: str = "") -> float:
    """Assert ``rel_err(got, want) < tol``; passing errors feed the per-family summary."""
    err = rel_err(got, want)
    assert err < tol, f"{family} {what}: relative error {err:.3e} >= {tol:g}"
    WORST[family] = max(WORST[family], err)
    return err


def check_scalar(family: str, got: float, want: float, scale: float, tol: float = TOL, what: str = ""):
    """A conservation total, relative to ``scale`` (e.g. sum |R_y|)."""
    err = abs(got - want) / max(scale, 1e-300)
    assert err < tol, f"{family} {what}: {got!r} vs oracle {want!r} (relative {err:.3e})"
    WORST[family + " (books)"] = max(WORST[family + " (books)"], err)


def assert_books(att, tol: float = BOOKS_TOL):
    """Every node's account closes: ``|inflow - outflow - absorbed - loss - deficit| / |inflow| < tol``."""
    worst, where = 0.0, None
    for a in att.conservation.nodes:
        r = abs(a.residual) / max(abs(a.inflow), 1e-300)
        if r > worst:
            worst, where = r, a
    assert worst < tol, f"node account does not close: {where} (relative residual {worst:.3e})"
    WORST["node books residual"] = max(WORST["node books residual"], worst)
    for a in att.conservation.nodes:
        assert all(np.isfinite([a.inflow, a.outflow, a.absorbed, a.loss, a.deficit])), a


def explain(model, feeds, R, wrt, preset="attnlrp", epsilon=None, **kw):
    """``reflrp.explain`` in float64 with ``R`` as the initial relevance."""
    att = reflrp.explain(reflrp.load(model), feeds, target=R, preset=preset, dtype="float64", epsilon=epsilon,
                         wrt=list(wrt), **kw)
    return att

# ----------------------------------------------------------------------------------------------------
# linear nodes with one dynamic operand: LRP-epsilon against the probed Jacobian
# ----------------------------------------------------------------------------------------------------

def _lin(case_id, op, order, x_shape, consts, post_reshape=False, marks=(), **attrs):
    """A linear case: node ``op`` on graph input ``x`` and constants; ``post_reshape`` flattens a 0-d/1-d
    output to 2-D (an array target must have rank >= 2)."""
    return pytest.param(op, order, x_shape, consts, attrs, post_reshape, id=case_id, marks=marks)


def _c(shape, seed, positive=False):
    """A fixed random constant (seeded)."""
    return rand(np.random.default_rng(seed), shape, positive)


LINEAR_CASES = [
    _lin("matmul-3d@2d", "MatMul", ["x", "W"], (2, 3, 4), {"W": _c((4, 5), 1)}),
    _lin("matmul-const-first-batched", "MatMul", ["W", "x"], (2, 4, 5), {"W": _c((3, 4), 2)}),
    _lin("matmul-1d-first", "MatMul", ["x", "W"], (4,), {"W": _c((2, 4, 3), 3)}),
    _lin("matmul-1d-second", "MatMul", ["W", "x"], (4,), {"W": _c((2, 3, 4), 4)}),
    _lin("matmul-1d-1d", "MatMul", ["x", "w"], (4,), {"w": _c((4,), 5)}, post_reshape=True),
    _lin("matmul-batch-broadcast", "MatMul", ["x", "W"], (2, 1, 3, 4), {"W": _c((3, 4, 2), 6)}),
    _lin("gemm-bias", "Gemm", ["x", "B", "C"], (3, 4), {"B": _c((4, 5), 7), "C": _c((5,), 8)}),
    _lin("gemm-transA-transB-alpha-beta", "Gemm", ["x", "B", "C"], (4, 3), {"B": _c((5, 4), 9), "C": _c((3, 1), 10)},
         transA=1, transB=1, alpha=0.5, beta=2.0),
    _lin("gemm-dynamic-B", "Gemm", ["A", "x", "C"], (5, 4), {"A": _c((3, 4), 11), "C": _c((1,), 12)},
         transB=1, alpha=1.5),
    _lin("gemm-no-bias", "Gemm", ["x", "B"], (2, 3), {"B": _c((3, 4), 13)}),
    _lin("gemm-scalar-C", "Gemm", ["x", "B", "C"], (2, 3), {"B": _c((3, 4), 28), "C": S(0.75)}, beta=0.5),
    _lin("conv2d-pads-strides-bias", "Conv", ["x", "W", "B"], (1, 2, 5, 5),
         {"W": _c((3, 2, 3, 3), 14), "B": _c((3,), 15)},
         pads=[1, 1, 1, 1], strides=[2, 2]),
    _lin("conv2d-groups-dilations", "Conv", ["x", "W", "B"], (2, 4, 6, 5),
         {"W": _c((4, 2, 2, 2), 16), "B": _c((4,), 17)},
         group=2, dilations=[2, 1], pads=[0, 1, 1, 0]),
    _lin("conv2d-depthwise", "Conv", ["x", "W"], (1, 3, 4, 4), {"W": _c((3, 1, 2, 2), 18)}, group=3, strides=[1, 2]),
    _lin("conv2d-same-lower", "Conv", ["x", "W", "B"], (1, 2, 4, 5), {"W": _c((2, 2, 2, 3), 29), "B": _c((2,), 35)},
         auto_pad="SAME_LOWER", strides=[2, 1]),
    _lin("conv1d-stride-dilation", "Conv", ["x", "W"], (2, 3, 9), {"W": _c((2, 3, 3), 19)}, strides=[2], dilations=[2]),
    _lin("einsum-bij,jk", "Einsum", ["x", "W"], (2, 3, 4), {"W": _c((4, 5), 20)}, equation="bij,jk->bik"),
    _lin("einsum-const-first", "Einsum", ["W", "x"], (4, 3), {"W": _c((2, 4), 21)}, equation="ij,jk->ik"),
    _lin("einsum-axis-only-in-x", "Einsum", ["x", "w"], (3, 4), {"w": _c((2,), 22)}, equation="ij,k->ik"),
    _lin("einsum-implicit-output", "Einsum", ["x", "W"], (3, 4), {"W": _c((4, 2), 36)}, equation="ij,jk"),
    _lin("einsum-ij,jk->i", "Einsum", ["x", "W"], (2, 3), {"W": _c((3, 4), 37)}, equation="ij,jk->i",
         post_reshape=True),
    _lin("einsum-bhd,hd", "Einsum", ["x", "W"], (2, 3, 4), {"W": _c((3, 4), 23)}, equation="bhd,hd->bh"),
    _lin("reducesum-axis1-keep", "ReduceSum", ["x", "axes"], (2, 3, 4), {"axes": np.array([1])}, keepdims=1),
    _lin("cumsum-axis1", "CumSum", ["x", "axis"], (2, 3, 4), {"axis": np.array(1)}),
    _lin("cumsum-exclusive-reverse", "CumSum", ["x", "axis"], (2, 3, 4), {"axis": np.array(-1)}, exclusive=1,
         reverse=1),
    _lin("reducesum-axes-neg-nokeep", "ReduceSum", ["x", "axes"], (2, 3, 4), {"axes": np.array([-1, 0])}, keepdims=0,
         post_reshape=True),
    _lin("reducesum-axis1-nokeep", "ReduceSum", ["x", "axes"], (2, 3, 4), {"axes": np.array([1])}, keepdims=0),
    _lin("reducesum-all-keep", "ReduceSum", ["x"], (2, 3, 4), {}, keepdims=1),
    _lin("reducesum-noop-empty-axes", "ReduceSum", ["x"], (2, 3, 4), {}, keepdims=1, noop_with_empty_axes=1),
    _lin("reducesum-all-nokeep", "ReduceSum", ["x"], (2, 3, 4), {}, keepdims=0, post_reshape=True),
    _lin("reducemean-axis1-keep", "ReduceMean", ["x", "axes"], (2, 3, 4), {"axes": np.array([1])}, keepdims=1),
    _lin("reducemean-axes02-nokeep", "ReduceMean", ["x", "axes"], (2, 3, 4), {"axes": np.array([0, 2])}, keepdims=0,
         post_reshape=True),
    _lin("reducemean-axis-1-nokeep", "ReduceMean", ["x", "axes"], (2, 3, 4), {"axes": np.array([-1])}, keepdims=0),
    _lin("reducemean-all-keep", "ReduceMean", ["x"], (2, 3, 4), {}, keepdims=1),
    _lin("reducemean-opset13-axes-attr", "ReduceMean", ["x"], (2, 3, 4), {}, opset=13, axes=[0, -1], keepdims=0,
         post_reshape=True),
    _lin("avgpool-pads-exclude", "AveragePool", ["x"], (1, 2, 5, 5), {}, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
         strides=[2, 2], count_include_pad=0),
    _lin("avgpool-pads-include", "AveragePool", ["x"], (1, 2, 5, 4), {}, kernel_shape=[3, 2], pads=[1, 0, 0, 1],
         strides=[2, 1], count_include_pad=1),
    _lin("avgpool-1d-ceil-overhang", "AveragePool", ["x"], (2, 2, 8), {}, kernel_shape=[3], strides=[2], ceil_mode=1),
    _lin("avgpool-include-pad-ceil", "AveragePool", ["x"], (1, 1, 6, 6), {}, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
         strides=[2, 2], ceil_mode=1, count_include_pad=1),
    _lin("avgpool-same-upper", "AveragePool", ["x"], (1, 2, 5, 4), {}, kernel_shape=[2, 3], auto_pad="SAME_UPPER"),
    _lin("globalavgpool", "GlobalAveragePool", ["x"], (2, 3, 4, 3), {}),
    _lin("batchnorm", "BatchNormalization", ["x", "s", "B", "m", "v"], (2, 3, 4),
         {"s": _c((3,), 24), "B": _c((3,), 25), "m": _c((3,), 26), "v": _c((3,), 27, positive=True)}, epsilon=1e-3),
]


def _linear_model(op, order, x_shape, consts, attrs, post_reshape):
    attrs = dict(attrs)
    opset = attrs.pop("opset", 18)
    if not post_reshape:
        return one_node_model(op, order, {"x": x_shape}, consts, name="lin", opset=opset, **attrs)
    n1 = node(op, order, ["z"], name="lin", **attrs)
    n2 = node("Reshape", ["z", "shape"], ["y"], name="flat")
    return graph_model([n1, n2], {"x": x_shape}, ["y"], {**consts, "shape": np.array([1, -1])}, opset=opset)


@pytest.mark.parametrize("preset,eps,oracle_eps", EPS_RUNS)
@pytest.mark.parametrize("op,order,x_shape,consts,attrs,post_reshape", LINEAR_CASES)
def test_linear_epsilon(request, op, order, x_shape, consts, attrs, post_reshape, preset, eps, oracle_eps):
    """MatMul/Gemm/Conv/Einsum/Reduce*/pooling/BatchNorm: ``R_x = x * J^T (R_y/stab(y))``; the bias absorbs
    ``f(0) . G`` and the stabiliser eats ``sum R_y - y . G``."""
    model = _linear_model(op, order, x_shape, consts, attrs, post_reshape)
    rng = rng_for(request.node.callspec.id)
    x = rand(rng, x_shape)
    fwd = Forward(model)
    y = fwd({"x": x})
    R = rng.standard_normal(y.shape)
    J, f0 = probe_jacobian(fwd, {"x": x}, "x")
    want, G = oracle_epsilon(J, x, y, R, oracle_eps)
    att = explain(model, {"x": x}, R, ["x"], preset, eps)
    assert att.plan.rule_of("lin") == "epsilon"
    check("forward", att.outputs["y"], y, 1e-12)
    check("linear epsilon", att.relevance["x"], want)
    scale = np.abs(R).sum()
    check_scalar("linear epsilon", att.conservation.absorbed, float((f0 * G).sum()), scale, what="absorbed")
    check_scalar("linear epsilon", att.conservation.loss, float(R.sum() - (y * G).sum()), scale, what="loss")
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# Add / Sub / Sum: epsilon over summands
# ----------------------------------------------------------------------------------------------------

SUM_CASES = [
    # id, op, input order, dynamic shapes, constants
    pytest.param("Add", ["x", "c"], {"x": (2, 3)}, {"c": _c((3,), 30)}, id="add-const-bias"),
    pytest.param("Add", ["x", "x2"], {"x": (2, 1, 3), "x2": (4, 1)}, {}, id="add-both-broadcast"),
    pytest.param("Add", ["c", "x"], {"x": (1, 3)}, {"c": _c((2, 2, 3), 31)}, id="add-const-first-x-broadcast"),
    pytest.param("Sub", ["c", "x"], {"x": (3,)}, {"c": _c((2, 3), 32)}, id="sub-const-minus-x"),
    pytest.param("Sub", ["x", "x2"], {"x": (2, 3), "x2": (2, 1)}, {}, id="sub-dynamic"),
    pytest.param("Sum", ["x", "c", "x2"], {"x": (2, 3), "x2": (1, 3)}, {"c": _c((3,), 33)}, id="sum-three"),
    pytest.param("Sum", ["x", "x2", "c", "x3"], {"x": (3, 1), "x2": (4,), "x3": (3, 4)}, {"c": _c((1, 1), 34)},
                 id="sum-four-broadcast"),
]


def _elementwise_case(request, op, order, dyn, consts, name):
    """One-node model of ``op`` over dynamic and constant inputs: (model, feeds, all input values,
    output, a random relevance for the output), seeded by the test id."""
    model = one_node_model(op, order, dyn, consts, name=name)
    rng = rng_for(request.node.callspec.id)
    feeds = {n: rand(rng, s) for n, s in dyn.items()}
    y = Forward(model)(feeds)
    return model, feeds, {**feeds, **consts}, y, rng.standard_normal(y.shape)


@pytest.mark.parametrize("eps", [0.0, 1e-2])
@pytest.mark.parametrize("op,order,dyn,consts", SUM_CASES)
def test_epsilon_sum(request, op, order, dyn, consts, eps):
    model, feeds, values, y, R = _elementwise_case(request, op, order, dyn, consts, "sum")
    want, y_or = oracle_sum(op, order, values, R, eps)
    att = explain(model, feeds, R, list(dyn), epsilon=eps)
    assert att.plan.rule_of("sum") == "epsilon"
    check("forward", y_or, y, 1e-12)
    for n in dyn:
        check("epsilon-sum", att.relevance[n], want[n], what=n)
    check_scalar("epsilon-sum", att.conservation.absorbed, float(sum(want[c].sum() for c in consts)),
                 np.abs(R).sum(), what="absorbed")
    assert_books(att)


def test_epsilon_sum_zero_output_is_safe():
    """``y = x + c = 0`` exactly with eps = 0: ``0/0 -> 0``, the relevance there is reported as loss."""
    model = one_node_model("Add", ["x", "c"], {"x": (1, 3)}, {"c": np.array([[-1.5, 2.0, 0.25]])}, name="sum")
    x = np.array([[1.5, 1.0, -0.5]])
    R = np.array([[0.7, -0.3, 0.2]])
    att = explain(model, {"x": x}, R, ["x"], epsilon=0.0)
    want = x * safe_div(R, x + np.array([[-1.5, 2.0, 0.25]]))
    check("epsilon-sum", att.relevance["x"], want)
    assert att.relevance["x"][0, 0] == 0.0
    assert att.conservation.loss == pytest.approx(0.7, rel=1e-12)
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# data movement: route = exact adjoint (J^T R_y with the probed 0/1 Jacobian)
# ----------------------------------------------------------------------------------------------------

def _route(case_id, op, x_shape, consts=None, order=None, opset=18, n_outputs=1, engine="reference", **attrs):
    order = order or ["x"] + list(consts or {})
    return pytest.param(lambda: one_node_model(op, order, {"x": x_shape}, consts or {}, n_outputs=n_outputs,
                                               opset=opset, name="route", **attrs), x_shape, engine, id=case_id)


def _split_unused():
    """Split into three pieces, the middle one unused, the others concatenated in swapped order."""
    return graph_model([node("Split", ["x", "split"], ["a", "b", "c"], name="route", axis=0),
                        node("Concat", ["c", "a"], ["y"], name="concat", axis=0)],
                       {"x": (6, 2)}, ["y"], {"split": np.array([1, 2, 3])})


def _split_num_outputs():
    """Opset-18 Split(num_outputs=3) of 7 rows (pieces 3, 3, 1), the last piece unused."""
    return graph_model([node("Split", ["x"], ["a", "b", "c"], name="route", axis=0, num_outputs=3),
                        node("Concat", ["b", "a"], ["y"], name="concat", axis=1)],
                       {"x": (7, 2)}, ["y"])


ROUTE_CASES = [
    _route("reshape", "Reshape", (2, 3, 4), {"shape": I64(4, -1)}),
    _route("reshape-allowzero0-copydim", "Reshape", (2, 3, 4), {"shape": I64(0, 12)}),
    _route("transpose-perm", "Transpose", (2, 3, 4), perm=[2, 0, 1]),
    _route("transpose-default", "Transpose", (2, 3, 4)),
    _route("slice-negative-step", "Slice", (5, 6),
           {"st": I64(4, -1), "en": I64(0, -7), "ax": I64(0, 1), "sp": I64(-2, -2)}),
    _route("slice-positive", "Slice", (5, 6), {"st": I64(1), "en": I64(100), "ax": I64(-1), "sp": I64(2)}),
    _route("gather-neg-repeated", "Gather", (4, 3), {"ind": np.array([[2, -1], [0, 2]])}, axis=0),
    _route("gather-axis1", "Gather", (2, 4, 3), {"ind": np.array([1, 1, -4])}, axis=1),
    _route("gather-scalar-index", "Gather", (2, 4, 3), {"ind": np.array(-2)}, axis=1),
    _route("gatherelements-neg", "GatherElements", (3, 4), {"ind": np.array([[0, -1], [3, 3], [-4, 1]])}, axis=1),
    _route("gathernd", "GatherND", (2, 3, 4), {"ind": np.array([[1, 2], [0, 0], [1, 2]])}),
    _route("gathernd-batch1", "GatherND", (2, 3, 4), {"ind": np.array([[[2], [0]], [[1], [1]]])}, batch_dims=1),
    _route("concat-const-piece", "Concat", (2, 3), {"c": _c((2, 2), 40)}, order=["x", "c", "x"], axis=1),
    _route("concat-neg-axis", "Concat", (2, 3), {"c": _c((1, 3), 41)}, order=["c", "x"], axis=-2),
    pytest.param(_split_unused, (6, 2), "reference", id="split-one-unused"),
    pytest.param(_split_num_outputs, (7, 2), "reference", id="split-num-outputs"),
    _route("expand", "Expand", (3, 1), {"shape": I64(2, 3, 4)}),
    _route("expand-rank-same", "Expand", (1, 3), {"shape": I64(4, 1)}),
    _route("tile", "Tile", (2, 3), {"rep": I64(2, 2)}),
    _route("pad-constant-value", "Pad", (2, 3), {"pads": I64(1, 0, 0, 2), "val": np.array(0.5)}),
    # onnx.reference's Pad rejects negative pads: probe reflrp's forward (checked by the node suite)
    _route("pad-negative-crop", "Pad", (3, 4), {"pads": I64(1, -1, -1, 2)}, engine="reflrp"),
    _route("pad-reflect", "Pad", (3, 4), {"pads": I64(0, 2, 1, 1)}, mode="reflect"),
    _route("pad-edge-axes", "Pad", (2, 3, 2), {"pads": I64(2, 1), "val": S(0.0), "axes": I64(1)}, mode="edge"),
    _route("squeeze", "Squeeze", (2, 1, 3, 1), {"axes": I64(1)}),
    _route("unsqueeze", "Unsqueeze", (2, 3), {"axes": I64(0, 3)}),
    _route("flatten", "Flatten", (2, 3, 4), axis=2),
    _route("trilu-upper-k1", "Trilu", (3, 4), {"k": I64(1)}, upper=1),
    _route("trilu-lower-batched", "Trilu", (2, 3, 3), {"k": I64(-1)}, order=["x", "k"], upper=0),
    _route("identity", "Identity", (2, 3)),
    pytest.param(lambda: one_node_model("ScatterND", ["x", "ind", "upd"], {"x": (4, 3)},
                                        {"ind": np.array([[2], [0]]), "upd": _c((2, 3), 42)}, name="route"),
                 (4, 3), "reference", id="scatternd-const-updates"),
]


@pytest.mark.parametrize("build,x_shape,engine", ROUTE_CASES)
def test_route(request, build, x_shape, engine):
    """``R_x = J^T R_y``; what lands on elements that come from no input (pad values, zeroed Trilu entries,
    a constant Concat piece) is absorbed, so ``sum R_x + absorbed = sum R_y`` exactly."""
    model = build()
    rng = rng_for(request.node.callspec.id)
    x = rand(rng, x_shape)
    fwd = Forward(model, engine)
    y = fwd({"x": x})
    R = rng.standard_normal(y.shape)
    J, _ = probe_jacobian(fwd, {"x": x}, "x")
    assert set(np.unique(J)) <= {0.0, 1.0}, "not a data movement"
    want = (J.T @ R.ravel()).reshape(x.shape)
    att = explain(model, {"x": x}, R, ["x"])
    copy = model.graph.node[0].op_type in ("Identity", "Dropout")  # kind 'cast': the identity rule, R_x = R_y
    assert att.plan.rule_of("route") == ("identity" if copy else "route")
    check("forward", att.outputs["y"], y, 1e-12)
    check("route", att.relevance["x"], want)
    check_scalar("route", att.conservation.absorbed, float(R.sum() - want.sum()), np.abs(R).sum(), 1e-12,
                 what="absorbed")
    check_scalar("route", att.conservation.at_wrt + att.conservation.absorbed, float(R.sum()), np.abs(R).sum(),
                 1e-12, what="exact conservation")
    assert att.conservation.loss == 0.0
    assert_books(att)


def test_scatternd_two_dynamic_inputs():
    """ScatterND (reduction none) of dynamic updates into dynamic data: overwritten data elements get
    nothing, each update gets the relevance of the element it lands on; exact conservation."""
    model = one_node_model("ScatterND", ["x", "ind", "u"], {"x": (4, 3), "u": (2, 3)}, {"ind": np.array([[3], [1]])},
                           name="route")
    rng = rng_for("scatternd-two")
    feeds = {"x": rng.standard_normal((4, 3)), "u": rng.standard_normal((2, 3))}
    fwd = Forward(model)
    R = rng.standard_normal((4, 3))
    att = explain(model, feeds, R, ["x", "u"])
    assert att.plan.rule_of("route") == "route"
    for n in ("x", "u"):
        J, _ = probe_jacobian(fwd, feeds, n)
        check("route", att.relevance[n], (J.T @ R.ravel()).reshape(feeds[n].shape), what=n)
    check_scalar("route", att.conservation.at_wrt, float(R.sum()), np.abs(R).sum(), 1e-12, what="conserves")
    assert_books(att)


def test_scatternd_reduction_add_is_not_silently_wrong():
    """ScatterND(reduction='add') is an addition, not data movement: either a RuleError or a rule whose
    books close (e.g. the epsilon rule over the summands)."""
    model = one_node_model("ScatterND", ["x", "ind", "u"], {"x": (4, 3), "u": (2, 3)}, {"ind": np.array([[1], [1]])},
                           name="route", reduction="add")
    rng = rng_for("scatternd-add")
    feeds = {"x": rng.standard_normal((4, 3)), "u": rng.standard_normal((2, 3))}
    R = rng.standard_normal((4, 3))
    try:
        att = explain(model, feeds, R, ["x", "u"])
    except reflrp.RuleError:
        return
    assert_books(att)
    c = att.conservation
    check_scalar("route", c.at_wrt + c.absorbed + c.loss, float(R.sum()), np.abs(R).sum(), 1e-12, what="conserves")


# ----------------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------------

SOFTMAX_CASES = [
    pytest.param((2, 5), -1, [(0, 2)], id="axis-1-one-neginf"),
    pytest.param((3, 4, 2), 1, [(1, 2, 0), (2, 0, 1)], id="axis1-neginf"),
    pytest.param((2, 3), 0, [(0, 1)], id="axis0"),
    pytest.param((2, 4), -1, [(1, 0), (1, 1), (1, 2), (1, 3)], id="row-all-masked"),  # finfo.min: -inf is NaN
]


@pytest.mark.parametrize("shape,axis,neginf", SOFTMAX_CASES)
def test_softmax(request, shape, axis, neginf):
    """``R_x = x * J^T (R_y / s)`` from the dense softmax Jacobian; 0 (never NaN) where ``x = -inf``;
    the deficit ``sum R_y - sum R_x`` is reported; a row that is masked entirely gets nothing and what
    arrived there is absorbed. The -inf entries come from a constant mask (attributed feeds must be
    finite): ``z = x + mask`` is the attributed tensor."""
    rng = rng_for(request.node.callspec.id)
    x = rand(rng, shape)
    mask = np.zeros(shape)
    for idx in neginf:
        mask[idx] = -np.inf
    if request.node.callspec.id == "row-all-masked":  # a row of -inf is NaN in ONNX: finfo.min masks it finitely
        mask[mask == -np.inf] = np.finfo(np.float32).min
    model = graph_model([node("Add", ["x", "mask"], ["z"], name="mask"),
                         node("Softmax", ["z"], ["y"], name="softmax", axis=axis)], {"x": shape}, ["y"],
                        {"mask": mask})
    z = x + mask
    R = rng.standard_normal(shape)
    dead = np.all(z <= -65504, axis=axis, keepdims=True)  # every logit a mask: the row attends to nothing
    want = np.where(np.broadcast_to(dead, z.shape), 0.0, oracle_softmax(z, R, axis))
    absorbed = float(np.where(np.broadcast_to(dead, R.shape), R, 0.0).sum())
    att = explain(model, {"x": x}, R, ["z"])
    assert att.plan.rule_of("softmax") == "softmax"
    check("forward", att.outputs["y"], softmax(z, axis), 1e-12)
    check("softmax", att.relevance["z"], want)
    for idx in neginf:
        assert att.relevance["z"][idx] == 0.0  # masked logits get nothing
    check_scalar("softmax", att.conservation.absorbed, absorbed, np.abs(R).sum(), what="masked rows absorbed")
    check_scalar("softmax", att.conservation.deficit, float(R.sum() - want.sum()) - absorbed, np.abs(R).sum(),
                 what="deficit")
    assert_books(att)


def test_softmax_central_differences():
    """The analytic softmax Jacobian used by the oracle equals central finite differences (float64)."""
    rng = rng_for("softmax-fd")
    x = rng.standard_normal(5)
    s = softmax(x, -1)
    J = np.diag(s) - np.outer(s, s)
    h = 1e-6
    Jfd = np.stack([(softmax(x + h * e, -1) - softmax(x - h * e, -1)) / (2 * h) for e in np.eye(5)], axis=1)
    assert np.max(np.abs(J - Jfd)) < 1e-9


def test_softmax_epsilon_preset_is_identity():
    """Preset ``epsilon``: Softmax is an activation, ``R_x = R_y``."""
    model = one_node_model("Softmax", ["x"], {"x": (2, 4)}, name="softmax", axis=-1)
    rng = rng_for("softmax-eps-preset")
    x, R = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    att = explain(model, {"x": x}, R, ["x"], "epsilon")
    assert att.plan.rule_of("softmax") == "identity"
    check("identity", att.relevance["x"], R)
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# products of two dynamic tensors: bilinear uniform / CP
# ----------------------------------------------------------------------------------------------------

BILINEAR_CASES = [
    pytest.param("MatMul", (2, 3, 4), (2, 4, 5), {}, id="bmm"),
    pytest.param("MatMul", (2, 1, 3, 4), (3, 4, 2), {}, id="broadcast-batch"),
    pytest.param("MatMul", (4,), (2, 4, 3), {}, id="vector-first"),
    pytest.param("MatMul", (2, 3, 4), (4,), {}, id="vector-second"),
    pytest.param("Einsum", (2, 3, 4), (2, 4, 5), {"equation": "bij,bjk->bik"}, id="einsum"),
    pytest.param("Einsum", (3, 4), (2, 4), {"equation": "qd,kd->qk"}, id="einsum-qk"),
    pytest.param("Gemm", (3, 4), (5, 4), {"transB": 1, "alpha": 0.5}, id="gemm-transB"),
    pytest.param("Conv", (2, 2, 4, 4), (3, 2, 2, 2), {"strides": [2, 1], "pads": [1, 0, 0, 1]}, id="conv-dynamic-weight"),
]


@pytest.mark.parametrize("eps", [0.0, 1e-2])
@pytest.mark.parametrize("op,a_shape,b_shape,attrs", BILINEAR_CASES)
def test_bilinear_uniform(request, op, a_shape, b_shape, attrs, eps):
    """Both operands graph inputs: ``G = R_y / (2 stab(y))``, ``R_A = A * J_A^T G``, ``R_B = B * J_B^T G``
    (``J_A``: Jacobian w.r.t. A at fixed B, probed; equals ``G @ B^T`` for plain matrices)."""
    model = one_node_model(op, ["A", "B"], {"A": a_shape, "B": b_shape}, name="bil", **attrs)
    rng = rng_for(request.node.callspec.id)
    feeds = {"A": rand(rng, a_shape), "B": rand(rng, b_shape)}
    fwd = Forward(model)
    y = fwd(feeds)
    R = rng.standard_normal(y.shape)
    G = safe_div(R, 2 * stab(y, eps))
    att = explain(model, feeds, R, ["A", "B"], epsilon=eps)
    assert att.plan.rule_of("bil") == "bilinear-uniform"
    for name in ("A", "B"):
        J, f0 = probe_jacobian(fwd, feeds, name)
        assert not np.any(f0)
        check("bilinear uniform", att.relevance[name], feeds[name] * (J.T @ G.ravel()).reshape(feeds[name].shape),
              what=name)
    if len(a_shape) == 3 and len(b_shape) == 3 and op == "MatMul":  # the formula of the spec, literally
        check("bilinear uniform", att.relevance["A"], feeds["A"] * (G @ np.swapaxes(feeds["B"], -1, -2)))
        check("bilinear uniform", att.relevance["B"], feeds["B"] * (np.swapaxes(feeds["A"], -1, -2) @ G))
    check_scalar("bilinear uniform", att.conservation.loss, float(R.sum() - 2 * (y * G).sum()), np.abs(R).sum(),
                 what="loss")
    assert_books(att)


@pytest.mark.parametrize("through", [None, "Identity", "Reshape"])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_bilinear_cp_attention_weights_constant(through, eps):
    """cp-lrp, ``y = A @ V`` with ``A = Softmax(S)``: ``R_V = V * (A^T @ (R_y/stab(y)))``, nothing to S.
    (attnlrp on this graph is the conformance case bilinear-uniform/softmax-av/eps0, which
    tests/test_lrp_conformance.py runs reflrp on.)"""
    model = softmax_av(through)
    rng = rng_for(f"cp-{through}")
    S, V = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    A = softmax(S, -1)
    y = A @ V
    R = rng.standard_normal(y.shape)
    att = explain(model, {"S": S, "V": V}, R, ["S", "V"], "cp-lrp", eps)
    assert att.plan.rule_of("av") == "bilinear-cp"
    G = safe_div(R, stab(y, eps))
    check("bilinear cp", att.relevance["V"], V * (np.swapaxes(A, -1, -2) @ G))
    assert not np.any(att.relevance["S"])
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# elementwise functions of one dynamic input: identity
# ----------------------------------------------------------------------------------------------------

def _act(op, opset=18, consts=None, x_shape=(2, 3), positive=False, order=None, **attrs):
    cid = op + ("-" + "-".join(f"{k}{v}" for k, v in attrs.items()) if attrs else "") + \
        ("-const" + "x".join(map(str, next(iter(consts.values())).shape)) if consts else "")
    return pytest.param(op, order or ["x"] + list(consts or {}), x_shape, consts or {}, opset, positive, attrs, id=cid)


IDENTITY_CASES = [
    _act("Relu"), _act("Tanh"), _act("Sigmoid"), _act("Erf"), _act("Exp"), _act("Neg"), _act("Abs"),
    _act("Gelu", opset=20), _act("Gelu", opset=20, approximate="tanh"), _act("LeakyRelu", alpha=0.1), _act("Elu"),
    _act("Selu"), _act("Softplus"), _act("Softsign"), _act("HardSwish"), _act("HardSigmoid"), _act("Mish"),
    _act("Sqrt", positive=True), _act("Log", positive=True), _act("Reciprocal", positive=True),
    _act("Cast", to=TensorProto.DOUBLE), _act("Dropout"),
    _act("Clip", consts={"lo": np.array(-0.5), "hi": np.array(0.5)}),
    _act("PRelu", consts={"slope": _c((3,), 50)}),
    _act("Mul", consts={"c": _c((2, 1), 51)}), _act("Mul", consts={"c": _c((2, 3), 52)}, x_shape=(3,)),
    _act("Div", consts={"c": _c((3,), 53, positive=True)}),
    _act("Div", consts={"c": _c((2, 3), 54, positive=True)}, order=["c", "x"], positive=True),
    _act("Pow", consts={"p": np.array(3.0)}),
    _act("Max", consts={"c": _c((2, 3), 55)}, order=["x"]),  # Max of one input
]


@pytest.mark.parametrize("op,order,x_shape,consts,opset,positive,attrs", IDENTITY_CASES)
def test_identity(request, op, order, x_shape, consts, opset, positive, attrs):
    """Elementwise function of one dynamic input (activations, Mul/Div by a constant, casts):
    ``R_x = R_y`` summed over the axes along which x was broadcast."""
    model = one_node_model(op, order, {"x": x_shape}, {k: v for k, v in consts.items() if k in order}, opset=opset,
                           name="act", **attrs)
    rng = rng_for(request.node.callspec.id)
    x = rand(rng, x_shape, positive)
    y = Forward(model)({"x": x})
    R = rng.standard_normal(y.shape)
    att = explain(model, {"x": x}, R, ["x"])
    assert att.plan.rule_of("act") in ("identity", "winner-takes-all", "route")  # Dropout routes (R_x = R_y)
    # onnx.reference evaluates Erf/Gelu and float attribute defaults (HardSigmoid's 0.2) in float32
    check("forward vs onnx.reference (fp32 parts)", att.outputs["y"], y, 1e-7)
    check("identity", att.relevance["x"], unbroadcast(R, x_shape))
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# elementwise regions (SiLU, GELU variants), fed from a MatMul so the source is an inner tensor
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias-add"])
@pytest.mark.parametrize("region", sorted(REGIONS))
def test_elementwise_region(region, bias):
    """``h = x @ W (+ b)``; ``y = region(h)``: the region's end is planned ``region`` with its inner nodes
    ruleless, ``R_h = R_y``; a bias Add before the fan-out keeps its epsilon rule and absorbs ``b * R_y / hb``."""
    rng = rng_for(f"region-{region}-{bias}")
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    src = "hb" if bias else "h"
    body, consts = REGIONS[region](src)
    nodes = [node("MatMul", ["x", "W"], ["h"], name="mm")]
    if bias:
        nodes.append(node("Add", ["h", "b"], ["hb"], name="bias"))
    model = graph_model(nodes + body, {"x": (2, 4)}, ["y"], {"W": W, "b": b, **consts})
    x = rng.standard_normal((2, 4))
    y = Forward(model)({"x": x})
    R = rng.standard_normal(y.shape)
    att = explain(model, {"x": x}, R, ["x"])
    plan = att.plan
    assert plan.rule_of("end") == "region", plan.table()
    inner = [p for p in plan.nodes if p.node.name not in ("mm", "bias", "end", "after")]
    assert inner and all(p.rule is None for p in inner), plan.table()
    check("region", att.relevance[src], R)
    h = x @ W
    if bias:
        G = safe_div(R, h + b)
        check("region", att.relevance["h"], h * G, what="bias Add")
        check_scalar("region", att.conservation.absorbed, float((b * G).sum()), np.abs(R).sum(), what="bias absorbs")
        R_h = h * G
    else:
        R_h = R
        assert att.conservation.absorbed == 0.0
    check("region", att.relevance["x"], x * (safe_div(R_h, h) @ W.T), what="x")
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# gating: Mul(act(a), b)
# ----------------------------------------------------------------------------------------------------

def _gate_model(act, swap):
    nodes = [node("MatMul", ["x", "Wa"], ["a"], name="mm_a"), node("MatMul", ["x", "Wb"], ["b"], name="mm_b")]
    if act == "silu":
        nodes += [node("Sigmoid", ["a"], ["sg"]), node("Mul", ["a", "sg"], ["g"], name="silu")]
    else:
        nodes += [node("Sigmoid", ["a"], ["g"], name="act")]
    nodes.append(node("Mul", ["b", "g"] if swap else ["g", "b"], ["y"], name="gate"))
    return nodes


@pytest.mark.parametrize("swap", [False, True], ids=["act-first", "up-first"])
@pytest.mark.parametrize("act", ["silu", "sigmoid"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_gating(preset, act, swap):
    """attnlrp: each factor gets ``R_y/2``; cp-lrp: all to the up factor ``b``."""
    rng = rng_for(f"gate-{act}")
    Wa, Wb, x = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((2, 4))
    model = graph_model(_gate_model(act, swap), {"x": (2, 4)}, ["y"], {"Wa": Wa, "Wb": Wb})
    y = Forward(model)({"x": x})
    R = rng.standard_normal(y.shape)
    att = explain(model, {"x": x}, R, ["x"], preset)
    a, b = x @ Wa, x @ Wb
    if preset == "attnlrp":
        assert att.plan.rule_of("gate") == "gate-uniform"
        Ra, Rb = R / 2, R / 2
    else:
        assert att.plan.rule_of("gate") == "gate-up"
        Ra, Rb = np.zeros_like(R), R
    check("gating", att.relevance["b"], Rb)
    check("gating", att.relevance.get("a", np.zeros_like(R)), Ra)
    check("gating", att.relevance["x"], x * (safe_div(Ra, a) @ Wa.T) + x * (safe_div(Rb, b) @ Wb.T), what="x")
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm, op and decomposed
# ----------------------------------------------------------------------------------------------------

LN_CASES = [pytest.param((2, 5), -1, (-1,), None, id="last-axis"),
            pytest.param((2, 3, 4), 1, (1, 2), None, id="axis1-two-axes"),
            pytest.param((2, 3, 4), 1, (1, 2), (4,), id="axis1-broadcast-gamma")]


@pytest.mark.parametrize("form,eps", [("op", 0.0), ("op", 1e-2), ("decomposed", 0.0)])
@pytest.mark.parametrize("shape,axis,axes,param_shape", LN_CASES)
def test_layernorm(shape, axis, axes, param_shape, form, eps):
    """LayerNormalization (op, and its decomposition; the decomposed chain equals the formula only at
    eps = 0, where the centering Sub's ``R/stab(d)`` is exactly ``gamma*G/sigma``)."""
    rng = rng_for(f"ln-{shape}-{param_shape}")
    norm_shape = param_shape or shape[axis % len(shape):]
    gamma, beta = rng.standard_normal(norm_shape), rng.standard_normal(norm_shape)
    x = rng.standard_normal(shape)
    if form == "op":
        model = one_node_model("LayerNormalization", ["x", "gamma", "beta"], {"x": shape},
                               {"gamma": gamma, "beta": beta},
                               name="ln", axis=axis, epsilon=1e-5)
    else:
        model = _ln_decomposed(shape, list(axes), gamma, beta)
    R = rng.standard_normal(x.shape)
    want, absorbed, y = oracle_layernorm(x, gamma, beta, R, axes, LN_EPS, eps)
    check("forward", Forward(model)({"x": x}), y, 1e-12)
    att = explain(model, {"x": x}, R, ["x"], epsilon=eps)
    if form == "op":
        assert att.plan.rule_of("ln") == "layernorm"
    else:
        assert att.plan.rule_of("norm") == "normalizer"
    check("layernorm", att.relevance["x"], want)
    check_scalar("layernorm", att.conservation.absorbed, absorbed, np.abs(R).sum(), what="beta absorbs")
    assert_books(att)


@pytest.mark.parametrize("eps", [0.0, 1e-2])
@pytest.mark.parametrize("form", ["op", "reciprocal", "div"])
def test_rmsnorm_identity(form, eps):
    """RMSNorm (opset-23 op or decomposed with Reciprocal/Div): ``R_x = R_y``, the rsqrt a normalizer."""
    rng = rng_for(f"rms-{form}")
    gamma, x = rng.standard_normal(4), rng.standard_normal((2, 3, 4))
    if form == "op":
        model = one_node_model("RMSNormalization", ["x", "gamma"], {"x": (2, 3, 4)}, {"gamma": gamma}, opset=23,
                               name="rms", axis=-1, epsilon=1e-5)
    else:
        model = graph_model(_rms_decomposed(form == "div"), {"x": (2, 3, 4)}, ["y"],
                            {"two": S(2.0), "axes": I64(-1), "eps": S(LN_EPS), "gamma": gamma})
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + LN_EPS) * gamma
    check("forward", Forward(model)({"x": x}), y, 1e-12)
    R = rng.standard_normal(x.shape)
    att = explain(model, {"x": x}, R, ["x"], epsilon=eps)
    assert att.plan.rule_of("rms" if form == "op" else "norm") == ("identity" if form == "op" else "normalizer")
    check("rmsnorm", att.relevance["x"], R)
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# Where with a constant condition; Max/Min; MaxPool
# ----------------------------------------------------------------------------------------------------

COND = np.array([[True, False, True], [False, False, True]])

WHERE_CASES = [
    pytest.param(["cond", "x", "c"], {"x": (2, 3)}, {"c": _c((2, 3), 60)}, id="x-or-const"),
    pytest.param(["cond", "big", "x"], {"x": (2, 3)}, {"big": S(-3.4e38)}, id="finfo-min-branch"),
    pytest.param(["cond", "x", "ninf"], {"x": (2, 3)}, {"ninf": S(-np.inf)}, id="neginf-branch"),
    pytest.param(["cond", "x", "ninf"], {"x": (3,)}, {"ninf": S(-np.inf)}, id="x-broadcast"),
    pytest.param(["cond", "x", "x2"], {"x": (2, 3), "x2": (2, 1)}, {}, id="both-dynamic"),
]


@pytest.mark.parametrize("order,dyn,consts", WHERE_CASES)
def test_where(request, order, dyn, consts):
    """Route by selection: each element's relevance to the branch it was taken from (summed over broadcast
    axes); what a constant branch would get is absorbed; never NaN."""
    model = one_node_model("Where", order, dyn, {"cond": COND, **consts}, name="where")
    rng = rng_for(request.node.callspec.id)
    feeds = {n: rand(rng, s) for n, s in dyn.items()}
    y = Forward(model)(feeds)
    R = rng.standard_normal(y.shape)
    att = explain(model, feeds, R, list(dyn))
    assert att.plan.rule_of("where") == "route"
    shares = {order[1]: np.where(COND, R, 0.0), order[2]: np.where(COND, 0.0, R)}
    for n, s in dyn.items():
        check("where", att.relevance[n], unbroadcast(shares[n], s), what=n)
    absorbed = sum(float(shares[n].sum()) for n in shares if n in consts)
    check_scalar("where", att.conservation.absorbed, absorbed, np.abs(R).sum(), what="absorbed")
    assert_books(att)


def test_where_mask_then_softmax():
    """GPT-2's masking: ``Softmax(Where(causal, x, finfo.min) + mask(-inf))``: finite relevance, 0 where masked."""
    causal = np.tril(np.ones((3, 3), dtype=bool))
    addmask = np.where(np.array([True, True, False]), 0.0, -np.inf)[None, :] * np.ones((3, 1))
    model = graph_model([node("Where", ["causal", "x", "big"], ["w"], name="where"),
                         node("Add", ["w", "m"], ["z"], name="mask"),
                         node("Softmax", ["z"], ["y"], name="softmax", axis=-1)],
                        {"x": (2, 3, 3)}, ["y"], {"causal": causal, "big": S(-3.4e38), "m": addmask})
    rng = rng_for("where-softmax")
    x = rng.standard_normal((2, 3, 3))
    R = rng.standard_normal((2, 3, 3))
    att = explain(model, {"x": x}, R, ["x"])
    z = np.where(causal, x, -3.4e38) + addmask
    R_z = oracle_softmax(z, R, -1)
    R_w = safe_div(R_z, z) * np.where(np.isfinite(z), np.where(causal, x, -3.4e38), 0)
    want = np.where(causal, R_w, 0.0)
    check("where", att.relevance["x"], want)
    assert np.all(np.isfinite(att.relevance["z"]))
    assert_books(att)


WTA_CASES = [
    pytest.param("Max", ["x", "x2"], {"x": (2, 3), "x2": (3,)}, {}, id="max-broadcast"),
    pytest.param("Max", ["x", "c"], {"x": (2, 3)}, {"c": _c((2, 1), 70)}, id="max-const"),
    pytest.param("Min", ["x", "x2", "x3"], {"x": (2, 3), "x2": (2, 1), "x3": (1, 3)}, {}, id="min-three"),
    pytest.param("Min", ["c", "x"], {"x": (2, 3)}, {"c": _c((3,), 71)}, id="min-const-first"),
]


@pytest.mark.parametrize("op,order,dyn,consts", WTA_CASES)
def test_winner_takes_all(request, op, order, dyn, consts):
    """Max/Min elementwise: all relevance of an element to the input that attains it; a constant winner absorbs."""
    model, feeds, values, y, R = _elementwise_case(request, op, order, dyn, consts, "wta")
    stack = np.stack([np.broadcast_to(values[n], y.shape) for n in order])
    win = (np.argmax if op == "Max" else np.argmin)(stack, axis=0)
    att = explain(model, feeds, R, list(dyn))
    assert att.plan.rule_of("wta") == "route"
    for i, n in enumerate(order):
        if n in dyn:
            want = unbroadcast(np.where(win == i, R, 0.0), values[n].shape)
            check("winner-takes-all", att.relevance[n], want, what=n)
    absorbed = sum(float(np.where(win == i, R, 0.0).sum()) for i, n in enumerate(order) if n in consts)
    check_scalar("winner-takes-all", att.conservation.absorbed, absorbed, np.abs(R).sum(), what="absorbed")
    assert_books(att)


@pytest.mark.parametrize("kernel,strides,pads,ceil", [
    pytest.param([2, 2], [2, 2], [0, 0, 0, 0], 0, id="2x2-s2"),
    pytest.param([3, 3], [1, 1], [1, 1, 1, 1], 0, id="3x3-s1-overlap-pads"),
    pytest.param([2, 3], [1, 2], [0, 1, 1, 0], 0, id="2x3-asym"),
    pytest.param([2, 2], [2, 2], [0, 0, 0, 0], 1, id="2x2-s2-ceil")])


def test_maxpool(kernel, strides, pads, ceil):
    """MaxPool: winner takes all per window; a value that wins several windows collects them all."""
    model = one_node_model("MaxPool", ["x"], {"x": (1, 2, 5, 5)}, name="pool", kernel_shape=kernel, strides=strides,
                           pads=pads, ceil_mode=ceil)
    rng = rng_for(f"maxpool-{kernel}-{strides}-{ceil}")
    x = rng.standard_normal((1, 2, 5, 5))
    y = Forward(model)({"x": x})
    R = rng.standard_normal(y.shape)
    att = explain(model, {"x": x}, R, ["x"])
    assert att.plan.rule_of("pool") == "route"
    want = oracle_maxpool(x, R, kernel, strides, pads)
    check("maxpool", att.relevance["x"], want)
    check_scalar("maxpool", want.sum(), float(R.sum()), np.abs(R).sum(), 1e-12, what="conserves")
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# opset-23 Attention: numpy decomposition and a decomposed ONNX graph
# ----------------------------------------------------------------------------------------------------

def attention_decomposed(shapes, q_heads=None, kv_heads=None, mask=None, is_causal=0, scale=None, softcap=0.0,
                         past=None):
    """The same computation as an ONNX graph: (Reshape, Transpose) heads, Concat past, Mul sqrt(scale), GQA
    as Unsqueeze/Expand/Reshape, MatMul with Transpose(k), softcap as Div/Tanh/Mul, Add bias, Softmax,
    MatMul, merge heads. ``past``: None, "dynamic" (graph inputs pk, pv) or a (pk, pv) pair of constants."""
    (Qs, Ks, Vs) = shapes[:3]
    nodes, consts, inputs = [], {}, {"Q": Qs, "K": Ks, "V": Vs}

    def heads(name, shape, h):
        if len(shape) == 4:
            return name, shape[1], shape[-1]
        consts[f"{name}_shape"] = I64(shape[0], shape[1], h, shape[2] // h)
        nodes.extend([node("Reshape", [name, f"{name}_shape"], [f"{name}_r"]),
                      node("Transpose", [f"{name}_r"], [f"{name}4"], perm=[0, 2, 1, 3])])
        return f"{name}4", h, shape[2] // h
    q4, hq, d = heads("Q", Qs, q_heads)
    k4, hkv, _ = heads("K", Ks, kv_heads)
    v4, _, dv = heads("V", Vs, kv_heads)
    B, L, Skv = Qs[0], Qs[-2] if len(Qs) == 4 else Qs[1], Ks[-2] if len(Ks) == 4 else Ks[1]
    P = 0
    if past is not None:
        if isinstance(past, str):
            inputs.update(pk=shapes[3], pv=shapes[4])
            P = shapes[3][2]
        else:
            consts.update(pk=past[0], pv=past[1])
            P = past[0].shape[2]
        nodes += [node("Concat", ["pk", k4], ["k_all"], axis=2), node("Concat", ["pv", v4], ["v_all"], axis=2)]
        k4, v4, Skv = "k_all", "v_all", Skv + P
    consts["root"] = S(np.sqrt(F32(scale) if scale is not None else 1 / np.sqrt(d)))
    nodes += [node("Mul", [q4, "root"], ["q"]), node("Mul", [k4, "root"], ["k"])]
    k, v = "k", v4
    reps = hq // hkv
    if reps > 1:
        consts["rep_shape"] = I64(B, hkv, reps, Skv, 1)
        consts["ax2"] = I64(2)
        for t, dim in (("k", d), ("v", dv)):
            src = "k" if t == "k" else v4
            consts[f"{t}_merged"] = I64(B, hq, Skv, dim)
            nodes += [node("Unsqueeze", [src, "ax2"], [f"{t}_u"]), node("Expand", [f"{t}_u", "rep_shape"], [f"{t}_e"]),
                      node("Reshape", [f"{t}_e", f"{t}_merged"], [f"{t}_rep"])]
        k, v = "k_rep", "v_rep"
    consts["bias"] = attention_bias(L, Skv, mask, is_causal, P)
    nodes += [node("Transpose", [k], ["kT"], perm=[0, 1, 3, 2]), node("MatMul", ["q", "kT"], ["raw"], name="qk")]
    scores = "raw"
    if softcap:
        consts["cap"] = S(F32(softcap))
        nodes += [node("Div", ["raw", "cap"], ["rc"]), node("Tanh", ["rc"], ["tc"]), node("Mul", ["tc", "cap"], ["sc"])]
        scores = "sc"
    nodes += [node("Add", [scores, "bias"], ["logits"]), node("Softmax", ["logits"], ["s"], axis=-1),
              node("MatMul", ["s", v], ["y4"], name="av")]
    if len(Qs) == 3:
        consts["y_shape"] = I64(B, L, hq * dv)
        nodes += [node("Transpose", ["y4"], ["yt"], perm=[0, 2, 1, 3]), node("Reshape", ["yt", "y_shape"], ["y"])]
    else:
        nodes.append(node("Identity", ["y4"], ["y"]))
    return graph_model(nodes, inputs, ["y"], consts, opset=23)


ATTENTION_CASES = [
    pytest.param(((2, 3, 8), (2, 4, 8), (2, 4, 6)), dict(q_heads=2, kv_heads=2), id="3d-mha"),
    pytest.param(((1, 3, 8), (1, 3, 4), (1, 3, 6)), dict(q_heads=4, kv_heads=2, is_causal=1), id="3d-gqa-causal"),
    pytest.param(((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3)), dict(scale=0.3), id="4d-scale"),
    pytest.param(((1, 2, 4, 4), (1, 2, 4, 4), (1, 2, 4, 2)), dict(is_causal=1, mask="float"),
                 id="4d-causal-float-mask"),
    pytest.param(((1, 4, 3, 2), (1, 2, 5, 2), (1, 2, 5, 3)), dict(mask="float-neginf"), id="4d-gqa-mask-neginf"),
    pytest.param(((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4)), dict(mask="bool"), id="4d-bool-mask"),
    pytest.param(((2, 3, 4), (2, 3, 4), (2, 3, 4)), dict(q_heads=2, kv_heads=2, softcap=2.0), id="3d-softcap"),
]


def _attention_mask(kind, L, Skv, rng):
    if kind is None:
        return None
    if kind == "bool":
        m = rng.uniform(size=(L, Skv)) < 0.7
        m[:, 0] = True
        return m
    m = rng.standard_normal((L, Skv))
    if kind == "float-neginf":
        m[0, 1] = m[2, 4] = -np.inf
    return m


def _attention_case(request, shapes, kw):
    rng = rng_for(request.node.callspec.id)
    Qs, Ks, Vs = shapes[:3]
    feeds = {"Q": rng.standard_normal(Qs), "K": rng.standard_normal(Ks), "V": rng.standard_normal(Vs)}
    L, Skv = (Qs[-2], Ks[-2]) if len(Qs) == 4 else (Qs[1], Ks[1])
    kw = dict(kw)
    mask = _attention_mask(kw.pop("mask", None), L, Skv, rng)
    return rng, feeds, mask, kw


def _attention_attrs(kw):
    names = {"q_heads": "q_num_heads", "kv_heads": "kv_num_heads", "is_causal": "is_causal", "scale": "scale",
             "softcap": "softcap"}
    return {names[k]: v for k, v in kw.items() if k in names and v is not None}


@pytest.mark.parametrize("preset,eps", [("attnlrp", 0.0), ("attnlrp", 1e-2), ("cp-lrp", 0.0)])
@pytest.mark.parametrize("shapes,kw", ATTENTION_CASES)
def test_attention(request, shapes, kw, preset, eps):
    """Fused Attention = the numpy decomposition = the decomposed ONNX graph explained by reflrp (1e-12)."""
    rng, feeds, mask, kw = _attention_case(request, shapes, kw)
    order, consts = ["Q", "K", "V"], {}
    if mask is not None:
        order.append("mask")
        consts["mask"] = mask
    fused = one_node_model("Attention", order, {n: s for n, s in zip("QKV", shapes)}, consts, opset=23, name="attn",
                           **_attention_attrs(kw))
    p = attention_forward(feeds["Q"], feeds["K"], feeds["V"], mask=mask, **kw)
    # onnx.reference takes sqrt(scale) of a given float32 scale in float32 (the op's function body does)
    check("forward vs onnx.reference (fp32 parts)" if "scale" in kw else "forward", Forward(fused)(feeds), p["y"],
          1e-7 if "scale" in kw else 1e-12, what="onnx.reference")
    R = rng.standard_normal(p["y"].shape)
    cp = preset == "cp-lrp"
    R_Q, R_K, R_V, _, _, absorbed, deficit, _ = oracle_attention(feeds["Q"], feeds["K"], feeds["V"], R, eps, cp,
                                                                 mask=mask, **kw)
    att = explain(fused, feeds, R, ["Q", "K", "V"], preset, eps)
    assert att.plan.rule_of("attn") == ("attention-cp" if cp else "attention")
    check("forward", att.outputs["y"], p["y"], 1e-12)
    for name, want in (("Q", R_Q), ("K", R_K), ("V", R_V)):
        check("attention (numpy)", att.relevance[name], want, what=name)
    scale = np.abs(R).sum()
    check_scalar("attention (numpy)", att.conservation.absorbed, absorbed, scale, what="mask absorbs")
    check_scalar("attention (numpy)", att.conservation.deficit, deficit, scale, what="deficit")
    assert_books(att)
    dec = attention_decomposed(shapes, mask=mask, **kw)
    check("forward", Forward(dec)(feeds), p["y"], 1e-12, what="decomposed graph")
    att2 = explain(dec, feeds, R, ["Q", "K", "V"], preset, eps)
    assert att2.plan.rule_of("av") == ("bilinear-cp" if cp else "bilinear-uniform")
    for name in ("Q", "K", "V"):
        check("attention (graph)", att.relevance[name], att2.relevance[name], 1e-12, what=name)
    for term in ("absorbed", "deficit", "loss", "at_wrt"):
        check_scalar("attention (graph)", getattr(att.conservation, term), getattr(att2.conservation, term), scale,
                     1e-12, what=term)
    assert_books(att2)


@pytest.mark.parametrize("past_kind", ["dynamic", "constant"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_attention_past_key_value(request, preset, past_kind):
    """Attention with past_key/past_value (4-D, causal, bottom-right): the past part of the key/value
    relevance goes to past_key/past_value (dynamic) or is absorbed (constant); equal to the decomposed graph."""
    shapes = ((1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 3), (1, 2, 3, 4), (1, 2, 3, 3))
    rng, feeds, _, _ = _attention_case(request, shapes, {})
    pk, pv = rng.standard_normal(shapes[3]), rng.standard_normal(shapes[4])
    order = ["Q", "K", "V", "", "pk", "pv"]
    dyn = {n: s for n, s in zip(["Q", "K", "V", "pk", "pv"], shapes)}
    if past_kind == "dynamic":
        feeds.update(pk=pk, pv=pv)
        consts, wrt = {}, ["Q", "K", "V", "pk", "pv"]
    else:
        dyn = {n: dyn[n] for n in "QKV"}
        consts, wrt = {"pk": pk, "pv": pv}, ["Q", "K", "V"]
    fused = one_node_model("Attention", order, dyn, consts, n_outputs=3, keep_outputs=[0], opset=23, name="attn",
                           is_causal=1)
    qkv = [feeds[n] for n in "QKV"]
    p = attention_forward(*qkv, is_causal=1, past_key=pk, past_value=pv)
    check("forward", Forward(fused)(feeds), p["y"], 1e-12, what="onnx.reference")
    R = rng.standard_normal(p["y"].shape)
    cp = preset == "cp-lrp"
    R_Q, R_K, R_V, R_pk, R_pv, absorbed, _, _ = oracle_attention(*qkv, R, 0.0, cp, is_causal=1, past_key=pk,
                                                                 past_value=pv)
    att = explain(fused, feeds, R, wrt, preset)
    for name, want in (("Q", R_Q), ("K", R_K), ("V", R_V)):
        check("attention (numpy)", att.relevance[name], want, what=name)
    if past_kind == "dynamic":
        check("attention (numpy)", att.relevance["pk"], R_pk, what="past_key")
        check("attention (numpy)", att.relevance["pv"], R_pv, what="past_value")
    else:
        absorbed += float(R_pk.sum() + R_pv.sum())
    check_scalar("attention (numpy)", att.conservation.absorbed, absorbed, np.abs(R).sum(), what="absorbed")
    dec = attention_decomposed(shapes, is_causal=1, past="dynamic" if past_kind == "dynamic" else (pk, pv))
    att2 = explain(dec, feeds, R, wrt, preset)
    for name in wrt:
        check("attention (graph)", att.relevance[name], att2.relevance[name], 1e-12, what=name)
    assert_books(att2)
    assert_books(att)


# ----------------------------------------------------------------------------------------------------
# opset-23 RotaryEmbedding
# ----------------------------------------------------------------------------------------------------

def rotary_decomposed(shape, cos_b, sin_b, interleaved, rot):
    """RoPE on a 4-D (B, H, S, D) input as Slice / Mul / Sub / Add / Concat (interleaved: strided Slices and
    an Unsqueeze-Concat-Reshape interleave), with the gathered cos/sin as (B, 1, S, rot/2) constants."""
    D = shape[-1]
    consts = {"cos": cos_b, "sin": sin_b, "ax": I64(3)}
    if interleaved:
        consts.update(s1=I64(0), s2=I64(1), e=I64(rot), st=I64(2))
        nodes = [node("Slice", ["X", "s1", "e", "ax", "st"], ["x1"]),
                 node("Slice", ["X", "s2", "e", "ax", "st"], ["x2"])]
    else:
        consts.update(s1=I64(0), m=I64(rot // 2), e=I64(rot))
        nodes = [node("Slice", ["X", "s1", "m", "ax"], ["x1"]), node("Slice", ["X", "m", "e", "ax"], ["x2"])]
    nodes += [node("Mul", ["x1", "cos"], ["a"]), node("Mul", ["x2", "sin"], ["b"]), node("Sub", ["a", "b"], ["real"]),
              node("Mul", ["x1", "sin"], ["c"]), node("Mul", ["x2", "cos"], ["d"]), node("Add", ["c", "d"], ["imag"])]
    if interleaved:
        consts.update(last=I64(-1), rshape=I64(*shape[:3], rot))
        nodes += [node("Unsqueeze", ["real", "last"], ["ru"]), node("Unsqueeze", ["imag", "last"], ["iu"]),
                  node("Concat", ["ru", "iu"], ["ri"], axis=-1), node("Reshape", ["ri", "rshape"], ["rotated"])]
    else:
        nodes.append(node("Concat", ["real", "imag"], ["rotated"], axis=3))
    if rot < D:
        consts.update(big=I64(D))
        nodes += [node("Slice", ["X", "e", "big", "ax"], ["rest"]), node("Concat", ["rotated", "rest"], ["y"], axis=3)]
    else:
        nodes.append(node("Identity", ["rotated"], ["y"]))
    return graph_model(nodes, {"X": shape}, ["y"], consts)


ROTARY_CASES = [
    pytest.param((1, 2, 3, 8), 0, 0, True, id="4d-halves-pos"),
    pytest.param((1, 2, 3, 8), 1, 0, True, id="4d-interleaved-pos"),
    pytest.param((2, 2, 3, 8), 0, 4, True, id="4d-partial-pos"),
    pytest.param((2, 2, 3, 8), 1, 4, True, id="4d-interleaved-partial-pos"),
    pytest.param((2, 3, 12), 0, 0, False, id="3d-heads-no-pos"),
    pytest.param((2, 3, 12), 1, 0, False, id="3d-interleaved-no-pos"),
]


@pytest.mark.parametrize("eps", [0.0, 1e-2])
@pytest.mark.parametrize("shape,interleaved,rot_dim,with_pos", ROTARY_CASES)
def test_rotary(request, shape, interleaved, rot_dim, with_pos, eps):
    """RotaryEmbedding = its numpy decomposition = (4-D cases) a decomposed ONNX graph explained by reflrp."""
    rng = rng_for(request.node.callspec.id)
    num_heads = 3 if len(shape) == 3 else 0
    B, Sq = shape[0], (shape[2] if len(shape) == 4 else shape[1])
    head = shape[-1] if len(shape) == 4 else shape[-1] // num_heads
    half = (rot_dim or head) // 2
    X = rng.standard_normal(shape)
    if with_pos:
        theta = rng.uniform(0, 2 * np.pi, (6, half))
        pos = rng.integers(0, 6, (B, Sq))
    else:
        theta, pos = rng.uniform(0, 2 * np.pi, (B, Sq, half)), None
    cos_cache, sin_cache = np.cos(theta), np.sin(theta)
    order = ["X", "cos", "sin"] + (["pos"] if with_pos else [])
    consts = {"cos": cos_cache, "sin": sin_cache, **({"pos": pos} if with_pos else {})}
    attrs = dict(interleaved=interleaved, **({"rotary_embedding_dim": rot_dim} if rot_dim else {}),
                 **({"num_heads": num_heads} if num_heads else {}))
    model = one_node_model("RotaryEmbedding", order, {"X": shape}, consts, opset=23, name="rope", **attrs)
    R = rng.standard_normal(shape)
    y, want = rotary_forward_and_oracle(X, cos_cache, sin_cache, pos, interleaved, rot_dim, num_heads, R, eps)
    check("forward", Forward(model)({"X": X}), y, 1e-12, what="onnx.reference")
    att = explain(model, {"X": X}, R, ["X"], epsilon=eps)
    assert att.plan.rule_of("rope") == "rotary"
    check("forward", att.outputs["y"], y, 1e-12)
    check("rotary (numpy)", att.relevance["X"], want)
    assert_books(att)
    if len(shape) == 4:
        cb, sb = (cos_cache[pos], sin_cache[pos]) if with_pos else (cos_cache, sin_cache)
        dec = rotary_decomposed(shape, cb[:, None], sb[:, None], interleaved, rot_dim or head)
        check("forward", Forward(dec)({"X": X}), y, 1e-12, what="decomposed graph")
        att2 = explain(dec, {"X": X}, R, ["X"], epsilon=eps)
        check("rotary (graph)", att.relevance["X"], att2.relevance["X"], 1e-12)
        check_scalar("rotary (graph)", att.conservation.loss, att2.conservation.loss, np.abs(R).sum(), 1e-12,
                     what="loss")
        assert_books(att2)


# ----------------------------------------------------------------------------------------------------
# every registered op has a rule decision
# ----------------------------------------------------------------------------------------------------

def test_every_supported_op_has_a_kind_and_its_role_a_rule():
    """Every op declares a kind; every kind but 'constant' and 'nonlinear' leads to a role that the LRP
    presets map to a rule, and the gradient preset maps every role."""
    from reflrp.analysis import role_of  # noqa: F401  (the decision function the kinds feed)
    for op, rec in records().items():
        assert rec.kind in kinds.ALL, (op, rec.kind)
    for name in ("attnlrp", "cp-lrp", "epsilon"):
        roles = PRESETS[name].roles
        assert set(roles) >= {"activation", "linear", "bilinear", "move", "select", "softmax", "layernorm",
                              "rmsnorm", "attention", "region", "normalizer", "gate", "product",
                              "attention-values"}, name
        assert "nonlinear" not in roles, name
    assert set(PRESETS["gradient"].roles) >= set(PRESETS["attnlrp"].roles) | {"nonlinear"}
