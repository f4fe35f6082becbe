"""Objects made in the monitoring run itself: a geosam segmentation of one date, of a composite, or of every date.

`SegmentObjects` says which (``monitor_objects(..., segment=SegmentObjects("2024-04-01"))``,
``geosam monitor ... --segment 2024-04-01``):

* a date -- that date's scene is segmented (segment everything, or one object per prompt with ``prompts``),
  and those objects are monitored on every date;
* ``"composite"`` -- a per-pixel median (or mean) of the dates on the **first date's grid** is segmented once.
  It is built block by block (`geosam.monitor.composite.composite_path`) into a temporary GeoTIFF beside the
  output (removed afterwards), never holding whole scenes; where no date is valid the composite is masked;
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from geosam.config import PromptConfig, ReadConfig, SegmentConfig
from geosam.config.monitor import CHANGE_STATS, MonitorConfig
from geosam.errors import BandError, ConfigError
from geosam.monitor.dates import DateScene, date_scenes, parse_date

if TYPE_CHECKING:
    from geosam.segment.base import MaskGenerator

log = logging.getLogger(__name__)

#: What `SegmentObjects.date` may be besides a date.
COMPOSITE, EVERY = "composite", "every"


@dataclass(frozen=True)
class SegmentObjects:
    """Which scene(s) a monitoring run segments to get its objects, and how.

    Args:
        date: a date of the run (``'2024-04-01'`` or a `datetime.date`), ``'composite'`` or ``'every'``.
        config: the segmentation settings: a `geosam.config.SegmentConfig` (default: SAM segment everything),
            or with ``prompts`` a `geosam.config.PromptConfig` (default: its defaults, the built-in LiteMedSAM).
            Its ``bands`` are the model bands of every date's file.
        mask_generator: a `geosam.segment.base.MaskGenerator` used instead of SAM (e.g. an oracle); for
            ``'every'`` one per date, as a mapping ``{'2024-04-01': generator, ...}``. Not with ``prompts``.
        prompts: point / box prompts (anything `geosam.modes.prompted.segment_prompts` takes: a GeoDataFrame,
            a list of points or boxes, or a vector file): one object per prompt, at the segmented date(s) or on
            the composite, instead of segment everything. Prompts without a CRS (a list, a frame or file without
            one) are in the segmented date's CRS (the composite's: the first date's); with ``'every'`` on dates
            in several CRSs they are refused (`geosam.prompts.gather.check_scenes_crs`).
        composite: the composite's per-pixel statistic over the valid dates, ``'median'`` or ``'mean'``.
        composite_chip_px: the composite is built in blocks of this many pixels a side.
    """

    date: str | dt.date
    config: SegmentConfig | PromptConfig | None = None
    mask_generator: MaskGenerator | Mapping[Any, MaskGenerator] | None = None
    prompts: Any = None
    composite: Literal["median", "mean"] = "median"
    composite_chip_px: int = 1024

    def __post_init__(self) -> None:
        if self.composite not in ("median", "mean"):
            raise ConfigError(f"composite must be 'median' or 'mean', got {self.composite!r}")
        if self.composite_chip_px < 16:
            raise ConfigError(f"composite_chip_px must be >= 16, got {self.composite_chip_px}")
        if isinstance(self.date, str) and self.date.strip().lower() in (COMPOSITE, EVERY):
            object.__setattr__(self, "date", self.date.strip().lower())
        else:
            object.__setattr__(self, "date", parse_date(self.date, "segment"))
        want = SegmentConfig if self.prompts is None else PromptConfig
        if self.config is None:
            object.__setattr__(self, "config", want())
        elif not isinstance(self.config, want):
            raise ConfigError(f"segment {'with' if self.prompts is not None else 'without'} prompts takes a "
                              f"{want.__name__}, got {type(self.config).__name__}")
        if self.prompts is not None and self.mask_generator is not None:
            raise ConfigError("prompts are decoded by the model (config.model): leave mask_generator unset")

    @property
    def settings(self) -> SegmentConfig | PromptConfig:
        """The segmentation settings (never None after construction)."""
        assert self.config is not None
        return self.config


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
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
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
        journal: the monitoring run's journal: each segmented date then has its own beside it
            (`segment_journal`), so a resumed run replays that date's finished chips. The composite is a new
            temporary file each run, so its segmentation is not journaled.
        scheduler: run the segmentation's chips on Dask (as `geosam.modes.everything.segment_scene`).
        n_workers: worker processes of ``scheduler="local"``.

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
    run = _RunArgs(None if journal is None else os.fspath(journal), scheduler, n_workers)
    if spec.date == COMPOSITE:
        return _segment_composite(spec, scene_list, output if output is not None else long_output, run)
    frames = [_segment_date(spec, s, run) for s in targets]
    return frames if spec.date == EVERY else frames[0]


def check_segment(spec: SegmentObjects, scenes: Sequence[DateScene], mcfg: MonitorConfig,
                  output: str | os.PathLike[str] | None, long_output: str | os.PathLike[str] | None
                  ) -> list[DateScene]:
    """Every check of a segmenting run that needs no pixels and no model; returns the dates to segment.

    Raises:
        ConfigError: a date not in the run (naming the run's dates), a bad output path or ranking column.
        BandError: a date without the model bands or the index bands (naming the date's scene).
        PromptError: prompts without a CRS for ``'every'`` on dates in several CRSs.
    """
    from geosam.index.calculator import check_index_bands
    from geosam.monitor.table import check_long_path
    from geosam.write.vector import vector_format

    targets = _targets(spec, scenes)
    if isinstance(spec.prompts, (str, os.PathLike)) and not Path(spec.prompts).is_file():
        raise ConfigError(f"{spec.prompts}: prompts file does not exist")
    if spec.prompts is not None and spec.date == EVERY:  # prompts without a CRS take each date's
        from geosam.prompts.gather import check_scenes_crs

        if getattr(_prompts(spec.prompts), "crs", None) is None:
            what = f"the prompts file {spec.prompts}" if isinstance(spec.prompts, (str, os.PathLike)) else "the prompts"
            check_scenes_crs([what], [s.source for s in targets], remedy="a GeoDataFrame or file with one")
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
    if spec.date != EVERY:  # the objects of one date (or of the first date's grid) must lie on every date
        _check_footprints(scenes, targets[0])
    bands = [_model_bands(s, spec.settings) for s in targets]
    if spec.date == COMPOSITE and len({len(b) for b in bands}) > 1:
        raise BandError("composite: the dates have different numbers of model bands ("
                        + ", ".join(f"{s.label}: {list(b)}" for s, b in zip(targets, bands)) + "); give --bands")
    if mcfg.rank_by is not None:
        _check_rank_by(spec, mcfg, scenes)
    return targets


def _targets(spec: SegmentObjects, scenes: Sequence[DateScene]) -> list[DateScene]:
    """The dates to segment; ConfigError for a date not in the run or a generator missing for one."""
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
    return targets


def _check_rank_by(spec: SegmentObjects, mcfg: MonitorConfig, scenes: Sequence[DateScene]) -> None:
    """ConfigError unless ``rank_by`` names a column the wide table will have."""
    from geosam.assemble.store import OBJECT_COLUMNS
    from geosam.modes.everything import stat_columns
    from geosam.prompts.parse import OUTPUT_COLUMNS

    cfg = spec.settings
    made = set(OUTPUT_COLUMNS) if isinstance(cfg, PromptConfig) else \
        set(OBJECT_COLUMNS) | set(stat_columns(cfg.index.names()))
    if spec.prompts is not None:  # their own columns are carried through
        made |= set(getattr(_prompts(spec.prompts), "columns", ()))
    cols = made | {"object_id", "track_id"}
    cols |= {f"{n}_{c}" for n in mcfg.indices for c in CHANGE_STATS}
    cols |= {f"{n}_mean_{s.label}" for n in mcfg.indices for s in scenes}
    cols |= {f"valid_fraction_{s.label}" for s in scenes}
    if mcfg.rank_by not in cols:
        raise ConfigError(f"cannot rank by {mcfg.rank_by!r}; choose one of {sorted(cols)}")


def _check_footprints(scenes: Sequence[DateScene], ref: DateScene) -> None:
    """ConfigError naming a date whose raster does not overlap the segmented date's (``ref``) footprint."""
    from rasterio.warp import transform_bounds

    from geosam.read.scene import Scene

    with Scene(ref.source, stretch=None) as r:
        ref_bounds, ref_crs = r.info.bounds, r.info.crs_wkt
    for s in scenes:
        if s is ref:
            continue
        with Scene(s.source, stretch=None) as sc:
            x0, y0, x1, y1 = transform_bounds(ref_crs, sc.info.crs_wkt, *ref_bounds, densify_pts=21)
            b = sc.info.bounds
        if x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3]:
            raise ConfigError(f"{s.name} ({s.date}): the raster does not overlap {ref.name} ({ref.date}), whose "
                              "segmentation would be measured on it: check that the dates show the same place")


def _model_bands(s: DateScene, cfg: SegmentConfig | PromptConfig) -> tuple[int, ...]:
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


@dataclasses.dataclass(frozen=True)
class _RunArgs:
    """How the segmentation runs: the monitoring run's journal (None: none), Dask scheduler and workers."""

    journal: str | None = None
    scheduler: Any = None
    n_workers: int | None = None


def segment_journal(journal: str | os.PathLike[str], date: dt.date) -> str:
    """The journal of one date's segmentation inside a monitoring run journaled in ``journal``.

    Args:
        journal: The monitoring run's journal.
        date: The segmented date.

    Returns:
        ``<journal>.segment-YYYY-MM-DD``.
    """
    return f"{os.fspath(journal)}.segment-{date.isoformat()}"


def _segment(spec: SegmentObjects, source: Any, key: Any, read: ReadConfig, run: _RunArgs) -> Any:
    """Segment everything in ``source`` (or decode ``spec.prompts`` there) with ``read`` as the read settings."""
    cfg = dataclasses.replace(spec.settings, read=read)
    journal = segment_journal(run.journal, key) if run.journal is not None and key != COMPOSITE else None
    kw = {"journal": journal, "scheduler": run.scheduler, "n_workers": run.n_workers}
    if spec.prompts is not None:
        from geosam.modes.prompted import segment_prompts

        assert isinstance(cfg, PromptConfig)
        return segment_prompts(source, _prompts(spec.prompts), config=cfg, **kw)
    from geosam.modes.everything import segment_scene

    assert isinstance(cfg, SegmentConfig)
    return segment_scene(source, _generator(spec, key), config=cfg, **kw)


def _prompts(prompts: Any) -> Any:
    if isinstance(prompts, (str, os.PathLike)):
        from geosam.write.vector import read_vector

        return read_vector(prompts)
    return prompts


def _segment_date(spec: SegmentObjects, s: DateScene, run: _RunArgs) -> Any:
    read = dataclasses.replace(spec.settings.read, bands=_model_bands(s, spec.settings))
    gdf = _segment(spec, s.source, s.date, read, run)
    log.info("segmented %s (%s): %d objects", s.name, s.date, len(gdf))
    return _named(gdf, f"segmentation of {s.label}")


def _segment_composite(spec: SegmentObjects, scenes: Sequence[DateScene],
                       output: str | os.PathLike[str] | None, run: _RunArgs) -> Any:
    from geosam.monitor.composite import composite_path

    folder = Path(output).parent if output is not None else None  # beside the output: room for a scene
    with tempfile.TemporaryDirectory(prefix=".geosam-composite-", dir=folder) as tmp:
        path = composite_path(scenes, [_model_bands(s, spec.settings) for s in scenes], Path(tmp) / "composite.tif",
                              statistic=spec.composite, chip_px=spec.composite_chip_px, read=spec.settings.read)
        nb = len(_model_bands(scenes[0], spec.settings))
        read = dataclasses.replace(spec.settings.read, bands=tuple(range(1, nb + 1)) if nb == 3 else (1,),
                                   fill_value=None)
        gdf = _segment(spec, path, COMPOSITE, read, run)
    log.info("segmented the %s composite of %d dates: %d objects", spec.composite, len(scenes), len(gdf))
    return _named(gdf, f"segmentation of the {spec.composite} composite")


def _named(gdf: Any, name: str) -> Any:
    gdf.attrs.clear()
    gdf.attrs["name"] = name
    return gdf


__all__ = ["COMPOSITE", "EVERY", "SegmentObjects", "check_segment", "segment_journal", "segmented_objects"]
