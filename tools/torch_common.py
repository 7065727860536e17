"""Helpers the torch-side tools share (export_models, train_demo_models, make_lxt_goldens, bench)."""
from __future__ import annotations

import sys
import types
import zipfile
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
    transformers first, then a stub ``torchvision.models.vision_transformer`` with ``nn = torch.nn``."""
    import torch
    import transformers  # noqa: F401  (must precede the stub)
    if "torchvision" not in sys.modules:
        tv, tvm, vt = (types.ModuleType(n) for n in
                       ("torchvision", "torchvision.models", "torchvision.models.vision_transformer"))
        vt.nn, tvm.vision_transformer, tv.models = torch.nn, vt, tvm
        sys.modules.update({"torchvision": tv, "torchvision.models": tvm,
                            "torchvision.models.vision_transformer": vt})
    import lxt
    import lxt.efficient.models  # noqa: F401
    return lxt
