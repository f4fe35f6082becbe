"""Tasks with any payload through the run machinery: journal replay, in-process or Dask execution, a sink.

`run_tasks` is the one run loop's skeleton -- replay from the journal, execute (in this process or on
Dask), commit, deliver -- for every kind of task: the modes' chip tasks (`geosam.run.loop.run`, whose
payload is a `geosam.assemble.result.ChipResult` for an assembler, computed by its chip reader and mask
generator) and monitoring's (`geosam.monitor.measure`, per-object statistics of one chip of one date). A
task is any small picklable value; the journal (`geosam.run.journal.Journal`: one file format and identity
check) holds its payload under its key (`Keyed`); an executor computes tasks: `in_process` or
`geosam.run.dask.dask_task_executor` (``work(job, tasks)`` computes the payloads of a batch, on the client or on a Dask
worker, where ``job`` is scattered once) or the segmentation loop's own; every payload is committed to the
journal before the ``sink`` gets it, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

#: computes the payloads of a batch of tasks (in task order); must be a module-level function for Dask
Work = Callable[[Any, Sequence[Any]], list[Any]]

#: runs tasks elsewhere: yields (task, payload) in any order
TaskExecutor = Callable[[Sequence[T]], Iterable[tuple[T, Any]]]


class TaskJournal(Protocol[T_contra]):
    """Where finished tasks' payloads are committed and replayed from.

    `geosam.run.journal.Journal` is one for chip tasks (its ``get`` / ``put``); `keyed` makes one of it for
    any task with a key.
    """

    def get(self, task: T_contra) -> Any:
        """The committed payload of ``task``, or None."""
        ...

    def put(self, task: T_contra, payload: Any) -> None:
        """Commit the payload of ``task``."""
        ...


class PayloadJournal(Protocol):
    """A journal that stores any payload under a string key (`geosam.run.journal.Journal`)."""

    def get_key(self, key: str) -> Any:
        """The committed payload under ``key``, or None."""
        ...

    def put_key(self, key: str, payload: Any) -> None:
        """Commit ``payload`` under ``key``."""
        ...


@dataclass(frozen=True)
class Keyed(Generic[T]):
    """A `TaskJournal` over a `PayloadJournal`: each task's payload under ``key(task)``."""

    journal: PayloadJournal
    key: Callable[[T], str]

    def get(self, task: T) -> Any:
        """The committed payload of ``task``, or None."""
        return self.journal.get_key(self.key(task))

    def put(self, task: T, payload: Any) -> None:
        """Commit the payload of ``task``."""
        self.journal.put_key(self.key(task), payload)


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
    tasks: Iterable[T],
    execute: TaskExecutor[T],
    sink: Callable[[T, Any], None],
    *,
    journal: TaskJournal[T] | None = None,
    counts: TaskCounts | None = None,
    chunk_size: int | None = None,
    unit: str = "tasks",
) -> TaskCounts:
    """Run every task: replay the journal's payloads, compute the rest, commit each, hand each to ``sink``.

    This is the one run loop's skeleton: segmentation (`geosam.run.loop.run`, chip results for an
    assembler) and monitoring (`geosam.monitor.measure`, per-object statistics) both go through it; they
    differ in their executor (what a task computes, in this process or on Dask) and their sink.

    Args:
        tasks: The plan (may be a lazy iterable with ``chunk_size``).
        execute: Computes tasks: yields (task, payload) in any order (`in_process`, `geosam.run.dask.dask_task_executor`, or
            the segmentation loop's chip reader and generator).
        sink: Gets (task, payload) for every task (of a chunk: replayed ones first).
        journal: Payloads it holds are replayed, not computed; every new payload is committed to it before
            ``sink`` gets it, so a killed run resumes where it stopped.
        counts: The counts to add to (default: new ones).
        chunk_size: Take the plan this many tasks at a time (replay, then compute), so a lazy plan is never
            whole in memory; None: all at once.
        unit: What a task is called in the log (e.g. "chips").

    Returns:
        The counts.
    """
    counts = counts or TaskCounts()
    it = iter(tasks)
    while chunk := list(islice(it, chunk_size)) if chunk_size else list(it):
        counts.total += len(chunk)
        todo: list[T] = []
        for task in chunk:
            payload = journal.get(task) if journal is not None else None
            if payload is None:
                todo.append(task)
                continue
            counts.replayed += 1
            sink(task, payload)
        if len(todo) < len(chunk):
            log.info("journal: %d of %d %s replayed, %d to run", len(chunk) - len(todo), len(chunk), unit, len(todo))
        for task, payload in execute(todo):
            if journal is not None:
                journal.put(task, payload)
            counts.computed += 1
            sink(task, payload)
        if not chunk_size:
            break
    return counts


def in_process(spec: TaskRun[T]) -> TaskExecutor[T]:
    """An executor that computes tasks in this process, ``spec.batch_size`` per call of ``spec.work``.

    Args:
        spec: The work and its job.

    Returns:
        The executor: yields (task, payload) in task order.
    """

    def execute(tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        size = max(spec.batch_size, 1)
        for i in range(0, len(tasks), size):
            batch = tasks[i:i + size]
            yield from zip(batch, spec.work(spec.job, batch))

    return execute


__all__ = ["Keyed", "PayloadJournal", "TaskCounts", "TaskExecutor", "TaskJournal", "TaskRun", "Work", "in_process",
           "run_tasks"]
