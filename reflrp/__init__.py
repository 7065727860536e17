"""reflrp: a framework-independent reference implementation of LRP for transformers in ONNX."""
from __future__ import annotations

from .errors import (FeedError, GraphError, KernelError, ModelLoadError, ReflrpError, RuleError, TargetError,
                     UnsupportedOpError)
from .explain import Attribution, explain
from .model import Model, load
from .ops import supported_ops

__version__ = "0.1.0"

__all__ = ["load", "Model", "explain", "Attribution", "supported_ops", "ReflrpError", "ModelLoadError", "UnsupportedOpError",
           "GraphError", "FeedError", "KernelError", "TargetError", "RuleError", "__version__"]
