"""Golden files on Dask (issue 14): a real scheduler and two worker processes on 127.0.0.1, one killed
mid-run; every file byte-identical to the serial run, nothing lost or duplicated, the Parquet index; per-row
and table inputs (their golden bytes equal those of the same row written as its own .npz file)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import reflrp
from reflrp import golden, scale
from reflrp.cli import main
from reflrp.errors import FeedError
from zoo import MODELS, feeds

LLAMA = MODELS / "llama.onnx"
LLAMA_IDS = MODELS / "llama_ids.onnx"  # one input: input_ids
BERT_IDS = MODELS / "deployed" / "bert_ids.onnx"  # input_ids, attention_mask, token_type_ids
N = 64


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)  # a test before may have killed one; its nanny restarts it
        yield c


def _inputs_dir(path, n=N):
    x = feeds("llama")["inputs_embeds"]
    path.mkdir()
    for i in range(n):
        np.savez(path / f"ex{i:03d}.npz", inputs_embeds=x * (1 + 0.01 * i))
    return path


def _golden_files(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.golden.npz"))}


def _kill_when_busy(cluster, client, out, state, at_least=4, timeout=60.0):
    """Kill (SIGKILL) one worker process once >= ``at_least`` files exist and the scheduler has a task on it."""
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    state["victim"] = victim
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ws = cluster.scheduler.workers.get(victim)
        if ws is not None and len(ws.processing) and len(list(out.glob("*.golden.npz"))) >= at_least:
            state["files_at_kill"] = len(list(out.glob("*.golden.npz")))
            os.kill(pids[victim], signal.SIGKILL)
            return
        time.sleep(0.005)
    state["timeout"] = True


def test_killed_worker_job_completes_byte_identical(tmp_path, cluster, client):
    inputs = _inputs_dir(tmp_path / "in")
    serial = golden.run(LLAMA, inputs, tmp_path / "serial", index=True)
    assert len(serial.written) == N and not serial.failed

    out, state = tmp_path / "dask", {}
    killer = threading.Thread(target=_kill_when_busy, args=(cluster, client, out, state))
    killer.start()
    try:
        result = golden.run(LLAMA, inputs, out, client=client, shard_size=2)
    finally:
        killer.join()
    assert "timeout" not in state, "no worker was busy with >= 4 files written within 60 s"
    assert state["files_at_kill"] < N, "the job finished before the worker was killed"
    assert state["victim"] not in client.scheduler_info()["workers"]
    retried = [e for e in cluster.scheduler.transition_log
               if str(e[0]).startswith("reflrp-golden") and e[1] == "processing" and e[2] != "memory"]
    assert retried, "no shard was taken off the killed worker and rerun"

    # every file, complete, the serial run's bytes; nothing lost, nothing duplicated, no temp file left
    assert _golden_files(out) == _golden_files(tmp_path / "serial")
    assert not list(out.glob(".*.part")) and not result.failed
    done = result.written + result.skipped
    assert len(done) == N and len(set(done)) == N

    table = pq.read_table(out / "index.parquet")
    frame = pd.read_parquet(out / "index.parquet")
    assert table.num_rows == N and list(frame["file"]) == sorted(_golden_files(out))
    assert frame["file"].is_unique and frame["fingerprint"].is_unique and frame["ok"].all()
    assert frame["error"].isna().all() and (frame["total_target"] != 0).all()
    assert table.equals(pq.read_table(tmp_path / "serial" / "index.parquet"))
    _, meta = golden.read_golden(out / frame["file"][5])
    assert frame["total_at_wrt"][5] == meta["conservation"]["at_wrt"]

    # a rerun writes nothing and leaves every file as it was
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.golden.npz")}
    again = golden.run(LLAMA, inputs, out, client=client)
    assert not again.written and len(again.skipped) == N
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.golden.npz")} == before


def test_stale_file_on_dask_names_the_change(tmp_path, client):
    inputs = _inputs_dir(tmp_path / "in", 4)
    golden.run(LLAMA, inputs, tmp_path / "g", client=client)
    with pytest.raises(golden.StaleGoldenError, match="preset: 'attnlrp' -> 'cp-lrp'"):
        golden.run(LLAMA, inputs, tmp_path / "g", client=client, preset="cp-lrp")
    model = reflrp.load(LLAMA.read_bytes())  # no path: workers could not load it
    with pytest.raises(reflrp.ReflrpError, match="needs the model as a file"):
        golden.run(model, inputs, tmp_path / "h", client=client)


def test_cli_on_a_scheduler_and_on_local_workers(tmp_path, cluster, capsys):
    inputs = _inputs_dir(tmp_path / "in", 6)
    golden.run(LLAMA, inputs, tmp_path / "serial")
    assert main(["golden", str(LLAMA), "--inputs", str(inputs), "--out", str(tmp_path / "s"),
                 "--scheduler", cluster.scheduler_address]) == 0
    assert main(["golden", str(LLAMA), "--inputs", str(inputs), "--out", str(tmp_path / "w"), "--workers", "1",
                 "--shard-size", "4"]) == 0
    assert "index: " in capsys.readouterr().out
    for out in ("s", "w"):
        assert _golden_files(tmp_path / out) == _golden_files(tmp_path / "serial")
        assert len(pd.read_parquet(tmp_path / out / "index.parquet")) == 6


def test_workers_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    inputs = _inputs_dir(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert main(["golden", str(LLAMA), "--inputs", str(inputs), "--out", str(tmp_path / "g"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'reflrp[scale]'" in err and err.count("\n") == 1
    assert main(["golden", str(LLAMA), "--inputs", str(inputs), "--out", str(tmp_path / "g")]) == 0  # serial


def _one_file_per_row(path, arrays: dict, rows: int):
    """Each row as its own .npz (batch axis 1): the independent way to make a row's golden file."""
    path.mkdir()
    for i in range(rows):
        np.savez(path / f"r{i:03d}.npz", **{k: v[i:i + 1] for k, v in arrays.items()})
    return path


def _same_contents(a, b):
    assert len(a) == len(b) and all(x == y for x, y in zip(a.values(), b.values()))


def test_per_row_batched_npz(tmp_path, client):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 32)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", inputs_embeds=x, labels=np.arange(3))  # other arrays may differ in length
    result = golden.run(LLAMA, tmp_path / "batch.npz", tmp_path / "rows", per_row=True, index=True)
    assert [p.name for p in result.written] == [f"batch.{i:06d}.golden.npz" for i in range(5)]
    golden.run(LLAMA, _one_file_per_row(tmp_path / "single", {"inputs_embeds": x}, 5), tmp_path / "ref")
    _same_contents(_golden_files(tmp_path / "rows"), _golden_files(tmp_path / "ref"))
    golden.run(LLAMA, tmp_path / "batch.npz", tmp_path / "rows_dask", per_row=True, client=client)
    assert _golden_files(tmp_path / "rows_dask") == _golden_files(tmp_path / "rows")
    assert list(pd.read_parquet(tmp_path / "rows" / "index.parquet")["input"]) == [f"batch.npz[{i}]" for i in range(5)]
    assert main(["golden", str(LLAMA), "--inputs", str(tmp_path / "batch.npz"), "--per-row", "--index",
                 "--out", str(tmp_path / "rows_cli")]) == 0
    assert _golden_files(tmp_path / "rows_cli") == _golden_files(tmp_path / "rows")
    assert (tmp_path / "rows_cli" / "index.parquet").is_file()


def _ragged_ids(rows=6, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60, size=int(n)).tolist() for n in rng.integers(3, 9, size=rows)]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_table_of_token_ids(tmp_path, client, fmt):
    ids = _ragged_ids()
    table = pa.table({"input_ids": ids, "text": [f"sample {i}" for i in range(len(ids))]})  # extra columns ignored
    path = tmp_path / f"tokens.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    golden.run(LLAMA_IDS, path, tmp_path / "t")
    files = _golden_files(tmp_path / "t")
    assert list(files) == [f"tokens.{i:06d}.golden.npz" for i in range(len(ids))]
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, row in enumerate(ids):  # each row at its own length: no padding added
        np.savez(ref / f"r{i}.npz", input_ids=np.asarray([row], np.int64))
    golden.run(LLAMA_IDS, ref, tmp_path / "ref_out")
    _same_contents(files, _golden_files(tmp_path / "ref_out"))
    golden.run(LLAMA_IDS, path, tmp_path / "t_dask", client=client)
    assert _golden_files(tmp_path / "t_dask") == files


def test_table_attention_mask_ones_or_as_given(tmp_path):
    ids = _ragged_ids(3)
    types = [[0] * len(r) for r in ids]
    pq.write_table(pa.table({"input_ids": ids, "token_type_ids": types}), tmp_path / "nomask.parquet")
    golden.run(BERT_IDS, tmp_path / "nomask.parquet", tmp_path / "a")
    for i, row in enumerate(ids):
        _, meta = golden.read_golden(tmp_path / "a" / f"nomask.{i:06d}.golden.npz")
        np.testing.assert_array_equal(meta["arrays"]["input/attention_mask"], np.ones((1, len(row)), np.int64))

    padded = [r + [0] * (8 - len(r)) for r in ids]  # right padding, masked out, kept as given
    mask = [[1] * len(r) + [0] * (8 - len(r)) for r in ids]
    types8 = [[0] * 8 for _ in ids]
    pq.write_table(pa.table({"input_ids": padded, "attention_mask": mask, "token_type_ids": types8}),
                   tmp_path / "padded.parquet")
    golden.run(BERT_IDS, tmp_path / "padded.parquet", tmp_path / "b")
    arrays = {"input_ids": np.asarray(padded), "attention_mask": np.asarray(mask), "token_type_ids": np.asarray(types8)}
    golden.run(BERT_IDS, _one_file_per_row(tmp_path / "single", arrays, 3), tmp_path / "ref")
    _same_contents(_golden_files(tmp_path / "b"), _golden_files(tmp_path / "ref"))


def test_bad_tables(tmp_path):
    pq.write_table(pa.table({"input_ids": [[1, 2, 3]]}), tmp_path / "no_types.parquet")
    with pytest.raises(FeedError, match=r"no column for input\(s\) \['token_type_ids'\]"):
        golden.run(BERT_IDS, tmp_path / "no_types.parquet", tmp_path / "g")
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], None], "x": [0, 1]}), tmp_path / "bad.parquet")
    result = golden.run(LLAMA_IDS, tmp_path / "bad.parquet", tmp_path / "g", index=True)
    assert [p.name for p in result.written] == ["bad.000000.golden.npz"]
    assert "row 1: column 'input_ids' is null" in result.failed["bad.parquet[1]"]
    frame = pd.read_parquet(tmp_path / "g" / "index.parquet")
    assert list(frame["ok"]) == [True, False] and frame["file"].isna().tolist() == [False, True]
    pq.write_table(pa.table({"input_ids": [[1.5, 2.0]]}), tmp_path / "floats.parquet")
    result = golden.run(LLAMA_IDS, tmp_path / "floats.parquet", tmp_path / "g")
    assert "holds float64 values; input input_ids: int64" in result.failed["floats.parquet[0]"]


def test_local_workers_run_without_dask_profiler():
    """--workers N starts workers with Dask's sampling profiler off and slower monitors (they cost a
    compute-bound one-thread task 10-20 % of its wall time); this process's configuration is left as it was."""
    import dask
    before = {k: dask.config.get(k) for k in scale.LOCAL_CLUSTER_CONFIG}
    with scale.client(workers=1) as c:
        seen = {k: set(c.run(dask.config.get, k).values()) for k in scale.LOCAL_CLUSTER_CONFIG}  # a function
        # workers import by name (a test-module function would make them import this module)
    assert seen == {k: {v} for k, v in scale.LOCAL_CLUSTER_CONFIG.items()}
    assert {k: dask.config.get(k) for k in scale.LOCAL_CLUSTER_CONFIG} == before
    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_index_table_equals_pyarrows_own_conversion():
    """The index is built through Arrow's JSON reader (no pandas import); pyarrow's from_pylist is the oracle:
    NaN, infinities, -0.0, subnormals, None, unicode, long and empty targets, no rows at all."""
    from reflrp.golden_index import index_schema, table_of
    schema = index_schema()
    base = {name: None for name in schema.names}
    rows = [base | {"input": "x.npz", "file": "x.golden.npz", "fingerprint": "ab" * 32, "target": [0, 2**62, -1],
                    "total_target": 0.1 + 0.2, "total_at_wrt": float("nan"), "total_absorbed": float("inf"),
                    "total_loss": -0.0, "total_deficit": 5e-324, "ok": True},
            base | {"input": 'ünï 😀 "quoted" \\ \n\x00', "target": [], "total_target": -float("inf"), "ok": False,
                    "error": "row 1: column 'input_ids' is null"},
            base | {"input": "batch.npz[7]", "target": list(range(300)), "total_loss": 1.7976931348623157e308, "ok": True}]
    for some in (rows, rows[:1], []):
        ours, theirs = table_of(some, schema), pa.Table.from_pylist(some, schema=schema)
        assert ours.schema == schema
        floats = [n for n in schema.names if pa.types.is_floating(schema.field(n).type)]
        assert ours.drop_columns(floats).equals(theirs.drop_columns(floats))
        for name in floats:  # bit for bit (equals() calls NaN unequal to itself and -0.0 equal to 0.0)
            bits = [np.array(t.column(name).to_pylist(), dtype=float).tobytes() for t in (ours, theirs)]
            assert bits[0] == bits[1], name


@pytest.mark.parametrize("n, workers", [(64, 2), (1, 2), (5, 2), (7, 3), (1000, 4), (3, 8)])
def test_default_shards_cover_every_sample_once_in_order_and_end_in_singles(n, workers):
    items = list(range(n))
    parts = scale.default_shards(items, workers)
    assert [i for p in parts for i in p] == items
    size = scale.shard_size(n, workers)
    assert all(1 <= len(p) <= size <= 16 for p in parts)
    singles = min(n, workers * size) if size > 1 else n
    assert [len(p) for p in parts[len(parts) - singles:]] == [1] * singles
