"""A per-pixel composite of several dates on the first date's grid, built block by block into a GeoTIFF.

What ``geosam monitor --segment composite`` segments (`geosam.monitor.segment`). Each date's block is a windowed
read on that grid, or for a date in another grid a window of a `rasterio.vrt.WarpedVRT` onto it (nearest
neighbour); a pixel counts at a date where that date is valid (nodata, masks, ``fill_value``). Memory is one
block of every date, never a whole scene.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geosam.config import ReadConfig
from geosam.errors import ConfigError
from geosam.monitor.dates import DateScene

if TYPE_CHECKING:
    from geosam.read.scene import Scene


def composite_path(scenes: Sequence[DateScene], bands: Sequence[Sequence[int]], path: str | os.PathLike[str], *,
                   statistic: Literal["median", "mean"] = "median", chip_px: int = 1024,
                   read: ReadConfig | None = None) -> Path:
    """Write the per-pixel ``statistic`` of the dates' ``bands`` on the first date's grid, block by block.

    Args:
        scenes: the dates; the first one's grid (size, transform, CRS) is the composite's.
        bands: each date's 1-based bands (the same number for every date).
        path: the GeoTIFF to write (the first date's data type, integers rounded; masked where no date is valid).
        statistic: ``'median'`` or ``'mean'`` of the valid dates of each pixel.
        chip_px: the block side (px); memory is about dates x bands x ``chip_px``² x 4 bytes.
        read: read settings of the dates (``fill_value`` marks invalid pixels of dates on the first grid).

    Returns:
        ``path``.
    """
    import rasterio

    from geosam.windows import PixelWindow

    readers = [_BlockReader(s, b, scenes[0], read) for s, b in zip(scenes, bands)]
    try:
        ref = readers[0].scene.info
        dtype = np.dtype(ref.dtype)
        profile = {"driver": "GTiff", "width": ref.width, "height": ref.height, "count": len(bands[0]),
                   "dtype": dtype.name, "crs": ref.crs_wkt, "transform": ref.transform, "tiled": True,
                   "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        reduce = valid_median if statistic == "median" else valid_mean
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            for row in range(0, ref.height, chip_px):
                for col in range(0, ref.width, chip_px):
                    w = PixelWindow(col, row, min(chip_px, ref.width - col), min(chip_px, ref.height - row))
                    stackd = np.stack([r.read(w) for r in readers])  # (dates, bands, h, w), NaN where invalid
                    valid = np.isfinite(stackd).all(axis=1).any(axis=0)
                    out = reduce(stackd)
                    out[:, ~valid] = 0
                    if dtype.kind in "iu":
                        info = np.iinfo(dtype)
                        out = np.clip(np.rint(out), info.min, info.max)
                    dst.write(out.astype(dtype), window=w.to_rasterio())
                    dst.write_mask(valid.astype(np.uint8) * 255, window=w.to_rasterio())
    finally:
        for r in readers:
            r.close()
    return Path(path)


def valid_median(stack: np.ndarray) -> np.ndarray:
    """The median over axis 0 of the finite values (``np.nanmedian``'s result, without its copies per element).

    Args:
        stack: (dates, ...) float32, NaN where a date is invalid.

    Returns:
        (...) float32; where no value is finite, an arbitrary finite value (the caller masks it).
    """
    n = np.isfinite(stack).sum(axis=0)
    s = np.sort(stack, axis=0)  # NaN last
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, (n // 2)[None], axis=0)[0]
    out = (lo + hi) / np.float32(2)
    out[n == 0] = 0
    return out


def valid_mean(stack: np.ndarray) -> np.ndarray:
    """The mean over axis 0 of the finite values; 0 where none is (the caller masks it)."""
    n = np.isfinite(stack).sum(axis=0)
    total = np.nansum(stack, axis=0, dtype=np.float64)
    return (total / np.maximum(n, 1)).astype(np.float32)


class _BlockReader:
    """One date's bands in blocks of the reference grid: float32, NaN where the date is invalid."""

    def __init__(self, s: DateScene, bands: Sequence[int], ref: DateScene, read: ReadConfig | None) -> None:
        from geosam.read.scene import Scene

        self.bands = tuple(bands)
        self.scene: Scene = Scene(s.source, dataclasses.replace(read or ReadConfig(), bands=self.bands), stretch=None)
        self.vrt: Any = None
        self.src: Any = None
        if s is not ref:
            with Scene(ref.source, stretch=None) as r:
                target = r.info
            if not _same_grid(self.scene.info, target):
                self._warp(s, target)

    def _warp(self, s: DateScene, target: Any) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if not isinstance(s.source, (str, os.PathLike)):
            raise ConfigError(f"{s.name}: a composite warps dates in other grids from files only")
        self.src = rasterio.open(s.source)
        self.vrt = WarpedVRT(self.src, crs=target.crs_wkt, transform=target.transform, width=target.width,
                             height=target.height, resampling=Resampling.nearest)

    def read(self, w: Any) -> np.ndarray:
        if self.vrt is None:
            data, valid = self.scene.read_window(w)
        else:
            data = self.vrt.read(list(self.bands), window=w.to_rasterio())
            valid = self.vrt.dataset_mask(window=w.to_rasterio()) > 0
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.isfinite(data).all(axis=0)
        out = data.astype(np.float32)
        out[:, ~valid] = np.nan
        return out

    def close(self) -> None:
        self.scene.close()
        for h in (self.vrt, self.src):
            if h is not None:
                h.close()


def _same_grid(a: Any, b: Any) -> bool:
    from geosam.geo import same_crs

    return (a.width, a.height) == (b.width, b.height) and a.transform.almost_equals(b.transform) and \
        same_crs(a.crs_wkt, b.crs_wkt)



__all__ = ["composite_path", "valid_mean", "valid_median"]
