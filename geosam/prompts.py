"""Prompt mode: segment the objects that point and box prompts in map coordinates point at.

Input (``prompts``), in any CRS (reprojected to the scene's):

* a GeoDataFrame (e.g. read from a vector file). Each row is one prompt:
  a Point is a point prompt, a MultiPoint several points of one object,
  a Polygon / MultiPolygon / LineString their bounding box (a box prompt).
  Columns, all optional:

  - ``id`` (``id_column``): the output ``prompt_id`` (else the row index);
  - ``label`` (``label_column``): any value, copied to the output ``label``
    (e.g. a class name);
  - ``point_label`` (``point_label_column``): 1 / 0, True / False, "positive" /
    "negative" (also pos/neg, fg/bg, +/-): a foreground or background point
    (default foreground);
  - ``object_column`` (no default): rows with the same value form one prompt,
    e.g. two positive and one negative point, or points plus a box, for one
    object; its ``prompt_id`` is that value.

  Every other column is carried over to the output (a name that clashes with
  an output column gets an ``input_`` prefix).
* a list of: ``(x, y)`` points; ``(minx, miny, maxx, maxy)`` boxes; shapely
  geometries; dicts with ``"point": (x, y)`` or ``"x"``/``"y"``, ``"box": (minx, miny,
  maxx, maxy)``, ``"points": [(x, y), ...]`` with optional ``"labels": [1, 0, ...]``,
  or ``"geometry"``; other keys (``id``, ``label``, anything) as columns.

``prompt_crs`` is the CRS of a list, or of a GeoDataFrame without one; the
default is the scene's CRS.

Output: a GeoDataFrame in the scene CRS (or ``to_crs``), one row per prompt in
input order: ``prompt_id, prompt_type, <carried columns>, label, status,
predicted_iou, area_m2, model, geometry`` (Polygon or MultiPolygon). A prompt
outside the scene or on invalid pixels gives a warning and a row with an
empty geometry (``status`` "outside" / "invalid"; "empty" when the model found
nothing); if no prompt can be used at all, :class:`PromptOutsideSceneError`.

Windows (scene pixel frame): see :class:`~geosam.config.PromptConfig` and
:func:`plan_windows`. One image embedding serves every prompt of a window; a
window always contains its prompts' boxes whole.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geosam.config import PromptConfig
from geosam.errors import PromptError, PromptOutsideSceneError
from geosam.tiling import PixelWindow

log = logging.getLogger(__name__)

#: columns geosam writes; input columns with these names are carried as ``input_<name>``
OUTPUT_COLUMNS = ("prompt_id", "prompt_type", "label", "status", "predicted_iou", "area_m2", "model")
_POSITIVE = {"1", "true", "t", "yes", "y", "positive", "pos", "fg", "foreground", "+", "include", "in"}
_NEGATIVE = {"0", "false", "f", "no", "n", "negative", "neg", "bg", "background", "-", "exclude", "out"}
_OBJ = "__geosam_object"
_PLAB = "__geosam_point_label"


class PromptWarning(UserWarning):
    """A prompt could not be used (outside the scene, on invalid pixels) or found nothing."""


@dataclass(frozen=True)
class Prompt:
    """One object to segment, in **scene pixel coordinates** (x = column, y = row, floats).

    box: (x0, y0, x1, y1) or None; points: ((x, y), ...) with point_labels
    (1 foreground, 0 background). attrs: input columns carried to the output.
    """

    prompt_id: Any
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    label: Any = None
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str:
        if self.box is not None and self.points:
            return "box+points"
        return "box" if self.box is not None else "points"

    def extent(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) of the box and all points."""
        xs: list[float] = []
        ys: list[float] = []
        if self.box is not None:
            xs += [self.box[0], self.box[2]]
            ys += [self.box[1], self.box[3]]
        for x, y in self.points:
            xs.append(x)
            ys.append(y)
        return min(xs), min(ys), max(xs), max(ys)


# ---------------------------------------------------------------------------
# input -> Prompt list


def _parse_point_label(value: Any, where: str) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 1
    if isinstance(value, (bool, np.bool_)):
        return int(bool(value))
    if isinstance(value, (int, np.integer, float, np.floating)) and float(value) in (0.0, 1.0):
        return int(value)
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise PromptError(f"{where}: point label {value!r} is neither positive (1, true, positive) nor negative (0, false, negative)")


def prompts_to_frame(items: Sequence[Any], crs: Any):  # -> GeoDataFrame
    """A list of prompts (see the module docstring) as a GeoDataFrame in ``crs``."""
    import geopandas as gpd
    from shapely.geometry import Point
    from shapely.geometry.base import BaseGeometry

    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"prompt {i}"
        props: dict[str, Any] = {}
        if isinstance(item, BaseGeometry):
            geom = item
        elif isinstance(item, dict):
            d = dict(item)
            if "geometry" in d:
                geom = d.pop("geometry")
            elif "box" in d:
                geom = _box_geometry(d.pop("box"), where)
            elif "point" in d:
                geom = Point(*_numbers(d.pop("point"), 2, where))
            elif "x" in d and "y" in d:
                geom = Point(float(d.pop("x")), float(d.pop("y")))
            elif "points" in d:
                pts = [tuple(_numbers(p, 2, where)) for p in d.pop("points")]
                if not pts:
                    raise PromptError(f"{where}: 'points' is empty")
                labels = d.pop("labels", None) or [1] * len(pts)
                if len(labels) != len(pts):
                    raise PromptError(f"{where}: {len(labels)} labels for {len(pts)} points")
                for p, lab in zip(pts, labels):
                    rows.append({**d, "geometry": Point(p), _OBJ: i, _PLAB: lab})
                continue
            else:
                raise PromptError(f"{where}: a dict prompt needs 'point', 'x'/'y', 'points', 'box' or 'geometry', got {sorted(d)}")
            props = d
        elif isinstance(item, (tuple, list, np.ndarray)):
            vals = _numbers(item, None, where)
            if len(vals) == 2:
                geom = Point(*vals)
            elif len(vals) == 4:
                geom = _box_geometry(vals, where)
            else:
                raise PromptError(f"{where}: a tuple prompt is (x, y) or (minx, miny, maxx, maxy), got {len(vals)} numbers")
        else:
            raise PromptError(f"{where}: cannot use {type(item).__name__} as a prompt")
        rows.append({**props, "geometry": geom, _OBJ: i})
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


def _numbers(v: Any, n: int | None, where: str) -> list[float]:
    try:
        vals = [float(x) for x in v]
    except (TypeError, ValueError):
        raise PromptError(f"{where}: expected numbers, got {v!r}") from None
    if n is not None and len(vals) != n:
        raise PromptError(f"{where}: expected {n} numbers, got {len(vals)}")
    if not all(math.isfinite(x) for x in vals):
        raise PromptError(f"{where}: coordinates must be finite, got {vals}")
    return vals


def _box_geometry(v: Any, where: str):
    """A box polygon, densified so that reprojection keeps its true extent."""
    import shapely
    from shapely.geometry import box

    x0, y0, x1, y1 = _numbers(v, 4, where)
    if x1 < x0 or y1 < y0:
        raise PromptError(f"{where}: box must be (minx, miny, maxx, maxy), got {(x0, y0, x1, y1)}")
    b = box(x0, y0, x1, y1)
    side = max(x1 - x0, y1 - y0)
    return shapely.segmentize(b, side / 16) if side > 0 else b


def prompts_from_frame(
    gdf: Any,
    scene_crs: Any,
    transform: Any,
    *,
    prompt_crs: Any = None,
    id_column: str | None = "id",
    label_column: str | None = None,
    point_label_column: str | None = None,
    object_column: str | None = None,
) -> list[Prompt]:
    """Prompts of a GeoDataFrame in scene pixel coordinates (see the module docstring).

    transform: the scene's affine transform (pixel -> map).
    """
    from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

    if gdf.crs is None:
        gdf = gdf.set_crs(prompt_crs if prompt_crs is not None else scene_crs, allow_override=True)
    elif prompt_crs is not None and not _same_crs(gdf.crs, prompt_crs):
        raise PromptError(f"the prompts have CRS {gdf.crs.to_string()} but prompt_crs={prompt_crs!r}; drop one of them")
    geoms = gdf.geometry.to_crs(scene_crs) if not _same_crs(gdf.crs, scene_crs) else gdf.geometry
    cols = [c for c in gdf.columns if c != gdf.geometry.name]
    for name, col in (("label_column", label_column), ("point_label_column", point_label_column),
                      ("object_column", object_column)):
        if col is not None and col not in cols:
            raise PromptError(f"{name}={col!r} is not a column of the prompts (columns: {cols})")
    if label_column is None and "label" in cols:
        label_column = "label"
    if point_label_column is None:
        point_label_column = _PLAB if _PLAB in cols else ("point_label" if "point_label" in cols else None)
    if object_column is None and _OBJ in cols:
        object_column = _OBJ
    if id_column is not None and id_column not in cols:
        id_column = None
    internal = {_OBJ, _PLAB, id_column, object_column, point_label_column}
    carried = [c for c in cols if c not in internal]
    inv = ~transform

    groups: dict[Any, list[int]] = defaultdict(list)
    order: list[Any] = []
    for pos in range(len(gdf)):
        key = gdf[object_column].iloc[pos] if object_column is not None else ("__row", pos)
        if key not in groups:
            order.append(key)
        groups[key].append(pos)

    out: list[Prompt] = []
    for key in order:
        members = groups[key]
        first = members[0]
        row = gdf.iloc[first]
        if object_column is not None and object_column != _OBJ:
            pid = key
        elif id_column is not None and not _missing(row[id_column]):
            pid = row[id_column]
        elif object_column == _OBJ:
            pid = int(key)
        else:
            pid = gdf.index[first]
        pid = pid.item() if isinstance(pid, np.generic) else pid
        points: list[tuple[float, float]] = []
        labels: list[int] = []
        boxes: list[tuple[float, float, float, float]] = []
        for pos in members:
            g = geoms.iloc[pos]
            where = f"prompt {pid!r}"
            if g is None or g.is_empty:
                continue
            plab = _parse_point_label(gdf[point_label_column].iloc[pos], where) if point_label_column else 1
            if isinstance(g, Point):
                points.append(_to_px(inv, g.x, g.y))
                labels.append(plab)
            elif isinstance(g, MultiPoint):
                for p in g.geoms:
                    points.append(_to_px(inv, p.x, p.y))
                    labels.append(plab)
            elif isinstance(g, (Polygon, MultiPolygon, LineString, MultiLineString)):
                boxes.append(_bounds_to_px(inv, g.bounds))
            else:
                raise PromptError(f"{where}: cannot use a {g.geom_type} as a prompt (use points, lines or polygons)")
        box = None
        if boxes:
            b = np.array(boxes)
            box = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        if points and not any(labels):
            raise PromptError(f"prompt {pid!r}: has only negative (background) points; give at least one positive point")
        label = row[label_column] if label_column is not None else None
        label = label.item() if isinstance(label, np.generic) else label
        attrs = {c: _py(row[c]) for c in carried}
        out.append(Prompt(pid, box, tuple(points), tuple(labels), label, attrs))
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _to_px(inv: Any, x: float, y: float) -> tuple[float, float]:
    c, r = inv * (x, y)
    return float(c), float(r)


def _bounds_to_px(inv: Any, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bounds
    corners = [inv * (x, y) for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    cs = [c for c, _ in corners]
    rs = [r for _, r in corners]
    return float(min(cs)), float(min(rs)), float(max(cs)), float(max(rs))


def _same_crs(a: Any, b: Any) -> bool:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(a) == CRS.from_user_input(b)
    except (CRSError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# windows


def grow_box(box: tuple[float, float, float, float], fraction: float) -> tuple[float, float, float, float]:
    """``box`` grown by ``fraction`` of its width / height on each side."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _clip_extent(ext: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float] | None:
    x0, y0, x1, y1 = max(ext[0], 0.0), max(ext[1], 0.0), min(ext[2], float(width)), min(ext[3], float(height))
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def context_side(p: Prompt, cfg: PromptConfig) -> int:
    """Side (px) of the square context window a prompt wants (scene pixels)."""
    x0, y0, x1, y1 = p.extent()
    long_side = max(x1 - x0, y1 - y0)
    if p.box is None:
        return max(math.ceil(cfg.context * long_side), cfg.point_window_px, math.ceil(long_side) + 2)
    return max(math.ceil(cfg.context * long_side), cfg.min_window_px, math.ceil(long_side) + 2)


def _centred_window(ext: tuple[float, float, float, float], side: int, width: int, height: int) -> PixelWindow:
    """A ``side`` x ``side`` window centred on ``ext``, shifted inside the scene (clipped if larger)."""
    cx, cy = (ext[0] + ext[2]) / 2.0, (ext[1] + ext[3]) / 2.0

    def axis(c: float, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        off = math.floor(c - side / 2.0)
        return min(max(off, 0), size - side), side

    c0, w = axis(cx, width)
    r0, h = axis(cy, height)
    return PixelWindow(c0, r0, w, h)


def _contains(win: PixelWindow, ext: tuple[float, float, float, float]) -> bool:
    return win.col_off <= ext[0] and win.row_off <= ext[1] and ext[2] <= win.col_end and ext[3] <= win.row_end


def plan_windows(prompts: Sequence[Prompt], width: int, height: int, cfg: PromptConfig, chip_size_px: int) -> list[tuple[PixelWindow, list[int]]]:
    """Group prompts (inside the scene) into windows: [(window, [prompt index, ...]), ...].

    Scene pixel frame. ``chip_size_px`` > 0: a prompt goes to the grid chip
    whose core holds its centre when a square centred on it of side
    max(prompt side + 2, min(context side (:func:`context_side`), chip / 2))
    lies inside that chip; otherwise (near a chip edge, or larger than a chip)
    it gets its own window of side max(context side, chip size) centred on it.
    0: every prompt gets its own context window. Every window contains the
    whole extent (box and points) of each of its prompts.
    """
    from geosam.tiling import chip_grid

    by_window: dict[PixelWindow, list[int]] = {}
    cores: list[tuple[PixelWindow, PixelWindow]] = []
    if chip_size_px > 0:
        cores = [(win, core) for _, _, win, core in chip_grid(width, height, chip_size_px, cfg.overlap_px)]
    for i, p in enumerate(prompts):
        ext = _clip_extent(p.extent(), width, height)
        if ext is None:
            raise ValueError(f"prompt {p.prompt_id!r} lies outside the scene")
        side = context_side(p, cfg)
        want = _centred_window(ext, side, width, height)
        chosen = None
        if cores:
            cx = min(max((ext[0] + ext[2]) / 2.0, 0.0), width - 1e-6)
            cy = min(max((ext[1] + ext[3]) / 2.0, 0.0), height - 1e-6)
            # context a chip must give: the whole prompt plus a margin, the margin capped at half a chip
            long_side = math.ceil(max(ext[2] - ext[0], ext[3] - ext[1]))
            need = _centred_window(ext, max(long_side + 2, min(side, chip_size_px // 2)), width, height)
            for win, core in cores:
                if core.col_off <= cx < core.col_end and core.row_off <= cy < core.row_end:
                    ctx = (float(need.col_off), float(need.row_off), float(need.col_end), float(need.row_end))
                    if _contains(win, ctx) and _contains(win, ext):
                        chosen = win
                    break
            if chosen is None:
                chosen = _centred_window(ext, max(side, chip_size_px), width, height)
        else:
            chosen = want
        if not _contains(chosen, ext):  # cannot happen for a scene-clipped extent; guard the invariant
            raise AssertionError(f"window {chosen} does not contain prompt {p.prompt_id!r} {ext}")
        by_window.setdefault(chosen, []).append(i)
    return sorted(by_window.items(), key=lambda kv: (kv[0].row_off, kv[0].col_off, kv[0].width))


# ---------------------------------------------------------------------------
# the run


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
    **settings: Any,
):  # -> geopandas.GeoDataFrame
    """Segment one object per prompt; see the module docstring for inputs and output.

    scene: a raster path or open rasterio dataset.
    model: "litemedsam" (default, built in, offline; box prompts), a SAM hub id
        or local directory, or a loaded :class:`~geosam.models.SamBundle`.
    settings: any :class:`~geosam.config.PromptConfig` field, e.g.
        ``box_grow=0.1, context=2.5, chip_size_px=0, device="cpu", fill_value=255``.
    """
    import geopandas as gpd
    from rasterio.crs import CRS

    from geosam.io import ReadConfig, Scene
    from geosam.models import SamBundle, load_sam

    if model is not None and not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or PromptConfig()).with_overrides(**settings)
    t_start = time.perf_counter()
    read_cfg = ReadConfig(bands=cfg.bands, fill_value=cfg.fill_value, fill_tolerance=cfg.fill_tolerance,
                          stretch_percentiles=cfg.stretch_percentiles)
    with Scene(scene, read_cfg) as sc:
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
        plist = prompts_from_frame(frame, scene_crs, info.transform, prompt_crs=prompt_crs if isinstance(prompts, gpd.GeoDataFrame) else None,
                                   id_column=id_column, label_column=label_column,
                                   point_label_column=point_label_column, object_column=object_column)
        if cfg.box_grow:
            plist = [Prompt(p.prompt_id, grow_box(p.box, cfg.box_grow) if p.box else None, p.points, p.point_labels,
                            p.label, p.attrs) for p in plist]
        status: list[str] = ["ok"] * len(plist)
        for i, p in enumerate(plist):
            status[i] = _outside_status(p, info.width, info.height)
        n_out = sum(s == "outside" for s in status)
        if n_out == len(plist):
            x0, y0, x1, y1 = info.bounds
            raise PromptOutsideSceneError(
                f"{sc.path}: all {len(plist)} prompts lie outside the scene, which covers x {x0:.6g}..{x1:.6g}, "
                f"y {y0:.6g}..{y1:.6g} in {info.crs_name}; check the prompts' CRS (prompt_crs / --prompt-crs) "
                "and coordinate order (x = easting / longitude first)"
            )
        for i, p in enumerate(plist):
            if status[i] == "outside":
                _warn(f"{sc.path}: prompt {p.prompt_id!r} lies outside the scene; it gets an empty result")

        bundle = model if isinstance(model, SamBundle) else load_sam(cfg.model, device=cfg.device, dtype=cfg.dtype)
        box_only = not bundle.capabilities.point_prompts  # e.g. LiteMedSAM: one crop per box prompt
        if box_only and any(p.box is None for p, s in zip(plist, status) if s == "ok"):
            log.warning("model %r takes box prompts only: point prompts give poor masks with it; "
                        "use box prompts or a SAM checkpoint (--model)", bundle.name)
        chip = cfg.chip_size_px if cfg.chip_size_px is not None else (0 if box_only else 1024)
        inside = [i for i, s in enumerate(status) if s == "ok"]
        plan = plan_windows([plist[i] for i in inside], info.width, info.height, cfg, chip)
        geoms_px: list[Any] = [None] * len(plist)
        ious = np.full(len(plist), np.nan)
        for win, members in _progress(plan, cfg.progress):
            idx = [inside[m] for m in members]
            res = _segment_window(sc, bundle, win, [plist[i] for i in idx], cfg)
            for i, (st, g, iou) in zip(idx, res):
                status[i], geoms_px[i], ious[i] = st, g, iou
                if st == "invalid":
                    _warn(f"{sc.path}: prompt {plist[i].prompt_id!r} lies on invalid (nodata / fill) pixels; "
                          "it gets an empty result")
                elif st == "empty":
                    _warn(f"{sc.path}: prompt {plist[i].prompt_id!r}: the model found no object there")
        if not any(s in ("ok", "empty") for s in status):
            raise PromptOutsideSceneError(
                f"{sc.path}: none of the {len(plist)} prompts can be used: they lie outside the scene or on "
                "invalid (nodata / fill) pixels"
            )
        gdf = _to_frame(plist, status, geoms_px, ious, info.transform, info.crs_wkt, bundle.name)
        path = sc.path
    if cfg.to_crs:
        gdf = gdf.to_crs(cfg.to_crs)
    gdf.attrs["geosam"] = {
        "scene": path,
        "prompts": len(plist),
        "windows": len(plan),
        "chip_size_px": chip,
        "status_counts": {s: status.count(s) for s in sorted(set(status))},
        "seconds": time.perf_counter() - t_start,
    }
    log.info("%s: %d prompts in %d windows, %.1f s", path, len(plist), len(plan), gdf.attrs["geosam"]["seconds"])
    return gdf


def _warn(msg: str) -> None:
    log.warning(msg)
    warnings.warn(msg, PromptWarning, stacklevel=3)


def _progress(items: list[Any], enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="prompts", unit="window", leave=False)


def _outside_status(p: Prompt, width: int, height: int) -> str:
    """"outside" when no positive point and no part of the box lies in the scene."""
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            return "outside"
    pos = [pt for pt, lab in zip(p.points, p.point_labels) if lab == 1]
    if pos and not any(0 <= x < width and 0 <= y < height for x, y in pos):
        return "outside"
    return "ok"


def _segment_window(sc: Any, bundle: Any, win: PixelWindow, prompts: list[Prompt], cfg: PromptConfig) -> list[tuple[str, Any, float]]:
    """(status, pixel geometry or None, predicted IoU) per prompt of one window."""
    import torch

    from geosam.models import decode_prompts, encode, preprocess, to_model_frame, upsample_logits
    from geosam.stitch import mask_to_pixel_geometry

    data, valid = sc.read_window(win)
    results: list[tuple[str, Any, float] | None] = [None] * len(prompts)
    todo: list[int] = []
    for k, p in enumerate(prompts):
        if _on_invalid(p, win, valid):
            results[k] = ("invalid", None, float("nan"))
        else:
            todo.append(k)
    if not todo:
        return results  # type: ignore[return-value]
    image = sc.to_uint8(data, valid)
    pv, orig, resized = preprocess(bundle, [image])
    emb = encode(bundle, pv)
    shift = np.array([win.col_off, win.row_off], dtype=np.float64)
    # batch prompts of the same shape (number of points, with / without box)
    batches: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for k in todo:
        p = prompts[k]
        batches[(len(p.points), p.box is not None)].append(k)
    for (n_pts, has_box), ks in batches.items():
        multimask = cfg.multimask if cfg.multimask is not None else (n_pts == 1 and not has_box)
        pts = labs = bxs = None
        if n_pts:
            pts = np.array([[np.subtract(xy, shift) for xy in prompts[k].points] for k in ks], dtype=np.float32)
            pts = to_model_frame(pts, orig[0], resized[0])
            labs = np.array([prompts[k].point_labels for k in ks], dtype=np.int64)
        if has_box:
            bxs = np.array([np.subtract(prompts[k].box, np.tile(shift, 2)) for k in ks], dtype=np.float32)
            bxs = to_model_frame(bxs, orig[0], resized[0])
        logits, iou = decode_prompts(bundle, emb, points=pts, labels=labs, boxes=bxs, multimask=multimask)
        best = torch.argmax(iou, dim=1)
        sel = logits[torch.arange(len(ks)), best]
        sel_iou = iou[torch.arange(len(ks)), best]
        masks = upsample_logits(sel, bundle.input_size, resized[0], orig[0]) > cfg.mask_threshold
        masks_np = masks.cpu().numpy() & valid[None]
        for j, k in enumerate(ks):
            g = mask_to_pixel_geometry(masks_np[j], win.col_off, win.row_off)
            results[k] = ("ok" if g is not None else "empty", g, float(sel_iou[j]))
    return results  # type: ignore[return-value]


def _on_invalid(p: Prompt, win: PixelWindow, valid: np.ndarray) -> bool:
    """True when every positive point, or the whole box, lies on invalid pixels."""
    h, w = valid.shape
    if p.points:
        for (x, y), lab in zip(p.points, p.point_labels):
            c, r = math.floor(x) - win.col_off, math.floor(y) - win.row_off
            if lab == 1 and 0 <= c < w and 0 <= r < h and valid[r, c]:
                return False
        if p.box is None:
            return True
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        c0, r0 = max(math.floor(x0) - win.col_off, 0), max(math.floor(y0) - win.row_off, 0)
        c1, r1 = min(math.ceil(x1) - win.col_off, w), min(math.ceil(y1) - win.row_off, h)
        return not (c1 > c0 and r1 > r0 and valid[r0:r1, c0:c1].any())
    return True


def _to_frame(plist: list[Prompt], status: list[str], geoms_px: list[Any], ious: np.ndarray, transform: Any,
              crs_wkt: str, model_name: str):
    import geopandas as gpd
    from rasterio.crs import CRS
    from shapely.geometry import Polygon

    from geosam.stitch import area_m2, pixel_to_map

    geoms = [pixel_to_map(g, transform) if g is not None else Polygon() for g in geoms_px]
    areas = np.zeros(len(geoms))
    have = [i for i, g in enumerate(geoms) if not g.is_empty]
    if have:
        areas[have] = area_m2([geoms[i] for i in have], CRS.from_wkt(crs_wkt))
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
    data["status"] = status
    data["predicted_iou"] = ious
    data["area_m2"] = areas
    data["model"] = [model_name] * len(plist)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs_wkt), crs=crs_wkt)


__all__ = [
    "OUTPUT_COLUMNS",
    "Prompt",
    "PromptWarning",
    "context_side",
    "grow_box",
    "plan_windows",
    "prompts_from_frame",
    "prompts_to_frame",
    "segment_prompts",
]
