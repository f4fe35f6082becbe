"""The one way to run a mode: a mode is data (`ModePlan`), `run_mode` runs any of them.

A mode (segment everything, prompts, text) is a chip plan (`geosam.run.loop.ChipTask` values),
a per-chip mask generator, an assembler and an output table (`geosam.assemble.tables.Table`),
built by the mode once the scene is open. `run_mode` does the rest the same way for every mode
with the same `RunOptions`: the journal (resume), the Dask executor, the object hooks, the run
loop, the table returned in memory or streamed into a file, the failed-chips file and the
`geosam.run.summary.RunSummary`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geosam.assemble.assemblers import Assembler
from geosam.assemble.records import ObjectHook
from geosam.assemble.tables import Table
from geosam.errors import InvalidRasterError
from geosam.read.scene import Scene
from geosam.run.cluster import check_scheduler
from geosam.run.dask import BeforeFactory, executor_or_none
from geosam.run.loop import ChipStep, ChipTask, RunStats, run
from geosam.run.summary import RunSummary
from geosam.segment.base import MaskGenerator

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.config import EngineConfig, ReadConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How a run runs, the same for every mode.

    Attributes:
        journal: A journal file (`geosam.run.journal`): every finished chip is committed to it, and a
            run given the same file replays those chips and runs only the rest (same output).
        scheduler: Run the chips on Dask (`geosam.run.dask`): ``"local"``, a scheduler address or a
            ``distributed.Client``; None runs in this process.
        n_workers: Worker processes of ``scheduler="local"``.
        object_hooks: Per-object attribute hooks, run on each finished object's pixels (their columns
            join the table).
    """

    journal: str | os.PathLike[str] | None = None
    scheduler: Any = None
    n_workers: int | None = None
    object_hooks: tuple[ObjectHook, ...] = ()

    def check(self) -> None:
        """Refuse bad settings before any pixel or model.

        Raises:
            ConfigError: See `geosam.run.cluster.check_scheduler`.
        """
        check_scheduler(self.scheduler, self.n_workers)


@dataclass
class ModePlan:
    """A mode as data: what `run_mode` runs over an open scene.

    Attributes:
        tasks: The chip plan.
        generator: Turns each chip into masks.
        assembler: Turns chip results into finished objects.
        table: Opens the output table, given the folder for temporary files (None: the temporary folder).
        engine: Batching, read-ahead, progress and bad-chip settings.
        settings: What the journal is keyed by besides the scene and the tasks (flat settings).
        journal_generator: The caller's generator, described in the journal key; None when the mode
            built it from ``settings``.
        hooks: The mode's own per-object hooks (after `RunOptions.object_hooks`).
        before: A per-chip step before generation in this process (e.g. the index prefilter).
        worker_before: Builds ``before`` on each Dask worker.
        stats: The run's counts (``before`` counts into it).
        desc: The progress bar's label.
        dtype: The compute dtype the mode's model runs in, when the mode built it.
        details: The mode's own figures for the summary, known before the run.
    """

    tasks: list[ChipTask]
    generator: MaskGenerator
    assembler: Assembler
    table: Callable[[str | None], Table]
    engine: EngineConfig
    settings: Mapping[str, Any]
    journal_generator: MaskGenerator | None = None
    hooks: tuple[ObjectHook, ...] = ()
    before: ChipStep | None = None
    worker_before: BeforeFactory | None = None
    stats: RunStats = field(default_factory=RunStats)
    desc: str = "segment"
    dtype: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


#: builds a mode's plan once its scene is open (every check that needs no model comes first)
PlanBuilder = Callable[[Scene], ModePlan]


@dataclass(frozen=True)
class ModeRun:
    """What `run_mode` gives back.

    Attributes:
        summary: The run statistics.
        frame: The output table, or None when it was written to a file (``summary.output``).
    """

    summary: RunSummary
    frame: gpd.GeoDataFrame | None = None


def run_mode(scene: Any, read: ReadConfig, build: PlanBuilder, options: RunOptions,
             output: str | os.PathLike[str] | None = None, layer: str | None = None) -> ModeRun:
    """Run one mode over one scene.

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        read: How the scene is read.
        build: Builds the mode's plan over the open scene.
        options: Journal, scheduler, workers and object hooks.
        output: Stream the table into this vector file (any format of `geosam.write.vector.write_vector`)
            instead of returning it; finished objects wait in a temporary file beside it.
        layer: The output's layer (GeoPackage only).

    Returns:
        The summary, and the table when no ``output`` was given (with the summary as a dict in
        ``attrs["geosam"]``).

    Raises:
        ConfigError: Bad run options (before any pixel or model).
        ExportError: An output path that cannot be written (before any pixel or model).
    """
    options.check()
    if output is not None:
        from geosam.write.checks import check_output_path

        check_output_path(output)
    t_start = time.perf_counter()
    with ExitStack() as stack:
        if output is not None:  # one run per output: a second one is refused at once
            from geosam.write.lock import output_lock

            stack.enter_context(output_lock(output))
        sc = stack.enter_context(Scene(scene, read))
        plan = build(sc)
        table = stack.enter_context(closing(plan.table(_spill_folder(output))))
        with ExitStack() as run_stack:
            journal = _open_journal(run_stack, options.journal, sc, plan)
            execute = executor_or_none(run_stack, options.scheduler, options.n_workers, sc, plan.engine,
                                       plan.generator, plan.stats, plan.worker_before)
            run(sc, plan.tasks, plan.generator, plan.assembler, plan.engine, hooks=[*options.object_hooks, *plan.hooks],
                before=plan.before, stats=plan.stats, desc=plan.desc, journal=journal, execute=execute, sink=table.add)
        _check_some_chip_read(plan.stats, sc.path)
        frames = table.frames(complete=bool(plan.stats.chips_failed))
        written = None
        frame = None
        if output is not None:
            from geosam.write.vector import write_frames

            written = str(write_frames(frames, output, geometry_types=table.geometry_types, layer=layer))
        else:
            frame = _concat(list(frames))
        details = {**plan.details, **table.details()}  # after the frames: the outline figures are complete
        summary = RunSummary.from_stats(plan.stats, scene=sc.path, objects=table.n_objects,
                                        seconds=time.perf_counter() - t_start, crs_wkt=sc.info.crs_wkt,
                                        output=written, dtype=plan.dtype, details=details)
    if output is not None:
        from geosam.write.failed_chips import write_failed_chips

        write_failed_chips(summary.as_dict(), output)
    _log_summary(summary)
    if frame is not None:
        frame.attrs["geosam"] = summary.as_dict()
    return ModeRun(summary, frame)


def run_frame(scene: Any, read: ReadConfig, build: PlanBuilder, options: RunOptions) -> gpd.GeoDataFrame:
    """`run_mode` without an output: the table (the summary as a dict in ``attrs["geosam"]``).

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        read: How the scene is read.
        build: Builds the mode's plan over the open scene.
        options: Journal, scheduler, workers and object hooks.

    Returns:
        The output table.
    """
    frame = run_mode(scene, read, build, options).frame
    if frame is None:  # run_mode returns the table whenever no output is given
        raise RuntimeError("run_mode gave no table for a run without an output")
    return frame


def _check_some_chip_read(stats: RunStats, path: str) -> None:
    """InvalidRasterError (no output written) when ``skip_bad_chips`` skipped every chip: an empty result
    would look like a scene without objects."""
    failed = stats.chips_failed
    if failed and len(failed) >= stats.chips_total:
        raise InvalidRasterError(
            f"{path}: none of its {stats.chips_total} chips could be read (first: {failed[0].get('error')}); "
            "nothing was written. Check the file (`geosam info --check`) or re-create it"
        )


def _open_journal(stack: ExitStack, path: str | os.PathLike[str] | None, sc: Scene, plan: ModePlan) -> Any:
    """The run's journal (closed with ``stack``), or None."""
    if path is None:
        return None
    from geosam.run.journal import open_journal

    return stack.enter_context(open_journal(path, sc, plan.settings, plan.journal_generator, plan.tasks))


def _spill_folder(output: str | os.PathLike[str] | None) -> str | None:
    """Where an output's objects wait: beside the output when its folder exists, else the temp folder."""
    if output is None:
        return None
    parent = os.path.dirname(os.path.abspath(output))
    return parent if os.path.isdir(parent) and os.access(parent, os.W_OK) else None


def _concat(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    if len(frames) == 1:
        return frames[0]
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _log_summary(s: RunSummary) -> None:
    if s.objects == 0:
        log.warning("%s: no objects found", s.scene)
    log.info("%s: %d objects from %d masks in %d chips (%d skipped as invalid, %d without masks) in %.1f s",
             s.scene, s.objects, s.masks, s.chips_total, s.chips_skipped_invalid, s.chips_empty, s.seconds)


def run_dtype(dtype: str, device: str, journal: str | os.PathLike[str] | None) -> str:
    """The run's compute dtype, decided once, on the client, before any model loads.

    ``"auto"`` becomes a concrete dtype here (`geosam.models.resolve_dtype` on this machine's
    ``device``), and that name travels with the run: in its journal key, to every Dask worker and into
    the run statistics, so workers on other CPUs compute in the same precision. Resuming a journal
    keeps the dtype it recorded when ``auto`` would now pick another.

    Args:
        dtype: The requested dtype (``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"``).
        device: The requested device (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        journal: The run's journal, if any.

    Returns:
        The concrete dtype's name, e.g. ``"float32"``.
    """
    from geosam.models.device import resolve_device, resolve_dtype
    from geosam.run.journal import recorded_dtype

    if dtype != "auto":
        return str(resolve_dtype(dtype, "cpu")).removeprefix("torch.")
    chosen = str(resolve_dtype("auto", resolve_device(device))).removeprefix("torch.")
    recorded = recorded_dtype(journal) if journal is not None else None
    if recorded is not None and recorded != chosen:
        log.warning("journal %s was written with dtype %s; dtype='auto' would pick %s here: keeping %s",
                    journal, recorded, chosen, recorded)
        return recorded
    return chosen


__all__ = ["ModePlan", "ModeRun", "PlanBuilder", "RunOptions", "run_dtype", "run_frame", "run_mode"]
