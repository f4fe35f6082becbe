"""`monitor_objects`: objects through time, the Python face of ``geosam monitor``.

Order of work: every check that needs no pixels runs first (dates, objects and their CRS, band roles of every
date, mask bands, overlap of objects and dates, output paths, the ranking column), then each date is read
once, chip by chip, as chip tasks through the run machinery (`geosam.monitor.measure`: journal, Dask) into an
on-disk store (`geosam.monitor.store`), then change, flags and ranking (`geosam.monitor.change`), tracking when
each date has its own objects (`geosam.monitor.track`), and the tables (`geosam.monitor.table`), built from
the store in batches of objects (`geosam.monitor.stream`); with ``keep_tables=False`` they go straight to their
files, an objects file is read in batches, never whole (`geosam.monitor.objects`), and memory does not grow
with objects x dates.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from geosam.config.bands import resolve_band_roles
from geosam.config.monitor import CHANGE_STATS, MonitorConfig
from geosam.errors import BandError, ConfigError, NoCRSError
from geosam.index.calculator import IndexCalculator
from geosam.monitor.change import flags, rank_table, series_change
from geosam.monitor.dates import DateScene, date_scenes
from geosam.monitor.objects import FileObjects, FrameObjects, Objects
from geosam.monitor.segment import SegmentObjects, segmented_objects
from geosam.monitor.store import StatsStore
from geosam.monitor.table import check_long_path, long_table, wide_columns, write_long
from geosam.monitor.zonal import DateReader, DateStats

log = logging.getLogger(__name__)


@dataclass
class MonitorResult:
    """What `monitor_objects` returns.

    Args:
        wide: one row per object (per track when tracked): geometry, attributes, per-date means and statuses,
            change columns, flags, ``rank`` (see `geosam.monitor.table`).
        long: one row per object and date, with every statistic and the status.
        dates: the dates, oldest first.
        tracks: when each date had its own objects, `geosam.monitor.track.track_objects`'s table; else None.
        paths: the files written.
        n_rows: rows of the wide table (also when it was only written, ``keep_tables=False``).
        tasks: chip tasks of the run: ``total``, ``replayed`` (from the journal) and ``computed``.
    """

    wide: Any
    long: Any
    dates: list[dt.date]
    tracks: Any = None
    paths: tuple[Path, ...] = ()
    n_rows: int = 0
    tasks: dict[str, int] | None = None


def _load_objects(obj: Any, k: int | None = None, *, whole: bool = True) -> Objects:
    """The objects, checked (a CRS); a file is read whole only when ``whole`` (the tables stay in memory)."""
    import geopandas as gpd

    from geosam.write.vector import read_vector

    name = f"objects[{k}]" if k is not None else "objects"
    if isinstance(obj, (str, os.PathLike)):
        if not Path(obj).exists():
            raise ConfigError(f"{obj}: objects file does not exist")
        name = os.fspath(obj)
        if not whole:
            src = FileObjects(obj)
            _check_crs(src.crs, name)
            return src
        obj = read_vector(obj)
    if not isinstance(obj, gpd.GeoDataFrame):
        raise ConfigError(f"{name}: objects must be a vector file or a GeoDataFrame, got {type(obj).__name__}")
    _check_crs(obj.crs, name)
    obj = obj.reset_index(drop=True)  # rows without geometry stay, with status no_pixel_centre
    obj.attrs["name"] = name
    return FrameObjects(obj, name)


def _check_crs(crs: Any, name: str) -> None:
    if crs is None:
        raise NoCRSError(f"{name}: the objects have no CRS, so they cannot be placed on the dates' rasters; "
                         "set one (gdf.set_crs(...) / ogr2ogr -a_srs EPSG:XXXX)")


def _open_dates(scenes: Sequence[DateScene], cfg: MonitorConfig) -> list[DateReader]:
    """Open every date and resolve its index bands; BandError naming the date's scene and the index."""
    from geosam.read.scene import Scene

    readers: list[DateReader] = []
    try:
        for s in scenes:
            sc = Scene(s.source, stretch=None)
            readers.append(DateReader(sc, _calculator(sc, s, cfg), s.mask_band or cfg.mask_band, cfg))
            mb = readers[-1].mask_band
            if mb is not None and mb > sc.info.count:
                raise BandError(f"{s.name} ({s.date}): mask band {mb} does not exist (bands 1..{sc.info.count})")
    except BaseException:
        for r in readers:
            r.scene.close()
        raise
    return readers


def _calculator(sc: Any, s: DateScene, cfg: MonitorConfig) -> IndexCalculator:
    roles = resolve_band_roles(sc, s.band_roles if s.band_roles is not None else cfg.band_roles,
                               cfg.reflectance_scale, cfg.reflectance_offset)
    try:
        return IndexCalculator(roles, cfg.indices)
    except BandError as exc:
        raise BandError(f"date {s.date}: {exc}") from None


def _check_overlap(readers: Sequence[DateReader], scenes: Sequence[DateScene], sources: Sequence[Objects]) -> None:
    """ConfigError naming a date whose raster holds none of its objects' bounding boxes."""
    from rasterio.warp import transform_bounds

    for r, s, f in zip(readers, scenes, sources):
        if f.n == 0:
            continue
        x0, y0, x1, y1 = transform_bounds(f.crs, r.scene.info.crs_wkt, *f.total_bounds(), densify_pts=21)
        b = r.scene.info.bounds
        if x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3]:
            raise ConfigError(f"{s.name} ({s.date}): the raster does not overlap the objects ({f.name}): "
                              "check that they show the same place")


def _rank_columns(cfg: MonitorConfig, dates: Sequence[dt.date], attrs: Sequence[str]) -> set[str]:
    cols = set(attrs) | {f"{n}_{c}" for n in cfg.indices for c in CHANGE_STATS}
    cols |= {f"{n}_mean_{d.isoformat()}" for n in cfg.indices for d in dates}
    return cols | {f"valid_fraction_{d.isoformat()}" for d in dates} | {"object_id", "track_id"}


def _check_output_paths(scene_list: Sequence[DateScene], objects: Any, segment: Any,
                        output: str | os.PathLike[str] | None, long_output: str | os.PathLike[str] | None) -> None:
    """Refuse, before any work, an output that is an input (a date's raster, an objects or prompts file), two
    outputs on one file, a folder, or an unwritable folder (`geosam.write.paths.check_outputs`; an existing output
    is replaced atomically here: the CLI asks for --overwrite)."""
    from geosam.write.paths import check_outputs, local_input

    inputs: dict[str, object] = {f"date {s.date} ({s.name})": local_input(s.source) for s in scene_list}
    sets = objects if isinstance(objects, (list, tuple)) else [objects]
    inputs.update({f"objects {k + 1}" if len(sets) > 1 else "objects": o for k, o in enumerate(sets)
                   if isinstance(o, (str, os.PathLike))})
    prompts = getattr(segment, "prompts", None)
    if isinstance(prompts, (str, os.PathLike)):
        inputs["prompts"] = prompts
    check_outputs({"output": output, "long_output": long_output}, {k: v for k, v in inputs.items() if v},
                  overwrite=True)


def monitor_objects(
    scenes: Any,
    objects: Any = None,
    *,
    segment: SegmentObjects | str | dt.date | None = None,
    dates: Sequence[Any] | None = None,
    stack: Mapping[Any, Any] | None = None,
    config: MonitorConfig | None = None,
    output: str | os.PathLike[str] | None = None,
    long_output: str | os.PathLike[str] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    keep_tables: bool = True,
    **settings: Any,
) -> MonitorResult:
    """Per-object index series, change and ranking across dates (and tracking when each date has its objects).

    Args:
        scenes: raster paths / globs / ``@list`` files, one multi-date band stack (with ``stack``), or a
            DataArray with a ``time`` dimension (`geosam.monitor.dates`).
        objects: a vector file or GeoDataFrame (the same objects at every date; attribute columns carried
            through), or a list with one per date (each date's own objects, e.g. a geosam segmentation of
            each date): these are tracked (`geosam.monitor.track`) and the wide table has one row per track.
        segment: instead of ``objects``, segment the dates in this run (`geosam.monitor.segment.SegmentObjects`,
            or just its date: ``'2024-04-01'``, ``'composite'`` or ``'every'``, the last one tracked).
        dates: one date per file (else from tags or file names).
        stack: {date: band roles} of a band stack, e.g. ``{'2021-06-01': 'red=1,green=2,blue=3,nir=4', ...}``.
        config: a `MonitorConfig`; or give its fields as keywords (``indices=('ndvi',), min_valid=0.5``).
        output: write the wide table here (any vector format geosam writes).
        long_output: write the long table here (``.csv``, ``.parquet`` or ``.geoparquet``).
        journal: a journal file (`geosam.run.journal`): each finished chip task is committed to it, and a run
            started again with it (same dates, objects and settings) replays them and computes only the rest.
            With ``segment=``, each segmented date keeps its own journal beside it
            (`geosam.monitor.segment.segment_journal`).
        scheduler: run the chip tasks (and those of ``segment=``) on Dask: ``"local"`` (a local cluster of ``n_workers`` processes), a
            scheduler address (``"tcp://host:8786"``) or a ``distributed.Client``; None: in this process.
        n_workers: worker processes of ``scheduler="local"`` (default 2).
        keep_tables: False: the tables are written to ``output`` / ``long_output`` batch by batch and not
            returned (``wide`` and ``long`` are None), so memory does not grow with objects x dates
            (tracked runs keep their tables).

    Returns:
        A `MonitorResult`.

    Raises:
        GeosamError: for bad input, before any pixel is read (unparseable or duplicate dates, objects without
            CRS, an index band a date lacks, a date that does not overlap the objects, a bad output path, a
            journal of another run, bad scheduler settings).
    """
    from geosam.run.cluster import check_scheduler
    from geosam.write.vector import vector_format

    if config is not None and settings:
        raise ConfigError("give either config or keyword settings, not both")
    known = {f.name for f in fields(MonitorConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown monitor setting(s) {unknown}; known: {sorted(known)}")
    cfg = config or MonitorConfig(**settings)
    check_scheduler(scheduler, n_workers)
    scene_list = date_scenes(scenes, dates, stack)
    _check_output_paths(scene_list, objects, segment, output, long_output)
    if segment is not None or objects is None:  # objects made here (checks first, then the model)
        if segment is None:
            raise ConfigError("give objects (a vector file or GeoDataFrame) or segment= (a date, 'composite', 'every')")
        objects = segmented_objects(scene_list, objects, segment, dates=None, stack=None, config=cfg,
                                    output=output, long_output=long_output, journal=journal, scheduler=scheduler,
                                    n_workers=n_workers)
    tracked = isinstance(objects, (list, tuple))
    frames = ([_load_objects(o, k) for k, o in enumerate(objects)] if tracked
              else [_load_objects(objects, whole=keep_tables)])
    if tracked and len(frames) != len(scene_list):
        raise ConfigError(f"{len(frames)} object sets for {len(scene_list)} dates: give one per date, oldest first, "
                          "or one for all dates")
    per_date = frames if tracked else frames * len(scene_list)
    if output is not None:
        vector_format(Path(output))
    if long_output is not None:
        check_long_path(long_output)
    if cfg.rank_by is not None:
        cols = _rank_columns(cfg, [s.date for s in scene_list], frames[0].columns)
        if cfg.rank_by not in cols:
            raise ConfigError(f"cannot rank by {cfg.rank_by!r}; choose one of {sorted(cols)}")
    if not keep_tables and output is None and long_output is None:
        raise ConfigError("keep_tables=False needs output and/or long_output (the tables are only written)")
    from geosam.monitor.measure import measure

    readers = _open_dates(scene_list, cfg)
    try:
        _check_overlap(readers, scene_list, per_date)
        store, counts = measure(readers, scene_list, per_date, cfg, journal=journal, scheduler=scheduler,
                                n_workers=n_workers)
    finally:
        for r in readers:
            r.scene.close()
    with store:
        result = _results(store, scene_list, per_date, cfg, tracked, keep_tables, output, long_output)
    result.tasks = {"total": counts.total, "replayed": counts.replayed, "computed": counts.computed}
    return result


def _results(store: StatsStore, scenes: Sequence[DateScene], sources: Sequence[Objects], cfg: MonitorConfig,
             tracked: bool, keep_tables: bool, output: str | os.PathLike[str] | None,
             long_output: str | os.PathLike[str] | None) -> MonitorResult:
    """The tables from the store: streamed to their files (``keep_tables=False``), else in memory and written."""
    dates = [s.date for s in scenes]
    if not keep_tables and not tracked:
        from geosam.monitor.stream import write_streamed

        paths = write_streamed(store, sources[0], dates, cfg, output, long_output)
        return MonitorResult(None, None, dates, paths=tuple(paths), n_rows=sources[0].n)
    frames = [s.frame for s in sources if isinstance(s, FrameObjects)]  # in memory: the tables are
    assert len(frames) == len(sources)
    stats = [store.date_stats(k, np.arange(len(f))) for k, f in enumerate(frames)]
    result = _tables(scenes, frames, stats, cfg, tracked)
    written = []
    if output is not None:
        from geosam.write.vector import write_vector

        written.append(write_vector(result.wide, output))
    if long_output is not None:
        written.append(write_long(result.long, long_output))
    result.paths = tuple(written)
    result.n_rows = len(result.wide)
    if not keep_tables:
        result.wide = result.long = None
    return result


def _tables(scenes: Sequence[DateScene], frames: Sequence[Any], stats: Sequence[DateStats], cfg: MonitorConfig,
            tracked: bool) -> MonitorResult:
    import geopandas as gpd

    dates = [s.date for s in scenes]
    crs = frames[0].crs
    if not tracked:
        from geosam.monitor.stream import wide_batch

        rows = np.arange(len(frames[0]), dtype=np.int64)
        wide = wide_batch(frames[0], rows, stats, dates, cfg)
        long = long_table(stats, dates, [rows + 1] * len(dates), [frames[0].geometry.values] * len(dates), crs)
        if cfg.rank_by is not None:
            wide = rank_table(wide, cfg.rank_by, cfg.ascending)
        return MonitorResult(wide=wide, long=long, dates=dates)
    from geosam.monitor.track import track_objects

    tracks = track_objects(frames, dates, cfg.match_iou, cfg.cover_fraction)
    present = tracks[tracks["object"] >= 0]
    ids = np.unique(tracks["track_id"].to_numpy())
    pos = {int(t): k for k, t in enumerate(ids)}
    track_rows, track_of = [], []
    for d in dates:
        sel = present[present["date"] == d.isoformat()].sort_values("object")
        t = sel["track_id"].to_numpy()
        track_rows.append((np.array([pos[int(x)] for x in t], dtype=np.int64), len(ids)))
        track_of.append(t)
    first = present.drop_duplicates("track_id").set_index("track_id").loc[ids]
    base = gpd.GeoDataFrame({"track_id": ids}, geometry=first.geometry.to_numpy(), crs=crs)
    cols = wide_columns(stats, dates, cfg.indices, track_rows)
    long = long_table(stats, dates, [np.arange(1, len(f) + 1) for f in frames],
                      [f.geometry.to_crs(crs).values for f in frames], crs, {"track_id": track_of})
    change: dict[str, Any] = {}
    for n in cfg.indices:
        means = np.stack([np.asarray(cols[f"{n}_mean_{d.isoformat()}"], dtype=np.float64) for d in dates], axis=1)
        change.update(series_change(means, dates, n))
    change.update(flags(change, cfg.loss, cfg.gain))
    wide = base.assign(**cols, **change)
    if cfg.rank_by is not None:
        wide = rank_table(wide, cfg.rank_by, cfg.ascending)
    return MonitorResult(wide=wide, long=long, dates=dates, tracks=tracks)


__all__ = ["MonitorResult", "monitor_objects"]
