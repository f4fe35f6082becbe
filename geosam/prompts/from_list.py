"""List prompts -> a GeoDataFrame of prompts (see `geosam.prompts.parse` for the accepted forms).

Coordinates are in the prompts' CRS (map units); each list item becomes one row,
or one row per point of a ``"points"`` dict, tagged with its item index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.errors import PromptError

if TYPE_CHECKING:
    import geopandas as gpd

#: internal column: the list index of the prompt a row belongs to (rows of one prompt share it)
OBJECT_COLUMN = "__geosam_object"
#: internal column: a row's point label from a ``"labels"`` list (1 foreground, 0 background)
POINT_LABEL_COLUMN = "__geosam_point_label"
_OBJ = OBJECT_COLUMN
_PLAB = POINT_LABEL_COLUMN


def prompts_to_frame(items: Sequence[Any], crs: Any) -> gpd.GeoDataFrame:
    """A list of prompts as a GeoDataFrame.

    Args:
        items: Points, boxes, geometries or dicts (see `geosam.prompts.parse`).
        crs: The prompts' CRS.

    Returns:
        One row per prompt (per point of a ``"points"`` dict), in ``crs``.

    Raises:
        PromptError: An item that is none of those.
    """
    import geopandas as gpd

    rows = [row for i, item in enumerate(items) for row in _item_rows(item, i)]
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


def _item_rows(item: Any, i: int) -> list[dict[str, Any]]:
    """The frame rows of list prompt ``i``: one, or one per point of a ``"points"`` dict."""
    from shapely.geometry import Point
    from shapely.geometry.base import BaseGeometry

    where = f"prompt {i}"
    if isinstance(item, BaseGeometry):
        return [{"geometry": item, _OBJ: i}]
    if isinstance(item, dict):
        return _dict_rows(dict(item), i, where)
    if not isinstance(item, (tuple, list, np.ndarray)):
        raise PromptError(f"{where}: cannot use {type(item).__name__} as a prompt")
    vals = _numbers(item, None, where)
    if len(vals) == 2:
        return [{"geometry": Point(*vals), _OBJ: i}]
    if len(vals) == 4:
        return [{"geometry": _box_geometry(vals, where), _OBJ: i}]
    raise PromptError(f"{where}: a tuple prompt is (x, y) or (minx, miny, maxx, maxy), got {len(vals)} numbers")


def _dict_rows(d: dict[str, Any], i: int, where: str) -> list[dict[str, Any]]:
    """The frame rows of dict prompt ``d`` (consumed); its other keys become columns."""
    from shapely.geometry import Point

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
        return [{**d, "geometry": Point(p), _OBJ: i, _PLAB: lab} for p, lab in zip(pts, labels)]
    else:
        raise PromptError(f"{where}: a dict prompt needs 'point', 'x'/'y', 'points', 'box' or 'geometry', got {sorted(d)}")
    return [{**d, "geometry": geom, _OBJ: i}]


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


__all__ = ["OBJECT_COLUMN", "POINT_LABEL_COLUMN", "prompts_to_frame"]
