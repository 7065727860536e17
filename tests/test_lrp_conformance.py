"""Bars of the LRP conformance suite (reflrp.conformance, docs/conformance.md): every rule of every preset
has a case, every convention has variants that differ, regenerating gives identical bytes, reflrp passes
every case its conventions select, a broken adapter fails exactly the cases of the rule it breaks, and
the runner's reports (CLI, JUnit, pytest plugin) say so."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from reflrp.cli import main
from reflrp.conformance import (CONVENTIONS, REFLRP_CONVENTIONS, ConformanceError, ReflrpAdapter, Unsupported,
                                export, junit_xml, load_suite, read_index, run_suite, summary)
from reflrp.presets import PRESETS, composite
from reflrp.rules import RULES, SIGNATURES, Result
from reflrp.rules import classic
from reflrp.testing import rel_err

ROOT = Path(__file__).resolve().parent.parent
# the regenerated subset: every node case and one model-level case of each kind
AGAIN = ["[!m]*", "model/attnlrp/llama", "model/cp-lrp/llama_mask/real-rows", "model/attnlrp/vit/seed-one",
         "model/epsilon-plus-flat/cnn_bn", "model/epsilon-gamma-box/mlp_smooth/zero_bias",
         "model/cp-lrp-gamma/vit/conv0.1.dense0"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("conformance") / "suite"
    export(d)
    return d


@pytest.fixture(scope="module")
def cases(suite):
    return load_suite(suite)


def rules_of(presets) -> set:
    """Every rule a preset can give a node: its role map, its composite's type map and first-layer map."""
    return {r for p in presets.values() for r in (*p.roles.values(), *(e.rule for e in (*p.layers, *p.first)))}


def without_cases(presets, cases) -> set:
    """The rules of ``presets`` that no node case is named for."""
    return rules_of(presets) - {c.rule["name"] for c in cases if c.kind == "node"}


def test_every_rule_of_every_preset_has_a_node_case(cases):
    used = rules_of(PRESETS)
    assert used <= set(RULES)
    assert {"zplus", "alpha-beta", "gamma", "flat", "zbox", "norm", "pass"} <= used  # the composites' maps count
    named = {c.rule["name"] for c in cases if c.kind == "node"}
    exercised = {r for c in cases if c.kind == "node" for r in c.rules}
    assert without_cases(PRESETS, cases) == set(), f"rules of a preset without a case: {sorted(used - named)}"
    assert set(RULES) - named == set()  # every registered rule too (wsquare is in no preset)
    assert used <= exercised
    for c in cases:
        assert c.rule["name"] in c.rules or c.kind == "model", c.name


def test_the_check_for_rules_without_cases_can_fail(cases):
    """The check above finds a rule whose cases are gone, and a composite rule that no case is named for."""
    assert without_cases(PRESETS, [c for c in cases if c.rule["name"] != "zbox"]) == {"zbox"}
    made = composite("made-up", [("conv", "wsquare")], first=[(("conv", "dense"), "flat")])
    assert without_cases({"made-up": made}, [c for c in cases if c.rule["name"] not in ("wsquare", "flat")]) == \
        {"wsquare", "flat"}


def test_every_weight_layer_rule_has_cases_on_every_weight_op_and_every_composite_has_model_cases(cases):
    ops = defaultdict(set)
    for c in cases:
        if c.kind == "node":
            ops[c.rule["name"]] |= {n["op"] for n in c.nodes if n["rule"] == c.rule["name"]} | \
                {n["op"] for n in c.nodes if n["rule"] is None and c.rule["name"] in RULES}
    for rule in RULES:
        if SIGNATURES[rule].layer:
            assert {"Conv", "ConvTranspose", "Gemm", "MatMul"} <= ops[rule], (rule, ops[rule])
            folded = [c for c in cases if c.rule["name"] == rule and "merge-batchnorm" in c.canonizers]
            assert {n["op"] for c in folded for n in c.nodes} >= {"Conv", "Gemm", "ConvTranspose"}, rule
            assert any(c.rule.get("zero_bias") for c in cases if c.rule["name"] == rule) or rule == "flat", rule
    assert {"AveragePool", "GlobalAveragePool", "ReduceMean", "Add", "Sum"} <= ops["norm"]
    assert {"Relu", "BatchNormalization"} <= ops["pass"]
    presets = {c.rule["preset"] for c in cases if c.kind == "model"}
    assert {name for name, p in PRESETS.items() if p.layers} <= presets
    zennit = [c for c in cases if "zennit_check" in c.meta]
    assert len({c.meta["fixture"] for c in zennit}) == 14 and max(c.meta["zennit_check"]["max_rel_err"]
                                                                 for c in zennit) <= 1e-8


def test_every_zoo_model_with_an_lxt_golden_has_model_cases(cases):
    zoo = {p.name[:-len(".lxt.npz")] for p in (ROOT / "models").glob("*.lxt.npz")}
    have = {c.meta["zoo"] for c in cases if c.kind == "model" and "lxt_check" in c.meta}
    assert have == zoo
    for c in cases:
        if c.kind == "model":
            assert c.meta.get("lxt_check", c.meta.get("zennit_check"))["max_rel_err"] <= 1e-6, c.name
            assert c.conventions["seed"] in CONVENTIONS["seed"]


def test_every_convention_has_cases_for_each_value(cases):
    seen = {(k, v) for c in cases for k, v in c.conventions.items()}
    assert seen == {(k, v) for k, values in CONVENTIONS.items() for v in values}


def test_variants_of_a_convention_expect_different_relevance(cases):
    """Cases that differ only in one convention's value must expect different relevance (else the variant
    would not hold a backend to its declared convention)."""
    groups = defaultdict(list)
    for c in cases:
        for key in c.conventions:
            rest = tuple(sorted((k, v) for k, v in c.conventions.items() if k != key))
            if c.kind == "node":
                groups[(c.name.rsplit("/", 1)[0], json.dumps(c.rule, sort_keys=True), key, rest)].append(c)
            elif key == "seed":  # the zoo's fully masked rows have reflrp's convention only (LXT's is its golden)
                model = c.meta.get("fixture") or c.meta["zoo"]
                groups[(model, json.dumps(c.rule, sort_keys=True), "real-rows" in c.name, key, rest)].append(c)
    assert len(groups) > 20
    for (base, *_, key, _), group in groups.items():
        if group[0].kind == "model" and len(group) == 1:  # the seed of 1 only for a few models
            continue
        assert len({c.conventions[key] for c in group}) == len(CONVENTIONS[key]), (base, key)
        a, b = group[0].expected, group[1].expected
        assert max(rel_err(a[n], b[n]) for n in a) > 100 * group[0].tolerance, (base, key)


def _files(root: Path, names) -> dict:
    index = read_index(root)
    paths = [root / e["path"] for e in index["cases"] if e["name"] in names]
    out = {p.relative_to(root).as_posix(): p.read_bytes() for d in paths for p in sorted(d.iterdir())}
    out.update({p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "models").iterdir())})
    return out


def test_regenerating_gives_identical_bytes(suite, tmp_path):
    names = export(tmp_path / "again", only=AGAIN)
    assert len(names) > 300 and sum(n.startswith("model/") for n in names) == 6
    again, first = _files(tmp_path / "again", names), _files(suite, names)
    assert set(again) <= set(first)
    assert [k for k in again if again[k] != first[k]] == []
    i1, i2 = read_index(suite), read_index(tmp_path / "again")
    assert {k: v for k, v in i1.items() if k != "cases"} == {k: v for k, v in i2.items() if k != "cases"}
    assert [e for e in i1["cases"] if e["name"] in names] == i2["cases"]


def test_reflrp_passes_every_case_its_conventions_select(suite, cases):
    outcomes = run_suite(suite, ReflrpAdapter())
    by_status = defaultdict(list)
    for o in outcomes:
        by_status[o.status].append(o)
    assert not by_status["fail"], [(o.name, o.message) for o in by_status["fail"]]
    assert not by_status["unsupported"]
    foreign = {c.name for c in cases if any(REFLRP_CONVENTIONS[k] != v for k, v in c.conventions.items())}
    assert {o.name for o in by_status["skipped"]} == foreign
    assert len(by_status["pass"]) > 150 and max(o.error for o in by_status["pass"]) <= 1e-10


def test_reflrp_passes_without_its_speed_layer(suite):
    outcomes = run_suite(suite, ReflrpAdapter(fast=False), only=["[!m]*", "model/attnlrp/llama_past/real-rows",
                                                                 "model/epsilon-gamma-box/resnet*",
                                                                 "model/cp-lrp-gamma/vit/conv0.25.dense0.05"])
    assert {o.status for o in outcomes} == {"pass", "skipped"}
    assert max(o.error for o in outcomes if o.status == "pass") <= 1e-10


def test_a_broken_adapter_fails_exactly_the_cases_of_its_rule(suite, cases, monkeypatch):
    """Negative control: reflrp with bilinear-uniform's 1/2 dropped fails the cases that exercise it (node
    and model-level) and passes the rest."""
    honest = RULES["bilinear-uniform"]

    def half_dropped(ctx, inputs, outputs, R_out):
        r = honest(ctx, inputs, outputs, R_out)
        return Result([None if p is None else p * sum(ctx.dynamic) for p in r.inputs], loss=r.loss)
    monkeypatch.setitem(RULES, "bilinear-uniform", half_dropped)
    only = ["[!m]*", "model/attnlrp/llama", "model/attnlrp/bert", "model/cp-lrp/llama", "model/cp-lrp/vit"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken rule's books do not close
        outcomes = run_suite(suite, ReflrpAdapter(), only=only)
    applicable = {c.name: c for c in cases if not any(REFLRP_CONVENTIONS[k] != v for k, v in c.conventions.items())}
    failed = {o.name for o in outcomes if o.status == "fail"}
    want = {o.name for o in outcomes if o.name in applicable and "bilinear-uniform" in applicable[o.name].rules}
    assert failed == want
    assert {"model/attnlrp/llama", "model/attnlrp/bert", "bilinear-uniform/softmax-av/eps0"} <= failed
    assert "model/cp-lrp/llama" not in failed and "attention/3d-mha/eps0" not in failed


def gamma_on_the_wrong_parts(ctx, inputs, outputs, R_out):
    """A wrong LRP-gamma: the weights' negative parts amplified where the positive ones belong (``Wg+ = W + g W-``,
    ``Wg- = W + g W+``); otherwise Zennit's rule (reflrp.rules.classic.gamma_rule)."""
    L = classic.Layer(ctx, inputs)
    xp, R, z = ctx.xp, R_out[0], outputs[0]
    g = L.W.dtype.type(ctx.params["gamma"])
    (ap, an), (Wp, Wn), (bp, bn) = classic.split(xp, L.a), classic.split(xp, L.W), classic.split(xp, L.b)
    Wgp, Wgn = L.W + g * Wn, L.W + g * Wp
    bgp, bgn = (None, None) if L.b is None else (L.b + g * bp, L.b + g * bn)
    Gp = xp.where(z > 0, ctx.ratio(R, L.run(ap, Wgp, bgp) + L.run(an, Wgn)), R.dtype.type(0))
    Gn = xp.where(z < 0, ctx.ratio(R, L.run(ap, Wgn, bgn) + L.run(an, Wgp)), R.dtype.type(0))
    P_a, P_b = L.signed(ap, an, Wgp, Wgn, bgp, Gp)
    N_a, N_b = L.signed(ap, an, Wgn, Wgp, bgn, Gn)
    return L.result(P_a + N_a, None if P_b is None else P_b + N_b, 0.0)


def test_a_wrong_gamma_fails_exactly_the_cases_of_gamma(suite, cases, monkeypatch):
    """Negative control of the classic half: gamma on the wrong sign of the weights fails every node and model
    case that exercises gamma with a gamma > 0 (at gamma = 0 both parts are W: nothing to see) and passes the
    others, among them Zennit's box composite on an MLP (no conv: no gamma)."""
    monkeypatch.setitem(RULES, "gamma", gamma_on_the_wrong_parts)
    only = ["gamma/*", "zplus/conv2d-bias/*", "model/epsilon-gamma-box*/cnn_bn*", "model/epsilon-gamma-box/mlp*",
            "model/epsilon-plus/resnet", "model/cp-lrp-gamma/*"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the wrong rule's books do not close
        outcomes = run_suite(suite, ReflrpAdapter(), only=only)
    by_name = {c.name: c for c in cases}
    failed = {o.name for o in outcomes if o.status == "fail"}
    flat_zero = {"model/cp-lrp-gamma/vit/conv0.dense0", "model/cp-lrp-gamma/vit/conv0.dense0.stabilizer1e-15"}
    want = {o.name for o in outcomes if "gamma" in by_name[o.name].rules and o.status != "skipped"} - flat_zero
    assert failed == want
    assert len([n for n in failed if n.startswith("gamma/")]) == len([c for c in cases if c.rule["name"] == "gamma"])
    assert {"model/epsilon-gamma-box/cnn_bn", "model/cp-lrp-gamma/vit/conv0.25.dense0.05"} <= failed
    passed = {o.name for o in outcomes if o.status == "pass"}
    assert {"model/epsilon-gamma-box/mlp", "model/cp-lrp-gamma/vit/conv0.dense0", "zplus/conv2d-bias/default"} <= passed


class _Picky:
    """An adapter that supports no gate, errs on routes and returns nothing for identities."""

    conventions = {"seed": "logit"}

    def __call__(self, case):
        rule = case.rule["name"]
        if rule.startswith("gate"):
            raise Unsupported("no gates here")
        if rule == "route":
            raise ValueError("boom")
        if rule == "identity":
            return {}
        return ReflrpAdapter()(case)


def test_the_runner_reports_each_status_with_its_reason(suite):
    only = ["gate-up/*", "route/reshape", "identity/relu", "softmax/last-axis", "epsilon/matmul/eps0.1.*"]
    outcomes = {o.name: o for o in run_suite(suite, _Picky(), only=only)}
    assert outcomes["gate-up/sigmoid-gate"].status == "unsupported"
    assert outcomes["route/reshape"].status == "fail" and "ValueError: boom" in outcomes["route/reshape"].message
    assert outcomes["identity/relu"].status == "fail" and "no relevance for 'x'" in outcomes["identity/relu"].message
    assert outcomes["softmax/last-axis"].status == "pass"
    assert {outcomes[n].status for n in outcomes if n.startswith("epsilon/")} == {"skipped"}
    table = summary(outcomes.values())
    assert "gate-up" in table and table.splitlines()[-1].split() == ["total", "1", "2", "4", "2"]
    report = ET.fromstring(junit_xml(outcomes.values()))
    assert report.get("tests") == "9" and report.get("failures") == "2" and report.get("skipped") == "6"


def test_cli_export_run_and_junit(tmp_path, capsys):
    d = tmp_path / "suite"
    assert main(["conformance", "export", str(d), "--only", "route/*", "--quiet"]) == 0
    assert main(["conformance", "run", str(d), "--backend", "reflrp.conformance:ReflrpAdapter", "--quiet",
                 "--junit", str(tmp_path / "r.xml")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].split()[:3] == ["total", str(len(load_suite(d))), "0"]
    assert ET.parse(tmp_path / "r.xml").getroot().get("failures") == "0"
    zeros = tmp_path / "zeros.py"
    zeros.write_text("import numpy as np\n"
                     "def adapter(case):\n"
                     "    return {n: np.zeros_like(v) for n, v in case.expected.items()}\n")
    assert main(["conformance", "run", str(d), "--backend", f"{zeros}:adapter", "--quiet"]) == 1
    assert main(["conformance", "run", str(d), "--backend", "no.such.module:x"]) == 2
    assert "cannot import no.such.module" in capsys.readouterr().err
    with pytest.raises(ConformanceError, match="not empty"):
        export(tmp_path, only=["route/*"])


def test_pytest_plugin_runs_a_suite(suite, cases, tmp_path):
    """``pytest --reflrp-suite DIR --reflrp-backend SPEC``: one test per case (here the route and fully masked
    softmax cases, ``-k``), a failure naming the case, its rule and its error; foreign conventions skip."""
    broken = tmp_path / "broken.py"
    broken.write_text("from reflrp.conformance import ReflrpAdapter\n"
                      "class Broken(ReflrpAdapter):\n"
                      "    def __call__(self, case):\n"
                      "        out = super().__call__(case)\n"
                      "        return {n: -r for n, r in out.items()} if case.name == 'route/reshape' else out\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--reflrp-suite", str(suite),
                        "--reflrp-backend", f"{broken}:Broken", "-k", "route or fully"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    n = sum(c.name.startswith("route/") or "fully" in c.name for c in cases)
    assert f"1 failed, {n - 2} passed, 1 skipped" in r.stdout, r.stdout
    assert "route/reshape (route): 'x': relative error 2.000e+00" in r.stdout


def test_a_suite_is_checked_when_read(tmp_path):
    with pytest.raises(ConformanceError, match="no index.json"):
        load_suite(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "reflrp-lrp-conformance", "version": 99}))
    with pytest.raises(ConformanceError, match="newer"):
        load_suite(tmp_path)


def test_case_files_hold_what_case_json_says(cases):
    from onnx import load_tensor, numpy_helper
    for c in cases[:40] + [c for c in cases if c.kind == "model"][:3]:
        for entry in c.meta["inputs"] + c.meta["expected"] + [c.meta["relevance_out"]]:
            a = np.load(c.dir / entry["file"])
            assert list(a.shape) == entry["shape"] and str(a.dtype) == entry["dtype"]
            assert np.array_equal(numpy_helper.to_array(load_tensor(str(c.dir / entry["pb"]))), a, equal_nan=True)
        assert c.model_path.exists()
