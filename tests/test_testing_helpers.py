"""reflrp.testing: what another backend's test suite uses (the fixture comes from the pytest plugin)."""
from __future__ import annotations

import pytest

import reflrp
from reflrp.golden import write_golden
from reflrp.testing import assert_conserves, assert_relevance_close
from zoo import feeds, golden, model


@pytest.fixture(scope="module")
def att():
    return reflrp.explain(model("llama"), feeds("llama"), preset="cp-lrp")


def test_three_line_check_against_golden_file(tmp_path, att, reflrp_golden):
    write_golden(tmp_path / "g.npz", att, feeds("llama"), model("llama"))
    gold = reflrp_golden(tmp_path / "g.npz")
    assert_relevance_close(att.relevance["inputs_embeds"], gold)
    with pytest.raises(AssertionError, match="inputs_embeds: max \\|err\\|"):
        assert_relevance_close(att.relevance["inputs_embeds"] * 1.001, gold)


def test_lxt_relevance_passes_at_documented_tolerance():
    g = golden("llama")
    if g is None:
        pytest.skip("no LXT golden")
    ours = reflrp.explain(model("llama"), {"inputs_embeds": g["inputs:inputs_embeds"]})
    assert_relevance_close(g["attnlrp:relevance"], ours, rtol=1e-6)


def test_assert_conserves(att):
    assert_conserves(att, include_absorbed=False)  # CP-LRP on a bias-free LLaMA
    attn = reflrp.explain(model("llama"), feeds("llama"))
    assert_conserves(attn)  # books close including the softmax deficit
    with pytest.raises(AssertionError, match="not conserved"):
        assert_conserves(attn, include_absorbed=False)
