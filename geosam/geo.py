"""Georeferencing helpers: pixel <-> map coordinates, true areas, one CRS comparison.

Frames: **scene pixel coordinates** have x = column, y = row, origin at the
top-left corner of the top-left pixel, pixel edges on integers; **map
coordinates** are the scene CRS's, reached by the scene's affine transform.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from affine import Affine


def pixel_to_map(geom: Any, transform: Affine) -> Any:
    """A geometry in scene pixel coordinates -> map coordinates by the scene's affine ``transform``."""
    t = transform
    return shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def map_bounds_to_pixels(inverse: Affine, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Map-coordinate bounds -> the scene pixel box holding all four corners.

    Args:
        inverse: The scene's inverse transform (map -> pixel), ``~transform``.
        bounds: (minx, miny, maxx, maxy) in map coordinates.

    Returns:
        (x0, y0, x1, y1) in scene pixel coordinates (x = column), floats.
    """
    x0, y0, x1, y1 = bounds
    corners = [inverse @ (x, y) for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    cs = [float(c) for c, _ in corners]
    rs = [float(r) for _, r in corners]
    return min(cs), min(rs), max(cs), max(rs)


def to_pyproj(crs: Any) -> Any:
    """A pyproj CRS from a pyproj / rasterio CRS, WKT, EPSG code or any user input."""
    from pyproj import CRS

    if hasattr(crs, "to_wkt") and not isinstance(crs, CRS):
        crs = crs.to_wkt()
    return CRS.from_user_input(crs)


def crs_label(crs: Any) -> str:
    """A short name of a CRS for messages: ``EPSG:n`` when it has a code, else its name (never a WKT dump)."""
    try:
        pcrs = to_pyproj(crs)
    except Exception:  # noqa: BLE001 - any input: a message must not fail
        return str(crs)[:60]
    epsg = pcrs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(pcrs.name)


def wrap_longitudes(geoms: np.ndarray, west: float, east: float) -> np.ndarray:
    """Geometries (lon, lat) moved by +-360 deg where that puts their centre inside ``west..east`` and it was
    outside (a scene across the antimeridian, e.g. 179.9..180.1, and a point at -179.95)."""
    out = np.array(geoms, dtype=object)
    for k, g in enumerate(out):
        if g is None or g.is_empty:
            continue
        x = g.centroid.x
        if west <= x <= east:
            continue
        for shift in (360.0, -360.0):
            if west <= x + shift <= east:
                out[k] = shapely.affinity.translate(g, xoff=shift)
                break
    return out


def same_crs(a: Any, b: Any) -> bool:
    """Whether two CRSs (pyproj, rasterio, WKT, 'EPSG:n', ...) are the same, ignoring axis order.

    An unparsable CRS is never the same as anything (the caller reprojects and pyproj complains).
    """
    from pyproj.exceptions import CRSError

    if a is None or b is None:
        return a is None and b is None
    try:
        return bool(to_pyproj(a).equals(to_pyproj(b), ignore_axis_order=True))
    except (CRSError, TypeError, ValueError):
        return False


#: Where the projection's areal scale is within this of 1, the map-plane area is kept (it is then within 0.1 %
#: of the true area, and it is the area a GIS shows in that CRS).
PLANAR_TOLERANCE = 1e-3
#: Geometries wider or taller than this (metres) get the geodesic area of their densified outline instead of
#: the map-plane area scaled at their centroid (the scale may vary across them).
LARGE_GEOMETRY_M = 10_000.0
#: Densify large outlines to edges of at most this (metres) before the geodesic area.
DENSIFY_M = 500.0


def area_m2(geoms: Sequence[Any], crs: Any) -> np.ndarray:
    """True (ellipsoidal) areas in square metres of map-coordinate geometries, within 0.1 % in any CRS.

    Geographic CRSs: geodesic areas on the CRS ellipsoid. Projected CRSs: the map-plane area (in the
    CRS's linear unit, converted to metres), divided by the projection's areal scale at the centre of
    the geometry's bounding box where that scale differs from 1 by more than ``PLANAR_TOLERANCE`` -- it is 1 in an
    equal-area projection, 0.9992..1.002 across a UTM zone, 0.993 in polar stereographic at 70 deg,
    4 in Web Mercator at 60 deg -- computed from the Jacobian of the projection there
    (`areal_scale`). Geometries larger than ``LARGE_GEOMETRY_M`` get the geodesic
    area of their outline (densified to ``DENSIFY_M``) in the CRS's geographic CRS.
    """
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.float64)
    pcrs = _parsed(crs) if isinstance(crs, str) else to_pyproj(crs)
    arr = np.asarray(geoms, dtype=object)
    if pcrs.is_geographic:
        return _geodesic(arr, pcrs, None)
    factor = _unit_m(pcrs)
    out = np.asarray(shapely.area(arr), dtype=np.float64) * factor * factor
    have = ~(shapely.is_empty(arr) | shapely.is_missing(arr))
    if not have.any():
        return out
    b = shapely.bounds(arr)
    cx, cy = (b[have, 0] + b[have, 2]) / 2, (b[have, 1] + b[have, 3]) / 2
    gx, gy = np.meshgrid(np.linspace(cx.min(), cx.max(), 3), np.linspace(cy.min(), cy.max(), 3))
    if np.all(np.abs(areal_scale(pcrs, gx.ravel(), gy.ravel(), factor) - 1.0) <= PLANAR_TOLERANCE):
        return out  # the map-plane area holds over all of them (the scale is smooth): as a GIS shows it
    scale = np.ones(arr.size)
    scale[have] = areal_scale(pcrs, cx, cy, factor)
    scale[np.abs(scale - 1.0) <= PLANAR_TOLERANCE] = 1.0  # the map-plane area holds: keep it
    out = out / scale
    large = have & (scale != 1.0) & (np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * factor > LARGE_GEOMETRY_M)
    if large.any():
        out[large] = _geodesic(shapely.segmentize(arr[large], DENSIFY_M / factor), pcrs, pcrs.geodetic_crs)
    return out


def _unit_m(pcrs: Any) -> float:
    """Metres per unit of the CRS's first axis with a unit (1 when none is declared)."""
    for ax in pcrs.axis_info:
        if ax.unit_conversion_factor:
            return float(ax.unit_conversion_factor)
    return 1.0


def _geod(pcrs: Any) -> Any:
    from pyproj import Geod

    ell = pcrs.ellipsoid
    return Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre) if ell is not None else Geod(ellps="WGS84")


def _geodesic(arr: np.ndarray, pcrs: Any, geographic: Any) -> np.ndarray:
    """Geodesic areas (m2) of ``arr``; ``geographic``: reproject from ``pcrs`` to it first (lon/lat order)."""
    from pyproj import Transformer

    if geographic is not None:
        tr = Transformer.from_crs(pcrs, geographic, always_xy=True)
        arr = shapely.transform(arr, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        pcrs = geographic
    geod = _geod(pcrs)  # coordinates in GIS order (x = longitude), as GDAL and geosam hold them
    # rings oriented first: pyproj sums signed ring areas, so a hole wound like its shell would add
    arr = shapely.orient_polygons(arr)
    out = np.zeros(arr.size, dtype=np.float64)
    for k, g in enumerate(arr):
        if g is not None and not g.is_empty:
            out[k] = abs(geod.geometry_area_perimeter(g)[0])
    return out


def areal_scale(pcrs: Any, x: np.ndarray, y: np.ndarray, unit_m: float = 1.0) -> np.ndarray:
    """The projection's areal scale (map area / true area) at map points ``x, y`` (CRS units).

    From the Jacobian of the inverse projection, by differences over 10 m: the true area
    element is ``M N cos(lat) |d(lon, lat) / d(x, y)|`` (M, N: the ellipsoid's meridional and
    prime-vertical radii of curvature). Points that do not project back (NaN) get scale 1.
    """
    tr = _to_geodetic(pcrs, threading.get_ident())
    geodetic = tr.target_crs
    h = 10.0 / unit_m
    n = np.size(x)
    xs = np.concatenate([x, x + h, x])
    ys = np.concatenate([y, y, y + h])
    lons, lats = (np.asarray(v).reshape(3, n) for v in tr.transform(xs, ys))  # one call: centre, east, north
    (lon, lon_e, lon_n), (lat, lat_e, lat_n) = lons, lats
    d = np.pi / 180.0
    dlon_dx = _wrap(lon_e - lon) * d / (h * unit_m)
    dlat_dx = (lat_e - lat) * d / (h * unit_m)
    dlon_dy = _wrap(lon_n - lon) * d / (h * unit_m)
    dlat_dy = (lat_n - lat) * d / (h * unit_m)
    jac = np.abs(dlon_dx * dlat_dy - dlon_dy * dlat_dx)  # rad2 per m2 of map
    phi = lat * d
    ell = geodetic.ellipsoid
    a = ell.semi_major_metre if ell is not None else 6378137.0
    e2 = 1.0 - (ell.semi_minor_metre / a) ** 2 if ell is not None else 0.00669437999014
    w = np.sqrt(1.0 - e2 * np.sin(phi) ** 2)
    m_radius, n_radius = a * (1.0 - e2) / w**3, a / w
    true_per_map = m_radius * n_radius * np.cos(phi) * jac  # true m2 per map m2
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1.0 / true_per_map
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


@functools.lru_cache(maxsize=32)
def _parsed(crs: str) -> Any:
    """`to_pyproj` of a CRS given as text (WKT, 'EPSG:n'), parsed once."""
    return to_pyproj(crs)


@functools.lru_cache(maxsize=32)
def _to_geodetic(pcrs: Any, thread: int) -> Any:
    """A transformer from ``pcrs`` to its geodetic CRS (lon, lat order), one per CRS and thread."""
    from pyproj import Transformer

    return Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)


def _wrap(dlon: np.ndarray) -> np.ndarray:
    """Longitude differences (deg) into -180..180 (a difference across the antimeridian)."""
    return (dlon + 180.0) % 360.0 - 180.0


__all__ = ["LARGE_GEOMETRY_M", "PLANAR_TOLERANCE", "area_m2", "areal_scale", "crs_label", "map_bounds_to_pixels", "pixel_to_map", "same_crs", "to_pyproj", "wrap_longitudes"]
