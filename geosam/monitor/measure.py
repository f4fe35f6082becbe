"""Every date's per-object statistics as chip tasks through the run machinery, into a `StatsStore`.

Per date (oldest first): plan the date's chip tasks (`geosam.monitor.chips.plan_date`), replay those the
journal holds, compute the rest in this process or on Dask workers (`geosam.run.tasks.run_tasks`), and put
each payload in the store as it arrives. Only one date's plan is in memory at a time; the results are on
disk. The journal (`geosam.run.journal.Journal`: the same SQLite format and identity check as a segmentation
run) records the dates' scenes (`geosam.run.journal.scene_fingerprint`, date, index bands), a digest of the
objects' geometries and CRS, and the settings that change the statistics (not ``min_valid``, flags, rank or
tracking, applied when the tables are built): opening it for anything else raises a ConfigError naming
what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from geosam.config.monitor import MonitorConfig
from geosam.monitor.chips import DateSource, MonitorJob, MonitorTask, chip_stats, close_readers, plan_date, task_key
from geosam.monitor.dates import DateScene
from geosam.monitor.store import StatsStore
from geosam.monitor.zonal import DateReader, overlapping
from geosam.run.tasks import Keyed, TaskCounts, TaskRun, in_process, run_tasks

log = logging.getLogger(__name__)

#: settings that do not change a task's statistics (applied when the tables are built)
NEUTRAL = frozenset({"min_valid", "loss", "gain", "rank_by", "ascending", "match_iou", "cover_fraction"})

#: tasks per in-process call (and the journal's commit unit stays one task)
BATCH_TASKS = 8


def objects_digest(frame: Any) -> str:
    """SHA-256 of the objects' geometries (WKB, in batches) and CRS: what their statistics depend on."""
    import shapely

    h = hashlib.sha256(str(frame.crs.to_wkt() if frame.crs is not None else None).encode())
    geoms = frame.geometry.values
    for i in range(0, len(frame), 50_000):
        for b in shapely.to_wkb(np.asarray(geoms[i:i + 50_000], dtype=object)).tolist():
            h.update(b"-" if b is None else b)
    return h.hexdigest()


def journal_identity(readers: Sequence[DateReader], scenes: Sequence[DateScene], frames: Sequence[Any],
                     cfg: MonitorConfig) -> dict[str, Any]:
    """What a monitoring journal is valid for: dates' pixels and bands, objects, statistics settings."""
    from geosam.run.journal import scene_fingerprint

    dates = []
    for r, s in zip(readers, scenes):
        roles = r.calc.roles
        dates.append({"date": s.date.isoformat(), "scene": scene_fingerprint(r.scene), "mask_band": r.mask_band,
                      "bands": {k: [b, *roles.scale_offset(k)] for k, b in sorted(r.calc.role_bands.items())}})
    objects: dict[str, Any] = {}
    digests: dict[int, str] = {}
    tracked = len({id(f) for f in frames}) > 1  # each date its own objects
    for k, f in enumerate(frames if tracked else frames[:1]):
        tag = f"date {k + 1} " if tracked else ""
        objects[f"{tag}count"] = len(f)
        objects[f"{tag}crs"] = f.crs.to_string() if f.crs is not None else None
        objects[f"{tag}geometries_sha256"] = digests.setdefault(id(f), objects_digest(f))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NEUTRAL}
    settings["kind"] = "monitor"
    return {"dates": {str(k + 1): d for k, d in enumerate(dates)}, "objects": objects, "settings": settings}


def measure(readers: Sequence[DateReader], scenes: Sequence[DateScene], frames: Sequence[Any], cfg: MonitorConfig,
            *, journal: str | os.PathLike[str] | None = None, scheduler: Any = None, n_workers: int | None = None,
            ) -> tuple[StatsStore, TaskCounts]:
    """Measure every object at every date; the results are in the returned store (close it when done).

    Args:
        readers: The open dates (their scenes are closed here once planned).
        scenes: The dates.
        frames: The objects of each date (the same frame for every date unless tracked).
        cfg: The settings.
        journal: A journal file: finished tasks are replayed from it and new ones committed to it.
        scheduler: None (in this process), ``"local"``, a scheduler address or a ``distributed.Client``.
        n_workers: Worker processes of ``scheduler="local"``.

    Returns:
        The store and the task counts (total, replayed, computed).

    Raises:
        ConfigError: A journal of another run, or bad scheduler settings.
    """
    job = MonitorJob(tuple(DateSource(s.source, r.calc, r.mask_band) for r, s in zip(readers, scenes)), cfg,
                     uuid.uuid4().hex)
    spec: TaskRun[MonitorTask] = TaskRun(chip_stats, job, task_key, BATCH_TASKS)
    store = StatsStore(cfg.indices, cfg.min_valid)
    counts = TaskCounts()
    try:
        with ExitStack() as stack:
            jr = None
            if journal is not None:
                from geosam.run.journal import Journal

                jr = Keyed(stack.enter_context(Journal(journal, journal_identity(readers, scenes, frames, cfg))),
                           task_key)
            execute = in_process(spec)
            if scheduler is not None:
                from geosam.run.cluster import connect
                from geosam.run.dask import dask_task_executor

                execute = dask_task_executor(connect(stack, scheduler, n_workers), spec)
            alone_of: dict[int, np.ndarray] = {}
            for k, (r, f) in enumerate(zip(readers, frames)):
                alone = alone_of.get(id(f))
                if alone is None:  # in the objects' CRS: overlap does not depend on the date
                    alone = alone_of[id(f)] = overlapping(np.asarray(f.geometry.values, dtype=object))
                tasks, outside = plan_date(k, f.geometry, r.scene.info, alone, cfg.chip_size_px)
                r.scene.close()
                store.add_outside(k, outside)
                run_tasks(tasks, execute, lambda t, p: store.add(t.date, p), journal=jr, counts=counts)
                close_readers()  # this date's blocks leave GDAL's cache: memory does not grow with the dates
                log.info("%s (%s): %d objects in %d chip tasks", scenes[k].name, scenes[k].date, len(f), len(tasks))
                del tasks
        store.finish(job.thresholds)
    except BaseException:
        close_readers()
        store.close()
        raise
    return store, counts


__all__ = ["NEUTRAL", "journal_identity", "measure", "objects_digest"]
