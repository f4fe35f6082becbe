"""xarray DataArrays as scenes.

A DataArray is written block by block to a temporary tiled GeoTIFF, so a
dask-backed array is never loaded whole; the pipeline then reads it in
windows like any other raster. Georeferencing comes from the ``rio``
accessor when rioxarray is installed, else from ``attrs["transform"]`` (an
``Affine`` or its 6 GDAL-order coefficients a, b, c, d, e, f) or regularly
spaced ``x``/``y`` coordinates (pixel centres), and ``attrs["crs"]``
(anything pyproj understands). Nodata from ``rio.nodata`` or
``attrs["nodata"]`` / ``attrs["_FillValue"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geosam.errors import InvalidRasterError, NoCRSError

BLOCK_PX = 512


def is_dataarray(obj: Any) -> bool:
    return type(obj).__name__ == "DataArray" and hasattr(obj, "dims") and hasattr(obj, "attrs")


def _transform(da: Any) -> Affine:
    rio = getattr(da, "rio", None) if _has_rio(da) else None
    if rio is not None:
        return rio.transform()
    t = da.attrs.get("transform")
    if t is not None:
        return t if isinstance(t, Affine) else Affine(*list(t)[:6])
    if "x" in da.coords and "y" in da.coords and da.sizes.get("x", 0) > 1 and da.sizes.get("y", 0) > 1:
        x = np.asarray(da.coords["x"], dtype=np.float64)
        y = np.asarray(da.coords["y"], dtype=np.float64)
        dx, dy = np.diff(x), np.diff(y)
        if not (np.allclose(dx, dx[0], rtol=1e-6) and np.allclose(dy, dy[0], rtol=1e-6)):
            raise InvalidRasterError("DataArray: x/y coordinates are not regularly spaced; cannot georeference it")
        return Affine(dx[0], 0.0, x[0] - dx[0] / 2, 0.0, dy[0], y[0] - dy[0] / 2)
    raise InvalidRasterError(
        "DataArray: no georeferencing found; give it x/y coordinates, attrs['transform'], or use rioxarray"
    )


def _has_rio(da: Any) -> bool:
    try:
        return da.rio.crs is not None
    except Exception:  # noqa: BLE001 - accessor absent or not georeferenced
        return False


def _crs(da: Any) -> Any:
    from rasterio.crs import CRS

    if _has_rio(da):
        return da.rio.crs
    c = da.attrs.get("crs") or da.attrs.get("spatial_ref")
    if c is None:
        raise NoCRSError("DataArray: no CRS; set attrs['crs'] (e.g. 'EPSG:32633') or use rioxarray's write_crs")
    return CRS.from_user_input(c)


def dataarray_to_geotiff(da: Any, path: str | Path) -> str:
    """Write a (band, y, x) or (y, x) DataArray to a tiled GeoTIFF, one block at a time."""
    import rasterio

    if da.ndim == 2:
        da = da.expand_dims("band")
    if da.ndim != 3:
        raise InvalidRasterError(f"DataArray: expected dims (band, y, x) or (y, x), got {da.dims}")
    band_dim = next((d for d in da.dims if d not in ("y", "x")), da.dims[0])
    ydim = "y" if "y" in da.dims else da.dims[1]
    xdim = "x" if "x" in da.dims else da.dims[2]
    da = da.transpose(band_dim, ydim, xdim)
    count, height, width = (int(n) for n in da.shape)
    nodata = None
    if _has_rio(da):
        nodata = da.rio.nodata
    nodata = nodata if nodata is not None else da.attrs.get("nodata", da.attrs.get("_FillValue"))
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": np.dtype(da.dtype).name,
        "crs": _crs(da), "transform": _transform(da), "nodata": nodata, "tiled": True,
        "blockxsize": BLOCK_PX, "blockysize": BLOCK_PX, "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, BLOCK_PX):
            for c0 in range(0, width, BLOCK_PX):
                r1, c1 = min(r0 + BLOCK_PX, height), min(c0 + BLOCK_PX, width)
                block = np.asarray(da[:, r0:r1, c0:c1].values)
                dst.write(block, window=((r0, r1), (c0, c1)))
    return str(path)
