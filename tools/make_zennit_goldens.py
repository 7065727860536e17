#!/usr/bin/env python
"""Zennit 1.0.0 reference relevances (float64) for small MLPs / CNNs / a VGG / a ResNet, and LXT's
vision-transformer recipe (Zennit's Gamma on Conv/Linear + CP-LRP attention) on the zoo's ViT.

Usage:
    python tools/make_zennit_goldens.py                 # every fixture + models/vit.gamma.npz
    python tools/make_zennit_goldens.py --only mlp resnet --no-vit
    python tools/make_zennit_goldens.py --vit           # only models/vit.gamma.npz

Fixtures (tools/zennit_models.py) -> models/zennit/NAME.onnx, NAME.zennit.npz, MANIFEST.json; a
fixture that only re-exports another one's function with a different exporter (``same_as``) has
no golden of its own (MANIFEST.json's ``golden`` names the file that applies).
Each golden runs Zennit's ``Gradient`` attributor on the float64 torch model (float32 weights
upcast, so they equal the ONNX file's) with the output relevance ``logits * one_hot(argmax)``
(the target logit's value, reflrp's seed); the attribution *is* the input relevance.

Key layout of NAME.zennit.npz:
    input:x                float32 [batch, ...]   the graph input (the golden used it as float64)
    logits                 float64 [batch, 5]     the float64 model's output
    target                 int64 [batch]          argmax per row
    seed                   float64 [batch, 5]     logits * one_hot(target)
    bounds:scalar:low|high float64 0-d           zbox bounds (scalars; float32-representable)
    bounds:channel:low|high float64 [1, C, 1, 1] or [1, F]: per-channel / per-feature bounds
    <spec>:relevance       float64, shape of x
    meta                   uint8 UTF-8 JSON (``json.loads(bytes(z["meta"]))``): fixture, BN
                           handling, canonizers, every spec (tools/zennit_specs.py: its
                           declarative layer map), conservation, checks.

Process: exports first (torch.onnx must not see the torchvision stand-in), then Zennit.  The ViT
recipe runs in a subprocess (LXT patches Zennit's BasicHook and HF's ViT process-wide).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zennit_models as zm  # noqa: E402
from torch_common import op_types, save_npz, strip_stack_traces  # noqa: E402
from zennit_specs import (LXT_CONV_GAMMAS, LXT_LINEAR_GAMMAS, SCALAR_BOUNDS, ST, gf,  # noqa: E402
                          make_composite, specs_for)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "models" / "zennit"
VIT_OUT = ROOT / "models" / "vit.gamma.npz"


# ---------------------------------------------------------------- zennit runs

def attribute(model64, x: np.ndarray, onehot: torch.Tensor, composite):
    """Zennit's Gradient attributor with output relevance logits * one_hot; also the relevance sum
    at every leaf module's output per row (hooks registered before the composite's)."""
    from zennit.attribution import Gradient
    model = copy.deepcopy(model64)
    records, handles = [], []
    for name, m in model.named_modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(_recorder(name, records)))
    xt = torch.from_numpy(x.astype(np.float64))
    with Gradient(model=model, composite=composite) as attributor:
        y, rel = attributor(xt, lambda out: out.detach() * onehot)
    for h in handles:
        h.remove()
    sums = {}
    for name, g in records:
        key = name if name not in sums else f"{name}#{sum(k.split('#')[0] == name for k in sums)}"
        sums[key] = g
    return y.detach().numpy(), rel.detach().numpy(), sums


def _recorder(name, records):
    def hook(_m, _args, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            slot = [name, None]
            records.append(slot)
            out.register_hook(lambda g: slot.__setitem__(1, g.detach().flatten(1).sum(1).tolist()))
    return hook


# ------------------------------------------------------------------------ export

def export(fx: zm.Fixture, model32, x: np.ndarray, path: Path) -> onnx.ModelProto:
    xt = torch.from_numpy(x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fx.exporter == "dynamo":
            prog = torch.onnx.export(model32, (xt,), dynamo=True, opset_version=18, input_names=["x"],
                                     output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     external_data=False, verbose=False, **fx.export_kwargs)
            proto = prog.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(model32, (xt,), buf, dynamo=False, opset_version=18, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                              **fx.export_kwargs)
            proto = onnx.load_from_string(buf.getvalue())
    strip_stack_traces(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    return proto


def load_exporter_folded(model32, proto: onnx.ModelProto):
    """Copy each Conv's (folded) weight and bias from the file into the hand-folded model; returns
    the largest relative difference between the exporter's fold and ours."""
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    worst = 0.0
    modules = dict(model32.named_modules())
    for n in proto.graph.node:
        if n.op_type != "Conv":
            continue
        w_name = n.input[1]
        mod = modules[w_name.removesuffix(".weight")]
        for attr, key in (("weight", w_name), ("bias", n.input[2] if len(n.input) > 2 else None)):
            if key is None:
                continue
            ours = getattr(mod, attr).detach().numpy()
            theirs = inits[key]
            worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(ours).max()))
            with torch.no_grad():
                getattr(mod, attr).copy_(torch.from_numpy(theirs))
    return worst


def ort_rel_err(path: Path, x: np.ndarray, ref: np.ndarray) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return float(np.abs(out - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------- goldens

def bound_arrays(in_shape) -> dict[str, np.ndarray]:
    """Scalar bounds and per-channel (conv: [1, C, 1, 1]) or per-feature ([1, F]) bounds; all
    float32-representable and containing the inputs' range [-2.5, 2.5]."""
    n = in_shape[0]
    shape = (1, n, 1, 1) if len(in_shape) == 3 else (1, n)
    i = np.arange(n)
    return {"bounds:scalar:low": np.float64(SCALAR_BOUNDS[0]), "bounds:scalar:high": np.float64(SCALAR_BOUNDS[1]),
            "bounds:channel:low": (-2.5 - 0.25 * (i % 3)).reshape(shape),
            "bounds:channel:high": (2.5 + 0.25 * (i % 4)).reshape(shape)}


def float64_model(model32):
    m = copy.deepcopy(model32).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def make_golden(fx: zm.Fixture, model32, x: np.ndarray) -> tuple[dict, dict]:
    from torch import nn
    model64 = float64_model(model32)
    with torch.no_grad():
        logits = model64(torch.from_numpy(x.astype(np.float64)))
    target = logits.argmax(1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).double()
    arrays = {"input:x": x, "logits": logits.numpy(), "target": target.numpy().astype(np.int64),
              "seed": (logits * onehot).numpy(), **bound_arrays(x.shape[1:])}
    kinds = {type(m) for m in model64.modules()}
    specs = specs_for(fx, has_conv=nn.Conv2d in kinds,
                      has_avgpool=bool(kinds & {nn.AvgPool2d, nn.AdaptiveAvgPool2d}),
                      smooth=bool(kinds & {nn.GELU, nn.Tanh}))
    seed_t = (logits * onehot).sum(1)
    for spec in specs:
        y, rel, sums = attribute(model64, x, onehot, make_composite(spec, arrays))
        spec["forward_max_abs_diff"] = float(np.abs(y - arrays["logits"]).max())
        if spec["kind"] == "composite":
            _, rel2, _ = attribute(model64, x, onehot, make_composite(spec, arrays, expanded=True))
            spec["expanded_map_max_abs_diff"] = float(np.abs(rel2 - rel).max())
        assert np.isfinite(rel).all(), f"{fx.name} {spec['name']}: non-finite relevance"
        arrays[f"{spec['name']}:relevance"] = rel
        spec["conservation"] = (torch.from_numpy(rel).flatten(1).sum(1) / seed_t).tolist()
        if not spec["name"].startswith("gamma.conv="):      # (kept small: not for the sweep)
            spec["layer_relevance_sums"] = sums
    meta = {
        "fixture": fx.name, "weights": fx.weights,
        "onnx": [f"../{fx.weights[4:]}.onnx"] if fx.exporter == "zoo" else
                [f"{n}.onnx" for n, f in zm.FIXTURES.items() if fx.name in (n, f.same_as)],
        "weight_seed": zm.WEIGHT_SEEDS.get(fx.weights, "tools/zoo.py"), "input_seed": zm.INPUT_SEED,
        "exporter": fx.exporter, "opset": 18, "export_kwargs": fx.export_kwargs, "bn": fx.bn,
        "canonizer": fx.canonizer, "notes": fx.notes,
        "attributor": "zennit.attribution.Gradient(model, composite)(x, attr_output=lambda y: "
                      "y.detach() * one_hot(argmax(y)))",
        "seed": "logits * one_hot(target): the target logit's value at the target, 0 elsewhere",
        "target": "argmax per row of the float64 logits",
        "dtype": "float64 torch model (float32 weights upcast); x upcast from input:x",
        "specs": specs,
    }
    return arrays, meta


def oracle_check(model32, arrays: dict, meta: dict) -> float:
    """Dense NumPy oracle (tools/zennit_dense.py) vs Zennit for every spec; returns the worst.
    Where the spec's canonizers merge BN, the oracle gets our exact float64 fold of the model."""
    import zennit_dense
    plain = float64_model(model32)
    folded = zm.fold_batchnorm(plain)
    fn = zennit_dense.resnet_relevance if isinstance(model32, zm.ResNet) else zennit_dense.relevance
    worst = 0.0
    for spec in meta["specs"]:
        merges = any(c.endswith(("MergeBatchNorm", "ResNetCanonizer")) for c in spec["canonizers"])
        ref = arrays[f"{spec['name']}:relevance"]
        got = fn(folded if merges else plain, arrays["input:x"], arrays["seed"], spec, arrays)
        spec["dense_oracle_rel_err"] = err = rel_err(got, ref)
        worst = max(worst, err)
    return worst


def json_bytes(meta: dict) -> np.ndarray:
    """meta as UTF-8 JSON bytes (uint8), keys sorted, as reflrp's golden files store it."""
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)


from reflrp.testing import rel_err  # noqa: E402  (the one relative error)


def compare_goldens(a: tuple[dict, dict], b: tuple[dict, dict]) -> dict:
    """Worst relative difference over the non-diagnostic specs two goldens share."""
    names = [s["name"] for s in a[1]["specs"] if not s["diagnostic"]]
    errs = {n: rel_err(a[0][f"{n}:relevance"], b[0][f"{n}:relevance"]) for n in names
            if f"{n}:relevance" in b[0]}
    worst = max(errs, key=errs.get)
    return {"max_rel_err": errs[worst], "worst_spec": worst, "median_rel_err": float(np.median(list(errs.values())))}


def exact_fold_check(fx: zm.Fixture, golden: tuple[dict, dict]) -> dict:
    """Zennit on the *exact* float64 hand fold (no float32 rounding) vs the in-graph golden, which
    used Zennit's MergeBatchNorm: equal up to float64 rounding if the canonizer is a plain fold."""
    arrays, meta = golden
    model64 = zm.fold_batchnorm(float64_model(zm.unfolded(fx.name)))
    onehot = torch.from_numpy((arrays["seed"] != 0).astype(np.float64))
    errs = {}
    for spec in meta["specs"]:
        if spec["diagnostic"]:
            continue
        spec = {**spec, "canonizers": [c for c in spec["canonizers"] if "ResNet" in c]}
        _, rel, _ = attribute(model64, arrays["input:x"], onehot, make_composite(spec, arrays))
        errs[spec["name"]] = rel_err(rel, arrays[f"{spec['name']}:relevance"])
    worst = max(errs, key=errs.get)
    return {"max_rel_err": errs[worst], "worst_spec": worst}


def build_fixture(name: str) -> tuple[zm.Fixture, torch.nn.Module, np.ndarray, dict]:
    """Export fixture ``name``; returns (fixture, the float32 model the golden uses, x, manifest entry)."""
    fx = zm.FIXTURES[name]
    torch.manual_seed(0)
    model32, x = zm.build(name)
    if fx.exporter == "zoo":                             # an existing zoo file, not re-exported
        path = ROOT / "models" / f"{fx.weights[4:]}.onnx"
        proto = onnx.load(str(path))
    else:
        path = OUT_DIR / f"{name}.onnx"
        export_model = zm.unfolded(name) if fx.bn == "folded-by-exporter" else model32
        proto = export(fx, export_model, x, path)
    entry = {"file": os.path.relpath(path, OUT_DIR), "golden": f"{name}.zennit.npz", "weights": fx.weights,
             "exporter": fx.exporter, "opset": 18, "export_kwargs": fx.export_kwargs, "bn": fx.bn, "canonizer": fx.canonizer,
             "input_shape": ["batch", *fx.in_shape], "op_types": op_types(proto), "notes": fx.notes}
    if fx.bn == "folded-by-exporter":
        entry["exporter_fold_vs_hand_fold_rel"] = load_exporter_folded(model32, proto)
    with torch.no_grad():
        ref = model32(torch.from_numpy(x)).numpy()
    entry["ort_vs_torch_float32"] = ort_rel_err(path, x, ref)
    data = path.read_bytes()
    entry.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    return fx, model32, x, entry


def write_golden(name: str, golden: tuple[dict, dict]) -> int:
    arrays, meta = golden
    from importlib.metadata import version
    meta["versions"] = {"zennit": version("zennit"), "torch": torch.__version__, "onnx": onnx.__version__}
    path = OUT_DIR / f"{name}.zennit.npz"
    save_npz(path, {**arrays, "meta": json_bytes(meta)})
    return path.stat().st_size


# --------------------------------------------------------------------- ViT recipe

# (conv gamma, linear gamma, stabilizer): LXT's sweep, a gamma = 0 baseline, and the baseline with a
# negligible stabilizer (which must equal the cp-lrp preset of models/vit.lxt.npz)
VIT_SETTINGS = [(0.0, 0.0, ST), (0.0, 0.0, 1e-15)] + \
    [(gc, gl, ST) for gc in LXT_CONV_GAMMAS for gl in LXT_LINEAR_GAMMAS]
VIT_EXACT = [(0.0, 0.0, ST), (0.25, 0.05, ST), (0.1, 0.0, ST), (100.0, 1.0, ST)]


def vit_key(gc, gl, st):
    return f"gamma.conv={gf(gc)},linear={gf(gl)}" + ("" if st == ST else f",stabilizer={gf(st)}")


def vit_recipe():
    """LXT's ViT recipe set up (LXT's cp-lrp map and its Zennit patch applied; see :func:`vit_worker`):
    returns ``run(x, conv_gamma, linear_gamma, stabilizer) -> (logits, target, relevance)`` and the map's name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers  # noqa: F401  (before the torchvision stand-in, like torch_common.import_lxt)
    zm.install_torchvision_standin()
    torch.set_num_threads(1)
    from make_lxt_goldens import _patch
    from torch_common import float64_mode as _float64_mode
    from zoo import build_model
    wrapper, _, _ = build_model("vit")
    desc, _ = _patch("vit", "cp-lrp")
    from lxt.efficient import monkey_patch_zennit
    monkey_patch_zennit()
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma
    wrapper.model.double().eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    mode = _float64_mode()

    def run(x_np, gc, gl, st):
        comp = LayerMapComposite([(torch.nn.Conv2d, Gamma(gc, stabilizer=st)),
                                  (torch.nn.Linear, Gamma(gl, stabilizer=st))])
        comp.register(wrapper)
        x = torch.from_numpy(x_np).double().requires_grad_(True)
        with mode:
            y = wrapper(pixel_values=x)
        target = y.argmax(-1)
        y[torch.arange(y.shape[0]), target].sum().backward()   # rows are independent
        comp.remove()
        return y.detach(), target, (x * x.grad).detach()
    return run, desc


def vit_case_worker(settings: str, feeds: Path, out: Path) -> None:
    """The recipe on ``feeds`` (npz with ``pixel_values``) for each ``conv,linear,stabilizer`` of ``settings``
    (``;``-separated): ``out`` holds ``<vit_key>:relevance`` and ``target`` (tools/lxt_adapter.py)."""
    run, _ = vit_recipe()
    with np.load(feeds) as z:
        x_np = z["pixel_values"]
    arrays = {}
    for item in settings.split(";"):
        gc, gl, st = (float(v) for v in item.split(","))
        _, target, rel = run(x_np, gc, gl, st)
        arrays[f"{vit_key(gc, gl, st)}:relevance"], arrays["target"] = rel.numpy(), target.numpy().astype(np.int64)
    np.savez(out, **arrays)


def vit_worker(out: Path) -> None:
    """LXT 2.1's ViT recipe (examples/vit_torch.py) on the zoo's HF ViT, float64.

    LXT documents it for torchvision's ViT: ``monkey_patch(vision_transformer)`` (its cp_LRP map:
    identity rule on GELU, LayerNorm with the std held constant, q/k of the attention detached)
    and ``monkey_patch_zennit()``, then per setting
    ``LayerMapComposite([(nn.Conv2d, Gamma(conv)), (nn.Linear, Gamma(lin))])`` registered on the
    model, ``y[0, argmax].backward()`` and relevance = input * input.grad.  For HF's ViT the same
    rules come from LXT's pieces (tools/make_lxt_goldens.py, preset cp-lrp, map ``_vit_map``).
    The *_exact entries repeat a setting with LXT's two 1e-10 stabilisers removed (the division by
    the layer input in its patched BasicHook.backward and the identity rule's f(x)/(x+1e-10))."""
    from make_lxt_goldens import _ref_feeds
    recipe, desc = vit_recipe()
    x_np = _ref_feeds("vit")["pixel_values"]

    def run(gc, gl, st):
        return recipe(x_np, gc, gl, st)

    arrays, settings = {"inputs:pixel_values": x_np}, []
    for gc, gl, st in VIT_SETTINGS:
        y, target, rel = run(gc, gl, st)
        key = vit_key(gc, gl, st)
        arrays[f"{key}:relevance"] = rel.numpy()
        sel = y[torch.arange(y.shape[0]), target]
        settings.append({"name": key, "conv_gamma": gc, "linear_gamma": gl, "stabilizer": st,
                         "layer_map": [["torch.nn.Conv2d", "Gamma", {"gamma": gc, "stabilizer": st}],
                                       ["torch.nn.Linear", "Gamma", {"gamma": gl, "stabilizer": st}]],
                         "conservation": (rel.flatten(1).sum(1) / sel).tolist()})
    arrays["logits"], arrays["target"] = y.numpy(), target.numpy().astype(np.int64)

    _remove_lxt_stabilisers()
    exact = {}
    for gc, gl, st in VIT_EXACT:
        key = vit_key(gc, gl, st)
        rel = run(gc, gl, st)[2].numpy()
        arrays[f"{key}:relevance_exact"] = rel
        exact[key] = rel_err(arrays[f"{key}:relevance"], rel)
    with np.load(ROOT / "models" / "vit.lxt.npz") as z:
        cp = z["cp-lrp:relevance"]
    from importlib.metadata import version
    meta = {"model": "vit (tools/zoo.py, weights as models/vit.onnx)", "lxt_map": desc,
            "recipe": vit_worker.__doc__, "settings": settings,
            "lxt_vs_exact_rel_err": exact,
            "vs_vit.lxt.npz_cp-lrp_rel_err": {k: rel_err(arrays[f"{k}:relevance"], cp) for k in
                                              ("gamma.conv=0,linear=0", "gamma.conv=0,linear=0,stabilizer=1e-15")},
            "target": "argmax per row", "seed": "backward of sum_b y[b, target[b]] (LXT efficient mode: "
            "relevance at the output = the target logit)", "float64": "as tools/make_lxt_goldens.py",
            "versions": {"lxt": version("lxt"), "zennit": version("zennit"), "torch": torch.__version__}}
    arrays["meta"] = json_bytes(meta)
    save_npz(out, arrays)


def _remove_lxt_stabilisers() -> None:
    """Exact divisions instead of LXT's x + 1e-10*sign(x) (zennit_patches) and x + 1e-10 (rules)."""
    import lxt.efficient.rules as lr
    import lxt.efficient.zennit_patches as lz
    lz.stabilize = lambda t, epsilon=None: torch.where(t == 0, torch.ones_like(t), t)
    fwd = lr.identity_rule_implicit_fn.forward
    fwd.__defaults__ = (0.0,)


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(zm.FIXTURES), metavar="NAME")
    ap.add_argument("--vit", action="store_true", help="only models/vit.gamma.npz")
    ap.add_argument("--no-vit", action="store_true")
    ap.add_argument("--vit-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vit-case", nargs=3, metavar=("SETTINGS", "FEEDS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.vit_worker:
        vit_worker(args.vit_worker)
        return 0
    if args.vit_case:
        vit_case_worker(args.vit_case[0], Path(args.vit_case[1]), Path(args.vit_case[2]))
        return 0
    torch.set_num_threads(1)
    if not args.vit:
        run_fixtures(args.only or list(zm.FIXTURES))
    if not args.no_vit:
        r = subprocess.run([sys.executable, __file__, "--vit-worker", str(VIT_OUT)], cwd=ROOT)
        if r.returncode:
            return r.returncode
        with np.load(VIT_OUT) as z:
            m = json.loads(bytes(z["meta"]))
        print(f"[vit] {VIT_OUT.name}: {VIT_OUT.stat().st_size / 1024:.0f} KiB; LXT vs exact "
              f"{max(m['lxt_vs_exact_rel_err'].values()):.2e}; gamma 0 vs vit.lxt.npz cp-lrp "
              + ", ".join(f"{k}: {v:.2e}" for k, v in m["vs_vit.lxt.npz_cp-lrp_rel_err"].items()))
    return 0


def run_fixtures(names: list[str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    built = {n: build_fixture(n) for n in names}        # all exports before Zennit is imported
    zm.install_torchvision_standin()
    goldens, manifest = {}, _load_manifest()
    for name, (fx, model32, x, entry) in built.items():
        if fx.same_as:
            entry["golden"] = f"{fx.same_as}.zennit.npz"
            manifest["fixtures"][name] = entry
            print(f"[zennit] {name:24s} uses {entry['golden']}, ort {entry['ort_vs_torch_float32']:.1e}")
            continue
        goldens[name] = make_golden(fx, model32, x)
        entry["dense_oracle_max_rel_err"] = oracle_check(model32, *goldens[name])
        if fx.bn == "in-graph":
            entry["exact_float64_fold_vs_zennit_merge"] = exact_fold_check(fx, goldens[name])
        specs = goldens[name][1]["specs"]
        entry["specs"] = [s["name"] for s in specs]
        entry["golden_size_bytes"] = write_golden(name, goldens[name])
        manifest["fixtures"][name] = entry
        print(f"[zennit] {name:24s} {len(specs)} specs, onnx {entry['size_bytes'] / 1024:.0f} KiB, golden "
              f"{entry['golden_size_bytes'] / 1024:.0f} KiB, ort {entry['ort_vs_torch_float32']:.1e}"
              + (f", dense oracle {entry['dense_oracle_max_rel_err']:.1e}" if "dense_oracle_max_rel_err" in entry
                 else ""), flush=True)
    for ref, others in (("cnn_bn", ("cnn_bn_folded", "cnn_bn_exporter_folded")),
                        ("resnet", ("resnet_folded", "resnet_exporter_folded"))):
        for o in others:
            if ref in goldens and o in goldens:
                manifest["checks"][f"{o}_vs_{ref}"] = compare_goldens(goldens[o], goldens[ref])
    if "mlp_nobias" in goldens:
        manifest["checks"]["mlp_nobias_conservation"] = {
            s["name"]: s["conservation"] for s in goldens["mlp_nobias"][1]["specs"]}
    manifest["fixtures"] = dict(sorted(manifest["fixtures"].items()))
    (OUT_DIR / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _load_manifest() -> dict:
    path = OUT_DIR / "MANIFEST.json"
    base = {"generator": "python tools/make_zennit_goldens.py", "fixtures": {}, "checks": {},
            "torch": torch.__version__}
    if path.exists():
        old = json.loads(path.read_text())
        base["fixtures"], base["checks"] = old.get("fixtures", {}), old.get("checks", {})
    return base


if __name__ == "__main__":
    sys.exit(main())
