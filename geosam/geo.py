"""Georeferencing helpers: pixel <-> map coordinates, true areas, one CRS comparison.

Frames: **scene pixel coordinates** have x = column, y = row, origin at the
top-left corner of the top-left pixel, pixel edges on integers; **map
coordinates** are the scene CRS's, reached by the scene's affine transform.
"""

from __future__ import annotations

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


def area_m2(geoms: Sequence[Any], crs: Any) -> np.ndarray:
    """True areas in square metres of map-coordinate geometries.

    Geographic CRSs use geodesic areas on the CRS ellipsoid; projected CRSs use
    planar area scaled by the linear unit (e.g. US feet) to metres.
    """
    from pyproj import Geod

    if len(geoms) == 0:
        return np.zeros(0, dtype=np.float64)
    pcrs = to_pyproj(crs)
    if pcrs.is_geographic:
        ell = pcrs.ellipsoid
        geod = Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre) if ell is not None else Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=np.float64)
    factor = 1.0
    for ax in pcrs.axis_info:
        if ax.unit_conversion_factor:
            factor = ax.unit_conversion_factor
            break
    return np.asarray(shapely.area(np.asarray(geoms, dtype=object)), dtype=np.float64) * factor * factor


__all__ = ["area_m2", "map_bounds_to_pixels", "pixel_to_map", "same_crs", "to_pyproj"]
