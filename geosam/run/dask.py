"""Scale-out on Dask: chip tasks run on workers, their compact results stream back to the client.

The unit of work is a batch of `geosam.run.loop.ChipTask` values (chip specs: path,
window, transform, CRS) plus a small `WorkerJob` (scene path, read settings, the
client's stretch, the pickled mask generator). Each worker process opens the raster
itself and reads its own windows (pixels never travel from the client), builds the mask
generator once (cached by a hash of its pickled settings; a SAM generator pickles without
its weights and loads them on the worker, on the worker's device), runs the one run loop
(`geosam.run.loop.run`) over its chips and returns their
`geosam.assemble.result.ChipResult` values. The client feeds them to the assembler in
arrival order (the stitcher accepts any order); a journal on the client commits them as they
arrive. A worker that dies has its batches re-run elsewhere by the scheduler.

``dask[distributed]`` is optional (``pip install geosam-scenes[dask]``) and imported only here.
The raster path must be readable by every worker (a shared file system or a GDAL URL).

An xarray DataArray scene travels in the job itself, scattered to the workers once per run
(not once per batch). A dask-backed one is a graph (e.g. ``rioxarray.open_rasterio(path,
chunks=...)``: small), and each worker computes only its own windows, in its own process, so
pixels of other chips never travel. A numpy-backed one is its pixels: it is copied to every
worker once (a warning gives its size); for a scene larger than a worker should hold, give a
lazily loaded DataArray or a file path instead. A mask generator that holds a loaded model
(prompt mode's, or one built from a `geosam.models.SamBundle`) is likewise scattered once
per run, so its weights travel once to each worker (and stay on the device they were loaded on);
a SAM generator built from a model name pickles without weights and loads them on the worker.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from geosam.assemble.result import ChipResult
from geosam.assemble.stitch import StitchedObject
from geosam.read.scene import Scene
from geosam.run.cluster import check_scheduler, connect
from geosam.run.loop import ChipStep, ChipTask, Executor, RunStats, run
from geosam.run.tasks import TaskExecutor, TaskRun
from geosam.tile.grid import ChipSpec

if TYPE_CHECKING:
    from geosam.config import EngineConfig, ReadConfig
    from geosam.segment.base import MaskGenerator

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a picklable factory of the per-chip step before generation (e.g. the index prefilter), built per worker
BeforeFactory = Callable[[Scene, RunStats], "ChipStep | None"]


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs besides its chips (small, picklable; the same for every batch of a run).

    Attributes:
        scene: The raster path, or the DataArray itself.
        scene_key: What the worker's scene cache is keyed by (the path; unique per run for a DataArray).
        read: How the scene is read.
        stretch: The client's scene-wide (low, high) per band, so worker chips equal in-process ones.
        engine: The run's engine settings.
        generator_blob: The pickled mask generator (a SAM generator pickles the dtype resolved on the client).
        generator_key: Its SHA-256 (the worker cache key).
        before: Builds the per-chip step before generation on the worker.
    """

    scene: Any  # the raster path, or the DataArray itself
    scene_key: str  # what the worker's scene cache is keyed by (the path; unique per run for a DataArray)
    read: ReadConfig
    stretch: Any
    engine: EngineConfig
    generator_blob: bytes
    generator_key: str
    before: BeforeFactory | None = None


def make_job(sc: Scene, engine: EngineConfig, generator: MaskGenerator, before: BeforeFactory | None = None) -> WorkerJob:
    """The job of a run over the open scene ``sc``.

    Args:
        sc: The open scene (its source, read settings and stretch travel).
        engine: The run's engine settings (progress off on the workers).
        generator: The mask generator, pickled once.
        before: Builds the per-chip step before generation on each worker.

    Returns:
        The job.
    """
    import uuid

    from geosam.read.dataarray import is_dataarray

    blob = pickle.dumps(generator, protocol=pickle.HIGHEST_PROTOCOL)
    key = f"{sc.path}#{uuid.uuid4().hex}" if is_dataarray(sc.source) or not isinstance(sc.source, str) else sc.path
    return WorkerJob(sc.source, key, sc.read_config, sc.stretch, replace(engine, progress=False), blob,
                     hashlib.sha256(blob).hexdigest(), before)


# -- worker side ----------------------------------------------------------------

_lock = threading.Lock()
_local = threading.local()  # scenes per thread (a rasterio dataset is not thread-safe)
_generators: OrderedDict[str, tuple[Any, threading.Lock]] = OrderedDict()
_MAX_CACHED = 4


def _scene(job: WorkerJob) -> Scene:
    cache: OrderedDict[Any, Scene] = getattr(_local, "scenes", None) or OrderedDict()
    _local.scenes = cache
    key = (job.scene_key, job.read, pickle.dumps(job.stretch))
    sc = cache.get(key)
    if sc is None:
        sc = cache[key] = Scene(job.scene, job.read, stretch=job.stretch)
        while len(cache) > _MAX_CACHED:
            cache.popitem(last=False)[1].close()
    return sc


def _generator(job: WorkerJob) -> tuple[Any, threading.Lock]:
    with _lock:
        hit = _generators.get(job.generator_key)
        if hit is None:
            hit = _generators[job.generator_key] = (pickle.loads(job.generator_blob), threading.Lock())
            while len(_generators) > _MAX_CACHED:
                _generators.popitem(last=False)
        return hit


class _Collect:
    """An assembler that keeps the chip results (the worker's side of the run loop)."""

    def __init__(self) -> None:
        self.results: list[ChipResult] = []

    def add(self, spec: ChipSpec, result: ChipResult, prompt_ids: Sequence[int] = ()) -> None:
        self.results.append(result)

    def pop_finished(self, final: bool = False) -> list[StitchedObject]:
        return []


def run_batch(job: WorkerJob, tasks: Sequence[ChipTask]) -> tuple[list[ChipResult], dict[str, Any]]:
    """Run chip tasks on this worker (the function Dask calls).

    Args:
        job: The run's job.
        tasks: A batch of the run's chip tasks.

    Returns:
        Their results (in task order) and the worker's counts and timings.
    """
    sc = _scene(job)
    generator, gen_lock = _generator(job)
    stats = RunStats()
    before = job.before(sc, stats) if job.before is not None else None
    out = _Collect()
    with gen_lock:
        run(sc, tasks, generator, out, job.engine, before=before, stats=stats)
    return out.results, {"prompts_total": stats.prompts_total,
                         "prompts_skipped_prefilter": stats.prompts_skipped_prefilter,
                         "timings_s": dict(stats.timings_s)}


# -- client side ------------------------------------------------------------------

#: a job whose pickled generator is larger than this is scattered once instead of sent with each batch
SCATTER_BYTES = 1 << 20

def batches(tasks: Sequence[T], n_workers: int, chips_per_task: int | None = None) -> list[list[T]]:
    """Tasks in consecutive batches.

    Args:
        tasks: The chip plan (or any tasks, e.g. `geosam.run.tasks`).
        n_workers: Workers of the cluster.
        chips_per_task: Chips per batch; default about 4 batches per worker (1..16 chips).

    Returns:
        The batches.
    """
    if not tasks:
        return []
    size = chips_per_task or max(1, min(16, -(-len(tasks) // (4 * max(n_workers, 1)))))
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def execute_on(client: Any, job: WorkerJob, stats: RunStats, chips_per_task: int | None = None) -> Executor:
    """An executor for `geosam.run.loop.run` that runs batches of tasks on ``client``'s workers.

    Args:
        client: A ``distributed.Client``.
        job: The run's job.
        stats: The run's counts (the workers' prefilter counts and timings are added).
        chips_per_task: Chips per batch (see `batches`).

    Returns:
        The executor: yields (task, result) in the order results arrive.
    """

    def execute(tasks: Sequence[ChipTask]) -> Iterator[tuple[ChipTask, ChipResult]]:
        job_arg = _scatter_if_large(client, job) if tasks else job
        for batch, (results, worker_stats) in submit_batches(client, run_batch, job_arg, tasks, chips_per_task):
            stats.prompts_total += worker_stats["prompts_total"]
            stats.prompts_skipped_prefilter += worker_stats["prompts_skipped_prefilter"]
            for stage, sec in worker_stats["timings_s"].items():
                stats.add_time(stage, sec)  # summed over workers
            yield from zip(batch, results)

    return execute


def submit_batches(client: Any, work: Callable[[Any, list[T]], Any], job: Any, tasks: Sequence[T],
                   per_batch: int | None = None) -> Iterator[tuple[list[T], Any]]:
    """Run ``work(job, batch)`` for consecutive batches of ``tasks`` on ``client``'s workers.

    The Dask side of every executor of `geosam.run.tasks.run_tasks` (chip tasks here, monitoring's in
    `dask_task_executor`).

    Args:
        client: A ``distributed.Client``.
        work: A module-level function.
        job: Its first argument (a value or a scattered future).
        tasks: The tasks.
        per_batch: Tasks per batch (see `batches`).

    Yields:
        (batch, what ``work`` returned for it), in the order batches finish.
    """
    if not tasks:
        return
    from distributed import as_completed

    n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
    parts = batches(tasks, n_workers, per_batch)
    futures = {client.submit(work, job, b, pure=False): b for b in parts}
    log.info("dask: %d tasks in %d batches on %d workers", len(tasks), len(parts), n_workers)
    for fut in as_completed(futures):
        out = fut.result()
        batch = futures.pop(fut)
        fut.release()
        yield batch, out


def dask_task_executor(client: Any, spec: TaskRun[T], tasks_per_batch: int | None = None) -> TaskExecutor[T]:
    """An executor of `geosam.run.tasks.run_tasks` that runs ``spec.work`` on ``client``'s workers.

    Args:
        client: A ``distributed.Client`` (`geosam.run.cluster.connect`).
        spec: The work and its job (scattered to the workers once).
        tasks_per_batch: Tasks per Dask task (default: `batches`' choice).

    Returns:
        The executor: yields (task, payload) in the order batches finish.
    """

    scattered: list[Any] = []  # the job's future, scattered on the first call with tasks

    def execute(tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        if tasks and not scattered:
            scattered.append(client.scatter(spec.job, broadcast=True, hash=False))
        job = scattered[0] if scattered else spec.job
        for batch, payloads in submit_batches(client, spec.work, job, tasks, tasks_per_batch):
            yield from zip(batch, payloads)

    return execute


def _scatter_if_large(client: Any, job: WorkerJob) -> Any:
    """The job as a future scattered to every worker once when it carries a DataArray or a large
    generator (e.g. prompt mode's, holding its loaded model); else the job itself (sent with each batch)."""
    from geosam.read.dataarray import is_dask_backed, is_dataarray

    if not is_dataarray(job.scene):
        return client.scatter(job, broadcast=True, hash=False) if len(job.generator_blob) > SCATTER_BYTES else job
    if not is_dask_backed(job.scene):
        log.warning("%s: a numpy-backed DataArray (%.0f MiB) is copied to every Dask worker; for large scenes "
                    "give a dask-backed (lazily loaded) DataArray or a file path", getattr(job.scene, "name", None),
                    job.scene.nbytes / 2**20)
    return client.scatter(job, broadcast=True, hash=False)


def dask_executor(stack: ExitStack, scheduler: Any, n_workers: int | None, sc: Scene, engine: EngineConfig,
                  generator: MaskGenerator, before: BeforeFactory | None, stats: RunStats) -> Executor:
    """Connect to ``scheduler`` and return the run's executor.

    Args:
        stack: Closes a client created here.
        scheduler: See `connect`.
        n_workers: See `connect`.
        sc: The open scene.
        engine: The run's engine settings.
        generator: The mask generator.
        before: Builds the per-chip step before generation on each worker.
        stats: The run's counts.

    Returns:
        The executor.
    """
    client = connect(stack, scheduler, n_workers)
    return execute_on(client, make_job(sc, engine, generator, before), stats)


def executor_or_none(stack: ExitStack, scheduler: Any, n_workers: int | None, sc: Scene, engine: EngineConfig,
                     generator: MaskGenerator, stats: RunStats, before: BeforeFactory | None = None) -> Executor | None:
    """The run's Dask executor when ``scheduler`` is given, else None (run in-process).

    Args:
        stack: Closes the client (and a local cluster) created here.
        scheduler: See `connect`; None runs in-process.
        n_workers: Worker processes of a local cluster.
        sc: The open scene.
        engine: The run's engine settings.
        generator: The mask generator, pickled to the workers.
        stats: The run's counts (workers' counts and timings are added to it).
        before: Builds the per-chip step before generation on each worker (e.g. the index prefilter).

    Returns:
        The executor, or None.

    Raises:
        ConfigError: See `check_scheduler`.
    """
    check_scheduler(scheduler, n_workers)
    if scheduler is None:
        return None
    return dask_executor(stack, scheduler, n_workers, sc, engine, generator, before, stats)


__all__ = [
    "WorkerJob",
    "batches",
    "dask_executor",
    "dask_task_executor",
    "execute_on",
    "executor_or_none",
    "make_job",
    "run_batch",
    "submit_batches",
]
