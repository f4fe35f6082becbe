"""Per-object statistics of one date, read in that date's own grid, grouped by chip.

Pixel rule (the **pixel-centre rule**): a pixel belongs to an object when its centre lies inside the object's
geometry reprojected to the date's CRS (GDAL's rasterization without ``all_touched``, as
``rasterio.features.rasterize``). No scene is warped: every date keeps its own CRS, pixel size and extent, so
an object is measured on the pixels that date really has.

Reading is planned and run as chip tasks (`geosam.monitor.chips`, through `geosam.monitor.measure`): objects
are bucketed by the chip (``chip_size_px`` square of the date's grid) that holds the top-left corner of their
pixel window; each chip is read once per date, in the window that covers its objects (`read_padded`). Objects
of one chip are rasterized in one call into a label image (`label_sums`); objects that overlap another object are
rasterized one by one, so each keeps all its pixels. An object larger than a chip is read chip by chip over its
own window. This module holds the per-window pieces: windows, label statistics, reads, statuses.

Per object and date: ``n_pixels`` (pixel centres inside the object, including those outside the raster),
``n_valid`` (of them: inside the raster, not nodata / masked / fill / flagged by the mask band),
``valid_fraction`` and, per index, ``mean``, ``median``, ``frac_above`` (of the finite index values at valid
pixels; as `geosam.index.zonal.zonal_stats`). Status (`STATUSES`): ``ok``; ``outside_footprint`` (no
pixel of the object lies in the raster); ``no_pixel_centre`` (the object covers no pixel centre: smaller than
a pixel); ``too_few_valid`` (``valid_fraction < min_valid``: e.g. clouds). Only ``ok`` rows carry index values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosam.config.index_table import STATS
from geosam.config.monitor import MonitorConfig
from geosam.index.calculator import IndexCalculator
from geosam.windows import PixelWindow

log = logging.getLogger(__name__)

Arr = np.ndarray

OK, OUTSIDE, NO_PIXEL, TOO_FEW_VALID = "ok", "outside_footprint", "no_pixel_centre", "too_few_valid"
#: Every per-date status, in the order they are checked.
STATUSES = (OUTSIDE, NO_PIXEL, TOO_FEW_VALID, OK)


@dataclass
class DateStats:
    """Statistics of N objects at one date (arrays of length N, in object order).

    ``values``: ``<index>_<stat>`` -> float64 (NaN unless status is ``ok``).
    """

    n_pixels: Arr
    n_valid: Arr
    n_inside: Arr  # pixels of the object inside the raster
    values: dict[str, Arr]
    status: Arr

    @classmethod
    def empty(cls, n: int, names: Sequence[str]) -> DateStats:
        vals = {f"{i}_{s}": np.full(n, np.nan) for i in names for s in STATS}
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), vals, np.full(n, OK, dtype=object))

    @property
    def valid_fraction(self) -> Arr:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_pixels > 0, self.n_valid / np.maximum(self.n_pixels, 1), np.nan)


@dataclass(frozen=True)
class DateReader:
    """What reading one date needs: the open scene, its index calculator and its invalid-pixel rules."""

    scene: Any  # geosam.read.scene.Scene
    calc: IndexCalculator
    mask_band: int | None
    cfg: MonitorConfig

    def read(self, window: PixelWindow) -> tuple[dict[str, Arr], Arr]:
        """Indices (float32, NaN where invalid) and the valid mask of a window inside the raster."""
        roles = list(self.calc.role_bands)
        data, valid = self.scene.read_bands([self.calc.role_bands[r] for r in roles], window)
        cfg = self.cfg
        if cfg.nodata is not None:
            valid &= ~np.any(data == np.asarray(cfg.nodata, dtype=data.dtype), axis=0)
        if cfg.fill_value is not None:
            valid &= ~np.all(data == np.asarray(cfg.fill_value, dtype=np.float64), axis=0)
        if self.mask_band is not None:
            m = self.scene.ds.read(self.mask_band, window=window.to_rasterio())
            valid &= np.isin(m, cfg.mask_values, invert=True) if cfg.mask_values else (m != 0)
        return self.calc.from_arrays({r: data[k] for k, r in enumerate(roles)}, valid), valid


def pixel_windows(geoms: Arr, transform: Any) -> tuple[Arr, Arr, Arr, Arr]:
    """(c0, r0, c1, r1) int64 of the pixels whose centres can lie in each geometry (half-open; empty: c1 <= c0).

    Pixel (r, c) has its centre at pixel coordinates (c + 0.5, r + 0.5); a north-up ``transform`` is assumed.
    """
    import shapely

    b = shapely.bounds(geoms)
    t = transform
    xa, xb = (b[:, 0] - t.c) / t.a, (b[:, 2] - t.c) / t.a
    ya, yb = (b[:, 3] - t.f) / t.e, (b[:, 1] - t.f) / t.e
    with np.errstate(invalid="ignore"):
        cmin, cmax = np.fmin(xa, xb), np.fmax(xa, xb)
        rmin, rmax = np.fmin(ya, yb), np.fmax(ya, yb)
        c0, c1 = np.ceil(cmin - 0.5), np.floor(cmax - 0.5) + 1
        r0, r1 = np.ceil(rmin - 0.5), np.floor(rmax - 0.5) + 1
    out = [np.nan_to_num(a, nan=0.0).astype(np.int64) for a in (c0, r0, c1, r1)]
    return out[0], out[1], out[2], out[3]


def overlapping(geoms: Arr) -> Arr:
    """Bool per geometry: whether it intersects another one (those are rasterized one by one)."""
    import shapely

    if len(geoms) < 2:
        return np.zeros(len(geoms), dtype=bool)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    out = np.zeros(len(geoms), dtype=bool)
    out[i[i != j]] = True
    return out


def label_sums(labels: Arr, k: int, valid: Arr, idx: Mapping[str, Arr], thresholds: Mapping[str, float]
               ) -> tuple[Arr, Arr, dict[str, Arr]]:
    """Per label 1..k: pixel count, valid count and sufficient statistics from a label image (0 = none).

    The statistics, per index: ``<index>_cnt`` (finite values), ``<index>_sum`` (their float64 sum),
    ``<index>_above`` (values >= the threshold) and ``<index>_median`` (exact: one sort of all labels' values).
    Counts and sums of the same object from several windows add up exactly.
    """
    lab = labels.ravel()
    n_pix = np.bincount(lab, minlength=k + 1)[1:]
    n_val = np.bincount(lab[valid.ravel()], minlength=k + 1)[1:]
    out: dict[str, Arr] = {}
    for name, v in idx.items():
        vv = v.ravel()
        fin = np.isfinite(vv) & (lab > 0)
        lk, x = lab[fin], vv[fin].astype(np.float64)
        cnt = np.bincount(lk, minlength=k + 1)[1:]
        out[f"{name}_cnt"] = cnt
        out[f"{name}_sum"] = np.bincount(lk, weights=x, minlength=k + 1)[1:]
        out[f"{name}_above"] = np.bincount(lk, weights=(x >= np.float64(thresholds[name])).astype(np.float64),
                                           minlength=k + 1)[1:]
        xs = _sorted_by_label(lk, vv[fin])
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        has = cnt > 0
        med = np.full(k, np.nan)
        lo, hi = starts[has] + (cnt[has] - 1) // 2, starts[has] + cnt[has] // 2
        med[has] = (xs[lo] + xs[hi]) / 2.0
        out[f"{name}_median"] = med
    return n_pix, n_val, out


def finish_sums(sums: Mapping[str, Arr], names: Sequence[str]) -> dict[str, Arr]:
    """``<index>_mean`` / ``_median`` / ``_frac_above`` from `label_sums`' statistics (NaN without values)."""
    out: dict[str, Arr] = {}
    for name in names:
        cnt = np.asarray(sums[f"{name}_cnt"], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_mean"] = np.where(cnt > 0, sums[f"{name}_sum"] / cnt, np.nan)
            out[f"{name}_median"] = np.where(cnt > 0, sums[f"{name}_median"], np.nan)
            out[f"{name}_frac_above"] = np.where(cnt > 0, sums[f"{name}_above"] / cnt, np.nan)
    return out


def label_stats(labels: Arr, k: int, valid: Arr, idx: Mapping[str, Arr], thresholds: Mapping[str, float]
                ) -> tuple[Arr, Arr, dict[str, Arr]]:
    """Per label 1..k: (pixel count, valid count, ``<index>_<stat>`` arrays) from a label image (0 = none)."""
    n_pix, n_val, sums = label_sums(labels, k, valid, idx, thresholds)
    return n_pix, n_val, finish_sums(sums, list(idx))


def _sorted_by_label(labels: Arr, values: Arr) -> Arr:
    """``values`` (finite float32) sorted by label, then value, as float64: one sort of a uint64 key whose high
    32 bits are the label and low 32 bits the value's order-preserving bit pattern (faster than ``lexsort``)."""
    bits = values.astype(np.float32).view(np.uint32)
    ordered = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))  # IEEE order -> unsigned order
    key = (labels.astype(np.uint64) << np.uint64(32)) | ordered.astype(np.uint64)
    key.sort()
    low = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    back = np.where(low >> 31, low & np.uint32(0x7FFFFFFF), ~low)
    return back.view(np.float32).astype(np.float64)


def shapes(geoms: Arr) -> list[Any]:
    """GeoJSON-like mappings of non-empty geometries for ``rasterio.features.rasterize``, built in bulk.

    Polygons become ``{"type": "Polygon", "coordinates": [ring arrays]}`` from one vectorised coordinate
    read (shapely's per-geometry ``__geo_interface__`` costs ~60 us each); other types pass through as they are.
    """
    import shapely

    out: list[Any] = list(geoms)
    poly = np.flatnonzero(shapely.get_type_id(geoms) == 3)
    if len(poly) == 0:
        return out
    rings, owner = shapely.get_rings(geoms[poly], return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    ring_coords = np.split(coords, np.flatnonzero(np.diff(ring_of)) + 1)
    starts = np.searchsorted(owner, np.arange(len(poly) + 1))
    for k, i in enumerate(poly):
        out[i] = {"type": "Polygon", "coordinates": ring_coords[starts[k]:starts[k + 1]]}
    return out


def read_padded(reader: DateReader, win: PixelWindow) -> tuple[dict[str, Arr], Arr, Arr]:
    """Indices (NaN where invalid), valid mask and inside-the-raster mask of ``win``, which may reach outside."""
    info = reader.scene.info
    shape = (win.height, win.width)
    idx = {n: np.full(shape, np.nan, dtype=np.float32) for n in reader.calc.names}
    valid, in_raster = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    inside = win.intersection(PixelWindow(0, 0, info.width, info.height))
    if inside is not None:
        idx_in, valid_in = reader.read(inside)
        sl = inside.relative_to(win).slices()
        valid[sl], in_raster[sl] = valid_in, True
        for n, a in idx_in.items():
            idx[n][sl] = a
    return idx, valid, in_raster


def apply_status(out: DateStats, outside: Arr, min_valid: float) -> DateStats:
    """Set each object's status (`STATUSES`) from its counts, in place; only ``ok`` rows keep values.

    Args:
        out: The statistics (``status`` all ``ok``); objects not measured have zero counts.
        outside: Per object: its pixel window lies wholly outside the raster.
        min_valid: See `geosam.config.monitor.MonitorConfig`.

    Returns:
        ``out``.
    """
    status = out.status
    status[out.n_pixels == 0] = NO_PIXEL
    status[outside | ((out.n_pixels > 0) & (out.n_inside == 0))] = OUTSIDE
    low = (status == OK) & ~(out.valid_fraction >= min_valid)
    status[low] = TOO_FEW_VALID
    bad = status != OK
    for v in out.values.values():
        v[bad] = np.nan
    return out


__all__ = ["NO_PIXEL", "OK", "OUTSIDE", "STATUSES", "TOO_FEW_VALID", "DateReader", "DateStats", "apply_status",
           "finish_sums", "label_stats", "label_sums", "overlapping", "pixel_windows", "read_padded"]
