#!/usr/bin/env python
"""reflrp vs Zennit 1.0.0 on CNNs / ResNets that the committed goldens do not cover (nothing is saved).

Usage:
    python tools/zennit_unseen.py            # every model below, every golden spec, a table
    python tools/zennit_unseen.py --only bottleneck

Each model is built under a fixed seed, perturbed like tools/zennit_models.py (BatchNorm far from the
identity), exported (legacy exporter with BatchNormalization nodes left in the graph, and the same
function with BN folded by hand before a dynamo export), and explained by Zennit (float64, the specs
of tools/zennit_specs.py with the canonizer that fits: BN merge, plus the ResNet canonizer for
ResNets) and by reflrp (tests/zennit_translate.py reads a spec as a reflrp call; BN folded at load).
The models use what the goldens do not: Bottleneck blocks, a strided stem with a padded MaxPool,
padded AvgPool (count_include_pad), grouped / dilated convs, ConvTranspose, bias-less convs before
BN, BatchNorm1d after a Linear, LeakyReLU / ELU / SiLU, Dropout, and a Linear on 3-D inputs
(MatMul + Add).  Prints max|dR|/max|R| and reflrp's books per (model, export, spec).  Float attributes
are float32 in ONNX, so the models use float32-exact ones (LeakyReLU's slope 0.125: with 0.1 the
graph's float32(0.1) moves the forward by 1e-9 and the bias-free specs by up to 8e-7).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import transformers  # noqa: E402,F401  (before the torchvision stand-in)
import zennit_models as zm  # noqa: E402


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (attribute names and registration order as torchvision's)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BottleneckResNet(nn.Module):
    def __init__(self, w=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)                                   # 16 -> 8 -> 4
        d1 = nn.Sequential(nn.Conv2d(w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w))
        d2 = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 1, stride=2, bias=False), nn.BatchNorm2d(8 * w))
        self.layer1 = nn.Sequential(Bottleneck(w, w, downsample=d1), Bottleneck(4 * w, w))
        self.layer2 = nn.Sequential(Bottleneck(4 * w, 2 * w, stride=2, downsample=d2))          # 4 -> 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, zm.NUM_CLASSES)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


def vgg_bn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1),                                                  # 8 -> 4
        nn.Conv2d(8, 12, 3, padding=1, groups=2), nn.BatchNorm2d(12), nn.LeakyReLU(0.125),
        nn.Conv2d(12, 12, 3, padding=2, dilation=2), nn.BatchNorm2d(12), nn.ELU(),
        nn.MaxPool2d(2), nn.Flatten(),                                                         # 4 -> 2
        nn.Linear(48, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, zm.NUM_CLASSES))


def up_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(),                                    # 8 -> 4
        nn.ConvTranspose2d(6, 6, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),        # 4 -> 8
        nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.SiLU(),
        nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, zm.NUM_CLASSES))


class TokenMLP(nn.Module):
    """Linear layers on (batch, tokens, features): exported as MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4)
        self.flatten, self.head = nn.Flatten(), nn.Linear(3 * 4, zm.NUM_CLASSES)

    def forward(self, x):
        return self.head(self.flatten(self.fc2(self.act(self.fc1(x)))))


MODELS = {  # name: (constructor, input shape, is a ResNet)
    "bottleneck": (BottleneckResNet, (3, 16, 16), True),
    "vgg_bn": (vgg_bn, (3, 8, 8), False),
    "up_cnn": (up_cnn, (3, 8, 8), False),
    "token_mlp": (TokenMLP, (3, 6), False),
}


def build(name):
    make, shape, _ = MODELS[name]
    torch.manual_seed(7 + len(name))
    model = make()
    zm.perturb_(model, 99 + len(name))
    model.eval()
    g = torch.Generator().manual_seed(11)
    x = torch.randn(zm.BATCH, *shape, generator=g).clamp(-zm.INPUT_CLIP, zm.INPUT_CLIP).numpy()
    return model, x


def export(model, x, dynamo: bool) -> bytes:
    xt = torch.from_numpy(x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (xt,), dynamo=True, opset_version=18, input_names=["x"],
                                     output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     external_data=False, verbose=False)
            return prog.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(model, (xt,), buf, dynamo=False, opset_version=18, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=False)
        return buf.getvalue()


class _Fx:
    def __init__(self, name, canonizer, bn):
        self.name, self.canonizer, self.bn = name, canonizer, bn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # exports first: torch.onnx must not see the torchvision stand-in
    built, files = {}, {}
    for name in args.only or MODELS:
        model, x = build(name)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        built[name] = (model, x)
        files[(name, "legacy, BN in graph" if has_bn else "legacy")] = (model, export(model, x, False), has_bn)
        if has_bn:
            folded = zm.fold_batchnorm(model)
            files[(name, "BN folded by hand, dynamo")] = (folded, export(folded, x, True), False)
        else:
            files[(name, "dynamo")] = (model, export(model, x, True), False)
    zm.install_torchvision_standin()
    sys.modules["torchvision.models.resnet"].Bottleneck = Bottleneck
    import reflrp
    import zennit_translate as zt
    from make_zennit_goldens import attribute, bound_arrays, float64_model
    from zennit_specs import specs_for, make_composite

    rows = []
    for (name, how), (model32, blob, bn_in_graph) in files.items():
        _, x = built[name]
        resnet = MODELS[name][2]
        fx = _Fx(name, "resnet" if resnet else ("merge-bn" if bn_in_graph else "none"),
                 "in-graph" if bn_in_graph else "none")
        model64 = float64_model(model32)
        with torch.no_grad():
            logits = model64(torch.from_numpy(x.astype(np.float64)))
        target = logits.argmax(1)
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).double()
        arrays = bound_arrays(x.shape[1:])
        kinds = {type(m) for m in model64.modules()}
        specs = [s for s in specs_for(fx, has_conv=bool(kinds & {nn.Conv2d, nn.ConvTranspose2d}),
                                      has_avgpool=bool(kinds & {nn.AvgPool2d, nn.AdaptiveAvgPool2d}), smooth=False)
                 if not s["diagnostic"]]
        if name == "token_mlp":  # 3-D inputs: per-feature bounds must broadcast to (batch, tokens, features)
            arrays["bounds:channel:low"] = arrays["bounds:channel:low"].reshape(1, 1, -1)[..., :1]
            arrays["bounds:channel:high"] = arrays["bounds:channel:high"].reshape(1, 1, -1)[..., :1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            path.write_bytes(blob)
            graph = onnx.load(str(path)).graph
            inits = {i.name for i in graph.initializer}
            residual = any(n.op_type == "Add" and not set(n.input) & inits for n in graph.node)
            models = {}
            for spec in specs:
                _, rel, _ = attribute(model64, x, onehot, make_composite(spec, arrays))
                fold = zt.folds_batchnorm(spec)
                m = models.setdefault(fold, reflrp.load(str(path), fold_batchnorm=fold))
                kw = zt.explain_kwargs(spec, arrays, residual)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    att = reflrp.explain(m, {"x": x}, target=target.numpy(), **kw)
                err = float(np.abs(att["x"] - rel).max() / np.abs(rel).max())
                rows.append((name, how, spec["name"], err, att.conservation.ok))
    width = max(len(r[2]) for r in rows)
    for r in rows:
        print(f"{r[0]:11s} {r[1]:27s} {r[2]:{width}s} {r[3]:.2e} books {'ok' if r[4] else 'NOT OK'}")
    worst = max(r[3] for r in rows)
    print(f"{len(rows)} runs; worst {worst:.2e}; books not ok: {sum(not r[4] for r in rows)}")
    return 0 if worst <= 1e-8 else 1


if __name__ == "__main__":
    sys.exit(main())
