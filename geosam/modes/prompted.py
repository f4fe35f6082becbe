"""Prompt mode in the run loop: the run's prompts, their chip tasks and statuses, and the output table.

Prompts are parsed by :mod:`geosam.prompts.parse`; windows are planned by
:func:`geosam.tile.prompt_windows.plan_windows`; masks are decoded by
:class:`geosam.segment.prompted.PromptMaskGenerator`. Coordinates: prompts in
**scene pixel coordinates** here, output geometries in map coordinates.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geosam.assemble.records import Record, geo_frame
from geosam.errors import PromptError, PromptOutsideSceneError
from geosam.prompts.parse import (
    OUTPUT_COLUMNS,
    Prompt,
    PromptWarning,
    check_coordinates,
    grow_box,
    prompts_from_frame,
    prompts_to_frame,
)
from geosam.read.scene import Scene
from geosam.run.loop import ChipTask
from geosam.tile.grid import ChipSpec
from geosam.tile.prompt_windows import plan_windows

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.config import PromptWindowConfig

log = logging.getLogger(__name__)


def gather_prompts(
    scene: str,
    *,
    prompts_file: str | None = None,
    layer: str | None = None,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    prompt_crs: Any = None,
) -> gpd.GeoDataFrame:
    """Prompts from a vector file and from point / box coordinates, as one GeoDataFrame.

    The file's rows come first (in the file's CRS, or ``prompt_crs``, or the scene's
    when it has none, with a warning; a GeoJSON without a ``crs`` member is WGS84
    unless ``prompt_crs`` is given, and coordinates that cannot be longitude / latitude
    raise :class:`PromptError` saying to pass ``--prompt-crs``), then ``points`` and ``boxes`` (in ``prompt_crs``,
    default the scene's), reprojected to the file's CRS. Raises :class:`PromptError`
    naming the file when it cannot be read, and when there is no prompt at all.
    """
    import geopandas as gpd
    import pandas as pd

    from geosam.prompts.table import has_geometry, points_from_table
    from geosam.read.scene import SceneInfo, open_raster

    with open_raster(scene) as ds:
        scene_crs = SceneInfo.from_dataset(ds).crs_wkt

    frames = []
    if prompts_file:
        try:
            f = gpd.read_file(prompts_file, layer=layer)
        except Exception as exc:
            raise PromptError(f"{prompts_file}: cannot read prompts ({exc})") from exc
        if not has_geometry(f):  # a CSV of x,y / lon,lat columns
            f = points_from_table(f, str(prompts_file))
        if f.crs is not None and prompt_crs is not None and _geojson_without_crs(prompts_file):
            f = f.set_crs(prompt_crs, allow_override=True)  # GDAL reads such a file as WGS84
        elif f.crs is None:
            if prompt_crs is None:
                warn(f"{prompts_file} has no CRS; assuming the scene's")
            f = f.set_crs(prompt_crs if prompt_crs is not None else scene_crs)
        check_coordinates(f, prompts_file)
        frames.append(f)
    items = [tuple(p) for p in points] + [tuple(b) for b in boxes]
    if items:
        frames.append(prompts_to_frame(items, prompt_crs if prompt_crs is not None else scene_crs))
    if not frames:
        raise PromptError("no prompts given: use a prompts file, points or boxes")
    if len(frames) == 1:
        out = frames[0]
    else:
        target = frames[0].crs
        out = gpd.GeoDataFrame(pd.concat([f.to_crs(target) for f in frames], ignore_index=True), crs=target)
    if prompts_file:
        out.attrs["geosam_source"] = str(prompts_file)  # named in messages about its rows
    return out


def _geojson_without_crs(path: str) -> bool:
    """True for a GeoJSON file without a top-level ``crs`` member (WGS84 by definition, RFC 7946)."""
    import json

    if not str(path).lower().endswith((".geojson", ".json")):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "crs" not in doc


# ---------------------------------------------------------------------------
# a run's prompts, windows and table


def resolve_prompts(
    sc: Scene,
    prompts: Any,
    *,
    prompt_crs: Any = None,
    id_column: str | None = "id",
    label_column: str | None = None,
    point_label_column: str | None = None,
    object_column: str | None = None,
    box_grow: float = 0.0,
) -> tuple[list[Prompt], list[str]]:
    """The run's prompts in scene pixel coordinates and their first status (``ok`` or ``outside``).

    Raises :class:`PromptError` for malformed prompts and
    :class:`PromptOutsideSceneError` when every prompt lies outside the scene; the
    others outside get a warning.
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
                               id_column=id_column, label_column=label_column,
                               point_label_column=point_label_column, object_column=object_column,
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
            warn(f"{sc.path}: prompt {p.prompt_id!r} lies outside the scene; it gets an empty result")
    return plist, status


def prompt_tasks(sc: Scene, plist: Sequence[Prompt], status: Sequence[str], cfg: PromptWindowConfig,
                 chip_size_px: int, overlap_px: int) -> list[ChipTask]:
    """One chip task per window of :func:`geosam.tile.prompt_windows.plan_windows`, carrying its prompts (``ok`` ones only)."""
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


def report_statuses(path: str, plist: Sequence[Prompt], status: Sequence[str]) -> None:
    """Warn about prompts on invalid pixels or without a mask; raise if no prompt could be used."""
    for p, st in zip(plist, status):
        if st == "invalid":
            warn(f"{path}: prompt {p.prompt_id!r} lies on invalid (nodata / fill) pixels; it gets an empty result")
        elif st == "empty":
            warn(f"{path}: prompt {p.prompt_id!r}: the model found no object there")
    if not any(s in ("ok", "empty") for s in status):
        raise PromptOutsideSceneError(
            f"{path}: none of the {len(plist)} prompts can be used: they lie outside the scene or on "
            "invalid (nodata / fill) pixels"
        )


def warn(msg: str) -> None:
    """Warn about a prompt, once: a :class:`PromptWarning` (the log gets it at debug level only)."""
    log.debug(msg)
    warnings.warn(msg, PromptWarning, stacklevel=3)


def _outside_status(p: Prompt, width: int, height: int) -> str:
    """"outside" when no positive point and no part of the box lies in the scene, or when the prompt's
    coordinates are not finite (it could not be reprojected to the scene's CRS)."""
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


def prompts_frame(plist: list[Prompt], status: list[str], records: list[Record], crs_wkt: str,
                  model_name: str) -> gpd.GeoDataFrame:
    """One row per prompt in input order: ``prompt_id, prompt_type, <carried columns>, label, status,
    predicted_iou, area_m2 (m2), model, geometry`` (map coordinates; empty where nothing was found)."""
    from shapely.geometry import Polygon

    by_key = {r.key: r for r in records}
    geoms = [by_key[i].geom if i in by_key else Polygon() for i in range(len(plist))]
    carried: list[str] = []
    for p in plist:
        for c in p.attrs:
            if c not in carried:
                carried.append(c)
    data: dict[str, Any] = {
        "prompt_id": [p.prompt_id for p in plist],
        "prompt_type": [p.kind for p in plist],
    }
    for c in carried:
        name = f"input_{c}" if c in OUTPUT_COLUMNS or c == "geometry" else c
        if c == "label" and all(p.attrs.get(c) == p.label for p in plist):
            continue  # the label column itself: it becomes `label`
        data[name] = [p.attrs.get(c) for p in plist]
    data["label"] = [p.label for p in plist]
    data["status"] = list(status)
    data["predicted_iou"] = np.array([by_key[i].predicted_iou if i in by_key else np.nan for i in range(len(plist))])
    n_cols = len(data)
    data["model"] = [model_name] * len(plist)
    return geo_frame(data, geoms, crs_wkt, area_at=n_cols)


__all__ = ["gather_prompts", "prompt_tasks", "prompts_frame", "report_statuses", "resolve_prompts", "warn"]
