"""An LRP conformance suite other backends are tested against: its format, the runner, the reference adapter.

A suite is a directory (``reflrp conformance export DIR``)::

    index.json                  format, version, conventions, rule formulas, one entry per case
    cases/<case>/case.json      the rule (name, parameters, formula), conventions, tolerance, files
    cases/<case>/model.onnx     a one- or few-node float64 model (node cases)
    cases/<case>/input_<i>.npy  the feeds (also as ONNX TensorProto: input_<i>.pb)
    cases/<case>/relevance_out.npy   the relevance arriving at the output (the seed of model cases)
    cases/<case>/expected_<i>.npy    the expected float64 relevance of each attributed tensor
    models/<zoo>.onnx           the zoo models of the model-level cases

Node cases are computed by the dense float64 oracles of :mod:`reflrp.oracle` and cross-checked against
reflrp when written; model-level cases are reflrp's relevance on the zoo, cross-checked against LXT 2.1.

An **adapter** is any callable ``adapter(case) -> {tensor name: relevance}`` (``case`` a :class:`SuiteCase`)
with a ``conventions`` mapping (see :data:`CONVENTIONS`); it raises :class:`Unsupported` for a case its
backend cannot express. A case applies to an adapter when the adapter declares every convention the
case depends on with the case's value; the others are *skipped*. ``reflrp conformance run DIR --backend
package.module:adapter`` (or ``path/to/file.py:adapter``) reports pass / fail / unsupported / skipped per
case and a summary by rule; ``pytest --reflrp-suite DIR --reflrp-backend ...`` does the same as tests.
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import shutil
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from .errors import ReflrpError

FORMAT = "reflrp-lrp-conformance"
VERSION = 1
TOLERANCE = 1e-6  # max |got - expected| / max |expected| per attributed tensor, float64
CROSS_CHECK = 1e-10  # reflrp against the oracle when a node case is written

# Where LRP backends legitimately differ. A case lists the keys its expected values depend on.
CONVENTIONS = MappingProxyType({
    "stabilizer": {"sign": "stab(z) = z + eps * sign(z), sign(0) = +1 (reflrp, Zennit)",
                   "plus": "stab(z) = z + eps (LXT's explicit-mode rules)"},
    "bias": {"absorbed": "a layer's bias (Gemm C, Conv B, a constant summand, LayerNorm beta) is part of the "
                         "denominator z and absorbs its share (reflrp, LXT, Zennit by default)",
             "zeroed": "the bias is left out of the denominator: z = W x (Zennit's zero_params=['bias'])"},
    "masked_logits": {"zero": "softmax logits at or below -65504 are masks and get no relevance (reflrp)",
                      "formula": "x * (R - s sum R) on every finite logit, -inf giving 0 (LXT's explicit softmax)"},
    "masked_rows": {"absorbed": "a softmax row whose every logit is a mask attends to nothing: its relevance is "
                                "absorbed (reflrp)",
                    "formula": "the softmax rule's formula on a fully masked (uniform) row too (LXT)"},
    "seed": {"logit": "the target's relevance starts as the target logit's value (LXT, reflrp's LRP presets)",
             "one": "the target's relevance starts as 1 (Zennit's one-hot attr_output)"},
})
REFLRP_CONVENTIONS = MappingProxyType({"stabilizer": "sign", "bias": "absorbed", "masked_logits": "zero",
                                       "masked_rows": "absorbed", "seed": "logit"})

# Each rule's formula, as docs/rules.md states it (case.json repeats the one it tests).
FORMULAS = MappingProxyType({
    "epsilon": "G = R_y / stab(y); R_i = x_i * vjp_i(G) for each dynamic input; a constant summand (bias) "
               "absorbs c * vjp_c(G)",
    "bilinear-uniform": "G = R_y / (n stab(y)); R_i = x_i * vjp_i(G) for the n dynamic operands",
    "bilinear-cp": "A @ V with A held constant: R_V = V * vjp_V(R_y / stab(y)); A gets nothing",
    "identity": "R_x = R_y (summed over the axes x was broadcast along)",
    "route": "R_x = vjp_x(R_y), the adjoint of a 0/1 map; what lands on fill values or a constant input is "
             "absorbed",
    "gate-uniform": "R_i = R_y / n for the n dynamic factors",
    "gate-up": "all of R_y to the factor that is not an activation output",
    "normalizer": "all of R_y to the normalized operand (the normalizer held constant)",
    "region": "R_source = R_end for an elementwise region (SiLU, GELU); its inner nodes get nothing",
    "softmax": "R_x = x * (R_y - s * sum_axis(R_y)), s = softmax(x)",
    "layernorm": "std held constant: G = R_y / stab(y), Gc = gamma * G / std, R_x = x * (Gc - mean(Gc)); "
                 "beta absorbs beta * G",
    "attention": "the fused op as its decomposition: bilinear-uniform on probs @ v, softmax, epsilon on "
                 "scores + bias (the mask absorbs), bilinear-uniform on q @ k^T",
    "attention-cp": "R_V = v * (probs^T @ (R_y / stab(y))); Q and K get nothing",
    "rotary": "epsilon on the rotation (cos/sin constant), identity on features past rotary_embedding_dim",
    "gradient": "g_x = vjp_x(g_y): the plain gradient (the relevance arrays are gradients)",
    # Zennit 1.0.0's rules (docs/zennit-conventions.md): a weight layer z = W a + b, v+ = max(v, 0), v- = min(v, 0),
    # stab(z) = z + s sign(z) with sign(0) = +1 and s the rule's stabilizer; b = 0 with zero_bias
    "zplus": "zp = W+ a+ + W- a- + b+; G = R / stab(zp); R_a = a+ * W+^T G + a- * W-^T G (b+ absorbs b+ G)",
    "alpha-beta": "zp = W+ a+ + W- a- + b+, zn = W- a+ + W+ a- + b-; Gp = R / stab(zp), Gn = R / stab(zn); "
                  "R_a = alpha (a+ W+^T Gp + a- W-^T Gp) - beta (a+ W-^T Gn + a- W+^T Gn)",
    "gamma": "Wg+ = W + g W+, Wg- = W + g W- (the bias likewise); Gp = [z > 0] R / stab(Wg+ a+ + Wg- a- + b + g b+), "
             "Gn = [z < 0] R / stab(Wg- a+ + Wg+ a- + b + g b-), z = W a + b the layer's output (its bias in even "
             "with zero_bias); R_a = a+ Wg+^T Gp + a- Wg-^T Gp + a+ Wg-^T Gn + a- Wg+^T Gn",
    "flat": "S the layer's connectivity (every weight and input 1, no bias): R_a = S^T (R / stab(S 1))",
    "wsquare": "R_a = (W*W)^T (R / stab((W*W) 1 + b*b)) (the squared bias absorbs)",
    "zbox": "L, H the bounds low, high broadcast to a: d = W a + b - (W+ L + b+) - (W- H + b-); G = R / stab(d); "
            "R_a = a * W^T G - L * W+^T G - H * W-^T G",
    "norm": "epsilon with the stabilizer on a parameter-free linear map (pooling, a sum of dynamic tensors): "
            "R_i = x_i * vjp_i(R / stab(y))",
    "pass": "R_x = R_y (Zennit's Pass: the activation's derivative replaced by 1)",
})


class Unsupported(Exception):
    """Raised by an adapter for a case its backend cannot express (reported, not failed)."""


class ConformanceError(ReflrpError):
    """A suite that cannot be written or read, or a case whose cross-check failed."""


# ---------------------------------------------------------------------------------------------- cases

@dataclass
class Case:
    """A case as it is generated (reflrp.conformance_cases), before it is written."""

    name: str                 # "<rule>/<case>[/<variant>]"
    rule: dict                # {"name": rule, parameter: value, ...}
    model: Any                # an onnx.ModelProto (node cases) or the Path of a zoo model
    inputs: dict
    relevance_out: np.ndarray
    expected: dict            # attributed tensor -> expected float64 relevance
    reflrp: dict              # how reflrp reproduces it: {"preset": ..., "epsilon": ...}
    conventions: dict = field(default_factory=dict)
    kind: str = "node"
    formula: str = ""
    tolerance: float = TOLERANCE
    notes: str = ""
    source: str = "oracle"    # who computed `expected`: "oracle" (reflrp.oracle) or "reflrp" (checked against LXT)
    extra: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # filled at export: the rule of every node, the rules used
    att: Any = field(default=None, repr=False)  # reflrp's attribution, when the generator already has it


@dataclass
class SuiteCase:
    """A case read from a suite directory: what an adapter receives."""

    name: str
    dir: Path
    meta: dict  # case.json

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def rule(self) -> dict:
        return self.meta["rule"]

    @property
    def rules(self) -> list:
        """Every rule the case exercises (those that received relevance)."""
        return self.meta["rules"]

    @property
    def conventions(self) -> dict:
        return self.meta["conventions"]

    @property
    def nodes(self) -> list:
        """The rule of every node (node cases): name, op, rule, dynamic inputs, plan facts."""
        return self.meta.get("nodes", [])

    @property
    def model_path(self) -> Path:
        return (self.dir / self.meta["model"]).resolve()

    @property
    def output(self) -> str:
        return self.meta["output"]

    @property
    def relevance_of(self) -> list:
        return [e["name"] for e in self.meta["expected"]]

    @property
    def tolerance(self) -> float:
        return self.meta["tolerance"]

    @property
    def inputs(self) -> dict:
        return {e["name"]: np.load(self.dir / e["file"]) for e in self.meta["inputs"]}

    @property
    def relevance_out(self) -> np.ndarray:
        return np.load(self.dir / self.meta["relevance_out"]["file"])

    @property
    def expected(self) -> dict:
        return {e["name"]: np.load(self.dir / e["file"]) for e in self.meta["expected"]}

    @property
    def canonizers(self) -> list:
        """Graph rewrites before the rules: ``merge-batchnorm`` (every BatchNormalization folded into the
        Conv / Gemm before it, Zennit's MergeBatchNorm), ``residual-sum`` (Zennit's ResNet canonizer:
        the residual addition is a Sum layer with the norm rule); none for most cases."""
        return self.meta.get("canonizers", [])


def folder_of(name: str) -> str:
    """A case's folder: its name with '/' as '--'."""
    return name.replace("/", "--")


def _check_name(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
    if not name or set(name) - allowed:
        raise ConformanceError(f"case name {name!r}: use letters, digits and . _ - / only")


def selected(name: str, only) -> bool:
    """Does ``name`` match one of the globs ``only`` (None: every case)?"""
    return only is None or any(fnmatch.fnmatchcase(name, pat) for pat in only)


# ---------------------------------------------------------------------------------------------- writing

def _save(path: Path, array) -> dict:
    """``array`` as ``path`` (.npy) and ``path`` with suffix .pb (an ONNX TensorProto); its description."""
    from onnx import numpy_helper
    a = np.ascontiguousarray(array)
    np.save(path, a, allow_pickle=False)
    path.with_suffix(".pb").write_bytes(numpy_helper.from_array(a, path.stem).SerializeToString())
    return {"file": path.name, "pb": path.with_suffix(".pb").name, "shape": list(a.shape), "dtype": str(a.dtype)}


def _json(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_case(root: Path, case: Case) -> dict:
    """Write ``case`` under ``root/cases``; returns its index entry."""
    _check_name(case.name)
    d = root / "cases" / folder_of(case.name)
    d.mkdir(parents=True)
    shared = case.extra.get("model_file")  # a model rewritten for its cases (float64, exact constants)
    if isinstance(case.model, Path) or shared:  # a zoo model, shared by its cases
        (root / "models").mkdir(exist_ok=True)
        name = shared or case.model.name
        target = root / "models" / name
        if not target.exists():
            if isinstance(case.model, Path):
                shutil.copyfile(case.model, target)
            else:
                target.write_bytes(case.model.SerializeToString())
        model = f"../../models/{name}"
    else:
        (d / "model.onnx").write_bytes(case.model.SerializeToString())
        model = "model.onnx"
    output = case.extra.get("output") or case.model.graph.output[0].name
    meta = {
        "format": FORMAT, "version": VERSION, "name": case.name, "kind": case.kind, "rule": case.rule,
        "formula": case.formula or FORMULAS.get(case.rule["name"], ""), "conventions": case.conventions,
        "tolerance": case.tolerance, "model": model, "output": output,
        "inputs": [{"name": n, **_save(d / f"input_{i}.npy", v)} for i, (n, v) in enumerate(case.inputs.items())],
        "relevance_out": _save(d / "relevance_out.npy", case.relevance_out),
        "expected": [{"name": n, **_save(d / f"expected_{i}.npy", np.asarray(v, dtype=np.float64))}
                     for i, (n, v) in enumerate(case.expected.items())],
        "expected_by": case.source, "reflrp": case.reflrp, "notes": case.notes,
        **case.facts, **{k: v for k, v in case.extra.items() if k not in ("output", "model_file")},
    }
    (d / "case.json").write_text(_json(meta))
    return {"name": case.name, "path": f"cases/{folder_of(case.name)}", "kind": case.kind,
            "rule": case.rule["name"], "rules": meta["rules"], "conventions": case.conventions}


def _prepare_dir(root: Path) -> None:
    """An empty directory, or a suite written before (its index, cases and models are replaced)."""
    if root.exists() and any(root.iterdir()):
        index = root / "index.json"
        if not index.exists() or json.loads(index.read_text()).get("format") != FORMAT:
            raise ConformanceError(f"{root} is not empty and holds no conformance suite: choose an empty directory")
        for sub in ("cases", "models"):
            shutil.rmtree(root / sub, ignore_errors=True)
        index.unlink()
    root.mkdir(parents=True, exist_ok=True)


def export(directory, models_dir=None, only=None, progress: Callable | None = None) -> list[str]:
    """Write the suite to ``directory``: every node case and, when ``models_dir`` holds the zoo with its
    LXT goldens, the model-level cases. ``only``: globs of case names. Each node case is cross-checked
    against reflrp where its conventions are reflrp's (:data:`CROSS_CHECK`). Returns the case names."""
    from . import conformance_cases as cc
    from .version import __version__
    root = Path(directory)
    _prepare_dir(root)
    entries = []
    for case in cc.all_cases(models_dir, only):
        cc.complete(case)
        entries.append(write_case(root, case))
        if progress:
            progress(case.name)
    index = {"format": FORMAT, "version": VERSION, "generated_by": f"reflrp {__version__}",
             "tolerance": TOLERANCE, "conventions": dict(CONVENTIONS), "reflrp_conventions": dict(REFLRP_CONVENTIONS),
             "formulas": dict(FORMULAS), "cases": entries}
    (root / "index.json").write_text(_json(index))
    return [e["name"] for e in entries]


# ---------------------------------------------------------------------------------------------- reading

def read_index(directory) -> dict:
    path = Path(directory) / "index.json"
    if not path.exists():
        raise ConformanceError(f"{directory}: no index.json (write a suite with 'reflrp conformance export DIR')")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ConformanceError(f"{path}: not a {FORMAT} suite")
    if index.get("version", 0) > VERSION:
        raise ConformanceError(f"{path}: suite version {index['version']} is newer than this runner's {VERSION}")
    return index


def load_suite(directory, only=None) -> list[SuiteCase]:
    """The cases of the suite in ``directory`` (``only``: globs of case names)."""
    root = Path(directory)
    out = []
    for e in read_index(root)["cases"]:
        if selected(e["name"], only):
            d = root / e["path"]
            out.append(SuiteCase(e["name"], d, json.loads((d / "case.json").read_text())))
    return out


# ---------------------------------------------------------------------------------------------- adapters

def resolve_adapter(spec: str):
    """``package.module:attr`` or ``path/to/file.py:attr`` -> the adapter (a class is instantiated)."""
    if ":" not in spec:
        raise ConformanceError(f"backend {spec!r}: use package.module:adapter or path/to/file.py:adapter")
    where, attr = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.exists():
            raise ConformanceError(f"backend {spec!r}: no file {where}")
        sp = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(sp)
        sp.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConformanceError(f"backend {spec!r}: cannot import {where} ({exc})") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConformanceError(f"backend {spec!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj


def conventions_of(adapter) -> dict:
    return dict(getattr(adapter, "conventions", None) or {})


def inapplicable(case: SuiteCase, conventions: dict) -> str | None:
    """Why ``case`` does not apply to a backend with ``conventions`` (None: it applies)."""
    for key, value in sorted(case.conventions.items()):
        have = conventions.get(key)
        if have != value:
            return f"convention {key}={value} (the backend declares {key}={have})"
    return None


# ---------------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    """One case's result: ``status`` is pass, fail, unsupported or skipped."""

    name: str
    rule: str
    status: str
    error: float | None = None  # the worst relative error over the attributed tensors
    message: str = ""
    seconds: float = 0.0


def compare(case: SuiteCase, got) -> tuple[float, str]:
    """The worst relative error of ``got`` against the expected relevance, and what went wrong."""
    from .testing import rel_err
    if not isinstance(got, dict):
        return float("inf"), f"the adapter returned {type(got).__name__}, not a dict of tensor name -> relevance"
    worst, notes = 0.0, []
    for name, want in case.expected.items():
        if name not in got or got[name] is None:
            return float("inf"), f"no relevance for {name!r}"
        have = np.asarray(got[name], dtype=np.float64)
        if have.shape != want.shape:
            return float("inf"), f"{name!r}: shape {have.shape}, expected {want.shape}"
        err = rel_err(have, want)
        worst = max(worst, err)
        if err > case.tolerance:
            notes.append(f"{name!r}: relative error {err:.3e}")
    return worst, "; ".join(notes)


def run_case(case: SuiteCase, adapter) -> Outcome:
    """Run one case through ``adapter`` and judge it."""
    why = inapplicable(case, conventions_of(adapter))
    if why:
        return Outcome(case.name, case.rule["name"], "skipped", message=why)
    t0 = time.perf_counter()
    try:
        got = adapter(case)
    except Unsupported as exc:
        return Outcome(case.name, case.rule["name"], "unsupported", message=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # any other failure of the backend is the case's failure, with its reason
        return Outcome(case.name, case.rule["name"], "fail", message=f"{type(exc).__name__}: {exc}"[:500],
                       seconds=time.perf_counter() - t0)
    err, note = compare(case, got)
    status = "pass" if err <= case.tolerance else "fail"
    return Outcome(case.name, case.rule["name"], status, err, note, time.perf_counter() - t0)


def run_suite(directory, adapter, only=None, progress: Callable | None = None) -> list[Outcome]:
    outcomes = []
    for case in load_suite(directory, only):
        outcomes.append(run_case(case, adapter))
        if progress:
            progress(outcomes[-1])
    return outcomes


STATUSES = ("pass", "fail", "unsupported", "skipped")


def summary(outcomes) -> str:
    """A table by rule: how many cases passed, failed, were unsupported or skipped."""
    by_rule: dict = {}
    for o in outcomes:
        by_rule.setdefault(o.rule, Counter())[o.status] += 1
    rows = [("rule",) + STATUSES] + [(r,) + tuple(str(c[s]) for s in STATUSES) for r, c in sorted(by_rule.items())]
    total = Counter(o.status for o in outcomes)
    rows.append(("total",) + tuple(str(total[s]) for s in STATUSES))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def junit_xml(outcomes, suite: str = FORMAT) -> bytes:
    """The outcomes as a JUnit XML report (classname: the rule)."""
    counts = Counter(o.status for o in outcomes)
    root = ET.Element("testsuite", name=suite, tests=str(len(outcomes)), failures=str(counts["fail"]),
                      errors="0", skipped=str(counts["unsupported"] + counts["skipped"]),
                      time=f"{sum(o.seconds for o in outcomes):.3f}")
    for o in outcomes:
        tc = ET.SubElement(root, "testcase", classname=o.rule, name=o.name, time=f"{o.seconds:.3f}")
        if o.status == "fail":
            ET.SubElement(tc, "failure", message=o.message or f"relative error {o.error:.3e}").text = o.message
        elif o.status in ("unsupported", "skipped"):
            ET.SubElement(tc, "skipped", message=f"{o.status}: {o.message}")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def line(o: Outcome) -> str:
    """One outcome as a line of the runner's report."""
    err = "" if o.error is None else f"  {o.error:.2e}"
    return f"{o.status.upper():<11s} {o.name}{err}" + (f"  ({o.message})" if o.message else "")


# ---------------------------------------------------------------------------------------------- reflrp

def reflrp_call(r: dict) -> tuple[dict, dict]:
    """How reflrp reproduces a case (its case.json ``reflrp``): the keyword arguments of ``reflrp.load`` and
    of ``reflrp.explain`` (preset, epsilon, and where the case names them rules=, options=, fold_batchnorm)."""
    load = {"fold_batchnorm": True} if r.get("fold_batchnorm") else {}
    call = {"preset": r["preset"], "epsilon": r.get("epsilon")}
    if r.get("rules"):
        call["rules"] = {k: tuple(v) if isinstance(v, list) else v for k, v in r["rules"].items()}
    if r.get("options"):
        call["options"] = dict(r["options"])
    return load, call


class ReflrpAdapter:
    """The reference backend: reflrp itself under its own conventions (it passes every case they select).
    It checks that its plan gives every node the rule the case names."""

    conventions = REFLRP_CONVENTIONS

    def __init__(self, fast: bool | None = None):
        self.fast = fast  # reflrp's speed layer (None: its default); the plain path with False

    def __call__(self, case: SuiteCase) -> dict:
        from .explain import explain
        from .model import load
        how, call = reflrp_call(case.meta["reflrp"])
        with warnings.catch_warnings():  # Zennit's box composite takes its bounds on a model without a conv too
            warnings.filterwarnings("ignore", "options.*reaches no node")
            att = explain(load(str(case.model_path), **how), case.inputs, target=case.relevance_out, dtype="float64",
                          wrt=case.relevance_of, keep=(), fast=self.fast, **call)
        planned = {p.node.name: p.rule for p in att.plan.nodes}
        for n in case.nodes:
            if planned.get(n["name"]) != n["rule"]:
                raise AssertionError(f"node {n['name']!r}: reflrp plans {planned.get(n['name'])!r}, the case "
                                     f"names {n['rule']!r}")
        return {w: np.asarray(att.relevance[w]) for w in case.relevance_of}


reflrp_adapter = ReflrpAdapter()
