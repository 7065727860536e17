#!/usr/bin/env python
"""Build the graphs users deploy from the tiny zoo models: onnxruntime's transformer optimizer, session
saves at 'extended' and 'all', the float16 converter, dynamic and static (QDQ and QOperator) quantization,
MatMulNBits 4-bit weights, and a bfloat16 export.

Usage:
    python tools/make_deployed_models.py                  # everything -> models/deployed/
    python tools/make_deployed_models.py --only bert vit  # some sources (other manifest entries kept)

Sources are the committed models/<name>.onnx (same weights and reference inputs as the zoo), plus
``bert_ids``: the zoo's bert exported by the legacy exporter with input_ids / attention_mask /
token_type_ids inputs, which is what the optimizer fuses into EmbedLayerNormalization and Attention, and
``deberta``: a tiny DeBERTa-v2 (from a config, perturbed weights) by the legacy exporter, whose graph holds
``If`` nodes deciding from shapes only (source only: reflrp folds them at load), and ``llama_kv``: a tiny
LLaMA (GQA, 2 of 4 KV heads) with past keys/values by the legacy exporter at fixed shapes, put through
onnxruntime's LLaMA recipe (``models/llama/convert_to_onnx.optimize_export``: optimize_model as gpt2 at
opt_level 0, then ``convert_generation.replace_mha_with_gqa``).
Each result is written as .cache/deployed/<source>.<pipeline>.onnx when it is under 1 MB (results whose
bytes equal an earlier pipeline's are recorded as duplicates, not written twice); the COMMITTED subset
is copied to models/deployed/.
models/deployed/MANIFEST.json lists, per file: source, pipeline (the call that made it), op types,
opset imports, sha256 and size; models/deployed/<source>.feeds.npz holds the reference feed.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reflrp
from torch_common import op_types, save_npz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS, OUT, WORK = ROOT / "models", ROOT / "models" / "deployed", ROOT / ".cache" / "deployed"
MAX_BYTES = 1 << 20
# the representative subset committed to models/deployed (every result stays in .cache/deployed)
COMMITTED = {"bert": ("opt", "opt_fp16", "extended", "qdyn_u8", "qdq", "qdq_pc", "nbits4", "bf16"),
             "bert_legacy": ("opt", "opt99"),
             "bert_ids": ("source", "opt", "opt_fp16", "extended", "optimum_O2", "qdyn_u8", "qdq", "qdyn_opt",
                          "qdyn_opt_pc"),
             "gpt2": ("opt", "extended", "qdyn_s8rr", "qdq", "qop_rr"), "vit": ("opt99", "all", "qdyn_u8", "nbits4s"),
             "llama": ("opt", "opt99", "extended", "fp16", "qdq_pc", "qop_rr", "nbits4", "bf16"),
             "cnn": ("extended", "all", "qdyn_u8", "qdq", "qdq_pc", "qop", "qop_all"),
             "deberta": ("source",),
             "llama_kv": ("source", "genai_opt")}
# source -> (optimizer model_type, num_heads, hidden_size)
SOURCES = {"bert": ("bert", 4, 32), "bert_legacy": ("bert", 4, 32), "bert_ids": ("bert", 4, 32),
           "gpt2": ("gpt2", 4, 32), "vit": ("vit", 4, 32), "llama": ("gpt2", 4, 32), "cnn": (None, 0, 0),
           "deberta": (None, 0, 0), "llama_kv": (None, 4, 32)}
IDS_SEED = 4321


def quiet_ort():
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    return ort


# ------------------------------------------------------------------ sources

def export_bert_ids(path: Path) -> dict:
    """The zoo's bert (legacy exporter, opset 17) fed token ids, attention mask and token types."""
    import torch
    from zoo import build_model

    _, _, meta = build_model("bert")
    hf = meta["hf_model"]

    class Ids(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    g = torch.Generator().manual_seed(IDS_SEED)
    ids = torch.randint(0, hf.config.vocab_size, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0  # a right-padded row
    types = torch.zeros(2, 6, dtype=torch.int64)
    types[:, 3:] = 1
    buf = io.BytesIO()
    axes = {0: "batch", 1: "seq"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Ids(hf).eval(), (ids, mask, types), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "logits": {0: "batch"}})
    path.write_bytes(buf.getvalue())
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}


def export_deberta(path: Path) -> dict:
    """A tiny DeBERTa-v2 classifier (relative attention, p2c + c2p), legacy exporter, opset 17."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
    cfg = DebertaV2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                          position_buckets=16, max_relative_positions=32, pos_att_type=["p2c", "c2p"], num_labels=3)
    torch.manual_seed(IDS_SEED)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    with torch.no_grad():  # perturb every parameter so biases and norms are not at their initial values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(IDS_SEED)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 5:] = 0
    buf = io.BytesIO()
    axes = {0: "batch", 1: "seq"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})
    path.write_bytes(buf.getvalue())
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


LLAMA_KV = dict(batch=2, seq=4, past=2, layers=2, kv_heads=2, head=8)


def export_llama_kv(path: Path) -> dict:
    """A tiny LlamaForCausalLM with past keys/values (the inputs onnxruntime's LLaMA recipe exports), by the
    legacy exporter. transformers' vmap mask builder cannot be traced: its older builder is used; the trace
    fixes the shapes (batch 2, 4 new tokens, 2 past)."""
    import torch
    import transformers.masking_utils as masking
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache
    masking.sdpa_mask = masking.sdpa_mask_older_torch
    masking.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"] = masking.sdpa_mask_older_torch
    k = LLAMA_KV
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=k["layers"],
                      num_attention_heads=4, num_key_value_heads=k["kv_heads"], max_position_embeddings=64,
                      attn_implementation="eager")
    torch.manual_seed(IDS_SEED)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(k["layers"]):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            layers = out.past_key_values.layers
            return (out.logits, *[t for layer in layers for t in (layer.keys, layer.values)])

    g = torch.Generator().manual_seed(IDS_SEED)
    b, s, p = k["batch"], k["seq"], k["past"]
    ids = torch.randint(0, 64, (b, s), generator=g)
    mask = torch.ones(b, s + p, dtype=torch.int64)
    mask[1, :1] = 0  # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
    past = [0.5 * torch.randn(b, k["kv_heads"], p, k["head"], generator=g) for _ in range(2 * k["layers"])]
    names = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{kv}" for i in range(k["layers"])
                                                                for kv in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(k["layers"]) for kv in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes.update({n: {0: "batch", 2: "past"} for n in names[3:]} | {n: {0: "batch", 2: "total"} for n in outs[1:]})
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recipe's dynamic axes (the fusions match the shape arithmetic)
        torch.onnx.export(WithPast(model), (ids, mask, pos, *past), buf, input_names=names, output_names=outs,
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    path.write_bytes(buf.getvalue())
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy(),
            **{n: t.numpy() for n, t in zip(names[3:], past)}}


def genai_optimize(src: Path, dst: Path):
    """onnxruntime's LLaMA recipe (optimize_export): optimize_model(model_type="gpt2", opt_level=0,
    FusionOptions("gpt2"), only_onnxruntime=False), then replace_mha_with_gqa. The rotary fusion writes
    cos/sin caches of 131072 positions; they are cut to the config's 64 (same values there) to stay small."""
    import onnxruntime.transformers as ort_transformers
    sys.path.insert(0, str(Path(ort_transformers.__file__).parent))  # its modules import each other flat
    from convert_generation import replace_mha_with_gqa
    from fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    m = optimize_model(str(src), model_type="gpt2", num_heads=4, hidden_size=32, opt_level=0,
                       optimization_options=FusionOptions("gpt2"), only_onnxruntime=False)
    m = replace_mha_with_gqa(m, "attention_mask", LLAMA_KV["kv_heads"], 1, -1)
    m.prune_graph()
    m.update_graph(allow_remove_graph_inputs=True)
    from onnx import numpy_helper
    for t in m.model.graph.initializer:
        if t.name in ("cos_cache", "sin_cache"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:64], t.name))
    m.save_model_to_file(str(dst))


def source_feeds(name: str) -> dict:
    ref = np.load(MODELS / f"{name}.ref.npz")
    return {k: ref[k] for k in ref.files if not k.startswith("out:")}


# ---------------------------------------------------------------- pipelines

def optimizer(src: Path, dst: Path, source: str, opt_level=None, float16=False):
    from onnxruntime.transformers.optimizer import optimize_model
    model_type, heads, hidden = SOURCES[source]
    kw = {} if opt_level is None else {"opt_level": opt_level}
    m = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, **kw)
    if float16:
        m.convert_float_to_float16(keep_io_types=False)
    m.save_model_to_file(str(dst))


def session_save(src: Path, dst: Path, level: str):
    ort = quiet_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.optimized_model_filepath = str(dst)
    so.intra_op_num_threads = 1
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def float16_convert(src: Path, dst: Path):
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def dynamic_quant(src: Path, dst: Path, weight_type: str, reduce_range=False, per_channel=False, extra=None):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, weight_type), reduce_range=reduce_range,
                     per_channel=per_channel, extra_options=extra)


def optimized_then_quantized(src: Path, dst: Path, source: str, per_channel=False):
    """optimize_model, then quantize_dynamic on its graph: the fused Attention and EmbedLayerNormalization
    become QAttention and QEmbedLayerNormalization (the optimizer's contrib ops carry no type information, so
    the quantizer is told that their outputs are float). QUInt8 weights: onnxruntime's uint8 x int8
    MatMulInteger saturates on AVX2 (tests/test_quantized.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        optimizer(src, opt, source)
        dynamic_quant(opt, dst, "QUInt8", per_channel=per_channel, extra={"DefaultTensorType": onnx.TensorProto.FLOAT})


def static_quant(src: Path, dst: Path, feeds: dict, per_channel=False, weight_type="QInt8", fmt="QDQ",
                 reduce_range=False):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class OneFeed(CalibrationDataReader):  # calibration on the reference feed and a scaled copy
        def __init__(self):
            self.items = [feeds, {k: (v * 0.5 if v.dtype.kind == "f" else v) for k, v in feeds.items()}]

        def get_next(self):
            return self.items.pop(0) if self.items else None

    quantize_static(str(src), str(dst), OneFeed(), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    weight_type=getattr(QuantType, weight_type), activation_type=QuantType.QUInt8,
                    reduce_range=reduce_range)


def static_quant_saved(src: Path, dst: Path, feeds: dict, level: str):
    """quantize_static(QOperator), then the session save at ``level`` ('all': NHWC QLinearConv, channels_last)."""
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "q.onnx"
        static_quant(src, quantized, feeds, fmt="QOperator")
        session_save(quantized, dst, level)


def nbits(src: Path, dst: Path, symmetric: bool, block_size=32):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block_size, is_symmetric=symmetric, bits=4)
    q.process()
    q.model.save_model_to_file(str(dst))


def bf16_export(source: str, dst: Path):
    """The zoo model cast to bfloat16 and exported by the dynamo exporter (opset 18)."""
    import torch
    from zoo import build_model
    model, feeds, meta = build_model(source)
    model = model.to(torch.bfloat16)
    args = tuple(v.to(torch.bfloat16) if v.is_floating_point() else v for v in feeds.values())
    inp = meta["input_names"][0]
    dims = {ax: torch.export.Dim(nm, max=32) if nm == "seq" else torch.export.Dim(nm)
            for ax, nm in meta["dynamic_axes"].items()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=18, input_names=meta["input_names"],
                                 output_names=meta["output_names"], dynamic_shapes={inp: dims}, external_data=False)
    from torch_common import strip_stack_traces
    strip_stack_traces(prog.model_proto)
    onnx.save(prog.model_proto, str(dst))


def optimum_export(dst: Path, level: str):
    """``optimum-cli export onnx --task text-classification --optimize <level>`` on the zoo's bert saved
    to a local folder (with a made-up word-piece vocabulary), offline."""
    import os
    import subprocess
    from transformers import BertTokenizerFast
    from zoo import build_model
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "bert", Path(tmp) / "onnx"
        build_model("bert")[2]["hf_model"].save_pretrained(folder)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
        (folder / "vocab.txt").write_text("\n".join(vocab))
        BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
        subprocess.run(["optimum-cli", "export", "onnx", "--model", str(folder), "--task", "text-classification",
                        "--optimize", level, str(out)], check=True, capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        dst.write_bytes((out / "model.onnx").read_bytes())


def pipelines(source: str, feeds: dict):
    """(name, description, fn(src, dst)) for every pipeline that applies to ``source``."""
    transformer = SOURCES[source][0] is not None
    out = []
    if transformer:
        out += [("opt", "optimize_model(model_type, num_heads, hidden_size)",
                 lambda s, d: optimizer(s, d, source)),
                ("opt0", "optimize_model(..., opt_level=0)", lambda s, d: optimizer(s, d, source, 0)),
                ("opt1", "optimize_model(..., opt_level=1)", lambda s, d: optimizer(s, d, source, 1)),
                ("opt99", "optimize_model(..., opt_level=99)", lambda s, d: optimizer(s, d, source, 99)),
                ("opt_fp16", "optimize_model(...).convert_float_to_float16()",
                 lambda s, d: optimizer(s, d, source, None, True)),
                ("qdyn_opt", "optimize_model(...), then quantize_dynamic(weight_type=QUInt8)",
                 lambda s, d: optimized_then_quantized(s, d, source)),
                ("qdyn_opt_pc", "optimize_model(...), then quantize_dynamic(weight_type=QUInt8, per_channel=True)",
                 lambda s, d: optimized_then_quantized(s, d, source, per_channel=True))]
    out += [("extended", "InferenceSession save at ORT_ENABLE_EXTENDED", lambda s, d: session_save(s, d, "extended")),
            ("all", "InferenceSession save at ORT_ENABLE_ALL (NCHWc)", lambda s, d: session_save(s, d, "all")),
            ("fp16", "float16.convert_float_to_float16(keep_io_types=True)", float16_convert),
            ("qdyn_u8", "quantize_dynamic(weight_type=QUInt8)", lambda s, d: dynamic_quant(s, d, "QUInt8")),
            ("qdyn_s8rr", "quantize_dynamic(weight_type=QInt8, reduce_range=True)",
             lambda s, d: dynamic_quant(s, d, "QInt8", reduce_range=True)),
            ("qdyn_s8", "quantize_dynamic(weight_type=QInt8)", lambda s, d: dynamic_quant(s, d, "QInt8")),
            ("qdq", "quantize_static(QDQ, per-tensor, QUInt8 activations, QInt8 weights)",
             lambda s, d: static_quant(s, d, feeds)),
            ("qdq_pc", "quantize_static(QDQ, per_channel=True)", lambda s, d: static_quant(s, d, feeds, True)),
            ("qop", "quantize_static(QOperator)", lambda s, d: static_quant(s, d, feeds, fmt="QOperator")),
            ("qop_rr", "quantize_static(QOperator, reduce_range=True)",
             lambda s, d: static_quant(s, d, feeds, fmt="QOperator", reduce_range=True)),
            ("qop_all", "quantize_static(QOperator), then InferenceSession save at ORT_ENABLE_ALL",
             lambda s, d: static_quant_saved(s, d, feeds, "all")),
            ("nbits4", "MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=False)",
             lambda s, d: nbits(s, d, False)),
            ("nbits4s", "MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=True)",
             lambda s, d: nbits(s, d, True))]
    return out


# --------------------------------------------------------------------- main

def entry_for(path: Path, source: str, pipeline: str, how: str) -> dict:
    proto = onnx.load(str(path))
    data = path.read_bytes()
    return {"file": path.name, "source": source, "pipeline": pipeline, "how": how,
            "op_types": op_types(proto), "opset_import": {i.domain or "ai.onnx": i.version for i in proto.opset_import},
            "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "feeds": f"{source}.feeds.npz"}


def build_source(source: str, work: Path) -> list[dict]:
    if source in EXPORTED:
        src = WORK / f"{source}.onnx"
        feeds = EXPORTED[source](src)
        (OUT / src.name).write_bytes(src.read_bytes())
    else:
        src, feeds = MODELS / f"{source}.onnx", source_feeds(source)
    save_npz(OUT / f"{source}.feeds.npz", feeds)
    entries, seen = [], {hashlib.sha256(src.read_bytes()).hexdigest(): "source"}
    if source in EXPORTED:
        entries.append(entry_for(src, source, "source", "torch.onnx.export(dynamo=False, opset_version=17)"))
        entries[-1]["committed"] = True
    jobs = pipelines(source, feeds) if source in ("bert_ids",) or source not in EXPORTED else []
    if source == "llama_kv":
        jobs = [("genai_opt", "onnxruntime LLaMA recipe: optimize_model(gpt2, opt_level=0) + replace_mha_with_gqa",
                 genai_optimize)]
    if source == "bert_ids":
        jobs += [(f"optimum_{lvl}", f"optimum-cli export onnx --task text-classification --optimize {lvl}",
                  lambda s, d, lvl=lvl: optimum_export(d, lvl)) for lvl in ("O1", "O2", "O3", "O4")]
    if source in ("bert", "llama"):
        jobs.append(("bf16", "zoo model .to(bfloat16), torch.onnx.export(dynamo=True, opset 18)",
                     lambda s, d: bf16_export(source, d)))
    for name, how, fn in jobs:
        tmp = work / f"{source}.{name}.onnx"
        try:
            fn(src, tmp)
        except Exception as exc:
            print(f"  {source}.{name}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
            entries.append({"source": source, "pipeline": name, "how": how, "failed": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if digest in seen:
            entries.append({"source": source, "pipeline": name, "how": how, "same_as": seen[digest]})
            continue
        seen[digest] = name
        if tmp.stat().st_size > MAX_BYTES:
            entries.append({"source": source, "pipeline": name, "how": how, "skipped": "over 1 MB"})
            continue
        dst = WORK / tmp.name
        dst.write_bytes(tmp.read_bytes())
        entries.append(entry_for(dst, source, name, how))
        entries[-1]["committed"] = name in COMMITTED.get(source, ())
        if entries[-1]["committed"]:
            (OUT / tmp.name).write_bytes(tmp.read_bytes())
        print(f"  {dst.name}: {' '.join(o for o in entries[-1]['op_types'] if '::' in o or 'Quant' in o)}")
    return entries


# -------------------------------------------------------------------- check

FP32_OPTIMIZED = ("opt", "opt0", "opt1", "opt99", "extended", "all", "optimum_O1", "optimum_O2",
                  "genai_opt")  # O3 approximates GELU


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def ort_outputs(path: Path, feeds: dict) -> list:
    ort = quiet_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the file as it is
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    typed = {i.name: feeds[i.name].astype(np.float16) if i.type == "tensor(float16)" else feeds[i.name]
             for i in sess.get_inputs()}
    return sess.run(None, typed), typed


def input_relevance(model, feeds: dict):
    """Relevance at the first attributed tensor (float64 reference) and the books."""
    import reflrp
    att = reflrp.explain(model, feeds, dtype="float64")
    return np.asarray(att.relevance[att.wrt[0]]), att.conservation


def per_position(r: np.ndarray) -> np.ndarray:
    """Relevance per token (rank 3: summed over features) or per pixel (rank 4: summed over channels)."""
    return r.sum(-1).ravel() if r.ndim == 3 else r.sum(1).ravel() if r.ndim == 4 else r.ravel()


def check_one(path: Path, entry: dict, feeds: dict, source_rel: dict) -> dict:
    """load / forward vs onnxruntime / explain (finite, books) / relevance vs the fp32 source: the relative
    error and the per-position Pearson r (the measure for quantized and 16-bit models)."""
    import reflrp
    row = {"file": path.name, "source": entry["source"], "pipeline": entry["pipeline"]}
    try:
        model = reflrp.load(str(path))
    except Exception as exc:
        row["load"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        return row
    row["load"] = "ok"
    typed = {v.name: feeds[v.name].astype(v.dtype) if v.dtype is not None and v.dtype.kind == "f" else feeds[v.name]
             for v in model.graph.inputs}
    try:
        ref, _ = ort_outputs(path, feeds)
        ours = model.run(typed)
        row["forward"] = rel_err(next(iter(ours.values())), ref[0])
    except Exception as exc:
        row["forward"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    try:
        rel, books = input_relevance(model, typed)
        row["explain"] = ("ok" if books.ok else "books open") if np.isfinite(rel).all() else "non-finite"
        src = source_rel.get(entry["source"])
        if src is not None and src.shape == rel.shape:
            row["relevance_vs_source"] = rel_err(rel, src)
            row["pearson_r_vs_source"] = float(np.corrcoef(per_position(rel), per_position(src))[0, 1])
    except Exception as exc:
        row["explain"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return row


def check(where: Path) -> list[dict]:
    import reflrp
    manifest = json.loads((OUT / "MANIFEST.json").read_text())
    source_rel, rows = {}, []
    for entry in manifest["models"]:
        if "file" not in entry or not (where / entry["file"]).exists():
            continue
        source = entry["source"]
        feeds = dict(np.load(OUT / entry["feeds"]))
        if source not in source_rel:
            src = OUT / f"{source}.onnx" if source in EXPORTED else MODELS / f"{source}.onnx"
            source_rel[source] = input_relevance(reflrp.load(str(src)), feeds)[0]
        if entry["pipeline"] == "source":
            if source == "deberta":  # its own row: the Ifs fold at load
                rows.append(check_one(where / entry["file"], entry, feeds, {}))
            continue
        rows.append(check_one(where / entry["file"], entry, feeds, source_rel))
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def fmt(v) -> str:
        return f"{v:.1e}" if isinstance(v, float) else (v or "").replace("\n", " ").replace("|", "/")

    lines = ["Generated by `python tools/make_deployed_models.py --check all` (float64 reference; relevance at the "
             "first attributed tensor; r: per-position Pearson r against the fp32 source; bar for fp32 optimized "
             "pipelines: relevance error <= 1e-6).", "",
             "| model | pipeline | load | forward vs ort | explain | relevance error vs source | r vs source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        r_ = r.get("pearson_r_vs_source")
        lines.append(f"| {r['source']} | {r['pipeline']} | {fmt(r['load'])} | {fmt(r.get('forward'))} | "
                     f"{fmt(r.get('explain'))} | {fmt(r.get('relevance_vs_source'))} | "
                     f"{'' if r_ is None else f'{r_:.4f}'} |")
    return "\n".join(lines) + "\n"


EXPORTED = {"bert_ids": export_bert_ids, "deberta": export_deberta, "llama_kv": export_llama_kv}  # not in models/


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(SOURCES))
    ap.add_argument("--check", choices=("committed", "all"),
                    help="instead of building: run the committed (or all cached) models through reflrp and "
                         "write models/deployed/CHECK.md")
    args = ap.parse_args(argv)
    if args.check:
        rows = check(OUT if args.check == "committed" else WORK)
        (OUT / ("CHECK.md" if args.check == "committed" else "CHECK_ALL.md")).write_text(table(rows))
        return 0
    import torch
    torch.set_num_threads(1)
    quiet_ort()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": []}
    chosen = args.only or list(SOURCES)
    kept = [e for e in manifest["models"] if e["source"] not in chosen]
    import onnxruntime
    with tempfile.TemporaryDirectory() as work:
        for source in chosen:
            print(source)
            try:
                kept += build_source(source, Path(work))
            except Exception:
                traceback.print_exc()
                return 1
    manifest = {"generator": "python tools/make_deployed_models.py", "onnxruntime": onnxruntime.__version__,
                "onnx": onnx.__version__, "torch": torch.__version__, "models": kept}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
