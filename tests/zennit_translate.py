"""A Zennit golden spec (tools/zennit_specs.py, the ``meta["specs"]`` of models/zennit/*.zennit.npz) as a
reflrp call: our reading of Zennit's names, written down once (no torch, no Zennit).

- a ``composite`` spec is the reflrp preset of the same name with the composite's kwargs as
  ``options`` (``zero_params=['bias']`` is ``zero_bias=True``);
- a ``layer_map`` spec is ``reflrp.composite(layers, first)`` over the ``epsilon`` role map, each
  Zennit type as reflrp layer types, each rule by its reflrp name; a type of Zennit's layer_map_base
  the spec leaves out gets the plain gradient (Zennit differentiates modules without a rule);
- canonizers: any BatchNorm-merging canonizer is ``reflrp.load(path, fold_batchnorm=True)``; without
  Zennit's ResNet canonizer a residual ``out + identity`` is differentiated (``rules={"Add":
  "gradient"}``) instead of being its Sum (which reflrp's composites always make of it).
"""
from __future__ import annotations

TYPES = {"zennit.types.Activation": ("activation",), "zennit.layer.Sum": ("sum",), "zennit.types.AvgPool": ("avgpool",),
         "zennit.types.BatchNorm": ("batchnorm",), "zennit.types.Convolution": ("conv",), "torch.nn.Linear": ("dense",),
         "zennit.types.Linear": ("conv", "dense"), "torch.nn.Conv2d": ("conv",)}
RULES = {"Epsilon": "epsilon", "Pass": "pass", "Norm": "norm", "ZPlus": "zplus", "AlphaBeta": "alpha-beta",
         "Gamma": "gamma", "Flat": "flat", "WSquare": "wsquare", "ZBox": "zbox"}
BASE_TYPES = ("activation", "sum", "avgpool", "batchnorm")  # Zennit's layer_map_base


def params(kwargs: dict, arrays) -> dict:
    """A Zennit rule's / composite's kwargs as reflrp rule parameters (array kwargs from the golden)."""
    out = {}
    for k, v in kwargs.items():
        if k == "zero_params":
            if v:
                assert list(v) == ["bias"], v
                out["zero_bias"] = True
        else:
            out[k] = arrays[v["array"]] if isinstance(v, dict) else v
    return out


def entries(zennit_map, arrays) -> list:
    return [(TYPES[t], RULES[r], params(kw, arrays)) for t, r, kw in zennit_map]


def folds_batchnorm(spec: dict) -> bool:
    return any(c.endswith(("MergeBatchNorm", "ResNetCanonizer")) for c in spec["canonizers"])


def explain_kwargs(spec: dict, arrays, residual_adds: bool) -> dict:
    """The keyword arguments of ``reflrp.explain`` that stand for ``spec`` (``residual_adds``: the graph
    has Adds of two computed tensors)."""
    import reflrp
    rules = {}
    if residual_adds and not any(c.endswith("ResNetCanonizer") for c in spec["canonizers"]):
        rules["Add"] = "gradient"
    if spec["kind"] == "composite":
        return dict(preset=spec["name"].split(".")[0], options=params(spec["kwargs"], arrays), rules=rules or None)
    layers = entries(spec["layer_map"], arrays)
    covered = {t for types, _, _ in layers for t in types}
    layers += [((t,), "gradient", {}) for t in BASE_TYPES if t not in covered]
    return dict(preset=reflrp.composite(spec["name"], layers, entries(spec["first_map"], arrays)), rules=rules or None)
