"""The samples of a golden run and their feeds: a folder of .npz/.npy files (a sample per file), the
rows of batched .npz/.npy files (a sample per row of the leading axis), or the rows of a Parquet / Arrow
table of token-id sequences. Each sample names its golden file deterministically. Format and padding
rules: docs/golden-format.md ("Inputs")."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FeedError, ReflrpError

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
MASK = "attention_mask"  # the one input a table may leave out: all ones (no padding)
EXTRA = "pip install 'reflrp[scale]'"


@dataclass(frozen=True)
class Sample:
    """One golden file's input: a whole .npz/.npy file (``row`` None) or one row of a batched file or a
    table (then fed with a batch axis of 1)."""

    source: Path
    row: int | None = None
    table: bool = False

    @property
    def stem(self) -> str:
        """The golden file is ``<stem>.golden.npz``: the input file's stem, plus ``.<row:06d>`` for a row."""
        return self.source.stem if self.row is None else f"{self.source.stem}.{self.row:06d}"

    @property
    def label(self) -> str:
        return self.source.name if self.row is None else f"{self.source.name}[{self.row}]"


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


def list_samples(model, inputs, per_row: bool = False) -> tuple[list[Sample], dict[str, str]]:
    """(samples in order, failures by label): a table gives one sample per row, ``per_row`` one per row of
    every .npz/.npy file; a batched file whose rows cannot be counted is a failure, the rest go on."""
    src = Path(inputs)
    if src.is_file() and src.suffix in TABLE_SUFFIXES:
        return [Sample(src, i, table=True) for i in range(table_rows(model, src))], {}
    files = input_files(inputs)
    if not per_row:
        return [Sample(f) for f in files], {}
    samples, failed = [], {}
    for f in files:
        try:
            samples += [Sample(f, i) for i in range(leading_rows(model, f))]
        except ReflrpError as exc:
            failed[f.name] = str(exc).splitlines()[0]
    return samples, failed


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


def feed_keys(model, names) -> dict[str, str]:
    """Input name -> array name: the arrays named like inputs; a one-input model also takes a lone array."""
    names = list(names)
    keys = {n: n for n in names if n in model.input_names}
    if not keys and len(names) == 1 and len(model.input_names) == 1:
        keys = {model.input_names[0]: names[0]}
    return keys


def array_shapes(path: Path) -> dict[str, tuple]:
    """The shape of every array of an .npz/.npy file, from the .npy headers only (no data read)."""
    try:
        if path.suffix == ".npy":
            return {path.stem: np.load(path, mmap_mode="r", allow_pickle=False).shape}
        shapes = {}
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                with zf.open(member) as fh:
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
                    shapes[member.removesuffix(".npy")] = read(fh)[0]
        return shapes
    except Exception as exc:
        raise ReflrpError(f"cannot read input file {str(path)!r}: {exc}") from None


def leading_rows(model, path: Path) -> int:
    """The length of the leading (batch) axis shared by every input array of a batched file."""
    shapes = array_shapes(path)
    keys = feed_keys(model, shapes)
    if not keys:
        raise FeedError(f"{path.name}: no array named like an input {list(model.input_names)}; has {sorted(shapes)}")
    rows = {name: shapes[key][0] if shapes[key] else None for name, key in keys.items()}
    if None in rows.values() or len(set(rows.values())) != 1:
        raise FeedError(f"{path.name}: per-row inputs need one leading axis shared by every input; shapes "
                        + ", ".join(f"{k} {shapes[key]}" for k, key in keys.items()))
    return next(iter(rows.values()))


def read_table(path: Path):
    """A Parquet file or an Arrow IPC (Feather v2) file as a ``pyarrow.Table`` (memory-mapped)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ReflrpError(f"reading the table {path.name} needs pyarrow: {EXTRA}") from None
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path, memory_map=True)
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all()
    except Exception as exc:
        raise ReflrpError(f"cannot read table {str(path)!r}: {str(exc).splitlines()[0]}") from None


def table_rows(model, path: Path) -> int:
    """The number of rows of a table, after checking that it has a column for every input (but the mask)."""
    table = read_table(path)
    missing = [n for n in model.input_names if n not in table.column_names and n != MASK]
    if missing:
        raise FeedError(f"table {path.name} has no column for input(s) {missing} of the model; "
                        f"its columns: {table.column_names}")
    return table.num_rows


def table_feeds(model, table, row: int) -> dict:
    """The feeds of one table row, batch axis 1, in the model's input dtypes. A row is fed as it is: its
    own length, its padding (if any) kept; a model input ``attention_mask`` missing from the table is all
    ones over the row's sequence."""
    feeds = {}
    for v in model.graph.inputs:
        if v.name not in table.column_names:
            continue
        cell = table.column(v.name)[row].as_py()
        if cell is None:
            raise FeedError(f"row {row}: column {v.name!r} is null")
        try:
            value = np.asarray(cell)
        except ValueError:
            raise FeedError(f"row {row}: column {v.name!r} is ragged (nested lists of unequal lengths)") from None
        if v.dtype is not None and value.size and not np.can_cast(value.dtype, v.dtype, "same_kind"):
            raise FeedError(f"row {row}: column {v.name!r} holds {value.dtype} values; input {v.describe()}")
        feeds[v.name] = value.astype(v.dtype if v.dtype is not None else value.dtype)[None]
    if MASK in model.input_names and MASK not in feeds and feeds:
        mask_type = next(v.dtype for v in model.graph.inputs if v.name == MASK) or np.dtype(np.int64)
        feeds[MASK] = np.ones(next(iter(feeds.values())).shape[:2], dtype=mask_type)
    return feeds


class Sources:
    """Reads the feeds of samples, each source file once while its samples follow each other (a shard, a
    serial run); a source that cannot be read fails each of its samples with the same message."""

    def __init__(self, model):
        self.model = model
        self._path: Path | None = None
        self._data = None

    def feeds(self, sample: Sample) -> dict:
        if sample.source != self._path:
            self._path, self._data = sample.source, self._read(sample)
        if isinstance(self._data, ReflrpError):
            raise self._data
        if sample.table:
            return table_feeds(self.model, self._data, sample.row)
        keys = feed_keys(self.model, self._data)
        if sample.row is None:
            return {name: self._data[key] for name, key in keys.items()}
        return {name: self._data[key][sample.row:sample.row + 1] for name, key in keys.items()}

    def _read(self, sample: Sample):
        try:
            return read_table(sample.source) if sample.table else read_npz(sample.source, "input file")
        except ReflrpError as exc:
            return exc
