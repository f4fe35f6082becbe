"""Every date's per-object statistics as chip tasks through the run machinery, into a `StatsStore`.

First the objects are read once, in batches (`geosam.monitor.objects`: a file is never read whole), and
every date's plan is spilled to the run's on-disk store (`plan`, `geosam.monitor.chips.plan_batch`). Then per
date (oldest first): its chip tasks are read back from the store chip by chip
(`geosam.monitor.chips.tasks_from_plan`), those the journal holds are replayed, the rest computed in this
process or on Dask workers (`geosam.run.tasks.run_tasks`, the loop segmentation runs through too), and each
payload goes to the store as it arrives. Neither the objects nor a date's plan is whole in memory; the
results are on disk. The journal (`geosam.run.journal.Journal`: the same SQLite format and identity check as a segmentation
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
from geosam.monitor.chips import (
    DateSource,
    MonitorJob,
    MonitorTask,
    chip_stats,
    close_readers,
    plan_batch,
    task_key,
    tasks_from_plan,
)
from geosam.monitor.dates import DateScene
from geosam.monitor.objects import Objects
from geosam.monitor.store import StatsStore
from geosam.monitor.zonal import DateReader
from geosam.run.tasks import Keyed, TaskCounts, TaskRun, in_process, run_tasks

log = logging.getLogger(__name__)

#: settings that do not change a task's statistics (applied when the tables are built)
NEUTRAL = frozenset({"min_valid", "loss", "gain", "rank_by", "ascending", "match_iou", "cover_fraction"})

#: tasks per in-process call (and the journal's commit unit stays one task)
BATCH_TASKS = 8

#: tasks taken from the plan at a time (a date's plan is never whole in memory)
TASK_CHUNK = 256


def _new_digest(objects: Objects) -> Any:
    return hashlib.sha256(str(objects.crs.to_wkt() if objects.crs is not None else None).encode())


def objects_digest(frame: Any) -> str:
    """SHA-256 of the objects' geometries (WKB, in batches) and CRS: what their statistics depend on."""
    import shapely

    h = _new_digest(frame)
    geoms = frame.geometry.values
    for i in range(0, len(frame), 50_000):
        for b in shapely.to_wkb(np.asarray(geoms[i:i + 50_000], dtype=object)).tolist():
            h.update(b"-" if b is None else b)
    return h.hexdigest()


def plan(readers: Sequence[DateReader], sources: Sequence[Objects], chip: int, store: StatsStore) -> dict[int, str]:
    """Read each object set once, in batches, spilling every date's plan (and a file's rows) to ``store``.

    Args:
        readers: The open dates (only their grids are used).
        sources: The objects of each date (the same set for every date unless tracked).
        chip: ``chip_size_px``.
        store: The run's store: plan rows, objects outside each date, a file's objects.

    Returns:
        SHA-256 of each object set's geometries and CRS, keyed by ``id`` of the set.
    """
    import shapely

    digests: dict[int, str] = {}
    for src in {id(s): s for s in sources}.values():
        dates = [k for k, s in enumerate(sources) if s is src]
        h = _new_digest(src)
        for start, part in src.batches():
            ids = np.arange(start, start + len(part), dtype=np.int64)
            wkb = shapely.to_wkb(np.asarray(part.geometry.values, dtype=object)).tolist()
            for b in wkb:
                h.update(b"-" if b is None else b)
            if src.spill:
                attrs = part.drop(columns=part.geometry.name)
                store.plan.put_objects(ids, wkb, list(attrs.itertuples(index=False, name=None)))
                src.geom_types |= {str(t) for t in part.geometry.geom_type.dropna().unique()}
            for k in dates:
                rows, outside = plan_batch(ids, part.geometry, readers[k].scene.info, chip)
                store.plan.add(k, rows)
                store.add_outside(k, outside)
        digests[id(src)] = h.hexdigest()
    return digests


def journal_identity(readers: Sequence[DateReader], scenes: Sequence[DateScene], sources: Sequence[Any],
                     cfg: MonitorConfig, digests: dict[int, str] | None = None) -> dict[str, Any]:
    """What a monitoring journal is valid for: dates' pixels and bands, objects, statistics settings.

    Args:
        readers: The open dates.
        scenes: The dates.
        sources: The objects of each date (`geosam.monitor.objects`, or GeoDataFrames).
        cfg: The settings.
        digests: Each object set's geometry digest by ``id`` (`plan`); default: computed (GeoDataFrames).

    Returns:
        The identity.
    """
    from geosam.run.journal import scene_fingerprint

    dates = []
    for r, s in zip(readers, scenes):
        roles = r.calc.roles
        dates.append({"date": s.date.isoformat(), "scene": scene_fingerprint(r.scene), "mask_band": r.mask_band,
                      "bands": {k: [b, *roles.scale_offset(k)] for k, b in sorted(r.calc.role_bands.items())}})
    objects: dict[str, Any] = {}
    digests = dict(digests or {})
    tracked = len({id(f) for f in sources}) > 1  # each date its own objects
    for k, f in enumerate(sources if tracked else sources[:1]):
        tag = f"date {k + 1} " if tracked else ""
        objects[f"{tag}count"] = f.n if hasattr(f, "n") else len(f)
        objects[f"{tag}crs"] = f.crs.to_string() if f.crs is not None else None
        objects[f"{tag}geometries_sha256"] = digests.get(id(f)) or digests.setdefault(id(f), objects_digest(f))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NEUTRAL}
    settings["kind"] = "monitor"
    return {"dates": {str(k + 1): d for k, d in enumerate(dates)}, "objects": objects, "settings": settings}


def measure(readers: Sequence[DateReader], scenes: Sequence[DateScene], sources: Sequence[Objects],
            cfg: MonitorConfig, *, journal: str | os.PathLike[str] | None = None, scheduler: Any = None,
            n_workers: int | None = None) -> tuple[StatsStore, TaskCounts]:
    """Measure every object at every date; the results are in the returned store (close it when done).

    Args:
        readers: The open dates (their scenes are closed here once planned).
        scenes: The dates.
        sources: The objects of each date (the same set for every date unless tracked), read in batches.
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
            digests = plan(readers, sources, cfg.chip_size_px, store)
            jr = None
            if journal is not None:
                from geosam.run.journal import Journal

                identity = journal_identity(readers, scenes, sources, cfg, digests)
                jr = Keyed(stack.enter_context(Journal(journal, identity)), task_key)
            for r in readers:
                r.scene.close()
            execute = in_process(spec)
            if scheduler is not None:
                from geosam.run.cluster import connect
                from geosam.run.dask import dask_task_executor

                execute = dask_task_executor(connect(stack, scheduler, n_workers), spec)
            for k, src in enumerate(sources):
                before = counts.total
                tasks = tasks_from_plan(k, store.plan.rows(k), cfg.chip_size_px)
                run_tasks(tasks, execute, lambda t, p: store.add(t.date, p), journal=jr, counts=counts,
                          chunk_size=TASK_CHUNK)
                close_readers()  # this date's blocks leave GDAL's cache: memory does not grow with the dates
                log.info("%s (%s): %d objects in %d chip tasks", scenes[k].name, scenes[k].date, src.n,
                         counts.total - before)
        store.finish(job.thresholds)
    except BaseException:
        close_readers()
        store.close()
        raise
    return store, counts


__all__ = ["NEUTRAL", "journal_identity", "measure", "objects_digest", "plan"]
