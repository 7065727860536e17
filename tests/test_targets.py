"""Many targets in one relevance pass (explain(..., targets=[...])) equal separate calls, each with its
own closing books; named targets, contrastive seeds, checkpoints, keep and memory chunks."""
from __future__ import annotations

import numpy as np
import pytest

import reflrp
import zoo
from reflrp.testing import rel_err


def _seeds(name, k=3):
    """K random seed arrays of the model's output shape (fixed per model)."""
    m, f = zoo.model(name), zoo.feeds(name)
    out = m.run(f)[m.output_names[0]]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    return [rng.standard_normal(out.shape) for _ in range(k)]


@pytest.mark.parametrize("name", zoo.names() + zoo.padded_names())
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_k_seeds_in_one_pass_equal_k_calls(name, preset):
    m, f = zoo.model(name), zoo.feeds(name)
    seeds = _seeds(name)
    many = reflrp.explain(m, f, targets=seeds, preset=preset)
    assert isinstance(many.conservation, list) and len(many.conservation) == len(seeds)
    for k, seed in enumerate(seeds):
        one = reflrp.explain(m, f, target=seed, preset=preset)
        for w in one.wrt:
            assert many.relevance[w].shape == (len(seeds),) + one.relevance[w].shape
            assert rel_err(many.relevance[w][k], one.relevance[w]) <= 1e-12, (w, k)
        c = many.conservation[k]
        assert c.ok and c.max_residual <= 1e-9
        assert abs(c.target - one.conservation.target) <= 1e-12 * abs(one.conservation.target)
        assert abs(c.at_wrt - one.conservation.at_wrt) <= 1e-9 * max(abs(one.conservation.at_wrt), 1.0)


def test_named_targets():
    m, f = zoo.model("bert"), zoo.feeds("bert")
    att = reflrp.explain(m, f, targets=["all-classes"])
    assert len(att.conservation) == 3
    for c in range(3):
        one = reflrp.explain(m, f, target=c)
        assert rel_err(att.relevance["inputs_embeds"][c], one.relevance["inputs_embeds"]) <= 1e-12
    lm, fl = zoo.model("llama"), zoo.feeds("llama")
    every = reflrp.explain(lm, fl, targets=["every-position"])
    logits = every.outputs["logits"]
    assert every.seed.shape == (logits.shape[1],) + logits.shape
    for pos in (0, logits.shape[1] - 1):
        seed = np.zeros(logits.shape)
        for b in range(logits.shape[0]):
            c = int(np.argmax(logits[b, pos]))
            seed[b, pos, c] = logits[b, pos, c]
        one = reflrp.explain(lm, fl, target=seed)
        assert rel_err(every.relevance["inputs_embeds"][pos], one.relevance["inputs_embeds"]) <= 1e-12
        # causal: position pos gets no relevance from later tokens
        assert not np.any(every.relevance["inputs_embeds"][pos][:, pos + 1:])


def test_contrastive_seed():
    m, f = zoo.model("llama"), zoo.feeds("llama")
    att = reflrp.explain(m, f, target=reflrp.contrastive(5))
    logits = att.outputs["logits"][:, -1]
    n = logits.shape[-1]
    want = -logits / (n - 1)
    want[:, 5] = logits[:, 5]
    np.testing.assert_allclose(att.seed[:, -1], want, rtol=1e-12)
    assert not att.seed[:, :-1].any()
    assert att.conservation.ok


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_targets_with_checkpoint_keep_and_chunks(name):
    m, f = zoo.model(name), zoo.feeds(name)
    seeds = _seeds(name, 4)
    full = reflrp.explain(m, f, targets=seeds)
    for kw in ({"checkpoint": "sqrt"}, {"keep": []}, {"max_memory": 1, "keep": []}, {"max_memory": 1}):
        other = reflrp.explain(m, f, targets=seeds, **kw)
        for w in full.wrt:
            assert rel_err(other.relevance[w], full.relevance[w]) <= 1e-12, kw
        assert [c.ok for c in other.conservation] == [True] * 4
        assert [a.node for a in other.conservation[3].nodes] == [a.node for a in full.conservation[3].nodes]


def test_target_and_targets_are_exclusive():
    with pytest.raises(reflrp.TargetError, match="either"):
        reflrp.explain(zoo.model("llama"), zoo.feeds("llama"), target=1, targets=[2])
    with pytest.raises(reflrp.TargetError, match="unknown named target"):
        reflrp.explain(zoo.model("llama"), zoo.feeds("llama"), targets=["all-the-things"])
    with pytest.raises(reflrp.TargetError, match="empty"):
        reflrp.explain(zoo.model("llama"), zoo.feeds("llama"), targets=[])
