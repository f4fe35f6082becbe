"""The one run loop: chip tasks -> masks per chip -> compact results -> assembled objects.

Every mode is a chip plan, a per-chip mask generator and an assembler
(`geosam.assemble.assemblers`); reading, the per-chip result
(`geosam.assemble.result.ChipResult`), per-object attributes and the records of
the output table are this loop's, written once. `geosam.modes.runner.run_mode` calls it for
every mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geosam.assemble.assemblers import Assembler
from geosam.assemble.records import ObjectHook, Record, finish
from geosam.assemble.result import FAILED, INVALID, PREFILTERED, ChipResult
from geosam.read.prefetch import iter_chips
from geosam.read.scene import Chip, Scene
from geosam.run.plan import ESTIMATE_AFTER_CHIPS, with_estimate
from geosam.run.tasks import run_tasks
from geosam.segment.base import ChipMasks, MaskGenerator
from geosam.tile.grid import ChipSpec
from geosam.write.failed_chips import failed_chip_entry

if TYPE_CHECKING:
    from geosam.config import EngineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipTask:
    """One unit of work: a chip to read and, in prompt mode, the prompts it answers.

    Small and picklable (a Dask task, a journal key).

    Attributes:
        spec: The chip (window, core, transform, CRS).
        prompts: The prompts it answers (scene pixel coordinates, `geosam.prompts.parse.Prompt`).
        prompt_ids: The run's indices of ``prompts``.
    """

    spec: ChipSpec
    prompts: tuple[Any, ...] = ()
    prompt_ids: tuple[int, ...] = ()


@dataclass
class RunStats:
    """What a run does, counted while it runs.

    The counts mean what the fields of the same names in `geosam.run.summary.RunSummary` mean; the
    runner freezes them into one when the run ends.
    """

    chips_total: int = 0
    chips_skipped_invalid: int = 0
    chips_failed: list[dict[str, Any]] = field(default_factory=list)  # see geosam.write.failed_chips
    chips_replayed: int = 0  # results taken from a journal (not generated again)
    chips_empty: int = 0
    chips_skipped_prefilter: int = 0
    prompts_total: int = 0  # grid prompts on valid pixels (counted when the prefilter runs)
    prompts_skipped_prefilter: int = 0
    masks: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to a stage's time.

        Args:
            stage: The stage, e.g. ``"generate"``.
            seconds: Time spent (s).
        """
        self.timings_s[stage] = self.timings_s.get(stage, 0.0) + seconds

    def count(self, result: ChipResult, transform: Any = None) -> None:
        """Count one chip result.

        Args:
            result: The chip's result.
            transform: The scene's transform (pixel -> map), for a failed chip's bounds; None: no bounds.
        """
        if result.status == INVALID:
            self.chips_skipped_invalid += 1
        elif result.status == PREFILTERED:
            self.chips_skipped_prefilter += 1
        elif result.status == FAILED:
            self.chips_failed.append(failed_chip_entry(result, transform))
        elif len(result) == 0:
            self.chips_empty += 1
        self.masks += len(result)


class ChipJournal(Protocol):
    """Where finished chip results are committed and replayed from (`geosam.run.journal.Journal`)."""

    def get(self, task: ChipTask) -> ChipResult | None:
        """The committed result of ``task``, or None."""
        ...

    def put(self, task: ChipTask, result: ChipResult) -> None:
        """Commit the result of ``task``."""
        ...


#: runs chip tasks elsewhere (e.g. on Dask workers): yields (task, result) in any order
Executor = Callable[[Sequence[ChipTask]], Iterable[tuple[ChipTask, ChipResult]]]


#: a per-chip step before generation; returns a result to skip the chip (e.g. the prefilter), else None
ChipStep = Callable[[Chip], "ChipResult | None"]


def clean_masks(masks: ChipMasks, valid: np.ndarray) -> ChipMasks:
    """Cut every mask to the chip's valid pixels (in place); masks left empty are dropped later.

    Args:
        masks: The chip's masks (chip frame).
        valid: The chip's valid pixels (H, W).

    Returns:
        ``masks``, cut.

    Raises:
        ValueError: The masks' shape is not the chip's.
    """
    if len(masks) == 0 or valid.all():
        return masks
    if masks.masks.shape[1:] != valid.shape:
        raise ValueError(f"mask generator returned masks of shape {masks.masks.shape[1:]}, chip is {valid.shape}")
    np.logical_and(masks.masks, valid[None], out=masks.masks)
    return masks


def _progress(iterable: Any, total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from geosam.progress import tqdm_auto

    return tqdm_auto()(iterable, total=total, desc=desc, unit="chip", leave=False)


class _RunLoop:
    """The mode-specific part of one `run`: reading and generating chips, and where results go.

    ``compute`` is the in-process executor of `geosam.run.tasks.run_tasks` (chips read ahead, triaged,
    generated in batches); ``deliver`` is its sink: it counts a result and hands it to the assembler;
    finished objects become `geosam.assemble.records.Record` values (map coordinates) in ``records``.
    Replaying and committing to the journal are `geosam.run.tasks.run_tasks`' own.
    """

    def __init__(
        self,
        sc: Scene,
        generator: MaskGenerator,
        assembler: Assembler,
        engine: EngineConfig,
        hooks: Sequence[ObjectHook],
        stats: RunStats,
        sink: Callable[[list[Record]], None] | None = None,
        before: ChipStep | None = None,
    ) -> None:
        self.sc = sc
        self.generator = generator
        self.assembler = assembler
        self.hooks = hooks
        self.stats = stats
        self.before = before
        self.engine = engine
        self.read_times: dict[str, float] = {}
        self.batch = max(engine.chips_per_batch, 1)
        self.records: list[Record] = []
        self.sink = sink if sink is not None else self.records.extend
        self.pending: list[tuple[ChipTask, Chip]] = []
        self.gen_t0 = dict(generator.timings_s)

    def deliver(self, task: ChipTask, result: ChipResult) -> None:
        """Count and assemble one chip's result (replayed or computed).

        Args:
            task: The chip task.
            result: Its result.
        """
        self.stats.count(result, self.sc.info.transform)
        t0 = time.perf_counter()
        self.assembler.add(task.spec, result, task.prompt_ids)
        self._collect()
        self.stats.add_time("stitch", time.perf_counter() - t0)

    def _collect(self, final: bool = False) -> None:
        finished = self.assembler.pop_finished(final=final)
        if finished:
            self.sink(finish(finished, self.hooks, self.sc, self.sc.info.transform))

    def compute(self, tasks: Sequence[ChipTask], desc: str = "segment") -> Iterator[tuple[ChipTask, ChipResult]]:
        """Read the tasks' chips (read ahead), triage them, generate masks in batches: (task, result) in order.

        Args:
            tasks: The chip tasks to compute.
            desc: The progress bar's label.

        Yields:
            Each task and its result, in task order.
        """
        engine = self.engine
        by_spec = {t.spec: t for t in tasks}
        chips = iter_chips(self.sc, [t.spec for t in tasks], engine.prefetch_chips, self.read_times,
                           engine.skip_bad_chips)
        timed = with_estimate(chips, len(tasks), after=max(ESTIMATE_AFTER_CHIPS, engine.chips_per_batch))
        for spec, chip in _progress(timed, len(tasks), engine.progress and bool(tasks), desc):
            task = by_spec[spec]
            outcome = _triage(task, chip, self.before)
            if not isinstance(outcome, Chip):
                yield task, outcome
                continue
            self.pending.append((task, outcome))
            if len(self.pending) >= self.batch:
                yield from self._generate()
        yield from self._generate()

    def _generate(self) -> Iterator[tuple[ChipTask, ChipResult]]:
        """Generate masks for the waiting chips (one batch): their results."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        t0 = time.perf_counter()
        chips = [c for _, c in pending]
        outs = self.generator.generate_batch(chips) if len(chips) > 1 else [self.generator.generate(chips[0])]
        self.stats.add_time("generate", time.perf_counter() - t0)
        for (task, chip), masks in zip(pending, outs):
            masks = clean_masks(masks, chip.valid)
            yield task, ChipResult.from_masks(task.spec.chip_id, task.spec.window, masks)

    def close(self, read_times: dict[str, float]) -> None:
        """Assemble what is left and file the stage timings into ``stats``.

        Args:
            read_times: Seconds per reading stage (from the reader).
        """
        stats = self.stats
        for stage, sec in read_times.items():
            stats.add_time(stage, sec)
        for stage, sec in self.generator.timings_s.items():
            stats.add_time(stage, sec - self.gen_t0.get(stage, 0.0))
        t0 = time.perf_counter()
        self._collect(final=True)
        stats.add_time("stitch", time.perf_counter() - t0)
        poly = float(getattr(self.assembler, "polygonise_s", 0.0))
        stats.timings_s["stitch"] = stats.timings_s.get("stitch", 0.0) - poly  # reported on its own
        stats.add_time("polygonise", poly)


def _triage(task: ChipTask, chip: Chip | Exception, before: ChipStep | None) -> ChipResult | Chip:
    """The result of a chip that is not generated, else the chip to generate (carrying its prompts).

    A chip is not generated when it could not be read (``skip_bad_chips``: ``chip`` is
    the error), has no valid pixel, or ``before`` returns a result for it (e.g. the prefilter).
    """
    spec = task.spec
    if not isinstance(chip, Chip):
        log.warning("skipping chip %s: %s", spec.chip_id, chip)
        return ChipResult.empty(spec.chip_id, spec.window, FAILED, error=str(chip))
    if not chip.valid.any():
        return ChipResult.empty(spec.chip_id, spec.window, INVALID,
                                prompt_status=("invalid",) * len(task.prompts) or None)
    chip.prompts = task.prompts
    skipped = before(chip) if before is not None else None
    return chip if skipped is None else skipped


def run(
    sc: Scene,
    tasks: Sequence[ChipTask],
    generator: MaskGenerator,
    assembler: Assembler,
    engine: EngineConfig,
    *,
    hooks: Sequence[ObjectHook] = (),
    before: ChipStep | None = None,
    stats: RunStats | None = None,
    desc: str = "segment",
    journal: ChipJournal | None = None,
    execute: Executor | None = None,
    sink: Callable[[list[Record]], None] | None = None,
) -> tuple[list[Record], RunStats]:
    """Run every task: read its chip, generate masks, hand the compact result to ``assembler``.

    Finished objects get the ``hooks``' attributes while their pixels are at hand and become
    `geosam.assemble.records.Record` values (map coordinates).

    Args:
        sc: The open scene.
        tasks: The chip plan.
        generator: Turns chips into masks.
        assembler: Turns chip results into finished objects.
        engine: Batching, read-ahead, progress and bad-chip settings.
        hooks: Per-object attribute hooks.
        before: A per-chip step before generation (e.g. the prefilter); a result it returns skips the chip.
        stats: The counts to add to (default: new ones).
        desc: The progress bar's label.
        journal: Results it holds are replayed (not generated again); every new result is committed to it
            before it is assembled (`geosam.run.tasks.run_tasks`, the loop monitoring runs through too).
        execute: Runs the remaining tasks elsewhere (e.g. `geosam.run.dask`) instead of in this process;
            results arrive in any order.
        sink: Receives the records as objects finish (e.g. a table's ``add``, so they need not stay in
            memory); the returned list is then empty.

    Returns:
        The records (unless a ``sink`` took them) and the counts.
    """
    stats = stats or RunStats()
    stats.chips_total += len(tasks)
    loop = _RunLoop(sc, generator, assembler, engine, hooks, stats, sink, before)
    if execute is not None:
        def compute(todo: Sequence[ChipTask]) -> Iterable[tuple[ChipTask, ChipResult]]:
            return _progress(with_estimate(execute(todo), len(todo)), len(todo), engine.progress, desc)
    else:
        def compute(todo: Sequence[ChipTask]) -> Iterable[tuple[ChipTask, ChipResult]]:
            return loop.compute(todo, desc)
    counts = run_tasks(tasks, compute, loop.deliver, journal=journal, unit="chips")
    stats.chips_replayed += counts.replayed
    loop.close(loop.read_times)
    return loop.records, stats


__all__ = ["ChipJournal", "ChipStep", "ChipTask", "Executor", "RunStats", "clean_masks", "run"]
