"""Helpers the torch-side tools share (export_models, train_demo_models, make_lxt_goldens, bench)."""
from __future__ import annotations

import sys
import types
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx


def save_npz(path: Path, arrays: dict) -> None:
    """``np.savez`` with fixed zip timestamps, so two runs give identical bytes (0-d arrays stay 0-d)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            a = np.asarray(arr)  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            with zf.open(zipfile.ZipInfo(f"{key}.npy", (1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, a if a.flags.c_contiguous else np.ascontiguousarray(a),
                                          allow_pickle=False)


def iter_nodes(proto: onnx.ModelProto):
    """Every node of the main graph, its subgraphs and the model's local functions."""
    def walk(nodes):
        for n in nodes:
            yield n
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from walk(g.node)
    yield from walk(proto.graph.node)
    for f in proto.functions:
        yield from walk(f.node)


def strip_stack_traces(proto: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node Python stack traces (absolute paths and line numbers make
    the bytes machine-dependent); the other node metadata is kept."""
    for n in iter_nodes(proto):
        keep = [p for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)


def op_types(proto: onnx.ModelProto) -> list[str]:
    """Sorted op types (domain-qualified outside the default domain) of every node."""
    return sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in iter_nodes(proto)})


def io_summary(values) -> list[dict]:
    """Name, numpy dtype and shape (symbolic dims as names, unknown as '?') of graph inputs/outputs."""
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else
                 (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": shape})
    return out


def import_lxt():
    """Import LXT 2.1 without torchvision (PyPI's wheel does not load beside the CPU torch):
    transformers first, then stand-in ``torchvision`` modules: ``models.vision_transformer`` with
    ``nn = torch.nn`` (LXT), and ``ops.FrozenBatchNorm2d`` plus ``models.resnet.BasicBlock`` /
    ``Bottleneck`` (zennit 1.0, which lxt.efficient imports, names these classes at import time;
    none of them occurs in the zoo, so empty stand-in classes are never matched)."""
    import torch
    import transformers  # noqa: F401  (must precede the stub)
    if "torchvision" not in sys.modules:
        names = ("torchvision", "torchvision.models", "torchvision.models.vision_transformer",
                 "torchvision.models.resnet", "torchvision.ops")
        tv, tvm, vt, rn, ops = (types.ModuleType(n) for n in names)
        vt.nn, tvm.vision_transformer, tvm.resnet, tv.models, tv.ops = torch.nn, vt, rn, tvm, ops
        ops.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
        rn.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
        rn.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
        sys.modules.update(dict(zip(names, (tv, tvm, vt, rn, ops))))
    import lxt
    import lxt.efficient.models  # noqa: F401
    return lxt


# ------------------------------------------------------------ float64 mode

FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_scalar(v: float) -> float:
    """``v`` as the float32 constant the exporter writes for a Python float: rounded to float32;
    a finite value beyond float32's range (torch.finfo(float64).min in a mask) -> +-float32 max."""
    if np.isfinite(v) and abs(v) > FLOAT32_MAX:
        return float(np.copysign(FLOAT32_MAX, v))
    return float(np.float32(v))


def gelu_as_exported(x, approximate: str = "none"):
    """GELU in the exporter's decomposition (onnxscript torch_lib aten_gelu, opset 18) with its
    constants rounded to float32:  x * 0.5 * (1 + erf(x / sqrt 2))  or
    x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    import torch
    c = float32_scalar
    if approximate == "tanh":
        inner = torch.tanh(c(0.7978845608028654) * (x + c(0.044715) * torch.pow(x, 3)))
    else:
        inner = torch.erf(x / c(1.4142135623730951))
    return x * (c(0.5) * (inner + 1))


def float64_mode(graph_constants: bool = False):
    """TorchFunctionMode turning every float32 request into float64.

    Catches softmax(dtype=float32), x.to(float32), x.float(), arange(dtype=float)
    etc. in HF and LXT code and, while active, makes float64 the default dtype
    (e.g. torch.ones(...) masks); ``hits`` counts rewrites, ``leaks`` counts
    float32 tensors that still come out of an op (expected: none).

    ``graph_constants=True`` also computes the function the ONNX graph holds, whose constants
    are float32: every Python float argument of a torch function is rounded to float32
    (``float32_scalar``: finfo(float64).min masks become float32's min) and F.gelu runs as the
    exporter's decomposition with float32 constants (``gelu_as_exported``)."""
    import torch
    from torch.overrides import TorchFunctionMode, resolve_name

    def sub(a):
        if a is torch.float32:
            return torch.float64
        if graph_constants and type(a) is float:
            return float32_scalar(a)
        return a

    class Float64Mode(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.hits, self.leaks = Counter(), Counter()

        def __enter__(self):
            self._dtype = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            return super().__enter__()

        def __exit__(self, *exc):
            torch.set_default_dtype(self._dtype)
            return super().__exit__(*exc)

        def __torch_function__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = resolve_name(func) or getattr(func, "__name__", str(func))
            if func is torch.Tensor.float:
                self.hits[f"{name}()"] += 1
                func = torch.Tensor.double
            elif graph_constants and func in (torch.nn.functional.gelu, torch._C._nn.gelu):
                self.hits[f"{name} -> exported decomposition"] += 1
                return gelu_as_exported(*args, **kwargs)
            else:
                new_args = tuple(sub(a) for a in args)
                new_kwargs = {k: sub(v) for k, v in kwargs.items()}
                pairs = [*zip(new_args, args), *((new_kwargs[k], kwargs[k]) for k in kwargs)]
                changed = {"float32" if b is torch.float32 else "scalar" for a, b in pairs
                           if b is torch.float32 or (type(b) is float and a != b)}
                for kind in sorted(changed):  # one count per call and kind of rewrite
                    self.hits[f"{name}({kind})"] += 1
                args, kwargs = new_args, new_kwargs
            out = func(*args, **kwargs)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if any(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in outs):
                self.leaks[name] += 1
            return out

    return Float64Mode()


def rope_to_float64(model) -> list[str]:
    """Recompute RoPE inv_freq in float64 (HF computes it in float32 at init)."""
    import torch
    mode, done = float64_mode(), []
    for mname, m in model.named_modules():
        if hasattr(m, "rope_init_fn") and isinstance(getattr(m, "inv_freq", None), torch.Tensor):
            with mode:
                inv_freq, scaling = m.rope_init_fn(m.config, None)
            assert inv_freq.dtype == torch.float64 and scaling == m.attention_scaling
            m.inv_freq = inv_freq
            m.original_inv_freq = inv_freq
            done.append(mname)
    return done


# -------------------------------------------------------- attributed tensors

def ort_tensor(onnx_path, feeds: dict, tensor: str) -> np.ndarray:
    """Run onnxruntime with ``tensor`` added as an extra graph output."""
    import onnxruntime as ort
    m = onnx.load(str(onnx_path))
    m.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run([tensor], feeds)[0]


def embedding_output_name(onnx_path, ids_input: str = "input_ids") -> str:
    """ONNX name of the token embedding: the output of the one Gather whose data is an initializer
    and whose indices are the graph input ``ids_input`` (directly or through a Cast)."""
    g = onnx.load(str(onnx_path)).graph
    inits = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    casts = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Cast"}
    hits = [n.output[0] for n in g.node if n.op_type == "Gather" and n.input[0] in inits
            and ids_input in (n.input[1], casts.get(n.input[1]))]
    assert len(hits) == 1, f"{onnx_path}: embedding Gather of {ids_input} not unique: {hits}"
    return hits[0]


def attributed_tensors(name: str, wrapper, feeds: dict[str, np.ndarray], onnx_path):
    """The tensors zoo model ``name`` is attributed to, as float64 leaves with requires_grad keyed
    by ONNX tensor name, and a function computing the first graph output from them.

    Float graph inputs are taken as they are; for a model fed token ids, the embedding output
    (``get_input_embeddings()(input_ids)``, named like the ONNX Gather output) replaces the ids,
    and the past keys/values of a KV-cache step are leaves too.  Integer inputs
    (attention_mask) are fixed.  Call after ``.double()``; returns (leaves, forward, notes)."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo import SPECS, input_names, logits_and_present, past_cache
    spec = SPECS[name]
    hf = getattr(wrapper, "model", wrapper)
    fixed = {k: torch.from_numpy(v) for k, v in feeds.items() if v.dtype.kind in "iu"}
    floats = {k: torch.from_numpy(v).double().requires_grad_(True)
              for k, v in feeds.items() if v.dtype.kind == "f"}
    if spec.input_kind not in ("ids", "ids_past"):
        def forward():
            return wrapper(**floats, **fixed)
        return floats, forward, []
    emb_name = embedding_output_name(onnx_path)
    emb = hf.get_input_embeddings()(fixed.pop("input_ids")).detach().requires_grad_(True)
    notes = ["input_ids graph: relevance at the embedding output "
             "(model.get_input_embeddings()(input_ids))"]
    leaves = {emb_name: emb, **floats}
    if spec.input_kind == "ids":
        def forward():
            return hf(inputs_embeds=emb, **wrapper.call_kwargs).logits
        return leaves, forward, notes
    past = [floats[n] for n in input_names(name)[2:]]
    notes.append(f"KV-cache step: the embedding output is ONNX tensor {emb_name}; the past "
                 "keys/values are leaves too (relevance = past * grad)")

    def forward():
        return logits_and_present(hf, fixed["attention_mask"], past_cache(past),
                                  inputs_embeds=emb)[0]
    return leaves, forward, notes


def select_target(y, output_name: str = "logits"):
    """(target, seed) per batch row: decoders (3-D logits) the argmax at the last position,
    classifiers the argmax; minilm (last_hidden_state) the strongest unit at position 0."""
    import torch
    rows = torch.arange(y.shape[0])
    if output_name == "last_hidden_state":          # minilm: strongest CLS unit
        target = y[:, 0, :].argmax(-1)
        return target, y[rows, 0, target]
    if y.dim() == 3:                                # decoder LM: last position
        target = y[:, -1, :].argmax(-1)
        return target, y[rows, -1, target]
    target = y.argmax(-1)                           # sequence / image classifier
    return target, y[rows, target]


def fold_constants_as_exported(model) -> list[str]:
    """Round what the exporter constant-folds in float32 to float32 (call after ``.double()``):
    Gemma3RMSNorm scales by ``1 + weight``, stored in the graph as one float32 initializer, so
    weight becomes float32(1 + weight) - 1 (exact in float64; 1 + weight is then that float32)."""
    import torch
    done = []
    with torch.no_grad():
        for mname, m in model.named_modules():
            if type(m).__name__ == "Gemma3RMSNorm":
                m.weight.copy_((1 + m.weight).float().double() - 1)
                done.append(mname)
    return done
