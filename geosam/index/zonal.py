"""Per-object index statistics: ``{index}_mean``, ``_median``, ``_frac_above`` (`ZonalStats`, an object hook)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from geosam.config.index_table import INDICES
from geosam.index.calculator import IndexCalculator
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from geosam.assemble.stitch import StitchedObject
    from geosam.read.scene import Scene

#: Rows of a huge (vector-only) object rasterized and read at once.
STRIP_ROWS = 1024

Arr = np.ndarray


def zonal_stats(values: Arr, threshold: float) -> tuple[float, float, float]:
    """(mean, median, fraction >= threshold) of the finite ``values``; NaNs when there are none."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return (
        float(np.mean(v, dtype=np.float64)),
        float(np.median(v)),
        float(np.count_nonzero(v >= np.float64(threshold)) / v.size),
    )


def object_windows(obj: StitchedObject) -> list[tuple[PixelWindow, Arr]]:
    """The object's pixels as (window, bool mask) pieces in scene pixel coordinates.

    One piece for objects with a pixel mask; row strips of the rasterized
    outline (pixel centres inside) for huge vector-only objects.
    """
    if obj.mask is not None and obj.bbox is not None:
        return [(obj.bbox, obj.mask)]
    from affine import Affine
    from rasterio.features import rasterize

    x0, y0, x1, y1 = obj.geom_px.bounds
    c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    out = []
    for rs in range(r0, r1, STRIP_ROWS):
        win = PixelWindow(c0, rs, c1 - c0, min(STRIP_ROWS, r1 - rs))
        m = rasterize([(obj.geom_px, 1)], out_shape=(win.height, win.width),
                      transform=Affine.translation(win.col_off, win.row_off), fill=0, dtype="uint8").astype(bool)
        if m.any():
            out.append((win, m))
    return out


class ZonalStats:
    """Pipeline object hook: ``{index}_mean``, ``{index}_median``, ``{index}_frac_above`` per object.

    thresholds: per index, the value ``_frac_above`` counts against (default
    `IndexDef.threshold`).
    """

    def __init__(self, calc: IndexCalculator, thresholds: Mapping[str, float] | None = None) -> None:
        self.calc = calc
        th = dict(thresholds or {})
        self.thresholds = {n: float(th.get(n, INDICES[n].threshold)) for n in calc.names}

    def __call__(self, obj: StitchedObject, scene: Scene) -> dict[str, float]:
        vals: dict[str, list[Arr]] = {n: [] for n in self.calc.names}
        for win, m in object_windows(obj):
            idx = self.calc.compute(scene, win)
            for n in self.calc.names:
                vals[n].append(idx[n][m])
        out: dict[str, float] = {}
        for n in self.calc.names:
            v = np.concatenate(vals[n]) if vals[n] else np.zeros(0, np.float32)
            mean, median, frac = zonal_stats(v, self.thresholds[n])
            out[f"{n}_mean"], out[f"{n}_median"], out[f"{n}_frac_above"] = mean, median, frac
        return out


__all__ = ["STRIP_ROWS", "ZonalStats", "object_windows", "zonal_stats"]
