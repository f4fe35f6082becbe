"""A `geosam.stac.item.StacScene` read like a raster dataset, one window at a time.

`StacDataset` has the parts of a rasterio dataset that `geosam.read.scene.Scene`
uses (size, transform, CRS, band descriptions, ``read`` / ``read_masks`` of a window). Each
window is read with ``odc.stac.load`` onto exactly that window's part of the scene grid
(an ``odc.geo`` GeoBox): for every asset only the internal blocks under the window are
fetched (HTTP range requests), coarser assets are resampled (nearest), a day's items are
joined (the first valid pixel wins), and a decimated read (``out_shape``) is served from
the assets' overviews. Chosen over stackstac and rasterio's WarpedVRT by measurement: see
``docs/stac.md`` and ``benchmarks/bench_stac.py``.

Frames: windows are in scene-grid pixels (column, row of the upper-left pixel, width, height).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine

from geosam.errors import InvalidRasterError
from geosam.stac.fingerprint import unreadable_assets
from geosam.stac.item import StacGrid, StacScene, stac_grid
from geosam.windows import WindowedDataset

log = logging.getLogger(__name__)

#: block shape reported to the reader (scene pixels): the unit of a window-by-window sample
BLOCK_PX = 256


def window_geobox(grid: StacGrid, window: Any, out_shape: Sequence[int] | None = None) -> Any:
    """The ``odc.geo`` GeoBox of ``window`` (scene pixels; None: all) on ``grid``, at ``out_shape`` (rows, cols)."""
    from odc.geo.geobox import GeoBox

    c0, r0, w, h = (0, 0, grid.width, grid.height) if window is None else \
        (int(window.col_off), int(window.row_off), int(window.width), int(window.height))
    rows, cols = (h, w) if out_shape is None else (int(out_shape[-2]), int(out_shape[-1]))
    t = grid.transform * Affine.translation(c0, r0) * Affine.scale(w / cols, h / rows)
    return GeoBox((rows, cols), t, grid.crs_wkt)


def load_window(scene: StacScene, keys: Sequence[str], geobox: Any, dtype: str) -> np.ndarray:
    """Assets ``keys`` of ``scene`` on ``geobox`` as (bands, rows, cols); the day's items joined.

    Up to ``scene.env.asset_threads`` assets are read at once (odc-stac carries the GDAL settings to its threads).
    Raises whatever odc-stac / rasterio raise for an unreadable asset (the caller names the scene).
    """
    import odc.stac

    bands = list(dict.fromkeys(keys))
    threads = min(scene.env.asset_threads, len(bands) * len(scene.items))
    with scene.env.rio_env():
        ds = odc.stac.load(list(scene.items), bands=bands, geobox=geobox, resampling="nearest", groupby="solar_day",
                           chunks=None, dtype=dtype, patch_url=scene.sign, fail_on_error=True,
                           preserve_original_order=True, pool=threads if threads > 1 else None)
    if ds.sizes.get("time", 0) != 1:
        raise ValueError(f"{scene.label}: the items fall on {ds.sizes.get('time', 0)} days; a scene is one day")
    return np.stack([np.asarray(ds[k].values[0]) for k in keys])


class StacDataset(WindowedDataset):
    """The parts of a rasterio dataset that ``Scene`` uses, over a `StacScene` (nothing read up front)."""

    def __init__(self, scene: StacScene) -> None:
        from rasterio.crs import CRS
        from rasterio.enums import ColorInterp

        self.scene = scene
        self.name = scene.label
        self.grid = grid = stac_grid(scene)
        self.keys = scene.keys
        self.mask_key = scene.mask_key
        self.count, self.height, self.width = len(self.keys), grid.height, grid.width
        self.dtypes = (grid.dtype,) * self.count
        self.set_transform(grid.transform)
        self.crs = CRS.from_wkt(grid.crs_wkt)
        self.nodata = grid.nodata
        self.descriptions = tuple(n.lower() for n in scene.names)
        self.colorinterp = tuple(ColorInterp[n] if n in ("red", "green", "blue") else ColorInterp.undefined
                                 for n in self.descriptions)
        self.block_shapes = [(min(BLOCK_PX, self.height), min(BLOCK_PX, self.width))] * self.count
        self.scales, self.offsets = grid.scales, grid.offsets
        self._last: tuple[Any, np.ndarray, np.ndarray] | None = None  # read_masks reuses the read before it

    def _load(self, indexes: Sequence[int], window: Any, out_shape: Any) -> tuple[np.ndarray, np.ndarray]:
        """(bands, the valid mask (rows, cols)) of a window; one request set for bands and mask asset."""
        key = self.window_key(indexes, window, out_shape)
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        keys = [self.keys[i - 1] for i in key[0]]
        geobox = window_geobox(self.grid, window, out_shape)
        extra = [self.mask_key] if self.mask_key and self.scene.mask_values else []
        try:
            data = load_window(self.scene, keys + extra, geobox, self.grid.dtype)
        except Exception as exc:  # odc-stac / rasterio / GDAL raise several types; Scene names the window
            raise InvalidRasterError(f"{exc}{unreadable_assets(self.scene, keys + extra)}") from exc
        valid = np.ones(data.shape, dtype=bool)  # per band: not a masked class, not the band's nodata
        if extra:
            valid &= ~np.isin(data[-1], self.scene.mask_values)[None]
            data = data[:-1]
            valid = valid[:-1]
        if self.nodata is not None:
            valid &= ~(np.isnan(data) if np.isnan(self.nodata) else data == self.nodata)
        self._last = (key, data, valid)
        return data, valid

    def read(self, indexes: Sequence[int], window: Any = None, out_shape: Any = None, **_: Any) -> np.ndarray:
        """Bands ``indexes`` (1-based) of ``window`` as (bands, H, W) (``out_shape``: from overviews)."""
        return self._load(indexes, window, out_shape)[0]

    def band_valid(self, indexes: Sequence[int], window: Any, out_shape: Any) -> np.ndarray:
        """Valid per band: not the band's nodata, not a masked class of the mask asset."""
        return self._load(indexes, window, out_shape)[1]

    def mask_indexes(self, window: Any, out_shape: Any) -> Sequence[int]:
        """The dataset mask's bands: those of the last read of the same window, else all.

        As for a local stack of the same pixels with a nodata value, a pixel is invalid where every band
        is nodata (or the mask asset marks it), not where one band is; the bands a chip read suffice, so no
        other asset is fetched for its mask.
        """
        last = self._last
        if last is not None and last[0][1:] == self.window_key((), window, out_shape)[1:]:
            return last[0][0]
        return super().mask_indexes(window, out_shape)


__all__ = ["StacDataset", "load_window", "window_geobox"]
