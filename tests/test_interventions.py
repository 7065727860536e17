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


def test_set_zero_add_and_function():
    name, f = "llama", zoo.feeds("llama")
    (t,), outs = inner_tensors(name, 1, 9)
    n = outs[t].shape[-1]
    mask = np.zeros(n, bool)
    mask[[1, 4]] = True
    value = np.zeros(n, np.float32)
    value[[1, 4]] = 2.5
    m = zoo.model(name)
    want = ort_run(edited_onnx(zoo.MODELS / "llama.onnx", t, "Where", value, mask), f)
    assert zoo.rel_err(m.run(f, interventions={t: {"units": [1, 4], "set": 2.5}})["logits"], want) <= 1e-6
    value[:] = 0
    want = ort_run(edited_onnx(zoo.MODELS / "llama.onnx", t, "Where", value, mask), f)
    assert zoo.rel_err(m.run(f, interventions={t: {"units": [1, 4], "zero": True}})["logits"], want) <= 1e-6
    vec = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    want = ort_run(edited_onnx(zoo.MODELS / "llama.onnx", t, "Add", vec), f)
    assert zoo.rel_err(m.run(f, interventions={t: {"add": vec}})["logits"], want) <= 1e-6
    doubled = m.run(f, interventions={t: lambda x: 2 * x})["logits"]
    want = ort_run(edited_onnx(zoo.MODELS / "llama.onnx", t, "Mul", np.full(n, 2, np.float32)), f)
    assert zoo.rel_err(doubled, want) <= 1e-6


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
    (lambda x: x[..., :2], "changed the shape"),
])
def test_bad_interventions(spec, needle):
    m, f = zoo.model("llama"), zoo.feeds("llama")
    (t,), _ = inner_tensors("llama", 1, 5)
    with pytest.raises(reflrp.ReflrpError, match=needle):
        m.run(f, interventions={t: spec})
    with pytest.raises(reflrp.ReflrpError, match="no tensor 'nope'"):
        m.run(f, interventions={"nope": {"units": [0], "scale": 1.0}})
