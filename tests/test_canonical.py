"""Every import-time rewrite (reflrp.canonical) against onnxruntime running the fused op itself.

Each case is a one-node model built with onnx.helper; reflrp runs the expansion in float32 and the
outputs must match onnxruntime's kernel to float32 rounding. The two ops onnxruntime implements only
on CUDA (BiasAdd, BiasSplitGelu) are checked against their float64 formulas instead. A test over the
registry fails for a rewrite without a case.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import reflrp
from reflrp.canonical import supported_rewrites
from reflrp.canonical.qoperator import QOPERATOR_OPS

ort = pytest.importorskip("onnxruntime")
MS = "com.microsoft"
RNG_SEED = 11
TOL = 2e-5
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
        np.dtype(np.int8): TensorProto.INT8}


def model(domain, op, inputs, consts=(), n_out=1, keep=None, opset=17, **attrs):
    """One node ``domain::op``; ``inputs`` name -> array in input order ("" names skip an input),
    names in ``consts`` become initializers. Outputs ``y0..``; ``keep`` picks the graph outputs."""
    names = [n if not n.startswith("_") else "" for n in inputs]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="fused", domain=domain, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, ELEM[v.dtype], list(v.shape)) for n, v in inputs.items()
                    if not n.startswith("_") and n not in consts]
    inits = [numpy_helper.from_array(v, n) for n, v in inputs.items() if n in consts]
    kept = [outs[i] for i in (keep if keep is not None else range(n_out))]
    g = helper.make_graph([node], "case", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in kept],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m, {n: v for n, v in inputs.items() if not n.startswith("_") and n not in consts}


def ort_run(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def reflrp_run(m, feeds):
    return list(reflrp.load(m).run(feeds).values())


def assert_matches(m, feeds, tol=TOL):
    ours, theirs = reflrp_run(m, feeds), ort_run(m, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a.astype(np.float64) - b).max()) <= tol * scale, (a.ravel()[:6], b.ravel()[:6])
    return ours, theirs


def rand(*shape, scale=1.0, seed=0):
    return (np.random.default_rng(RNG_SEED + seed).standard_normal(shape) * scale).astype(np.float32)


B, S, H, N = 2, 5, 16, 4  # batch, sequence, hidden, heads


# ------------------------------------------------------------------ normalizations and activations

NORM_CASES = {
    "skip_ln": (MS, "SkipLayerNormalization", dict(x=rand(B, S, H), skip=rand(B, S, H, seed=1), g=rand(H, seed=2),
                                                  b=rand(H, seed=3), bias=rand(H, seed=4)), 4, [0, 3], dict(epsilon=1e-5)),
    "skip_ln_no_beta_bias": (MS, "SkipLayerNormalization", dict(x=rand(B, S, H), skip=rand(B, S, H, seed=1),
                                                               g=rand(H, seed=2)), 1, None, {}),
    "skip_ln_2d_skip": (MS, "SkipLayerNormalization", dict(x=rand(B, S, H), skip=rand(S, H, seed=1), g=rand(H, seed=2),
                                                          b=rand(H, seed=3)), 1, None, dict(epsilon=1e-3)),
    "skip_rms": (MS, "SkipSimplifiedLayerNormalization", dict(x=rand(B, S, H), skip=rand(B, S, H, seed=1),
                                                            g=rand(H, seed=2), bias=rand(H, seed=4)), 4, [0, 3],
                 dict(epsilon=1e-6)),
    "skip_rms_no_bias": (MS, "SkipSimplifiedLayerNormalization", dict(x=rand(B, S, H), skip=rand(B, S, H, seed=1),
                                                                    g=rand(H, seed=2)), 1, None, {}),
    "rms": ("", "SimplifiedLayerNormalization", dict(x=rand(B, S, H), g=rand(H, seed=2)), 1, None, dict(epsilon=1e-5)),
    "rms_eps": ("", "SimplifiedLayerNormalization", dict(x=rand(B, S, H) * 0.01, g=rand(H, seed=2)), 1, None,
                dict(epsilon=0.1)),
    "gelu": (MS, "Gelu", dict(x=rand(B, S, H, scale=2)), 1, None, {}),
    "bias_gelu": (MS, "BiasGelu", dict(x=rand(B, S, H, scale=2), b=rand(H, seed=1)), 1, None, {}),
    "fast_gelu": (MS, "FastGelu", dict(x=rand(B, S, H, scale=2)), 1, None, {}),
    "fast_gelu_bias": (MS, "FastGelu", dict(x=rand(B, S, H, scale=2), b=rand(H, seed=1)), 1, None, {}),
    "quick_gelu": (MS, "QuickGelu", dict(x=rand(B, S, H, scale=2)), 1, None, {}),
    "silu": (MS, "QuickGelu", dict(x=rand(B, S, H, scale=2)), 1, None, dict(alpha=1.0)),
}


@pytest.mark.parametrize("case", sorted(NORM_CASES))
def test_norms_and_activations(case):
    domain, op, inputs, n_out, keep, attrs = NORM_CASES[case]
    assert_matches(*model(domain, op, inputs, consts=(), n_out=n_out, keep=keep, **attrs))


def test_contrib_layer_normalization_below_opset_17():
    x, g, b = rand(B, S, H), rand(H, seed=1), rand(H, seed=2)
    assert_matches(*model("", "LayerNormalization", dict(x=x, g=g, b=b), opset=16, epsilon=1e-4))


def test_layer_norm_extra_outputs_equal_the_core_op():
    """mean / inv_std outputs of SkipLayerNormalization are LayerNormalization's."""
    x, skip, g = rand(B, S, H), rand(B, S, H, seed=1), rand(H, seed=2)
    m, feeds = model(MS, "SkipLayerNormalization", dict(x=x, skip=skip, g=g), n_out=4, epsilon=1e-5)
    y, mean, inv, total = reflrp_run(m, feeds)
    s = (x + skip).astype(np.float64)
    assert np.allclose(total, s, atol=1e-6)
    assert np.allclose(mean.squeeze(-1), s.mean(-1), atol=1e-6)
    assert np.allclose(inv.squeeze(-1), 1 / np.sqrt(s.var(-1) + 1e-5), rtol=1e-5)


def test_cuda_only_bias_ops_match_their_formulas():
    x, b, skip = rand(B, S, 2 * H), rand(2 * H, seed=1), rand(B, S, 2 * H, seed=2)
    m, feeds = model(MS, "BiasAdd", dict(x=x, b=b, skip=skip))
    assert np.allclose(reflrp_run(m, feeds)[0], (x.astype(np.float64) + b) + skip, atol=1e-6)
    m, feeds = model(MS, "BiasSplitGelu", dict(x=x, b=b))
    z = x.astype(np.float64) + b
    left, right = z[..., :H], z[..., H:]
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    assert np.allclose(reflrp_run(m, feeds)[0], left * gelu(right), atol=1e-5)


def test_gelu_negative_control():
    """The erf and tanh GELUs differ by more than the tolerance: the comparison can fail."""
    x = rand(B, S, H, scale=2)
    erf = reflrp_run(*model(MS, "Gelu", dict(x=x)))[0]
    tanh = ort_run(*model(MS, "FastGelu", dict(x=x)))[0]
    assert np.abs(erf - tanh).max() > 2 * TOL * np.abs(tanh).max()


# ------------------------------------------------------------------ embeddings

def embed_inputs(segment=True, mask=True, positions=False):
    rng = np.random.default_rng(3)
    d = dict(ids=rng.integers(0, 10, (B, S)).astype(np.int32),
             seg=rng.integers(0, 2, (B, S)).astype(np.int32) if segment else None,
             word=rand(10, H), pos=rand(8, H, seed=1), segw=rand(2, H, seed=2) if segment else None,
             g=rand(H, seed=3), b=rand(H, seed=4))
    if mask:
        m = np.ones((B, S), np.int32)
        m[1, 3:] = 0
        d["mask"] = m
    if positions:
        d["posids"] = rng.integers(0, 8, (B, S)).astype(np.int32)
    return {(k if v is not None else f"_{k}"): (v if v is not None else np.zeros(0, np.float32)) for k, v in d.items()}


@pytest.mark.parametrize("segment,mask,positions", [(True, True, False), (False, False, False), (True, False, True)])
def test_embed_layer_normalization(segment, mask, positions):
    inputs = embed_inputs(segment, mask, positions)
    consts = ("word", "pos", "segw", "g", "b")
    # without a mask onnxruntime leaves mask_index unspecified: compare it only with a mask
    m, feeds = model(MS, "EmbedLayerNormalization", inputs, consts, n_out=3, keep=None if mask else [0, 2],
                     epsilon=1e-5)
    assert_matches(m, feeds)


# ------------------------------------------------------------------ fused linear

@pytest.mark.parametrize("transA,transB,alpha", [(0, 0, 1.0), (0, 1, 0.125), (1, 0, 2.0), (1, 1, -0.5)])
def test_fused_matmul(transA, transB, alpha):
    a = rand(B, 3, 6, 4) if transA else rand(B, 3, 4, 6)
    b = rand(B, 3, 5, 6, seed=1) if transB else rand(B, 3, 6, 5, seed=1)
    assert_matches(*model(MS, "FusedMatMul", dict(a=a, b=b), transA=transA, transB=transB, alpha=alpha))


@pytest.mark.parametrize("activation,extra", [("Relu", {}), ("LeakyRelu", dict(activation_alpha=0.2)),
                                              ("Sigmoid", {}), ("Tanh", {})])
def test_fused_gemm(activation, extra):
    inputs = dict(a=rand(4, 6), w=rand(5, 6, seed=1), c=rand(5, seed=2))
    assert_matches(*model(MS, "FusedGemm", inputs, ("w", "c"), transB=1, alpha=0.5, activation=activation, **extra))


@pytest.mark.parametrize("activation,params,with_z", [("Relu", None, False), ("Clip", [-0.5, 0.5], True),
                                                      ("LeakyRelu", [0.3], False), ("HardSigmoid", [0.3, 0.4], True)])
def test_fused_conv(activation, params, with_z):
    inputs = dict(x=rand(1, 3, 6, 6), w=rand(4, 3, 3, 3, seed=1), b=rand(4, seed=2))
    if with_z:
        inputs["z"] = rand(1, 4, 6, 6, seed=3)
    attrs = dict(activation=activation, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    if params:
        attrs["activation_params"] = params
    assert_matches(*model(MS, "FusedConv", inputs, ("w", "b"), **attrs))


def nchwc_source():
    """Convs with blocked and NCHW inputs, a depthwise conv, a residual Add, pools: what 'all' turns NCHWc."""
    P = onnx.helper
    c = lambda name, shape, seed: numpy_helper.from_array(rand(*shape, scale=0.3, seed=seed), name)  # noqa: E731
    nodes = [P.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             P.make_node("Relu", ["c1"], ["r1"]),
             P.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             P.make_node("Conv", ["c2", "w3"], ["c3"], pads=[1, 1, 1, 1], group=16),
             P.make_node("Add", ["c3", "c2"], ["a"]),
             P.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             P.make_node("AveragePool", ["p"], ["q"], kernel_shape=[2, 2], strides=[1, 1]),
             P.make_node("Conv", ["x", "w4", "b4"], ["c4"], strides=[2, 2], kernel_shape=[2, 2]),
             P.make_node("GlobalAveragePool", ["q"], ["y"])]
    inits = [c("w1", (16, 3, 3, 3), 1), c("b1", (16,), 2), c("w2", (16, 16, 3, 3), 3), c("b2", (16,), 4),
             c("w3", (16, 1, 3, 3), 5), c("w4", (5, 3, 2, 2), 6), c("b4", (5,), 7)]
    g = P.make_graph(nodes, "nchwc", [P.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                     [P.make_tensor_value_info("y", TensorProto.FLOAT, None),
                      P.make_tensor_value_info("c4", TensorProto.FLOAT, None)], initializer=inits)
    m = P.make_model(g, opset_imports=[P.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_nchwc_session_save(tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(nchwc_source().SerializeToString(), so, providers=["CPUExecutionProvider"])
    saved = onnx.load(str(tmp_path / "all.onnx"))
    ops = {(n.domain, n.op_type) for n in saved.graph.node}
    if ("com.microsoft.nchwc", "Conv") not in ops:
        pytest.skip("this CPU's onnxruntime does not use the NCHWc layout")
    feeds = {"x": rand(1, 3, 8, 8, seed=9)}
    assert_matches(saved, feeds)
    plain = ort_run(nchwc_source(), feeds)
    for a, b in zip(reflrp_run(saved, feeds), plain):
        assert np.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ attention family

def attention_inputs(mask=None, past=False, extra=False, v_size=H):
    d = dict(x=rand(B, S, H), w=rand(H, 2 * H + v_size, scale=0.3, seed=1), bias=rand(2 * H + v_size, scale=0.1, seed=2))
    d["mask"] = mask if mask is not None else np.zeros(0, np.int32)
    if mask is None:
        d["_mask"] = d.pop("mask")
    if past:
        d["past"] = rand(2, B, N, 3, H // N, seed=3)
    elif extra:
        d["_past"] = np.zeros(0, np.float32)
    if extra:
        d["extra"] = rand(B, N, S, S + (3 if past else 0), seed=4)
    return d


def raw_mask(total):
    m = np.ones((B, total), np.int32)
    m[1, -2:] = 0
    return m


ATTENTION_CASES = {
    "plain": (attention_inputs(), {}),
    "raw_mask": (attention_inputs(raw_mask(S)), {}),
    "mask_3d": (attention_inputs(np.tril(np.ones((S, S), np.int32))[None].repeat(B, 0)), {}),
    "key_lengths": (attention_inputs(np.array([S, 3], np.int32)), {}),
    "start_end": (attention_inputs(np.array([S, 4, 0, 1], np.int32)), {}),
    "unidirectional": (attention_inputs(), dict(unidirectional=1)),
    "causal_and_mask": (attention_inputs(raw_mask(S)), dict(unidirectional=1, mask_filter_value=-1000.0)),
    "past": (attention_inputs(raw_mask(S + 3), past=True), dict(unidirectional=1)),
    "attention_bias": (attention_inputs(extra=True), dict(scale=0.3)),
    "v_size": (attention_inputs(v_size=8), dict(qkv_hidden_sizes=[H, H, 8])),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention(case):
    inputs, attrs = ATTENTION_CASES[case]
    n_out = 2 if "past" in inputs else 1
    assert_matches(*model(MS, "Attention", inputs, ("w", "bias"), n_out=n_out, num_heads=N, **attrs))


def test_attention_negative_control():
    """With and without the causal mask the outputs differ: the mask is honoured, not ignored."""
    inputs, _ = ATTENTION_CASES["plain"]
    plain = reflrp_run(*model(MS, "Attention", inputs, ("w", "bias"), num_heads=N))[0]
    causal = ort_run(*model(MS, "Attention", inputs, ("w", "bias"), num_heads=N, unidirectional=1))[0]
    assert np.abs(plain - causal).max() > 100 * TOL * np.abs(causal).max()


def mha_inputs(mask=None, past=False, extra=False, kv=S):
    d = dict(q=rand(B, S, H), k=rand(B, kv, H, seed=1), v=rand(B, kv, H, seed=2), bias=rand(3 * H, scale=0.1, seed=3))
    d["mask" if mask is not None else "_mask"] = mask if mask is not None else np.zeros(0, np.int32)
    d["extra" if extra else "_extra"] = rand(B, N, S, kv + (3 if past else 0), seed=4) if extra else np.zeros(0, np.float32)
    if past:
        d["pk"], d["pv"] = rand(B, N, 3, H // N, seed=5), rand(B, N, 3, H // N, seed=6)
    return d


MHA_CASES = {
    "plain": (mha_inputs(), {}, 1),
    "cross": (mha_inputs(kv=7), {}, 1),
    "padding": (mha_inputs(raw_mask(S)), {}, 1),
    "lengths": (mha_inputs(np.array([S, 2], np.int32)), {}, 1),
    "bias_scale": (mha_inputs(extra=True), dict(scale=0.2), 1),
    "past_causal": (mha_inputs(past=True), dict(unidirectional=1), 3),
}


@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_multi_head_attention(case):
    inputs, attrs, n_out = MHA_CASES[case]
    assert_matches(*model(MS, "MultiHeadAttention", inputs, ("bias",), n_out=n_out, num_heads=N, **attrs))


def rotary_cache(max_len, half):
    inv = 1.0 / 10000 ** (np.arange(half) / half)
    ang = np.arange(max_len)[:, None] * inv[None]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def gqa_inputs(past_len=0, packed=False, kvn=2, rotary=False, seq=S, B=B):
    size = 16 if rotary else 8  # onnxruntime's CPU kernel: multiples of 8 (16 with rotary)
    d = {}
    if packed:
        d["q"] = rand(B, seq, (N + 2 * kvn) * size)
        d["_k"], d["_v"] = np.zeros(0, np.float32), np.zeros(0, np.float32)
    else:
        d["q"], d["k"], d["v"] = rand(B, seq, N * size), rand(B, seq, kvn * size, seed=1), rand(B, seq, kvn * size, seed=2)
    d["pk"], d["pv"] = rand(B, kvn, past_len, size, seed=3), rand(B, kvn, past_len, size, seed=4)
    d["seqlens"] = np.full(B, past_len + seq - 1, np.int32)
    d["total"] = np.array(past_len + seq, np.int32)
    if rotary:
        d["cos"], d["sin"] = rotary_cache(32, size // 2)
    return d


GQA_CASES = {
    "prompt": (gqa_inputs(), {}),
    "mqa": (gqa_inputs(kvn=1), {}),
    "packed": (gqa_inputs(packed=True), {}),
    "decode": (gqa_inputs(past_len=4, seq=1), {}),
    "chunk_with_past": (gqa_inputs(past_len=3, seq=2, B=1), {}),  # onnxruntime: batch 1 for chunks
    "rotary": (gqa_inputs(rotary=True), dict(do_rotary=1)),
    "rotary_interleaved_decode": (gqa_inputs(past_len=4, seq=1, rotary=True), dict(do_rotary=1, rotary_interleaved=1)),
    "window": (gqa_inputs(), dict(local_window_size=2)),
    "softcap_scale": (gqa_inputs(), dict(softcap=1.5, scale=0.7)),
}


@pytest.mark.parametrize("case", sorted(GQA_CASES))
def test_group_query_attention(case):
    inputs, attrs = GQA_CASES[case]
    kvn = 1 if case == "mqa" else 2
    consts = ("cos", "sin")
    assert_matches(*model(MS, "GroupQueryAttention", inputs, consts, n_out=3, num_heads=N, kv_num_heads=kvn, **attrs))


ROTARY_CASES = {
    "3d": (rand(B, S, H), np.arange(S, dtype=np.int64)[None].repeat(B, 0) + np.array([[0], [2]]), dict(num_heads=N)),
    "3d_interleaved": (rand(B, S, H), np.arange(S, dtype=np.int64)[None].repeat(B, 0), dict(num_heads=N, interleaved=1)),
    "4d": (rand(B, N, S, H // N), np.arange(S, dtype=np.int64)[None].repeat(B, 0), {}),
    "offset": (rand(B, S, H), np.array([3], np.int64), dict(num_heads=N)),
    "partial": (rand(B, S, 2 * H), np.arange(S, dtype=np.int64)[None].repeat(B, 0),
                dict(num_heads=N, rotary_embedding_dim=4)),
}


@pytest.mark.parametrize("case", sorted(ROTARY_CASES))
def test_rotary_embedding(case):
    x, pos, attrs = ROTARY_CASES[case]
    half = attrs.get("rotary_embedding_dim", x.shape[-1] if x.ndim == 4 else x.shape[-1] // N) // 2
    cos, sin = rotary_cache(16, half)
    assert_matches(*model(MS, "RotaryEmbedding", dict(x=x, pos=pos, cos=cos, sin=sin), ("cos", "sin"), **attrs))


# ------------------------------------------------------------------ 4-bit and quantized matmuls

def pack_nibbles(q):
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


@pytest.mark.parametrize("K,block,zero_points,bias", [(32, 16, "packed", False), (40, 16, None, True),
                                                      (32, 32, "float", False)])
def test_matmul_nbits(K, block, zero_points, bias):
    rng = np.random.default_rng(5)
    Nout = 6
    nb = -(-K // block)
    q = rng.integers(0, 16, (Nout, nb * block)).astype(np.uint8)
    inputs = dict(a=rand(B, S, K), w=pack_nibbles(q).reshape(Nout, nb, block // 2),
                  scales=(rng.random((Nout, nb)) * 0.1 + 0.01).astype(np.float32))
    if zero_points == "packed":
        zp = rng.integers(0, 16, (Nout, nb + nb % 2)).astype(np.uint8)
        inputs["zp"] = pack_nibbles(zp)
    elif zero_points == "float":
        inputs["zp"] = rng.integers(0, 16, (Nout, nb)).astype(np.float32)
    else:
        inputs["_zp"] = np.zeros(0, np.uint8)
    if bias:
        inputs["_g"] = np.zeros(0, np.int32)
        inputs["bias"] = rand(Nout, seed=7)
    consts = ("w", "scales", "zp", "bias")
    assert_matches(*model(MS, "MatMulNBits", inputs, consts, K=K, N=Nout, bits=4, block_size=block))


def test_matmul_integer_to_float_and_dynamic_quantize_matmul():
    rng = np.random.default_rng(6)
    a_q = rng.integers(0, 256, (B, S, 8)).astype(np.uint8)
    b_q = rng.integers(0, 256, (8, 6)).astype(np.uint8)
    inputs = dict(a=a_q, b=b_q, sa=np.array(0.02, np.float32), sb=np.array(0.03, np.float32),
                  za=np.array(120, np.uint8), zb=np.array(130, np.uint8), bias=rand(6))
    assert_matches(*model(MS, "MatMulIntegerToFloat", inputs, ("b", "sb", "zb", "bias")))
    inputs = dict(a=rand(B, S, 8), b=b_q, sb=np.array(0.03, np.float32), zb=np.array(130, np.uint8), bias=rand(6))
    assert_matches(*model(MS, "DynamicQuantizeMatMul", inputs, ("b", "sb", "zb", "bias")))


def test_contrib_quantize_dequantize():
    x = rand(B, S, H)
    inputs = dict(x=x, s=np.array(0.05, np.float32), z=np.array(3, np.int8))
    assert_matches(*model(MS, "QuantizeLinear", inputs, ("s", "z")), tol=0)
    q = np.random.default_rng(1).integers(-128, 128, (B, S, H)).astype(np.int8)
    inputs = dict(q=q, s=(np.random.default_rng(2).random(H) * 0.1).astype(np.float32), z=np.zeros(H, np.int8))
    assert_matches(*model(MS, "DequantizeLinear", inputs, ("s", "z"), axis=2))


# ------------------------------------------------------------------ the registry and the record

CASE_OPS = {("", "SimplifiedLayerNormalization"), ("", "LayerNormalization"), ("com.microsoft.nchwc", "Conv"),
            ("com.microsoft.nchwc", "ReorderInput"), ("com.microsoft.nchwc", "ReorderOutput"),
            ("com.microsoft.nchwc", "MaxPool"), ("com.microsoft.nchwc", "AveragePool"),
            ("com.microsoft.nchwc", "GlobalAveragePool")} | {
    (MS, op) for op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "BiasGelu", "FastGelu",
                        "QuickGelu", "BiasAdd", "BiasSplitGelu", "EmbedLayerNormalization", "FusedMatMul",
                        "FusedGemm", "FusedConv", "Attention", "MultiHeadAttention", "GroupQueryAttention",
                        "RotaryEmbedding", "MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                        "QuantizeLinear", "DequantizeLinear")}
UNTESTED = {(MS, "TransposeMatMul"), (MS, "SimplifiedLayerNormalization"), (MS, "LayerNormalization"),
            ("com.microsoft.nchwc", "GlobalMaxPool"),  # aliases of tested rewrites
            ("", "If")} | {  # folding an If: tests/test_control_flow.py
    (MS, op) for op in QOPERATOR_OPS + ("QAttention", "QEmbedLayerNormalization")}  # tests/test_qoperator.py
# (a case per QOperator op) and tests/test_quantized.py (QAttention, QEmbedLayerNormalization)


def test_every_rewrite_has_a_case():
    assert set(supported_rewrites()) - CASE_OPS - UNTESTED == set()


def test_expansion_is_recorded_and_named_after_the_original():
    m, _ = model(MS, "SkipLayerNormalization", dict(x=rand(B, S, H), skip=rand(B, S, H), g=rand(H)))
    graph = reflrp.load(m).graph
    record = graph.expansions["fused"]
    assert record.original.op_type == "SkipLayerNormalization" and record.original.domain == MS
    assert record.nodes and all(name.startswith("fused/") for name in record.nodes)
    assert {n.name for n in graph.nodes} == set(record.nodes)
    assert all(n.domain == "" for n in graph.nodes)


def test_unsupported_contrib_op_is_refused_naming_node_op_and_domain():
    m, _ = model(MS, "WordConvEmbedding", dict(x=np.zeros((2, 3, 4), np.int32)))
    with pytest.raises(reflrp.UnsupportedOpError) as e:
        reflrp.load(m)
    assert "fused" in str(e.value) and "WordConvEmbedding" in str(e.value) and "com.microsoft" in str(e.value)


def test_unsupported_attribute_is_refused_naming_the_node():
    inputs, _ = ATTENTION_CASES["plain"]
    m, _ = model(MS, "Attention", inputs, ("w", "bias"), num_heads=N, do_rotary=1)
    with pytest.raises(reflrp.UnsupportedOpError, match="fused.*do_rotary"):
        reflrp.load(m)


# ------------------------------------------------------------------ the committed deployments

DEPLOYED = Path(__file__).resolve().parents[1] / "models" / "deployed"
MANIFEST = json.loads((DEPLOYED / "MANIFEST.json").read_text())["models"]
FP32_OPTIMIZED = ("opt", "opt0", "opt99", "extended", "all", "optimum_O2", "genai_opt")
FLOAT_MODELS = [e for e in MANIFEST if e.get("committed") and e["pipeline"] in FP32_OPTIMIZED + ("opt_fp16", "fp16")]


def deployed_feeds(entry, graph):
    feeds = dict(np.load(DEPLOYED / entry["feeds"]))
    return {v.name: feeds[v.name].astype(v.dtype) if v.dtype is not None and v.dtype.kind == "f" else feeds[v.name]
            for v in graph.inputs}


def source_path(entry):
    """The fp32 source: the zoo's model, or one exported for the deployments (bert_ids, llama_kv, ...)."""
    own = DEPLOYED / f"{entry['source']}.onnx"
    return own if own.exists() else DEPLOYED.parent / f"{entry['source']}.onnx"


@pytest.mark.parametrize("entry", FLOAT_MODELS, ids=lambda e: e["file"])
def test_deployed_float_model_runs_like_onnxruntime(entry):
    path = DEPLOYED / entry["file"]
    m = reflrp.load(str(path))
    feeds = deployed_feeds(entry, m.graph)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ours = next(iter(m.run(feeds).values()))
    tol = 5e-6 if entry["pipeline"] in FP32_OPTIMIZED else 1e-2  # float16: onnxruntime rounds per kernel
    assert float(np.abs(ours.astype(np.float64) - theirs).max()) <= tol * float(np.abs(theirs).max())


@pytest.mark.parametrize("entry", [e for e in FLOAT_MODELS if e["pipeline"] in FP32_OPTIMIZED], ids=lambda e: e["file"])
def test_optimized_model_relevance_equals_its_source(entry):
    """Same weights, same input, float64: the expansions get the rules the unfused graph gets."""
    optimized, source = reflrp.load(str(DEPLOYED / entry["file"])), reflrp.load(str(source_path(entry)))
    feeds = deployed_feeds(entry, source.graph)
    ours, theirs = (reflrp.explain(m, feeds) for m in (optimized, source))
    r_opt, r_src = (np.asarray(a.relevance[a.wrt[0]]) for a in (ours, theirs))
    assert r_opt.shape == r_src.shape and np.isfinite(r_opt).all()
    assert float(np.abs(r_opt - r_src).max()) <= 1e-6 * float(np.abs(r_src).max())
    assert float(np.abs(r_src).max()) > 0  # negative control: a zero relevance would pass trivially
