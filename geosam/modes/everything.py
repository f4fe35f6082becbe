"""Entry points: segment everything (:func:`segment_scene`) and prompts (:func:`segment_prompts`).

Each builds its chip tasks, mask generator and assembler, then calls the one
run loop (:func:`geosam.run.loop.run`) and builds the one table
(:mod:`geosam.assemble.records`). ``cli/`` and (later) the Dask runner only call this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from geosam.assemble.assemblers import GridAssembler
from geosam.assemble.records import ObjectHook
from geosam.assemble.result import PREFILTERED, ChipResult
from geosam.assemble.store import ObjectStore
from geosam.config import IndexConfig, PromptConfig, SegmentConfig, check_crs
from geosam.errors import ConfigError
from geosam.read.scene import Chip, Scene
from geosam.run.loop import ChipStep, ChipTask, RunStats, run
from geosam.segment.base import MaskGenerator

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# segment everything


def make_mask_generator(cfg: SegmentConfig) -> MaskGenerator:
    """The SAM segment-everything generator configured by ``cfg``."""
    from geosam.segment import SamMaskGenerator

    m = cfg.model
    return SamMaskGenerator(m.model, device=m.device, dtype=m.dtype, compile=m.compile,
                            encoder_batch_size=cfg.engine.chips_per_batch, config=cfg.amg)


def index_steps(icfg: IndexConfig, sc: Scene, points_per_side: int | None,
                stats: RunStats) -> tuple[list[ObjectHook], ChipStep | None]:
    """The index statistics hook and the prefilter step a run needs (BandError here, before any model work)."""
    names = icfg.names()
    if not names:
        return [], None
    from geosam.indices import Prefilter, ZonalStats, calculator_for

    calc = calculator_for(sc, icfg, names)
    hooks: list[ObjectHook] = [ZonalStats(calc, {**dict(icfg.min_index), **dict(icfg.index_thresholds)})]
    if not icfg.prefilter:
        return hooks, None
    radius = None if icfg.prefilter_radius_px == "grid" else int(icfg.prefilter_radius_px)
    prefilter = Prefilter(calc, dict(icfg.min_index), radius)
    pps = points_per_side or 32

    def step(chip: Chip) -> ChipResult | None:
        t0 = time.perf_counter()
        total, kept = prefilter.apply(chip, sc, pps)
        stats.prompts_total += total
        stats.prompts_skipped_prefilter += total - kept
        stats.add_time("prefilter", time.perf_counter() - t0)
        if chip.prompt_region().any():
            return None
        return ChipResult.empty(chip.spec.chip_id, chip.spec.window, PREFILTERED)

    return hooks, step


def segment_scene(
    scene: Any,
    mask_generator: MaskGenerator | None = None,
    *,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    output: str | os.PathLike[str] | None = None,
    layer: str | None = None,
    frame_hook: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame] | None = None,
    **settings: Any,
) -> Any:
    """Segment every object in a scene into one polygon each.

    scene: a raster path, an open rasterio dataset or an xarray DataArray.
    mask_generator: a :class:`~geosam.segment.base.MaskGenerator` (e.g. :class:`geosam.testing.OracleMaskGenerator`);
        default is SAM segment-everything built from the settings.
    settings: flat :class:`~geosam.config.SegmentConfig` settings, e.g.
        ``chip_size_px=512, overlap_px=64, bands=(3, 2, 1), fill_value=255``.

    Returns a GeoDataFrame in the scene CRS (or ``to_crs``) with columns
    ``id, area_m2, predicted_iou, stability_score, n_chips, model, geometry``
    (``area_m2`` in square metres); ``gdf.attrs['geosam']`` holds the run statistics.

    ``output="objects.gpkg"`` (any format of :func:`geosam.write.label_raster.write_vector`; ``layer``
    for a GeoPackage) streams the objects into that file instead, with memory independent of
    their number: finished objects wait in a temporary file beside the output
    (:class:`geosam.assemble.store.ObjectStore`) and are written in id order at the end, atomically
    (an existing file is replaced only by a complete new one). Returns the run statistics
    (a dict, with ``output``).

    Spectral indices (:mod:`geosam.indices`): ``band_roles={"red": 1, "nir": 4}``
    (or a preset such as ``"sentinel2"``), ``indices=["ndvi", "exg"]`` add
    ``ndvi_mean, ndvi_median, ndvi_frac_above, ...`` per object;
    ``min_index={"ndvi": 0.3}`` keeps objects whose mean passes, ``rank_by="ndvi_mean"``
    sorts (adds ``rank``), ``top_k=10`` keeps the best; ``prefilter=True`` decodes
    only prompts near passing pixels (counts in ``chips_skipped_prefilter``,
    ``prompts_skipped_prefilter``).

    Resume (:mod:`geosam.run.journal`): ``journal="run.geosam-journal"`` commits every finished chip to
    that file; calling again with it replays those chips and runs only the rest (same output).
    Scale-out (:mod:`geosam.run.dask`, needs ``dask[distributed]``): ``scheduler="local"`` with
    ``n_workers`` worker processes, a scheduler address ``"tcp://host:8786"`` or a ``distributed.Client``.
    ``frame_hook``: reshapes each batch of the table (e.g. text mode's columns).
    """
    cfg = (config or SegmentConfig()).with_overrides(**settings)
    if output is not None:
        from geosam.write.label_raster import check_output_path

        check_output_path(output)  # before any pixel or model
    t_start = time.perf_counter()
    stats = RunStats()
    with Scene(scene, cfg.read) as sc, ExitStack() as stack:
        specs = sc.chip_specs(cfg.tiling.chip_size_px, cfg.tiling.overlap_px)
        pps = mask_generator.capabilities.points_per_side if mask_generator is not None else cfg.amg.points_per_side
        hooks, before = index_steps(cfg.index, sc, pps, stats)
        hooks = [*(object_hooks or []), *hooks]
        generator = mask_generator if mask_generator is not None else make_mask_generator(cfg)
        assembler = GridAssembler(specs, cfg.output.match_iou)
        tasks = [ChipTask(s) for s in specs]
        store = stack.enter_context(ObjectStore(sc.info.crs_wkt, min_area_m2=cfg.output.min_area_m2,
                                                min_index=cfg.index.min_index, folder=_spill_folder(output)))
        with ExitStack() as run_stack:
            jr = _open_journal(run_stack, journal, sc, cfg.flat(), mask_generator, tasks)
            execute = _executor(run_stack, scheduler, n_workers, sc, cfg, generator, pps, stats)
            _, stats = run(sc, tasks, generator, assembler, cfg.engine, hooks=hooks, before=before,
                           stats=stats, journal=jr, execute=execute, sink=store.add)
        summary = _summary(stats, sc)
        from geosam.outline import refine_frames  # outlines refined batch by batch (summary["outline"])

        frames = refine_frames(store.frames(generator.name, rank_by=cfg.index.rank_by, top_k=cfg.index.top_k,
                                            require=stat_columns(cfg.index.names()), complete=bool(stats.chips_failed),
                                            to_crs=cfg.output.to_crs or None, hook=frame_hook), cfg.outline, summary)
        if output is not None:
            from geosam.write.failed_chips import write_failed_chips
            from geosam.write.label_raster import write_frames

            summary["output"] = str(write_frames(frames, output, geometry_types=store.geometry_types, layer=layer))
            write_failed_chips(summary, output)
            return _done(summary, store.rows_out, t_start)
        gdf = _concat(list(frames))
    gdf.attrs["geosam"] = _done(summary, len(gdf), t_start)
    return gdf


def stat_columns(names: Any) -> list[str]:
    """The index statistics columns of index ``names`` (present, NaN where missing, in every table)."""
    from geosam.config.index_table import STATS

    return [f"{n}_{st}" for n in names for st in STATS]


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


def _summary(stats: RunStats, sc: Scene) -> dict[str, Any]:
    """The run statistics (``gdf.attrs['geosam']``) before the table is written."""
    extra: dict[str, Any] = {"scene": sc.path}
    if stats.chips_failed:  # see geosam.write.failed_chips
        extra["chips_failed_crs"] = sc.info.crs_wkt
    return {**stats.__dict__, **extra}


def _done(summary: dict[str, Any], n_objects: int, t_start: float) -> dict[str, Any]:
    summary["objects"] = n_objects
    summary["seconds"] = time.perf_counter() - t_start
    path = summary.get("scene")
    if n_objects == 0:
        log.warning("%s: no objects found", path)
    log.info("%s: %d objects from %d masks in %d chips (%d skipped as invalid, %d without masks) in %.1f s",
             path, n_objects, summary.get("masks", 0), summary.get("chips_total", 0),
             summary.get("chips_skipped_invalid", 0), summary.get("chips_empty", 0), summary["seconds"])
    return summary


def _open_journal(stack: ExitStack, path: str | os.PathLike[str] | None, sc: Scene, flat: dict[str, Any],
                  generator: MaskGenerator | None, tasks: list[ChipTask]) -> Any:
    """The run's journal (closed with ``stack``), or None."""
    if path is None:
        return None
    from geosam.run.journal import open_journal

    return stack.enter_context(open_journal(path, sc, flat, generator, tasks))


def _executor(stack: ExitStack, scheduler: Any, n_workers: int | None, sc: Scene, cfg: SegmentConfig,
              generator: MaskGenerator, pps: int | None, stats: RunStats) -> Any:
    """A Dask executor for the run (its client closed with ``stack``), or None to run in-process."""
    if scheduler is None:
        if n_workers is not None:
            raise ConfigError("n_workers needs scheduler='local' (or a scheduler address / Client)")
        return None
    from functools import partial

    from geosam.run.dask import dask_executor

    before = partial(worker_prefilter, cfg.index, pps) if cfg.index.prefilter and cfg.index.names() else None
    return dask_executor(stack, scheduler, n_workers, sc, cfg.engine, generator, before, stats)


def worker_prefilter(icfg: IndexConfig, pps: int | None, sc: Scene, stats: RunStats) -> ChipStep | None:
    """The index prefilter step of a Dask worker (built there, on the worker's own scene handle)."""
    return index_steps(icfg, sc, pps, stats)[1]


def segment_prompts(
    scene: Any,
    prompts: Any,
    *,
    model: Any = None,
    prompt_crs: Any = None,
    id_column: str | None = "id",
    label_column: str | None = None,
    point_label_column: str | None = None,
    object_column: str | None = None,
    config: PromptConfig | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Segment one object per point / box prompt given in map coordinates (see :mod:`geosam.prompts.parse`).

    scene: a raster path, an open rasterio dataset or an xarray DataArray.
    prompts: a GeoDataFrame or a list of points, boxes, geometries or dicts, in any CRS.
    model: "litemedsam" (default, built in, offline; box prompts), a SAM hub id
        or local directory, or a loaded :class:`~geosam.models.SamBundle`.
    settings: flat :class:`~geosam.config.PromptConfig` settings, e.g.
        ``box_grow=0.1, context=2.5, chip_size_px=0, device="cpu", fill_value=255``.

    Returns one row per prompt in input order (``prompt_id, prompt_type, ..., label, status,
    predicted_iou, area_m2, model, geometry``); ``status`` is ``ok`` (an object was found),
    ``empty`` (decoded, nothing found), ``outside`` (outside the scene) or ``invalid`` (on
    nodata / fill pixels).

    Scale-out (:mod:`geosam.run.dask`, needs ``dask[distributed]``): ``scheduler="local"`` with
    ``n_workers`` worker processes, a scheduler address or a ``distributed.Client``; the prompt
    windows run on the workers as :func:`segment_scene`'s chips do (same output as in-process).
    """
    from geosam.assemble.assemblers import PromptAssembler
    from geosam.models import SamBundle, load_sam
    from geosam.modes.prompted import prompt_tasks, prompts_frame, report_statuses, resolve_prompts
    from geosam.run.dask import check_scheduler, executor_or_none
    from geosam.segment.prompted import PromptMaskGenerator

    if model is not None and not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or PromptConfig()).with_overrides(**settings)
    if prompt_crs is not None:
        check_crs(prompt_crs, "prompt_crs")  # ConfigError before any pixel or model
    check_scheduler(scheduler, n_workers)
    t_start = time.perf_counter()
    with Scene(scene, cfg.read) as sc:
        plist, status = resolve_prompts(sc, prompts, prompt_crs=prompt_crs, id_column=id_column,
                                        label_column=label_column, point_label_column=point_label_column,
                                        object_column=object_column, box_grow=cfg.window.box_grow)
        m = cfg.model
        bundle = model if isinstance(model, SamBundle) else load_sam(m.model, device=m.device, dtype=m.dtype)
        generator = PromptMaskGenerator(bundle, cfg.window)
        generator.check_prompts([p for p, s in zip(plist, status) if s == "ok"])
        chip = cfg.tiling.chip_size_px if cfg.tiling.chip_size_px is not None else generator.default_chip_size_px
        tasks = prompt_tasks(sc, plist, status, cfg.window, chip, cfg.tiling.overlap_px)
        stats = RunStats()
        with ExitStack() as stack:
            execute = executor_or_none(stack, scheduler, n_workers, sc, cfg.engine, generator, stats)
            records, stats = run(sc, tasks, generator, PromptAssembler(status), cfg.engine, desc="prompts",
                                 stats=stats, execute=execute)
        report_statuses(sc.path, plist, status)
        gdf = prompts_frame(plist, status, records, sc.info.crs_wkt, bundle.name)
        path = sc.path
    from geosam.outline import refine_table

    outline: dict[str, Any] = {}
    gdf = refine_table(gdf, cfg.outline, outline)
    if cfg.output.to_crs:
        gdf = gdf.to_crs(cfg.output.to_crs)
    stats.objects = int(sum(s == "ok" for s in status))
    stats.seconds = time.perf_counter() - t_start
    gdf.attrs["geosam"] = {**stats.__dict__, "scene": path, "prompts": len(plist), "windows": len(tasks),
                           "chip_size_px": chip, "status_counts": {s: status.count(s) for s in sorted(set(status))},
                           **outline}
    log.info("%s: %d prompts in %d windows, %.1f s", path, len(plist), len(tasks), stats.seconds)
    return gdf


__all__ = ["ChipTask", "RunStats", "index_steps", "make_mask_generator", "segment_prompts", "segment_scene",
           "stat_columns", "worker_prefilter"]
