"""Point prompts from a table without geometry (a CSV of ``x,y`` or ``lon,lat`` columns).

GDAL reads a CSV as a table without geometry (unless told the coordinate columns), so a prompts
file such as::

    id,x,y
    1,359650.5,5350850.0

arrives as a plain DataFrame. `points_from_table` turns it into point prompts: the coordinate
columns are found by name (case-insensitive; ``x``/``y``, ``easting``/``northing``, ``lon``/``lat``,
``lng``, ``long``, ``longitude``/``latitude``), the other columns are kept (``id``, ``label`` ...), as
numbers where every value is one.
``lon``/``lat`` names mean WGS84 (EPSG:4326); ``x``/``y`` carry no CRS (``--prompt-crs`` gives it,
else the scene's is assumed, with a warning). A table without such columns is a
`geosam.errors.PromptError` naming the file and its columns.
"""

from __future__ import annotations

from typing import Any

from geosam.errors import PromptError

#: (x name, y name, CRS implied by the names or None), tried in order.
COORDINATE_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("x", "y", None),
    ("easting", "northing", None),
    ("lon", "lat", "EPSG:4326"),
    ("lng", "lat", "EPSG:4326"),
    ("long", "lat", "EPSG:4326"),
    ("longitude", "latitude", "EPSG:4326"),
)


def has_geometry(frame: Any) -> bool:
    """Whether ``frame`` is a GeoDataFrame with an active geometry column."""
    import geopandas as gpd

    if not isinstance(frame, gpd.GeoDataFrame):
        return False
    try:
        frame.geometry  # noqa: B018 - raises without an active geometry column
    except AttributeError:
        return False
    return True


def points_from_table(frame: Any, source: str) -> Any:
    """A GeoDataFrame of points from ``frame``'s coordinate columns (see the module docstring)."""
    import geopandas as gpd
    import pandas as pd

    lower = {str(c).lower(): c for c in frame.columns}
    for xname, yname, crs in COORDINATE_COLUMNS:
        if xname in lower and yname in lower:
            xcol, ycol = lower[xname], lower[yname]
            try:
                x = pd.to_numeric(frame[xcol], errors="raise")
                y = pd.to_numeric(frame[ycol], errors="raise")
            except (TypeError, ValueError) as exc:
                raise PromptError(f"{source}: columns {xcol!r} and {ycol!r} must hold numbers ({exc})") from exc
            rest = pd.DataFrame(frame).drop(columns=[xcol, ycol])
            for col in rest.columns:  # GDAL reads CSV values as text: numbers stay numbers (ids 1, 2 ...)
                try:
                    rest[col] = pd.to_numeric(rest[col], errors="raise")
                except (TypeError, ValueError):
                    pass
            return gpd.GeoDataFrame(rest, geometry=gpd.points_from_xy(x, y), crs=crs)
    cols = ", ".join(str(c) for c in frame.columns) or "none"
    raise PromptError(
        f"{source}: the prompts have no geometry and no coordinate columns (columns: {cols}); give a vector "
        "file, or a table with x,y (in --prompt-crs) or lon,lat columns"
    )


__all__ = ["COORDINATE_COLUMNS", "has_geometry", "points_from_table"]
