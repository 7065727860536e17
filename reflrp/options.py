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
    """The :class:`reflrp.presets.Preset` called ``name``."""
    from .presets import PRESETS
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
    known = set(graph.input_names) | {o for n in graph.nodes for o in n.outputs if o} | set(graph.initializers)
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


def resolve_overrides(graph, rules) -> dict[str, str]:
    """``rules=`` (op type, node-name glob, or ``re:`` regex -> rule name) as node name -> rule.

    An op type must be an op of the graph (case-sensitive); a glob or regex must match a node name; a
    key that is neither is an error, as is an unknown rule name or an invalid regex."""
    from .rules import RULES
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise RuleError(f"rules= must be a mapping {{op type or node name pattern: rule name}}, not a "
                        f"{type(rules).__name__}")
    ops = {n.op_type for n in graph.nodes}
    chosen: dict[str, str] = {}
    for key, rule in rules.items():
        if not isinstance(rule, str) or rule not in RULES:
            raise RuleError(f"unknown rule {rule!r} in rules[{key!r}]; known rules: {sorted(RULES)}"
                            + (did_you_mean(rule, RULES) if isinstance(rule, str) else ""))
        matched = [n.name for n in graph.nodes if _matches(key, n)]
        if not matched:
            raise RuleError(f"rules: key {key!r} matches no node: it is not an op type of this graph (op types "
                            f"are case-sensitive: {sorted(ops)}) and no node name matches it"
                            + did_you_mean(key, ops | {n.name for n in graph.nodes}))
        for name in matched:
            chosen.setdefault(name, rule)
    return chosen


def _matches(key, node) -> bool:
    if not isinstance(key, str):
        raise RuleError(f"rules: key {key!r} must be a string (an op type, a node-name glob or 're:' regex)")
    if key.startswith("re:"):
        try:
            return re.search(key[3:], node.name) is not None
        except re.error as exc:
            raise RuleError(f"rules: key {key!r} is not a valid regular expression: {exc}") from None
    return key == node.op_type or key == node.name or fnmatch.fnmatchcase(node.name, key)
