"""How far a model's own float type is from the float64 reference: ``reflrp.deviation(model, feeds)``.

``explain`` computes in float64 by default, whatever the model's type. For a float16 or bfloat16
deployment that is the reference, not what the deployment computes; :func:`deviation` runs both and
reports the difference of the forward (the explained output) and of the relevance (the attributed
tensors), each as ``max |own - ref| / max |ref|``, and the per-position Pearson r of the relevance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .dtypes import is_float


@dataclass(frozen=True)
class Deviation:
    """The model's float type against float64 on one input (same target in both runs).

    ``forward``: relative deviation of the explained output; ``relevance``: of the relevance at the
    attributed tensors (largest over them); ``pearson_r``: correlation of the relevance per position
    (token: summed over features; pixel: over channels); ``books_ok``: whether the books of the pass in
    the model's type close (to that type's tolerance)."""

    dtype: str
    forward: float
    relevance: float
    pearson_r: float
    books_ok: bool

    def __str__(self) -> str:
        books = "books close" if self.books_ok else "books do NOT close"
        return (f"model dtype {self.dtype}: forward deviates {self.forward:.1e} from float64, relevance "
                f"{self.relevance:.1e} (per-position r {self.pearson_r:.6f}; {books} in {self.dtype})")


def model_dtype(graph) -> np.dtype:
    """The narrowest float type among the model's initializers and float inputs (a float16 model converted
    with float32 inputs and outputs computes in float16 inside)."""
    floats = [np.dtype(v.dtype) for v in graph.initializers.values() if is_float(v.dtype)]
    floats += [np.dtype(v.dtype) for v in graph.inputs if v.dtype is not None and is_float(v.dtype)]
    return min(floats, key=lambda d: d.itemsize) if floats else np.dtype(np.float32)


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300)) if b.size else 0.0


def per_position(r) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.ndim == 3:
        return r.sum(-1).ravel()
    return r.sum(1).ravel() if r.ndim == 4 else r.ravel()


def deviation(model, feeds: Mapping[str, Any], target: Any = None, preset: str = "attnlrp", **options) -> Deviation:
    """Explain ``feeds`` in float64 and in the model's own float types (``dtype=None``) with the same
    target (the float64 run's) and compare; ``options`` are :func:`reflrp.explain`'s other arguments."""
    import warnings
    from .explain import ReflrpWarning, explain
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    ref = explain(model, feeds, target=target, preset=preset, dtype="float64", **options).numpy()
    with warnings.catch_warnings():  # open books in 16 bits are reported in the result, not warned about
        warnings.simplefilter("ignore", ReflrpWarning)
        own = explain(model, feeds, target=ref.target, preset=preset, dtype=None, **options).numpy()
    forward = relative(own.outputs[own.output], ref.outputs[ref.output])
    rel = max(relative(own.relevance[w], ref.relevance[w]) for w in ref.wrt)
    a, b = (np.concatenate([per_position(att.relevance[w]) for w in att.wrt]) for att in (own, ref))
    r = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    books = own.conservation is None or own.conservation.ok
    return Deviation(str(model_dtype(model.graph)), forward, rel, r, books)
