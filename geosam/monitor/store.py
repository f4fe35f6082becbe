"""Per-object per-date statistics on disk while a monitoring run goes: memory does not grow with objects x dates.

A `StatsStore` is a SQLite file in a private temporary folder (removed on close). Each chip task's payload
(`geosam.monitor.chips.ChipStats`) is inserted as it arrives: objects wholly inside a task as final rows of
``stats``; the pieces of objects larger than a chip in ``pieces`` (their counts, sums and finite values),
combined into one exact row per object and date by `StatsStore.finish` (memory: one object's values).
`StatsStore.date_stats` reads any set of objects of one date back as a `geosam.monitor.zonal.DateStats`
with its statuses, so the tables are built in batches of objects (`geosam.monitor.stream`).

Beside it, in the same folder, a `PlanStore` holds the run's plan (per date, each object's chip, pixel window
and WKB in the date's CRS, spilled batch by batch as the objects are read) and, for objects read from a file,
their rows (WKB and attributes), so neither the objects nor a date's plan is ever whole in memory.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geosam.monitor.chips import ChipStats
from geosam.monitor.zonal import DateStats, apply_status, finish_sums

Arr = np.ndarray

_COUNTS = ("n_pixels", "n_valid", "n_inside")
_SUMS = ("cnt", "sum", "above", "median")


class StatsStore:
    """Per-object per-date sufficient statistics of one run, in a temporary SQLite file.

    Args:
        names: The run's index names.
        min_valid: Below this valid fraction a date gives status ``too_few_valid``.
        folder: Where the temporary folder is made (default: the system's temporary folder).
    """

    def __init__(self, names: Sequence[str], min_valid: float, folder: str | os.PathLike[str] | None = None) -> None:
        self.names = tuple(names)
        self.min_valid = min_valid
        self.dir = Path(tempfile.mkdtemp(prefix="geosam-monitor-", dir=folder))
        self.path = self.dir / "stats.sqlite"
        self.conn = sqlite3.connect(os.fspath(self.path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")  # a scratch file: a crash discards it anyway
        self._cols = [*_COUNTS, *(f"{n}_{s}" for n in self.names for s in _SUMS)]
        cols = ", ".join(f'"{c}"' for c in self._cols)
        self.conn.execute(f"CREATE TABLE stats (date INTEGER, obj INTEGER, outside INTEGER, {cols}, "
                          "PRIMARY KEY (date, obj)) WITHOUT ROWID")
        blobs = ", ".join(f'"{n}_values"' for n in self.names)
        self.conn.execute(f"CREATE TABLE pieces (date INTEGER, obj INTEGER, {cols}, {blobs})")
        self.rows = 0  # rows inserted into stats (for tests and logs)
        self.plan = PlanStore(self.dir / "plan.sqlite")

    def _insert(self, table: str, rows: Iterator[tuple[Any, ...]] | list[tuple[Any, ...]], width: int) -> None:
        marks = ", ".join("?" * width)
        self.conn.execute("BEGIN")
        self.conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
        self.conn.execute("COMMIT")

    def add(self, date: int, payload: ChipStats) -> None:
        """Store one task's payload.

        Args:
            date: The task's date position.
            payload: Its statistics.
        """
        arrays = [payload.n_pixels, payload.n_valid, payload.n_inside,
                  *(payload.sums[f"{n}_{s}"] for n in self.names for s in _SUMS)]
        plain = [a.tolist() for a in arrays]
        ids = payload.ids.tolist()
        if payload.values is None:
            rows = [(date, i, 0, *(col[k] for col in plain)) for k, i in enumerate(ids)]
            self._insert("stats", rows, 3 + len(plain))
            self.rows += len(rows)
            return
        blobs = [np.ascontiguousarray(payload.values[n], dtype=np.float32).tobytes() for n in self.names]
        self._insert("pieces", [(date, ids[0], *(col[0] for col in plain), *blobs)], 2 + len(plain) + len(blobs))

    def add_outside(self, date: int, ids: Arr) -> None:
        """Mark objects wholly outside a date's raster (status ``outside_footprint``).

        Args:
            date: The date position.
            ids: The object rows.
        """
        zeros = (0,) * len(self._cols)
        self._insert("stats", [(date, int(i), 1, *zeros) for i in ids], 3 + len(zeros))
        self.rows += len(ids)

    def finish(self, thresholds: dict[str, float]) -> int:
        """Combine the pieces of every object larger than a chip into one exact row per object and date.

        Counts and sums add; the median is that of all the object's finite values (read one object at a
        time). Returns the number of objects combined.
        """
        from geosam.index.zonal import zonal_stats

        n = 0
        cur = self.conn.execute("SELECT DISTINCT date, obj FROM pieces ORDER BY date, obj")
        keys = cur.fetchall()
        for date, obj in keys:
            rows = self.conn.execute("SELECT * FROM pieces WHERE date = ? AND obj = ?", (date, obj)).fetchall()
            width = len(self._cols)
            counts = np.array([r[2:2 + width] for r in rows], dtype=np.float64).sum(axis=0)
            row: list[Any] = [int(counts[k]) for k in range(len(_COUNTS))]
            for j, name in enumerate(self.names):
                base = len(_COUNTS) + j * len(_SUMS)
                v = np.concatenate([np.frombuffer(r[2 + width + j], dtype=np.float32) for r in rows])
                median = zonal_stats(v, thresholds[name])[1]
                row += [int(counts[base]), float(sum(r[2 + base + 1] for r in rows)), float(counts[base + 2]), median]
            self._insert("stats", [(date, obj, 0, *row)], 3 + width)
            self.rows += 1
            n += 1
        self.conn.execute("DELETE FROM pieces")
        return n

    def date_stats(self, date: int, ids: Arr) -> DateStats:
        """The statistics and statuses of objects ``ids`` (rows, any order) at one date.

        Args:
            date: The date position.
            ids: Object rows (int).

        Returns:
            Arrays aligned with ``ids``; an object without a row covers no pixel centre.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = DateStats.empty(len(ids), self.names)
        outside = np.zeros(len(ids), dtype=bool)
        sums = {f"{n}_{s}": np.zeros(len(ids)) for n in self.names for s in _SUMS}
        if len(ids):
            order = np.argsort(ids, kind="stable")
            lo, hi = int(ids.min()), int(ids.max())
            cols = ", ".join(f'"{c}"' for c in self._cols)
            got = self._rows(date, ids, lo, hi, cols)
            if got:
                table = np.array(got, dtype=np.float64)
                where = np.searchsorted(ids[order], table[:, 0].astype(np.int64))
                hit = (where < len(ids)) & (ids[order][np.minimum(where, len(ids) - 1)] == table[:, 0])
                pos, table = order[where[hit]], table[hit]
                outside[pos] = table[:, 1] > 0
                for k, name in enumerate((*_COUNTS,)):
                    getattr(out, name)[pos] = table[:, 2 + k].astype(np.int64)
                for k, key in enumerate(sums):
                    sums[key][pos] = table[:, 2 + len(_COUNTS) + k]
        out.values.update(finish_sums(sums, self.names))
        return apply_status(out, outside, self.min_valid)

    def _rows(self, date: int, ids: Arr, lo: int, hi: int, cols: str) -> list[tuple[Any, ...]]:
        """Rows of one date for ``ids``: a range scan when they are dense, else a join with a temporary table."""
        if hi - lo < 2 * len(ids):
            return self.conn.execute(f"SELECT obj, outside, {cols} FROM stats WHERE date = ? AND obj BETWEEN ? AND ?",
                                     (date, lo, hi)).fetchall()
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS want (obj INTEGER PRIMARY KEY)")
        self.conn.execute("DELETE FROM want")
        self._insert("want", [(int(i),) for i in np.unique(ids)], 1)
        return self.conn.execute(f"SELECT s.obj, s.outside, {', '.join('s.' + c for c in cols.split(', '))} "
                                 "FROM want w JOIN stats s ON s.date = ? AND s.obj = w.obj", (date,)).fetchall()

    def close(self) -> None:
        """Close and delete the files."""
        self.conn.close()
        self.plan.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> StatsStore:  # noqa: PYI034 - a final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(os.fspath(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")  # a scratch file: a crash discards it anyway
    return conn


class PlanStore:
    """A run's plan and, for objects read from a file, their rows, in a scratch SQLite file.

    ``plan`` rows ``(date, big, key, first, ids, windows, lengths, wkb)`` -- per date, batch and chip, the
    objects' arrays and WKB (see `geosam.monitor.chips.plan_batch`) -- are kept ordered by (date, big, key,
    first), so `rows` reads a date back chip by chip. ``objects`` rows hold an
    object's WKB (its own CRS) and its attributes (one pickled tuple).

    Args:
        path: The file (in the run's private temporary folder).
    """

    def __init__(self, path: Path) -> None:
        self.conn = _connect(path)
        self.conn.execute("CREATE TABLE plan (date INTEGER, big INTEGER, key INTEGER, first INTEGER, ids BLOB, "
                          "wins BLOB, lengths BLOB, wkb BLOB, PRIMARY KEY (date, big, key, first))")
        self.conn.execute("CREATE TABLE objects (obj INTEGER PRIMARY KEY, wkb BLOB, attrs BLOB)")

    def _insert(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany(sql, rows)
        self.conn.execute("COMMIT")

    def add(self, date: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Spill plan rows ``(big, key, first, ids, windows, lengths, wkb)`` of one date."""
        self._insert("INSERT OR REPLACE INTO plan VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(date, *r) for r in rows])

    def rows(self, date: int) -> Iterator[tuple[Any, ...]]:
        """One date's plan rows ``(big, key, first, ids, windows, lengths, wkb)`` ordered by (big, key, first)."""
        cur = self.conn.execute("SELECT big, key, first, ids, wins, lengths, wkb FROM plan WHERE date = ? "
                                "ORDER BY big, key, first", (date,))
        while part := cur.fetchmany(16):
            yield from part

    def put_objects(self, ids: Arr, wkb: Sequence[bytes | None], attrs: Sequence[tuple[Any, ...]]) -> None:
        """Spill objects' rows: WKB (their CRS; None for no geometry) and attribute tuples."""
        blobs = [pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL) for a in attrs]
        self._insert("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", list(zip(ids.tolist(), wkb, blobs)))

    def _object_rows(self, rows: Arr, what: str) -> dict[int, tuple[Any, ...]]:
        """``what`` columns of objects ``rows``: a range scan when they are dense, else lookups by key."""
        want = np.unique(rows)
        got: dict[int, tuple[Any, ...]] = {}
        if not len(want):
            return got
        lo, hi = int(want[0]), int(want[-1])
        if hi - lo < 2 * len(want):
            cur = self.conn.execute(f"SELECT obj, {what} FROM objects WHERE obj BETWEEN ? AND ?", (lo, hi))
            return {r[0]: r[1:] for r in cur}
        for i in range(0, len(want), 900):  # SQLite's host-parameter limit
            part = want[i:i + 900].tolist()
            marks = ", ".join("?" * len(part))
            got.update((r[0], r[1:]) for r in self.conn.execute(
                f"SELECT obj, {what} FROM objects WHERE obj IN ({marks})", part))
        return got

    def objects(self, rows: Arr, columns: Sequence[str], geometry: str, dtypes: dict[str, Any], crs: Any,
                geometry_only: bool = False) -> Any:
        """Objects ``rows`` (0-based, any order) as a GeoDataFrame with index 0..len(rows)-1.

        Args:
            rows: Object rows.
            columns: Every column in the file's order, the geometry's included.
            geometry: The geometry column's name.
            dtypes: Attribute dtypes to restore (where the values allow).
            crs: The objects' CRS.
            geometry_only: Only the geometry column (the attributes are not read).

        Returns:
            The GeoDataFrame, in ``rows`` order.
        """
        import geopandas as gpd
        import pandas as pd
        import shapely

        rows = np.asarray(rows, dtype=np.int64)
        got = self._object_rows(rows, "wkb" if geometry_only else "wkb, attrs")
        found = [got[int(r)] for r in rows]
        attrs = [] if geometry_only else [c for c in columns if c != geometry]
        data: dict[str, list[Any]] = {c: [] for c in attrs}
        if attrs:
            for _, a in found:
                for c, v in zip(attrs, pickle.loads(a)):
                    data[c].append(v)
        table = pd.DataFrame(data, index=pd.RangeIndex(len(found)))
        for c, t in dtypes.items():
            if c in table.columns and table[c].dtype != t:
                try:
                    table[c] = table[c].astype(t)
                except (TypeError, ValueError):
                    pass
        table[geometry] = gpd.GeoSeries(shapely.from_wkb(np.array([f[0] for f in found], dtype=object)), crs=crs)
        return gpd.GeoDataFrame(table[[*attrs, geometry] if geometry_only else list(columns)], geometry=geometry,
                                crs=crs)

    def close(self) -> None:
        """Close the file (`StatsStore.close` deletes its folder)."""
        self.conn.close()


__all__ = ["PlanStore", "StatsStore"]
