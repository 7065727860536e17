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


# ---------------------------------------------------------------------------------------------- models

ZENNIT_TOLERANCE = 1e-8  # reflrp against Zennit 1.0.0's goldens (docs/zennit-conventions.md; measured <= 1e-12)
LXT_TOLERANCE = 1e-6  # reflrp against LXT 2.1's ViT recipe (LXT's own 1e-10 stabilisers: 1.4e-8 measured)
# float32 constants of an exported graph where torch's float64 model computes exact values (GELU's sqrt(2), the
# attention scale): the cases run the graph in float64 with these exact, as the goldens were made
EXACT_CONSTANTS = {"mlp_smooth": {"val_0": np.sqrt(2.0)}, "vit": {"val_37": 1 / np.sqrt(8.0), "val_50": np.sqrt(2.0)}}
CANONIZERS = {"zennit.canonizers.SequentialMergeBatchNorm": ["merge-batchnorm"],
              "zennit.torchvision.ResNetCanonizer": ["merge-batchnorm", "residual-sum"]}


def exact_float64(path: Path, exact: dict):
    """The model with every float tensor float64 and the named constants exact (each must round to the
    float32 the file holds)."""
    import onnx
    from onnx import TensorProto, numpy_helper
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name in exact:
            if np.float32(exact[t.name]) != a:
                raise ConformanceError(f"{path.name}: constant {t.name} is {a}, not float32({exact[t.name]})")
            a = np.asarray(exact[t.name])
        if a.dtype.kind == "f":
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def _npz(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _options(kwargs: dict, arrays: dict) -> dict:
    """A Zennit composite's kwargs as reflrp options (zero_params=['bias'] is zero_bias; array kwargs as lists)."""
    out = {}
    for k, v in kwargs.items():
        if k == "zero_params":
            if list(v) != ["bias"]:
                raise ConformanceError(f"zero_params={v!r}: only ['bias'] has a reflrp option")
            out["zero_bias"] = True
        else:
            out[k] = arrays[v["array"]].tolist() if isinstance(v, dict) else v
    return out


def _variant(spec_name: str) -> str:
    """``epsilon-gamma-box.epsilon=0.25,gamma=1`` -> ``epsilon0.25.gamma1``; ``zero_params=bias`` -> ``zero_bias``."""
    rest = spec_name.partition(".")[2]
    return rest.replace("zero_params=bias", "zero_bias").replace("=", "").replace(",", ".")


def _explained(model, feeds, target, preset, options, seed_value):
    """reflrp's attribution seeded with the target logit (``target``: class indices) or with 1 there, and
    the seed's value per row (to scale a golden made with the logit's seed)."""
    import warnings

    from .explain import explain
    with warnings.catch_warnings():  # Zennit's box composite takes its bounds on a model without a conv too
        warnings.filterwarnings("ignore", "options.*reaches no node")
        att = explain(model, feeds, target=target, preset=preset, options=options or None, dtype="float64")
        seed = np.asarray(att.seed, dtype=np.float64)
        per_row = seed.reshape(seed.shape[0], -1).sum(1)
        if seed_value == "one":
            att = explain(model, feeds, target=(seed != 0).astype(np.float64), preset=preset, options=options or None,
                          dtype="float64")
            return att, per_row
    return att, np.ones_like(per_row)


def _model_case(name, preset, model, source, feeds, target, options, canonizers, want, seed_value, check,
                extra) -> Case:
    """One model case: reflrp explains ``feeds`` on ``model`` (loaded from ``source``); ``want``, the
    golden (seeded with the target logit), checks it within ``check`` = (tolerance, key of case.json)."""
    from .testing import rel_err
    att, per_row = _explained(model, feeds, target, preset, options, seed_value)
    expected = {w: np.asarray(att.relevance[w], dtype=np.float64) for w in att.wrt}
    tol, key = check
    err = max(rel_err(expected[w], want[w] / per_row.reshape((-1,) + (1,) * (want[w].ndim - 1))) for w in want)
    if err > tol:
        raise ConformanceError(f"{name}: reflrp differs from the golden by {err:.3e} > {tol:g}")
    spec = {"name": f"model:{preset}", "preset": preset, "options": options}
    case = Case(name, spec, source, dict(feeds), np.asarray(att.seed, dtype=np.float64), expected,
                {"preset": preset, "epsilon": None, "options": options,
                 **({"fold_batchnorm": True} if "merge-batchnorm" in canonizers else {})},
                {"seed": seed_value}, kind="model", source="reflrp",
                formula=f"the {preset} composite's rules (docs/rules.md) on every node of the model",
                extra={"output": att.output, "target": np.asarray(att.target).tolist(), "canonizers": list(canonizers),
                       key: {"max_rel_err": float(f"{err:.3g}")}, **extra})
    case.att = att
    return case


SEED_ONE_FIXTURES = ("mlp", "cnn_bn", "vgg", "resnet", "zoo_cnn")


def _variants_of(fx: str, info: dict, spec_name: str) -> list:
    """(seed, name tail) of a fixture's composite spec: every composite with the target logit's seed (the
    goldens'); the plain composites (no parameters changed) with 1 on a few fixtures; a fixture that only
    re-exports another one's model (it shares that golden) gets the plain composites only."""
    plain = "." not in spec_name
    if info["golden"] != f"{fx}.zennit.npz" and not plain:
        return []
    return [("logit", "")] + ([("one", "/seed-one")] if plain and fx in SEED_ONE_FIXTURES else [])


def zennit_model_cases(models_dir, only=None):
    """The fixtures of ``models_dir``/zennit under the Zennit composites of their goldens (not the diagnostics;
    :func:`_variants_of`), checked against the goldens (seeded with the target logit's value)."""
    from .model import load
    root = Path(models_dir) / "zennit"
    if not (root / "MANIFEST.json").exists():
        return
    for fx, info in json.loads((root / "MANIFEST.json").read_text())["fixtures"].items():
        arrays, models = None, {}
        path = (root / info["file"]).resolve()
        stem = path.stem
        for spec in _composite_specs(root / info["golden"]):
            variant = _variant(spec["name"])
            preset = spec["name"].partition(".")[0]
            for seed_value, tail in _variants_of(fx, info, spec["name"]):
                name = f"model/{preset}/{fx}" + (f"/{variant}" if variant else "") + tail
                if not selected(name, only):
                    continue
                arrays = arrays or _npz(root / info["golden"])
                source = exact_float64(path, EXACT_CONSTANTS[stem]) if stem in EXACT_CONSTANTS else path
                canonizers = [c for z in spec["canonizers"] for c in CANONIZERS[z]]
                fold = "merge-batchnorm" in canonizers
                if fold not in models:
                    models[fold] = load(source, fold_batchnorm=fold)
                yield _model_case(name, preset, models[fold], source, {"x": arrays["input:x"]}, arrays["target"],
                                  _options(spec["kwargs"], arrays), canonizers,
                                  {"x": arrays[f"{spec['name']}:relevance"]}, seed_value,
                                  (ZENNIT_TOLERANCE, "zennit_check"),
                                  {"fixture": fx, "golden": info["golden"], "zennit_spec": spec["name"],
                                   "model_file": f"zennit.{stem}" + (".float64" if stem in EXACT_CONSTANTS else "")
                                   + ".onnx"})


def _composite_specs(golden: Path) -> list:
    with np.load(golden) as z:
        specs = json.loads(bytes(z["meta"]))["specs"]
    return [s for s in specs if s["kind"] == "composite" and not s["diagnostic"]]


def vit_gamma_cases(models_dir, only=None):
    """LXT's vision-transformer recipe (``cp-lrp-gamma``: Gamma on the patch conv and every dense layer, CP-LRP
    attention) on the zoo's ViT, every setting of models/vit.gamma.npz (LXT 2.1 + Zennit 1.0.0); checked
    against LXT's relevance and, where the golden has it, LXT's without its 1e-10 stabilisers."""
    path = Path(models_dir) / "vit.gamma.npz"
    if not path.exists():
        return
    from .model import load
    g = model = source = None
    for setting in _vit_settings(path):
        gc, gl, st = setting["conv_gamma"], setting["linear_gamma"], setting["stabilizer"]
        name = f"model/cp-lrp-gamma/vit/conv{gc:g}.dense{gl:g}" + ("" if st == STABILIZER else f".stabilizer{st:g}")
        if not selected(name, only):
            continue
        g = g or _npz(path)
        key = setting["name"]
        if model is None:
            source = exact_float64(Path(models_dir) / "vit.onnx", EXACT_CONSTANTS["vit"])
            model = load(source)
        exact = f"{key}:relevance_exact" in g
        which = "relevance_exact" if exact else "relevance"
        yield _model_case(name, "cp-lrp-gamma", model, source, {"pixel_values": g["inputs:pixel_values"]}, g["target"],
                          {"conv.gamma": gc, "dense.gamma": gl, "stabilizer": st}, [],
                          {"pixel_values": g[f"{key}:{which}"]}, "logit",
                          (ZENNIT_TOLERANCE if exact else LXT_TOLERANCE, "lxt_check"),
                          {"zoo": "vit", "golden": path.name, "lxt_setting": key,
                           "lxt_golden": which + (" (LXT without its 1e-10 stabilisers)" if exact else ""),
                           "model_file": "vit.float64.onnx"})


def _vit_settings(path: Path) -> list:
    with np.load(path) as z:
        return json.loads(bytes(z["meta"]))["settings"]


def classic_model_cases(models_dir, only=None):
    yield from zennit_model_cases(models_dir, only)
    yield from vit_gamma_cases(models_dir, only)
