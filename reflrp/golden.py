"""Golden files: an ``.npz`` of float64 relevances plus JSON metadata, written deterministically and
atomically, each with a fingerprint of everything that produced it. Format: docs/golden-format.md."""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backend import to_numpy
from .errors import ReflrpError
from .version import __version__

FORMAT_VERSION = 2
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: two runs give identical bytes


class StaleGoldenError(ReflrpError):
    """A golden file exists but was made by another model, options or reflrp version."""


def array_digest(arrays: dict) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``arrays`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(to_numpy(arrays[name]))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(model, options: dict, feeds: dict) -> dict:
    """What determines a golden file: the model bytes, the options of the explanation, the inputs and
    reflrp's version. Two runs with the same fingerprint write the same bytes."""
    return {"model_sha256": model.sha256, "reflrp": __version__, "inputs_sha256": array_digest(feeds),
            **{k: options[k] for k in sorted(options)}}


def golden_arrays(att, feeds: dict, model=None, all_tensors: bool = False, options: dict | None = None) -> dict:
    """The arrays and metadata of a golden file for attribution ``att`` of ``feeds``."""
    names = sorted(att.relevance) if all_tensors else list(att.wrt)
    arrays = {f"relevance/{n}": to_numpy(att.relevance[n]).astype(np.float64) for n in names}
    arrays.update({f"input/{k}": np.asarray(to_numpy(v)) for k, v in sorted(feeds.items())})
    arrays["output"] = to_numpy(att.outputs[att.output]).astype(np.float64)
    arrays["target"] = np.asarray(to_numpy(att.target))
    arrays["seed"] = to_numpy(att.seed).astype(np.float64)
    c = att.conservation
    meta = {
        "format": FORMAT_VERSION, "reflrp": __version__,
        "model": Path(model.source).name if model is not None else None,
        "model_sha256": getattr(model, "sha256", None), "opset": model.graph.opset if model is not None else None,
        "preset": att.plan.preset, "epsilon": att.plan.epsilon, "dtype": "float64",
        "explain_dtype": str(att.outputs[att.output].dtype), "output": att.output, "wrt": list(att.wrt),
        "conservation": None if c is None else {"target": c.target, "at_wrt": c.at_wrt, "absorbed": c.absorbed,
                                                "loss": c.loss, "deficit": c.deficit, "ok": c.ok},
    }
    if model is not None and options is not None:
        meta["fingerprint"] = fingerprint(model, options, feeds)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz with fixed timestamps, atomically (temp file + rename); the file's mode
    follows the umask, like any file the user creates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
        tmp.unlink(missing_ok=True)
        raise


def write_golden(path, att, feeds: dict, model=None, all_tensors: bool = False, options: dict | None = None) -> None:
    """Write the golden file of ``att`` (see :func:`golden_arrays`)."""
    write_npz(path, golden_arrays(att, feeds, model, all_tensors, options))


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


def stored_fingerprint(path) -> dict | None:
    """The fingerprint recorded in an existing golden file (None if it has none or cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z["meta"]).decode()).get("fingerprint")
    except Exception:
        return None


def what_changed(old: dict | None, new: dict) -> list[str]:
    if old is None:
        return ["the file has no fingerprint (made by another tool or an older reflrp)"]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


@dataclass
class GoldenRun:
    """What :func:`run` did: files written, skipped (fingerprint matched), failed (input -> reason)."""

    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)


def input_files(inputs) -> list[Path]:
    """The input files of a golden run: one .npz/.npy, or every .npz/.npy in a folder (sorted)."""
    src = Path(inputs)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix in (".npz", ".npy") and not p.name.startswith("."))
    elif src.is_file():
        files = [src]
    else:
        raise ReflrpError(f"inputs {str(inputs)!r} is neither a file nor a folder")
    if not files:
        raise ReflrpError(f"no .npz/.npy input files in {str(inputs)!r}")
    return files


def golden_path(out, input_file: Path) -> Path:
    return Path(out) / f"{input_file.stem}.golden.npz"


def run(model, inputs, out, preset: str = "attnlrp", dtype: Any = "float64", epsilon=None, wrt=None, rules=None,
        target=None, all_tensors: bool = False, force: bool = False, progress=None, output=None) -> GoldenRun:
    """Write one golden file per input file into ``out``, deterministically and atomically.

    A file whose fingerprint matches is skipped; one that differs raises :class:`StaleGoldenError`
    naming what changed (``force=True`` recomputes it). An unreadable or bad input is recorded in
    ``failed`` and the run goes on. ``progress(i, n, name)`` is called before each file."""
    from .backend import float_policy
    from .explain import explain
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    model.plan(preset, epsilon, wrt, rules)  # bad arguments fail before any file is read
    float_policy(dtype)
    out = Path(out)
    for stale in out.glob(".*.part") if out.is_dir() else ():  # temp files of a run that was killed
        stale.unlink()
    options = {"preset": preset, "dtype": None if dtype is None else str(np.dtype(dtype)), "epsilon": epsilon,
               "wrt": None if wrt is None else list(wrt), "rules": None if rules is None else dict(rules),
               "target": None if target is None else np.asarray(target).tolist(), "all_tensors": all_tensors,
               "output": output}
    result = GoldenRun()
    files = input_files(inputs)
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files), f.name)
        dest = golden_path(out, f)
        try:
            arrays = read_npz(f, "input file")
            feeds = {k: v for k, v in arrays.items() if k in model.input_names}
            if not feeds and len(arrays) == 1 and len(model.input_names) == 1:
                feeds = {model.input_names[0]: next(iter(arrays.values()))}
            want = fingerprint(model, options, feeds)
            if dest.exists() and not force:
                changed = what_changed(stored_fingerprint(dest), want)
                if not changed:
                    result.skipped.append(dest)
                    continue
                raise StaleGoldenError(f"{dest} exists but was made differently ({'; '.join(changed)}); "
                                       "pass --force (force=True) to recompute it")
            att = explain(model, feeds, target=target, preset=preset, dtype=dtype, epsilon=epsilon, wrt=wrt,
                          rules=rules, output=output, keep=None if all_tensors else ()).numpy()
            write_golden(dest, att, feeds, model, all_tensors, options)
            result.written.append(dest)
        except StaleGoldenError:
            raise
        except ReflrpError as exc:
            result.failed[f.name] = str(exc).splitlines()[0]
    if progress:
        progress(len(files), len(files), "")
    return result


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
