"""The classic LRP rules and Zennit's composites (issue 16) against Zennit 1.0.0, LXT 2.1 and a dense oracle.

1. Every spec of every golden in models/zennit/ (tools/make_zennit_goldens.py: Zennit 1.0.0, float64),
   parametrized from MANIFEST.json and each golden's meta, so a new fixture or spec is tested without
   an edit here; tests/zennit_translate.py reads a spec as a reflrp call. Bar: max|dR| / max|R| <=
   1e-8, every node's books closed (the diagnostics, which differentiate some nodes, excepted).
2. LXT's vision-transformer recipe (``cp-lrp-gamma``) against models/vit.gamma.npz (LXT 2.1 + Zennit):
   <= 1e-6.
3. Each rule on single layers (Conv, ConvTranspose, Gemm, MatMul + bias Add) against a dense float64
   oracle: the layer's Jacobian probed from onnx's reference evaluator, the rule's formula on it, no
   reflrp internals; the books' absorbed and loss totals too.
4. Plans (layer types, the first layer, two-node layers), BatchNorm folding, and argument errors.

Graphs exported from float32 torch models hold float32 constants where torch's float64 model has
exact ones (GELU's sqrt(2), the attention scale 1/sqrt(8)); where that moves the result past the bar
the test also runs the graph with those constants made exact and holds that to the bar.
"""
from __future__ import annotations

import json
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import reflrp
from reflrp.errors import ReflrpError, RuleError
from reflrp.testing import rel_err
from onnx_builders import graph_model, node
import zennit_translate as zt

ROOT = Path(__file__).resolve().parents[1]
ZENNIT = ROOT / "models" / "zennit"
BAR = 1e-8
# mlp_smooth's GELU divides by float32(sqrt(2)) where torch's float64 GELU uses sqrt(2): 1.2e-6 measured
# on the bias-free specs (small denominators amplify it), 1e-15 with the exact constant
SMOOTH_AS_EXPORTED = 2e-6
EXACT_CONSTANTS = {"mlp_smooth": {"val_0": np.sqrt(2.0)}}


# ------------------------------------------------------------------------------------------ helpers

def float64_graph(path: Path, exact: dict) -> onnx.ModelProto:
    """The model with every float32 tensor as float64 and the named constants replaced by their exact
    values (each must be the float32 rounding of its replacement)."""
    m = onnx.load(str(path))
    for i, t in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(t)
        if t.name in exact:
            assert np.float32(exact[t.name]) == a, (t.name, a)
            a = np.asarray(exact[t.name], dtype=np.float64)
        if a.dtype.kind == "f":
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


@lru_cache(maxsize=None)
def golden(name: str) -> tuple[dict, dict]:
    with np.load(ZENNIT / name) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, {s["name"]: s for s in json.loads(bytes(arrays.pop("meta")))["specs"]}


@lru_cache(maxsize=None)
def model_of(path: str, fold: bool, exact: bool) -> reflrp.Model:
    p = Path(path)
    return reflrp.load(float64_graph(p, EXACT_CONSTANTS[p.stem]) if exact else p, fold_batchnorm=fold)


@lru_cache(maxsize=None)
def graph_facts(path: Path) -> tuple[bool, frozenset]:
    """(the graph has residual Adds of two computed tensors, its op types)."""
    g = onnx.load(str(path)).graph
    inits = {i.name for i in g.initializer}
    return any(n.op_type == "Add" and not set(n.input) & inits for n in g.node), frozenset(n.op_type for n in g.node)


def golden_cases():
    manifest = json.loads((ZENNIT / "MANIFEST.json").read_text())
    for fx, info in manifest["fixtures"].items():
        for spec in golden(info["golden"])[1]:
            for exact in ([False, True] if Path(info["file"]).stem in EXACT_CONSTANTS else [False]):
                yield pytest.param(info["file"], info["golden"], spec, exact,
                                   id=f"{fx}{'@exact-constants' if exact else ''}:{spec}")


# Zennit with one convention removed (meta "diagnostic"): the gradient through some nodes. An elementwise
# region (GELU) takes no rule of a type map but pass / identity, so its nodes are named one by one.
REGION_GRADIENT = {"epsilon.activation=gradient": {op: "gradient" for op in ("Div", "Erf", "Add", "Mul", "Tanh")}}


def explain_spec(file: str, golden_name: str, spec_name: str, exact: bool = False, **kw):
    arrays, specs = golden(golden_name)
    spec = specs[spec_name]
    path = (ZENNIT / file).resolve()
    residual, ops = graph_facts(path)
    call = zt.explain_kwargs(spec, arrays, residual)
    if spec_name in REGION_GRADIENT and "Erf" in ops:
        call = dict(preset="epsilon", rules=REGION_GRADIENT[spec_name])
    model = model_of(str(path), zt.folds_batchnorm(spec), exact)
    x = arrays["input:x"]
    feeds = {"x": x.astype(np.float64) if exact else x}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if spec["diagnostic"] else "error")
        # Zennit's box composite takes low/high on any model; on one without a convolution they reach no node
        warnings.filterwarnings("ignore", "options.*reaches no node", reflrp.ReflrpWarning)
        att = reflrp.explain(model, feeds, target=arrays["target"], **call, **kw)
    return att, arrays[f"{spec_name}:relevance"], spec


@pytest.mark.parametrize("file,golden_name,spec_name,exact", list(golden_cases()))
def test_zennit_golden(file, golden_name, spec_name, exact):
    att, want, spec = explain_spec(file, golden_name, spec_name, exact)
    tol = SMOOTH_AS_EXPORTED if Path(file).stem in EXACT_CONSTANTS and not exact else BAR
    err = rel_err(att["x"], want)
    assert err <= tol, f"{spec_name}: {err:.3e} > {tol:g}"
    if not spec["diagnostic"]:
        assert att.conservation.ok, att.conservation.text()


FAST_OFF = ["resnet.onnx", "cnn_bn.onnx", "mlp_nobias.onnx", "vgg_legacy.onnx"]


@pytest.mark.parametrize("file", FAST_OFF)
def test_zennit_goldens_without_the_speed_layer(file):
    """The plain path (fast=False) gives the goldens too (every non-diagnostic spec of four fixtures)."""
    manifest = json.loads((ZENNIT / "MANIFEST.json").read_text())
    gold = next(i["golden"] for i in manifest["fixtures"].values() if i["file"] == file)
    for name, spec in golden(gold)[1].items():
        if not spec["diagnostic"]:
            att, want, _ = explain_spec(file, gold, name, fast=False)
            assert rel_err(att["x"], want) <= BAR, name


def test_every_fixture_and_composite_is_covered():
    """The goldens exercise each Zennit composite, canonizer and BN handling (a test that cannot fail
    silently by losing fixtures)."""
    manifest = json.loads((ZENNIT / "MANIFEST.json").read_text())
    assert {i["bn"] for i in manifest["fixtures"].values()} == {"in-graph", "folded-by-hand", "folded-by-exporter",
                                                                "none"}
    names = {s for i in manifest["fixtures"].values() for s in golden(i["golden"])[1]}
    assert {"epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1",
            "epsilon-alpha2-beta1-flat", "zplus", "flat", "wsquare", "zbox-first+epsilon"} <= names
    assert len(list(golden_cases())) > 500


# ------------------------------------------------------------------------------------ the ViT recipe

VIT_EXACT = {"val_37": 1 / np.sqrt(8.0), "val_50": np.sqrt(2.0)}  # the attention scale, GELU's sqrt(2)


@lru_cache(maxsize=None)
def vit(exact: bool):
    path = ROOT / "models" / "vit.onnx"
    with np.load(ROOT / "models" / "vit.gamma.npz") as z:
        arrays = {k: z[k] for k in z.files}
    settings = json.loads(bytes(arrays.pop("meta")))["settings"]
    return reflrp.load(float64_graph(path, VIT_EXACT) if exact else path), arrays, settings


VIT_SETTINGS = [s["name"] for s in vit(False)[2]]


@pytest.mark.parametrize("name", VIT_SETTINGS)
def test_vit_gamma_recipe(name):
    """LXT's ViT recipe: Gamma on the patch conv and every Linear, CP-LRP attention. With the graph's
    float32 constants exact (as in torch's float64 model) <= 1e-6 against LXT (measured 1.4e-8: LXT's
    own 1e-10 stabilisers) and <= 1e-11 against LXT without them; the graph as exported <= 1e-5."""
    for exact, tol, exact_tol in ((True, 1e-6, 1e-11), (False, 1e-5, 1e-5)):
        model, arrays, settings = vit(exact)
        s = next(s for s in settings if s["name"] == name)
        x = arrays["inputs:pixel_values"]
        att = reflrp.explain(model, {"pixel_values": x.astype(np.float64) if exact else x}, target=arrays["target"],
                             preset="cp-lrp-gamma", options={"conv.gamma": s["conv_gamma"],
                                                             "dense.gamma": s["linear_gamma"],
                                                             "stabilizer": s["stabilizer"]})
        assert rel_err(att["pixel_values"], arrays[f"{name}:relevance"]) <= tol
        if f"{name}:relevance_exact" in arrays:
            assert rel_err(att["pixel_values"], arrays[f"{name}:relevance_exact"]) <= exact_tol
        assert att.conservation.ok


def test_vit_plan_has_one_layer_per_linear():
    """Each MatMul with a constant weight and the Add of its bias is one dense layer (the rule sits at the
    Add, the MatMul is inside it); the patch conv is a conv layer; attention products are no layers."""
    plan = vit(False)[0].plan("cp-lrp-gamma")
    layers = [p for p in plan.nodes if p.layer is not None]
    assert sorted(p.type for p in layers) == ["conv"] + ["dense"] * 13
    fused = [p for p in layers if p.layer.bias_add is not None]
    assert len(fused) == 12 and all(p.node.op_type == "Add" and p.layer.product.op_type == "MatMul" for p in fused)
    inside = {p.node.name for p in plan.nodes if p.rule is None and "inside the dense layer" in p.why}
    assert inside == {p.layer.product.name for p in fused}
    assert all(p.rule == "gamma" for p in layers)
    assert plan.rule_of("node_matmul_1") == "bilinear-cp"
    assert "inside the dense layer ending at 'node_linear'" in plan.table()


def test_vit_layer_override_by_either_name_checkpoint_and_fast_off():
    """An override may name a two-node layer by its MatMul or its Add; checkpointing (which may split the
    layer over two segments), keep=[] and the plain path give the same relevance."""
    model, arrays, _ = vit(False)
    feeds = {"pixel_values": arrays["inputs:pixel_values"]}
    opts = {"gamma": 0.1}
    base = reflrp.explain(model, feeds, preset="cp-lrp-gamma", options=opts)["pixel_values"]
    by_add = reflrp.explain(model, feeds, preset="cp-lrp-gamma", options=opts,
                            rules={"node_linear_4": ("gamma", {"gamma": 3.0})})["pixel_values"]
    by_matmul = reflrp.explain(model, feeds, preset="cp-lrp-gamma", options=opts,
                               rules={"node_MatMul_45": ("gamma", {"gamma": 3.0})})["pixel_values"]
    assert rel_err(by_add, by_matmul) == 0.0 and rel_err(by_add, base) > 1e-3
    for kw in (dict(checkpoint="sqrt"), dict(keep=[]), dict(fast=False)):
        got = reflrp.explain(model, feeds, preset="cp-lrp-gamma", options=opts, **kw)["pixel_values"]
        assert rel_err(got, base) <= 1e-13, kw


# ----------------------------------------------------------------------------------- dense oracle

def rng_for(text: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(text.encode()))


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def div(R, d):
    """R / d, 0 where d is 0 (reflrp's convention; Zennit gives NaN there)."""
    return np.where(d != 0, R / np.where(d != 0, d, 1.0), 0.0)


def pos(v):
    return np.maximum(v, 0)


def neg(v):
    return np.minimum(v, 0)


class DenseLayer:
    """A layer ``y = J x + b`` over the flattened batch, probed with onnx's reference evaluator."""

    def __init__(self, model, x):
        ev = ReferenceEvaluator(model)
        f = lambda v: np.asarray(ev.run(None, {"x": v.reshape(x.shape)})[0], dtype=np.float64).ravel()  # noqa: E731
        self.b = f(np.zeros(x.size))
        self.J = np.stack([f(np.eye(x.size)[i]) - self.b for i in range(x.size)], axis=1)
        self.S = (self.J != 0).astype(float)  # connectivity (random weights are never exactly 0)
        self.x, self.x_shape, self.y_shape = x.ravel(), x.shape, ev.run(None, {"x": x})[0].shape


def oracle(rule: str, p: dict, L: DenseLayer, R: np.ndarray, has_bias: bool):
    """(R_x, absorbed, loss) of Zennit's rule ``rule`` with parameters ``p`` on the dense layer."""
    J, a, R = L.J, L.x, R.ravel()
    b = np.zeros_like(L.b) if p.get("zero_bias") or not has_bias else L.b
    st = p.get("stabilizer", 1e-6)
    if rule == "epsilon":
        z = J @ a + b
        G = div(R, stab(z, p["epsilon"]))
        return a * (J.T @ G), (b * G).sum(), R.sum() - (z * G).sum()
    if rule in ("zplus", "alpha-beta"):
        al, be = (1.0, 0.0) if rule == "zplus" else (p["alpha"], p["beta"])
        zp = pos(J) @ pos(a) + neg(J) @ neg(a) + pos(b)
        zn = neg(J) @ pos(a) + pos(J) @ neg(a) + neg(b)
        Gp, Gn = div(R, stab(zp, st)), div(R, stab(zn, st))
        Ra = al * (pos(a) * (pos(J).T @ Gp) + neg(a) * (neg(J).T @ Gp)) \
            - be * (pos(a) * (neg(J).T @ Gn) + neg(a) * (pos(J).T @ Gn))
        return Ra, al * (pos(b) * Gp).sum() - be * (neg(b) * Gn).sum(), \
            R.sum() - al * (zp * Gp).sum() + be * (zn * Gn).sum()
    if rule == "gamma":
        g = p["gamma"]
        Jp, Jn = J + g * pos(J), J + g * neg(J)
        bp, bn = b + g * pos(b), b + g * neg(b)
        z = J @ a + L.b  # the mask keeps the bias (Zennit's unmodified pass)
        zpos, zneg = Jp @ pos(a) + Jn @ neg(a) + bp, Jn @ pos(a) + Jp @ neg(a) + bn
        Gp, Gn = np.where(z > 0, div(R, stab(zpos, st)), 0), np.where(z < 0, div(R, stab(zneg, st)), 0)
        Ra = pos(a) * (Jp.T @ Gp) + neg(a) * (Jn.T @ Gp) + pos(a) * (Jn.T @ Gn) + neg(a) * (Jp.T @ Gn)
        return Ra, (bp * Gp).sum() + (bn * Gn).sum(), R.sum() - (zpos * Gp).sum() - (zneg * Gn).sum()
    if rule == "flat":
        z = L.S @ np.ones_like(a)
        G = div(R, stab(z, st))
        return L.S.T @ G, 0.0, R.sum() - (z * G).sum()
    if rule == "wsquare":
        z = (J * J) @ np.ones_like(a) + b * b
        G = div(R, stab(z, st))
        return (J * J).T @ G, (b * b * G).sum(), R.sum() - (z * G).sum()
    if rule == "zbox":
        lo = np.broadcast_to(p["low"], L.x_shape).ravel()
        hi = np.broadcast_to(p["high"], L.x_shape).ravel()
        d = (J @ a + b) - ((pos(J) @ lo + pos(b)) + (neg(J) @ hi + neg(b)))
        G = div(R, stab(d, st))
        return a * (J.T @ G) - lo * (pos(J).T @ G) - hi * (neg(J).T @ G), 0.0, R.sum() - (d * G).sum()
    raise KeyError(rule)


def _w(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


LAYERS = {  # id: (x shape, nodes, constants, has a bias)
    "conv-pads-strides-groups": ((1, 4, 5, 5), [node("Conv", ["x", "W", "B"], ["y"], name="lin", pads=[1, 0, 1, 1],
                                                     strides=[2, 1], group=2)],
                                 {"W": _w((4, 2, 3, 2), 1), "B": _w((4,), 2)}, True),
    "conv-no-bias-dilated": ((1, 2, 6, 5), [node("Conv", ["x", "W"], ["y"], name="lin", dilations=[2, 1],
                                                 pads=[1, 1, 1, 1])], {"W": _w((3, 2, 2, 3), 3)}, False),
    "convtranspose": ((1, 2, 3, 3), [node("ConvTranspose", ["x", "W", "B"], ["y"], name="lin", strides=[2, 2],
                                          pads=[1, 0, 0, 1], output_padding=[1, 0])],
                      {"W": _w((2, 3, 3, 3), 4), "B": _w((3,), 5)}, True),
    "gemm-transB": ((3, 5), [node("Gemm", ["x", "W", "B"], ["y"], name="lin", transB=1)],
                    {"W": _w((4, 5), 6), "B": _w((4,), 7)}, True),
    "gemm-alpha-beta": ((3, 5), [node("Gemm", ["x", "W", "B"], ["y"], name="lin", alpha=0.5, beta=2.0)],
                        {"W": _w((5, 4), 8), "B": _w((1, 4), 9)}, True),
    "matmul-3d-bias-add": ((2, 3, 5), [node("MatMul", ["x", "W"], ["z"], name="mm"),
                                       node("Add", ["z", "B"], ["y"], name="lin")],
                           {"W": _w((5, 4), 10), "B": _w((4,), 11)}, True),
    "gemm-beta-no-C-bias-add": ((3, 5), [node("Gemm", ["x", "W"], ["z"], name="mm", alpha=2.0, beta=0.5),
                                         node("Add", ["B", "z"], ["y"], name="lin")],
                                {"W": _w((5, 4), 13), "B": _w((1, 4), 14)}, True),
    "matmul-weight-first": ((2, 4, 3), [node("MatMul", ["W", "x"], ["y"], name="lin")], {"W": _w((5, 4), 12)}, False),
}
RULE_RUNS = [("epsilon", {"epsilon": 1e-2}), ("epsilon", {"epsilon": 1e-6, "zero_bias": True}), ("zplus", {}),
             ("alpha-beta", {"alpha": 2.0, "beta": 1.0}), ("alpha-beta", {"alpha": 3.0, "beta": 2.0}),
             ("gamma", {"gamma": 0.25}), ("gamma", {"gamma": 1.0, "zero_bias": True}), ("flat", {}),
             ("wsquare", {}), ("wsquare", {"zero_bias": True, "stabilizer": 1e-3}),
             ("zbox", {"low": -2.5, "high": 2.0}), ("zbox", {"low": "per-feature", "high": 3.0, "zero_bias": True})]


@lru_cache(maxsize=None)
def dense_case(layer: str):
    """(ONNX model, input, probed layer) of a layer case: probed once per layer."""
    x_shape, nodes, consts, _ = LAYERS[layer]
    model = graph_model(nodes, {"x": x_shape}, ["y"], consts)
    x = rng_for(layer).uniform(-2.0, 2.0, x_shape)
    return model, x, DenseLayer(model, x)


@pytest.mark.parametrize("rule,params", RULE_RUNS, ids=[f"{r}{sorted(p.items())}" for r, p in RULE_RUNS])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_rule_against_dense_oracle(layer, rule, params):
    x_shape, _, _, has_bias = LAYERS[layer]
    model, x, L = dense_case(layer)
    rng = rng_for(f"{layer}/{rule}/{sorted(params.items())}")
    p = dict(params)
    if p.get("low") == "per-feature":  # one bound per feature (trailing axis), broadcast from the right
        p["low"] = -2.0 - 0.1 * np.arange(x_shape[-1])
    R = rng.standard_normal(L.y_shape)
    want, absorbed, loss = oracle(rule, {"stabilizer": 1e-6, **p}, L, R, has_bias)
    comp = reflrp.composite("one-rule", [(("conv", "dense"), rule, p)])
    for fast in (True, False):
        att = reflrp.explain(reflrp.load(model), {"x": x}, target=R, preset=comp, fast=fast)
        assert rel_err(att["x"], want.reshape(x_shape)) <= 1e-12, fast
    c, scale = att.conservation, np.abs(R).sum()
    assert abs(c.absorbed - absorbed) <= 1e-12 * scale and abs(c.loss - loss) <= 1e-12 * scale
    assert c.ok, c.text()
    (row,) = [p for p in att.plan.nodes if p.rule == rule]
    assert row.node.name == "lin" and row.layer is not None


def test_gamma_zero_is_epsilon_on_nonzero_outputs():
    """Gamma with gamma = 0 is epsilon with Zennit's stabiliser wherever z != 0 (docs/zennit-conventions)."""
    x_shape, nodes, consts, _ = LAYERS["gemm-transB"]
    model = reflrp.load(graph_model(nodes, {"x": x_shape}, ["y"], consts))
    x = rng_for("gamma0").uniform(-1, 1, x_shape)
    g = reflrp.explain(model, {"x": x}, rules={"lin": ("gamma", {"gamma": 0.0, "stabilizer": 1e-3})})["x"]
    e = reflrp.explain(model, {"x": x}, rules={"lin": ("epsilon", {"epsilon": 1e-3})})["x"]
    assert rel_err(g, e) <= 1e-14


@pytest.mark.parametrize("rule,op", [("norm", "AveragePool"), ("norm", "Add"), ("pass", "Relu")])
def test_norm_and_pass(rule, op):
    """Norm (Zennit's rule on average pooling and the residual Sum) is epsilon with the stabilizer:
    ``R_i = x_i * vjp_i(R / stab(y))``; Pass hands R on unchanged."""
    rng = rng_for(f"{rule}/{op}")
    if op == "AveragePool":
        nodes, inputs = [node(op, ["x"], ["y"], name="n", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=1)], {"x": (1, 2, 5, 5)}
    elif op == "Add":
        nodes, inputs = [node(op, ["x", "x2"], ["y"], name="n")], {"x": (2, 3), "x2": (2, 3)}
    else:
        nodes, inputs = [node(op, ["x"], ["y"], name="n")], {"x": (2, 3)}
    model = graph_model(nodes, inputs, ["y"])
    feeds = {k: rng.standard_normal(s) for k, s in inputs.items()}
    y = np.asarray(ReferenceEvaluator(model).run(None, feeds)[0])
    R = rng.standard_normal(y.shape)
    comp = reflrp.composite("t", [(("avgpool", "sum"), "norm", {"stabilizer": 0.1}), (("activation",), "pass")])
    att = reflrp.explain(reflrp.load(model), feeds, target=R, preset=comp, wrt=list(inputs))
    assert att.plan.rule_of("n") == rule
    if rule == "pass":
        assert rel_err(att["x"], R) == 0.0
        return
    for k in inputs:  # the probed Jacobian of y with respect to input k
        f0 = np.asarray(ReferenceEvaluator(model).run(None, {**feeds, k: np.zeros(inputs[k])})[0]).ravel()
        cols = [np.asarray(ReferenceEvaluator(model).run(None, {**feeds, k: np.eye(feeds[k].size)[i].reshape(
            inputs[k])})[0]).ravel() - f0 for i in range(feeds[k].size)]
        J = np.stack(cols, axis=1)
        want = feeds[k].ravel() * (J.T @ div(R.ravel(), stab(y.ravel(), 0.1)))
        assert rel_err(att[k], want.reshape(inputs[k])) <= 1e-12


# ------------------------------------------------------------------------------ plans and canonizers

def test_first_layer_is_resolved_from_the_graph():
    """Zennit's first-layer map: the first node of the listed types in execution order; EpsilonGammaBox
    lists convolutions only, so an MLP gets no ZBox at all."""
    vgg = reflrp.load(ZENNIT / "vgg.onnx")
    plan = vgg.plan("epsilon-plus-flat")
    convs = [p.node.name for p in plan.nodes if p.node.op_type == "Conv"]
    assert plan.first_layer == convs[0] and plan.rule_of(convs[0]) == "flat"
    assert {plan.rule_of(c) for c in convs[1:]} == {"zplus"} and f"first layer {convs[0]!r}" in plan.table()
    mlp = reflrp.load(ZENNIT / "mlp.onnx")
    gemms = [n.name for n in mlp.graph.nodes if n.op_type == "Gemm"]
    assert mlp.plan("epsilon-plus-flat").first_layer == gemms[0]
    with pytest.warns(reflrp.ReflrpWarning, match="reaches no node"):
        box = mlp.plan("epsilon-gamma-box", options={"low": -3.0, "high": 3.0})
    assert box.first_layer is None and {box.rule_of(g) for g in gemms} == {"epsilon"}


def test_unfolded_batchnorm_gets_pass_and_a_hint():
    plan = reflrp.load(ZENNIT / "cnn_bn.onnx").plan("epsilon-plus")
    bns = [p for p in plan.nodes if p.node.op_type == "BatchNormalization"]
    assert bns and all(p.rule == "pass" and "fold_batchnorm=True" in p.why for p in bns)


@pytest.mark.parametrize("file", ["cnn_bn.onnx", "resnet.onnx", "cnn_bn_dynamo.onnx", "../cnn.onnx"])
def test_fold_batchnorm_keeps_the_function(file):
    """Folding changes no output (float64 and float32), removes every BatchNormalization that follows a
    layer, and keeps the layers' names (overrides by name still apply). In float64 the fold adds epsilon
    as the decimal 1e-5 the float32 attribute stands for (as torch's float64 model and Zennit do), the
    BatchNormalization node the float32 value: 1e-10 apart."""
    plain, folded = reflrp.load(ZENNIT / file), reflrp.load(ZENNIT / file, fold_batchnorm=True)
    x = rng_for(file).standard_normal((2,) + tuple(plain.graph.inputs[0].shape[1:])).astype(np.float32)
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        out = plain.output_names[0]
        a, b = plain.run({"x": x}, dtype=dtype)[out], folded.run({"x": x}, dtype=dtype)[out]
        assert rel_err(b, a) <= tol and b.dtype == a.dtype
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.nodes}
    assert {n.name for n in plain.graph.nodes if n.op_type == "Conv"} <= {n.name for n in folded.graph.nodes}
    assert any(e.original.op_type == "BatchNormalization" for e in folded.graph.expansions.values())


def _bn_model(layer: str):
    """layer -> BatchNormalization (-> a second BN after a Relu, which is not foldable)."""
    rng = rng_for(layer)
    c = 3
    bn = {f"{k}{i}": v for i in (1, 2) for k, v in (("s", rng.standard_normal(c)), ("t", rng.standard_normal(c)),
                                                      ("m", rng.standard_normal(c)), ("v", rng.uniform(0.5, 2, c)))}
    if layer == "gemm":
        first, x_shape = node("Gemm", ["x", "W"], ["h"], name="lin", transB=1), (2, 4)
        w = {"W": rng.standard_normal((c, 4))}
    else:
        first, x_shape, w = node("ConvTranspose", ["x", "W", "B"], ["h"], name="lin", strides=[2, 2]), (1, 2, 3, 3), \
            {"W": rng.standard_normal((2, c, 2, 2)), "B": rng.standard_normal(c)}
    nodes = [first, node("BatchNormalization", ["h", "s1", "t1", "m1", "v1"], ["b1"], name="bn1", epsilon=1e-3),
             node("Relu", ["b1"], ["r"]), node("BatchNormalization", ["r", "s2", "t2", "m2", "v2"], ["y"], name="bn2")]
    return graph_model(nodes, {"x": x_shape}, ["y"], {**w, **bn}), x_shape


@pytest.mark.parametrize("layer", ["gemm", "convtranspose"])
def test_fold_batchnorm_into_gemm_and_convtranspose(layer):
    model, x_shape = _bn_model(layer)
    x = rng_for(layer + "x").standard_normal(x_shape)
    want = np.asarray(ReferenceEvaluator(model).run(None, {"x": x})[0])
    folded = reflrp.load(model, fold_batchnorm=True)
    assert rel_err(folded.run({"x": x})["y"], want) <= 1e-10  # epsilon 1e-3 as a decimal, not float32(1e-3)
    assert [n.name for n in folded.graph.nodes if n.op_type == "BatchNormalization"] == ["bn2"]  # after a Relu


def test_books_close_for_every_rule_on_a_cnn():
    """Every rule on every layer of a CNN with BatchNorm (folded): each node's account closes, and the
    totals: target = inputs + absorbed + loss."""
    m = reflrp.load(ZENNIT / "cnn_bn.onnx", fold_batchnorm=True)
    x = golden("cnn_bn.zennit.npz")[0]["input:x"]
    for rule, params in RULE_RUNS:
        p = {**params, "low": -3.0} if params.get("low") == "per-feature" else params
        comp = reflrp.composite("t", [(("conv", "dense"), rule, p), (("avgpool", "sum"), "norm")])
        c = reflrp.explain(m, {"x": x}, preset=comp).conservation
        assert c.ok and abs(c.target - c.at_wrt - c.absorbed - c.loss) <= 1e-12 * abs(c.target), (rule, c.text())


def test_targets_and_float32():
    """K targets in one pass equal K calls; a float32 pass closes its books in float32's tolerance."""
    m = reflrp.load(ZENNIT / "resnet.onnx", fold_batchnorm=True)
    x = golden("resnet.zennit.npz")[0]["input:x"]
    opts = {"low": -3.0, "high": 3.0}
    many = reflrp.explain(m, {"x": x}, targets=[0, 3], preset="epsilon-gamma-box", options=opts)
    for k, t in enumerate((0, 3)):
        one = reflrp.explain(m, {"x": x}, target=t, preset="epsilon-gamma-box", options=opts)
        assert rel_err(many["x"][k], one["x"]) <= 1e-12
    f32 = reflrp.explain(m, {"x": x}, dtype="float32", preset="epsilon-alpha2-beta1-flat")
    assert f32["x"].dtype == np.float32 and f32.conservation.ok


def test_transpose_of_an_initializer_has_a_default_wrt():
    """Regression: default_wrt read a second input of every data-movement node on an initializer."""
    model = graph_model([node("Transpose", ["W"], ["Wt"], perm=[1, 0]), node("MatMul", ["x", "Wt"], ["y"])],
                        {"x": (1, 3)}, ["y"], {"W": np.ones((2, 3))})
    assert rel_err(reflrp.explain(model, {"x": np.ones((1, 3))})["x"], np.ones((1, 3))) == 0.0


# --------------------------------------------------------------------------------- argument errors

def _mlp():
    return reflrp.load(ZENNIT / "mlp.onnx")


X_MLP = np.ones((2, 12), np.float32)


@pytest.mark.parametrize("kw,error,match", [
    (dict(options={"gama": 0.3}), ReflrpError, "unknown rule parameter 'gama'.*did you mean 'gamma'"),
    (dict(options={"gamma": -1.0}), ReflrpError, r"options\['gamma'\] = -1.0 must be a finite number >= 0"),
    (dict(options={"zero_bias": 1}), ReflrpError, "must be True or False"),
    (dict(options={"low": [0.0, np.nan]}), ReflrpError, "must be finite"),
    (dict(options={"conf.gamma": 0.3}), ReflrpError, "'conf' is no layer type.*did you mean 'conv'"),
    (dict(options=[("gamma", 1)]), ReflrpError, "options= must be a mapping"),
    (dict(options={"epsilon": 0.1}, epsilon=0.2), ReflrpError, "differ: give one"),
    (dict(rules={"Gemm": ("alpha-beta", {"alpha": 2.0, "beta": 0.5})}), RuleError, "alpha - beta = 1"),
    (dict(rules={"Gemm": ("gamma", {"alpha": 2.0})}), RuleError, "rule 'gamma' takes no parameter 'alpha'"),
    (dict(rules={"Gemm": ("gamma", 0.5)}), RuleError, r"must be a rule name or \(rule name"),
    (dict(rules={"Gemm": "zbox"}), RuleError, "rule 'zbox' needs 'low'"),
    (dict(rules={"Relu": "zplus"}), RuleError, "'zplus', a rule for weight layers"),
    (dict(rules={"Gemm": "gama"}), RuleError, "unknown rule 'gama'"),
    (dict(preset="epsilon-plu"), RuleError, "unknown preset.*did you mean 'epsilon-plus'"),
    (dict(rules={"Gemm": ("zbox", {"low": np.zeros(5), "high": 1.0})}), RuleError,
     r"node 'node_linear_2' \(Gemm\): zbox: low of shape \(5,\) does not broadcast to the layer input's shape "
     r"\(2, 16\)"),
])
def test_argument_errors(kw, error, match):
    with pytest.raises(error, match=match):
        reflrp.explain(_mlp(), {"x": X_MLP}, **kw)


def test_options_may_not_change_what_a_composite_fixes():
    vgg = reflrp.load(ZENNIT / "vgg.onnx")
    with pytest.raises(RuleError, match="options give alpha=1, but the preset fixes alpha=2"):
        vgg.plan("epsilon-alpha2-beta1", options={"alpha": 1.0, "beta": 0.0})
    with pytest.raises(RuleError, match="no rule of preset 'epsilon-alpha2-beta1' takes 'gamma'"):
        vgg.plan("epsilon-alpha2-beta1", options={"gamma": 3.0})  # it would be ignored


def test_composite_and_load_errors():
    with pytest.raises(RuleError, match="unknown layer type 'convolution'"):
        reflrp.composite("c", [("convolution", "zplus")])
    with pytest.raises(RuleError, match="unknown rule 'z-plus'"):
        reflrp.composite("c", [("conv", "z-plus")])
    with pytest.raises(RuleError, match="takes no parameter 'gamma'"):
        reflrp.composite("c", [("conv", "zplus", {"gamma": 1.0})])
    with pytest.raises(RuleError, match="unknown preset 'attnlrpp'"):
        reflrp.composite("c", [("conv", "zplus")], base="attnlrpp")
    with pytest.raises(ReflrpError, match="fold_batchnorm must be True or False"):
        reflrp.load(ZENNIT / "mlp.onnx", fold_batchnorm="yes")
    smooth = reflrp.load(ZENNIT / "mlp_smooth.onnx")
    with pytest.raises(RuleError, match="ends an elementwise region"):
        smooth.plan(reflrp.composite("c", [("activation", "gradient")]))
