"""The cases of the LRP conformance suite (reflrp.conformance): one family per rule the presets use.

Each node case is a one- or few-node float64 ONNX model with seeded data, its upstream relevance and the
expected relevance of every input from the dense oracles of :mod:`reflrp.oracle` (numpy only), under
the conventions it names. Where conventions matter a case has variants (``.../eps0.1.stabilizer-plus``).
Model-level cases are reflrp's relevance on the committed zoo (models/), checked against LXT 2.1's
goldens (<name>.lxt.npz) when they are generated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .conformance import CONVENTIONS, CROSS_CHECK, REFLRP_CONVENTIONS, Case, ConformanceError, reflrp_call, selected
from .conformance_classic import CLASSIC_FAMILIES, classic_model_cases
from .onnx_build import (LN_EPS, REGIONS, graph_model, ints, layernorm_decomposed, node, one_node_model, rand,
                         rmsnorm_decomposed, rng_for, scalar)
from .oracle import (Forward, attention_forward, oracle_attention, oracle_epsilon, oracle_layernorm, oracle_maxpool,
                     oracle_softmax, oracle_softmax_masked, oracle_sum, oracle_winner, probe_jacobian,
                     rotary_forward_and_oracle, safe_div, softmax, stab, unbroadcast)

EPS = 0.1  # the stabiliser of the variants where the stabiliser convention matters (large enough to tell)
FINFO_MIN = float(np.finfo(np.float32).min)  # HF's additive mask value


def const(shape, seed: int, positive: bool = False) -> np.ndarray:
    """A fixed random constant."""
    return rand(np.random.default_rng(seed), shape, positive)


def label(eps: float, conventions: dict) -> str:
    """A variant's name: ``eps0``, ``eps0.1.stabilizer-sign.bias-zeroed``."""
    return f"eps{eps:g}" + "".join(f".{k}-{v}" for k, v in sorted(conventions.items()))


def variants(bias: bool = False, eps_values=(0.0, EPS)) -> list:
    """(label, epsilon, conventions) of a rule with a stabiliser: eps 0 is convention-free; eps > 0 comes with
    each stabiliser; a case with a bias comes with it absorbed and zeroed."""
    out = []
    for eps in eps_values:
        for s in ([None] if eps == 0 else list(CONVENTIONS["stabilizer"])):
            for b in (list(CONVENTIONS["bias"]) if bias else [None]):
                conv = {k: v for k, v in (("stabilizer", s), ("bias", b)) if v}
                out.append((label(eps, conv), eps, conv))
    return out


def _stab_of(conv: dict) -> str:
    return conv.get("stabilizer", "sign")


def _zeroed(conv: dict) -> bool:
    return conv.get("bias") == "zeroed"


def _case(name, rule, model, inputs, R, expected, preset="attnlrp", eps=None, conv=None, **kw) -> Case:
    spec = {"name": rule, **({"epsilon": eps} if eps is not None else {})}
    return Case(name, spec, model, inputs, R, expected, {"preset": preset, "epsilon": eps}, dict(conv or {}), **kw)


# ---------------------------------------------------------------------------------------------- epsilon

LINEAR = [  # (case, op, input order, x shape, constants, attributes)
    ("matmul", "MatMul", ["x", "W"], (2, 3, 4), {"W": const((4, 5), 1)}, {}),
    ("matmul-weight-first", "MatMul", ["W", "x"], (2, 4, 5), {"W": const((3, 4), 2)}, {}),
    ("gemm-bias", "Gemm", ["x", "B", "C"], (3, 4), {"B": const((4, 5), 7), "C": const((5,), 8)}, {}),
    ("gemm-no-bias", "Gemm", ["x", "B"], (2, 3), {"B": const((3, 4), 13)}, {}),
    ("gemm-trans-alpha-beta", "Gemm", ["x", "B", "C"], (4, 3), {"B": const((5, 4), 9), "C": const((3, 1), 10)},
     dict(transA=1, transB=1, alpha=0.5, beta=2.0)),
    ("conv2d-bias", "Conv", ["x", "W", "B"], (1, 2, 5, 5), {"W": const((3, 2, 3, 3), 14), "B": const((3,), 15)},
     dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ("conv2d-groups-no-bias", "Conv", ["x", "W"], (2, 4, 6, 5), {"W": const((4, 2, 2, 2), 16)},
     dict(group=2, dilations=[2, 1])),
    ("conv1d", "Conv", ["x", "W"], (2, 3, 9), {"W": const((2, 3, 3), 19)}, dict(strides=[2], dilations=[2])),
    ("einsum", "Einsum", ["x", "W"], (2, 3, 4), {"W": const((4, 5), 20)}, dict(equation="bij,jk->bik")),
    ("reducesum", "ReduceSum", ["x", "axes"], (2, 3, 4), {"axes": ints(1)}, dict(keepdims=1)),
    ("reducemean", "ReduceMean", ["x", "axes"], (2, 3, 4), {"axes": ints(-1)}, dict(keepdims=0)),
    ("averagepool", "AveragePool", ["x"], (1, 2, 5, 5), {},
     dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], count_include_pad=0)),
    ("globalaveragepool", "GlobalAveragePool", ["x"], (2, 3, 4, 3), {}, {}),
    ("batchnorm", "BatchNormalization", ["x", "s", "B", "m", "v"], (2, 3, 4),
     {"s": const((3,), 24), "B": const((3,), 25), "m": const((3,), 26), "v": const((3,), 27, positive=True)},
     dict(epsilon=1e-3)),
]



def _probed(model, cid: str, shape):
    """A one-input case's random input x (seeded by ``cid``), output y, upstream relevance R, and the
    probed Jacobian J with the output at zero input f0."""
    rng = rng_for(cid)
    x = rand(rng, shape)
    fwd = Forward(model)
    y = fwd({"x": x})
    R = rng.standard_normal(y.shape)
    J, f0 = probe_jacobian(fwd, {"x": x}, "x")
    return x, y, R, J, f0

def linear_cases():
    """LRP-epsilon on ops linear in their one dynamic input: ``R_x = x * J^T (R_y / stab(z))`` with the probed
    Jacobian; ``z = y`` (bias absorbed) or ``z = J x`` (bias zeroed)."""
    for cid, op, order, shape, consts, attrs in LINEAR:
        model = one_node_model(op, order, {"x": shape}, consts, name="lin", **attrs)
        x, y, R, J, f0 = _probed(model, f"epsilon/{cid}", shape)
        for lab, eps, conv in variants(bias=bool(np.any(f0))):
            want, _ = oracle_epsilon(J, x, y - f0 if _zeroed(conv) else y, R, eps, _stab_of(conv))
            yield _case(f"epsilon/{cid}/{lab}", "epsilon", model, {"x": x}, R, {"x": want}, eps=eps, conv=conv,
                        notes=f"{op} with constant operands {sorted(consts)}; oracle: the Jacobian probed through "
                              "onnx.reference")


SUMS = [  # (case, op, input order, dynamic inputs, constants)
    ("add-bias", "Add", ["x", "c"], {"x": (2, 3)}, {"c": const((3,), 30)}),
    ("add-residual-broadcast", "Add", ["x", "x2"], {"x": (2, 1, 3), "x2": (4, 1)}, {}),
    ("sub-broadcast", "Sub", ["x", "x2"], {"x": (2, 3), "x2": (1, 3)}, {}),
    ("sum-three-bias", "Sum", ["x", "c", "x2"], {"x": (2, 3), "x2": (1, 3)}, {"c": const((3,), 33)}),
]


def sum_cases():
    """LRP-epsilon over summands: ``R_i = (+/-) x_i * R_y / stab(z)``, summed over broadcast axes."""
    for cid, op, order, dyn, consts in SUMS:
        model = one_node_model(op, order, dyn, consts, name="sum")
        rng = rng_for(f"sum/{cid}")
        feeds = {n: rand(rng, s) for n, s in dyn.items()}
        y = Forward(model)(feeds)
        R = rng.standard_normal(y.shape)
        for lab, eps, conv in variants(bias=bool(consts)):
            want, _ = oracle_sum(op, order, {**feeds, **consts}, R, eps, _stab_of(conv),
                                 zeroed=tuple(consts) if _zeroed(conv) else ())
            yield _case(f"epsilon/{cid}/{lab}", "epsilon", model, feeds, R, {n: want[n] for n in dyn}, eps=eps,
                        conv=conv)
    yield from _matmul_add_bias()


def _matmul_add_bias():
    """The linear layer as exporters write it, ``MatMul(x, W)`` then ``Add(h, b)``: epsilon on each node."""
    rng = rng_for("epsilon/matmul-add-bias")
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    model = graph_model([node("MatMul", ["x", "W"], ["h"], name="mm"), node("Add", ["h", "b"], ["y"], name="bias")],
                        {"x": (2, 4)}, ["y"], {"W": W, "b": b})
    x = rng.standard_normal((2, 4))
    h = x @ W
    R = rng.standard_normal((2, 3))
    for lab, eps, conv in variants(bias=True):
        R_h = oracle_sum("Add", ["h", "b"], {"h": h, "b": b}, R, eps, _stab_of(conv),
                         zeroed=("b",) if _zeroed(conv) else ())[0]["h"]
        want = x * (safe_div(R_h, stab(h, eps, _stab_of(conv))) @ W.T)
        yield _case(f"epsilon/matmul-add-bias/{lab}", "epsilon", model, {"x": x}, R, {"x": want}, eps=eps,
                    conv=conv, notes="two nodes, each with the epsilon rule: R_h from the Add, R_x from the MatMul")


# ---------------------------------------------------------------------------------------------- products

BILINEAR = [  # (case, op, A shape, B shape, attributes)
    ("matmul", "MatMul", (2, 3, 4), (2, 4, 5), {}),
    ("matmul-broadcast", "MatMul", (2, 1, 3, 4), (3, 4, 2), {}),
    ("einsum-qk", "Einsum", (4, 3), (5, 3), {"equation": "qd,kd->qk"}),
]


def bilinear_cases():
    """AttnLRP's uniform rule on a product of two dynamic operands: ``G = R_y / (2 stab(y))``,
    ``R_A = A * J_A^T G`` (``J_A`` probed at fixed B), likewise for B."""
    for cid, op, a_shape, b_shape, attrs in BILINEAR:
        model = one_node_model(op, ["A", "B"], {"A": a_shape, "B": b_shape}, name="bil", **attrs)
        rng = rng_for(f"bilinear-uniform/{cid}")
        feeds = {"A": rand(rng, a_shape), "B": rand(rng, b_shape)}
        fwd = Forward(model)
        y = fwd(feeds)
        R = rng.standard_normal(y.shape)
        jac = {n: probe_jacobian(fwd, feeds, n)[0] for n in feeds}
        for lab, eps, conv in variants():
            G = safe_div(R, 2 * stab(y, eps, _stab_of(conv)))
            want = {n: feeds[n] * (jac[n].T @ G.ravel()).reshape(feeds[n].shape) for n in feeds}
            yield _case(f"bilinear-uniform/{cid}/{lab}", "bilinear-uniform", model, feeds, R, want, eps=eps,
                        conv=conv)
    yield from _softmax_av_cases()


def softmax_av(through: str | None = None):
    """``y = Softmax(S) @ V``, with a pass-through node between them for ``through="Identity"`` / ``"Reshape"``."""
    nodes = [node("Softmax", ["S"], ["P"], name="softmax", axis=-1)]
    a = "P"
    if through == "Identity":
        nodes.append(node("Identity", ["P"], ["P2"], name="through"))
        a = "P2"
    elif through == "Reshape":
        nodes.append(node("Reshape", ["P", "shape"], ["P2"], name="through"))
        a = "P2"
    nodes.append(node("MatMul", [a, "V"], ["y"], name="av"))
    return graph_model(nodes, {"S": (2, 3, 4), "V": (2, 4, 5)}, ["y"], {"shape": ints(2, 3, 4)})


def _softmax_av_cases():
    """Attention weights times values: attnlrp splits ``A @ V`` 1/2-1/2 and the softmax rule carries A's half
    into S; cp-lrp holds A constant: ``R_V = V * (A^T @ (R_y / stab(y)))``, S gets nothing."""
    rng = rng_for("softmax-av")
    S, V = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    A = softmax(S, -1)
    y = A @ V
    R = rng.standard_normal(y.shape)
    G = safe_div(R, 2 * y)
    want = {"S": oracle_softmax(S, A * (G @ np.swapaxes(V, -1, -2)), -1), "V": V * (np.swapaxes(A, -1, -2) @ G)}
    yield _case("bilinear-uniform/softmax-av/eps0", "bilinear-uniform", softmax_av(), {"S": S, "V": V}, R, want,
                eps=0.0, notes="the attention-values role under attnlrp: uniform rule, then the softmax rule")
    for through in (None, "Reshape"):
        cid = "softmax-av" if through is None else "softmax-reshape-av"
        for lab, eps, conv in variants() if through is None else variants(eps_values=(0.0,)):
            G = safe_div(R, stab(y, eps, _stab_of(conv)))
            want = {"S": np.zeros_like(S), "V": V * (np.swapaxes(A, -1, -2) @ G)}
            yield _case(f"bilinear-cp/{cid}/{lab}", "bilinear-cp", softmax_av(through), {"S": S, "V": V}, R, want,
                        preset="cp-lrp", eps=eps, conv=conv)


def _gate_model(act: str, swap: bool = False):
    """``act(a) * b`` (``act``: "sigmoid", "silu" as its region, or "none" for a plain product)."""
    nodes = []
    if act == "silu":
        nodes += [node("Sigmoid", ["a"], ["sg"]), node("Mul", ["a", "sg"], ["g"], name="silu")]
    elif act == "sigmoid":
        nodes.append(node("Sigmoid", ["a"], ["g"], name="act"))
    g = "a" if act == "none" else "g"
    nodes.append(node("Mul", ["b", g] if swap else [g, "b"], ["y"], name="gate"))
    return graph_model(nodes, {"a": (2, 3), "b": (2, 3)}, ["y"])


def gate_cases():
    """Gated products ``act(a) * b``: attnlrp's uniform rule (``R_a = R_b = R_y / 2``, through the identity
    on ``act``), cp-lrp's gate held constant (all of ``R_y`` to ``b``); a product of two plain factors."""
    rng = rng_for("gates")
    feeds = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal((2, 3))}
    R = rng.standard_normal((2, 3))
    for act in ("sigmoid", "silu"):
        for swap in (False, True):
            cid = f"{act}-gate" + ("-up-first" if swap else "")
            model = _gate_model(act, swap)
            yield _case(f"gate-uniform/{cid}", "gate-uniform", model, feeds, R, {"a": R / 2, "b": R / 2})
            yield _case(f"gate-up/{cid}", "gate-up", model, feeds, R, {"a": np.zeros_like(R), "b": R},
                        preset="cp-lrp")
    yield _case("gate-uniform/product", "gate-uniform", _gate_model("none"), feeds, R, {"a": R / 2, "b": R / 2},
                notes="the product role: two dynamic factors, neither an activation output")
    model = one_node_model("Mul", ["a", "b"], {"a": (2, 3), "b": (3,)}, name="gate")
    yield _case("gate-uniform/product-broadcast", "gate-uniform", model, {"a": feeds["a"], "b": feeds["b"][0]}, R,
                {"a": R / 2, "b": unbroadcast(R / 2, (3,))})


# ---------------------------------------------------------------------------------------------- softmax

def _masked_softmax_case(cid, shape, axis, mask, R, conv):
    rng = rng_for(f"softmax/{cid}")
    x = rand(rng, shape)
    model = graph_model([node("Add", ["x", "mask"], ["z"], name="mask"),
                         node("Softmax", ["z"], ["y"], name="softmax", axis=axis)], {"x": shape}, ["y"], {"mask": mask})
    z = x + mask
    R_z, _ = oracle_softmax_masked(z, R, axis, conv.get("masked_logits", "zero"), conv.get("masked_rows", "absorbed"))
    want = oracle_sum("Add", ["x", "mask"], {"x": x, "mask": mask}, R_z, 0.0)[0]["x"]
    name = f"softmax/{cid}" + ("/" + label(0.0, conv)[5:] if conv else "")
    return _case(name, "softmax", model, {"x": x}, R, {"x": want}, conv=conv,
                 notes="z = x + mask (a constant): the softmax rule on z, then epsilon (eps 0) on the Add")


def softmax_cases():
    """The AttnLRP softmax rule ``R_x = x * (R_y - s sum R_y)``; masks as constants added to the input (HF's
    finfo.min or -inf), with the relevance on masked probabilities 0 as in any network (``R_P = P * ...``)
    except in the cases that test the masking conventions."""
    rng = rng_for("softmax")
    for cid, shape, axis in (("last-axis", (2, 5), -1), ("axis1", (3, 4, 2), 1)):
        x, R = rand(rng, shape), rng.standard_normal(shape)
        model = one_node_model("Softmax", ["x"], {"x": shape}, name="softmax", axis=axis)
        yield _case(f"softmax/{cid}", "softmax", model, {"x": x}, R, {"x": oracle_softmax(x, R, axis)})
    mask = np.zeros((3, 5))
    mask[0, 1] = mask[1, 3] = mask[1, 4] = mask[2, 0] = -np.inf
    R = np.where(np.isinf(mask), 0.0, rng.standard_normal(mask.shape))
    yield _masked_softmax_case("neginf-mask", (3, 5), -1, mask, R, {})
    yield _masked_softmax_case("finite-mask", (3, 5), -1, np.where(np.isinf(mask), FINFO_MIN, 0.0), R, {})
    R_on = rng.standard_normal(mask.shape)
    for value in CONVENTIONS["masked_logits"]:
        yield _masked_softmax_case("finite-mask-relevance-on-masked", (3, 5), -1,
                                   np.where(np.isinf(mask), FINFO_MIN, 0.0), R_on, {"masked_logits": value})
    dead = np.zeros((3, 4))
    dead[1] = FINFO_MIN
    dead[0, 2] = FINFO_MIN
    R_dead = np.where(dead < 0, 0.0, rng.standard_normal(dead.shape))
    R_dead[1] = rng.standard_normal(4)  # a fully masked row is uniform: relevance may arrive there
    for value in CONVENTIONS["masked_rows"]:
        yield _masked_softmax_case("fully-masked-row", (3, 4), -1, dead, R_dead, {"masked_rows": value})


# ---------------------------------------------------------------------------------------------- identity

IDENTITY = [  # (case, op, constants / input order, opset, positive data, attributes)
    ("relu", "Relu", {}, 18, False, {}), ("tanh", "Tanh", {}, 18, False, {}), ("sigmoid", "Sigmoid", {}, 18, False, {}),
    ("erf", "Erf", {}, 18, False, {}), ("exp", "Exp", {}, 18, False, {}), ("gelu", "Gelu", {}, 20, False, {}),
    ("gelu-tanh", "Gelu", {}, 20, False, {"approximate": "tanh"}), ("softplus", "Softplus", {}, 18, False, {}),
    ("leakyrelu", "LeakyRelu", {}, 18, False, {"alpha": 0.1}), ("sqrt", "Sqrt", {}, 18, True, {}),
    ("neg", "Neg", {}, 18, False, {}), ("cast", "Cast", {}, 18, False, {"to": 11}),
    ("mul-const-broadcast", "Mul", {"c": const((2, 1), 51)}, 18, False, {}),
    ("div-const", "Div", {"c": const((3,), 53, positive=True)}, 18, False, {}),
    ("pow-3", "Pow", {"p": scalar(3.0)}, 18, False, {}),
]


def identity_cases():
    """AttnLRP's identity rule on elementwise functions of one dynamic input: ``R_x = R_y``."""
    for cid, op, consts, opset, positive, attrs in IDENTITY:
        model = one_node_model(op, ["x"] + list(consts), {"x": (2, 3)}, consts, opset=opset, name="act", **attrs)
        rng = rng_for(f"identity/{cid}")
        x, R = rand(rng, (2, 3), positive), rng.standard_normal((2, 3))
        R = np.where(Forward(model)({"x": x}) == 0, 0.0, R)  # no relevance on a zero activation, as in any network
        yield _case(f"identity/{cid}", "identity", model, {"x": x}, R, {"x": R})
    rng = rng_for("identity/norms")
    x, R = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    model = one_node_model("Softmax", ["x"], {"x": (2, 3, 4)}, name="softmax", axis=-1)
    yield _case("identity/softmax", "identity", model, {"x": x}, R, {"x": R}, preset="epsilon",
                notes="the epsilon preset gives the softmax the identity rule")
    model = one_node_model("RMSNormalization", ["x", "gamma"], {"x": (2, 3, 4)}, {"gamma": const((4,), 56)},
                           opset=23, name="rms", axis=-1, epsilon=1e-5)
    yield _case("identity/rmsnormalization", "identity", model, {"x": x}, R, {"x": R},
                notes="RMSNorm with its normalizer held constant (LXT's stop-gradient): the identity")


def region_cases():
    """Elementwise regions (SiLU, erf/tanh GELU, QuickGELU as exporters write them): ``R_h = R_y``."""
    for kind, build in REGIONS.items():
        body, consts = build("h")
        model = graph_model(body, {"h": (2, 3)}, ["y"], consts)
        rng = rng_for(f"region/{kind}")
        h, R = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
        yield _case(f"region/{kind}", "region", model, {"h": h}, R, {"h": R})


def normalizer_cases():
    """Decomposed norms: the normalizer (``rsqrt(mean(x^2))``, ``sqrt(var)``) held constant. RMSNorm's chain
    gives ``R_x = R_y``; LayerNorm's equals the layernorm rule at eps 0."""
    rng = rng_for("normalizer")
    gamma, x, R = rng.standard_normal(4), rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    for div in (True, False):
        model = graph_model(rmsnorm_decomposed(div), {"x": (2, 3, 4)}, ["y"],
                            {"two": scalar(2.0), "axes": ints(-1), "eps": scalar(LN_EPS), "gamma": gamma})
        yield _case(f"normalizer/rmsnorm-{'div' if div else 'reciprocal'}", "normalizer", model, {"x": x}, R, {"x": R})
    beta = rng.standard_normal(4)
    model = layernorm_decomposed((2, 3, 4), [-1], gamma, beta)
    for lab, eps, conv in variants(bias=True, eps_values=(0.0,)):
        want, _, _ = oracle_layernorm(x, gamma, beta, R, (-1,), LN_EPS, 0.0, bias=conv["bias"])
        yield _case(f"normalizer/layernorm-decomposed/{lab}", "normalizer", model, {"x": x}, R, {"x": want}, eps=0.0,
                    conv=conv, notes="epsilon on the centering Sub, the ReduceMean and the beta Add; the normalizer "
                                     "on the Div (equal to the layernorm rule at eps 0)")


def layernorm_cases():
    """LayerNormalization with its standard deviation held constant (LXT's stop-gradient)."""
    for cid, shape, axis, axes, beta in (("last-axis", (2, 5), -1, (-1,), True),
                                          ("two-axes", (2, 3, 4), 1, (1, 2), True),
                                          ("no-beta", (2, 5), -1, (-1,), False)):
        rng = rng_for(f"layernorm/{cid}")
        norm = shape[axis % len(shape):]
        gamma, b = rng.standard_normal(norm), (rng.standard_normal(norm) if beta else np.zeros(norm))
        x, R = rng.standard_normal(shape), rng.standard_normal(shape)
        consts = {"gamma": gamma, **({"beta": b} if beta else {})}
        model = one_node_model("LayerNormalization", ["x"] + list(consts), {"x": shape}, consts, name="ln", axis=axis,
                               epsilon=1e-5)
        for lab, eps, conv in variants(bias=beta, eps_values=(0.0, EPS) if cid == "last-axis" else (0.0,)):
            want, _, _ = oracle_layernorm(x, gamma, b, R, axes, LN_EPS, eps, _stab_of(conv),
                                          conv.get("bias", "absorbed"))
            yield _case(f"layernorm/{cid}/{lab}", "layernorm", model, {"x": x}, R, {"x": want}, eps=eps, conv=conv)


# ---------------------------------------------------------------------------------------------- route

def _route(cid, op, shape, consts=None, order=None, **attrs):
    return cid, (lambda: one_node_model(op, order or ["x"] + list(consts or {}), {"x": shape}, consts or {},
                                        name="route", **attrs)), shape


def _split_unused():
    return graph_model([node("Split", ["x", "split"], ["a", "b", "c"], name="route", axis=0),
                        node("Concat", ["c", "a"], ["y"], name="concat", axis=0)], {"x": (6, 2)}, ["y"],
                       {"split": ints(1, 2, 3)})


ROUTES = [
    _route("reshape", "Reshape", (2, 3, 4), {"shape": ints(4, -1)}),
    _route("transpose", "Transpose", (2, 3, 4), perm=[2, 0, 1]),
    _route("slice-negative-step", "Slice", (5, 6), {"st": ints(4, -1), "en": ints(0, -7), "ax": ints(0, 1),
                                                    "sp": ints(-2, -2)}),
    _route("gather-repeated", "Gather", (4, 3), {"ind": np.array([[2, -1], [0, 2]])}, axis=0),
    _route("concat-constant-piece", "Concat", (2, 3), {"c": const((2, 2), 40)}, order=["x", "c", "x"], axis=1),
    ("split-one-unused", _split_unused, (6, 2)),
    _route("expand", "Expand", (3, 1), {"shape": ints(2, 3, 4)}),
    _route("tile", "Tile", (2, 3), {"rep": ints(2, 2)}),
    _route("pad-constant", "Pad", (2, 3), {"pads": ints(1, 0, 0, 2), "val": scalar(0.5)}),
    _route("unsqueeze", "Unsqueeze", (2, 3), {"axes": ints(0, 3)}),
    _route("trilu", "Trilu", (3, 4), {"k": ints(1)}, upper=1),
]


def route_cases():
    """Data movement and selection: ``R_x = J^T R_y`` with the probed 0/1 Jacobian (fill values and constant
    pieces absorb); Where / Max / Min / MaxPool / ReduceMax: each element's relevance to its winner."""
    for cid, build, shape in ROUTES:
        model = build()
        x, y, R, J, _ = _probed(model, f"route/{cid}", shape)
        yield _case(f"route/{cid}", "route", model, {"x": x}, R, {"x": (J.T @ R.ravel()).reshape(shape)})
    yield from _selection_cases()


def _selection_cases():
    rng = rng_for("route/selection")
    cond = np.array([[True, False, True], [False, True, True]])
    for cid, other in (("where-constant-branch", const((2, 3), 60)), ("where-neginf-branch", scalar(-np.inf))):
        model = one_node_model("Where", ["cond", "x", "c"], {"x": (2, 3)}, {"cond": cond, "c": other}, name="route")
        x, R = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
        yield _case(f"route/{cid}", "route", model, {"x": x}, R, {"x": np.where(cond, R, 0.0)},
                    notes="what the constant branch would get is absorbed")
    for cid, op, order, dyn in (("where-both-dynamic", "Where", ["cond", "x", "x2"], {"x": (2, 3), "x2": (2, 1)}),
                                ("max-broadcast", "Max", ["x", "x2"], {"x": (2, 3), "x2": (3,)}),
                                ("min-three", "Min", ["x", "x2", "x3"], {"x": (2, 3), "x2": (2, 1), "x3": (1, 3)})):
        cond = np.array([[True, False, True], [False, True, True]])
        model = one_node_model(op, order, dyn, {"cond": cond} if op == "Where" else {}, name="route")
        feeds = {n: rand(rng, s) for n, s in dyn.items()}
        R = rng.standard_normal((2, 3))
        if op == "Where":
            want = {"x": np.where(cond, R, 0.0), "x2": unbroadcast(np.where(cond, 0.0, R), (2, 1))}
        else:
            want = oracle_winner(op, order, feeds, R)
        yield _case(f"route/{cid}", "route", model, feeds, R, want)
    x = rng.standard_normal((1, 2, 5, 5))
    model = one_node_model("MaxPool", ["x"], {"x": x.shape}, name="route", kernel_shape=[3, 3], strides=[1, 1],
                           pads=[1, 1, 1, 1])
    R = rng.standard_normal(Forward(model)({"x": x}).shape)
    yield _case("route/maxpool-overlapping", "route", model, {"x": x}, R,
                {"x": oracle_maxpool(x, R, [3, 3], [1, 1], [1, 1, 1, 1])})
    x = rng.standard_normal((2, 3, 4))
    model = one_node_model("ReduceMax", ["x", "axes"], {"x": x.shape}, {"axes": ints(1)}, name="route", keepdims=1)
    R = rng.standard_normal((2, 1, 4))
    yield _case("route/reducemax", "route", model, {"x": x}, R, {"x": np.where(x == x.max(1, keepdims=True), R, 0.0)})


# ---------------------------------------------------------------------------------------------- fused ops

ATTENTION = [  # (case, Q K V shapes, attributes, mask kind)
    ("3d-mha", ((2, 3, 8), (2, 4, 8), (2, 4, 6)), dict(q_heads=2, kv_heads=2), None),
    ("3d-gqa-causal", ((1, 3, 8), (1, 3, 4), (1, 3, 6)), dict(q_heads=4, kv_heads=2, is_causal=1), None),
    ("4d-causal-float-mask", ((1, 2, 4, 4), (1, 2, 4, 4), (1, 2, 4, 2)), dict(is_causal=1), "float"),
    ("4d-gqa-neginf-mask", ((1, 4, 3, 2), (1, 2, 5, 2), (1, 2, 5, 3)), {}, "float-neginf"),
]


def _attention_mask(kind, L, Skv, rng):
    if kind is None:
        return None
    m = rng.standard_normal((L, Skv))
    if kind == "float-neginf":
        m[0, 1] = m[2, 4] = -np.inf
    return m


def attention_cases():
    """The opset-23 Attention op as its decomposition (attnlrp) or with the weights constant (cp-lrp)."""
    names = {"q_heads": "q_num_heads", "kv_heads": "kv_num_heads", "is_causal": "is_causal"}
    for cid, shapes, kw, mask_kind in ATTENTION:
        rng = rng_for(f"attention/{cid}")
        feeds = {n: rng.standard_normal(s) for n, s in zip("QKV", shapes)}
        Qs, Ks = shapes[:2]
        L, Skv = (Qs[-2], Ks[-2]) if len(Qs) == 4 else (Qs[1], Ks[1])
        mask = _attention_mask(mask_kind, L, Skv, rng)
        consts = {} if mask is None else {"mask": mask}
        model = one_node_model("Attention", ["Q", "K", "V"] + list(consts), dict(zip("QKV", shapes)), consts, opset=23,
                               name="attn", **{names[k]: v for k, v in kw.items()})
        y = attention_forward(*feeds.values(), mask=mask, **kw)["y"]
        R = rng.standard_normal(y.shape)
        for rule, preset, cp in (("attention", "attnlrp", False), ("attention-cp", "cp-lrp", True)):
            for lab, eps, conv in variants(eps_values=(0.0, EPS) if cid == "3d-mha" else (0.0,)):
                R_Q, R_K, R_V = oracle_attention(*feeds.values(), R, eps, cp, _stab_of(conv), mask=mask, **kw)[:3]
                yield _case(f"{rule}/{cid}/{lab}", rule, model, feeds, R, {"Q": R_Q, "K": R_K, "V": R_V},
                            preset=preset, eps=eps, conv=conv)


ROTARY = [  # (case, shape, interleaved, rotary_embedding_dim, with position ids)
    ("4d-halves-positions", (1, 2, 3, 8), 0, 0, True),
    ("4d-interleaved-positions", (1, 2, 3, 8), 1, 0, True),
    ("4d-partial-positions", (2, 2, 3, 8), 0, 4, True),
    ("3d-heads", (2, 3, 12), 0, 0, False),
]


def rotary_cases():
    """The opset-23 RotaryEmbedding: epsilon on the rotation (cos/sin constant), identity past the rotary dim."""
    for cid, shape, interleaved, rot_dim, with_pos in ROTARY:
        rng = rng_for(f"rotary/{cid}")
        heads = 3 if len(shape) == 3 else 0
        B, S = shape[0], (shape[2] if len(shape) == 4 else shape[1])
        half = (rot_dim or (shape[-1] if len(shape) == 4 else shape[-1] // heads)) // 2
        X = rng.standard_normal(shape)
        theta = rng.uniform(0, 2 * np.pi, (6, half) if with_pos else (B, S, half))
        pos = rng.integers(0, 6, (B, S)) if with_pos else None
        cos, sin = np.cos(theta), np.sin(theta)
        consts = {"cos": cos, "sin": sin, **({"pos": pos} if with_pos else {})}
        attrs = dict(interleaved=interleaved, **({"rotary_embedding_dim": rot_dim} if rot_dim else {}),
                     **({"num_heads": heads} if heads else {}))
        model = one_node_model("RotaryEmbedding", ["X"] + list(consts), {"X": shape}, consts, opset=23, name="rope",
                               **attrs)
        R = rng.standard_normal(shape)
        for lab, eps, conv in variants(eps_values=(0.0, EPS) if cid == "4d-halves-positions" else (0.0,)):
            want = rotary_forward_and_oracle(X, cos, sin, pos, interleaved, rot_dim, heads, R, eps, _stab_of(conv))[1]
            yield _case(f"rotary/{cid}/{lab}", "rotary", model, {"X": X}, R, {"X": want}, eps=eps, conv=conv)


def gradient_cases():
    """The gradient presets' rule: ``g_x = vjp_x(g_y)`` (the arrays are gradients, not relevance)."""
    rng = rng_for("gradient")
    W = rng.standard_normal((4, 3))
    x, R = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    model = one_node_model("MatMul", ["x", "W"], {"x": (2, 4)}, {"W": W}, name="lin")
    yield _case("gradient/matmul", "gradient", model, {"x": x}, R, {"x": R @ W.T}, preset="gradient")
    model = graph_model([node("MatMul", ["x", "W"], ["h"], name="lin"), node("Tanh", ["h"], ["y"], name="act")],
                        {"x": (2, 4)}, ["y"], {"W": W})
    yield _case("gradient/matmul-tanh", "gradient", model, {"x": x}, R, {"x": ((1 - np.tanh(x @ W) ** 2) * R) @ W.T},
                preset="gradient")


NODE_FAMILIES = (linear_cases, sum_cases, bilinear_cases, gate_cases, softmax_cases, identity_cases, region_cases,
                 normalizer_cases, layernorm_cases, route_cases, attention_cases, rotary_cases, gradient_cases,
                 *CLASSIC_FAMILIES)


# ---------------------------------------------------------------------------------------------- models

LXT_TOLERANCE = 1e-6  # reflrp against LXT 2.1 on the zoo (docs/checking-a-backend.md; measured 1e-10 .. 8e-8)
SEED_ONE_MODELS = ("llama", "vit", "bert")


def zoo_goldens(models_dir) -> list:
    """The zoo models of ``models_dir`` with an LXT golden: (name, onnx path, golden path)."""
    root = Path(models_dir)
    if not (root / "MANIFEST.json").exists():
        return []
    return [(p.name[:-len(".lxt.npz")], root / (p.name[:-len(".lxt.npz")] + ".onnx"), p)
            for p in sorted(root.glob("*.lxt.npz")) if (root / (p.name[:-len(".lxt.npz")] + ".onnx")).exists()]


def _golden(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _lxt_relevance(g: dict, preset: str, wrt) -> dict:
    """LXT's relevance of each attributed tensor (the first under ``<preset>:relevance``)."""
    return {w: g[f"{preset}:relevance" + ("" if i == 0 else f":{w}")] for i, w in enumerate(wrt)}


def _model_case(zoo, path, preset, feeds, g_rel, seed_value: str, conv: dict, rows=None, note="") -> Case:
    """One model-level case: reflrp explains ``feeds``; LXT's relevance (``g_rel``, on the same rows) checks it."""
    from .explain import explain
    att = explain(str(path), feeds, preset=preset, dtype="float64")
    seed = np.asarray(att.seed, dtype=np.float64)
    if seed_value == "one":
        per_row = seed.reshape(seed.shape[0], -1).sum(1)
        seed = (seed != 0).astype(np.float64)
        att = explain(str(path), feeds, target=seed, preset=preset, dtype="float64")
        g_rel = {w: r / per_row.reshape((-1,) + (1,) * (r.ndim - 1)) for w, r in g_rel.items()}
    expected = {w: np.asarray(att.relevance[w], dtype=np.float64) for w in att.wrt}
    from .testing import rel_err
    check_rows = slice(None) if rows is None else rows
    err = max(rel_err(expected[w][check_rows], g_rel[w][check_rows]) for w in att.wrt)
    name = f"model/{preset}/{zoo}" + ("" if not note else f"/{note}")
    if err > LXT_TOLERANCE:
        raise ConformanceError(f"{name}: reflrp differs from LXT's golden by {err:.3e} > {LXT_TOLERANCE:g}")
    case = Case(name, {"name": f"model:{preset}", "preset": preset}, path, dict(feeds), seed, expected,
                {"preset": preset, "epsilon": None}, {"seed": seed_value, **conv}, kind="model",
                formula=f"the {preset} preset's rules (docs/rules.md) on every node of the zoo model {zoo}",
                source="reflrp", extra={"output": att.output, "zoo": zoo, "target": np.asarray(att.target).tolist(),
                                        "lxt_check": {"max_rel_err": float(f"{err:.3g}"),
                                                      "rows": "all" if rows is None else [int(r) for r in rows]}})
    case.att = att
    return case


def model_cases(models_dir, only=None):
    """The zoo with LXT goldens under attnlrp and cp-lrp (where LXT has the preset): the reference batch
    (``masked_rows`` matters where it holds a fully padded row), its rows with a real token (convention-free),
    and, for a few models, the seed of 1."""
    for zoo, path, gpath in zoo_goldens(models_dir):
        g = None
        for preset in ("attnlrp", "cp-lrp"):
            names = [f"model/{preset}/{zoo}" + s for s in ("", "/real-rows", "/seed-one")]
            if not any(selected(n, only) for n in names):
                continue
            g = g or _golden(gpath)
            if f"{preset}:relevance" in g:
                yield from _model_variants(zoo, path, preset, g, names, only)


def _model_variants(zoo, path, preset, g, names, only):
    feeds = {k[len("inputs:"):]: v for k, v in g.items() if k.startswith("inputs:")}
    g_rel = _lxt_relevance(g, preset, _wrt(path, feeds))
    dead = [int(r) for r in g.get("fully_padded_rows", np.zeros(0, dtype=np.int64))]
    real = [r for r in range(len(next(iter(feeds.values())))) if r not in dead]
    conv, rows = ({"masked_rows": "absorbed"}, real) if dead else ({}, None)
    if selected(names[0], only):
        yield _model_case(zoo, path, preset, feeds, g_rel, "logit", conv, rows=rows)
    if dead and selected(names[1], only):
        yield _model_case(zoo, path, preset, {k: v[real] for k, v in feeds.items()},
                          {w: r[real] for w, r in g_rel.items()}, "logit", {}, note="real-rows")
    if zoo in SEED_ONE_MODELS and preset == "attnlrp" and selected(names[2], only):
        yield _model_case(zoo, path, preset, feeds, g_rel, "one", conv, rows=rows, note="seed-one")


def _wrt(path, feeds) -> tuple:
    from .model import load
    return load(str(path)).for_feeds(feeds).plan("attnlrp").wrt


# ---------------------------------------------------------------------------------------------- export

def node_cases(only=None):
    for family in NODE_FAMILIES:
        for case in family():
            if selected(case.name, only):
                yield case


def all_cases(models_dir=None, only=None):
    """Every node case, then the model-level cases of ``models_dir`` (the repository's models/ by default)."""
    yield from node_cases(only)
    if models_dir is None:
        models_dir = Path(__file__).resolve().parents[1] / "models"
    for case in model_cases(models_dir, only):
        if selected(case.name, only):
            yield case
    yield from classic_model_cases(models_dir, only)


def _rules_used(att) -> list:
    """The rules of the nodes that received relevance (a rule planned where none arrives is not exercised)."""
    if att.conservation is None:
        return sorted({p.rule for p in att.plan.nodes if p.rule})
    return sorted({a.rule for a in att.conservation.nodes if a.rule and (a.inflow != 0 or a.scale != 0)})


def _node_facts(att) -> list:
    """The rule of every node of a node case's plan, its dynamic inputs and the plan facts its rule reads."""
    out = []
    for p in att.plan.nodes:
        facts = {k: v for k, v in p.info.items() if isinstance(v, (str, int, bool))}
        if p.rule is None and "inside the region ending at" in p.why:
            facts["region"] = p.why.split("'")[1]
        if p.layer is not None:  # a weight layer: its type, and the weight product when the bias is an Add
            facts["layer"] = p.layer.type
            if p.layer.bias_add is not None:
                facts["layer_product"] = p.layer.product.name
        out.append({"name": p.node.name, "op": p.node.op_type, "rule": p.rule, "dynamic": list(p.dynamic),
                    "facts": facts})
    return out


def complete(case: Case) -> None:
    """Record what reflrp plans for ``case`` (its nodes' rules, the rules used) and, for an oracle case whose
    conventions are reflrp's, check reflrp against the oracle (:data:`CROSS_CHECK`)."""
    from .explain import explain
    from .model import load
    from .testing import rel_err
    att = getattr(case, "att", None)
    if att is None:
        how, call = reflrp_call(case.reflrp)
        att = explain(load(case.model, **how), case.inputs, target=case.relevance_out, dtype="float64",
                      wrt=list(case.expected), **call)
    case.facts = {"rules": _rules_used(att)}
    if case.kind == "node":
        case.facts["nodes"] = _node_facts(att)
        if case.rule["name"] not in case.facts["rules"]:
            raise ConformanceError(f"{case.name}: reflrp plans {case.facts['rules']}, not the case's rule "
                                   f"{case.rule['name']!r}")
    if case.source == "oracle" and all(REFLRP_CONVENTIONS.get(k) == v for k, v in case.conventions.items()):
        err = max(rel_err(att.relevance[w], want) for w, want in case.expected.items())
        if err > CROSS_CHECK:
            raise ConformanceError(f"{case.name}: reflrp differs from the oracle by {err:.3e} > {CROSS_CHECK:g}")
        case.extra["cross_check"] = {"reflrp_vs_oracle": float(f"{err:.3g}")}
    case.att = None

