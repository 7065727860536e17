"""Running reflrp jobs on a Dask cluster (``dask.distributed``): the client for ``--workers N`` (a
LocalCluster of N one-thread worker processes) or ``--scheduler ADDRESS`` (an existing cluster), the model
loaded once per worker, one task per shard, progress. Shared by ``reflrp golden`` and ``reflrp evaluate``.

Dask is an optional extra (``pip install 'reflrp[scale]'``); without it this module still imports and
says what to install. A worker lost mid-task has its task rerun elsewhere by the scheduler (at most
``distributed.scheduler.allowed-failures`` times, 3 by default)."""
from __future__ import annotations

import math
import secrets
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from .errors import ReflrpError
from .memory import job_scope
from .samples import EXTRA

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # without the extra the class still exists; client() says what to install
    WorkerPlugin = object


class ScaleError(ReflrpError):
    """Dask is missing, the cluster cannot be reached, or a worker sees another model than the client."""


def distributed():
    """The ``distributed`` module, or a :class:`ScaleError` naming the extra to install."""
    try:
        import distributed as dd
    except ImportError:
        raise ScaleError(f"running on Dask (--workers / --scheduler) needs the scale extra: {EXTRA}") from None
    return dd


@contextmanager
def client(workers: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: on a new LocalCluster of ``workers`` processes with one thread each (BLAS
    single-threaded through the nanny's environment), or on the cluster at ``scheduler``; None for neither."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ScaleError("give --workers (a cluster on this machine) or --scheduler (an existing one), not both")
    dd = distributed()
    if scheduler is not None:
        try:
            c = dd.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ScaleError(f"cannot reach the Dask scheduler at {scheduler}: {str(exc).splitlines()[0]}") from None
        with c:
            yield c
        return
    if workers < 1:
        raise ScaleError(f"--workers {workers}: give at least 1 worker")
    import dask
    with dask.config.set(LOCAL_CLUSTER_CONFIG), \
            dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            dd.Client(cluster) as c:
        c.run(import_engine)  # part of starting the cluster: the first shard does not pay the imports
        yield c


# The cluster reflrp starts for --workers runs compute-bound tasks on one thread per worker: Dask's sampling
# profiler (a stack walk of every worker thread each 10 ms, holding the GIL) and its 20 ms event-loop tick
# cost such a task 10-14 % of its wall time (an explain took 1.10-1.14x its CPU time in a worker, 1.02x
# with these settings: python tools/bench_scale.py --worker-overhead). A cluster given by --scheduler keeps its own configuration.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def import_engine() -> None:
    """Import what a golden task runs (reflrp's interpreter, rules and golden writer) in this process."""
    from . import explain, golden, model  # noqa: F401


def worker_count(c) -> int:
    return max(1, len(c.scheduler_info().get("workers", {})))


def shard_size(n: int, workers: int) -> int:
    """About 8 shards per worker (a lost worker costs little, the last shards balance), at most 16 items."""
    return max(1, min(16, math.ceil(n / (8 * workers))))


def shards(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def default_shards(items: list, workers: int) -> list[list]:
    """Shards of :func:`shard_size` items, the last ``workers x size`` items one per shard: the workers run out
    of work within about one item of each other, not one shard (tasks run in the order submitted)."""
    size = shard_size(len(items), workers)
    tail = min(len(items), workers * size) if size > 1 else 0
    head = len(items) - tail
    return shards(items[:head], size) + shards(items[head:], 1)


def blas_threads(n: int | None):
    """Limit BLAS / OpenMP threads in this process for the ``with`` block (threadpoolctl, when installed;
    Dask's nanny already starts workers with one thread)."""
    if n is None:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(n)


class ModelOnWorker(WorkerPlugin):
    """Loads the model from its path once per worker process (again on a worker that replaces a lost one)
    and checks that the worker sees the client's model and reflrp version."""

    def __init__(self, path: str, sha256: str | None, version: str):
        self.path, self.sha256, self.version = path, sha256, version
        self.name = f"reflrp-model-{secrets.token_hex(6)}"  # one per job: a shared cluster may run several
        self.model = None
        self.scope = None  # the allocator's job scope on the worker, from setup to teardown

    def setup(self, worker=None):
        from .model import load
        from .version import __version__
        if __version__ != self.version:
            raise ScaleError(f"worker {getattr(worker, 'address', '?')} runs reflrp {__version__}, "
                             f"the client {self.version}")
        model = load(self.path)
        if model.sha256 != self.sha256:
            raise ScaleError(f"worker {getattr(worker, 'address', '?')} reads another model at {self.path} "
                             f"(sha256 {model.sha256} != the client's {self.sha256})")
        self.model = model
        if self.scope is None:  # the worker's tasks of this job reuse each other's memory (reflrp.memory)
            self.scope = ExitStack()
            self.scope.enter_context(job_scope())

    def teardown(self, worker=None):
        if self.scope is not None:
            self.scope.close()
            self.scope = None


def model_source(model) -> str:
    """The absolute path workers load ``model`` from (they need the same file at the same path)."""
    path = Path(model.source)
    if not path.is_file():
        raise ScaleError(f"a run on Dask needs the model as a file workers can load; {model.source!r} is not one "
                         "(pass the path, or reflrp.load(path))")
    return str(path.resolve())


@contextmanager
def model_on_workers(c, model):
    """Register :class:`ModelOnWorker` for ``model`` for the ``with`` block; yields the plugin's name."""
    from .version import __version__
    plugin = ModelOnWorker(model_source(model), model.sha256, __version__)
    c.register_plugin(plugin)
    try:
        yield plugin.name
    finally:
        c.unregister_worker_plugin(plugin.name)


def worker_model(name: str):
    """In a task: the model the plugin ``name`` loaded on this worker."""
    from distributed import get_worker
    plugin = get_worker().plugins.get(name)
    if plugin is None:
        raise ScaleError(f"this worker has no plugin {name!r} (the model was not registered with the cluster)")
    if plugin.model is None:
        plugin.setup(get_worker())
    return plugin.model


def map_shards(c, fn, shard_list: list[list], *args, key: str, progress=None):
    """Run ``fn(shard, *args)`` per shard on the cluster; yields (shard index, result) as shards finish.

    ``progress(done, total, label)`` counts items; ``progress="dask"`` shows Dask's own progress bar (the
    results then come once all are done). Leaving the loop early cancels the shards not yet finished."""
    dd = distributed()
    token = f"{key}-{secrets.token_hex(4)}"  # fresh keys: a shared cluster may still hold an older job's
    futures = [c.submit(fn, shard, *args, key=f"{token}-{i:06d}", pure=False) for i, shard in enumerate(shard_list)]
    index = {f.key: i for i, f in enumerate(futures)}
    total, done = sum(len(s) for s in shard_list), 0
    if callable(progress):
        progress(0, total, "")
    try:
        if progress == "dask":
            dd.progress(futures, notebook=False)
            finished = futures
        else:
            finished = dd.as_completed(futures)
        for f in finished:
            i = index[f.key]
            result = f.result()
            done += len(shard_list[i])
            if callable(progress):
                progress(done, total, f"shard {i + 1}/{len(shard_list)}")
            yield i, result
    finally:
        c.cancel([f for f in futures if not f.done()])


def tqdm_progress():
    """A ``progress(done, total, label)`` callback drawing a tqdm bar on stderr (plain text without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = None

    def progress(done, total, label):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="sample", dynamic_ncols=True)
        bar.update(done - bar.n)
        bar.set_postfix_str(label, refresh=False)
        if done >= total:
            bar.close()
    return progress
