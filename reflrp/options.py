"""Validation of the arguments users pass (explain, gradient, plan, CLI): each check names the argument,
what was given and the choices, with close matches for typos."""
from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Mapping
from numbers import Real

import numpy as np

from .errors import ReflrpError, RuleError


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def preset(name):
    """The :class:`reflrp.presets.Preset` called ``name`` (a Preset, e.g. from ``reflrp.composite``, as is)."""
    from .presets import PRESETS, Preset
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str) or name not in PRESETS:
        raise RuleError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"
                          + (did_you_mean(name, PRESETS) if isinstance(name, str) else ""))
    return PRESETS[name]


def epsilon(value, default: float) -> float:
    """A finite float >= 0 (None: the preset's default)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ReflrpError(f"epsilon={value!r} must be a finite number >= 0 (the LRP stabiliser)")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ReflrpError(f"epsilon={value!r} must be a finite number >= 0 (the LRP stabiliser)")
    return value


def checkpoint(value):
    if value not in (None, "sqrt"):
        raise ReflrpError(f"checkpoint={value!r} must be None or 'sqrt'")
    return value


def names(graph, value, what: str) -> tuple[str, ...] | None:
    """A tensor name or a list of them (``what`` names the argument); every one must be a tensor of the
    graph (a graph input or a node output). A string is one name."""
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        value = tuple(value)
    except TypeError:
        raise ReflrpError(f"{what}={value!r} must be a tensor name or a list of tensor names") from None
    known = graph.tensor_names
    for v in value:
        if not isinstance(v, str):
            raise ReflrpError(f"{what}: {v!r} is not a tensor name (a string)")
        if v not in known:
            raise ReflrpError(f"{what}: the graph has no tensor {v!r}{did_you_mean(v, known)}")
    return value


def output(graph, value) -> str:
    if value is None:
        return graph.output_names[0]
    if value not in graph.output_names:
        raise ReflrpError(f"output={value!r} is not a graph output; outputs: {list(graph.output_names)}"
                          + did_you_mean(value, graph.output_names))
    return value


def resolve_overrides(graph, rules) -> dict[str, tuple[str, dict]]:
    """``rules=`` (op type, node-name glob, or ``re:`` regex -> a rule name or ``(rule name, params)``) as
    node name -> (rule, params).

    An op type must be an op of the graph (case-sensitive); a glob or regex must match a node name; a
    key that is neither is an error, as is an unknown rule name, a parameter the rule does not take or
    an invalid regex."""
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise RuleError(f"rules= must be a mapping {{op type or node name pattern: rule name}}, not a "
                        f"{type(rules).__name__}")
    ops = {n.op_type for n in graph.nodes}
    chosen: dict[str, tuple[str, dict]] = {}
    for key, value in rules.items():
        rule = rule_with_params(value, f"rules[{key!r}]")
        matched = [n.name for n in graph.nodes if _matches(key, n)]
        if not matched:
            raise RuleError(f"rules: key {key!r} matches no node: it is not an op type of this graph (op types "
                            f"are case-sensitive: {sorted(ops)}) and no node name matches it"
                            + did_you_mean(key, ops | {n.name for n in graph.nodes}))
        for name in matched:
            chosen.setdefault(name, rule)
    return chosen


def rule_name(rule, where: str) -> str:
    from .rules import RULES
    if not isinstance(rule, str) or rule not in RULES:
        raise RuleError(f"unknown rule {rule!r} in {where}; known rules: {sorted(RULES)}"
                        + (did_you_mean(rule, RULES) if isinstance(rule, str) else ""))
    return rule


def rule_with_params(value, where: str) -> tuple[str, dict]:
    """A rule name or ``(rule name, {parameter: value})``, checked: (rule, params)."""
    from .rules import SIGNATURES
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        return rule_name(value, where), {}
    if len(value) != 2 or not isinstance(value[1], Mapping):
        raise RuleError(f"{where} = {value!r} must be a rule name or (rule name, {{parameter: value}})")
    rule = rule_name(value[0], where)
    takes = SIGNATURES[rule].params
    params = {}
    for name, v in value[1].items():
        if name not in takes:
            raise RuleError(f"{where}: rule {rule!r} takes no parameter {name!r}; its parameters: "
                            f"{sorted(takes) or 'none'}" + did_you_mean(name, takes))
        params[name] = param_value(name, v, f"{where} parameter {name!r}")
    return rule, params


def _finite(name, v, where, minimum=0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (Real, np.floating, np.integer)) or not math.isfinite(float(v)) \
            or float(v) < minimum:
        raise ReflrpError(f"{where} = {v!r} must be a finite number >= {minimum:g}")
    return float(v)


def _bound(name, v, where):
    """A zbox bound: a finite number or an array of finite numbers (broadcast to the layer input)."""
    if isinstance(v, (Real, np.floating, np.integer)) and not isinstance(v, bool):
        return _finite(name, v, where, -math.inf)
    try:
        arr = np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ReflrpError(f"{where} must be a number or an array of numbers, not {type(v).__name__}") from None
    if not np.isfinite(arr).all():
        raise ReflrpError(f"{where} must be finite (got an array with NaN or inf)")
    arr.setflags(write=False)
    return arr


def _flag(name, v, where) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ReflrpError(f"{where} = {v!r} must be True or False")
    return bool(v)


PARAMETERS = {  # parameter -> its check (what it means: docs/rules.md)
    "epsilon": _finite, "stabilizer": _finite, "gamma": _finite, "alpha": _finite, "beta": _finite,
    "low": _bound, "high": _bound, "zero_bias": _flag,
}


def param_value(name: str, value, where: str):
    """One rule parameter's value, checked."""
    return PARAMETERS[name](name, value, where)


def rule_options(value) -> dict:
    """``options=``: rule parameter -> value for every rule that takes it; ``"<layer type>.<parameter>"``
    (e.g. ``"conv.gamma"``) for the layers of that type only."""
    from .presets import LAYER_TYPES
    from .rules import parameters
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ReflrpError(f"options= must be a mapping {{rule parameter: value}}, not a {type(value).__name__}")
    known = parameters()
    out = {}
    for key, v in value.items():
        if not isinstance(key, str):
            raise ReflrpError(f"options: key {key!r} must be a string (a rule parameter)")
        scope, _, name = key.rpartition(".")
        if scope and scope not in LAYER_TYPES:
            raise ReflrpError(f"options[{key!r}]: {scope!r} is no layer type; layer types: {list(LAYER_TYPES)}"
                              + did_you_mean(scope, LAYER_TYPES))
        if name not in known:
            takes = ", ".join(f"{p} ({', '.join(r)})" for p, r in known.items())
            raise ReflrpError(f"options: unknown rule parameter {name!r}; parameters: {takes}"
                              + did_you_mean(name, known))
        out[key] = param_value(name, v, f"options[{key!r}]")
    return out


def check_composite(p) -> None:
    """A composite's type and first-layer maps: known layer types, rules and parameters."""
    from .presets import LAYER_TYPES
    for which, entries in (("layers", p.layers), ("first", p.first)):
        for e in entries:
            where = f"composite {p.name!r} {which} entry {e.types!r}"
            for t in e.types:
                if t not in LAYER_TYPES:
                    raise RuleError(f"{where}: unknown layer type {t!r}; layer types: {list(LAYER_TYPES)}"
                                    + did_you_mean(t, LAYER_TYPES))
            rule_with_params((e.rule, dict(e.params)), where)
    for name, v in p.params.items():
        if name not in PARAMETERS:
            raise RuleError(f"composite {p.name!r}: unknown rule parameter {name!r}" + did_you_mean(name, PARAMETERS))
        param_value(name, v, f"composite {p.name!r} parameter {name!r}")


def frozen(value):
    """A hashable stand-in for options / overrides (arrays by their bytes), for the plan cache."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, frozen(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(frozen(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    return value


def _matches(key, node) -> bool:
    if not isinstance(key, str):
        raise RuleError(f"rules: key {key!r} must be a string (an op type, a node-name glob or 're:' regex)")
    if key.startswith("re:"):
        try:
            return re.search(key[3:], node.name) is not None
        except re.error as exc:
            raise RuleError(f"rules: key {key!r} is not a valid regular expression: {exc}") from None
    return key == node.op_type or key == node.name or fnmatch.fnmatchcase(node.name, key)
