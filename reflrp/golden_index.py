"""The index of a golden run: a Parquet table with one row per sample (its golden file, the fingerprint's
hash, the target, the conservation totals, ``ok``). Columns: docs/golden-format.md ("Index")."""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from pathlib import Path

import numpy as np

from .errors import ReflrpError
from .samples import EXTRA

TOTALS = ("target", "at_wrt", "absorbed", "loss", "deficit")
INDEX_NAME = "index.parquet"


def fingerprint_hash(fp: dict | None) -> str | None:
    """sha256 of the fingerprint as canonical JSON (keys sorted): equal hashes, equal golden bytes."""
    return None if fp is None else hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def index_row(sample, path: Path, arrays) -> dict:
    """The index row of a golden file, from its arrays (``meta`` and ``target`` only are read)."""
    meta = json.loads(bytes(np.asarray(arrays["meta"])).decode())
    target = np.asarray(arrays["target"])
    books = meta.get("conservation") or {}
    return {"input": sample.label, "file": Path(path).name, "fingerprint": fingerprint_hash(meta.get("fingerprint")),
            "target": target.ravel().astype(np.int64).tolist() if target.dtype.kind in "iu" else None,
            **{f"total_{k}": books.get(k) for k in TOTALS}, "ok": bool(books.get("ok", True)), "error": None}


def failed_row(label: str, why: str) -> dict:
    return {"input": label, "file": None, "fingerprint": None, "target": None,
            **{f"total_{k}": None for k in TOTALS}, "ok": False, "error": why}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.json  # noqa: F401  (table_of)
        import pyarrow.parquet as pq
    except ImportError:
        raise ReflrpError(f"writing the golden index (Parquet) needs pyarrow: {EXTRA}") from None
    return pa, pq


def index_schema():
    pa, _ = _pyarrow()
    return pa.schema([("input", pa.string()), ("file", pa.string()), ("fingerprint", pa.string()),
                      ("target", pa.list_(pa.int64())), *[(f"total_{k}", pa.float64()) for k in TOTALS],
                      ("ok", pa.bool_()), ("error", pa.string())])


def table_of(rows: list[dict], schema):
    """The rows as an Arrow table of ``schema``, parsed by Arrow's JSON reader from JSON lines.

    Not ``pa.Table.from_pylist``: every Python-object path into Arrow imports pandas on first use (0.4 s
    on this machine, at the end of every run on Dask, while the workers are idle). JSON keeps every value
    exact (floats written as their shortest round-trip text, NaN and infinities included)."""
    pa, _ = _pyarrow()
    if not rows:
        return schema.empty_table()
    text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows).encode()
    options = pa.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    return pa.json.read_json(io.BytesIO(text), parse_options=options).select(schema.names)


def index_path(out, index) -> Path | None:
    """Where the index goes: ``out/index.parquet`` for True, the path given, None for False / None."""
    if index is None or index is False:
        return None
    _pyarrow()  # fail before any work
    return Path(out) / INDEX_NAME if index is True else Path(index)


def write_index(path: Path, rows: list[dict]) -> None:
    """Write the rows as Parquet, atomically (temp file + rename)."""
    _, pq = _pyarrow()
    table = table_of(rows, index_schema())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
