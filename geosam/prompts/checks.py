"""Checks of a prompt frame before any pixel or model: coordinates that fit its CRS, an id for every prompt."""

from __future__ import annotations

from typing import Any

import numpy as np

from geosam.errors import PromptError


def check_coordinates(gdf: Any, where: str) -> None:
    """Refuse coordinates that cannot be in the frame's (geographic) CRS.

    A GeoJSON without a ``crs`` member is WGS84 by definition (RFC 7946), so a file
    of projected coordinates (metres) without one is read as longitude / latitude:
    any coordinate outside longitude -180..360, latitude -90..90 is caught here,
    before it becomes NaN in reprojection. A prompt that cannot be reprojected to
    the scene's CRS (non-finite coordinates) lies "outside" the scene.

    Args:
        gdf: The prompts.
        where: The file or frame, named in the error.

    Raises:
        PromptError: A coordinate outside longitude -180..360, latitude -90..90 in a geographic CRS.
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
            f"{where}: coordinate ({x:.10g}, {y:.10g}) of row {row.item() if isinstance(row, np.generic) else row!r} is not a longitude / latitude, but the "
            f"prompts are read in {crs.name} (a GeoJSON without a 'crs' member is WGS84 by definition); "
            "pass --prompt-crs (prompt_crs=...) with the CRS of the coordinates, e.g. the scene's EPSG code"
        )


def check_ids(ids: Any, column: str, where: str) -> None:
    """Refuse prompt ids that are missing (NaN, None): a row number in their place could collide with a real id.

    Args:
        ids: The id column's values.
        column: The id column's name.
        where: The file or frame, named in the error.

    Raises:
        PromptError: Naming the column and the rows without an id.
    """
    import pandas as pd

    missing = [int(pos) for pos in np.flatnonzero(pd.isna(np.asarray(ids, dtype=object)))]
    if missing:
        rows = ", ".join(str(r) for r in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise PromptError(
            f"{where}: id column {column!r} has no value in row(s) {rows}; give every prompt an id, or choose "
            "another column (--id-column / id_column)"
        )


__all__ = ["check_coordinates", "check_ids"]
