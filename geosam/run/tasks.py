"""Tasks with any payload through the run machinery: journal replay, in-process or Dask execution, a sink.

`geosam.run.loop.run` drives chip tasks whose result is a `geosam.assemble.result.ChipResult` (masks for
an assembler). Work whose result is something else -- monitoring's per-object statistics of one chip of one
date (`geosam.monitor.chips`) -- runs here on the same pieces: the journal (`geosam.run.journal.Journal`,
its file format and identity check, through ``get_key`` / ``put_key``), the Dask client helpers
(`geosam.run.cluster.connect`) and the batching of `geosam.run.dask.batches`. A task is any small picklable
value; ``key(task)`` names it in the journal; ``work(job, tasks)`` computes the payloads of a batch (on the
client, or on a Dask worker, where ``job`` is scattered once); every payload is committed to the journal
before the ``sink`` gets it, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: computes the payloads of a batch of tasks (in task order); must be a module-level function for Dask
Work = Callable[[Any, Sequence[Any]], list[Any]]

#: runs tasks elsewhere: yields (task, payload) in any order
TaskExecutor = Callable[[Sequence[T]], Iterable[tuple[T, Any]]]


class PayloadJournal(Protocol):
    """Where payloads are committed and replayed from (`geosam.run.journal.Journal`)."""

    def get_key(self, key: str) -> Any:
        """The committed payload under ``key``, or None."""
        ...

    def put_key(self, key: str, payload: Any) -> None:
        """Commit ``payload`` under ``key``."""
        ...


@dataclass
class TaskCounts:
    """What `run_tasks` did: tasks in the plan, replayed from the journal, computed now."""

    total: int = 0
    replayed: int = 0
    computed: int = 0


@dataclass(frozen=True)
class TaskRun(Generic[T]):
    """How to run one kind of task.

    Attributes:
        work: Computes a batch's payloads (module level, picklable).
        job: What every batch needs besides its tasks (small, picklable; scattered once on Dask).
        key: A task's journal key (unique within the run).
        batch_size: Tasks per in-process call of ``work`` (Dask: see `geosam.run.dask.batches`).
    """

    work: Work
    job: Any
    key: Callable[[T], str]
    batch_size: int = 1


def run_tasks(
    tasks: Sequence[T],
    spec: TaskRun[T],
    sink: Callable[[T, Any], None],
    *,
    journal: PayloadJournal | None = None,
    execute: TaskExecutor[T] | None = None,
    counts: TaskCounts | None = None,
) -> TaskCounts:
    """Run every task: replay the journal's payloads, compute the rest, hand each payload to ``sink``.

    Args:
        tasks: The plan.
        spec: The work, its job and the task keys.
        sink: Gets (task, payload) for every task, in any order (replayed ones first).
        journal: Payloads it holds are replayed, not computed; every new payload is committed before
            ``sink`` gets it.
        execute: Computes the remaining tasks elsewhere (e.g. `dask_task_executor`); None: in this process.
        counts: The counts to add to (default: new ones).

    Returns:
        The counts.
    """
    counts = counts or TaskCounts()
    counts.total += len(tasks)
    todo: list[T] = []
    for task in tasks:
        payload = journal.get_key(spec.key(task)) if journal is not None else None
        if payload is None:
            todo.append(task)
            continue
        counts.replayed += 1
        sink(task, payload)
    if counts.replayed:
        log.info("journal: %d of %d tasks replayed, %d to run", counts.replayed, counts.total, len(todo))
    done = execute(todo) if execute is not None else _in_process(todo, spec)
    for task, payload in done:
        if journal is not None:
            journal.put_key(spec.key(task), payload)
        counts.computed += 1
        sink(task, payload)
    return counts


def _in_process(tasks: Sequence[T], spec: TaskRun[T]) -> Iterator[tuple[T, Any]]:
    size = max(spec.batch_size, 1)
    for i in range(0, len(tasks), size):
        batch = tasks[i:i + size]
        yield from zip(batch, spec.work(spec.job, batch))


def dask_task_executor(client: Any, spec: TaskRun[T], tasks_per_batch: int | None = None) -> TaskExecutor[T]:
    """An executor that runs batches of tasks on ``client``'s workers (the job scattered to them once).

    Args:
        client: A ``distributed.Client`` (`geosam.run.cluster.connect`).
        spec: The work and its job.
        tasks_per_batch: Tasks per Dask task (default: `geosam.run.dask.batches`' choice).

    Returns:
        The executor: yields (task, payload) in the order batches finish.
    """
    from geosam.run.dask import batches

    def execute(tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        if not tasks:
            return
        from distributed import as_completed

        n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
        parts = batches(tasks, n_workers, tasks_per_batch)
        job = client.scatter(spec.job, broadcast=True, hash=False)
        futures = {client.submit(spec.work, job, b, pure=False): b for b in parts}
        log.info("dask: %d tasks in %d batches on %d workers", len(tasks), len(parts), n_workers)
        for fut in as_completed(futures):
            payloads = fut.result()
            batch = futures.pop(fut)
            fut.release()
            yield from zip(batch, payloads)

    return execute


__all__ = ["PayloadJournal", "TaskCounts", "TaskExecutor", "TaskRun", "Work", "dask_task_executor", "run_tasks"]
