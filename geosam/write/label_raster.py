"""Instance-label rasters of polygons: a GeoTIFF (`write_label_raster`) or a DataArray (`label_dataarray`).

Both burn the same way (`burn_block`): pixels are uint32, 0 = background, else the feature's id; a
pixel belongs to a polygon when its centre is inside, the later row winning where polygons overlap
(as ``rasterio.features.rasterize``); the grid is burnt block by block, each block only with the
polygons an STRtree finds there, so memory is bounded by a block and the geometries. The GeoTIFF is
written atomically (`geosam.write.paths.atomic_output`).

Frames: polygons are in the CRS of their GeoDataFrame (map units, reprojected to the grid's); the
grid is that of the raster or DataArray named ``like_path`` / ``like``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geosam.errors import ExportError, NoCRSError
from geosam.geo import same_crs
from geosam.read.dataarray import DataArrayDataset, is_dask_backed, is_dataarray
from geosam.stac import is_stac, stac_dataset
from geosam.write.paths import atomic_output, check_not_input, local_input
from geosam.write.verify import raster_verifier

if TYPE_CHECKING:
    import geopandas as gpd
    import xarray as xr

log = logging.getLogger(__name__)

#: Largest instance id a uint32 label raster can hold.
MAX_LABEL = np.iinfo(np.uint32).max


def _label_ids(gdf: gpd.GeoDataFrame, id_column: str | None, path: Path | str) -> np.ndarray:
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


def _features(gdf: gpd.GeoDataFrame, ids: np.ndarray, crs: Any, where: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(geometries in the grid's CRS, their ids, an STRtree of them), null and empty geometries dropped.

    A frame without a CRS is taken to be in the grid's (with a warning naming ``where``).
    """
    import shapely

    if len(gdf) and crs is not None:
        if gdf.crs is None:
            log.warning("%s: the GeoDataFrame has no CRS; assuming the raster's (%s)", where, crs.to_string())
        elif not same_crs(gdf.crs, crs):
            gdf = gdf.to_crs(crs.to_wkt())
    geoms = np.asarray(gdf.geometry.values, dtype=object) if len(gdf) else np.zeros(0, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms)) if geoms.size else np.zeros(0, dtype=bool)
    geoms, ids = geoms[keep], ids[keep]
    return geoms, ids, shapely.STRtree(geoms)


def burn_block(geoms: np.ndarray, ids: np.ndarray, tree: Any, transform: Affine, r0: int, c0: int,
               shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The label block of ``shape`` (rows, columns) px at row ``r0``, column ``c0`` of the grid.

    Args:
        geoms: The polygons (the grid's CRS).
        ids: Their ids (uint32).
        tree: An STRtree of ``geoms``.
        transform: The grid's transform (pixel -> map).
        r0: The block's first row.
        c0: The block's first column.
        shape: The block's (height, width) in pixels.

    Returns:
        The uint32 block and how many polygons were burnt into it.
    """
    import shapely
    from rasterio.features import rasterize

    wt = transform @ Affine.translation(c0, r0)
    x0, y1 = wt @ (0, 0)
    x1, y0 = wt @ (shape[1], shape[0])
    hits = np.sort(tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
    if hits.size == 0:
        return np.zeros(shape, dtype=np.uint32), 0
    block = rasterize(zip(geoms[hits], ids[hits].tolist()), out_shape=shape, transform=wt, fill=0, dtype="uint32")
    return block, int(hits.size)


def write_label_raster(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    like_path: Any,
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
        like_path: The raster whose grid (size, transform, CRS) the labels take: a path, or a DataArray or
            STAC item / `geosam.stac.StacScene` (its chip grid: CRS and transform at the chosen resolution).
        id_column: Column whose value labels each polygon; None: the row number 1..N.
        block_px: Side of the blocks written at a time (px).

    Returns:
        The written path.

    Raises:
        ExportError: An id that is not a whole number 1..2^32-1, `block_px` below 16, the
            scene itself as `path`, or a path that cannot be written.
    """
    import rasterio
    from rasterio.windows import Window

    path = Path(path)
    if block_px < 16:
        raise ExportError(f"{path}: block_px must be at least 16, got {block_px}")
    if path.suffix.lower() not in (".tif", ".tiff"):
        log.warning("%s: writing a GeoTIFF to a file without a .tif extension", path)
    check_not_input(path, {"like_path": local_input(like_path)}, "label raster")
    height, width, transform, crs = _like_grid(like_path)

    geoms, ids, tree = _features(gdf, _label_ids(gdf, id_column, path), crs, str(path))

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
        with atomic_output(path, verify=raster_verifier(path, width, height, 1)) as tmp, \
                rasterio.open(tmp, "w", **profile) as dst:
            dst.set_band_description(1, "instance id (0 = background)")
            for r0 in range(0, height, block_px):
                for c0 in range(0, width, block_px):
                    win = Window(c0, r0, min(block_px, width - c0), min(block_px, height - r0))
                    block, hits = burn_block(geoms, ids, tree, transform, r0, c0, (int(win.height), int(win.width)))
                    n_burnt += hits
                    dst.write(block, 1, window=win)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{path}: cannot write the label raster ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features, %d block burns)", path, width, height, len(geoms), n_burnt)
    return path


def _like_grid(like: Any) -> tuple[int, int, Affine, Any]:
    """(height, width, transform, CRS or None) of a raster path, or of what `_grid` takes."""
    if isinstance(like, (str, os.PathLike)) and not is_stac(like):
        from geosam.read.gdal import open_raster

        with open_raster(os.fspath(like)) as src:
            return src.height, src.width, src.transform, src.crs
    return _grid(like)[:4]


def _grid(like: Any) -> tuple[int, int, Affine, Any, Any]:
    """(height, width, transform, CRS, the (y, x) DataArray whose coordinates to copy or None) of ``like``."""
    like = getattr(like, "source", like)  # a geosam Scene: what it was opened from
    if is_dataarray(like):
        ds = DataArrayDataset(like)
        return ds.height, ds.width, ds.transform, ds.crs, ds.da.isel({ds.da.dims[0]: 0}, drop=True)
    stac = stac_dataset(like)  # a STAC item or scene: the grid its chips are read on
    if stac is not None:
        return stac.height, stac.width, stac.transform, stac.crs, None
    from geosam.read.gdal import open_raster

    path = os.fspath(like) if isinstance(like, (str, os.PathLike)) else like.name  # an open rasterio dataset
    with open_raster(path) as src:
        if src.crs is None:
            raise NoCRSError(f"{src.name}: the raster has no CRS")
        return src.height, src.width, src.transform, src.crs, None


def label_dataarray(gdf: gpd.GeoDataFrame, like: Any, *, id_column: str | None = "id",
                    block_px: int = 1024) -> xr.DataArray:
    """An instance-label DataArray (y, x) of `gdf` on the grid of `like`.

    A pixel belongs to a polygon when its centre is inside, the later row winning where
    polygons overlap (as `write_label_raster`). `gdf` is reprojected to the grid's CRS.
    For a dask-backed `like` the labels are dask-backed with its chunks, each chunk
    rasterized when computed; otherwise they are burnt `block_px` px at a time into one array.

    Args:
        gdf: The objects (polygons), in any CRS.
        like: The grid: a DataArray, a raster path, a `Scene` or a STAC item / `geosam.stac.StacScene`.
        id_column: Column whose value labels each polygon; None: the row number 1..N.
        block_px: Side of the blocks rasterized at a time (px).

    Returns:
        uint32 labels, 0 = background. The x / y coordinates are `like`'s own (a
        DataArray) or the pixel centres (a path), so the result aligns exactly; `attrs`
        carry `crs` (WKT), `transform` and `nodata` (0), and rioxarray's CRS when it is
        installed.
    """
    import xarray as xr

    height, width, transform, crs, template = _grid(like)
    geoms, ids, tree = _features(gdf, _label_ids(gdf, id_column, "label_dataarray"), crs, "label_dataarray")
    if template is not None and is_dask_backed(template):
        import dask.array

        def block(block_info: Any = None) -> np.ndarray:
            (r0, r1), (c0, c1) = block_info[None]["array-location"]
            return burn_block(geoms, ids, tree, transform, r0, c0, (r1 - r0, c1 - c0))[0]

        data: Any = dask.array.map_blocks(block, chunks=template.chunks, dtype=np.uint32, meta=np.zeros((0, 0),
                                                                                                         np.uint32))
    else:
        data = np.zeros((height, width), dtype=np.uint32)
        for r0 in range(0, height, block_px):
            for c0 in range(0, width, block_px):
                shape = (min(block_px, height - r0), min(block_px, width - c0))
                data[r0:r0 + shape[0], c0:c0 + shape[1]] = burn_block(geoms, ids, tree, transform, r0, c0, shape)[0]
    if template is not None:
        coords = {d: template.coords[d] for d in template.dims if d in template.coords}
        dims = template.dims
    else:
        coords = {"y": transform.f + transform.e * (np.arange(height) + 0.5),
                  "x": transform.c + transform.a * (np.arange(width) + 0.5)}
        dims = ("y", "x")
    out = xr.DataArray(data, dims=dims, coords=coords, name="label",
                       attrs={"crs": crs.to_wkt(), "transform": tuple(transform)[:6], "nodata": 0})
    try:
        import rioxarray  # noqa: F401 - registers the .rio accessor

        out = out.rio.write_crs(crs).rio.write_nodata(0)
    except ImportError:
        pass
    return out


__all__ = ["MAX_LABEL", "burn_block", "label_dataarray", "write_label_raster"]
