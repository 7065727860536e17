"""Issue 9 bar 1 on our own corpus: every one of >= 1,000 mutated models, feeds and arguments has its
declared outcome (a typed ReflrpError of the right class naming the culprit, or a finite result equal
to onnxruntime with closing books). See tests/fuzz_corpus.py for the cases and what each expects;
``python tools/fuzz_report.py`` prints the same table with a per-case alarm for hangs."""
from __future__ import annotations

import numpy as np
import pytest

import reflrp
from fuzz_corpus import (OUTCOMES, Case, Expect, Workspace, books_close, build_corpus, compare_arrays, forward_equals,
                         judge, run_case, summary)
from zoo import feeds, model


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(seed=0)


def test_corpus_is_large_deterministic_and_mixed(corpus):
    assert len(corpus) >= 1000
    assert [c.id for c in build_corpus(seed=0)] == [c.id for c in corpus]
    families = {c.family for c in corpus}
    for prefix in ("model.", "feed.", "args.", "graph.", "cli"):
        assert any(f.startswith(prefix) for f in families), prefix


def test_every_case_has_its_declared_outcome(corpus, tmp_path):
    ws = Workspace(tmp_path)
    results = [(case, *run_case(case, ws)) for case in corpus]
    if any(outcome != "ok" for _, outcome, _ in results):
        pytest.fail("\n" + summary(results), pytrace=False)


# The judge itself must be able to fail: each outcome class from a made-up result.

def _ok(result):
    """always fine"""
    return None


@pytest.mark.parametrize("expect, exc, result, outcome", [
    (Expect((reflrp.FeedError,)), reflrp.FeedError("input 'x' contains NaN"), None, "ok"),
    (Expect((reflrp.FeedError,), "'x'"), reflrp.FeedError("some input contains NaN"), None, "wrong_error"),
    (Expect((reflrp.FeedError,)), reflrp.RuleError("no rule"), None, "wrong_error"),
    (Expect((reflrp.FeedError,)), ValueError("boom"), None, "untyped"),
    (Expect((reflrp.FeedError,)), None, {"y": np.ones(2)}, "accepted_invalid"),
    (Expect((reflrp.FeedError,)), None, {"y": np.asarray([1.0, np.nan])}, "silent_nonfinite"),
    (Expect(check=_ok), reflrp.KernelError("failed"), None, "refused_valid"),
    (Expect(check=_ok), KeyError("to"), None, "untyped"),
    (Expect(check=_ok), None, {"y": np.ones(2)}, "ok"),
    (Expect(check=forward_equals([np.ones(2)], ["y"])), None, {"y": np.ones(2) * 1.001}, "mismatch"),
    (Expect(check=forward_equals([np.ones(2)], ["y"])), None, {"y": np.ones(3)}, "mismatch"),
    (Expect(check=forward_equals([np.asarray([np.nan, 1.0])], ["y"])), None, {"y": np.asarray([np.nan, 1.0])}, "ok"),
    (Expect(check=forward_equals([np.asarray([np.nan, 1.0])], ["y"])), None, {"y": np.asarray([0.0, 1.0])}, "mismatch"),
])
def test_judge_sorts_outcomes(expect, exc, result, outcome):
    assert judge(expect, exc, result)[0] == outcome
    assert outcome in OUTCOMES


def test_compare_arrays_checks_dtype_and_infinities():
    assert compare_arrays("y", np.ones(2, np.float32), np.ones(2, np.float32)) is None
    assert compare_arrays("y", np.ones(2, np.float64), np.ones(2, np.float32))[0] == "mismatch"
    assert compare_arrays("y", np.asarray([np.inf]), np.asarray([-np.inf]))[0] == "mismatch"
    assert compare_arrays("y", np.asarray([1, 2]), np.asarray([1, 3]))[0] == "mismatch"


def test_books_check_catches_open_books_and_nan():
    att = reflrp.explain(model("cnn"), feeds("cnn"))
    assert books_close()(att) is None
    att.relevance["x"] = att.relevance["x"] * np.nan
    assert books_close()(att)[0] == "silent_nonfinite"


def test_a_case_runs_build_act_expect(tmp_path):
    case = Case("demo", "demo", lambda ws: {"v": 1}, lambda s: s["v"] + 1,
                lambda ws, s: Expect(check=lambda r: None if r == 2 else ("mismatch", str(r))))
    assert run_case(case, Workspace(tmp_path)) == ("ok", "")
