"""Segment everything: every object of a scene, one polygon each (`segment_scene`, `segment_scene_to_file`).

A segment-everything run is a chip grid, SAM's segment-everything generator (or any
`geosam.segment.base.MaskGenerator`), the `geosam.assemble.assemblers.GridAssembler` and a
per-object table (`grid_plan`), run by the one runner (`geosam.modes.runner.run_mode`). Text mode
(`geosam.modes.text`) is the same plan with another generator and its own leading columns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from geosam.assemble.assemblers import GridAssembler
from geosam.assemble.records import ObjectHook
from geosam.assemble.result import PREFILTERED, ChipResult
from geosam.assemble.store import OBJECT_COLUMNS
from geosam.assemble.tables import ObjectTable, ObjectTableSpec, min_index_pairs
from geosam.config import IndexConfig, SegmentConfig
from geosam.errors import ConfigError
from geosam.modes.runner import ModePlan, PlanBuilder, RunOptions, run_dtype, run_frame, run_mode
from geosam.read.scene import Chip, Scene
from geosam.run.loop import ChipStep, ChipTask, RunStats
from geosam.run.plan import log_plan
from geosam.run.summary import RunSummary
from geosam.segment.base import MaskGenerator

if TYPE_CHECKING:
    import geopandas as gpd


def make_mask_generator(cfg: SegmentConfig) -> MaskGenerator:
    """The SAM segment-everything generator configured by ``cfg``.

    Args:
        cfg: The run's settings (model, device, dtype, compile, batch size, SAM's parameters).

    Returns:
        The generator (its model loaded).
    """
    from geosam.segment import SamMaskGenerator

    m = cfg.model
    return SamMaskGenerator(m.model, device=m.device, dtype=m.dtype, compile=m.compile,
                            encoder_batch_size=cfg.engine.chips_per_batch, config=cfg.amg)


def index_steps(icfg: IndexConfig, sc: Scene, points_per_side: int | None,
                stats: RunStats) -> tuple[list[ObjectHook], ChipStep | None]:
    """The index statistics hook and the prefilter step a run needs.

    Args:
        icfg: The index settings.
        sc: The open scene (its bands are checked here, before any model work).
        points_per_side: The generator's point grid side (the prefilter drops grid points); None: 32.
        stats: The run's counts (the prefilter counts prompts into it).

    Returns:
        The object hooks and the per-chip prefilter step (None without ``prefilter``).

    Raises:
        BandError: The scene lacks a band an index needs.
    """
    names = icfg.names()
    if not names:
        return [], None
    from geosam.index.calculator import calculator_for
    from geosam.index.prefilter import Prefilter
    from geosam.index.zonal import ZonalStats

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




def stat_columns(names: Any) -> list[str]:
    """The index statistics columns of index ``names`` (present, NaN where missing, in every table).

    Args:
        names: Index names, e.g. ``("ndvi",)``.

    Returns:
        ``<index>_<statistic>`` column names.
    """
    from geosam.config.index_table import STATS

    return [f"{n}_{st}" for n in names for st in STATS]


def worker_prefilter(icfg: IndexConfig, pps: int | None, sc: Scene, stats: RunStats) -> ChipStep | None:
    """The index prefilter step of a Dask worker (built there, on the worker's own scene handle).

    Args:
        icfg: The index settings.
        pps: The generator's point grid side.
        sc: The worker's open scene.
        stats: The worker's counts.

    Returns:
        The prefilter step, or None.
    """
    return index_steps(icfg, sc, pps, stats)[1]


def grid_plan(
    sc: Scene,
    cfg: SegmentConfig,
    given: MaskGenerator | None,
    journal: str | os.PathLike[str] | None,
    *,
    build: Callable[[SegmentConfig], MaskGenerator] | None = None,
    points_per_side: int | None = None,
    lead: tuple[str, ...] = OBJECT_COLUMNS,
    settings: Mapping[str, Any] | None = None,
) -> ModePlan:
    """A chip-grid mode's plan: segment everything, or text mode with its generator and columns.

    Band checks of the indices come first; the model loads last, with the run's dtype decided here
    (`geosam.modes.runner.run_dtype`) and recorded in the journal key.

    Args:
        sc: The open scene.
        cfg: The run's settings.
        given: The caller's generator (described in the journal key); None builds one.
        journal: The run's journal (a recorded dtype is kept).
        build: Builds the generator from the settings with the dtype resolved; default SAM
            segment-everything (`make_mask_generator`), whose grid then feeds the prefilter.
        points_per_side: The grid side of a generator that ``build`` makes (None: no grid).
        lead: The table's leading columns.
        settings: The mode's own settings, added to the journal key.

    Returns:
        The plan.
    """
    stats = RunStats()
    if given is not None:
        pps = given.capabilities.points_per_side
    else:
        pps = cfg.amg.points_per_side if build is None else points_per_side
    specs = sc.chip_specs(cfg.tiling.chip_size_px, cfg.tiling.overlap_px)
    check_grid(sc, specs, pps)
    crop_layers = cfg.amg.crop_n_layers if given is None and build is None else 0
    log_plan(sc.path, len(specs), cfg.tiling.chip_size_px, pps, crop_layers, cfg.amg.crop_n_points_downscale_factor)
    hooks, before = index_steps(cfg.index, sc, pps, stats)
    dtype = None
    if given is None:
        dtype = run_dtype(cfg.model.dtype, cfg.model.device, journal)
        cfg = cfg.with_overrides(dtype=dtype)
    generator = given if given is not None else (build or make_mask_generator)(cfg)
    icfg = cfg.index
    spec = ObjectTableSpec(lead=lead, min_area_m2=cfg.output.min_area_m2, min_index=min_index_pairs(icfg.min_index),
                           rank_by=icfg.rank_by, top_k=icfg.top_k, require=tuple(stat_columns(icfg.names())),
                           to_crs=cfg.output.to_crs or None, outline=cfg.outline)
    assembler = GridAssembler(specs, cfg.output.match_iou, cfg.output.seam_tolerance_px)
    return ModePlan(
        tasks=[ChipTask(s) for s in specs], generator=generator, assembler=assembler,
        table=lambda folder: ObjectTable(spec, sc.info.crs_wkt, generator.name, folder), engine=cfg.engine,
        settings={**cfg.flat(), **(settings or {})}, journal_generator=given, hooks=tuple(hooks), before=before,
        worker_before=partial(worker_prefilter, icfg, pps) if icfg.prefilter and icfg.names() else None,
        stats=stats, dtype=dtype,
    )


def check_grid(sc: Scene, specs: list[Any], pps: int | None) -> None:
    """Refuse a point grid with more points per side than a chip has pixels (before any pixel or model).

    Args:
        sc: The open scene (named in the message).
        specs: The chip plan.
        pps: The generator's point grid side (None: no grid).

    Raises:
        ConfigError: More prompts than pixels, decoded for nothing (a 1 x 1 scene with the default grid).
    """
    if pps is None or not specs:
        return
    side = max(min(s.window.width, s.window.height) for s in specs)  # edge chips may be slivers
    if pps > side:
        raise ConfigError(
            f"{sc.path}: points_per_side={pps} puts {pps * pps} prompts on a chip of {side} px per side "
            f"(at most {side * side} pixels): more prompts than pixels; use points_per_side <= {side}"
            + (" (the scene is smaller than one chip)" if side < 16 else "")
        )


def everything_plan(cfg: SegmentConfig, mask_generator: MaskGenerator | None,
                    journal: str | os.PathLike[str] | None) -> PlanBuilder:
    """Segment-everything's plan builder (for `geosam.modes.runner.run_mode`).

    Args:
        cfg: The run's settings.
        mask_generator: The caller's generator; None: SAM built from ``cfg``.
        journal: The run's journal, if any.

    Returns:
        The builder.
    """
    return lambda sc: grid_plan(sc, cfg, mask_generator, journal)


def segment_scene(
    scene: Any,
    mask_generator: MaskGenerator | None = None,
    *,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Segment every object in a scene into one polygon each.

    Spectral indices (`geosam.index`): ``band_roles={"red": 1, "nir": 4}`` (or a preset such as
    ``"sentinel2"``), ``indices=["ndvi", "exg"]`` add ``ndvi_mean, ndvi_median, ndvi_frac_above, ...``
    per object; ``min_index={"ndvi": 0.3}`` keeps objects whose mean passes, ``rank_by="ndvi_mean"``
    sorts (adds ``rank``), ``top_k=10`` keeps the best; ``prefilter=True`` decodes only prompts near
    passing pixels (counts in ``chips_skipped_prefilter``, ``prompts_skipped_prefilter``).

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        mask_generator: A `geosam.segment.base.MaskGenerator` (e.g. `geosam.testing.OracleMaskGenerator`);
            default: SAM segment-everything built from the settings.
        config: The run's settings (`geosam.config.SegmentConfig`); ``settings`` override it.
        object_hooks: Per-object attribute hooks (their columns join the table).
        journal: Resume (`geosam.run.journal`): every finished chip is committed to this file; calling
            again with it replays those chips and runs only the rest (same output).
        scheduler: Scale-out (`geosam.run.dask`, needs ``dask[distributed]``): ``"local"`` with
            ``n_workers`` worker processes, a scheduler address ``"tcp://host:8786"`` or a ``distributed.Client``.
        n_workers: Worker processes of ``scheduler="local"``.
        **settings: Flat `geosam.config.SegmentConfig` settings, e.g.
            ``chip_size_px=512, overlap_px=64, bands=(3, 2, 1), fill_value=255``.

    Returns:
        A GeoDataFrame in the scene CRS (or ``to_crs``) with columns ``id, area_m2, predicted_iou,
        stability_score, n_chips, model, geometry`` (``area_m2`` in square metres);
        ``gdf.attrs["geosam"]`` holds the run statistics (`geosam.run.summary.RunSummary.as_dict`).
    """
    cfg = (config or SegmentConfig()).with_overrides(**settings)
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    return run_frame(scene, cfg.read, everything_plan(cfg, mask_generator, journal), options)


def segment_scene_to_file(
    scene: Any,
    output: str | os.PathLike[str],
    mask_generator: MaskGenerator | None = None,
    *,
    layer: str | None = None,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> RunSummary:
    """`segment_scene`, streaming the objects into a vector file (what the CLI does).

    Memory stays independent of the number of objects: finished objects wait in a temporary file
    beside the output (`geosam.assemble.store.ObjectStore`) and are written in id order at the end,
    atomically (an existing file is replaced only by a complete new one). Failed chips
    (``skip_bad_chips``) are listed beside it (`geosam.write.failed_chips`).

    Every argument not listed here is as in `segment_scene`.

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        output: The vector file (``.gpkg``, ``.geojson``, ``.shp``, ``.parquet``; checked before any pixel).
        layer: The layer of a GeoPackage output (default: the file's stem).

    Returns:
        The run statistics, with the written file in ``output``.
    """
    cfg = (config or SegmentConfig()).with_overrides(**settings)
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    return run_mode(scene, cfg.read, everything_plan(cfg, mask_generator, journal), options, output, layer).summary


__all__ = ["everything_plan", "grid_plan", "index_steps", "make_mask_generator", "segment_scene", "segment_scene_to_file",
           "stat_columns", "worker_prefilter"]
