"""Generation: the KV cache and full recomputation give the same tokens, the logits equal onnxruntime
running the same export step by step, and the explanation of every generated token is one pass equal
to separate explains, lower triangular, with closing books."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import reflrp
import zoo
from reflrp.generate import full_feeds, layout_of

IDS = np.array([[3, 5, 7, 9, 2], [1, 2, 3, 4, 6]])


@pytest.fixture(scope="module")
def kv():
    return reflrp.load(zoo.MODELS / "llama_past.onnx")


def test_cache_and_recomputation_give_the_same_tokens(kv):
    a = reflrp.generate(kv, IDS, 7)
    b = reflrp.generate(kv, IDS, 7, use_cache=False)
    c = reflrp.generate(zoo.MODELS / "llama_ids.onnx", IDS, 7)  # same weights, exported without a cache
    assert a.new.shape == (2, 7) and np.array_equal(a.new, b.new) and np.array_equal(a.new, c.new)
    assert np.abs(a.logits - b.logits).max() <= 1e-5


def test_logits_equal_onnxruntime_step_by_step(kv):
    gen = reflrp.generate(kv, IDS, 5)
    sess = ort.InferenceSession(str(zoo.MODELS / "llama_past.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    layout = layout_of(kv)
    feeds = full_feeds(kv, layout, IDS, None)
    for step in range(5):
        out = dict(zip(names, sess.run(None, feeds)))
        last = out["logits"][:, -1]
        assert zoo.rel_err(gen.logits[:, step], last) <= 1e-5
        token = gen.new[:, step]
        assert np.array_equal(token, last.argmax(-1))
        mask = np.ones((2, IDS.shape[1] + step + 1), np.int64)
        feeds = {"input_ids": token[:, None].astype(np.int64), "attention_mask": mask,
                 **{name: out[present] for name, present in layout.past}}


def test_explaining_a_generation_in_one_pass(kv):
    gen = reflrp.generate(kv, IDS, 4)
    matrix, att = gen.explain()
    assert matrix.shape == (2, 4, IDS.shape[1] + 4)
    assert all(r.ok for r in att.conservation) and len(att.conservation) == 4
    for k in range(4):
        first_unseen = IDS.shape[1] + k  # the k-th new token is predicted from positions < first_unseen
        assert not matrix[:, k, first_unseen:].any()
    tokens = gen.tokens
    feeds = full_feeds(kv, layout_of(kv), tokens, None)
    logits = kv.run(feeds)["logits"]
    k, pos = 2, IDS.shape[1] + 1
    seed = np.zeros(logits.shape)
    for b in range(2):
        seed[b, pos, tokens[b, pos + 1]] = logits[b, pos, tokens[b, pos + 1]]
    one = reflrp.explain(kv, feeds, target=seed, wrt=["embedding"])
    assert zoo.rel_err(matrix[:, k], one.relevance["embedding"].sum(-1)) <= 1e-12


def test_sampling_is_seeded_and_arguments_are_checked(kv):
    a = reflrp.generate(kv, IDS, 5, do_sample=True, seed=7, temperature=0.7, top_k=4)
    b = reflrp.generate(kv, IDS, 5, do_sample=True, seed=7, temperature=0.7, top_k=4)
    assert np.array_equal(a.new, b.new)
    for kw, needle in (({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2, "top_k": 0}, "top_k"),
                       ({"max_new_tokens": 2, "do_sample": True, "temperature": 0}, "temperature")):
        with pytest.raises(reflrp.ReflrpError, match=needle):
            reflrp.generate(kv, IDS, **kw)
    with pytest.raises(reflrp.FeedError, match="input_ids"):
        reflrp.generate(kv, np.ones((2,)), 3)
    with pytest.raises(reflrp.ReflrpError, match="no past_key_values"):
        reflrp.generate(zoo.MODELS / "llama_ids.onnx", IDS, 2, use_cache=True)


def test_interventions_apply_at_every_step(kv):
    """Steering a generation equals generating with a model whose tensor is scaled by an inserted Mul
    (onnx.helper), with and without the cache; an 'add' over positions is refused."""
    import onnx
    from onnx import helper, numpy_helper
    proto = onnx.load(str(zoo.MODELS / "llama_past.onnx"))
    kv_out = kv.run(full_feeds(kv, layout_of(kv), IDS), intermediates=[o for n in kv.graph.nodes for o in n.outputs if o])
    tensor = next(n.inputs[0] for n in kv.graph.nodes if n.op_type == "MatMul" and n.inputs[1] in kv.graph.initializers
                  and kv.graph.initializers[n.inputs[1]].shape[0] > kv.graph.initializers[n.inputs[1]].shape[1])
    width = kv_out[tensor].shape[-1]
    scale = np.ones(width, np.float32)
    scale[[0, 3, 5]] = 6.0
    for node in proto.graph.node:
        node.output[:] = [tensor + "__raw" if o == tensor else o for o in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(scale, "steer"))
    proto.graph.node.append(helper.make_node("Mul", [tensor + "__raw", "steer"], [tensor], name="steer"))
    edited = reflrp.load(proto.SerializeToString())
    want = reflrp.generate(edited, IDS, 5)
    spec = {tensor: {"units": [0, 3, 5], "scale": 6.0}}
    for use_cache in (True, False):
        got = reflrp.generate(kv, IDS, 5, interventions=spec, use_cache=use_cache)
        assert np.array_equal(got.new, want.new) and np.abs(got.logits - want.logits).max() <= 1e-5
    assert not np.array_equal(want.new, reflrp.generate(kv, IDS, 5).new)  # the steering changes the text
    with pytest.raises(reflrp.ReflrpError, match="one vector over the units"):
        reflrp.generate(kv, IDS, 2, interventions={tensor: {"add": np.ones((1, 5, width))}})
