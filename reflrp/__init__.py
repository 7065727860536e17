"""reflrp: a framework-independent reference implementation of LRP for transformers in ONNX."""
from __future__ import annotations

from .errors import (FeedError, GraphError, KernelError, ModelLoadError, ReflrpError, RuleError, TargetError,
                     UnsupportedOpError)
from .attribute import Attributions, attribute
from .evaluate import Evaluation, evaluate
from .explain import Attribution, ReflrpWarning, explain, gradient
from .memory import release_memory, set_allocator_policy
from .model import InferenceSession, Model, load
from .ops import supported_ops
from .targets import contrastive

from .version import __version__  # noqa: E402

__all__ = ["load", "Model", "InferenceSession", "explain", "gradient", "contrastive", "Attribution", "attribute",
           "Attributions", "evaluate", "Evaluation",
           "ReflrpWarning", "supported_ops", "set_allocator_policy", "release_memory", "ReflrpError",
           "ModelLoadError", "UnsupportedOpError", "GraphError", "FeedError", "KernelError", "TargetError",
           "RuleError", "__version__"]
