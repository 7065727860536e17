"""Bar: the ONNX backend node suite, every case whose ops reflrp registers (all element types,
opsets and value types counted), and the registry's opsets against onnx's operator schemas."""
from __future__ import annotations

import inspect
from collections import defaultdict

import onnx.defs
import pytest

import reflrp
from conformance import eligible, load_cases, run_case
from reflrp.ops import resolve

# Cases that fail on purpose, with the reason. A case fixed must leave this list (the test checks).
KNOWN_FAILURES = {
    "test_batchnorm_epsilon_training_mode": "training-mode BatchNormalization (running statistics) is not supported",
    "test_batchnorm_example_training_mode": "training-mode BatchNormalization (running statistics) is not supported",
    "test_training_dropout": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_default": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_default_mask": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_training_dropout_mask": "training-mode Dropout is random; reflrp runs inference graphs",
    "test_identity_sequence": "sequence values are refused at load (reflrp runs tensors only)",
    "test_identity_opt": "optional values are refused at load (reflrp runs tensors only)",
    "test_if_seq": "the If returns a sequence: sequence values are refused at load (reflrp runs tensors only)",
    "test_if_opt": "the If returns an optional: optional values are refused at load (reflrp runs tensors only)",
    "test_loop13_seq": "the Loop carries a sequence: sequence values are refused at load (reflrp runs tensors only)",
    "test_loop16_seq_none": "the Loop carries an optional sequence: refused at load (reflrp runs tensors only)",
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


def _onnx_versions() -> dict[str, list[int]]:
    """Default-domain op -> the opsets at which onnx's schema for it changes."""
    versions = defaultdict(set)
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            versions[schema.name].add(schema.since_version)
    return {op: sorted(v) for op, v in versions.items()}


@pytest.mark.parametrize("op", sorted(reflrp.supported_ops()))
def test_kernel_opsets_follow_the_onnx_schemas(op):
    """Each kernel starts at an opset where onnx's schema of its op changes, and takes every input and
    attribute of every schema version from there on (a legacy ``consumed_inputs`` or ``broadcast``
    attribute it does not take means its ``since`` is too early)."""
    versions = _onnx_versions()[op]
    sinces = reflrp.supported_ops()[op]
    assert set(sinces) <= set(versions), f"{op}: kernel opsets {sinces}, onnx's schema versions {versions}"
    for version in (v for v in versions if v >= sinces[0]):
        schema = onnx.defs.get_schema(op, version)
        params = list(inspect.signature(resolve(op, version)).parameters.values())[1:]  # after xp
        kinds = {p.kind for p in params}
        names = {p.name for p in params}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            assert set(schema.attributes) <= names, (
                f"{op}-{version}: the kernel takes no attribute(s) {sorted(set(schema.attributes) - names)}")
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            positional = [p for p in params if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
            assert len(schema.inputs) <= len(positional), f"{op}-{version}: {len(schema.inputs)} inputs"


def test_opset_older_than_a_kernel_is_refused_listing_every_node():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Gelu", ["x"], ["a"], name="gelu"), helper.make_node("Mish", ["a"], ["b"], name="mish"),
             helper.make_node("Frobnicate", ["b"], ["c"], name="frob1"),
             helper.make_node("Frobnicate", ["c"], ["d"], name="frob2"),
             helper.make_node("Unrewritable", ["d"], ["y"], name="fused", domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(reflrp.UnsupportedOpError) as e:
        reflrp.load(model)
    text = str(e.value)
    for part in ("5 node(s)", "Gelu", "starts at opset 20", "Mish", "starts at opset 18",
                 "Frobnicate (domain ''), 2 node(s) 'frob1', 'frob2'", "Unrewritable (domain 'com.microsoft')"):
        assert part in text, (part, text)


@pytest.mark.parametrize("opset", [0, -3, onnx.defs.onnx_opset_version() + 1, 99])
def test_opset_onnx_does_not_define_is_refused(opset):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
                              opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(reflrp.UnsupportedOpError, match=f"opset {opset}.*1..{onnx.defs.onnx_opset_version()}"):
        reflrp.load(model)
    model.opset_import[0].version = 14  # the same graph at a defined opset runs
    assert reflrp.load(model).run({"x": [-1.0, 2.0]})["y"].tolist() == [0.0, 2.0]


def test_outputs_a_kernel_does_not_compute_are_a_typed_error():
    """BatchNormalization's running statistics (training only) read downstream: an
    UnsupportedOpError naming them (it was a KeyError from the forward loop)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    consts = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], name="bn"),
         helper.make_node("Identity", ["rm"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], initializer=consts)
    model = reflrp.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]))
    with pytest.raises(reflrp.UnsupportedOpError, match="'bn'.*'rm', 'rv'"):
        model.run({"x": np.ones((2, 3), np.float32)})
