"""Chips that could not be read (``skip_bad_chips``): their footprints and the objects they cut.

With ``skip_bad_chips=True`` a run goes on past unreadable chips. What is known
about each one is kept three ways:

* in the run statistics, ``gdf.attrs['geosam']['chips_failed']``: one dict per
  chip, ``{"chip_id", "window": {"col_off", "row_off", "width", "height"}`` (scene
  pixels), ``"bounds": [minx, miny, maxx, maxy]`` (map units, scene CRS, also in
  ``attrs['geosam']['chips_failed_crs']`` as WKT), ``"error"}``;
* in the output table: a boolean column ``complete``, False for objects whose
  pixels touch a failed chip's window (they may continue into it), True for the
  others. The column exists only when a chip failed, so the schema of a clean run
  does not change;
* next to a written vector file (`geosam.write.label_raster.write_vector`): a GeoJSON
  of the failed chips' footprints, ``<output>.failed_chips.geojson`` (in the
  scene CRS, with a ``crs`` member; QGIS opens it beside the output). A stale one
  from an earlier run of the same output is removed when no chip failed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosam.write.paths import atomic_output

if TYPE_CHECKING:
    from affine import Affine

    from geosam.assemble.result import ChipResult

log = logging.getLogger(__name__)

#: suffix added to an output's file name for the failed chips' footprints
SIDECAR_SUFFIX = ".failed_chips.geojson"


def failed_chip_entry(result: ChipResult, transform: Affine | None) -> dict[str, Any]:
    """The statistics entry of a failed chip; ``transform``: the scene's (pixel -> map), None: no bounds."""
    w = result.window
    entry: dict[str, Any] = {
        "chip_id": result.task_id,
        "window": {"col_off": w.col_off, "row_off": w.row_off, "width": w.width, "height": w.height},
        "bounds": None,
        "error": result.error,
    }
    if transform is not None:
        xs, ys = zip(*(transform @ (c, r) for c in (w.col_off, w.col_end) for r in (w.row_off, w.row_end)))
        entry["bounds"] = [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]
    return entry


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the failed chips of the output ``path`` are written."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_failed_chips(stats: dict[str, Any] | None, path: str | os.PathLike[str]) -> Path | None:
    """Write the failed chips' footprints beside the output ``path`` (atomically); return the sidecar's path.

    Without failed chips, removes a stale sidecar of ``path`` and returns None.
    """
    import geopandas as gpd
    from shapely.geometry import box

    target = sidecar_path(path)
    entries = [e for e in (stats or {}).get("chips_failed", []) if isinstance(e, dict)]
    if not entries:
        if target.is_file():
            log.info("%s: removing the failed chips of an earlier run", target)
            target.unlink()
        return None
    crs = (stats or {}).get("chips_failed_crs")
    geoms = [box(*e["bounds"]) if e.get("bounds") else None for e in entries]
    frame = gpd.GeoDataFrame(
        {"chip_id": [e["chip_id"] for e in entries],
         **{k: [e["window"][k] for e in entries] for k in ("col_off", "row_off", "width", "height")},
         "error": [e.get("error") or "" for e in entries]},
        geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    with atomic_output(target) as tmp:
        frame.to_file(tmp, driver="GeoJSON", engine="pyogrio")
    log.warning("%s: %d chips could not be read; their footprints are in %s", path, len(entries), target)
    return target


__all__ = ["SIDECAR_SUFFIX", "failed_chip_entry", "sidecar_path", "write_failed_chips"]
