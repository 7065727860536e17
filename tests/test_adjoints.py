"""Every registered adjoint against central finite differences of its own forward kernel, in float64.

For a case (tests/adjoint_cases.py: op, inputs, attributes, opset) and random cotangents ``G`` with
``K = 2`` targets stacked on a leading axis, the adjoint's gradient of every float input must equal
``d/dx sum_o <G[o][k], f_o(x)>`` by central differences (step 1e-6 relative) to 1e-6 relative
(max |vjp - fd| / max |fd|), with shape exactly ``(K,) + x.shape`` and dtype float64. Integer and
boolean inputs must get None; a float input may get None only where the differences are exactly 0
(Dropout's ratio) or it is listed below. The adjoint must leave its arguments unchanged and give the
same gradient when that input alone is asked for. The tests are parametrized over the op registry: a
newly registered op with a derivative and no case here fails ``test_adjoint_matches_finite_differences``.

Run with ``-s`` to see the worst relative error per op.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from reflrp import fast
from reflrp.errors import UnsupportedOpError
from reflrp.ops import kinds, record, records
from adjoint_cases import CASES, K, Case, cases_of, finite_difference, outputs_of, rng_for
from zoo import rel_err

TOL = 1e-6

# Where an adjoint is deliberately partial. Each entry is checked: the input really gets None, the
# output's cotangent really raises UnsupportedOpError (so a stale entry fails).
NO_GRADIENT_INPUTS = {
    # cos/sin caches are constant position tables in every model that reaches reflrp
    "RotaryEmbedding": {1: "cos_cache", 2: "sin_cache"},
}
NO_GRADIENT_OUTPUTS = {
    "LayerNormalization": {1: "Mean", 2: "InvStdDev"},  # training-only statistics
    "Attention": {3: "qk_matmul_output"},  # a diagnostic output
}
UNSUPPORTED_BRANCHES = [  # attribute variants whose adjoint raises instead of guessing
    # ScatterND's multiplicative / extremal reductions: no model reflrp runs uses them
    Case("ScatterND", [np.ones((2, 3)), np.array([[0, 1]]), np.ones(1)], dict(reduction=r), label=f"reduction={r}")
    for r in ("mul", "max", "min")
] + [
    # Einsum with an ellipsis or a repeated subscript (a diagonal) in one operand
    Case("Einsum", [np.ones((2, 3, 4)), np.ones((4, 2))], dict(equation="...j,jk->...k"), label="ellipsis"),
    Case("Einsum", [np.ones((3, 3))], dict(equation="ii->i"), label="diagonal"),
]
# Piecewise constant ops: their derivative is 0 wherever it exists, so their cases check zeros.
PIECEWISE_CONSTANT = {"Ceil", "Floor", "Round", "Sign"}
# Registered non-constant ops with no finite-difference case (say why when adding one).
_QUANTIZED = "integer tensors in and out: no finite differences; their straight-through adjoints are tested in tests/test_quantized.py"
NO_CASE: dict[str, str] = {op: _QUANTIZED for op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                                      "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")}
# an intervention's user function: its adjoint is the identity by definition (reflrp.interventions)
NO_CASE["Apply"] = "a user function (interventions): reflrp passes gradients through it unchanged, by definition"
NO_CASE.update({op: "control flow: no adjoint (explaining through it is a RuleError, tests/test_control_flow.py)"
                for op in ("If", "Loop", "Scan")})

DIFFERENTIABLE = [op for op, rec in records().items() if rec.kind != kinds.CONSTANT]
WORST: dict[str, float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:
        print(f"\nworst relative error per op ({len(WORST)} ops, {len(CASES)} cases):")
        for op, err in sorted(WORST.items()):
            print(f"  {op:<24s} {err:.2e}")


def is_float(x) -> bool:
    return x is not None and x.dtype.kind == "f"


def cotangents(case: Case, outputs: tuple) -> list:
    """Random ``(K,) + shape`` cotangents for the outputs that receive one (None for the others)."""
    skip = NO_GRADIENT_OUTPUTS.get(case.op, {})
    chosen = case.grad_outputs if case.grad_outputs is not None else [
        o for o, y in enumerate(outputs) if is_float(y) and o not in skip]
    rng = rng_for(case.id + ":G")
    return [rng.standard_normal((K,) + y.shape) if o in chosen else None for o, y in enumerate(outputs)]


def vector_jacobian(adjoint, case: Case, G, outputs, need):
    grads = list(adjoint(np, list(G), list(case.inputs), list(outputs), dict(case.attrs), tuple(need)))
    assert len(grads) <= len(case.inputs), f"{case.id}: {len(grads)} gradients for {len(case.inputs)} inputs"
    return grads + [None] * (len(case.inputs) - len(grads))


def check_case(case: Case, adjoint=None) -> dict[int, float]:
    """Assert the adjoint of ``case`` against finite differences; return the relative error per input."""
    rec = record(case.op)
    kernel = rec.kernel_for(case.opset)
    adjoint = adjoint or rec.adjoint_for(case.opset)
    outputs = outputs_of(kernel, case.inputs, case.attrs)
    G = cotangents(case, outputs)
    before = [None if x is None else x.copy() for x in list(case.inputs) + G]
    grads = vector_jacobian(adjoint, case, G, outputs, [x is not None for x in case.inputs])
    for x, kept in zip(list(case.inputs) + G, before):
        assert x is None or np.array_equal(x, kept), f"{case.id}: the adjoint changed its inputs or cotangents"
    errors, moved = {}, False
    for i, (x, g) in enumerate(zip(case.inputs, grads)):
        where = f"{case.id} input {i}"
        if not is_float(x):
            assert g is None, f"{where} ({None if x is None else x.dtype}) is not differentiable but got a gradient"
            continue
        exempt = i in NO_GRADIENT_INPUTS.get(case.op, {})
        if exempt:
            assert g is None, f"{where} is listed in NO_GRADIENT_INPUTS but gets a gradient: remove the entry"
            continue
        if case.wrt is not None and i not in case.wrt:
            continue
        fd = finite_difference(kernel, list(case.inputs), case.attrs, i, G)
        moved |= bool(fd.any())
        if g is None:  # no gradient is right only where the output does not depend on the input
            assert not fd.any(), f"{where}: the adjoint gives no gradient, finite differences max {abs(fd).max():.3e}"
            continue
        assert g.shape == (K,) + x.shape, f"{where}: gradient shape {g.shape}, expected {(K,) + x.shape}"
        assert g.dtype == np.float64, f"{where}: gradient dtype {g.dtype}"
        errors[i] = rel_err(g, fd)
        assert errors[i] <= TOL, f"{where}: relative error {errors[i]:.3e} > {TOL:g} against finite differences"
        alone = vector_jacobian(adjoint, case, G, outputs, [j == i for j in range(len(case.inputs))])[i]
        assert alone is not None and np.array_equal(alone, g), f"{where}: asked alone, the adjoint gives another gradient"
    assert moved or case.op in PIECEWISE_CONSTANT, f"{case.id}: no checked input moves the output (a vacuous case)"
    return errors


@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_adjoint_matches_finite_differences(op):
    if op in NO_CASE:
        pytest.skip(NO_CASE[op])
    cases = cases_of(op)
    assert cases, f"{op} is registered as differentiable but has no case in tests/adjoint_cases.py"
    failures = []
    for case in cases:
        try:
            WORST[op] = max([WORST[op], *check_case(case).values()])
        except Exception as exc:  # report every failing case of the op, not only the first
            failures.append(f"{case.id}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", sorted(fast.ADJOINTS))
def test_fast_adjoints_match_finite_differences(op):
    """The speed layer's adjoints are checked on the same cases as the plain ones."""
    assert cases_of(op), f"the fast layer has an adjoint for {op}, which has no case"
    failures = []
    for case in cases_of(op):
        try:
            check_case(case, fast.ADJOINTS[op])
        except Exception as exc:
            failures.append(f"{case.id}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", sorted(records()))
def test_every_version_has_an_adjoint_and_a_case(op):
    """Non-constant ops have an adjoint at every registered version, and a case runs each version;
    constant ops and control flow (If / Loop / Scan: no gradient, no rule) have none."""
    rec = record(op)
    for since, _ in rec.versions:
        if rec.kind in (kinds.CONSTANT, kinds.CONTROL):
            assert rec.adjoint_for(since) is None, f"{op} is {rec.kind} but has an adjoint"
            continue
        assert rec.adjoint_for(since) is not None, f"{op} (version {since}) has no adjoint"
        if op not in NO_CASE:
            assert any(rec.kernel_for(c.opset) is rec.kernel_for(since) for c in cases_of(op)), \
                f"no case runs {op}'s version {since}"


def test_cases_and_exemptions_name_differentiable_ops():
    named = {c.op for c in CASES + UNSUPPORTED_BRANCHES} | set(NO_GRADIENT_INPUTS) | set(NO_GRADIENT_OUTPUTS) | set(NO_CASE)
    assert named <= set(DIFFERENTIABLE), f"not registered or constant: {sorted(named - set(DIFFERENTIABLE))}"
    for c in CASES:
        assert record(c.op).kernel_for(c.opset) is not None, f"{c.id}: no kernel at opset {c.opset}"


@pytest.mark.parametrize("op", sorted(NO_GRADIENT_OUTPUTS))
def test_outputs_without_gradient_raise(op):
    """A cotangent on an output listed in NO_GRADIENT_OUTPUTS is refused, never silently dropped."""
    case = cases_of(op)[0]
    rec = record(op)
    outputs = outputs_of(rec.kernel_for(case.opset), case.inputs, case.attrs)
    for o in NO_GRADIENT_OUTPUTS[op]:
        G = [np.ones((K,) + y.shape) if j == o else None for j, y in enumerate(outputs)]
        with pytest.raises(UnsupportedOpError):
            vector_jacobian(rec.adjoint_for(case.opset), case, G, outputs, [is_float(x) for x in case.inputs])


@pytest.mark.parametrize("case", UNSUPPORTED_BRANCHES, ids=lambda c: c.id)
def test_unsupported_branches_raise(case):
    rec = record(case.op)
    outputs = outputs_of(rec.kernel_for(case.opset), case.inputs, case.attrs)
    G = [np.ones((K,) + y.shape) for y in outputs]
    with pytest.raises(UnsupportedOpError):
        vector_jacobian(rec.adjoint_for(case.opset), case, G, outputs, [is_float(x) for x in case.inputs])


def _case(op: str, label: str) -> Case:
    return next(c for c in cases_of(op) if c.label == label)


def _without_alpha(xp, G, inputs, outputs, attrs, need):
    return record("Gemm").adjoint_for(23)(xp, G, inputs, outputs, {**attrs, "alpha": 1.0}, need)


@pytest.mark.parametrize("case, wrong", [
    (_case("Gemm", "transB-alpha-beta"), _without_alpha),
    (_case("Add", "broadcast-b"), lambda xp, G, inputs, outputs, attrs, need: [G[0], G[0]]),  # no unbroadcast
    (_case("Clip", "opset6-attributes"), lambda xp, G, inputs, outputs, attrs, need: [G[0]]),  # bounds ignored
    (_case("Softmax", "opset13-axis=1"), lambda xp, G, inputs, outputs, attrs, need: [G[0] * outputs[0]]),
    (_case("Conv", "groups-strides-pads-dilations"),  # right but for a 1e-5 relative slip
     lambda *a: [None if g is None else g * (1 + 1e-5) for g in record("Conv").adjoint_for(23)(*a)]),
], ids=["Gemm-alpha-ignored", "Add-not-unbroadcast", "Clip6-bounds-ignored", "Softmax-diagonal-only",
        "Conv-1e-5-slip"])
def test_a_wrong_adjoint_fails(case, wrong):
    """Negative controls: adjoints with typical mistakes do not pass the check."""
    with pytest.raises(AssertionError):
        check_case(case, wrong)
