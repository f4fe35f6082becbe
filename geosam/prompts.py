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
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geosam.config import PromptWindowConfig
from geosam.engine import ChipTask
from geosam.errors import PromptError, PromptOutsideSceneError
from geosam.geo import same_crs
from geosam.io import Scene
from geosam.table import Record, geo_frame
from geosam.tiling import ChipSpec, plan_windows

if TYPE_CHECKING:
    import geopandas as gpd

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


def prompts_to_frame(items: Sequence[Any], crs: Any) -> gpd.GeoDataFrame:
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


def _box_geometry(v: Any, where: str) -> Any:
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
    elif prompt_crs is not None and not same_crs(gdf.crs, prompt_crs):
        raise PromptError(f"the prompts have CRS {gdf.crs.to_string()} but prompt_crs={prompt_crs!r}; drop one of them")
    geoms = gdf.geometry.to_crs(scene_crs) if not same_crs(gdf.crs, scene_crs) else gdf.geometry
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


# ---------------------------------------------------------------------------
# windows


def grow_box(box: tuple[float, float, float, float], fraction: float) -> tuple[float, float, float, float]:
    """``box`` grown by ``fraction`` of its width / height on each side."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


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
    when it has none, with a warning), then ``points`` and ``boxes`` (in ``prompt_crs``,
    default the scene's), reprojected to the file's CRS. Raises :class:`PromptError`
    naming the file when it cannot be read, and when there is no prompt at all.
    """
    import geopandas as gpd
    import pandas as pd

    from geosam.io import SceneInfo, open_raster

    with open_raster(scene) as ds:
        scene_crs = SceneInfo.from_dataset(ds).crs_wkt

    frames = []
    if prompts_file:
        try:
            f = gpd.read_file(prompts_file, layer=layer)
        except Exception as exc:
            raise PromptError(f"{prompts_file}: cannot read prompts ({exc})") from exc
        if f.crs is None:
            if prompt_crs is None:
                warn(f"{prompts_file} has no CRS; assuming the scene's")
            f = f.set_crs(prompt_crs if prompt_crs is not None else scene_crs)
        frames.append(f)
    items = [tuple(p) for p in points] + [tuple(b) for b in boxes]
    if items:
        frames.append(prompts_to_frame(items, prompt_crs if prompt_crs is not None else scene_crs))
    if not frames:
        raise PromptError("no prompts given: use a prompts file, points or boxes")
    if len(frames) == 1:
        return frames[0]
    target = frames[0].crs
    return gpd.GeoDataFrame(pd.concat([f.to_crs(target) for f in frames], ignore_index=True), crs=target)


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
                               point_label_column=point_label_column, object_column=object_column)
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
    """One chip task per window of :func:`geosam.tiling.plan_windows`, carrying its prompts (``ok`` ones only)."""
    info = sc.info
    inside = [i for i, s in enumerate(status) if s == "ok"]
    plan = plan_windows([plist[i] for i in inside], info.width, info.height, cfg, chip_size_px, overlap_px)
    tasks = []
    for n, (win, members) in enumerate(plan):
        spec = ChipSpec(path=sc.path, row=n, col=0, window=win, core=win, scene_width=info.width,
                        scene_height=info.height, transform=info.transform * Affine.translation(win.col_off, win.row_off),
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
    """"outside" when no positive point and no part of the box lies in the scene."""
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


__all__ = [
    "OUTPUT_COLUMNS",
    "Prompt",
    "PromptWarning",
    "gather_prompts",
    "grow_box",
    "prompt_tasks",
    "prompts_frame",
    "prompts_from_frame",
    "prompts_to_frame",
    "report_statuses",
    "resolve_prompts",
]
