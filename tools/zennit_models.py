"""Tiny CNN / MLP / ResNet fixtures for the Zennit goldens, and the torchvision stand-in Zennit needs.

Every model is built from code under a fixed seed, then its parameters (and BatchNorm statistics)
are perturbed, so biases are non-zero, BN is far from the identity and some BN scales are
negative.  Weights are float32 (that is what the ONNX files hold); the golden tool upcasts with
``.double()``, so torch float64 and reflrp's float64 pass see the same numbers.

torchvision stand-in: Zennit 1.0.0 imports torchvision when loaded (``zennit.types`` needs
``torchvision.ops.FrozenBatchNorm2d``, ``zennit.torchvision`` needs
``torchvision.models.resnet.BasicBlock`` / ``Bottleneck``), and PyPI's torchvision does not load
beside the CPU torch here.  ``install_torchvision_standin()`` puts a module tree into sys.modules
whose ``models.resnet.BasicBlock`` *is* this file's :class:`BasicBlock`, so Zennit's ResNet
canonizer recognises our ResNet.  It also carries ``models.vision_transformer`` (``nn = torch.nn``),
which LXT's efficient models import.  Call it before importing zennit (and after transformers).
"""
from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

WEIGHT_SEEDS = {"mlp": 201, "mlp_nobias": 202, "mlp_smooth": 203, "cnn_bn": 204, "vgg": 205,
                "resnet": 206}
INPUT_SEED = 2024
BATCH = 3
INPUT_CLIP = 2.5          # inputs lie in [-2.5, 2.5], inside the zbox bounds below
NUM_CLASSES = 5


# --------------------------------------------------------------- torchvision stand-in

class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names and registration order)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """Placeholder for torchvision's Bottleneck: Zennit imports the name; no fixture uses it."""


class FrozenBatchNorm2d(nn.Module):
    """Placeholder for torchvision.ops.FrozenBatchNorm2d (only used in Zennit's BatchNorm type)."""


def install_torchvision_standin() -> None:
    """Put a minimal ``torchvision`` into sys.modules (no-op if one is there already)."""
    if "torchvision" in sys.modules:
        tv_resnet = sys.modules.get("torchvision.models.resnet")
        if tv_resnet is None or getattr(tv_resnet, "BasicBlock", None) is not BasicBlock:
            raise RuntimeError("a torchvision module is loaded that is not this stand-in")
        return
    names = ("torchvision", "torchvision.models", "torchvision.models.resnet",
             "torchvision.models.vision_transformer", "torchvision.ops")
    tv, tvm, resnet, vit, ops = (types.ModuleType(n) for n in names)
    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
    vit.nn = torch.nn
    ops.FrozenBatchNorm2d = FrozenBatchNorm2d
    tvm.resnet, tvm.vision_transformer, tv.models, tv.ops = resnet, vit, tvm, ops
    sys.modules.update(dict(zip(names, (tv, tvm, resnet, vit, ops))))


# ---------------------------------------------------------------------------- models

def mlp(bias: bool = True, act: Callable[[], nn.Module] = nn.ReLU, act2: Callable[[], nn.Module] | None = None,
        features: int = 12) -> nn.Module:
    """Linear-act-Linear-act-Linear."""
    return nn.Sequential(nn.Linear(features, 16, bias=bias), act(), nn.Linear(16, 16, bias=bias),
                         (act2 or act)(), nn.Linear(16, NUM_CLASSES, bias=bias))


def cnn_bn() -> nn.Module:
    """Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-AvgPool-Flatten-Linear on 3x8x8."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),     # 8 -> 4
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),     # 4 -> 2
        nn.Flatten(), nn.Linear(8 * 2 * 2, NUM_CLASSES))


class VGG(nn.Module):
    """torchvision-VGG layout: features (conv blocks with MaxPool), avgpool, classifier of Linears."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                                              # 8 -> 4
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))                                                              # 4 -> 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                                        nn.Linear(24, NUM_CLASSES))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ResNet(nn.Module):
    """torchvision-ResNet layout with three BasicBlocks; layer2 downsamples (1x1 conv + BN shortcut)."""

    def __init__(self, width: int = 8):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)                                                    # 8 -> 4
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        down = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, stride=2, downsample=down))     # 4 -> 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, NUM_CLASSES)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------- weights

@torch.no_grad()
def perturb_(model: nn.Module, seed: int) -> None:
    """0.1*N(0,1) on every conv/linear parameter; BN: weight 1+0.4*N (some negative), bias 0.3*N,
    running_mean 0.3*N, running_var in [0.3, 1.8)."""
    g = torch.Generator().manual_seed(seed)
    bns = {m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in model.modules():
        if m in bns:
            m.weight.copy_(1 + 0.4 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.3 + 1.5 * torch.rand(m.running_var.shape, generator=g))
        else:
            for p in m.parameters(recurse=False):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BN that directly follows a Conv/Linear (in leaf order, as
    Zennit's SequentialMergeBatchNorm finds them) folded into it and replaced by nn.Identity.

    Done by hand in float64 (independent of Zennit's MergeBatchNorm): with s = gamma/sqrt(var+eps),
    W' = W * s (per output channel), b' = (b - mean) * s + beta; the result is stored in the
    model's dtype (a float32 model gets float32-rounded folded weights, a float64 one exact ones)."""
    folded = copy.deepcopy(model)
    leaves = [(n, m) for n, m in folded.named_modules() if not list(m.children())]
    for (_, lin), (bn_name, bn) in zip(leaves, leaves[1:]):
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and isinstance(lin, (nn.Conv2d, nn.Linear)):
            s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            b = lin.bias.double() if lin.bias is not None else torch.zeros_like(s)
            w = lin.weight.double() * s.reshape(-1, *([1] * (lin.weight.ndim - 1)))
            dtype = lin.weight.dtype
            with torch.no_grad():
                lin.weight.copy_(w.to(dtype))
                lin.bias = nn.Parameter(((b - bn.running_mean.double()) * s + bn.bias.double()).to(dtype))
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(folded.get_submodule(parent_name) if parent_name else folded, attr, nn.Identity())
    return folded


# ------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Fixture:
    """One ONNX file: which torch model, how it is exported, what its BatchNorm became."""
    name: str
    weights: str                    # key of WEIGHT_SEEDS (same weights -> same function)
    make: Callable[[], nn.Module]
    in_shape: tuple[int, ...]       # without the batch axis
    exporter: str                   # "dynamo" | "legacy"
    bn: str                         # "none" | "in-graph" | "folded-by-hand" | "folded-by-exporter"
    canonizer: str                  # Zennit canonizer the golden uses: none | merge-bn | resnet
    export_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    same_as: str = ""               # another fixture with the same function: its golden applies


FIXTURES: dict[str, Fixture] = {f.name: f for f in [
    Fixture("mlp", "mlp", mlp, (12,), "dynamo", "none", "none"),
    Fixture("mlp_legacy", "mlp", mlp, (12,), "legacy", "none", "none",
            notes="same weights as mlp; TorchScript exporter", same_as="mlp"),
    Fixture("mlp_nobias", "mlp_nobias", lambda: mlp(bias=False), (12,), "dynamo", "none", "none",
            notes="no biases: the conservation check"),
    Fixture("mlp_smooth", "mlp_smooth", lambda: mlp(act=nn.GELU, act2=nn.Tanh), (12,), "dynamo", "none",
            "none", notes="GELU and Tanh: Zennit's Pass on activations differs from the gradient"),
    Fixture("cnn_bn", "cnn_bn", cnn_bn, (3, 8, 8), "legacy", "in-graph", "merge-bn",
            dict(do_constant_folding=False),
            notes="legacy exporter without constant folding: BatchNormalization nodes stay"),
    Fixture("cnn_bn_dynamo", "cnn_bn", cnn_bn, (3, 8, 8), "dynamo", "in-graph", "merge-bn",
            dict(optimize=False), notes="dynamo exporter with optimize=False: BatchNormalization stays",
            same_as="cnn_bn"),
    Fixture("cnn_bn_folded", "cnn_bn", cnn_bn, (3, 8, 8), "dynamo", "folded-by-hand", "none",
            notes="BN folded by hand (float64, rounded to float32) before export"),
    Fixture("cnn_bn_exporter_folded", "cnn_bn", cnn_bn, (3, 8, 8), "dynamo", "folded-by-exporter", "none",
            notes="dynamo's default optimizer folds BN into the Conv; the golden model reads the folded "
                  "Conv weights back from the ONNX file"),
    Fixture("vgg", "vgg", VGG, (3, 8, 8), "dynamo", "none", "none"),
    Fixture("vgg_legacy", "vgg", VGG, (3, 8, 8), "legacy", "none", "none",
            notes="same weights as vgg; TorchScript exporter (GlobalAveragePool, Flatten)", same_as="vgg"),
    Fixture("resnet", "resnet", ResNet, (3, 8, 8), "legacy", "in-graph", "resnet",
            dict(do_constant_folding=False), notes="BatchNormalization nodes stay"),
    Fixture("resnet_folded", "resnet", ResNet, (3, 8, 8), "dynamo", "folded-by-hand", "resnet",
            notes="BN folded by hand before export; the ResNet canonizer still adds its Sum"),
    Fixture("resnet_exporter_folded", "resnet", ResNet, (3, 8, 8), "dynamo", "folded-by-exporter", "resnet",
            notes="dynamo's default optimizer folds BN; golden model reads the Conv weights from the file"),
    Fixture("zoo_cnn", "zoo:cnn", lambda: None, (1, 8, 8), "zoo", "in-graph", "merge-bn",
            notes="the zoo's models/cnn.onnx (tools/zoo.py TinyCNN: BN, MaxPool, AvgPool, global average "
                  "pool), not re-exported; inputs are this file's, not cnn.ref.npz"),
]}


def build_float32(weights: str, make: Callable[[], nn.Module]) -> nn.Module:
    """The model with weight group ``weights``: seeded init, then perturbed; float32, eval mode.
    ``zoo:NAME`` is tools/zoo.py's model NAME (the weights of models/NAME.onnx)."""
    if weights.startswith("zoo:"):
        from zoo import build_model
        return build_model(weights[4:])[0].eval()
    torch.manual_seed(WEIGHT_SEEDS[weights])
    model = make()
    perturb_(model, WEIGHT_SEEDS[weights] + 100_000)
    return model.eval()


def build(name: str) -> tuple[nn.Module, np.ndarray]:
    """(float32 torch model, float32 input batch) of fixture ``name``.  For BN-folded fixtures the
    model is the folded one (for 'folded-by-exporter' the caller loads the file's Conv weights)."""
    fx = FIXTURES[name]
    model = build_float32(fx.weights, fx.make)
    if fx.bn.startswith("folded"):
        model = fold_batchnorm(model)
    g = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(BATCH, *fx.in_shape, generator=g).clamp(-INPUT_CLIP, INPUT_CLIP)
    return model, x.numpy()


def unfolded(name: str) -> nn.Module:
    """The same weights with BatchNorm modules in place (for the folded-vs-unfolded check)."""
    fx = FIXTURES[name]
    return build_float32(fx.weights, fx.make)
