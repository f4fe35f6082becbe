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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geosam.errors import PromptError
from geosam.geo import same_crs, wrap_longitudes
from geosam.prompts.from_list import OBJECT_COLUMN as _OBJ
from geosam.prompts.from_list import POINT_LABEL_COLUMN as _PLAB
from geosam.prompts.from_list import prompts_to_frame  # re-exported: part of this module's API

log = logging.getLogger(__name__)

#: columns geosam writes; input columns with these names are carried as ``input_<name>``
OUTPUT_COLUMNS = ("prompt_id", "prompt_type", "label", "status", "predicted_iou", "area_m2", "model")
_POSITIVE = {"1", "true", "t", "yes", "y", "positive", "pos", "fg", "foreground", "+", "include", "in"}
_NEGATIVE = {"0", "false", "f", "no", "n", "negative", "neg", "bg", "background", "-", "exclude", "out"}


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
    source: str | None = None,
    scene_bounds: tuple[float, float, float, float] | None = None,
) -> list[Prompt]:
    """Prompts of a GeoDataFrame in scene pixel coordinates (see the module docstring).

    transform: the scene's affine transform (pixel -> map). source: the prompts'
    file, named in messages (default ``gdf.attrs["geosam_source"]``, set by
    :func:`geosam.modes.prompted.gather_prompts`). Rows with a null or empty geometry
    are skipped with one :class:`PromptWarning` naming their prompt ids; if no
    prompt is left, :class:`PromptError`. Coordinates that cannot be in the
    prompts' CRS (:func:`check_coordinates`) raise :class:`PromptError`.
    ``scene_bounds``: a geographic scene's bounds (west, south, east, north); prompts 360 deg off in
    longitude (-179.95 for a scene spanning 179.9..180.1) are moved onto it (`geosam.geo.wrap_longitudes`).
    """
    where_all = source or gdf.attrs.get("geosam_source") or "the prompts"
    if gdf.crs is None:
        gdf = gdf.set_crs(prompt_crs if prompt_crs is not None else scene_crs, allow_override=True)
    elif prompt_crs is not None and not same_crs(gdf.crs, prompt_crs):
        raise PromptError(f"{where_all}: the prompts have CRS {gdf.crs.to_string()} but prompt_crs={prompt_crs!r}; "
                          "drop one of them")
    check_coordinates(gdf, where_all)
    geoms = gdf.geometry.to_crs(scene_crs) if not same_crs(gdf.crs, scene_crs) else gdf.geometry
    if scene_bounds is not None:
        geoms = geoms.__class__(wrap_longitudes(np.asarray(geoms.values, dtype=object), scene_bounds[0],
                                                scene_bounds[2]), index=geoms.index, crs=geoms.crs)
    columns = _resolve_columns([c for c in gdf.columns if c != gdf.geometry.name], id_column=id_column,
                               label_column=label_column, point_label_column=point_label_column,
                               object_column=object_column)
    if columns.id is not None and columns.object is None:
        _check_ids(gdf[columns.id], columns.id, where_all)
    inv = ~transform
    out: list[Prompt] = []
    unusable: list[Any] = []  # prompt ids without any usable geometry
    for key, members in _group_rows(gdf, columns.object):
        pid, prompt = _build_prompt(gdf, geoms, key, members, columns, inv)
        if prompt is None:
            unusable.append(pid)
        else:
            out.append(prompt)
    if unusable:
        _report_unusable(unusable, bool(out), where_all)
    return out


@dataclass(frozen=True)
class _Columns:
    """The prompt frame's columns that :func:`prompts_from_frame` reads (None: absent)."""

    id: str | None
    label: str | None
    point_label: str | None
    object: str | None
    carried: tuple[str, ...]  # copied to the output as the prompts' attrs


def _resolve_columns(cols: list[str], *, id_column: str | None, label_column: str | None,
                     point_label_column: str | None, object_column: str | None) -> _Columns:
    """Check the named columns exist among ``cols`` and fill in the default ones that do."""
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
        if id_column != "id":  # the default name may be absent (prompts numbered by row); any other must exist
            raise PromptError(f"id_column={id_column!r} is not a column of the prompts (columns: {cols})")
        id_column = None
    internal = {_OBJ, _PLAB, id_column, object_column, point_label_column}
    carried = tuple(c for c in cols if c not in internal)
    return _Columns(id_column, label_column, point_label_column, object_column, carried)


def _group_rows(gdf: Any, object_column: str | None) -> list[tuple[Any, list[int]]]:
    """(key, row positions) of every prompt in order of first row; without ``object_column`` one row each."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for pos in range(len(gdf)):
        key = gdf[object_column].iloc[pos] if object_column is not None else ("__row", pos)
        groups[key].append(pos)
    return list(groups.items())


def _prompt_id(gdf: Any, key: Any, first: int, columns: _Columns) -> Any:
    """The prompt id of group ``key``: the object column's value, the id column, or the row index."""
    row = gdf.iloc[first]
    if columns.object is not None and columns.object != _OBJ:
        pid = key
    elif columns.id is not None and not _missing(row[columns.id]):
        pid = row[columns.id]
    elif columns.object == _OBJ:
        pid = int(key)
    else:
        pid = gdf.index[first]
    return _py(pid)


def _build_prompt(gdf: Any, geoms: Any, key: Any, members: list[int], columns: _Columns,
                  inv: Any) -> tuple[Any, Prompt | None]:
    """(prompt id, the Prompt of rows ``members``, or None when none has a usable geometry).

    geoms: the frame's geometries in the scene CRS; inv: map -> scene pixel transform.
    """
    from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

    pid = _prompt_id(gdf, key, members[0], columns)
    where = f"prompt {pid!r}"
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    for pos in members:
        g = geoms.iloc[pos]
        if g is None or g.is_empty:
            continue
        plab = _parse_point_label(gdf[columns.point_label].iloc[pos], where) if columns.point_label else 1
        if isinstance(g, (Point, MultiPoint)):
            pts = [g] if isinstance(g, Point) else list(g.geoms)
            points += [_to_px(inv, p.x, p.y) for p in pts]
            labels += [plab] * len(pts)
        elif isinstance(g, (Polygon, MultiPolygon, LineString, MultiLineString)):
            boxes.append(_bounds_to_px(inv, g.bounds))
        else:
            raise PromptError(f"{where}: cannot use a {g.geom_type} as a prompt (use points, lines or polygons)")
    if not points and not boxes:
        return pid, None
    box = None
    if boxes:
        b = np.array(boxes)
        box = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
    if points and not any(labels):
        raise PromptError(f"{where}: has only negative (background) points; give at least one positive point")
    row = gdf.iloc[members[0]]
    label = _py(row[columns.label]) if columns.label is not None else None
    attrs = {c: _py(row[c]) for c in columns.carried}
    return pid, Prompt(pid, box, tuple(points), tuple(labels), label, attrs)


def _report_unusable(unusable: list[Any], any_usable: bool, where_all: str) -> None:
    """Warn about prompts without a usable geometry, or raise when no prompt has one."""
    shown = ", ".join(repr(u) for u in unusable[:20]) + (", ..." if len(unusable) > 20 else "")
    if not any_usable:
        raise PromptError(f"{where_all}: no prompt has a geometry: all {len(unusable)} are null or empty "
                          f"(prompt ids {shown})")
    msg = f"{where_all}: skipped {len(unusable)} prompt(s) with a null or empty geometry: prompt ids {shown}"
    log.debug(msg)
    warnings.warn(msg, PromptWarning, stacklevel=3)


def check_coordinates(gdf: Any, where: str) -> None:
    """Raise :class:`PromptError` when coordinates cannot be in the frame's (geographic) CRS.

    A GeoJSON without a ``crs`` member is WGS84 by definition (RFC 7946), so a file
    of projected coordinates (metres) without one is read as longitude / latitude:
    any coordinate outside longitude -180..360, latitude -90..90 is caught here,
    before it becomes NaN in reprojection. A prompt that cannot be reprojected to
    the scene's CRS (non-finite coordinates) lies "outside" the scene.
    """
    crs = gdf.crs
    if crs is None or not crs.is_geographic:
        return
    geom = gdf.geometry
    usable = ~(geom.isna() | geom.is_empty)
    if not usable.any():
        return
    b = geom[usable].bounds
    bad = (b["minx"] < -180) | (b["maxx"] > 360) | (b["miny"] < -90) | (b["maxy"] > 90)
    if bad.any():
        row = b.index[bad.to_numpy().argmax()]
        x, y = float(b.loc[row, "minx"]), float(b.loc[row, "miny"])
        raise PromptError(
            f"{where}: coordinate ({x:.10g}, {y:.10g}) of row {_py(row)!r} is not a longitude / latitude, but the "
            f"prompts are read in {crs.name} (a GeoJSON without a 'crs' member is WGS84 by definition); "
            "pass --prompt-crs (prompt_crs=...) with the CRS of the coordinates, e.g. the scene's EPSG code"
        )


def _check_ids(ids: Any, column: str, where: str) -> None:
    """PromptError naming the column and rows when a prompt id is missing (NaN, None): a row number in its
    place could collide with a real id."""
    import pandas as pd

    missing = [int(pos) for pos in np.flatnonzero(pd.isna(np.asarray(ids, dtype=object)))]
    if missing:
        rows = ", ".join(str(r) for r in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise PromptError(
            f"{where}: id column {column!r} has no value in row(s) {rows}; give every prompt an id, or choose "
            "another column (--id-column / id_column)"
        )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _to_px(inv: Any, x: float, y: float) -> tuple[float, float]:
    c, r = inv @ (x, y)
    return float(c), float(r)


def _bounds_to_px(inv: Any, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bounds
    corners = [inv @ (x, y) for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
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


__all__ = [
    "OUTPUT_COLUMNS",
    "Prompt",
    "PromptWarning",
    "check_coordinates",
    "grow_box",
    "prompts_from_frame",
    "prompts_to_frame",
]
