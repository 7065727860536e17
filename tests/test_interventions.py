"""Interventions equal an edited graph: run(..., interventions=) against onnxruntime on a copy of the
ONNX model with a Mul / Add / Where node inserted after the tensor (built here with onnx.helper)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import reflrp
import zoo
from reflrp.interventions import InterventionError


def edited_onnx(path, tensor, op, const, units_mask=None):
    """The model with ``op(tensor, const)`` (or Where(mask, const, tensor)) inserted after ``tensor``."""
    m = onnx.load(str(path))
    g = m.graph
    before = tensor + "__raw"
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == tensor:
                n.output[i] = before
    dtype = np.float32
    g.initializer.append(numpy_helper.from_array(np.asarray(const, dtype), "iv_const"))
    if op == "Where":
        g.initializer.append(numpy_helper.from_array(units_mask, "iv_mask"))
        g.node.append(helper.make_node("Where", ["iv_mask", "iv_const", before], [tensor], name="iv"))
    else:
        g.node.append(helper.make_node(op, [before, "iv_const"], [tensor], name="iv"))
    return m.SerializeToString()


def ort_run(data, feeds):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def inner_tensors(name, count, seed):
    """A few float tensors of the model with a hidden last axis (MLP activations, residual stream)."""
    m = zoo.model(name)
    rng = np.random.default_rng(seed)
    outs = m.run(zoo.feeds(name), intermediates=[o for n in m.graph.nodes for o in n.outputs if o])
    hidden = [t for t, v in outs.items() if v.dtype == np.float32 and v.ndim == 3 and v.shape[-1] >= 8
              and t not in m.output_names]
    return [hidden[i] for i in rng.choice(len(hidden), size=count, replace=False)], outs


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_scale_units_equals_an_inserted_mul(name):
    rng = np.random.default_rng(3)
    tensors, outs = inner_tensors(name, 3, 4)
    f = zoo.feeds(name)
    for t in tensors:
        n = outs[t].shape[-1]
        units = rng.choice(n, size=int(rng.integers(1, n // 2)), replace=False)
        scale = float(rng.uniform(-2, 3))
        mask = np.ones(n, np.float32)
        mask[units] = scale
        want = ort_run(edited_onnx(zoo.MODELS / f"{name}.onnx", t, "Mul", mask), f)
        got = zoo.model(name).run(f, interventions={t: {"units": units.tolist(), "scale": scale}})
        assert zoo.rel_err(got[zoo.model(name).output_names[0]], want) <= 1e-6, t


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("fast", [True, False])
def test_set_zero_add_and_function_equal_inserted_nodes(name, fast):
    f, m = zoo.feeds(name), zoo.model(name)
    out, path = m.output_names[0], zoo.MODELS / f"{name}.onnx"
    rng = np.random.default_rng(11)
    (t,), outs = inner_tensors(name, 1, 9)
    n = outs[t].shape[-1]
    units = np.sort(rng.choice(n, size=int(rng.integers(1, n)), replace=False))
    mask = np.zeros(n, bool)
    mask[units] = True
    per_unit = rng.uniform(-2, 2, len(units)).astype(np.float32)  # one value per unit
    value = np.zeros(n, np.float32)
    value[units] = per_unit
    vec = rng.standard_normal(n).astype(np.float32)
    factors = rng.uniform(-1, 2, n).astype(np.float32)
    cases = [({"units": units.tolist(), "set": per_unit}, edited_onnx(path, t, "Where", value, mask)),
             ({"units": units.tolist(), "set": 2.5}, edited_onnx(path, t, "Where", np.where(mask, 2.5, 0), mask)),
             ({"units": units.tolist(), "zero": True}, edited_onnx(path, t, "Where", np.zeros(n), mask)),
             ({"add": vec}, edited_onnx(path, t, "Add", vec)),
             (lambda x: x * factors, edited_onnx(path, t, "Mul", factors))]
    for spec, data in cases:
        got = m.run(f, interventions={t: spec}, fast=fast)[out]
        assert zoo.rel_err(got, ort_run(data, f)) <= 1e-6, (t, spec)
        # float64: the same as the independently edited graph, to the last digit
        edited = reflrp.load(data).run(f, dtype="float64", fast=fast)[out]
        assert zoo.rel_err(m.run(f, interventions={t: spec}, dtype="float64", fast=fast)[out], edited) <= 1e-12


def test_two_interventions_at_once_equal_two_inserted_nodes(tmp_path):
    name, f = "llama", zoo.feeds("llama")
    (a, b), outs = inner_tensors(name, 2, 21)
    na, nb = outs[a].shape[-1], outs[b].shape[-1]
    sa = np.ones(na, np.float32)
    sa[[0, 3]] = -1.5
    vb = np.linspace(-1, 1, nb).astype(np.float32)
    first = onnx.load_from_string(edited_onnx(zoo.MODELS / "llama.onnx", a, "Mul", sa))
    path = tmp_path / "first_edit.onnx"
    for init in first.graph.initializer:  # edited_onnx names its constant iv_const: rename the first one
        if init.name == "iv_const":
            init.name = "iv_const_first"
    for node in first.graph.node:
        if node.name == "iv":
            node.input[1], node.name = "iv_const_first", "iv_first"
    onnx.save(first, str(path))
    want = ort_run(edited_onnx(path, b, "Add", vb), f)
    got = zoo.model(name).run(f, interventions={a: {"units": [0, 3], "scale": -1.5}, b: {"add": vb}})["logits"]
    assert zoo.rel_err(got, want) <= 1e-6


def test_interventions_on_an_input_and_in_explain():
    m, f = zoo.model("llama"), zoo.feeds("llama")
    x = f["inputs_embeds"].copy()
    x[..., [0, 5]] *= 0.5
    np.testing.assert_allclose(m.run(f, interventions={"inputs_embeds": {"units": [0, 5], "scale": 0.5}})["logits"],
                               m.run({"inputs_embeds": x})["logits"], rtol=1e-6)
    (t,), _ = inner_tensors("llama", 1, 2)
    att = reflrp.explain(m, f, interventions={t: {"units": [0, 1], "set": 1.5}})  # (0 would receive nothing)
    node = f"intervention on {t}"
    assert att.plan.rule_of(node) == "route" and att.conservation.ok
    assert next(a for a in att.conservation.nodes if a.node == node).absorbed != 0.0  # the set units absorb
    scaled = reflrp.explain(m, f, interventions={t: {"units": [0, 1], "scale": 3.0}})
    assert scaled.plan.rule_of(f"intervention on {t}") == "identity"


@pytest.mark.parametrize("spec,needle", [
    ({"units": [999], "scale": 2.0}, "units"),
    ({"units": [1], "scale": 2.0, "set": 1.0}, "exactly one"),
    ({"scale": 2.0}, "needs 'units'"),
    ({"add": np.ones(7)}, "does not broadcast"),
    ({"units": [1], "bogus": 1}, "a spec is"),
    ({"units": [], "scale": 2.0}, "'units' is empty"),
    ({"units": [1.5], "scale": 2.0}, "must be integers"),
    ({"units": [1], "scale": "big"}, "'scale' must be numbers"),
    ({"units": [1], "set": [1.0, 2.0]}, "one number or one per unit"),
    ({"units": [1], "zero": False}, "'zero' must be True"),
    ({"units": [1], "add": np.ones(8)}, "not 'units'"),
    ({"add": "x"}, "'add' must be numbers"),
    ({"units": [1], "scale": 2.0, "axis": 9}, "axis 9 is out of range"),
    (lambda x: x[..., :2], "changed the shape"),
    (5, "a spec is"),
])
def test_bad_interventions(spec, needle):
    m, f = zoo.model("llama"), zoo.feeds("llama")
    (t,), _ = inner_tensors("llama", 1, 5)
    with pytest.raises(InterventionError, match=needle) as err:
        m.run(f, interventions={t: spec})
    assert repr(t) in str(err.value)  # the error names the tensor
    with pytest.raises(reflrp.ReflrpError, match="no tensor 'nope'"):
        m.run(f, interventions={"nope": {"units": [0], "scale": 1.0}})


SENT = zoo.MODELS.parent / "demo" / "sentiment.onnx"


def sentiment_rows(n):
    with np.load(SENT.with_name("sentiment_test.npz")) as z:
        return {"input_ids": z["input_ids"][:n], "labels": z["labels"][:n]}


@pytest.mark.parametrize("method", ["attnlrp", "occlusion"])
def test_attribute_with_interventions_equals_the_edited_graph(method):
    """reflrp.attribute(..., interventions=) against the same method on an ONNX copy with a Where node
    zeroing every other unit of the first MLP activation (built with onnx.helper)."""
    rows = sentiment_rows(3)
    feeds = {"input_ids": rows["input_ids"]}
    n = reflrp.load(SENT).run(feeds, intermediates=["gelu"])["gelu"].shape[-1]
    units = list(range(0, n, 2))
    mask = np.zeros(n, bool)
    mask[units] = True
    edited = reflrp.load(edited_onnx(SENT, "gelu", "Where", np.zeros(n), mask))
    got = reflrp.attribute(SENT, feeds, method, interventions={"gelu": {"units": units, "zero": True}})
    want = reflrp.attribute(edited, feeds, method)
    plain = reflrp.attribute(SENT, feeds, method)
    assert zoo.rel_err(got.full, want.full) <= 1e-12 and np.array_equal(got.target, want.target)
    assert zoo.rel_err(got.full, plain.full) > 1e-3  # the intervention changes the attribution


def test_evaluate_with_interventions_equals_the_edited_graph():
    rows = sentiment_rows(6)
    n = reflrp.load(SENT).run({"input_ids": rows["input_ids"]}, intermediates=["gelu"])["gelu"].shape[-1]
    units = list(range(0, n, 2))
    scale = np.ones(n, np.float32)
    scale[units] = 3.0
    kw = dict(methods=["attnlrp", "random"], steps=4, bootstrap=50, progress=False)
    got = reflrp.evaluate(SENT, rows, interventions={"gelu": {"units": units, "scale": 3.0}}, **kw)
    want = reflrp.evaluate(reflrp.load(edited_onnx(SENT, "gelu", "Mul", scale)), rows, **kw)
    plain = reflrp.evaluate(SENT, rows, **kw)
    for name in kw["methods"]:
        assert zoo.rel_err(got.methods[name].morf, want.methods[name].morf) <= 1e-9
        assert zoo.rel_err(got.methods[name].lerf, want.methods[name].lerf) <= 1e-9
    assert zoo.rel_err(got.clean, plain.clean) > 1e-3
    with pytest.raises(InterventionError, match="no tensor 'nope'"):
        reflrp.evaluate(SENT, rows, interventions={"nope": {"add": 1.0}}, **kw)


def test_a_float64_run_uses_the_values_unrounded():
    """1 + 1e-9 is 1.0 in float32: a float64 run must still see the scale (and a float32 run must not)."""
    m, f = zoo.model("llama"), zoo.feeds("llama")
    (t,), _ = inner_tensors("llama", 1, 7)
    spec = {t: {"units": [0, 1, 2], "scale": 1 + 1e-9}}
    plain64, scaled64 = m.run(f, dtype="float64")["logits"], m.run(f, dtype="float64", interventions=spec)["logits"]
    assert 0 < np.abs(scaled64 - plain64).max() < 1e-6
    assert np.array_equal(m.run(f, interventions=spec)["logits"], m.run(f)["logits"])
