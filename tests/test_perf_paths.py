"""The fast paths behave like the plain computations: BLAS layout choices in MatMul, the allocator
policy, and the sums the relevance pass reuses instead of recomputing."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reflrp
from reflrp.ops.linalg import matmul
from reflrp.rules import forget_totals, note_total, times, total

import zoo

rng = np.random.default_rng(7)


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
    got = matmul(np, a, b)
    want = np.einsum("...ij,...jk->...ik", a, b)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_matmul_takes_the_transposed_route_for_a_large_transposed_stack():
    """A^T @ G with A a big contiguous stack: computed as (G^T @ A)^T, returning a transposed view."""
    A = rng.standard_normal((2, 64, 64))
    G = rng.standard_normal((2, 64, 3))
    got = matmul(np, np.swapaxes(A, -1, -2), G)
    assert not got.flags.c_contiguous and np.swapaxes(got, -1, -2).flags.c_contiguous
    np.testing.assert_allclose(got, np.einsum("bji,bjk->bik", A, G), rtol=1e-12, atol=1e-12)
    # a large output keeps the direct route: scores from Q @ K^T stay contiguous
    Q, K = rng.standard_normal((2, 64, 3)), rng.standard_normal((2, 64, 3))
    assert matmul(np, Q, np.swapaxes(K, -1, -2)).flags.c_contiguous


def test_noted_totals_are_what_total_computes():
    x, G = rng.standard_normal((50, 30)).astype(np.float32), rng.standard_normal((50, 30)).astype(np.float32)
    r = times(np, x, G)
    noted = total(np, r)
    forget_totals()
    assert noted == total(np, r) == float((x * G).sum())
    # a noted total is only used for that very array object
    other = r.copy()
    other[0, 0] += 1
    note_total(r, noted)
    assert total(np, other) == float(other.sum()) != noted
    forget_totals()


def test_explain_books_unchanged_by_reused_totals():
    """Every node's residual stays at rounding level with the reused sums (llama, float32 and float64)."""
    m, feeds = zoo.model("llama"), zoo.feeds("llama")
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-4)):
        assert reflrp.explain(m, feeds, dtype=dtype).conservation.max_residual <= tol, dtype


_PROBE = r"""
import ctypes, json, numpy as np, reflrp
libc = ctypes.CDLL("libc.so.6")
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MI
from reflrp.memory import apply_allocator_policy
applied = apply_allocator_policy()
before = libc.mallinfo2().hblkhd
a = np.ones(4 * 2**20 // 8)  # 4 MiB: mmapped under glibc's default policy
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2  # noqa: B018  (glibc >= 2.33)
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("policy", ["reuse", "system"])
def test_allocator_policy_serves_arrays_from_the_heap(policy):
    env = dict(os.environ, REFLRP_MALLOC=policy)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if policy == "reuse":
        assert info == {"applied": True, "mmapped": 0}
    else:
        assert info["applied"] is False and info["mmapped"] >= 4 * 2**20


_BACK = _PROBE.replace('print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))', """
reuse = libc.mallinfo2().hblkhd - before
del a
reflrp.set_allocator_policy("system")  # after "reuse" was applied: glibc's defaults come back
reflrp.release_memory()
before = libc.mallinfo2().hblkhd
b = np.ones(4 * 2**20 // 8)
print(json.dumps({"applied": applied, "reuse": reuse, "system": libc.mallinfo2().hblkhd - before}))
""")


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_allocator_policy_can_be_switched_back():
    env = dict(os.environ, REFLRP_MALLOC="reuse")
    out = subprocess.run([sys.executable, "-c", _BACK], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["applied"] is True and info["reuse"] == 0 and info["system"] >= 4 * 2**20


def test_set_allocator_policy_validates():
    with pytest.raises(ValueError, match="reuse"):
        reflrp.set_allocator_policy("jemalloc")


@pytest.mark.parametrize("nonzero_rows", [[], [5], [0, 9, 17], list(range(0, 24, 2))])
def test_rows_times_matrix_equals_the_dense_product(nonzero_rows):
    """The relevance pass multiplies only the rows of G that are not zero; the rest stay exactly 0."""
    from reflrp.rules.linear import _rows_times_matrix, matmul_vjp
    g = np.zeros((2, 12, 7))
    flat = g.reshape(-1, 7)
    flat[nonzero_rows] = rng.standard_normal((len(nonzero_rows), 7))
    m = rng.standard_normal((7, 5))
    got = _rows_times_matrix(np, g, m)
    if 2 * len(nonzero_rows) > 24:
        assert got is None  # mostly non-zero: the plain product is cheaper
    else:
        np.testing.assert_allclose(got, g @ m, rtol=1e-13, atol=0)
        assert not got.reshape(-1, 5)[[i for i in range(24) if i not in nonzero_rows]].any()
    x = rng.standard_normal((2, 12, 5))
    ga, _ = matmul_vjp(np, x, m.T, g, (True, False))
    np.testing.assert_allclose(ga, g @ m, rtol=1e-13, atol=1e-15)
