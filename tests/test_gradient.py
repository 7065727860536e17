"""reflrp.gradient chains the ops' adjoints: equal to torch autograd (float64 goldens made by
tools/make_grad_goldens.py) on every zoo model, and grad x input is the gradient times the input."""
from __future__ import annotations

import numpy as np
import pytest

import reflrp
import zoo

MODELS = [n for n in zoo.names() + zoo.padded_names() if zoo.grad_golden(n) is not None]


def _golden_feeds(g):
    return {k.split(":", 1)[1]: g[k] for k in g.files if k.startswith("inputs:")}


def test_every_zoo_model_has_a_gradient_golden():
    assert set(MODELS) == set(zoo.names() + zoo.padded_names())


@pytest.mark.parametrize("name", MODELS)
def test_gradient_equals_torch_autograd(name):
    g = zoo.grad_golden(name)
    grads = reflrp.gradient(zoo.model(name), _golden_feeds(g), target=g["target"])
    tensors = [k.split(":", 1)[1] for k in g.files if k.startswith("grad:")]
    assert set(grads) == set(tensors)
    for t in tensors:
        assert zoo.rel_err(grads[t], g[f"grad:{t}"]) <= 1e-9, t


def test_gradient_negative_control():
    """Another target gives another gradient: the comparison above can fail."""
    g = zoo.grad_golden("llama")
    other = (g["target"] + 1) % 64
    grads = reflrp.gradient(zoo.model("llama"), _golden_feeds(g), target=other)
    assert zoo.rel_err(grads["inputs_embeds"], g["grad:inputs_embeds"]) > 0.1


@pytest.mark.parametrize("name", ["llama", "bert", "vit"])
def test_grad_x_input_is_gradient_times_input(name):
    f = zoo.feeds(name)
    grads = reflrp.gradient(zoo.model(name), f)
    att = reflrp.explain(zoo.model(name), f, preset="grad-x-input")
    assert att.conservation is None  # gradients have no relevance books
    for w, gr in grads.items():
        np.testing.assert_allclose(att.relevance[w], gr * f[w], rtol=1e-12, atol=0)


def test_gradient_of_several_targets_in_one_pass():
    f = zoo.feeds("llama")
    many = reflrp.gradient(zoo.model("llama"), f, targets=[3, 7])["inputs_embeds"]
    assert many.shape == (2,) + f["inputs_embeds"].shape
    for k, t in enumerate((3, 7)):
        one = reflrp.gradient(zoo.model("llama"), f, target=t)["inputs_embeds"]
        np.testing.assert_allclose(many[k], one, rtol=1e-12, atol=1e-15)
