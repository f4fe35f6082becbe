"""Spectral indices (NDVI, ExG, ...): per-object statistics, ranking, and a prompt prefilter.

Indices are computed in float32 from reflectance (see `geosam.config.bands` for
roles and scaling) on valid pixels only; an invalid pixel or a zero
denominator gives NaN, and NaN pixels are left out of every statistic.

Formulas (``R, G, B, N, S1, RE`` are red, green, blue, NIR, SWIR-1 and red-edge
reflectance):

========  =============================================  ==================
index     formula                                        default threshold
========  =============================================  ==================
ndvi      (N - R) / (N + R)                              0.3
ndwi      (G - N) / (G + N)  (McFeeters, water > 0)      0.0
savi      1.5 (N - R) / (N + R + 0.5)                    0.2
evi       2.5 (N - R) / (N + 6 R - 7.5 B + 1)            0.2
ndmi      (N - S1) / (N + S1)                            0.0
ndre      (N - RE) / (N + RE)                            0.2
exg       (2 G - R - B) / (R + G + B)  (chromatic ExG)   0.05
vari      (G - R) / (G + R - B)                          0.0
gli       (2 G - R - B) / (2 G + R + B)                  0.0
========  =============================================  ==================

The default threshold is what ``{index}_frac_above`` counts against unless
``index_thresholds`` or ``min_index`` names another.

Per-object statistics (`ZonalStats`, a pipeline object hook) read the
index bands in each *final* object's bounding box at full resolution and use the
object's final pixel mask, so an object stitched from several chips gets exactly
the statistics of a single-chip run.

Prefilter (`Prefilter`). Before the decoder runs, a chip's
``prompt_mask`` is set to the pixels within ``radius_px`` (Chebyshev distance;
``SegmentConfig.prefilter_radius_px``, default 2 px, ``"grid"`` = one point-grid spacing) of a pixel whose index is >= the ``min_index``
threshold (for several indices: near a passing pixel of each). Grid prompts
elsewhere are not decoded, and a chip with no such pixel is skipped whole. The
mask of a pixel is computed on a window grown by ``radius_px``, so it does not
depend on the chip it is seen from.

Guarantee: an object whose mean index is >= t has at least one pixel >= t (a
mean is never above every value). With a generator that returns the object
under each prompt (the oracle, and what SAM aims at), the prefiltered run
keeps every object that the full run keeps after the ``min_index`` filter
provided one of the object's grid points lies within ``radius_px`` of one of
its pixels >= t. That always holds for objects whose bounding box is at most
``radius_px + 1`` px on its longer side, and for objects whose every pixel
passes (the grid point itself passes). Limits: a large object vegetated only in
a spot farther than ``radius_px`` from all of its grid points, whose mean still
passes, can be lost (raise ``prefilter_radius_px``); with SAM, removing prompts
also changes which masks win non-maximum suppression, and a prompt on the
vegetated part may segment only that part, so results are close to, not
identical with, the full run.

Choosing the radius: the default 2 px keeps prompts that land on a bare or
shadowed pixel next to vegetation (gaps between crop rows, crown shadows). One
grid spacing (``"grid"``) extends the guarantee to every object up to a grid cell
in size but saves little on mostly vegetated scenes: on the Sentinel-2 sample
(10 m pixels, 77 % of pixels with NDVI >= 0.3) it keeps every prompt, while
radius 0 keeps 76 % (see ``benchmarks/results/prefilter.json``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.config.bands import BandRoles, resolve_band_roles
from geosam.config.index_table import INDICES, check_index
from geosam.errors import ConfigError, ExportError
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from geosam.assemble.stitch import StitchedObject
    from geosam.read.scene import Chip, Scene

log = logging.getLogger(__name__)

#: Rows of a huge (vector-only) object rasterized and read at once.
STRIP_ROWS = 1024

Arr = np.ndarray


class IndexCalculator:
    """Compute several indices of one scene in any window, reading each band once.

    roles: resolved `BandRoles`; raises
    `BandError` at construction if an index needs an
    unmapped band.
    """

    def __init__(self, roles: BandRoles, names: Sequence[str]) -> None:
        self.roles = roles
        self.names = tuple(check_index(n) for n in names)
        needed: dict[str, int] = {}
        for n in self.names:
            for role in INDICES[n].roles:
                needed.setdefault(role, roles.band(role, n))
        self.role_bands = needed  # role -> 1-based band

    def from_arrays(self, raw: Mapping[str, Arr], valid: Arr) -> dict[str, Arr]:
        """Indices from raw band values per role (H, W) and a valid mask; float32, NaN where invalid."""
        refl: dict[str, Arr] = {}
        for role, a in raw.items():
            scale, offset = self.roles.scale_offset(role)
            r = a.astype(np.float32) * np.float32(scale) + np.float32(offset)
            r[~valid] = np.nan
            refl[role] = r
        out = {}
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for n in self.names:
                d = INDICES[n]
                out[n] = d.fn(*(refl[r] for r in d.roles)).astype(np.float32, copy=False)
        return out

    def compute(self, scene: Scene, window: PixelWindow) -> dict[str, Arr]:
        """Every index in ``window`` (scene pixel coordinates), (H, W) float32 each."""
        roles = list(self.role_bands)
        data, valid = scene.read_bands([self.role_bands[r] for r in roles], window)
        return self.from_arrays({r: data[i] for i, r in enumerate(roles)}, valid)


def calculator_for(scene: Scene, cfg: Any, names: Sequence[str]) -> IndexCalculator:
    """An `IndexCalculator` for an open scene and a `SegmentConfig`."""
    roles = resolve_band_roles(scene, cfg.band_roles, cfg.reflectance_scale, cfg.reflectance_offset)
    return IndexCalculator(roles, names)


# ---------------------------------------------------------------------------
# per-object statistics


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


# ---------------------------------------------------------------------------
# prefilter


def grid_pixels(height: int, width: int, points_per_side: int) -> tuple[Arr, Arr]:
    """(rows, cols) int64 of the chip pixels under SAM's point grid (x fastest): the pixels the generator
    decodes (`geosam.segment.sam_utils.build_point_grid`, `grid_pixel_indices`)."""
    from geosam.segment.sam_utils import build_point_grid, grid_pixel_indices

    points = build_point_grid(int(points_per_side)) * np.array([width, height], dtype=np.float64)
    return grid_pixel_indices(points, height, width)


class Prefilter:
    """Restrict a chip's prompts to pixels near passing index values (see the module docstring).

    min_index: {index: threshold}; radius_px: None = one grid spacing of the chip (ceil(chip side / points_per_side)).
    """

    def __init__(self, calc: IndexCalculator, min_index: Mapping[str, float], radius_px: int | None = None) -> None:
        if not min_index:
            raise ConfigError("the prefilter needs min_index (e.g. min_index={'ndvi': 0.3})")
        self.calc = calc
        self.min_index = {check_index(k): float(v) for k, v in min_index.items()}
        self.radius_px = radius_px

    def radius_for(self, height: int, width: int, points_per_side: int) -> int:
        if self.radius_px is not None:
            return int(self.radius_px)
        return math.ceil(max(height, width) / points_per_side)

    def mask(self, scene: Scene, window: PixelWindow, radius_px: int) -> Arr:
        """Bool (H, W) of ``window``: within ``radius_px`` of a passing pixel, for every index."""
        from scipy import ndimage

        i = scene.info
        r = max(0, int(radius_px))
        c0, r0 = max(0, window.col_off - r), max(0, window.row_off - r)
        c1, r1 = min(i.width, window.col_end + r), min(i.height, window.row_end + r)
        grown = PixelWindow(c0, r0, c1 - c0, r1 - r0)
        idx = self.calc.compute(scene, grown)
        ok = np.ones((grown.height, grown.width), dtype=bool)
        for n, t in self.min_index.items():
            passing = idx[n] >= np.float64(t)  # NaN never passes
            if r > 0:
                passing = ndimage.maximum_filter(passing.view(np.uint8), size=2 * r + 1, mode="constant").view(bool)
            ok &= passing
        return ok[window.relative_to(grown).slices()]

    def apply(self, chip: Chip, scene: Scene, points_per_side: int) -> tuple[int, int]:
        """Set ``chip.prompt_mask``; return (grid prompts on valid pixels, of them still allowed)."""
        h, w = chip.valid.shape
        chip.prompt_mask = self.mask(scene, chip.spec.window, self.radius_for(h, w, points_per_side))
        rows, cols = grid_pixels(h, w, points_per_side)
        return int(chip.valid[rows, cols].sum()), int(chip.prompt_region()[rows, cols].sum())


# ---------------------------------------------------------------------------
# index raster


def check_index_bands(scene: Any, indices: Sequence[str], *, band_roles: Any = None,
                      reflectance_scale: float | None = None, reflectance_offset: float | None = None) -> None:
    """`BandError` now (before any model work) if ``scene`` lacks a band the indices need."""
    from geosam.read.scene import Scene

    with Scene(scene, stretch=None) as sc:
        IndexCalculator(resolve_band_roles(sc, band_roles, reflectance_scale, reflectance_offset), indices)


def write_index_raster(
    scene: Any,
    path: str | os.PathLike[str],
    indices: Sequence[str] = ("ndvi",),
    *,
    band_roles: Any = None,
    reflectance_scale: float | None = None,
    reflectance_offset: float | None = None,
    block_px: int = 1024,
) -> Path:
    """Write indices of `scene` as a float32 GeoTIFF on the scene's grid, one band per index.

    Band descriptions are the index names; NaN is nodata (invalid pixels, zero
    denominators). Computed and written `block_px` x `block_px` px at a time, so memory
    is bounded by a block. Tiled (256 px), deflate, written atomically
    (`geosam.write.paths.atomic_output`).

    Args:
        scene: A raster path, an open rasterio dataset or a DataArray.
        path: The GeoTIFF to write.
        indices: Index names (`ndvi`, `ndwi`, `savi`, `evi`, `ndmi`, `ndre`, `exg`, `vari`, `gli`).
        band_roles: A preset (`sentinel2`, `landsat8`, `naip`, `rgb`) or a role -> 1-based band
            mapping; None: from the band descriptions / colour interpretation.
        reflectance_scale: Reflectance = DN * scale + offset (e.g. 1e-4 for Sentinel-2 L2A).
        reflectance_offset: See `reflectance_scale`.
        block_px: Side of the blocks computed at a time (px).

    Returns:
        The written path.

    Raises:
        BandError: The scene lacks a band an index needs.
        ExportError: `path` is the scene itself or cannot be written.
    """
    import rasterio

    from geosam.read.scene import Scene
    from geosam.write.paths import atomic_output, check_not_input, local_input
    from geosam.write.verify import raster_verifier

    path = Path(path)
    if block_px < 16:
        raise ExportError(f"{path}: block_px must be at least 16, got {block_px}")
    names = [check_index(n) for n in indices]
    if not names:
        raise ConfigError("write_index_raster needs at least one index")
    check_not_input(path, {"scene": local_input(scene)}, "index raster")  # a DataArray or STAC scene: no file
    with Scene(scene, stretch=None) as sc:  # index values are read raw: no stretch to estimate
        roles = resolve_band_roles(sc, band_roles, reflectance_scale, reflectance_offset)
        calc = IndexCalculator(roles, names)
        i = sc.info
        profile = {
            "driver": "GTiff", "width": i.width, "height": i.height, "count": len(names), "dtype": "float32",
            "crs": sc.ds.crs, "transform": i.transform, "nodata": float("nan"), "tiled": True,
            "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 3,
            "BIGTIFF": "IF_SAFER",
        }
        try:
            verify = raster_verifier(path, i.width, i.height, len(names))
            with atomic_output(path, verify=verify) as tmp, rasterio.open(tmp, "w", **profile) as dst:
                for k, n in enumerate(names, start=1):
                    dst.set_band_description(k, n)
                for r0 in range(0, i.height, block_px):
                    for c0 in range(0, i.width, block_px):
                        win = PixelWindow(c0, r0, min(block_px, i.width - c0), min(block_px, i.height - r0))
                        idx = calc.compute(sc, win)
                        dst.write(np.stack([idx[n] for n in names]), window=win.to_rasterio())
        except rasterio.errors.RasterioIOError as exc:
            raise ExportError(f"{path}: cannot write the index raster ({exc})") from exc
    log.info("wrote %s (%s)", path, ", ".join(names))
    return path


__all__ = [
    "IndexCalculator",
    "Prefilter",
    "ZonalStats",
    "grid_pixels",
    "write_index_raster",
    "zonal_stats",
]
