"""Exception classes. Every error reflrp raises on bad input is a :class:`ReflrpError`."""
from __future__ import annotations


class ReflrpError(Exception):
    """Base class of every error reflrp raises on bad input or an unsupported model."""


class ModelLoadError(ReflrpError):
    """The file or bytes are not a readable ONNX model (truncated, not ONNX, bad external data)."""


class UnsupportedOpError(ReflrpError):
    """A node's op type, domain or opset has no kernel (or no relevance rule)."""


class GraphError(ReflrpError):
    """The graph is malformed: a cycle, a missing initializer or an undefined tensor."""


class FeedError(ReflrpError):
    """A feed is missing, extra, or of the wrong rank, shape or dtype."""


class KernelError(ReflrpError):
    """A kernel failed on its inputs; the message names the node and op."""


class TargetError(ReflrpError):
    """The explanation target is out of range or of the wrong shape."""


class RuleError(ReflrpError):
    """A dynamic tensor reaches a node for which the preset has no relevance rule."""
