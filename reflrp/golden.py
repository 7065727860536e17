"""Golden files: an ``.npz`` of float64 relevances plus JSON metadata, written deterministically and
atomically. Format: docs/golden-format.md."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .backend import to_numpy
from .errors import ReflrpError

FORMAT_VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: two runs give identical bytes


def model_sha256(model) -> str | None:
    src = getattr(model, "source", None)
    if src and Path(src).is_file():
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()
    return None


def golden_arrays(att, feeds: dict, model=None, all_tensors: bool = False) -> dict[str, np.ndarray]:
    """The arrays and metadata of a golden file for attribution ``att`` of ``feeds``."""
    from . import __version__
    names = sorted(att.relevance) if all_tensors else list(att.wrt)
    arrays = {f"relevance/{n}": to_numpy(att.relevance[n]).astype(np.float64) for n in names}
    arrays.update({f"input/{k}": np.asarray(to_numpy(v)) for k, v in sorted(feeds.items())})
    arrays["output"] = to_numpy(att.outputs[att.output]).astype(np.float64)
    arrays["target"] = np.asarray(to_numpy(att.target))
    arrays["seed"] = to_numpy(att.seed).astype(np.float64)
    c = att.conservation
    meta = {
        "format": FORMAT_VERSION, "reflrp": __version__, "model_sha256": model_sha256(model) if model else None,
        "model": Path(model.source).name if model is not None else None,
        "opset": model.graph.opset if model is not None else None,
        "preset": att.plan.preset, "epsilon": att.plan.epsilon, "dtype": str(arrays["output"].dtype),
        "explain_dtype": str(att.outputs[att.output].dtype), "output": att.output, "wrt": list(att.wrt),
        "conservation": {"target": c.target, "at_wrt": c.at_wrt, "absorbed": c.absorbed, "loss": c.loss,
                         "deficit": c.deficit},
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz with fixed timestamps, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for key in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_golden(path, att, feeds: dict, model=None, all_tensors: bool = False) -> None:
    """Write the golden file of ``att`` (see :func:`golden_arrays`)."""
    write_npz(path, golden_arrays(att, feeds, model, all_tensors))


def read_golden(path) -> tuple[dict[str, np.ndarray], dict]:
    """(relevance by tensor name, metadata) of a golden file."""
    data = read_npz(path, "golden file")
    if "meta" not in data:
        raise ReflrpError(f"{path} is not a reflrp golden file (no 'meta' entry)")
    meta = json.loads(bytes(data["meta"]).decode())
    rel = {k[len("relevance/"):]: v for k, v in data.items() if k.startswith("relevance/")}
    return rel, meta | {"arrays": data}


def read_npz(path, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an .npz/.npy file; a clear error for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise ReflrpError(f"{what} {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            return {path.stem: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise ReflrpError(f"cannot read {what} {str(path)!r}: {exc}") from None


def compare(candidate: dict[str, Any], golden: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 0.0):
    """Per golden tensor: max |error|, max |error| / max |golden|, Pearson correlation, pass/fail.

    A tensor passes when ``max |c - g| <= atol + rtol * max |g|``; a missing tensor or a shape
    mismatch fails."""
    rows = []
    for name, g in golden.items():
        c = candidate.get(name, candidate.get(f"relevance/{name}"))
        if c is None:
            rows.append(dict(tensor=name, ok=False, note="missing in candidate"))
            continue
        c = np.asarray(to_numpy(c), dtype=np.float64)
        if c.shape != g.shape:
            rows.append(dict(tensor=name, ok=False, note=f"shape {c.shape} != golden {g.shape}"))
            continue
        err = float(np.abs(c - g).max()) if g.size else 0.0
        scale = float(np.abs(g).max()) if g.size else 0.0
        finite = bool(np.isfinite(c).all())
        corr = float(np.corrcoef(c.ravel(), g.ravel())[0, 1]) if g.size > 1 and c.std() > 0 and g.std() > 0 else float("nan")
        rows.append(dict(tensor=name, ok=finite and err <= atol + rtol * scale, max_abs=err,
                         max_rel=err / scale if scale else err, corr=corr, note="" if finite else "NaN/Inf"))
    return rows
