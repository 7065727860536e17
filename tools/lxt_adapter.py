"""LXT 2.1 adapters for the LRP conformance suite (docs/conformance.md). They need torch and lxt.

    reflrp conformance run SUITE --backend tools/lxt_adapter.py:efficient   # LXT's efficient mode
    reflrp conformance run SUITE --backend tools/lxt_adapter.py:explicit    # LXT's explicit-mode rules

Each node case's ONNX graph is rebuilt in torch float64 (tools/onnx_torch.py) and every node gets LXT's
own primitive for the rule the case names:

* ``efficient``: gradient x input (``lxt.efficient``): ``identity_rule_implicit`` on activations and
  regions, ``divide_gradient`` on uniform products, ``stop_gradient`` for CP-LRP and the norms' statistics,
  ``layer_norm_forward`` / ``rms_norm_forward`` / ``wrap_attention_forward`` from ``lxt.efficient.patches``,
  plain autograd elsewhere. The upstream relevance enters as the gradient ``R_y / y`` and the relevance of
  an input is ``x * x.grad``. It has no epsilon: a case with eps > 0 is unsupported.
* ``explicit``: the rule functions of ``lxt.explicit`` (relevance in, relevance out): ``epsilon_lrp_fn``,
  ``uniform_epsilon_lrp_fn``, ``uniform_rule_fn``, ``identity_fn``, ``softmax_fn``, ``layer_norm_grad_fn``,
  ``rms_norm_identity_fn``; plain autograd routes. Its stabiliser is ``z + eps``.

Model-level cases (``efficient`` only) run tools/make_lxt_goldens.py's worker on the case's feeds: the
zoo model rebuilt from its config with LXT's patch map, one process per case (LXT patches globally).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_torch import (CaseGraph, attention_bias, attention_heads, attention_merge, attention_scale,  # noqa: E402
                        dynamic_inputs, held, repeat_kv, run_graph, with_arg)
from reflrp.conformance import Unsupported  # noqa: E402


def _torch():
    import torch
    torch.set_num_threads(1)
    return torch


def _lxt_efficient():
    from torch_common import import_lxt
    import_lxt()
    import lxt.efficient.patches as patches
    import lxt.efficient.rules as rules
    return rules, patches


def _lxt_explicit():
    import lxt.explicit.functional as functional
    import lxt.explicit.rules as rules
    return rules, functional


# the rules LXT has a primitive for ("pass", Zennit's name for the identity rule, as LXT's identity rule)
LXT_RULES = {"epsilon", "bilinear-uniform", "bilinear-cp", "gate-uniform", "gate-up", "normalizer", "identity", "pass",
             "region", "layernorm", "softmax", "attention", "attention-cp", "rotary", "route", "gradient"}


def _supported(case) -> None:
    used = {n["rule"] for n in case.nodes if n["rule"]}
    if used - LXT_RULES:
        raise Unsupported(f"LXT 2.1 has no {', '.join(sorted(used - LXT_RULES))} rule (Zennit's classic rules: "
                          "tools/zennit_adapter.py)")


def _leaves(case):
    torch = _torch()
    return {n: torch.tensor(v, requires_grad=v.dtype.kind == "f") for n, v in case.inputs.items()}


# ---------------------------------------------------------------------------------------------- efficient

class Efficient:
    """LXT 2.1 efficient mode (gradient x input with LXT's modified gradients)."""

    conventions = {"seed": "logit", "bias": "absorbed", "masked_rows": "formula"}

    def __call__(self, case) -> dict:
        if case.kind == "model":
            return lxt_model_case(case)
        _supported(case)
        torch = _torch()
        from torch_common import float64_mode
        g = CaseGraph(case)
        leaves = _leaves(case)
        with float64_mode():
            y = run_graph(g.model, leaves, lambda node, fn, args, env: self.apply(g, node, fn, args, env))[case.output]
        R = torch.from_numpy(case.relevance_out)
        gradient = case.rule["name"] == "gradient"
        y.backward(R if gradient else as_gradient(torch, R, y))
        return {n: (t.grad if gradient else t * t.grad).detach().numpy() if t.grad is not None else np.zeros(t.shape)
                for n, t in leaves.items() if n in case.relevance_of}

    def apply(self, g: CaseGraph, node, fn, args, env):
        lxt, patches = _lxt_efficient()
        spec = g.spec(node)
        rule, dyn, facts = spec["rule"], dynamic_inputs(spec, args), spec["facts"]
        if g.eps and rule in ("epsilon", "bilinear-uniform", "bilinear-cp", "layernorm", "attention", "attention-cp",
                              "rotary"):
            raise Unsupported("LXT's efficient mode has no epsilon (gradient x input is eps = 0)")
        if rule in ("bilinear-uniform", "gate-uniform"):
            return (lxt.divide_gradient(fn(*args)[0], len(dyn)),)
        if rule in ("bilinear-cp", "gate-up", "normalizer"):
            keep = facts[{"bilinear-cp": "values", "gate-up": "up", "normalizer": "normalized"}[rule]]
            return fn(*held(args, keep, dyn))
        if rule == "identity" and node.op_type == "RMSNormalization":
            ns = SimpleNamespace(weight=args[1], variance_epsilon=_attr(node, "epsilon", 1e-5))
            return (patches.rms_norm_forward(ns, args[0]),)
        if rule in ("identity", "pass"):
            (i,) = dyn
            return (lxt.identity_rule_implicit(lambda t: fn(*with_arg(args, i, t))[0], args[i]),)
        if rule == "region":
            source, f = g.region_fn(node, env)
            return (lxt.identity_rule_implicit(f, env[source]),)
        if rule == "layernorm":
            beta = args[2] if len(args) > 2 else None
            ns = SimpleNamespace(eps=_attr(node, "epsilon", 1e-5), weight=args[1], bias=beta)
            return (patches.layer_norm_forward(ns, args[0]),)
        if rule in ("attention", "attention-cp"):
            wrap = patches.wrap_attention_forward if rule == "attention" else patches.cp_wrap_attention_forward
            return (_efficient_attention(node, args, wrap),)
        return fn(*args)  # epsilon (eps 0), route, softmax, rotary, gradient: plain autograd in LXT


def as_gradient(torch, R, y):
    """The upstream relevance as gradient x input's gradient: ``R / y`` (0 where y is 0 or not finite)."""
    ok = (y != 0) & torch.isfinite(y)
    return torch.where(ok, R / torch.where(ok, y, 1.0), 0.0)


def _attr(node, name, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _eager(module, q, k, v, bias, r):
    """HF's eager attention on (B, H, S, d) tensors with the scale on q and k and GQA repeats."""
    torch = _torch()
    k, v = repeat_kv(k * r, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    return torch.softmax((q * r) @ k.transpose(-1, -2) + bias, -1) @ v


def _efficient_attention(node, args, wrap):
    """The fused Attention with LXT's attention wrapper (q, k gradients / 4, v / 2; CP: q, k held constant)."""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    q, k, v = attention_heads(a, *args[:3])
    bias = attention_bias(a, args[3] if len(args) > 3 else None, q.shape[2], k.shape[2])
    return attention_merge(a, wrap(_eager)(None, q, k, v, bias, attention_scale(a, q.shape[-1])), args[0])


# ---------------------------------------------------------------------------------------------- explicit

class Explicit:
    """LXT 2.1's explicit-mode rule functions (the backward pass carries relevance)."""

    conventions = {"stabilizer": "plus", "bias": "absorbed", "masked_logits": "formula", "masked_rows": "formula"}

    def __call__(self, case) -> dict:
        if case.kind == "model":
            raise Unsupported("LXT 2.1's explicit mode has no patch maps for the zoo's HF models")
        _supported(case)
        torch = _torch()
        g = CaseGraph(case)
        leaves = _leaves(case)
        y = run_graph(g.model, leaves, lambda node, fn, args, env: self.apply(g, node, fn, args, env))[case.output]
        y.backward(torch.from_numpy(case.relevance_out))
        return {n: t.grad.detach().numpy() if t.grad is not None else np.zeros(t.shape)
                for n, t in leaves.items() if n in case.relevance_of}

    def apply(self, g: CaseGraph, node, fn, args, env):
        rules, functional = _lxt_explicit()
        spec = g.spec(node)
        rule, dyn, facts, eps = spec["rule"], dynamic_inputs(spec, args), spec["facts"], g.eps

        def of_dynamic(*d):  # the node as a function of its dynamic operands
            full = list(args)
            for i, t in zip(dyn, d):
                full[i] = t
            return fn(*full)[0]
        if rule == "epsilon":
            return (rules.epsilon_lrp_fn.apply(of_dynamic, eps, *[args[i] for i in dyn]),)
        if rule == "bilinear-uniform":
            return (rules.uniform_epsilon_lrp_fn.apply(of_dynamic, eps, *[args[i] for i in dyn]),)
        if rule == "gate-uniform":
            return (rules.uniform_rule_fn.apply(of_dynamic, *[args[i] for i in dyn]),)
        if rule == "bilinear-cp":
            keep = facts["values"]
            fixed = held(args, keep, dyn)
            return (rules.epsilon_lrp_fn.apply(lambda t: fn(*with_arg(fixed, keep, t))[0], eps, args[keep]),)
        if rule in ("gate-up", "normalizer"):
            keep = facts["up" if rule == "gate-up" else "normalized"]
            fixed = held(args, keep, dyn)
            return (rules.identity_fn.apply(lambda t: fn(*with_arg(fixed, keep, t))[0], args[keep]),)
        if rule == "identity" and node.op_type == "RMSNormalization":
            return (functional.rms_norm_identity_fn.apply(args[0], args[1], _attr(node, "epsilon", 1e-5)),)
        if rule in ("identity", "pass"):
            (i,) = dyn
            return (rules.identity_fn.apply(lambda t: fn(*with_arg(args, i, t))[0], args[i]),)
        if rule == "region":
            source, f = g.region_fn(node, env)
            return (rules.identity_fn.apply(f, env[source]),)
        if rule == "softmax":
            return (functional.softmax_fn.apply(args[0], _attr(node, "axis", -1), None, 1.0, False),)
        if rule == "layernorm":
            beta = args[2] if len(args) > 2 else None
            return (functional.layer_norm_grad_fn.apply(args[0], args[1], beta, _attr(node, "epsilon", 1e-5), eps),)
        if rule in ("attention", "attention-cp"):
            return (_explicit_attention(node, args, eps, rule == "attention-cp"),)
        if rule == "rotary":
            return (rules.epsilon_lrp_fn.apply(lambda t: fn(*with_arg(args, 0, t))[0], eps, args[0]),)
        return fn(*args)  # route, gradient: plain autograd moves relevance by the 0/1 map


def _explicit_attention(node, args, eps, cp):
    """The fused Attention composed of LXT's explicit rules: identity on the scaling, uniform-epsilon on
    q @ k^T and on probs @ v (CP: epsilon on v with probs constant), epsilon on + bias, LXT's softmax."""
    torch = _torch()
    rules, functional = _lxt_explicit()
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    q, k, v = attention_heads(a, *args[:3])
    r = attention_scale(a, q.shape[-1])
    q, k = rules.identity_fn.apply(lambda t: t * r, q), rules.identity_fn.apply(lambda t: t * r, k)
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    bias = attention_bias(a, args[3] if len(args) > 3 else None, q.shape[2], k.shape[2])
    if cp:
        probs = torch.softmax(q.detach() @ k.detach().transpose(-1, -2) + bias, -1)
        y4 = rules.epsilon_lrp_fn.apply(lambda t: probs @ t, eps, v)
    else:
        raw = rules.uniform_epsilon_lrp_fn.apply(lambda x, y: x @ y.transpose(-1, -2), eps, q, k)
        logits = rules.epsilon_lrp_fn.apply(lambda t: t + bias, eps, raw)
        probs = functional.softmax_fn.apply(logits, -1, None, 1.0, False)
        y4 = rules.uniform_epsilon_lrp_fn.apply(torch.matmul, eps, probs, v)
    return attention_merge(a, y4, args[0])


# ---------------------------------------------------------------------------------------------- models

def lxt_vit_gamma_case(case) -> dict:
    """LXT's vision-transformer recipe (``cp-lrp-gamma``: its cp-lrp map, ``monkey_patch_zennit`` and Zennit's
    Gamma on the conv and every Linear; tools/make_zennit_goldens.py's ``vit_recipe``) on the case's feeds, in
    a subprocess (LXT patches globally)."""
    if case.meta.get("zoo") != "vit":
        raise Unsupported("LXT documents the gamma recipe for vision transformers (the zoo's vit)")
    o = case.rule["options"]
    setting = f"{o['conv.gamma']!r},{o['dense.gamma']!r},{o['stabilizer']!r}"
    got = _worker_result(case, "make_zennit_goldens.py", lambda feeds, out: ["--vit-case", setting, feeds, out])
    (rel,) = [v for k, v in got.items() if k.endswith(":relevance")]
    return {case.relevance_of[0]: rel}


def _worker_result(case, tool: str, argv) -> dict:
    """Run ``tools/<tool>`` with ``argv(feeds_path, out_path)`` in a subprocess on the case's inputs (LXT's
    patching is process-global) and return its arrays, checking it explained the case's target."""
    with tempfile.TemporaryDirectory() as tmp:
        feeds, out = Path(tmp) / "feeds.npz", Path(tmp) / "out.npz"
        np.savez(feeds, **case.inputs)
        script = Path(__file__).resolve().parent / tool
        r = subprocess.run([sys.executable, str(script), *argv(str(feeds), str(out))],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"LXT worker {tool} failed: {r.stderr[-1500:]}")
        with np.load(out) as z:
            got = {k: z[k] for k in z.files}
    if got["target"].tolist() != case.meta["target"]:
        raise AssertionError(f"LXT's target {got['target'].tolist()} differs from the case's {case.meta['target']}")
    return got


def lxt_model_case(case) -> dict:
    """A model-level case: tools/make_lxt_goldens.py's worker (LXT's patch map on the zoo model rebuilt
    from its config, float64, seeded with the target logit) on the case's feeds, in a subprocess."""
    if "zoo" not in case.meta:
        raise Unsupported("LXT has no classic-rule composites (Zennit's); see tools/zennit_adapter.py")
    zoo, preset = case.meta["zoo"], case.meta["reflrp"]["preset"]
    if preset == "cp-lrp-gamma":
        return lxt_vit_gamma_case(case)
    got = _worker_result(case, "make_lxt_goldens.py", lambda feeds, out: ["--worker", zoo, preset, out, "--feeds", feeds])
    names = case.relevance_of
    return {w: got[f"{preset}:relevance" + ("" if i == 0 else f":{w}")] for i, w in enumerate(names)}


efficient = Efficient()
explicit = Explicit()
