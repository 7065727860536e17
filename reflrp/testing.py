"""Assertions for other LRP backends' test suites, checked against reflrp goldens, and a pytest plugin.

In three lines (pytest)::

    from reflrp.testing import assert_relevance_close
    def test_my_backend(reflrp_golden):            # fixture: a pytest plugin installed with reflrp
        golden = reflrp_golden("goldens/llama.golden.npz")
        assert_relevance_close(my_relevance, golden)

The plugin also runs the LRP conformance suite (docs/conformance.md) as tests, one per case::

    pytest --reflrp-suite SUITE_DIR --reflrp-backend package.module:adapter
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .golden import compare, read_golden


def rel_err(got, want) -> float:
    """``max |got - want| / max |want|`` in float64 (``max |got|`` where ``want`` is all zero; infinite
    when ``got`` has NaN/Inf or the shapes differ): the one relative error the tests and tools use."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    diff = float(np.max(np.abs(got - want), initial=0.0))
    scale = float(np.max(np.abs(want), initial=0.0))
    return diff / scale if scale > 0 else float(np.max(np.abs(got), initial=0.0))


def _golden_relevance(golden: Any) -> dict:
    if isinstance(golden, (str, Path)):
        return read_golden(golden)[0]
    if isinstance(golden, dict):
        return golden
    if hasattr(golden, "relevance") and hasattr(golden, "wrt"):
        return {w: np.asarray(golden.relevance[w]) for w in golden.wrt}
    raise TypeError(f"golden must be a path, a dict of arrays or an Attribution, not {type(golden).__name__}")


def assert_relevance_close(candidate: Any, golden: Any, rtol: float = 1e-5, atol: float = 0.0) -> None:
    """Assert ``candidate`` (array, or dict name -> array) equals the golden relevance.

    A bare array is compared with the golden's only (or first) attributed tensor. Passes when
    ``max |c - g| <= atol + rtol * max |g|`` for every golden tensor; the message lists each
    tensor's max error, relative error and correlation."""
    gold = _golden_relevance(golden)
    if not isinstance(candidate, dict):
        candidate = {next(iter(gold)): candidate}
        gold = {next(iter(gold)): next(iter(gold.values()))}
    rows = compare(candidate, gold, rtol=rtol, atol=atol)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        lines = [f"{r['tensor']}: " + (r["note"] or f"max |err| {r['max_abs']:.3e}, rel {r['max_rel']:.3e}, "
                                       f"corr {r['corr']:.6f}") for r in bad]
        raise AssertionError(f"relevance differs from the golden (rtol={rtol}, atol={atol}):\n  " + "\n  ".join(lines))


def assert_conserves(attribution: Any, rtol: float = 1e-9, include_absorbed: bool = True) -> None:
    """Assert the conservation books of a reflrp :class:`~reflrp.Attribution` close.

    Every node's account must close (in = out + absorbed + loss + deficit) to ``rtol``, and the
    totals: target = at inputs + absorbed + loss + deficit (``include_absorbed=False`` demands
    target = at inputs, i.e. a fully conservative attribution)."""
    c = attribution.conservation
    if c.max_residual > rtol:
        raise AssertionError(f"a node's relevance account does not close: residual {c.max_residual:.3e} > {rtol}")
    total = c.at_wrt + (c.absorbed + c.loss + c.deficit if include_absorbed else 0.0)
    if abs(total - c.target) > rtol * max(abs(c.target), 1e-300):
        raise AssertionError(f"relevance not conserved: target {c.target:.12e}, accounted {total:.12e}\n{c.text()}")


try:  # a pytest plugin (entry point pytest11 in pyproject.toml): the fixture is there once reflrp is installed
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture
    def reflrp_golden():
        """Load a golden file: ``reflrp_golden(path) -> {tensor name: float64 relevance}``."""
        return lambda path: read_golden(path)[0]

    def pytest_addoption(parser):
        group = parser.getgroup("reflrp", "reflrp LRP conformance suite")
        group.addoption("--reflrp-suite", metavar="DIR", help="run the LRP conformance suite in DIR as tests")
        group.addoption("--reflrp-backend", metavar="SPEC",
                        help="the adapter under test: package.module:adapter or path/to/file.py:adapter")

    def pytest_configure(config):
        """With --reflrp-suite, collect the suite (alone, unless paths were given on the command line)."""
        suite = config.getoption("--reflrp-suite", None)
        if not suite:
            return
        if not config.getoption("--reflrp-backend", None):
            raise pytest.UsageError("--reflrp-suite needs --reflrp-backend package.module:adapter")
        if getattr(getattr(config, "args_source", None), "name", "ARGS") == "ARGS":
            config.args.append(suite)
        else:  # testpaths or the invocation directory: the suite replaces them
            config.args[:] = [suite]

    def pytest_collect_file(file_path, parent):
        suite = parent.config.getoption("--reflrp-suite", None)
        if suite and file_path.name == "index.json" and file_path.parent.resolve() == Path(suite).resolve():
            return SuiteFile.from_parent(parent, path=file_path)
        return None

    class SuiteFile(pytest.File):
        """The suite's index.json: one test item per case."""

        def collect(self):
            from .conformance import load_suite, resolve_adapter
            adapter = resolve_adapter(self.config.getoption("--reflrp-backend"))
            for case in load_suite(self.path.parent):
                yield SuiteItem.from_parent(self, name=case.name, case=case, adapter=adapter)

    class SuiteItem(pytest.Item):
        """One conformance case: fails on a relevance beyond the tolerance, skips when unsupported or when
        the backend's conventions do not select it."""

        def __init__(self, *, case, adapter, **kw):
            super().__init__(**kw)
            self.case, self.adapter = case, adapter

        def runtest(self):
            from .conformance import run_case
            o = run_case(self.case, self.adapter)
            if o.status in ("unsupported", "skipped"):
                pytest.skip(f"{o.status}: {o.message}")
            if o.status == "fail":
                raise AssertionError(o.message or f"relative error {o.error:.3e} > {self.case.tolerance:g}")

        def repr_failure(self, excinfo):
            if isinstance(excinfo.value, AssertionError):
                return f"{self.case.name} ({self.case.rule['name']}): {excinfo.value}"
            return super().repr_failure(excinfo)

        def reportinfo(self):
            return self.path, None, self.case.name
