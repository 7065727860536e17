"""Golden specs for tools/make_zennit_goldens.py: declarative Zennit configurations, and the
Zennit composite each one stands for.

A spec is JSON-able, so a test (or a backend adapter) can rebuild it by name:
``layer_map`` / ``first_map`` are lists of ``[type, rule, kwargs]`` (type: a dotted name such as
``zennit.types.Linear`` or ``torch.nn.Linear``; rule: a class of ``zennit.rules``; a kwarg
``{"array": key}`` names an array of the golden file, e.g. a zbox bound).  A ``composite`` spec
is built with the Zennit class itself (``composite``, ``kwargs``); its ``layer_map`` /
``first_map`` are our reading of zennit/composites.py (the golden tool checks that the expanded
maps give bit-identical relevance).  ``canonizers`` are dotted class names.
"""
from __future__ import annotations

import importlib

import torch

ST = 1e-6                                   # Zennit's default stabilizer / epsilon
SCALAR_BOUNDS = (-3.0, 3.0)
LXT_CONV_GAMMAS = (0.1, 0.25, 100.0)        # LXT's examples/vit_torch.py sweep
LXT_LINEAR_GAMMAS = (0.0, 0.01, 0.05, 0.1, 1.0)
CANONIZERS = {"none": [], "merge-bn": ["zennit.canonizers.SequentialMergeBatchNorm"],
              "resnet": ["zennit.torchvision.ResNetCanonizer"]}


def E(tname, rule, **kw):
    return [tname, rule, kw]


def base_map(stabilizer=ST, activation=True, avgpool=True):
    """Zennit's layer_map_base (composites.py): Pass on activations and BN, Norm on Sum / AvgPool."""
    return ([E("zennit.types.Activation", "Pass")] if activation else []) + \
        [E("zennit.layer.Sum", "Norm", stabilizer=stabilizer)] + \
        ([E("zennit.types.AvgPool", "Norm", stabilizer=stabilizer)] if avgpool else []) + \
        [E("zennit.types.BatchNorm", "Pass")]


def composite(name, cls, **kw):
    """A named Zennit composite, with its layer maps expanded as composites.py builds them."""
    eps, st, zp = kw.get("epsilon", ST), kw.get("stabilizer", ST), kw.get("zero_params")
    rk = {"zero_params": zp} if zp else {}
    conv_rule = {"EpsilonPlus": ("ZPlus", {}), "EpsilonPlusFlat": ("ZPlus", {}),
                 "EpsilonAlpha2Beta1": ("AlphaBeta", {"alpha": 2, "beta": 1}),
                 "EpsilonAlpha2Beta1Flat": ("AlphaBeta", {"alpha": 2, "beta": 1}),
                 "EpsilonGammaBox": ("Gamma", {"gamma": kw.get("gamma", 0.25)})}[cls]
    layer_map = base_map(st) + [E("zennit.types.Convolution", conv_rule[0], **conv_rule[1], stabilizer=st, **rk),
                                E("torch.nn.Linear", "Epsilon", epsilon=eps, **rk)]
    first_map = []
    if cls.endswith("Flat"):
        first_map = [E("zennit.types.Linear", "Flat", stabilizer=st, **rk)]
    elif cls == "EpsilonGammaBox":
        first_map = [E("zennit.types.Convolution", "ZBox", low=kw["low"], high=kw["high"], stabilizer=st, **rk)]
    return {"name": name, "kind": "composite", "composite": f"zennit.composites.{cls}", "kwargs": kw,
            "layer_map": layer_map, "first_map": first_map}


def layer_map_spec(name, layer_map, first_map=(), **extra):
    cls = "SpecialFirstLayerMapComposite" if first_map else "LayerMapComposite"
    return {"name": name, "kind": "layer_map", "composite": f"zennit.composites.{cls}",
            "layer_map": layer_map, "first_map": list(first_map), **extra}


def every_linear(name, rule, **kw):
    """One rule on every Conv/ConvTranspose/nn.Linear (zennit.types.Linear) over Zennit's base map."""
    return layer_map_spec(name, base_map() + [E("zennit.types.Linear", rule, **kw)])


def gf(v: float) -> str:
    return f"{v:g}"


def specs_for(fx, has_conv: bool, has_avgpool: bool, smooth: bool) -> list[dict]:
    S, C = {"low": SCALAR_BOUNDS[0], "high": SCALAR_BOUNDS[1]}, \
        {"low": {"array": "bounds:channel:low"}, "high": {"array": "bounds:channel:high"}}
    out = [
        composite("epsilon-plus", "EpsilonPlus"),
        composite("epsilon-plus-flat", "EpsilonPlusFlat"),
        composite("epsilon-gamma-box", "EpsilonGammaBox", **S),
        composite("epsilon-gamma-box.channel-bounds", "EpsilonGammaBox", **C),
        composite("epsilon-alpha2-beta1", "EpsilonAlpha2Beta1"),
        composite("epsilon-alpha2-beta1-flat", "EpsilonAlpha2Beta1Flat"),
        composite("epsilon-plus.epsilon=0.25", "EpsilonPlus", epsilon=0.25),
        composite("epsilon-gamma-box.epsilon=0.25,gamma=1", "EpsilonGammaBox", **S, epsilon=0.25, gamma=1.0),
        composite("epsilon-alpha2-beta1-flat.stabilizer=0.01", "EpsilonAlpha2Beta1Flat", stabilizer=0.01),
        composite("epsilon-plus.zero_params=bias", "EpsilonPlus", zero_params=["bias"]),
        composite("epsilon-gamma-box.zero_params=bias", "EpsilonGammaBox", **S, zero_params=["bias"]),
        every_linear("epsilon.epsilon=1e-06", "Epsilon", epsilon=1e-6),
        every_linear("epsilon.epsilon=0.25", "Epsilon", epsilon=0.25),
        every_linear("epsilon.zero_params=bias", "Epsilon", epsilon=1e-6, zero_params=["bias"]),
        every_linear("zplus", "ZPlus", stabilizer=ST),
        every_linear("alpha-beta.alpha=2,beta=1", "AlphaBeta", alpha=2, beta=1, stabilizer=ST),
        every_linear("alpha-beta.alpha=1,beta=0", "AlphaBeta", alpha=1, beta=0, stabilizer=ST),
        every_linear("gamma.zero_params=bias", "Gamma", gamma=0.25, stabilizer=ST, zero_params=["bias"]),
        every_linear("flat", "Flat", stabilizer=ST),
        every_linear("wsquare", "WSquare", stabilizer=ST),
    ]
    for gamma in (0.25, 1.0) if has_conv else (0.0, 0.01, 0.05, 0.1, 0.25, 1.0):
        out.append(every_linear(f"gamma.gamma={gf(gamma)}", "Gamma", gamma=gamma, stabilizer=ST))
    for bname, bounds in (("", S), (".channel-bounds", C)):
        out.append(layer_map_spec(f"zbox-first+epsilon{bname}",
                                  base_map() + [E("zennit.types.Linear", "Epsilon", epsilon=1e-6)],
                                  [E("zennit.types.Linear", "ZBox", **bounds, stabilizer=ST)]))
    if has_conv:  # LXT's ViT sweep, here over Zennit's base map
        for gc in LXT_CONV_GAMMAS:
            for gl in LXT_LINEAR_GAMMAS:
                out.append(layer_map_spec(
                    f"gamma.conv={gf(gc)},linear={gf(gl)}",
                    base_map() + [E("zennit.types.Convolution", "Gamma", gamma=gc, stabilizer=ST),
                                  E("torch.nn.Linear", "Gamma", gamma=gl, stabilizer=ST)]))
    out += diagnostics(fx, has_avgpool, smooth)
    for s in out:
        s.setdefault("canonizers", CANONIZERS[fx.canonizer])
        s.setdefault("diagnostic", False)
    return out


def diagnostics(fx, has_avgpool, smooth) -> list[dict]:
    """Zennit with a piece of its convention removed: shows what each piece does (not targets)."""
    out = []
    if smooth or fx.name == "mlp":
        rule = ("Epsilon", {"epsilon": 1e-6}) if smooth else ("Flat", {"stabilizer": ST})
        out.append(layer_map_spec(f"{rule[0].lower()}.activation=gradient",
                                  base_map(activation=False) + [E("zennit.types.Linear", rule[0], **rule[1])],
                                  diagnostic=True, why="activations without Pass: their plain gradient"))
    if has_avgpool:
        out.append(layer_map_spec("epsilon.avgpool=gradient",
                                  base_map(avgpool=False) + [E("zennit.types.Linear", "Epsilon", epsilon=1e-6)],
                                  diagnostic=True, why="AvgPool without Norm: its plain gradient"))
    if fx.canonizer != "none" or fx.name.startswith("resnet"):
        nc = composite("epsilon-plus.no-canonizer", "EpsilonPlus")
        out.append({**nc, "canonizers": [], "diagnostic": True,
                    "why": "no canonizer: BN modules get Pass (layer_map_base), residual adds the gradient"})
    if fx.canonizer == "resnet" and fx.bn == "in-graph":
        mb = composite("epsilon-plus.merge-bn-only", "EpsilonPlus")
        out.append({**mb, "canonizers": CANONIZERS["merge-bn"], "diagnostic": True,
                    "why": "BN merged but no ResNet canonizer: the residual add passes the gradient"})
    return out


# ---------------------------------------------------------------- zennit objects

def resolve(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _kwargs(kw: dict, arrays: dict) -> dict:
    return {k: torch.from_numpy(arrays[v["array"]]) if isinstance(v, dict) else v for k, v in kw.items()}


def make_composite(spec: dict, arrays: dict, expanded: bool = False):
    """The Zennit composite of ``spec``; ``expanded`` builds it from the layer maps instead."""
    import zennit.composites as zc
    import zennit.rules as zr
    canonizers = [resolve(c)() for c in spec["canonizers"]]
    if spec["kind"] == "composite" and not expanded:
        return resolve(spec["composite"])(**_kwargs(spec["kwargs"], arrays), canonizers=canonizers)
    lmap = [(resolve(t), getattr(zr, r)(**_kwargs(kw, arrays))) for t, r, kw in spec["layer_map"]]
    fmap = [(resolve(t), getattr(zr, r)(**_kwargs(kw, arrays))) for t, r, kw in spec["first_map"]]
    if fmap:
        return zc.SpecialFirstLayerMapComposite(lmap, fmap, canonizers=canonizers)
    return zc.LayerMapComposite(lmap, canonizers=canonizers)
