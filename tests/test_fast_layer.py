"""The speed layer (reflrp.fast) computes what the plain path computes: the whole zoo both ways, its
MatMul layouts and row-restricted products against plain products, the switch, and the allocator
policy it applies during a call."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reflrp
import zoo
from reflrp.fast import linalg as fast_linalg
from reflrp.ops import record
from reflrp.rules import formulas as plain_formulas
from reflrp.testing import rel_err

rng = np.random.default_rng(7)


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_zoo_plain_equals_fast(name, preset):
    m, feeds = zoo.model(name), zoo.feeds(name)
    fast = reflrp.explain(m, feeds, preset=preset, fast=True)
    plain = reflrp.explain(m, feeds, preset=preset, fast=False)
    assert fast.conservation.ok and plain.conservation.ok
    assert rel_err(fast.outputs[fast.output], plain.outputs[plain.output]) <= 1e-12
    for w in fast.wrt:
        assert rel_err(fast.relevance[w], plain.relevance[w]) <= 1e-12, w
    assert abs(fast.conservation.loss - plain.conservation.loss) <= 1e-9 * abs(plain.conservation.target)


def test_switch_from_the_environment(monkeypatch):
    """fast=None follows REFLRP_FAST; the prepared forward of each setting is its own."""
    m = reflrp.load(zoo.MODELS / "llama.onnx")
    monkeypatch.setenv("REFLRP_FAST", "0")
    m.run(zoo.feeds("llama"))
    monkeypatch.setenv("REFLRP_FAST", "1")
    m.run(zoo.feeds("llama"))
    assert sorted(key[2] for key in m._prepared) == [False, True]
    plain = next(p for k, p in m._prepared.items() if not k[2])
    fast = next(p for k, p in m._prepared.items() if k[2])
    mm = next(s for s in fast.steps if s.node.op_type == "MatMul")
    assert mm.fn is fast_linalg.MatMul and mm.adjoint is fast_linalg.matmul_vjp
    assert next(s for s in plain.steps if s.node.op_type == "MatMul").fn is record("MatMul").kernel_for(18)
    with pytest.raises(reflrp.ReflrpError, match="fast must be"):
        m.run(zoo.feeds("llama"), fast="yes")


def _views(shape):
    """The same values as a contiguous array, a transposed view of a contiguous stack, and a strided view."""
    base = rng.standard_normal(shape)
    t = np.ascontiguousarray(np.swapaxes(base, -1, -2))
    wide = np.zeros(shape[:-1] + (2 * shape[-1],))
    wide[..., ::2] = base
    return {"contiguous": base, "transposed": np.swapaxes(t, -1, -2), "strided": wide[..., ::2]}


@pytest.mark.parametrize("a_layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("b_layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("shapes", [((2, 3, 40, 40), (2, 3, 40, 5)), ((2, 3, 5, 40), (2, 3, 40, 40)),
                                    ((3, 40, 6), (1, 6, 40)), ((2, 3, 7, 9), (9, 4))])
def test_matmul_layouts_equal_einsum(a_layout, b_layout, shapes):
    a = _views(shapes[0])[a_layout]
    b = _views(shapes[1])[b_layout]
    got = fast_linalg.matmul(np, a, b)
    want = np.einsum("...ij,...jk->...ik", a, b)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


class _Counting:
    """numpy, counting the copies ``ascontiguousarray`` makes."""

    def __init__(self):
        self.copies = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def ascontiguousarray(self, a):
        self.copies += 1
        return np.ascontiguousarray(a)


@pytest.mark.parametrize("a_layout, b_layout, copies", [
    ("contiguous", "contiguous", 0), ("transposed", "contiguous", 0), ("contiguous", "transposed", 0),
    ("transposed", "transposed", 0), ("strided", "contiguous", 1), ("transposed", "strided", 1),
    ("strided", "strided", 2)])
def test_matmul_copies_only_what_blas_cannot_read(a_layout, b_layout, copies):
    """Transposed views of a stack go to BLAS as they lie (numpy passes the transpose flag); only a matrix
    with a step in both axes is copied first."""
    a, b = _views((2, 3, 40, 40))[a_layout], _views((2, 3, 40, 5))[b_layout]
    xp = _Counting()
    got = fast_linalg.matmul(xp, a, b)
    assert xp.copies == copies
    np.testing.assert_allclose(got, np.einsum("...ij,...jk->...ik", a, b), rtol=1e-12, atol=1e-12)


def test_blas_readable_matches_numpys_layouts():
    m = rng.standard_normal((3, 8, 6))
    assert fast_linalg.blas_readable(m) and fast_linalg.blas_readable(np.swapaxes(m, -1, -2))
    assert fast_linalg.blas_readable(m[:, :, :4])  # rows further apart than their length
    assert not fast_linalg.blas_readable(m[:, :, ::2])  # a step along the row
    assert not fast_linalg.blas_readable(np.broadcast_to(m[:, :1], (3, 8, 6)))  # a broadcast matrix axis


@pytest.mark.parametrize("nonzero_rows", [[], [5], [0, 9, 17], list(range(0, 24, 2))])
@pytest.mark.parametrize("k", [1, 3])
def test_fast_matmul_adjoint_equals_the_plain_one(nonzero_rows, k):
    """Products restricted to the non-zero rows of G; the other rows stay exactly 0."""
    g = np.zeros((k, 2, 12, 7))
    flat = g.reshape(k, -1, 7)
    flat[:, nonzero_rows] = rng.standard_normal((k, len(nonzero_rows), 7))
    A, W = rng.standard_normal((2, 12, 5)), rng.standard_normal((5, 7))
    y = A @ W
    plain = record("MatMul").adjoint_for(18)(np, [g], [A, W], [y], {}, (True, True))
    fast = fast_linalg.matmul_vjp(np, [g], [A, W], [y], {}, (True, True))
    for p, f in zip(plain, fast):
        assert p.shape == f.shape
        np.testing.assert_allclose(f, p, rtol=1e-12, atol=1e-14)
    zero = [i for i in range(24) if i not in nonzero_rows]
    assert not fast[0].reshape(k, -1, 5)[:, zero].any()


_PROBE = r"""
import ctypes, json, numpy as np, reflrp
from reflrp.memory import reuse_during_call
libc = ctypes.CDLL("libc.so.6")
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MI
def mmapped_by_new_array(mib):  # growing sizes: glibc's own dynamic threshold follows freed mmapped blocks
    before = libc.mallinfo2().hblkhd
    a = np.ones(mib * 2**20 // 8)
    return libc.mallinfo2().hblkhd - before
out = {"before": mmapped_by_new_array(4)}
with reuse_during_call():
    out["during"] = mmapped_by_new_array(8)
out["after"] = mmapped_by_new_array(16)
print(json.dumps(out))
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2  # noqa: B018  (glibc >= 2.33)
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("policy", ["call", "system"])
def test_allocator_policy_is_scoped_to_the_call(policy):
    """'call' without a linger: large arrays come from the heap inside a call and are mmapped again after
    it (the process is left with glibc's default thresholds); 'system': never touched."""
    env = dict(os.environ, REFLRP_MALLOC=policy, REFLRP_MALLOC_LINGER="0")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["before"] >= 4 * 2**20 and info["after"] >= 16 * 2**20
    assert info["during"] == 0 if policy == "call" else info["during"] >= 8 * 2**20


_NESTED = _PROBE.split("out = {")[0] + r"""
out = {}
with reuse_during_call():
    with reuse_during_call():  # a call inside a call (or another thread's call)
        out["inner"] = mmapped_by_new_array(8)
    out["after_inner"] = mmapped_by_new_array(8)  # the outer call still runs: still from the heap
out["after_outer"] = mmapped_by_new_array(16)
print(json.dumps(out))
"""


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_overlapping_calls_keep_the_policy_until_the_last_returns():
    env = dict(os.environ, REFLRP_MALLOC="call", REFLRP_MALLOC_LINGER="0")
    out = subprocess.run([sys.executable, "-c", _NESTED], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["inner"] == 0 and info["after_inner"] == 0 and info["after_outer"] >= 16 * 2**20


_LINGER = _PROBE.split("out = {")[0] + r"""
import os
from reflrp import memory
out = {}
with reuse_during_call():
    pass
out["lingering"] = mmapped_by_new_array(8)  # after the call, within its linger (30 s): still from the heap
before = memory._Calls.deadline
with reuse_during_call():  # a call within the linger moves the restore later
    pass
out["deadline_moved"] = memory._Calls.deadline > before and memory._Calls.applied
pid = os.fork()
if pid == 0:  # a forked child has no restore thread: glibc's defaults at once
    os._exit(0 if mmapped_by_new_array(16) >= 16 * 2**20 else 1)
out["child_restored"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
out["parent_still_lingering"] = mmapped_by_new_array(16)
reflrp.release_memory()  # ends the linger now
out["after_release"] = mmapped_by_new_array(32)
os.environ["REFLRP_MALLOC_LINGER"] = "0.05"
with reuse_during_call():
    pass
out["restored_by_itself"] = memory._wait_restored(60)  # the linger's end, by the restorer thread
out["after_linger"] = mmapped_by_new_array(64)
print(json.dumps(out))
"""


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_the_call_scope_lingers_after_the_last_call_then_restores():
    """Back-to-back calls reuse each other's memory: glibc stays set up for REFLRP_MALLOC_LINGER seconds
    after the last call returns (a call in that time restarts the wait); then, on release_memory(), and
    at once in a forked child, glibc's defaults again."""
    env = dict(os.environ, REFLRP_MALLOC="call", REFLRP_MALLOC_LINGER="30")
    out = subprocess.run([sys.executable, "-c", _LINGER], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["lingering"] == 0 and info["parent_still_lingering"] == 0 and info["deadline_moved"]
    assert info["child_restored"] and info["restored_by_itself"]
    assert info["after_release"] >= 32 * 2**20 and info["after_linger"] >= 64 * 2**20


def test_set_allocator_policy_validates():
    with pytest.raises(reflrp.ReflrpError, match="reuse"):
        reflrp.set_allocator_policy("jemalloc")


def _attention(mask: np.ndarray):
    """softmax(x @ x^T + mask) @ x (the mask a constant of the graph)."""
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["s"]),
             helper.make_node("Add", ["s", "mask"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["y"])]
    g = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])],
                          [numpy_helper.from_array(mask.astype(np.float32), "mask")])
    return reflrp.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


_LO = float(np.finfo(np.float32).min)
_MASKS = {  # logits: none masked; causal -inf / finfo.min; one row made only of masks; a huge finite logit
    "none": np.zeros((5, 5)),
    "causal-inf": np.triu(np.full((5, 5), -np.inf), 1),
    "causal-min": np.triu(np.full((5, 5), _LO), 1),
    "dead-row": np.where(np.arange(5)[:, None] == 2, _LO, np.triu(np.full((5, 5), -np.inf), 1)),
    "at-the-threshold": np.triu(np.full((5, 5), -65504.0), 1),
}


@pytest.mark.parametrize("mask", sorted(_MASKS))
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_softmax_and_product_rules_equal_the_plain_ones(mask, preset, dtype):
    """reflrp.fast.rules (softmax with one temporary, products written in place) against the plain rules:
    the same relevance, the same absorbed mass and deficit at the softmax."""
    m = _attention(_MASKS[mask])
    x = np.random.default_rng(3).normal(size=(2, 5, 3)).astype(np.float32)
    seed = np.random.default_rng(4).normal(size=(2, 5, 3))
    fast = reflrp.explain(m, {"x": x}, target=seed, preset=preset, dtype=dtype, fast=True)
    plain = reflrp.explain(m, {"x": x}, target=seed, preset=preset, dtype=dtype, fast=False)
    assert rel_err(fast.relevance["x"], plain.relevance["x"]) <= (1e-6 if dtype == "float32" else 1e-12)
    for a, b in zip(fast.conservation.nodes, plain.conservation.nodes):
        assert (a.node, a.rule) == (b.node, b.rule)
        scale = max(abs(b.inflow), 1e-30)
        for term in ("absorbed", "deficit", "outflow"):
            assert abs(getattr(a, term) - getattr(b, term)) <= 1e-5 * scale, (a.node, term)
    assert fast.conservation.ok == plain.conservation.ok


def test_the_fast_rule_table_keeps_a_rule_registered_over_a_plain_one():
    from reflrp import fast as fast_layer
    import reflrp.fast.rules as fast_rules
    from reflrp.rules import RULES
    table = fast_layer.rule_table(RULES)
    assert table["softmax"] is fast_rules.softmax_rule
    assert table["bilinear-uniform"] is fast_rules.bilinear_uniform_rule
    assert table["identity"] is RULES["identity"] and table["epsilon"] is RULES["epsilon"]
    mine = lambda ctx, inputs, outputs, R_out: None  # noqa: E731
    assert fast_layer.rule_table({**RULES, "softmax": mine})["softmax"] is mine


def test_a_golden_run_is_one_allocator_scope(tmp_path, monkeypatch):
    """The explains of one serial golden run share one call scope: glibc is set up once for the job, not
    once per input (each would fault its memory in again)."""
    from reflrp import golden, memory
    applied = []
    monkeypatch.setattr(memory, "_keep_buffers", lambda: applied.append(1) or False)
    monkeypatch.setattr(memory._Settings, "policy", "call")
    monkeypatch.setenv("REFLRP_MALLOC_LINGER", "0")
    memory.release_memory()  # an earlier test's call may still linger
    x = zoo.feeds("llama")
    (tmp_path / "in").mkdir()
    for i in range(3):
        np.savez(tmp_path / "in" / f"x{i}.npz", **x)
    run = golden.run(zoo.MODELS / "llama.onnx", tmp_path / "in", tmp_path / "out")
    assert len(run.written) == 3 and len(applied) == 1
    reflrp.explain(zoo.model("llama"), x)
    assert len(applied) == 2  # a call on its own is a scope of its own


def test_evaluate_and_attribute_are_one_allocator_scope_each(monkeypatch):
    """reflrp.evaluate and reflrp.attribute run many passes per call; each call is one scope."""
    from reflrp import memory
    applied = []
    monkeypatch.setattr(memory, "_keep_buffers", lambda: applied.append(1) or False)
    monkeypatch.setattr(memory._Settings, "policy", "call")
    monkeypatch.setenv("REFLRP_MALLOC_LINGER", "0")
    memory.release_memory()  # an earlier test's call may still linger
    m, x = zoo.model("llama"), zoo.feeds("llama")
    reflrp.attribute(m, x, method="integrated-gradients", steps=4)
    assert len(applied) == 1
    data = {k: np.concatenate([v, v]) for k, v in x.items()}
    reflrp.evaluate(m, data, methods=["attnlrp", "random"], steps=2, bootstrap=10, progress=False)
    assert len(applied) == 2


@pytest.mark.parametrize("name", zoo.names())
def test_a_piece_over_arrived_bytes_keeps_its_total_bit_for_bit(name, monkeypatch):
    """The speed layer reuses the total an arrived relevance array came with for a piece over the same bytes
    (identity rules, reshape views) instead of summing it again: every node account equals, bit for bit,
    the one where every piece is summed; some pieces are reused on every zoo model, none on the plain path."""
    from reflrp import propagate
    m, feeds = zoo.model(name), zoo.feeds(name)
    reused = {True: [], False: []}
    original = propagate._share

    def counting(ctx, r, arrived):
        total = original(ctx, r, arrived)
        reused[ctx.f is not plain_formulas].append(any(total is t for _, t in arrived))
        return total
    monkeypatch.setattr(propagate, "_share", counting)
    memo = reflrp.explain(m, feeds, targets=[None, None], fast=True, keep=())
    reflrp.explain(m, feeds, targets=[None, None], fast=False, keep=())
    monkeypatch.setattr(propagate, "_share", lambda ctx, r, arrived: ctx.f.totals(ctx.xp, r))
    summed = reflrp.explain(m, feeds, targets=[None, None], fast=True, keep=())
    assert any(reused[True]) and reused[False] and not any(reused[False])
    for a, b in zip(memo.conservation, summed.conservation):
        assert [(n.node, n.inflow, n.outflow, n.absorbed, n.loss, n.deficit) for n in a.nodes] == \
               [(n.node, n.inflow, n.outflow, n.absorbed, n.loss, n.deficit) for n in b.nodes]


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_linger_is_named_in_a_warning(value, monkeypatch):
    from reflrp import memory
    monkeypatch.setattr(memory._Settings, "bad_linger", None)
    monkeypatch.setenv("REFLRP_MALLOC_LINGER", value)
    with pytest.warns(reflrp.ReflrpWarning, match=f"REFLRP_MALLOC_LINGER={value!r}"):
        assert memory.linger_seconds() == 1.0
    monkeypatch.setenv("REFLRP_MALLOC_LINGER", "0.25")
    assert memory.linger_seconds() == 0.25


def test_a_bad_allocator_policy_in_the_environment_is_named():
    code = "import warnings, reflrp.memory as m; warnings.simplefilter('error'); m.allocator_policy()"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, REFLRP_MALLOC="jemalloc"),
                         capture_output=True, text=True)
    assert out.returncode != 0 and "REFLRP_MALLOC='jemalloc'" in out.stderr
