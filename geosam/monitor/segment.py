"""Objects made in the monitoring run itself: a geosam segmentation of one date, of a composite, or of every date.

`SegmentObjects` says which (``monitor_objects(..., segment=SegmentObjects("2024-04-01"))``,
``geosam monitor ... --segment 2024-04-01``):

* a date -- that date's scene is segmented (segment everything), and those objects are monitored on every date;
* ``"composite"`` -- a per-pixel median (or mean) of the dates on the **first date's grid** is segmented once.
  It is built chip by chip (`composite_path`) into a temporary GeoTIFF beside the output (removed afterwards),
  never holding whole scenes: each date's chip is a windowed read on that grid, or for a date in another grid
  a window of a `rasterio.vrt.WarpedVRT` onto it (nearest neighbour). A pixel counts at a date where that date
  is valid (nodata, masks, ``fill_value``); where no date is valid the composite is masked;
* ``"every"`` -- each date is segmented in its own grid and the objects are tracked across dates
  (`geosam.monitor.track`).

The model image of a date: ``bands`` of the segmentation settings (the same numbers for every file), else the
file's red/green/blue (colour interpretation) or first bands; a band stack date (``stack=``) uses its red,
green and blue roles. Every check that needs no pixels (the date exists, its bands, the index bands of every
date, the output paths, the ranking column) runs before any model loads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geosam.config import ReadConfig, SegmentConfig
from geosam.config.monitor import CHANGE_STATS, MonitorConfig
from geosam.errors import BandError, ConfigError
from geosam.monitor.dates import DateScene, date_scenes, parse_date

if TYPE_CHECKING:
    from geosam.read.scene import Scene
    from geosam.segment.base import MaskGenerator

log = logging.getLogger(__name__)

#: What `SegmentObjects.date` may be besides a date.
COMPOSITE, EVERY = "composite", "every"


@dataclass(frozen=True)
class SegmentObjects:
    """Which scene(s) a monitoring run segments to get its objects, and how.

    Args:
        date: a date of the run (``'2024-04-01'`` or a `datetime.date`), ``'composite'`` or ``'every'``.
        config: the segmentation settings (`geosam.config.SegmentConfig`; default its defaults: SAM segment
            everything). Its ``bands`` are the model bands of every date's file.
        mask_generator: a `geosam.segment.base.MaskGenerator` used instead of SAM (e.g. an oracle); for
            ``'every'`` one per date, as a mapping ``{'2024-04-01': generator, ...}``.
        composite: the composite's per-pixel statistic over the valid dates, ``'median'`` or ``'mean'``.
        composite_chip_px: the composite is built in blocks of this many pixels a side.
    """

    date: str | dt.date
    config: SegmentConfig = field(default_factory=SegmentConfig)
    mask_generator: MaskGenerator | Mapping[Any, MaskGenerator] | None = None
    composite: Literal["median", "mean"] = "median"
    composite_chip_px: int = 1024

    def __post_init__(self) -> None:
        if self.composite not in ("median", "mean"):
            raise ConfigError(f"composite must be 'median' or 'mean', got {self.composite!r}")
        if self.composite_chip_px < 16:
            raise ConfigError(f"composite_chip_px must be >= 16, got {self.composite_chip_px}")
        if isinstance(self.date, str) and self.date.strip().lower() in (COMPOSITE, EVERY):
            object.__setattr__(self, "date", self.date.strip().lower())
        elif not isinstance(self.date, str) or self.date not in (COMPOSITE, EVERY):
            object.__setattr__(self, "date", parse_date(self.date, "segment"))


def segmented_objects(
    scenes: Any,
    objects: Any,
    segment: SegmentObjects | str | dt.date,
    *,
    dates: Sequence[Any] | None,
    stack: Mapping[Any, Any] | None,
    config: MonitorConfig,
    output: str | os.PathLike[str] | None,
    long_output: str | os.PathLike[str] | None,
) -> Any:
    """The objects of `monitor_objects(..., segment=...)`: one GeoDataFrame, or a list with one per date (``every``).

    Every check that needs no pixels runs before the first model loads (`check_segment`).

    Args:
        scenes: as `geosam.monitor.series.monitor_objects`.
        objects: must be None (objects are given or segmented, not both).
        segment: a `SegmentObjects`, or just its ``date`` (``'2024-04-01'``, ``'composite'``, ``'every'``).
        dates: as `geosam.monitor.series.monitor_objects`.
        stack: as `geosam.monitor.series.monitor_objects`.
        config: the monitoring settings.
        output: the wide table's path (checked now).
        long_output: the long table's path (checked now).

    Returns:
        A GeoDataFrame of the segmented objects, or a list with one per date, oldest first.

    Raises:
        ConfigError: objects given too, a date not in the run, a bad band or path; before any model loads.
    """
    if objects is not None:
        raise ConfigError("give the objects (--objects / objects=) or segment a date (--segment / segment=), not both")
    spec = segment if isinstance(segment, SegmentObjects) else SegmentObjects(segment)
    scene_list = date_scenes(scenes, dates, stack)
    targets = check_segment(spec, scene_list, config, output, long_output)
    if spec.date == COMPOSITE:
        return _segment_composite(spec, scene_list, output)
    frames = [_segment_date(spec, s) for s in targets]
    return frames if spec.date == EVERY else frames[0]


def check_segment(spec: SegmentObjects, scenes: Sequence[DateScene], mcfg: MonitorConfig,
                  output: str | os.PathLike[str] | None, long_output: str | os.PathLike[str] | None
                  ) -> list[DateScene]:
    """Every check of a segmenting run that needs no pixels and no model; returns the dates to segment.

    Raises:
        ConfigError: a date not in the run (naming the run's dates), a bad output path or ranking column.
        BandError: a date without the model bands or the index bands (naming the date's scene).
    """
    from geosam.assemble.store import OBJECT_COLUMNS
    from geosam.indices import check_index_bands
    from geosam.modes.everything import stat_columns
    from geosam.monitor.table import check_long_path
    from geosam.write.vector import vector_format

    if spec.date in (COMPOSITE, EVERY):
        targets = list(scenes)
    else:
        targets = [s for s in scenes if s.date == spec.date]
        if not targets:
            raise ConfigError(f"--segment {spec.date}: not a date of this run; its dates are "
                              + ", ".join(s.label for s in scenes) + " (or use composite / every)")
    if isinstance(spec.mask_generator, Mapping):
        keys = {parse_date(k, "mask_generator") if k != COMPOSITE else k for k in spec.mask_generator}
        missing = [s.label for s in targets if s.date not in keys] if spec.date != COMPOSITE else \
            ([] if COMPOSITE in keys else [COMPOSITE])
        if missing:
            raise ConfigError(f"mask_generator has no generator for {', '.join(missing)}")
    if output is not None:
        vector_format(Path(output))
    if long_output is not None:
        check_long_path(long_output)
    for s in scenes:  # the monitoring's own band check, now rather than after the segmentation
        try:
            check_index_bands(s.source, mcfg.indices, band_roles=s.band_roles if s.band_roles is not None
                              else mcfg.band_roles, reflectance_scale=mcfg.reflectance_scale,
                              reflectance_offset=mcfg.reflectance_offset)
        except BandError as exc:
            raise BandError(f"date {s.date}: {exc}") from None
    bands = [_model_bands(s, spec.config) for s in targets]
    if spec.date == COMPOSITE and len({len(b) for b in bands}) > 1:
        raise BandError("composite: the dates have different numbers of model bands ("
                        + ", ".join(f"{s.label}: {list(b)}" for s, b in zip(targets, bands)) + "); give --bands")
    if mcfg.rank_by is not None:
        cols = set(OBJECT_COLUMNS) | set(stat_columns(spec.config.index.names())) | {"object_id", "track_id"}
        cols |= {f"{n}_{c}" for n in mcfg.indices for c in CHANGE_STATS}
        cols |= {f"{n}_mean_{s.label}" for n in mcfg.indices for s in scenes}
        cols |= {f"valid_fraction_{s.label}" for s in scenes}
        if mcfg.rank_by not in cols:
            raise ConfigError(f"cannot rank by {mcfg.rank_by!r}; choose one of {sorted(cols)}")
    return targets


def _model_bands(s: DateScene, cfg: SegmentConfig) -> tuple[int, ...]:
    """The 1-based bands of ``s``'s model image; BandError naming the date when they do not exist."""
    from geosam.config.bands import resolve_band_roles
    from geosam.read.scene import Scene

    if s.band_roles is not None and s.date_from == "band stack":
        if cfg.read.bands:
            raise ConfigError("a band stack's model image is each date's red, green and blue roles: leave bands "
                              "(--bands) unset")
        with Scene(s.source, stretch=None) as sc:
            roles = resolve_band_roles(sc, s.band_roles).bands
        if not all(r in roles for r in ("red", "green", "blue")):
            raise BandError(f"{s.name} ({s.date}): segmenting this date needs its red, green and blue roles in the "
                            f"band stack, got {dict(roles)}")
        return (roles["red"], roles["green"], roles["blue"])
    try:
        with Scene(s.source, ReadConfig(bands=cfg.read.bands), stretch=None) as sc:
            return tuple(sc.bands)
    except BandError as exc:
        raise BandError(f"date {s.date}: {exc}") from None


def _generator(spec: SegmentObjects, key: Any) -> MaskGenerator | None:
    gen = spec.mask_generator
    if isinstance(gen, Mapping):
        by_key = {(k if k == COMPOSITE else parse_date(k, "mask_generator")): v for k, v in gen.items()}
        return by_key[key]
    return gen


def _segment_date(spec: SegmentObjects, s: DateScene) -> Any:
    from geosam.modes.everything import segment_scene

    read = dataclasses.replace(spec.config.read, bands=_model_bands(s, spec.config))
    gdf = segment_scene(s.source, _generator(spec, s.date), config=dataclasses.replace(spec.config, read=read))
    log.info("segmented %s (%s): %d objects", s.name, s.date, len(gdf))
    return _named(gdf, f"segmentation of {s.label}")


def _segment_composite(spec: SegmentObjects, scenes: Sequence[DateScene],
                       output: str | os.PathLike[str] | None) -> Any:
    from geosam.modes.everything import segment_scene

    folder = Path(output).parent if output is not None else None
    with tempfile.TemporaryDirectory(prefix=".geosam-composite-", dir=folder) as tmp:
        path = composite_path(scenes, [_model_bands(s, spec.config) for s in scenes], Path(tmp) / "composite.tif",
                              statistic=spec.composite, chip_px=spec.composite_chip_px, read=spec.config.read)
        nb = len(_model_bands(scenes[0], spec.config))
        read = dataclasses.replace(spec.config.read, bands=tuple(range(1, nb + 1)) if nb == 3 else (1,),
                                   fill_value=None)
        gdf = segment_scene(path, _generator(spec, COMPOSITE), config=dataclasses.replace(spec.config, read=read))
    log.info("segmented the %s composite of %d dates: %d objects", spec.composite, len(scenes), len(gdf))
    return _named(gdf, f"segmentation of the {spec.composite} composite")


def _named(gdf: Any, name: str) -> Any:
    gdf.attrs.clear()
    gdf.attrs["name"] = name
    return gdf


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
        reduce = np.nanmedian if statistic == "median" else np.nanmean
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            for row in range(0, ref.height, chip_px):
                for col in range(0, ref.width, chip_px):
                    w = PixelWindow(col, row, min(chip_px, ref.width - col), min(chip_px, ref.height - row))
                    stackd = np.stack([r.read(w) for r in readers])  # (dates, bands, h, w), NaN where invalid
                    valid = np.isfinite(stackd).all(axis=1).any(axis=0)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: masked below
                        out = reduce(stackd, axis=0)
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


__all__ = ["COMPOSITE", "EVERY", "SegmentObjects", "check_segment", "composite_path", "segmented_objects"]
