"""Finished objects -> records -> the output table (a GeoDataFrame, built by `geo_frame` in every mode).

Objects arrive in scene pixel coordinates (`geosam.assemble.stitch.StitchedObject`);
per-object hooks (index statistics) run while their pixels are at hand, then each
object is reduced to a compact `Record` in map coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.assemble.stitch import StitchedObject
from geosam.geo import area_m2, pixel_to_map

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine

    from geosam.read.scene import Scene

#: per-object attribute hook: (object with final pixel mask, open scene) -> extra columns
ObjectHook = Callable[[StitchedObject, "Scene"], dict[str, Any]]


@dataclass
class Record:
    """A finished object reduced to what the output needs (geometry in map coordinates).

    order: (row, column, pixel area) of its outline, for deterministic ids.
    key: the mode's identity of the object (prompt mode: the prompt's index), else None.
    """

    order: tuple[float, float, float]
    geom: Any
    predicted_iou: float
    stability_score: float
    n_chips: int
    label: str | None = None
    key: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def finish(objs: Sequence[StitchedObject], hooks: Sequence[ObjectHook], sc: Scene, transform: Affine) -> list[Record]:
    """Records of finished objects: hooks run on their final pixels, outlines go to map coordinates."""
    out = []
    for o in objs:
        if o.geom_px.is_empty:
            continue
        for hook in hooks:
            o.extra.update(hook(o, sc))
        b = o.geom_px.bounds
        labels = {a.get("label") for a in o.attrs} if o.attrs else {None}
        keys = {a.get("key") for a in o.attrs} if o.attrs else {None}
        out.append(Record((b[1], b[0], o.geom_px.area), pixel_to_map(o.geom_px, transform), o.predicted_iou,
                          o.stability_score, o.n_chips, labels.pop() if len(labels) == 1 else None,
                          keys.pop() if len(keys) == 1 else None, o.extra))
    return out


def geo_frame(data: dict[str, Any], geoms: Any, crs_wkt: str, area_at: int | None = None) -> gpd.GeoDataFrame:
    """The one builder of output tables: ``data`` columns, in order, and ``geoms`` in the scene CRS.

    Args:
        data: Column name -> values, in output order.
        geoms: Geometries (map coordinates, scene CRS), one per row.
        crs_wkt: The scene's CRS.
        area_at: Insert ``area_m2`` (m2, 0 for empty geometries) at this column position; None: ``data``
            already has it (or has none).

    Returns:
        The GeoDataFrame (geometry column ``geometry`` last).
    """
    import geopandas as gpd

    if area_at is not None:
        areas = np.zeros(len(geoms))
        have = [i for i, g in enumerate(geoms) if g is not None and not g.is_empty]
        if have:
            areas[have] = area_m2([geoms[i] for i in have], crs_wkt)
        items = list(data.items())
        items.insert(area_at, ("area_m2", areas))
        data = dict(items)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs_wkt), crs=crs_wkt)


__all__ = ["ObjectHook", "Record", "finish", "geo_frame"]
