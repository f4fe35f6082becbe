"""Finished objects on disk until the run ends: memory independent of the number of objects.

The run loop hands every finished object (a `Record`, map
coordinates) to an `ObjectStore`, which keeps it in a temporary SQLite file
(outline as WKB, attributes as JSON) instead of in memory. When the run ends the
store reads them back in the output's order, in batches of GeoDataFrames: ``id``
1..N top-to-bottom, left-to-right by the object's first pixel (ties by outline, then
attributes: arrival order plays no part), after the per-object filters
(``min_area_m2``, ``min_index``) and, with ``rank_by``, sorted by that column
(highest first, NaN last) with a ``rank`` column and at most ``top_k`` rows. Those
batches become either the returned GeoDataFrame or, streamed, an output file
(`geosam.write.vector.write_frames`), so a run with millions of objects writes them
with a fixed memory budget (SQLite sorts on disk).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.assemble.records import geo_frame
from geosam.errors import ConfigError
from geosam.geo import area_m2, to_pyproj

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.assemble.records import Record

#: rows per batch read back from the store
BATCH_ROWS = 20_000

#: segment-everything's leading columns (then ``label`` when any object has one, the attributes, ``rank``)
OBJECT_COLUMNS = ("id", "area_m2", "predicted_iou", "stability_score", "n_chips", "model")
#: the leading columns a table may name: ``score`` is the model's score (``predicted_iou``) under text mode's name
LEAD_COLUMNS = frozenset({*OBJECT_COLUMNS, "score", "label"})
_NUMERIC = ("area_m2", "predicted_iou", "stability_score", "n_chips")


def _plain(v: Any) -> Any:
    """A JSON-safe scalar: numpy scalars as Python ones, NaN as None."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return v


def _kind(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "float"
    return "object"


#: name prefix of a store's temporary folder (hidden, beside the output or in the temp folder)
STORE_PREFIX = ".geosam-objects-"


def _hold_lock(folder: Path) -> Any:
    """An open file holding an exclusive lock while this process uses ``folder`` (released when it dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: stale stores are then left for the user to delete
        return None
    # locked under a private name, then renamed: another run's `remove_stale_stores` never sees an unlocked
    # "lock" (the lock is the file's, so it holds across the rename)
    f = open(folder / "lock.new", "w")  # noqa: SIM115 - held open for the store's life
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(folder / "lock.new", folder / "lock")
    return f


def remove_stale_stores(folder: str | os.PathLike[str] | None) -> list[Path]:
    """Remove temporary stores in ``folder`` (default: the temp folder) left by killed runs; return them.

    A live store's process holds the lock file inside it; a store whose lock can be taken (or that has
    none, being older than a minute) belongs to no running process.
    """
    import shutil
    import time

    try:
        import fcntl
    except ImportError:
        return []
    base = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    removed = []
    for d in base.glob(STORE_PREFIX + "*"):
        lock = d / "lock"
        try:
            if lock.exists():
                # "r+", never "a": a store closing right now deletes its lock file, and recreating it would leave
                # a file in the folder its owner is removing ("Directory not empty")
                with open(lock, "r+") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its run is alive
            elif time.time() - d.stat().st_mtime < 60:
                continue  # being created right now
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class ObjectStore:
    """Finished objects of one run in a temporary SQLite file (removed by `close`).

    crs_wkt: the scene CRS (records' outlines are in it); areas are computed on arrival.
    min_area_m2, min_index: objects below ``min_area_m2`` (m2) or whose ``<index>_mean`` is
        below (or NaN) any ``min_index`` threshold are dropped on arrival.
    folder: where the temporary file goes (default: the system's temporary folder; an
        output's folder keeps it on the output's disk).
    """

    def __init__(self, crs_wkt: str, *, min_area_m2: float = 0.0, min_index: Mapping[str, float] | Iterable[tuple[str, float]] | None = None,
                 folder: str | os.PathLike[str] | None = None) -> None:
        self.crs_wkt = crs_wkt
        self._crs = to_pyproj(crs_wkt)
        self.min_area_m2 = float(min_area_m2)
        self.min_index = dict(min_index or {})
        remove_stale_stores(folder)
        self._dir = tempfile.TemporaryDirectory(prefix=STORE_PREFIX, dir=folder)
        self._lock = _hold_lock(Path(self._dir.name))
        self.db = sqlite3.connect(Path(self._dir.name) / "objects.sqlite")
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;"
            "CREATE TABLE obj (r REAL, c REAL, a REAL, wkb BLOB, area_m2 REAL, predicted_iou REAL,"
            " stability_score REAL, n_chips INTEGER, label TEXT, extra TEXT, gtype TEXT);"
        )
        self.n = 0
        self.n_dropped = 0
        self.has_label = False
        self.kinds: dict[str, str] = {}  # attribute column -> "float" | "bool" | "object"
        self.geometry_types: set[str] = set()
        self.rows_out = 0  # rows handed out by frames()

    # -- filling ------------------------------------------------------------
    def _passes(self, rec: Record, area: float) -> bool:
        if area < self.min_area_m2:
            return False
        for name, t in self.min_index.items():
            v = rec.extra.get(f"{name}_mean")
            if v is None or not (float(v) >= t):  # NaN fails
                return False
        return True

    def add(self, records: Sequence[Record]) -> None:
        """Store finished objects (dropping those the filters reject)."""
        if not records:
            return
        areas = area_m2([r.geom for r in records], self._crs)
        rows = []
        for rec, area in zip(records, areas):
            if not self._passes(rec, float(area)):
                self.n_dropped += 1
                continue
            for k, v in rec.extra.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    kind = _kind(v)
                    self.kinds[k] = kind if self.kinds.get(k, kind) == kind else "object"
                else:
                    self.kinds.setdefault(k, "float")
            if rec.label is not None:
                self.has_label = True
            gtype = rec.geom.geom_type
            self.geometry_types.add(gtype)
            rows.append((*rec.order, rec.geom.wkb, float(area), float(rec.predicted_iou), float(rec.stability_score),
                         int(rec.n_chips), rec.label, json.dumps({k: _plain(v) for k, v in rec.extra.items()}), gtype))
        self.db.executemany("INSERT INTO obj VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        self.n += len(rows)

    # -- reading back ---------------------------------------------------------
    def columns(self, require: Sequence[str] = (), lead: Sequence[str] = OBJECT_COLUMNS) -> list[str]:
        """Attribute columns after the ``lead`` ones: ``label`` when any object has one (and ``lead``
        has none), then the sorted attribute names (incl. ``require``, NaN where an object has none)."""
        for k in require:
            self.kinds.setdefault(k, "float")
        return (["label"] if self.has_label and "label" not in lead else []) + sorted(self.kinds)

    def _query(self, rank_by: str | None, top_k: int | None) -> tuple[str, tuple[Any, ...]]:
        spatial = "ORDER BY r, c, a, wkb, label, predicted_iou, stability_score, n_chips, extra"
        cols = "predicted_iou, stability_score, n_chips, area_m2, label, extra, wkb"
        if rank_by is None:
            sql = f"SELECT row_number() OVER ({spatial}), {cols} FROM obj {spatial}"
            return (sql + (" LIMIT ?" if top_k is not None else ""), (int(top_k),) if top_k is not None else ())
        args: tuple[Any, ...] = ()
        if rank_by in _NUMERIC:
            key = rank_by
        elif rank_by in self.kinds:
            key, args = "json_extract(extra, ?)", (f'$."{rank_by}"',)
        elif rank_by == "id":
            key = "id"
        else:
            raise ConfigError(f"cannot rank by {rank_by!r}: the result has no such column")
        sql = (f"WITH k AS (SELECT row_number() OVER ({spatial}) AS id, {cols} FROM obj) "
               f"SELECT id, {cols} FROM k ORDER BY {key} DESC NULLS LAST, id")
        if top_k is not None:
            sql += " LIMIT ?"
            args = (*args, int(top_k))
        return sql, args

    def frames(
        self,
        model_name: str,
        *,
        lead: Sequence[str] = OBJECT_COLUMNS,
        rank_by: str | None = None,
        top_k: int | None = None,
        require: Sequence[str] = (),
        complete: bool = False,
        to_crs: Any = None,
        batch_rows: int = BATCH_ROWS,
    ) -> Iterator[gpd.GeoDataFrame]:
        """The objects in output order, ``batch_rows`` at a time (at least one frame, maybe empty).

        Columns: ``lead`` (default `OBJECT_COLUMNS`; any of `LEAD_COLUMNS`, text mode's
        ``id, label, score, area_m2, n_chips, model``), ``label`` (when any object has one and
        ``lead`` has none), the attributes (sorted; ``require``: NaN where missing), ``rank`` (with
        ``rank_by``), ``geometry``. ``complete``: the ``complete`` attribute is kept (missing = True,
        see `geosam.write.failed_chips`); otherwise it is dropped. ``to_crs`` reprojects each batch.
        """
        unknown = sorted(set(lead) - LEAD_COLUMNS)
        if unknown:
            raise ValueError(f"unknown table column(s) {unknown}; known: {sorted(LEAD_COLUMNS)}")
        cols = self.columns(require, lead)
        if not complete and "complete" in cols:
            cols.remove("complete")
        sql, args = self._query(rank_by, top_k)
        cur = self.db.execute(sql, args)
        first, n_out = True, 0
        while True:
            rows = cur.fetchmany(batch_rows)
            if not rows and not first:
                return
            gdf = self._frame(rows, lead, cols, model_name, complete, n_out if rank_by is not None else None)
            n_out += len(rows)
            self.rows_out = n_out
            first = False
            if to_crs is not None:  # valid, split at the antimeridian
                from geosam.assemble.reproject import reproject

                gdf = reproject(gdf, to_crs)
            yield gdf
            if not rows:
                return

    def _frame(self, rows: list[tuple[Any, ...]], lead: Sequence[str], cols: list[str], model_name: str,
               complete: bool, rank_from: int | None) -> gpd.GeoDataFrame:
        import shapely

        n = len(rows)
        iou = np.array([r[1] for r in rows], dtype=np.float64)
        source: dict[str, Any] = {
            "id": np.array([r[0] for r in rows], dtype=np.int64),
            "area_m2": np.array([r[4] for r in rows], dtype=np.float64),
            "predicted_iou": iou,
            "score": iou,
            "stability_score": np.array([r[2] for r in rows], dtype=np.float64),
            "n_chips": np.array([r[3] for r in rows], dtype=np.int64),
            "model": [model_name] * n,
            "label": [r[5] for r in rows],
        }
        data: dict[str, Any] = {k: source[k] for k in lead}
        extras = [json.loads(r[6]) for r in rows]
        for k in cols:
            if k == "label":
                data[k] = [r[5] for r in rows]
            elif k == "complete":
                data[k] = np.array([e.get(k) is not False for e in extras], dtype=bool)
            elif self.kinds[k] == "float":
                data[k] = np.array([np.nan if e.get(k) is None else e[k] for e in extras], dtype=np.float64)
            else:
                data[k] = [e.get(k) for e in extras]
        if rank_from is not None:
            data["rank"] = np.arange(rank_from + 1, rank_from + n + 1, dtype=np.int64)
        geoms = shapely.from_wkb([r[7] for r in rows]) if n else []
        return geo_frame(data, geoms, self.crs_wkt)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None  # type: ignore[assignment]
        self._dir.cleanup()  # with the lock still held: no other run's `remove_stale_stores` works on it meanwhile
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ObjectStore:  # noqa: PYI034 - a final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BATCH_ROWS", "LEAD_COLUMNS", "OBJECT_COLUMNS", "STORE_PREFIX", "ObjectStore", "remove_stale_stores"]
