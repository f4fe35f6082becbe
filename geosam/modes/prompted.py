"""Prompt mode: one object per point / box prompt given in map coordinates (`segment_prompts`).

A prompt run is the run loop's data like every mode's (`geosam.modes.runner.ModePlan`): the
prompts are parsed by `geosam.prompts.parse`; windows are planned by
`geosam.tile.prompt_windows.plan_windows` (one chip task per window, carrying its prompts);
masks are decoded by `geosam.segment.prompted.PromptMaskGenerator`; the
`geosam.assemble.assemblers.PromptAssembler` gives one object per prompt;
`geosam.assemble.tables.PromptTable` gives one row per prompt. Journal, Dask, output streaming and object hooks come from the runner, as in
every mode. Coordinates: prompts in **scene pixel coordinates** here, output geometries in map
coordinates.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from affine import Affine

from geosam.assemble.assemblers import PromptAssembler
from geosam.assemble.records import ObjectHook
from geosam.assemble.tables import PromptTable
from geosam.config import PromptConfig, check_crs
from geosam.errors import PromptError, PromptOutsideSceneError
from geosam.modes.runner import ModePlan, PlanBuilder, RunOptions, run_dtype, run_frame, run_mode
from geosam.prompts.from_list import prompts_to_frame
from geosam.prompts.parse import (
    Prompt,
    PromptColumns,
    grow_box,
    prompts_from_frame,
    warn_prompt,
)
from geosam.read.scene import Scene
from geosam.run.loop import ChipTask
from geosam.run.summary import RunSummary
from geosam.tile.grid import ChipSpec
from geosam.tile.prompt_windows import plan_windows

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.config import PromptWindowConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# a run's prompts, windows and table


def resolve_prompts(sc: Scene, prompts: Any, *, prompt_crs: Any = None, columns: PromptColumns | None = None,
                    box_grow: float = 0.0) -> tuple[list[Prompt], list[str]]:
    """The run's prompts in scene pixel coordinates and their first status (``ok`` or ``outside``).

    Args:
        sc: The open scene.
        prompts: A GeoDataFrame or a list of points, boxes, geometries or dicts (`geosam.prompts.parse`).
        prompt_crs: The CRS of a list, or of a GeoDataFrame without one (default: the scene's).
        columns: Which columns of a GeoDataFrame say what (`geosam.prompts.parse.PromptColumns`; None:
            the defaults).
        box_grow: Grow every box by this fraction of its width / height on each side.

    Returns:
        The prompts and one status each.

    Raises:
        PromptError: Malformed prompts.
        PromptOutsideSceneError: Every prompt lies outside the scene (the others outside get a warning).
    """
    import geopandas as gpd
    from rasterio.crs import CRS

    info = sc.info
    scene_crs = CRS.from_wkt(info.crs_wkt)
    if isinstance(prompts, gpd.GeoDataFrame):
        frame = prompts
    elif isinstance(prompts, (list, tuple)):
        frame = prompts_to_frame(prompts, prompt_crs if prompt_crs is not None else scene_crs)
    else:
        raise PromptError(f"prompts must be a GeoDataFrame or a list, got {type(prompts).__name__}")
    if len(frame) == 0:
        raise PromptError("no prompts given")
    plist = prompts_from_frame(frame, scene_crs, info.transform,
                               prompt_crs=prompt_crs if isinstance(prompts, gpd.GeoDataFrame) else None,
                               columns=columns or PromptColumns(),
                               scene_bounds=info.bounds if info.is_geographic else None)
    if box_grow:
        plist = [Prompt(p.prompt_id, grow_box(p.box, box_grow) if p.box else None, p.points, p.point_labels,
                        p.label, p.attrs) for p in plist]
    status = [_outside_status(p, info.width, info.height) for p in plist]
    if all(s == "outside" for s in status):
        x0, y0, x1, y1 = info.bounds
        raise PromptOutsideSceneError(
            f"{sc.path}: all {len(plist)} prompts lie outside the scene, which covers x {x0:.6g}..{x1:.6g}, "
            f"y {y0:.6g}..{y1:.6g} in {info.crs_name}; check the prompts' CRS (prompt_crs / --prompt-crs) "
            "and coordinate order (x = easting / longitude first)"
        )
    for p, s in zip(plist, status):
        if s == "outside":
            warn_prompt(f"{sc.path}: prompt {p.prompt_id!r} lies outside the scene; it gets an empty result")
    return plist, status


def prompt_tasks(sc: Scene, plist: Sequence[Prompt], status: Sequence[str], cfg: PromptWindowConfig,
                 chip_size_px: int, overlap_px: int) -> list[ChipTask]:
    """One chip task per window of `geosam.tile.prompt_windows.plan_windows`, carrying its prompts.

    Args:
        sc: The open scene.
        plist: The run's prompts (scene pixels).
        status: Their statuses; only ``ok`` prompts get a window.
        cfg: The prompt windows' settings.
        chip_size_px: The grid's chip size (0: one window per prompt).
        overlap_px: The grid's overlap.

    Returns:
        The chip tasks.
    """
    info = sc.info
    inside = [i for i, s in enumerate(status) if s == "ok"]
    plan = plan_windows([plist[i] for i in inside], info.width, info.height, cfg, chip_size_px, overlap_px)
    tasks = []
    for n, (win, members) in enumerate(plan):
        spec = ChipSpec(path=sc.path, row=n, col=0, window=win, core=win, scene_width=info.width,
                        scene_height=info.height, transform=info.transform @ Affine.translation(win.col_off, win.row_off),
                        crs_wkt=info.crs_wkt)
        ids = tuple(inside[m] for m in members)
        tasks.append(ChipTask(spec, tuple(plist[i] for i in ids), ids))
    return tasks


def _outside_status(p: Prompt, width: int, height: int) -> str:
    """"outside" when no positive point and no part of the box lies in the scene, or when the prompt's
    coordinates are not finite (it could not be reprojected to the scene's CRS); else "ok"."""
    coords = [v for pt in p.points for v in pt] + list(p.box or ())
    if not all(math.isfinite(v) for v in coords):
        return "outside"
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            return "outside"
    pos = [pt for pt, lab in zip(p.points, p.point_labels) if lab == 1]
    if pos and not any(0 <= x < width and 0 <= y < height for x, y in pos):
        return "outside"
    return "ok"


def _prompt_plan(prompts: Any, model: Any, cfg: PromptConfig, prompt_crs: Any, columns: PromptColumns | None,
                 journal: str | os.PathLike[str] | None) -> PlanBuilder:
    """The plan builder of a prompt run: prompts (no model), then the model and the windows."""

    def build(sc: Scene) -> ModePlan:
        from geosam.models import SamBundle, load_model
        from geosam.segment.prompted import PromptMaskGenerator

        plist, status = resolve_prompts(sc, prompts, prompt_crs=prompt_crs, columns=columns,
                                        box_grow=cfg.window.box_grow)
        m = cfg.model
        if isinstance(model, SamBundle):
            bundle = model
        else:
            bundle = load_model(m.model, device=m.device, dtype=run_dtype(m.dtype, m.device, journal))
        generator = PromptMaskGenerator(bundle, cfg.window)
        generator.check_prompts([p for p, s in zip(plist, status) if s == "ok"])
        chip = cfg.tiling.chip_size_px if cfg.tiling.chip_size_px is not None else generator.default_chip_size_px
        tasks = prompt_tasks(sc, plist, status, cfg.window, chip, cfg.tiling.overlap_px)
        table = PromptTable(plist, status, len(tasks), chip, sc.path, sc.info.crs_wkt, bundle.name, cfg.output.to_crs,
                            cfg.outline)
        dtype_name = str(bundle.dtype).removeprefix("torch.")
        return ModePlan(tasks=tasks, generator=generator, assembler=PromptAssembler(status),
                        table=lambda folder: table, engine=cfg.engine, desc="prompts", dtype=dtype_name,
                        settings={**cfg.flat(), "model": bundle.name, "dtype": dtype_name, "chip_size_px": chip})

    return build


def _prompt_run(prompts: Any, model: Any, prompt_crs: Any, columns: PromptColumns | None, config: PromptConfig | None,
                options: RunOptions, settings: dict[str, Any]) -> tuple[PromptConfig, PlanBuilder]:
    """Check a prompt run's settings (before any pixel or model) and return its config and plan builder."""
    from geosam.models import SamBundle

    if model is not None and not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or PromptConfig()).with_overrides(**settings)
    if prompt_crs is not None:
        check_crs(prompt_crs, "prompt_crs")
    return cfg, _prompt_plan(prompts, model, cfg, prompt_crs, columns, options.journal)


def segment_prompts(
    scene: Any,
    prompts: Any,
    *,
    model: Any = None,
    prompt_crs: Any = None,
    columns: PromptColumns | None = None,
    config: PromptConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Segment one object per point / box prompt given in map coordinates (see `geosam.prompts.parse`).

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        prompts: A GeoDataFrame or a list of points, boxes, geometries or dicts, in any CRS.
        model: "litemedsam" (default, built in, offline; box prompts), a SAM hub id or local directory,
            or a loaded `geosam.models.SamBundle`.
        prompt_crs: The CRS of a list, or of a GeoDataFrame without one (default: the scene's).
        columns: Which columns of a GeoDataFrame give the prompt id, label, point label and object
            (`geosam.prompts.parse.PromptColumns`; None: the defaults, ``id`` and ``label`` when present).
        config: The run's settings (`geosam.config.PromptConfig`); ``settings`` override it.
        object_hooks: Per-object attribute hooks (their columns join the table).
        journal: Resume (`geosam.run.journal`): every finished window is committed to this file; calling
            again with it replays those windows and runs only the rest (same output).
        scheduler: Scale-out (`geosam.run.dask`): ``"local"``, a scheduler address or a
            ``distributed.Client``; the prompt windows run on the workers (same output as in-process).
        n_workers: Worker processes of ``scheduler="local"``.
        **settings: Flat `geosam.config.PromptConfig` settings, e.g.
            ``box_grow=0.1, context=2.5, chip_size_px=0, device="cpu", fill_value=255``.

    Returns:
        One row per prompt in input order (``prompt_id, prompt_type, ..., label, status, predicted_iou,
        area_m2, model, geometry``); ``status`` is ``ok`` (an object was found), ``empty`` (decoded,
        nothing found), ``outside`` (outside the scene) or ``invalid`` (on nodata / fill pixels). The
        run statistics are in ``attrs["geosam"]``.
    """
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    options.check()
    cfg, build = _prompt_run(prompts, model, prompt_crs, columns, config, options, settings)
    return run_frame(scene, cfg.read, build, options)


def segment_prompts_to_file(
    scene: Any,
    prompts: Any,
    output: str | os.PathLike[str],
    *,
    layer: str | None = None,
    model: Any = None,
    prompt_crs: Any = None,
    columns: PromptColumns | None = None,
    config: PromptConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> RunSummary:
    """`segment_prompts`, writing the table into a vector file (atomically).

    Every argument not listed here is as in `segment_prompts`.

    Args:
        output: The vector file (checked before any pixel or model).
        layer: The layer of a GeoPackage output (default: the file's stem).

    Returns:
        The run statistics (``details["status_counts"]``: prompts per status), with the written file
        in ``output``.
    """
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    options.check()
    cfg, build = _prompt_run(prompts, model, prompt_crs, columns, config, options, settings)
    return run_mode(scene, cfg.read, build, options, output, layer).summary


__all__ = ["prompt_tasks", "resolve_prompts", "segment_prompts", "segment_prompts_to_file"]
