"""reflrp: a framework-independent reference implementation of LRP for transformers in ONNX."""
from __future__ import annotations

from .errors import (FeedError, GraphError, KernelError, ModelLoadError, ReflrpError, RuleError, TargetError,
                     UnsupportedOpError)
from .attribute import Attributions, attribute
from .evaluate import Evaluation, evaluate
from .deviation import Deviation, deviation
from .explain import Attribution, ReflrpWarning, explain, gradient
from .generate import Generation, generate
from .memory import release_memory, set_allocator_policy
from .model import InferenceSession, Model, load
from .neurons import neuron_stats, neurons, reference_samples
from .ops import supported_ops
from .presets import composite
from .targets import contrastive

from .version import __version__  # noqa: E402

__all__ = ["load", "Model", "InferenceSession", "explain", "gradient", "composite", "deviation", "Deviation", "generate",
           "Generation", "contrastive", "neurons", "neuron_stats", "reference_samples", "Attribution", "attribute",
           "Attributions", "evaluate", "Evaluation",
           "ReflrpWarning", "supported_ops", "set_allocator_policy", "release_memory", "ReflrpError",
           "ModelLoadError", "UnsupportedOpError", "GraphError", "FeedError", "KernelError", "TargetError",
           "RuleError", "__version__"]
