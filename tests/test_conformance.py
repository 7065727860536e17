"""Bar: the ONNX backend node suite, every case whose ops and element types reflrp supports."""
from __future__ import annotations

import pytest

import reflrp
from conformance import eligible, load_cases, run_case

# Cases that fail on purpose, with the reason. A case fixed must leave this list (the test checks).
KNOWN_FAILURES = {
    "test_batchnorm_epsilon_training_mode": "training-mode BatchNormalization (running statistics) is not supported",
    "test_batchnorm_example_training_mode": "training-mode BatchNormalization (running statistics) is not supported",
    "test_training_dropout": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_default": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_default_mask": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_mask": "training-mode Dropout is random; reflrp runs inference graphs",
}


@pytest.fixture(scope="module")
def results():
    supported = set(reflrp.supported_ops())
    cases = [c for c in load_cases() if eligible(c, supported)]
    return {c.name: run_case(c) for c in cases}


def test_node_suite_pass_rate(results):
    failed = {name: why for name, why in results.items() if why}
    rate = 1 - len(failed) / len(results)
    assert len(results) > 1000, f"only {len(results)} eligible cases: did the loader change?"
    assert rate >= 0.98, f"pass rate {rate:.4f}; failures: {failed}"


def test_failures_are_exactly_the_known_ones(results):
    failed = {name for name, why in results.items() if why}
    unexpected = {n: results[n] for n in failed - set(KNOWN_FAILURES)}
    fixed = set(KNOWN_FAILURES) - failed
    assert not unexpected, f"new failures: {unexpected}"
    assert not fixed, f"these pass now, remove them from KNOWN_FAILURES: {fixed}"


def test_every_registered_op_has_a_passing_forward_case(results):
    """A kernel registered without a conformance case that exercises it (and passes) fails here."""
    supported = set(reflrp.supported_ops())
    passing = {c.name for c in load_cases() if eligible(c, supported) and not results.get(c.name)}
    covered = {n.op_type for c in load_cases() if c.name in passing for n in c.model.graph.node}
    assert supported <= covered, f"ops without a passing node-suite case: {sorted(supported - covered)}"
