"""Reproject objects so that they stay right: valid, and split at the antimeridian.

``GeoDataFrame.to_crs`` moves every vertex on its own. An object that crosses the antimeridian
(longitude 180) then gets vertices at +179.9 and -179.9 and becomes a polygon spanning the whole
world (in EPSG:4326, and in EPSG:3857 alike); an object near a pole may come out self-intersecting
(invalid). `reproject` does it right:

* objects whose longitude span (on WGS84) exceeds 180 deg, or that lie beyond +-180 (a geographic
  scene across the antimeridian), are unwrapped to one side, cut at 180 deg and the far part moved
  by 360 deg -- a MultiPolygon with one part on each side, as RFC 7946 (GeoJSON) asks -- then
  projected to the target;
* every result is made valid (``shapely.make_valid``, polygonal parts kept).

Frames: geometries in the frame's CRS in, in ``crs`` out (x = easting / longitude).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
import shapely.affinity

from geosam.geo import same_crs, to_pyproj

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)

_WORLD = shapely.box(-180.0, -90.0, 180.0, 90.0)


def _xy_fn(transformer: Any) -> Any:
    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return fn


def split_antimeridian(geom: Any) -> Any:
    """A lon/lat geometry across (or beyond) longitude +-180 as parts within -180..180 (see the module)."""
    minx, _, maxx, _ = geom.bounds
    if maxx - minx > 180.0:  # vertices on both sides of the antimeridian: put them on the east side
        geom = shapely.transform(geom, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]),
                                                                   xy[:, 1]]))
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        window = shapely.affinity.translate(_WORLD, xoff=-shift)
        part = shapely.intersection(geom, window)
        if not part.is_empty:
            parts.append(shapely.affinity.translate(part, xoff=shift))
    return shapely.union_all(parts) if len(parts) > 1 else (parts[0] if parts else geom)


def _polygonal(geom: Any) -> Any:
    """``make_valid``'s result without the lines and points it may add around polygons."""
    if geom is None or geom.geom_type in ("Polygon", "MultiPolygon") or geom.geom_type != "GeometryCollection":
        return geom
    polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else geom


def reproject_geometries(geoms: np.ndarray, src: Any, dst: Any) -> np.ndarray:
    """``geoms`` (object array, CRS ``src``) in CRS ``dst``: split at the antimeridian where needed, valid."""
    from pyproj import CRS, Transformer

    src_crs, dst_crs = to_pyproj(src), to_pyproj(dst)
    wgs84 = CRS.from_epsg(4326)
    out = np.empty(geoms.size, dtype=object)
    have = np.array([g is not None and not g.is_empty for g in geoms], dtype=bool)
    out[~have] = geoms[~have]
    if not have.any():
        return out
    lonlat = shapely.transform(geoms[have], _xy_fn(Transformer.from_crs(src_crs, wgs84, always_xy=True)))
    b = shapely.bounds(lonlat)
    across = (b[:, 2] - b[:, 0] > 180.0) | (b[:, 2] > 180.0) | (b[:, 0] < -180.0)
    direct = shapely.transform(geoms[have], _xy_fn(Transformer.from_crs(src_crs, dst_crs, always_xy=True)))
    if across.any():
        log.info("%d objects cross the antimeridian: split at 180 deg", int(across.sum()))
        to_dst = _xy_fn(Transformer.from_crs(wgs84, dst_crs, always_xy=True))
        direct[across] = [shapely.transform(split_antimeridian(g), to_dst) for g in lonlat[across]]
    bad = ~shapely.is_valid(direct)
    if bad.any():
        direct[bad] = [_polygonal(g) for g in shapely.make_valid(direct[bad])]
    out[have] = direct
    return out


def reproject(gdf: gpd.GeoDataFrame, crs: Any) -> gpd.GeoDataFrame:
    """``gdf`` in ``crs`` (see the module); a frame without a CRS, or already in ``crs``, is returned as it is."""
    import geopandas as gpd

    if gdf.crs is None or (same_crs(gdf.crs, crs) and not to_pyproj(crs).is_geographic):
        return gdf
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    new = reproject_geometries(geoms, gdf.crs, crs)
    return gdf.set_geometry(gpd.GeoSeries(new, index=gdf.index, crs=to_pyproj(crs)), crs=to_pyproj(crs))


__all__ = ["reproject", "reproject_geometries", "split_antimeridian"]
