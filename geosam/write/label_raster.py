"""Write results: vector files, instance-label rasters and quick-look PNGs.

* `write_vector` -- GeoJSON, GeoPackage, Shapefile or GeoParquet, chosen
  by the file extension; empty results still give a valid file with the
  columns and the CRS (GeoJSON cannot store columns without features).
* `write_label_raster` -- a uint32 instance-label GeoTIFF on the grid of
  the input scene, rasterized block by block so memory stays bounded.
* `render_overlay` (`geosam.write.overlay`) -- a PNG of the (decimated)
  scene with the polygon outlines drawn over it.

Every writer is atomic (`geosam.write.paths.atomic_output`): it writes
beside the target and renames on success, so a failed or killed write leaves
an earlier file as it was, and a folder at the path is never replaced. A
GeoPackage gets (or replaces) only its own layer; other layers are kept.

Frames: polygons are in the CRS of their GeoDataFrame (map units); raster
grids are those of the file named ``like_path`` / ``image_path``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geosam.errors import ExportError
from geosam.geo import same_crs
from geosam.write.overlay import distinct_colours, render_overlay
from geosam.write.paths import atomic_output, check_not_input, check_writable_path
from geosam.write.vector import (
    VECTOR_FORMATS,
    read_vector,
    shapefile_field_names,
    vector_format,
    write_frames,
    write_vector,
)

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)

#: Largest instance id a uint32 label raster can hold.
MAX_LABEL = np.iinfo(np.uint32).max


# ----------------------------------------------------------------------------
# helpers


def check_output_path(path: str | os.PathLike[str], kind: str = "vector") -> Path:
    """Fail early (before hours of segmentation) on an output path that cannot be written.

    kind: "vector" (extension must be a supported vector format), "raster" (.tif/.tiff) or
    "png". A folder at the path, or an unwritable folder, is an `ExportError`;
    creates nothing (see `geosam.write.paths.check_outputs` for inputs and existing files).
    """
    path = Path(path)
    if kind == "vector":
        vector_format(path)
    elif kind == "raster" and path.suffix.lower() not in (".tif", ".tiff"):
        raise ExportError(f"{path}: a label or index raster must be a GeoTIFF (.tif or .tiff)")
    elif kind == "png" and path.suffix.lower() != ".png":
        raise ExportError(f"{path}: the overlay is written as PNG; use a .png file name")
    return check_writable_path(path)


# ----------------------------------------------------------------------------
# label raster


def _label_ids(gdf: gpd.GeoDataFrame, id_column: str | None, path: Path) -> np.ndarray:
    """Instance ids as uint32, checked to be whole numbers in 1..2^32-1."""
    if id_column is None:
        return np.arange(1, len(gdf) + 1, dtype=np.uint32)
    if id_column not in gdf.columns:
        cols = ", ".join(str(c) for c in gdf.columns if c != gdf.geometry.name)
        raise ExportError(
            f"{path}: id column {id_column!r} not in the GeoDataFrame (columns: {cols}); "
            "pass id_column=None to number the features 1..N"
        )
    raw = np.asarray(gdf[id_column])
    try:
        vals = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path}: id column {id_column!r} must hold integers ({exc})") from exc
    bad = ~np.isfinite(vals) | (vals != np.round(vals)) | (vals < 1) | (vals > MAX_LABEL)
    if bad.any():
        raise ExportError(
            f"{path}: id column {id_column!r} must hold whole numbers 1..{MAX_LABEL} "
            f"(0 is the background); e.g. row {int(np.flatnonzero(bad)[0])} has {raw[bad][0]!r}"
        )
    return vals.astype(np.uint32)


def write_label_raster(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    like_path: str | os.PathLike[str],
    id_column: str | None = "id",
    block_px: int = 1024,
) -> Path:
    """Rasterize polygons into an instance-label GeoTIFF on the grid of `like_path`.

    The output has the size, transform and CRS of `like_path`; pixels are uint32,
    0 = background. A pixel belongs to a polygon when its centre is inside; where
    polygons overlap, the later row wins (as in `rasterio.features.rasterize`). `gdf` is
    reprojected to the raster CRS if needed (a missing CRS is taken to be the raster's,
    with a warning). Each block burns only the polygons an STRtree finds intersecting
    it, so memory is bounded by a block and the geometries. The file is a tiled (256 px)
    deflate GeoTIFF, written atomically.

    Args:
        gdf: The polygons.
        path: The GeoTIFF to write.
        like_path: The raster whose grid (size, transform, CRS) the labels take.
        id_column: Column whose value labels each polygon; None: the row number 1..N.
        block_px: Side of the blocks written at a time (px).

    Returns:
        The written path.

    Raises:
        ExportError: An id that is not a whole number 1..2^32-1, `block_px` below 16, the
            scene itself as `path`, or a path that cannot be written.
    """
    import rasterio
    import shapely
    from affine import Affine
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from geosam.read.scene import open_raster

    path = Path(path)
    if block_px < 16:
        raise ExportError(f"{path}: block_px must be at least 16, got {block_px}")
    if path.suffix.lower() not in (".tif", ".tiff"):
        log.warning("%s: writing a GeoTIFF to a file without a .tif extension", path)
    check_not_input(path, {"like_path": like_path}, "label raster")
    with open_raster(os.fspath(like_path)) as src:
        width, height, transform, crs = src.width, src.height, src.transform, src.crs

    ids = _label_ids(gdf, id_column, path)
    if len(gdf) and crs is not None:
        if gdf.crs is None:
            log.warning("%s: the GeoDataFrame has no CRS; assuming the raster's (%s)", path, crs.to_string())
        elif not same_crs(gdf.crs, crs):
            gdf = gdf.to_crs(crs.to_wkt())
    geoms = np.asarray(gdf.geometry.values, dtype=object) if len(gdf) else np.zeros(0, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms)) if geoms.size else np.zeros(0, dtype=bool)
    geoms, ids = geoms[keep], ids[keep]
    tree = shapely.STRtree(geoms)

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint32",
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    n_burnt = 0
    try:
        with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.set_band_description(1, "instance id (0 = background)")
            for r0 in range(0, height, block_px):
                for c0 in range(0, width, block_px):
                    win = Window(c0, r0, min(block_px, width - c0), min(block_px, height - r0))
                    wt = transform @ Affine.translation(c0, r0)
                    shape = (int(win.height), int(win.width))
                    x0, y1 = wt @ (0, 0)
                    x1, y0 = wt @ (shape[1], shape[0])
                    hits = np.sort(tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
                    if hits.size == 0:
                        block = np.zeros(shape, dtype=np.uint32)
                    else:
                        block = rasterize(
                            zip(geoms[hits], ids[hits].tolist()),
                            out_shape=shape,
                            transform=wt,
                            fill=0,
                            dtype="uint32",
                        )
                        n_burnt += int(hits.size)
                    dst.write(block, 1, window=win)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{path}: cannot write the label raster ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features, %d block burns)", path, width, height, len(geoms), n_burnt)
    return path


__all__ = [
    "VECTOR_FORMATS",
    "check_output_path",
    "distinct_colours",
    "read_vector",
    "render_overlay",
    "shapefile_field_names",
    "write_frames",
    "write_label_raster",
    "write_vector",
]
