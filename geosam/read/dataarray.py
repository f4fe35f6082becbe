"""xarray DataArrays as scenes, read window by window, and label rasters as DataArrays.

A (band, y, x) or (y, x) DataArray -- numpy- or dask-backed -- is read in place:
`DataArrayDataset` offers the few parts of a rasterio dataset that
`geosam.read.scene.Scene` uses (metadata, ``read`` / ``read_masks`` of a window,
optionally decimated), and each read selects its window with ``isel`` and loads
only that. A dask-backed array is computed with the synchronous scheduler in the
calling process, so a Dask worker reads its own windows and no temporary copy of
the scene is ever written.

Georeferencing comes from the ``rio`` accessor when rioxarray is installed, else
from ``attrs["transform"]`` (an ``Affine`` or its 6 GDAL-order coefficients a, b,
c, d, e, f) or regularly spaced ``x``/``y`` coordinates (pixel centres), and
``attrs["crs"]`` (anything pyproj understands). Nodata from ``rio.nodata`` or
``attrs["nodata"]`` / ``attrs["_FillValue"]``. Band ``k`` (1-based, as in
``bands=``) is the k-th entry of the dimension that is not ``y`` / ``x``; text labels of that
dimension (``band=["red", "green", "blue", "nir"]``) become band descriptions, from which band roles
(`geosam.config.bands`) are found, and red / green / blue mark the default RGB bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine

from geosam.errors import ConfigError, InvalidRasterError, NoCRSError
from geosam.windows import WindowedDataset

#: block shape reported for a numpy-backed DataArray (px; used by the windowed stretch sample)
BLOCK_PX = 512


def is_dataarray(obj: Any) -> bool:
    return type(obj).__name__ == "DataArray" and hasattr(obj, "dims") and hasattr(obj, "attrs")


def is_dask_backed(da: Any) -> bool:
    """Whether the DataArray's data is a dask array (read lazily, chunk by chunk)."""
    return getattr(da, "chunks", None) is not None


def describe(da: Any) -> str:
    """How messages name a DataArray scene: ``DataArray 'name'`` (or ``DataArray``)."""
    return f"DataArray {da.name!r}" if getattr(da, "name", None) is not None else "DataArray"


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
            raise InvalidRasterError(f"{describe(da)}: x/y coordinates are not regularly spaced; cannot georeference it")
        return Affine(dx[0], 0.0, x[0] - dx[0] / 2, 0.0, dy[0], y[0] - dy[0] / 2)
    raise InvalidRasterError(
        f"{describe(da)}: no georeferencing found; give it x/y coordinates, attrs['transform'], or use rioxarray"
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
        raise NoCRSError(f"{describe(da)}: no CRS; set attrs['crs'] (e.g. 'EPSG:32633') or use rioxarray's write_crs")
    return CRS.from_user_input(c)


def _nodata(da: Any) -> float | None:
    nodata = da.rio.nodata if _has_rio(da) else None
    nodata = nodata if nodata is not None else da.attrs.get("nodata", da.attrs.get("_FillValue"))
    return None if nodata is None else float(nodata)


def band_yx(da: Any) -> Any:
    """``da`` as (band, y, x): a (y, x) array gets a band dimension; the band dimension is the one not y / x."""
    if da.ndim == 2:
        da = da.expand_dims("band")
    if da.ndim != 3:
        raise InvalidRasterError(f"{describe(da)}: expected dims (band, y, x) or (y, x), got {da.dims}")
    band_dim = next((d for d in da.dims if d not in ("y", "x")), da.dims[0])
    ydim = "y" if "y" in da.dims else da.dims[1]
    xdim = "x" if "x" in da.dims else da.dims[2]
    return da.transpose(band_dim, ydim, xdim)


def load(da: Any) -> np.ndarray:
    """The values of a (small) selection; a dask-backed one computed here, in this process."""
    if is_dask_backed(da):
        import dask

        (data,) = dask.compute(da.data, scheduler="synchronous")
        return np.asarray(data)
    return np.asarray(da.values)


def dataarray_token(da: Any) -> str:
    """A fingerprint of a DataArray's values, coordinates and attributes (``dask.base.tokenize``).

    A dask-backed array is fingerprinted by its graph (its source and operations, not its
    pixels); a numpy-backed one by its bytes. Needs dask.
    """
    try:
        from dask.base import tokenize
    except ImportError as exc:
        raise ConfigError(
            f"{describe(da)}: a journal needs a fingerprint of the scene, and a DataArray's comes from dask "
            "(pip install 'geosam-scenes[dask]'); or write the array to a GeoTIFF and journal that"
        ) from exc
    return str(tokenize(da))


class DataArrayDataset(WindowedDataset):
    """The parts of a rasterio dataset that `geosam.read.scene.Scene` uses, over a DataArray.

    Nothing is loaded up front; `read` loads the selected bands of one window
    (``out_shape``: nearest-neighbour decimation picking the pixels GDAL's nearest
    resampling picks). `read_masks` is 0 where a band equals the nodata value.
    """

    def __init__(self, da: Any) -> None:
        from rasterio.enums import ColorInterp

        self.name = describe(da)
        self.da = band_yx(da)
        self.count, self.height, self.width = (int(n) for n in self.da.shape)
        self.dtypes = (np.dtype(self.da.dtype).name,) * self.count
        self.set_transform(_transform(da))
        self.crs = _crs(da)
        self.nodata = _nodata(da)
        labels = [str(v) for v in np.asarray(self.da.coords[self.da.dims[0]])] if self.da.dims[0] in self.da.coords \
            else [None] * self.count
        self.descriptions = tuple(v if v is not None and not v.lstrip("-").isdigit() else None for v in labels)
        names = [(d or "").lower() for d in self.descriptions]
        self.colorinterp = tuple(
            ColorInterp[n] if n in ("red", "green", "blue", "alpha") else (ColorInterp.gray if k == 0 else
                                                                           ColorInterp.undefined)
            for k, n in enumerate(names))
        chunks = self.da.chunks
        shape = (chunks[1][0], chunks[2][0]) if chunks is not None else (min(BLOCK_PX, self.height),
                                                                         min(BLOCK_PX, self.width))
        self.block_shapes = [tuple(int(n) for n in shape)] * self.count
        self.scales, self.offsets = (1.0,) * self.count, (0.0,) * self.count
        self._last: tuple[Any, np.ndarray] | None = None  # read_masks reuses the read before it

    def read(self, indexes: Sequence[int], window: Any = None, out_shape: Any = None, **_: Any) -> np.ndarray:
        """Bands ``indexes`` (1-based) of ``window`` as (bands, H, W) (``out_shape``: decimated)."""
        key = self.window_key(indexes, window, out_shape)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        bands, (c0, r0, w, h), shape = key
        if shape is None:
            rows, cols = slice(r0, r0 + h), slice(c0, c0 + w)
        else:  # GDAL's nearest: source pixel floor((i + 0.5) * in / out)
            rows = r0 + np.floor((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64)
            cols = c0 + np.floor((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64)
        b, y, x = self.da.dims
        sel = self.da.isel({b: [i - 1 for i in bands]}).isel({y: rows}).isel({x: cols})  # one array index at a time (dask)
        data = load(sel)
        self._last = (key, data)
        return data

    def band_valid(self, indexes: Sequence[int], window: Any, out_shape: Any) -> np.ndarray:
        """True where a band is not the nodata value (NaN nodata: not NaN); all True without nodata (nothing read)."""
        if self.nodata is None:
            bands, (_, _, w, h), shape = self.window_key(indexes, window, out_shape)
            return np.ones((len(bands), *(shape or (h, w))), dtype=bool)
        data = self.read(indexes, window, out_shape)
        return ~np.isnan(data) if np.isnan(self.nodata) else data != self.nodata


__all__ = ["DataArrayDataset", "dataarray_token", "describe", "is_dask_backed", "is_dataarray"]
