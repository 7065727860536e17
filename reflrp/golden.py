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
from .golden_index import failed_row, index_path, index_row, write_index
from .memory import job_scope
from .samples import Sample, Sources, input_files, list_samples, read_npz  # noqa: F401  (input_files: public here too)
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
    """What :func:`run` did: files written, skipped (fingerprint matched), failed (input -> reason), and the
    index it wrote (None without one). Lists are in input order."""

    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    index: Path | None = None
    outcomes: list = field(default_factory=list, repr=False)  # one Outcome per listed sample


@dataclass(frozen=True)
class Job:
    """What every sample of a run shares (sent with each Dask task)."""

    out: Path
    options: dict  # the fingerprinted options
    explain: dict  # the keyword arguments of reflrp.explain
    all_tensors: bool
    force: bool
    index: bool  # whether outcomes carry their index row


@dataclass(frozen=True)
class Outcome:
    """One sample's result: status "written", "skipped", "failed" or "stale" (made differently)."""

    sample: Sample
    status: str
    path: Path | None
    message: str = ""
    row: dict | None = None  # its index row


def golden_path(out, sample) -> Path:
    """``out/<stem>.golden.npz`` for an input file or a :class:`~reflrp.samples.Sample`."""
    return Path(out) / f"{sample.stem}.golden.npz"


def golden_sample(model, sample: Sample, sources: Sources, job: Job) -> Outcome:
    """Write, or skip (its fingerprint matches), the golden file of one sample; a bad input is a failed
    outcome, a file made differently a stale one: neither raises."""
    from .explain import explain
    dest = golden_path(job.out, sample)
    try:
        feeds = sources.feeds(sample)
        want = fingerprint(model, job.options, feeds)
        if dest.exists() and not job.force:
            changed = what_changed(stored_fingerprint(dest), want)
            if changed:
                return Outcome(sample, "stale", dest, f"{dest} exists but was made differently "
                               f"({'; '.join(changed)}); pass --force (force=True) to recompute it")
            return Outcome(sample, "skipped", dest, row=_stored_row(sample, dest) if job.index else None)
        att = explain(model, feeds, keep=None if job.all_tensors else (), **job.explain).numpy()
        arrays = golden_arrays(att, feeds, model, job.all_tensors, job.options)
        write_npz(dest, arrays)
        return Outcome(sample, "written", dest, row=index_row(sample, dest, arrays) if job.index else None)
    except ReflrpError as exc:
        why = str(exc).splitlines()[0]
        return Outcome(sample, "failed", None, why, failed_row(sample.label, why) if job.index else None)


def _stored_row(sample, dest):
    with np.load(dest, allow_pickle=False) as z:
        return index_row(sample, dest, z)


def golden_shard(samples: list[Sample], model_name: str, job: Job, blas_threads: int | None = 1) -> list[Outcome]:
    """The Dask task: the golden files of a shard of samples, on the model this worker loaded."""
    from .scale import blas_threads as limit_blas, worker_model
    model = worker_model(model_name)
    with limit_blas(blas_threads):  # the job's allocator scope is the model plugin's (reflrp.scale)
        sources = Sources(model)
        return [golden_sample(model, s, sources, job) for s in samples]


def run(model, inputs, out, preset: str = "attnlrp", dtype: Any = "float64", epsilon=None, wrt=None, rules=None,
        options=None, target=None, all_tensors: bool = False, force: bool = False, progress=None, output=None, client=None,
        per_row: bool = False, shard_size: int | None = None, index=None, blas_threads: int | None = 1) -> GoldenRun:
    """Write one golden file per sample into ``out``, deterministically and atomically.

    Samples: every .npz/.npy file of ``inputs`` (a file or a folder), each row of them with ``per_row``,
    or each row of a Parquet / Arrow table (docs/golden-format.md). A file whose fingerprint matches is
    skipped; one that differs raises :class:`StaleGoldenError` naming what changed (``force=True``
    recomputes it). A bad input is recorded in ``failed`` and the run goes on. ``progress(i, n, name)``
    is called before each file (as shards finish on Dask; ``"dask"``: Dask's progress bar).

    ``client``: a ``dask.distributed.Client``; one task per shard of ``shard_size`` samples (default
    :func:`reflrp.scale.default_shards`), BLAS limited to ``blas_threads`` in each task; the files are the
    same bytes as a serial run's. ``options``: rule parameters, as for :func:`reflrp.explain` (fingerprinted
    when given). ``index``: write ``out/index.parquet`` (or the path given), one row per
    sample; by default only on Dask."""
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    check_arguments(model, preset, dtype, epsilon, wrt, rules, shard_size, options)
    index = index_path(out, client is not None if index is None else index)
    if client is not None:  # workers may run elsewhere: absolute paths
        inputs, out = Path(inputs).resolve(), Path(out).resolve()
    recipe = {"preset": preset, "dtype": None if dtype is None else str(np.dtype(dtype)), "epsilon": epsilon,
               "wrt": None if wrt is None else list(wrt), "rules": None if rules is None else dict(rules),
               "target": None if target is None else np.asarray(target).tolist(), "all_tensors": all_tensors,
               "output": output}
    if options:  # only when given: files made without options keep their fingerprint
        recipe["options"] = dict(options)
    job = Job(Path(out), recipe, dict(target=target, preset=preset, dtype=dtype, epsilon=epsilon, wrt=wrt,
                                      rules=rules, options=options, output=output), all_tensors, force,
              index is not None)
    samples, unlisted = list_samples(model, inputs, per_row)
    _check_unique(samples, job.out)
    remove_partial(job.out)  # temp files of a run that was killed
    if client is None:
        with job_scope():  # the whole job is one call: its explains reuse each other's memory
            result = _collect(samples, _serial(model, samples, job, progress), unlisted)
    else:
        result = _collect(samples, _on_dask(client, model, samples, job, shard_size, progress, blas_threads), unlisted)
    if index is not None:
        rows = [((label, -1), failed_row(label, why)) for label, why in unlisted.items()]
        rows += [((o.sample.source.name, -1 if o.sample.row is None else o.sample.row), o.row) for o in result.outcomes]
        write_index(index, [row for _, row in sorted(rows, key=lambda kr: kr[0])])
        result.index = index
    if client is not None:
        remove_partial(job.out)  # a worker lost mid-write leaves its temp file
    return result


def check_arguments(model, preset="attnlrp", dtype="float64", epsilon=None, wrt=None, rules=None, shard_size=None,
                    options=None):
    """Bad arguments fail before any file is read (or any cluster started)."""
    from .backend import float_policy
    model.plan(preset, epsilon, wrt, rules, options)
    float_policy(dtype)
    if shard_size is not None and shard_size < 1:
        raise ReflrpError(f"shard_size {shard_size}: give at least 1 sample per shard")


def _serial(model, samples, job, progress):
    sources = Sources(model)
    for i, s in enumerate(samples):
        if progress:
            progress(i, len(samples), s.label)
        yield golden_sample(model, s, sources, job)
    if progress:
        progress(len(samples), len(samples), "")


def _on_dask(client, model, samples, job, size, progress, blas_threads):
    from . import scale
    parts = scale.shards(samples, size) if size else scale.default_shards(samples, scale.worker_count(client))
    with scale.model_on_workers(client, model) as name:
        for _, outcomes in scale.map_shards(client, golden_shard, parts, name, job,
                                            blas_threads, key="reflrp-golden", progress=progress):
            yield from outcomes


def _collect(samples, outcomes, unlisted) -> GoldenRun:
    """The run's result in input order; the first stale file raises (the files done so far stay)."""
    done = {}
    for o in outcomes:
        if o.status == "stale":
            raise StaleGoldenError(o.message)
        done[o.sample] = o
    result = GoldenRun(failed=dict(unlisted))
    result.outcomes = [done[s] for s in samples]
    for o in result.outcomes:
        if o.status == "failed":
            result.failed[o.sample.label] = o.message
        else:
            (result.written if o.status == "written" else result.skipped).append(o.path)
    return result


def _check_unique(samples, out) -> None:
    seen = {}
    for s in samples:
        other = seen.setdefault(s.stem, s)
        if other is not s:
            raise ReflrpError(f"inputs {other.label} and {s.label} would both write {golden_path(out, s)}; rename one")


def remove_partial(out: Path) -> None:
    for stale in out.glob(".*.part") if out.is_dir() else ():
        stale.unlink(missing_ok=True)


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
