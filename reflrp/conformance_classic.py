"""The classic half of the LRP conformance suite (reflrp.conformance): Zennit 1.0.0's rules and composites.

Node cases: every rule for weight layers (z+, alpha-beta, gamma, flat, w^2, z^B) on every weight op it
applies to (Conv 1-D / 2-D, ConvTranspose, Gemm, MatMul, MatMul + its bias Add, a layer followed by a
BatchNormalization folded into it), with non-default parameters and ``zero_bias``; Norm on pooling and
on sums of dynamic tensors; Pass on activations and an unfolded BatchNormalization. The expected
relevance is the dense float64 oracle of :mod:`reflrp.oracle` on the layer's Jacobian, probed through
``onnx.reference`` (so a folded BatchNormalization is part of the probed map).

Model cases: the fixtures of models/zennit/ under every Zennit composite of their goldens (reflrp's
relevance, checked against Zennit 1.0.0's committed goldens to :data:`ZENNIT_TOLERANCE`), and LXT's
vision-transformer recipe ``cp-lrp-gamma`` on the zoo's ViT (checked against models/vit.gamma.npz).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .conformance import Case, ConformanceError, selected
from .onnx_build import graph_model, node, rand, rng_for
from .oracle import Forward, oracle_epsilon, oracle_layer_rule, oracle_sum, probe_jacobian

STABILIZER = 1e-6  # Zennit's default


def const(shape, seed: int, positive: bool = False) -> np.ndarray:
    return rand(np.random.default_rng(seed), shape, positive)


def _bn(c: int, seed: int) -> dict:
    """BatchNormalization constants (scale with a negative entry, shift, running mean and variance)."""
    return {"s": const((c,), seed), "t": const((c,), seed + 1), "m": const((c,), seed + 2),
            "v": const((c,), seed + 3, positive=True)}


# (layer, x shape, nodes (the rule's node is "lin"; a bias Add or a BatchNormalization follows it), constants,
#  has a bias, per-channel bound shape, BatchNormalization folded, runs)
FULL, DEFAULT, FOLDED = "full", "default", "folded"
LAYERS = [
    ("conv2d-bias", (1, 4, 5, 5), [node("Conv", ["x", "W", "B"], ["y"], name="lin", pads=[1, 1, 1, 1], strides=[2, 1],
                                        group=2)], {"W": const((4, 2, 3, 2), 101), "B": const((4,), 102)}, True,
     (1, 4, 1, 1), FULL),
    ("convtranspose-bias", (1, 2, 3, 3), [node("ConvTranspose", ["x", "W", "B"], ["y"], name="lin", strides=[2, 2],
                                               pads=[1, 1, 1, 1], output_padding=[1, 1])],
     {"W": const((2, 3, 3, 3), 103), "B": const((3,), 104)}, True, (1, 2, 1, 1), FULL),
    ("gemm-alpha-beta", (3, 5), [node("Gemm", ["x", "W", "B"], ["y"], name="lin", alpha=0.5, beta=2.0)],
     {"W": const((5, 4), 105), "B": const((1, 4), 106)}, True, (1, 5), FULL),
    ("matmul-add-bias", (2, 3, 5), [node("MatMul", ["x", "W"], ["h"], name="mm"), node("Add", ["h", "B"], ["y"],
                                                                                       name="lin")],
     {"W": const((5, 4), 107), "B": const((4,), 108)}, True, (1, 1, 5), FULL),
    ("conv2d-no-bias-dilated", (2, 2, 6, 5), [node("Conv", ["x", "W"], ["y"], name="lin", dilations=[2, 1],
                                                   pads=[1, 1, 1, 1])], {"W": const((3, 2, 2, 3), 109)}, False,
     (1, 2, 1, 1), DEFAULT),
    ("conv1d-bias", (2, 3, 7), [node("Conv", ["x", "W", "B"], ["y"], name="lin", strides=[2])],
     {"W": const((4, 3, 3), 110), "B": const((4,), 111)}, True, (1, 3, 1), DEFAULT),
    # (not grouped: onnx 1.23's reference ConvTranspose fails on group > 1)
    ("convtranspose-dilated", (1, 3, 3, 3), [node("ConvTranspose", ["x", "W"], ["y"], name="lin", dilations=[2, 1],
                                                  strides=[1, 2])],
     {"W": const((3, 2, 2, 2), 112)}, False, (1, 3, 1, 1), DEFAULT),
    ("gemm-bias-transB", (3, 5), [node("Gemm", ["x", "W", "B"], ["y"], name="lin", transB=1)],
     {"W": const((4, 5), 113), "B": const((4,), 114)}, True, (1, 5), DEFAULT),
    ("gemm-no-bias", (3, 5), [node("Gemm", ["x", "W"], ["y"], name="lin")], {"W": const((5, 4), 115)}, False, (1, 5),
     DEFAULT),
    ("matmul-3d", (2, 3, 5), [node("MatMul", ["x", "W"], ["y"], name="lin")], {"W": const((5, 4), 116)}, False,
     (1, 1, 5), DEFAULT),
    ("matmul-weight-first", (2, 4, 3), [node("MatMul", ["W", "x"], ["y"], name="lin")], {"W": const((5, 4), 117)},
     False, (1, 4, 1), DEFAULT),
    ("gemm-beta-bias-add", (3, 5), [node("Gemm", ["x", "W"], ["h"], name="mm", alpha=2.0, beta=0.5),
                                    node("Add", ["B", "h"], ["y"], name="lin")],
     {"W": const((5, 4), 118), "B": const((1, 4), 119)}, True, (1, 5), DEFAULT),
    ("conv2d-batchnorm", (1, 3, 5, 5), [node("Conv", ["x", "W"], ["h"], name="lin", pads=[1, 1, 1, 1]),
                                        node("BatchNormalization", ["h", "s", "t", "m", "v"], ["y"], name="bn",
                                             epsilon=1e-3)],
     {"W": const((4, 3, 3, 3), 120), **_bn(4, 121)}, True, (1, 3, 1, 1), FOLDED),
    ("gemm-batchnorm", (3, 5), [node("Gemm", ["x", "W", "B"], ["h"], name="lin"),
                                node("BatchNormalization", ["h", "s", "t", "m", "v"], ["y"], name="bn")],
     {"W": const((5, 4), 125), "B": const((4,), 126), **_bn(4, 127)}, True, (1, 5), FOLDED),
    ("convtranspose-batchnorm", (1, 2, 3, 3), [node("ConvTranspose", ["x", "W", "B"], ["h"], name="lin",
                                                    strides=[2, 2]),
                                               node("BatchNormalization", ["h", "s", "t", "m", "v"], ["y"], name="bn")],
     {"W": const((2, 3, 2, 2), 131), "B": const((3,), 132), **_bn(3, 133)}, True, (1, 2, 1, 1), FOLDED),
]

# (rule, parameters besides the defaults); "channel" bounds are one per input channel / feature
BOUNDS = {"low": -2.5, "high": 2.0}
RUNS = {
    DEFAULT: [("zplus", {}), ("alpha-beta", {}), ("gamma", {}), ("flat", {}), ("wsquare", {}), ("zbox", BOUNDS)],
    FULL: [("zplus", {}), ("zplus", {"zero_bias": True}), ("alpha-beta", {}),
           ("alpha-beta", {"alpha": 3.0, "beta": 2.0, "zero_bias": True}), ("gamma", {}),
           ("gamma", {"gamma": 1.0, "zero_bias": True}), ("gamma", {"gamma": 100.0, "stabilizer": 0.01}), ("flat", {}),
           ("flat", {"stabilizer": 0.1}), ("wsquare", {}), ("wsquare", {"zero_bias": True, "stabilizer": 1e-3}),
           ("zbox", BOUNDS), ("zbox", {"low": "channel", "high": 3.0, "zero_bias": True})],
}
RUNS[FOLDED] = RUNS[DEFAULT] + [("gamma", {"gamma": 1.0, "zero_bias": True})]
DEFAULTS = {  # Zennit 1.0.0's defaults, written into every case's rule spec
    "zplus": {"stabilizer": STABILIZER, "zero_bias": False},
    "alpha-beta": {"alpha": 2.0, "beta": 1.0, "stabilizer": STABILIZER, "zero_bias": False},
    "gamma": {"gamma": 0.25, "stabilizer": STABILIZER, "zero_bias": False},
    "flat": {"stabilizer": STABILIZER},
    "wsquare": {"stabilizer": STABILIZER, "zero_bias": False},
    "zbox": {"stabilizer": STABILIZER, "zero_bias": False},
    "norm": {"stabilizer": STABILIZER},
    "pass": {},
}


def label(changed: dict) -> str:
    """A variant's name from the parameters it sets: ``default``, ``alpha3.beta2.zero_bias``, ``low-2.5.high2``."""
    parts = []
    for k, v in changed.items():
        if k == "zero_bias":
            parts.append("zero_bias")
        elif isinstance(v, str):
            parts.append(f"{v}-bounds" if k == "low" else f"{k}-{v}")
        else:
            parts.append(f"{k}{v:g}")
    return ".".join(parts) or "default"


def channel_bound(shape, low: bool) -> np.ndarray:
    """One bound per input channel / feature, float32-exact, below -2 (low) or above 2 (high)."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    return ((-2.25 - 0.25 * (i % 3)) if low else (2.25 + 0.25 * (i % 4))).reshape(shape)


def rule_spec(rule: str, changed: dict, bound_shape) -> dict:
    """The full rule spec of a case (every parameter, defaults included; bounds as nested lists)."""
    spec = {"name": rule, **DEFAULTS[rule], **changed}
    for k in ("low", "high"):
        if spec.get(k) == "channel":
            spec[k] = channel_bound(bound_shape, k == "low").tolist()
    return spec


def _reflrp(node_name: str, spec: dict, fold: bool = False) -> dict:
    """How reflrp reproduces a node case: the rule with its parameters by ``rules=`` on the node."""
    params = {k: v for k, v in spec.items() if k != "name"}
    return {"preset": "epsilon", "epsilon": None, "rules": {node_name: [spec["name"], params]},
            **({"fold_batchnorm": True} if fold else {})}


def _case(name, spec, model, feeds, R, expected, reflrp, notes="", canonizers=()) -> Case:
    return Case(name, spec, model, feeds, R, expected, reflrp, {}, notes=notes,
                extra={"canonizers": list(canonizers)} if canonizers else {})


def layer_cases():
    """Every rule for weight layers on every layer of :data:`LAYERS`, expected from the dense oracle."""
    for lid, shape, nodes, consts, has_bias, bound_shape, runs in LAYERS:
        model = graph_model(nodes, {"x": shape}, ["y"], consts)
        rng = rng_for(f"classic/{lid}")
        x = rng.uniform(-2.0, 2.0, shape)
        fwd = Forward(model)
        y = fwd({"x": x})
        J, f0 = probe_jacobian(fwd, {"x": x}, "x")
        fold = runs == FOLDED
        ops = " + ".join(n.op_type for n in nodes)
        for rule, changed in RUNS[runs]:
            spec = rule_spec(rule, changed, bound_shape)
            p = dict(spec)
            for k in ("low", "high"):
                if k in p:
                    p[k] = np.broadcast_to(np.asarray(p[k], dtype=np.float64), shape).ravel()
            R = rng_for(f"classic/{lid}/{rule}/{label(changed)}").standard_normal(y.shape)
            want = oracle_layer_rule(rule, p, J, x.ravel(), f0.ravel(), R.ravel()).reshape(shape)
            notes = f"{ops}: " + ("the BatchNormalization folded into the layer (Zennit's MergeBatchNorm); "
                                  if fold else "") + "oracle: the layer's Jacobian probed through onnx.reference"
            yield _case(f"{rule}/{lid}/{label(changed)}", spec, model, {"x": x}, R, {"x": want},
                        _reflrp("lin", spec, fold), notes, ["merge-batchnorm"] if fold else ())


NORMS = [  # (case, nodes, dynamic inputs)
    ("averagepool", [node("AveragePool", ["x"], ["y"], name="n", kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1], count_include_pad=1)], {"x": (1, 2, 5, 5)}),
    ("globalaveragepool", [node("GlobalAveragePool", ["x"], ["y"], name="n")], {"x": (2, 3, 3, 2)}),
    ("reducemean-spatial", [node("ReduceMean", ["x", "axes"], ["y"], name="n", keepdims=0)], {"x": (2, 3, 2, 3)}),
    ("add-residual", [node("Add", ["x", "x2"], ["y"], name="n")], {"x": (2, 3, 2, 2), "x2": (2, 3, 2, 2)}),
    ("sum-three", [node("Sum", ["x", "x2", "x3"], ["y"], name="n")], {"x": (2, 3), "x2": (2, 3), "x3": (2, 3)}),
]


def norm_cases():
    """Zennit's Norm (average pooling, the residual Sum of its ResNet canonizer): epsilon with the stabilizer,
    ``R_i = x_i * vjp_i(R / stab(y))``."""
    for cid, nodes, dyn in NORMS:
        model = graph_model(nodes, dyn, ["y"], {"axes": np.array([2, 3])} if cid.startswith("reduce") else {})
        rng = rng_for(f"norm/{cid}")
        feeds = {k: rng.standard_normal(s) for k, s in dyn.items()}
        fwd = Forward(model)
        y = fwd(feeds)
        R = rng.standard_normal(y.shape)
        for s in (STABILIZER, 0.1):
            spec = {"name": "norm", "stabilizer": s}
            if len(dyn) == 1:
                J, _ = probe_jacobian(fwd, feeds, "x")
                want = {"x": oracle_epsilon(J, feeds["x"], y, R, s)[0]}
            else:
                want = oracle_sum(nodes[0].op_type, list(dyn), feeds, R, s)[0]
            yield _case(f"norm/{cid}/{label({} if s == STABILIZER else {'stabilizer': s})}", spec, model, feeds, R,
                        want, _reflrp("n", spec))


def pass_cases():
    """Zennit's Pass (activations, an unfolded BatchNormalization): ``R_x = R_y``, also where the activation's
    output (or gradient) is 0."""
    bn = _bn(3, 140)
    for cid, nodes, consts, opset in (
            ("relu", [node("Relu", ["x"], ["y"], name="n")], {}, 18),
            ("tanh", [node("Tanh", ["x"], ["y"], name="n")], {}, 18),
            ("gelu", [node("Gelu", ["x"], ["y"], name="n")], {}, 20),
            ("batchnorm", [node("BatchNormalization", ["x", "s", "t", "m", "v"], ["y"], name="n")], bn, 18)):
        model = graph_model(nodes, {"x": (2, 3, 4)}, ["y"], consts, opset=opset)
        rng = rng_for(f"pass/{cid}")
        x, R = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
        yield _case(f"pass/{cid}", {"name": "pass"}, model, {"x": x}, R, {"x": R}, _reflrp("n", {"name": "pass"}),
                    "relevance arrives where ReLU's output is 0 too" if cid == "relu" else "")


CLASSIC_FAMILIES = (layer_cases, norm_cases, pass_cases)
