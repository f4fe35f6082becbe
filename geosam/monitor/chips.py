"""Monitoring as chip tasks: one task = one date, one chip window, the objects whose pixels it holds.

Planning (on the client, one batch of objects at a time, `plan_batch`): each object's geometry, reprojected to
the date's CRS, gets its pixel window (`geosam.monitor.zonal.pixel_windows`) and the chip (``chip_size_px`` of
the date's grid) holding its window's top-left pixel; these plan rows are spilled to the run's on-disk store
(`geosam.monitor.store.PlanStore`). `tasks_from_plan` then reads them back chip by chip: one task reads the
window covering a chip's objects (one read per chip and date, whatever the number of objects). An object
larger than a chip gets one task per chip-sized tile of its own window (``piece=True``). A task carries its
objects' geometries (WKB, in the date's CRS), so a worker needs nothing else but the date's raster. Only the
objects of one task share a label raster, so overlaps matter only among them: they are found there
(`geosam.monitor.zonal.overlapping` on the task's geometries, in the date's CRS) and those objects are
rasterized one by one; no step needs every geometry at once.

Computing (`chip_stats`, on the client or a Dask worker): a task's payload is a `ChipStats` of sufficient
statistics that combine across chips exactly: pixel counts, per index the count of finite values, their
float64 sum and the count at or above the threshold; the median of an object wholly inside the task
(computed there, exactly); for a piece, the object's finite index values in the tile, so the exact median is
taken over all its pieces once they are in (`geosam.monitor.store.StatsStore.finish`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosam.config.monitor import MonitorConfig
from geosam.index.calculator import IndexCalculator
from geosam.monitor.zonal import DateReader, label_sums, overlapping, pixel_windows, read_padded, shapes
from geosam.windows import PixelWindow

Arr = np.ndarray

@dataclass(frozen=True)
class MonitorTask:
    """One chip of one date and the objects it measures (small, picklable: a Dask task, a journal key).

    Packed in arrays (a few bytes per object besides its WKB), so one date's plan stays small.

    Attributes:
        date: The date's position (oldest first).
        window: The window to read, in the date's pixel grid (may reach outside the raster).
        ids: The objects' rows in the objects table (0-based, int64).
        wkb: Their geometries in the date's CRS: WKB, one after the other.
        offsets: Where each object's WKB starts in ``wkb`` (int64, one more than ``ids``).
        piece: One tile of an object larger than a chip (its statistics are partial).
    """

    date: int
    window: PixelWindow
    ids: Arr
    wkb: bytes
    offsets: Arr
    piece: bool = False

    def geometries(self) -> Arr:
        """The objects' shapely geometries (date CRS)."""
        import shapely

        o = self.offsets
        return shapely.from_wkb(np.array([self.wkb[o[k]:o[k + 1]] for k in range(len(self.ids))], dtype=object))


def task_key(task: MonitorTask) -> str:
    """A task's journal key: date, first object and window (unique within a run)."""
    w = task.window
    return f"{task.date}:{int(task.ids[0])}:{w.col_off},{w.row_off},{w.width},{w.height}"


def _pack(date: int, parts: Sequence[tuple[Any, ...]]) -> MonitorTask:
    """A bucket's task from its plan rows (see `plan_batch`), their objects and WKB joined."""
    ids = np.concatenate([np.frombuffer(p[3], np.int64) for p in parts])
    wins = np.concatenate([np.frombuffer(p[4], np.int64).reshape(-1, 4) for p in parts])
    lengths = np.concatenate([np.frombuffer(p[5], np.int64) for p in parts])
    x0, y0 = int(wins[:, 0].min()), int(wins[:, 1].min())
    win = PixelWindow(x0, y0, int(wins[:, 2].max()) - x0, int(wins[:, 3].max()) - y0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return MonitorTask(date, win, ids.copy(), b"".join(p[6] for p in parts), offsets)


@dataclass
class ChipStats:
    """A task's payload: per object of the task (aligned arrays), sufficient statistics.

    Attributes:
        ids: Object rows.
        n_pixels: Pixel centres inside the object (in this window).
        n_valid: Of them, valid.
        n_inside: Of them, inside the raster.
        sums: ``<index>_cnt`` (finite values), ``<index>_sum`` (float64), ``<index>_above`` (values at or
            above the threshold), ``<index>_median`` (NaN for a piece).
        values: A piece's finite index values (float32) per index; None for whole objects.
    """

    ids: Arr
    n_pixels: Arr
    n_valid: Arr
    n_inside: Arr
    sums: dict[str, Arr]
    values: dict[str, Arr] | None = None


@dataclass(frozen=True)
class DateSource:
    """What a worker opens for one date: the raster (path or DataArray), its index bands and mask band."""

    source: Any
    calc: IndexCalculator
    mask_band: int | None


@dataclass(frozen=True)
class MonitorJob:
    """What every task of a run needs besides itself (scattered once to Dask workers).

    Attributes:
        dates: One `DateSource` per date, oldest first.
        cfg: The run's settings.
        run_id: Unique per run (the workers' scene cache key).
    """

    dates: tuple[DateSource, ...]
    cfg: MonitorConfig
    run_id: str

    @property
    def thresholds(self) -> dict[str, float]:
        """What ``<index>_frac_above`` counts against, per index."""
        from geosam.config.index_table import INDICES

        return {n: self.cfg.threshold(n, INDICES[n].threshold) for n in self.cfg.indices}


# -- planning (client) -------------------------------------------------------------------------------------


def _group_keys(c0: Arr, r0: Arr, width: int, height: int, chip: int) -> Arr:
    """A chip number per object: the chip of its window's top-left pixel (clipped to the raster)."""
    cols = -(-width // chip)
    return (np.clip(r0, 0, height - 1) // chip) * cols + np.clip(c0, 0, width - 1) // chip


def plan_batch(ids: Arr, geoms: Any, info: Any, chip: int) -> tuple[list[tuple[Any, ...]], Arr]:
    """Plan rows of a batch of objects at one date, and those of them wholly outside its raster.

    Args:
        ids: The objects' rows (0-based, increasing).
        geoms: Their geometries (a GeoSeries with a CRS, aligned with ``ids``).
        info: The date's `geosam.read.scene.SceneInfo` (grid, CRS).
        chip: ``chip_size_px``.

    Returns:
        Rows ``(big, key, first, ids, windows, lengths, wkb)``, one per chip of the batch's objects within a chip
        (``big`` 0, ``key`` the chip holding their windows' top-left pixel) and one per object larger than a chip
        (``big`` 1, ``key`` its row; `tasks_from_plan` cuts it into pieces): ``first`` is the first object,
        ``ids`` (int64), ``windows`` (int64 c0, r0, c1, r1 per object) and ``lengths`` (int64) are array bytes,
        ``wkb`` the objects' WKB in the date's CRS, joined. And the rows of the objects outside the raster
        (status ``outside_footprint``). Objects covering no pixel centre get no row.
    """
    import shapely

    g = np.asarray(geoms.to_crs(info.crs_wkt).values, dtype=object)
    c0, r0, c1, r1 = pixel_windows(g, info.transform)
    empty = (c1 <= c0) | (r1 <= r0)
    outside = ~empty & ((c1 <= 0) | (r1 <= 0) | (c0 >= info.width) | (r0 >= info.height))
    big = ((c1 - c0) > chip) | ((r1 - r0) > chip)
    keys = np.where(big, ids, _group_keys(c0, r0, info.width, info.height, chip))
    todo = np.flatnonzero(~empty & ~outside)
    order = todo[np.lexsort((todo, keys[todo], big[todo]))]  # by (big, key), objects in row order
    wins = np.stack([c0, r0, c1, r1], axis=1).astype(np.int64)
    wkb = shapely.to_wkb(g[order]).tolist()
    lengths = np.fromiter((len(b) for b in wkb), dtype=np.int64, count=len(wkb))
    rows: list[tuple[Any, ...]] = []
    if len(order):
        cuts = np.flatnonzero(np.diff(keys[order]) | np.diff(big[order].astype(np.int64))) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(order)]):
            m = order[lo:hi]
            rows.append((int(big[m[0]]), int(keys[m[0]]), int(ids[m[0]]), np.asarray(ids)[m].astype(np.int64).tobytes(),
                         wins[m].tobytes(), lengths[lo:hi].tobytes(), b"".join(wkb[lo:hi])))
    return rows, np.asarray(ids)[outside]


def tasks_from_plan(date: int, rows: Iterator[tuple[Any, ...]], chip: int) -> Iterator[MonitorTask]:
    """One date's tasks from its plan rows, ordered by (big, key, first) (`geosam.monitor.store.PlanStore.rows`).

    Objects sharing a chip become one bucket task reading the window that covers them (one read per chip and
    date, whatever the number of objects); an object larger than a chip becomes one piece task per chip-sized
    tile of its own window. Only one bucket's rows are held at a time.

    Args:
        date: The date's position.
        rows: The plan rows (see `plan_batch`).
        chip: ``chip_size_px``.

    Yields:
        The tasks: buckets by chip, then pieces.
    """
    bucket: list[tuple[Any, ...]] = []
    for row in rows:
        if row[0]:
            i = int(np.frombuffer(row[3], np.int64)[0])
            x0, y0, x1, y1 = (int(v) for v in np.frombuffer(row[4], np.int64))
            w = row[6]
            for y in range(y0, y1, chip):
                for x in range(x0, x1, chip):
                    tile = PixelWindow(x, y, min(chip, x1 - x), min(chip, y1 - y))
                    yield MonitorTask(date, tile, np.array([i], np.int64), w, np.array([0, len(w)], np.int64),
                                      piece=True)
            continue
        if bucket and bucket[0][1] != row[1]:
            yield _pack(date, bucket)
            bucket = []
        bucket.append(row)
    if bucket:
        yield _pack(date, bucket)


# -- computing (client or worker) ---------------------------------------------------------------------------

_local = threading.local()  # open scenes per thread (a rasterio dataset is not thread-safe)
_MAX_OPEN = 2


def _reader(job: MonitorJob, date: int) -> DateReader:
    from geosam.read.scene import Scene

    cache: OrderedDict[tuple[str, int], DateReader] = getattr(_local, "readers", None) or OrderedDict()
    _local.readers = cache
    key = (job.run_id, date)
    r = cache.get(key)
    if r is None:
        d = job.dates[date]
        r = cache[key] = DateReader(Scene(d.source, stretch=None), d.calc, d.mask_band, job.cfg)
        while len(cache) > _MAX_OPEN:  # tasks come date by date: an older date's blocks leave GDAL's cache
            cache.popitem(last=False)[1].scene.close()
    return r


def close_readers() -> None:
    """Close the scenes this thread opened for tasks."""
    cache = getattr(_local, "readers", None) or {}
    for r in cache.values():
        r.scene.close()
    _local.readers = OrderedDict()


def chip_stats(job: MonitorJob, tasks: Sequence[MonitorTask]) -> list[ChipStats]:
    """The payloads of a batch of tasks (the function Dask calls).

    Args:
        job: The run's job.
        tasks: Its tasks.

    Returns:
        One `ChipStats` per task, in task order.
    """
    thresholds = job.thresholds
    return [_piece_stats(_reader(job, t.date), t, thresholds) if t.piece
            else _bucket_stats(_reader(job, t.date), t, thresholds) for t in tasks]


def _transform(reader: DateReader, win: PixelWindow) -> Any:
    from affine import Affine

    return reader.scene.info.transform * Affine.translation(win.col_off, win.row_off)


def _bucket_stats(reader: DateReader, task: MonitorTask, thresholds: Mapping[str, float]) -> ChipStats:
    """Statistics of objects wholly inside the task's window, from one read of it."""
    from rasterio.features import rasterize

    win = task.window
    idx, valid, in_raster = read_padded(reader, win)
    t = _transform(reader, win)
    geoms = task.geometries()
    alone = overlapping(geoms)  # objects of this chip sharing pixels are rasterized one by one
    ids = task.ids
    n = len(ids)
    out = ChipStats(ids, np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), sums={})
    shared = np.flatnonzero(~alone)
    groups: list[tuple[Arr, Arr]] = []
    if len(shared):
        labels = rasterize(zip(shapes(geoms[shared]), range(1, len(shared) + 1)), out_shape=(win.height, win.width),
                           transform=t, fill=0, dtype="int32")
        groups.append((shared, labels))
    for i in np.flatnonzero(alone):
        m = rasterize([(geoms[i], 1)], out_shape=(win.height, win.width), transform=t, fill=0, dtype="int32")
        groups.append((np.array([i]), m))
    for pos, labels in groups:
        n_pix, n_val, sums = label_sums(labels, len(pos), valid, idx, thresholds)
        out.n_inside[pos] = np.bincount(labels[in_raster].ravel(), minlength=len(pos) + 1)[1:]
        out.n_pixels[pos], out.n_valid[pos] = n_pix, n_val
        for k, v in sums.items():
            out.sums.setdefault(k, np.full(len(ids), np.nan))[pos] = v
    return out


def _piece_stats(reader: DateReader, task: MonitorTask, thresholds: Mapping[str, float]) -> ChipStats:
    """Partial statistics of one object larger than a chip, in one chip-sized tile of its window."""
    from rasterio.features import rasterize

    win = task.window
    shape = shapes(task.geometries())[0]
    m = rasterize([(shape, 1)], out_shape=(win.height, win.width), transform=_transform(reader, win), fill=0,
                  dtype="uint8").astype(bool)
    names = reader.calc.names
    counts = np.zeros(3, dtype=np.int64)
    values = {n: np.zeros(0, np.float32) for n in names}
    if m.any():
        idx, valid, in_raster = read_padded(reader, win)
        counts[:] = (int(m.sum()), int((m & valid).sum()), int((m & in_raster).sum()))
        for n, a in idx.items():
            v = a[m]
            values[n] = v[np.isfinite(v)]
    sums: dict[str, Arr] = {}
    for n, v in values.items():
        sums[f"{n}_cnt"] = np.array([v.size], np.int64)
        sums[f"{n}_sum"] = np.array([float(np.sum(v, dtype=np.float64))])
        sums[f"{n}_above"] = np.array([float(np.count_nonzero(v >= np.float64(thresholds[n])))])
        sums[f"{n}_median"] = np.array([np.nan])
    return ChipStats(task.ids.copy(), counts[:1].copy(), counts[1:2].copy(), counts[2:3].copy(), sums, values)


__all__ = ["ChipStats", "DateSource", "MonitorJob", "MonitorTask", "chip_stats", "close_readers", "plan_batch",
           "task_key", "tasks_from_plan"]
