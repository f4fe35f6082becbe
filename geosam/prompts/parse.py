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
    "negative" (every spelling of `geosam.prompts.labels`): a foreground or
    background point (default foreground);
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
nothing); if no prompt can be used at all, `PromptOutsideSceneError`.

Windows (scene pixel frame): see `geosam.config.PromptConfig` and
`plan_windows`. One image embedding serves every prompt of a window; a
window always contains its prompts' boxes whole.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geosam.errors import PromptError, PromptOutsideSceneError
from geosam.geo import map_bounds_to_pixels, same_crs, wrap_longitudes
from geosam.prompts.checks import check_coordinates, check_ids
from geosam.prompts.from_list import OBJECT_COLUMN as _OBJ
from geosam.prompts.from_list import POINT_LABEL_COLUMN as _PLAB
from geosam.prompts.labels import parse_label

log = logging.getLogger(__name__)

#: columns geosam writes; input columns with these names are carried as ``input_<name>``
OUTPUT_COLUMNS = ("prompt_id", "prompt_type", "label", "status", "predicted_iou", "area_m2", "model")


class PromptWarning(UserWarning):
    """A prompt could not be used (outside the scene, on invalid pixels) or found nothing."""


def warn_prompt(msg: str) -> None:
    """Warn about prompts, once: a `PromptWarning` at the caller's caller (the log gets it at debug level).

    Args:
        msg: The message (names the scene or file and the prompt).
    """
    log.debug(msg)
    warnings.warn(msg, PromptWarning, stacklevel=3)


@dataclass(frozen=True)
class PromptColumns:
    """Which columns of a prompts GeoDataFrame say what (None: the default named below, when present).

    Attributes:
        id: The output ``prompt_id`` (default ``id``; else the row index).
        label: Copied to the output ``label`` (default: a column named ``label``).
        point_label: Marks points positive or negative (default ``point_label``; spellings in
            `geosam.prompts.labels`).
        object: Rows with the same value form one prompt (no default).
    """

    id: str | None = "id"
    label: str | None = None
    point_label: str | None = None
    object: str | None = None


@dataclass(frozen=True)
class Prompt:
    """One object to segment, in **scene pixel coordinates** (x = column, y = row, floats).

    Attributes:
        prompt_id: The output ``prompt_id``.
        box: (x0, y0, x1, y1), or None.
        points: ((x, y), ...).
        point_labels: One per point: 1 foreground, 0 background.
        label: The output ``label``.
        attrs: Input columns carried to the output.
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


def prompts_from_frame(
    gdf: Any,
    scene_crs: Any,
    transform: Any,
    *,
    prompt_crs: Any = None,
    columns: PromptColumns = PromptColumns(),
    source: str | None = None,
    scene_bounds: tuple[float, float, float, float] | None = None,
) -> list[Prompt]:
    """Prompts of a GeoDataFrame in scene pixel coordinates (see the module docstring).

    Rows with a null or empty geometry are skipped with one `PromptWarning` naming their prompt ids.

    Args:
        gdf: The prompts, one row per prompt (or per member of an ``object`` group).
        scene_crs: The scene's CRS (the prompts are reprojected to it).
        transform: The scene's affine transform (pixel -> map).
        prompt_crs: The CRS of a frame without one.
        columns: Which columns say what.
        scene_bounds: A geographic scene's bounds (west, south, east, north); prompts 360 deg off in
            longitude (-179.95 for a scene spanning 179.9..180.1) are moved onto it (`geosam.geo.wrap_longitudes`).
        source: The prompts' file, named in messages (default ``gdf.attrs["geosam_source"]``, set by
            `geosam.prompts.gather.gather_prompts`).

    Returns:
        The prompts, in order of their first row.

    Raises:
        PromptError: No prompt is left, a column named in ``columns`` is missing, or coordinates cannot be
            in the prompts' CRS (`check_coordinates`).
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
    resolved = _resolve_columns([c for c in gdf.columns if c != gdf.geometry.name], columns)
    if resolved.id is not None and resolved.object is None:
        check_ids(gdf[resolved.id], resolved.id, where_all)
    inv = ~transform
    out: list[Prompt] = []
    unusable: list[Any] = []  # prompt ids without any usable geometry
    for key, members in _group_rows(gdf, resolved.object):
        pid, prompt = _build_prompt(gdf, geoms, key, members, resolved, inv)
        if prompt is None:
            unusable.append(pid)
        else:
            out.append(prompt)
    if unusable:
        shown = ", ".join(repr(u) for u in unusable[:20]) + (", ..." if len(unusable) > 20 else "")
        if not out:
            raise PromptError(f"{where_all}: no prompt has a geometry: all {len(unusable)} are null or empty "
                              f"(prompt ids {shown})")
        warn_prompt(f"{where_all}: skipped {len(unusable)} prompt(s) with a null or empty geometry: prompt ids {shown}")
    return out


@dataclass(frozen=True)
class _Columns:
    """The prompt frame's columns that `prompts_from_frame` reads (None: absent)."""

    id: str | None
    label: str | None
    point_label: str | None
    object: str | None
    carried: tuple[str, ...]  # copied to the output as the prompts' attrs


def _resolve_columns(cols: list[str], given: PromptColumns) -> _Columns:
    """Check the named columns exist among ``cols`` and fill in the default ones that do."""
    id_column, label_column, point_label_column, object_column = given.id, given.label, given.point_label, given.object
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
        plab = int(parse_label(gdf[columns.point_label].iloc[pos], where)) if columns.point_label else 1
        if isinstance(g, (Point, MultiPoint)):
            pts = [g] if isinstance(g, Point) else list(g.geoms)
            points += [_to_px(inv, p.x, p.y) for p in pts]
            labels += [plab] * len(pts)
        elif isinstance(g, (Polygon, MultiPolygon, LineString, MultiLineString)):
            boxes.append(map_bounds_to_pixels(inv, g.bounds))
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


def report_statuses(path: str, plist: Sequence[Prompt], status: Sequence[str]) -> None:
    """Warn about prompts on invalid pixels or without a mask; raise if no prompt could be used.

    Args:
        path: The scene, named in the messages.
        plist: The run's prompts.
        status: Their final statuses.

    Raises:
        PromptOutsideSceneError: No prompt could be used.
    """
    for p, st in zip(plist, status):
        if st == "invalid":
            warn_prompt(f"{path}: prompt {p.prompt_id!r} lies on invalid (nodata / fill) pixels; it gets an empty result")
        elif st == "empty":
            warn_prompt(f"{path}: prompt {p.prompt_id!r}: the model found no object there")
    if not any(s in ("ok", "empty") for s in status):
        raise PromptOutsideSceneError(
            f"{path}: none of the {len(plist)} prompts can be used: they lie outside the scene or on "
            "invalid (nodata / fill) pixels"
        )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _to_px(inv: Any, x: float, y: float) -> tuple[float, float]:
    c, r = inv @ (x, y)
    return float(c), float(r)


# ---------------------------------------------------------------------------
# windows


def grow_box(box: tuple[float, float, float, float], fraction: float) -> tuple[float, float, float, float]:
    """A box grown on each side.

    Args:
        box: (x0, y0, x1, y1).
        fraction: Of the box's width / height, added on each side.

    Returns:
        The grown box.
    """
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


__all__ = [
    "OUTPUT_COLUMNS",
    "Prompt",
    "PromptColumns",
    "PromptWarning",
    "grow_box",
    "prompts_from_frame",
    "report_statuses",
    "warn_prompt",
]
