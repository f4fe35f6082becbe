"""The monitoring tables built from a `geosam.monitor.store.StatsStore` in batches of objects.

`wide_batch` builds the wide-table rows of some objects (their attributes, per-date columns, change, flags),
taken from the objects (`geosam.monitor.objects`: a GeoDataFrame, or a file's rows spilled to the store);
the in-memory result is one batch of every object, and `write_streamed` writes the files batch by batch
(`geosam.write.vector.write_frames`, `geosam.monitor.table.write_long_batches`), so neither table is ever
whole in memory. With ``rank_by`` a first pass computes the ranked column alone (one value per object) and the
wide table is then written in rank order.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geosam.config.monitor import MonitorConfig
from geosam.monitor.change import flags, series_change
from geosam.monitor.objects import Objects
from geosam.monitor.store import StatsStore
from geosam.monitor.table import long_table, wide_columns, write_long_batches
from geosam.monitor.zonal import DateStats

#: objects per batch of the written tables
TABLE_BATCH = 10_000


def wide_batch(base: Any, rows: np.ndarray, stats: Sequence[DateStats], dates: Sequence[dt.date],
               cfg: MonitorConfig) -> Any:
    """Wide-table rows of objects ``rows`` from their statistics at every date.

    Args:
        base: The objects ``rows`` (GeoDataFrame, aligned with ``rows``: geometry and attributes).
        rows: The objects' rows (0-based), in output order.
        stats: Per date, the statistics of ``rows`` (aligned).
        dates: The dates.
        cfg: The settings (indices, flags).

    Returns:
        A GeoDataFrame: ``object_id`` (row + 1), the attributes, per-date columns, change and flag columns.
    """
    base = base.reset_index(drop=True)
    base.insert(0, "object_id", np.asarray(rows, dtype=np.int64) + 1)
    cols = wide_columns(stats, dates, cfg.indices)
    change: dict[str, Any] = {}
    for n in cfg.indices:
        means = np.stack([np.asarray(cols[f"{n}_mean_{d.isoformat()}"], dtype=np.float64) for d in dates], axis=1)
        change.update(series_change(means, dates, n))
    change.update(flags(change, cfg.loss, cfg.gain))
    return base.assign(**cols, **change)


def _batches(n: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    for i in range(0, n, TABLE_BATCH):
        yield np.arange(i, min(i + TABLE_BATCH, n)) if order is None else order[i:i + TABLE_BATCH]


def _wide_at(store: StatsStore, objects: Objects, rows: np.ndarray, dates: Sequence[dt.date],
             cfg: MonitorConfig) -> Any:
    return wide_batch(objects.take(rows, store), rows, [store.date_stats(k, rows) for k in range(len(dates))],
                      dates, cfg)


def rank_order(store: StatsStore, objects: Objects, dates: Sequence[dt.date], cfg: MonitorConfig) -> np.ndarray:
    """The objects' rows in ``cfg.rank_by`` order (NaN last, ties in row order), as `geosam.monitor.change.rank_table`."""
    import pandas as pd

    assert cfg.rank_by is not None
    parts = [_wide_at(store, objects, rows, dates, cfg)[cfg.rank_by] for rows in _batches(objects.n)]
    column = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=float)
    return column.sort_values(ascending=cfg.ascending, na_position="last", kind="stable").index.to_numpy()


def wide_frames(store: StatsStore, objects: Objects, dates: Sequence[dt.date], cfg: MonitorConfig
                ) -> Iterator[Any]:
    """The wide table in batches of `TABLE_BATCH` objects (in rank order, with ``rank``, when ranked)."""
    order = rank_order(store, objects, dates, cfg) if cfg.rank_by is not None else None
    start = 1
    for rows in _batches(objects.n, order):
        part = _wide_at(store, objects, rows, dates, cfg)
        if order is not None:
            part["rank"] = np.arange(start, start + len(rows), dtype=np.int64)
        start += len(rows)
        yield part
    if objects.n == 0:
        yield _wide_at(store, objects, np.zeros(0, np.int64), dates, cfg).assign(
            **({"rank": np.zeros(0, np.int64)} if order is not None else {}))


def long_frames(store: StatsStore, objects: Objects, dates: Sequence[dt.date]) -> Iterator[Any]:
    """The long table (date after date, objects in row order) in batches of `TABLE_BATCH` rows."""
    for k, d in enumerate(dates):
        for rows in _batches(objects.n):
            geoms = objects.take(rows, store, geometry_only=True).geometry.values
            yield long_table([store.date_stats(k, rows)], [d], [rows + 1], [geoms], objects.crs)
    if objects.n == 0 or not dates:
        empty = np.zeros(0, np.int64)
        yield long_table([store.date_stats(0, empty)], dates[:1], [empty],
                         [objects.take(empty, store, geometry_only=True).geometry.values], objects.crs)


def write_streamed(store: StatsStore, objects: Objects, dates: Sequence[dt.date], cfg: MonitorConfig,
                   output: str | os.PathLike[str] | None, long_output: str | os.PathLike[str] | None) -> list[Path]:
    """Write the wide and / or long table from the store, batch by batch.

    Args:
        store: The run's statistics.
        objects: The objects (a file's rows are taken from the store).
        dates: The dates.
        cfg: The settings.
        output: The wide table's file (any vector format), or None.
        long_output: The long table's file (``.csv``, ``.parquet``, ``.geoparquet``), or None.

    Returns:
        The written paths.
    """
    from geosam.write.vector import write_frames

    written = []
    types = set(objects.geom_types)
    if output is not None:
        written.append(write_frames(wide_frames(store, objects, dates, cfg), output, geometry_types=types))
    if long_output is not None:
        written.append(write_long_batches(long_frames(store, objects, dates), long_output, types))
    return written


__all__ = ["TABLE_BATCH", "long_frames", "rank_order", "wide_batch", "wide_frames", "write_streamed"]
