"""The objects of a monitoring run, read in batches: memory does not grow with their number.

`FrameObjects` wraps a GeoDataFrame given in Python (already in memory). `FileObjects` reads a vector file
`OBJECT_BATCH` rows at a time -- OGR formats with pyogrio's ``skip_features`` / ``max_features``,
GeoParquet by pyarrow row batches -- and never whole: the planning pass (`geosam.monitor.measure`) reads it
once, reprojects each batch to every date, spills the tasks' geometries and the objects' rows (geometry and
attributes) to the run's on-disk store (`geosam.monitor.store.PlanStore`), and the wide and long tables take
their rows back from there (`take`). Overlaps between objects are found per chip task, where they matter
(`geosam.monitor.chips`), so no step needs every geometry at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geosam.errors import ConfigError

#: objects per read of an objects file (and per planning batch)
OBJECT_BATCH = 20_000


class FrameObjects:
    """Objects given as a GeoDataFrame (index 0..N-1).

    Args:
        frame: The objects.
        name: How messages name them.
    """

    spill = False  # already in memory: the tables take rows from the frame

    def __init__(self, frame: Any, name: str) -> None:
        self.frame = frame
        self.name = name
        self.crs = frame.crs
        self.columns = list(frame.columns)
        self.n = len(frame)
        self.geom_types: set[str] = {str(t) for t in frame.geometry.geom_type.dropna().unique()}

    def batches(self) -> Iterator[tuple[int, Any]]:
        """(first row, rows) in batches of `OBJECT_BATCH`."""
        for i in range(0, self.n, OBJECT_BATCH):
            yield i, self.frame.iloc[i:i + OBJECT_BATCH]

    def total_bounds(self) -> np.ndarray:
        """(minx, miny, maxx, maxy) of every object, in their CRS."""
        return np.asarray(self.frame.total_bounds, dtype=np.float64)

    def take(self, rows: np.ndarray, store: Any = None, geometry_only: bool = False) -> Any:
        """The objects ``rows`` (0-based, any order) as a GeoDataFrame with index 0..len(rows)-1."""
        return self.frame.iloc[rows].reset_index(drop=True)


class FileObjects:
    """Objects in a vector file, read in batches of `OBJECT_BATCH` rows, never whole.

    Args:
        path: Any vector format geosam reads (`geosam.write.vector.read_vector`), GeoParquet included.
    """

    spill = True  # the tables take rows from the run's store (`geosam.monitor.store.PlanStore`)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from geosam.write.vector import vector_format

        self.path = Path(path)
        self.name = os.fspath(path)
        self.parquet = vector_format(self.path)[1] is None
        self.geom_types: set[str] = set()  # filled by the planning pass
        self.dtypes: dict[str, Any] = {}  # attribute dtypes of the first batch (the rows taken back keep them)
        self._bounds: np.ndarray | None = None
        if self.parquet:
            self._parquet_info()
        else:
            self._ogr_info()

    def _ogr_info(self) -> None:
        import pyogrio
        from pyproj import CRS

        info = pyogrio.read_info(self.path, force_feature_count=True, force_total_bounds=True)
        self.crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
        self.geometry = "geometry"  # pyogrio's name for it
        self.columns = [*(str(f) for f in info["fields"]), self.geometry]
        self.n = int(info["features"])
        tb = info.get("total_bounds")
        self._bounds = None if tb is None else np.asarray(tb, dtype=np.float64)

    def _parquet_info(self) -> None:
        import pyarrow.parquet as pq
        from pyproj import CRS

        pf = pq.ParquetFile(self.path)
        self._meta = _parquet_meta(pf)
        meta = json.loads(self._meta.get(b"geo", b"{}"))
        if not meta.get("columns"):
            raise ConfigError(f"{self.name}: not a GeoParquet file (no 'geo' metadata); write it with geopandas "
                              "to_parquet or ogr2ogr")
        primary = self.geometry = meta.get("primary_column", "geometry")
        col = meta["columns"].get(primary, {})
        crs = col.get("crs", "OGC:CRS84")  # GeoParquet: a missing crs means OGC:CRS84, null means none
        self.crs = None if crs is None else CRS.from_user_input(crs)
        bbox = col.get("bbox")
        self._bounds = np.asarray(bbox, dtype=np.float64) if bbox is not None and len(bbox) == 4 else None
        self.columns = [n for n in pf.schema_arrow.names if not n.startswith("__index_level_")]
        self.n = int(pf.metadata.num_rows)

    def batches(self) -> Iterator[tuple[int, Any]]:
        """(first row, rows) in batches of at most `OBJECT_BATCH` rows, each read on its own."""
        reader = self._parquet_batches() if self.parquet else self._ogr_batches()
        start = 0
        for part in reader:
            part = part.reset_index(drop=True)
            if not self.dtypes:
                self.dtypes = {c: part[c].dtype for c in part.columns if c != part.geometry.name}
            yield start, part
            start += len(part)

    def _ogr_batches(self) -> Iterator[Any]:
        import pyogrio

        for i in range(0, self.n, OBJECT_BATCH):
            yield pyogrio.read_dataframe(self.path, skip_features=i, max_features=OBJECT_BATCH)

    def _parquet_batches(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from geopandas.io.arrow import _arrow_to_geopandas

        pf = pq.ParquetFile(self.path)
        meta = {k: v for k, v in self._meta.items() if k != b"pandas"}  # a batch's index is its own
        for batch in pf.iter_batches(batch_size=OBJECT_BATCH):
            table = pa.Table.from_batches([batch]).replace_schema_metadata(meta)
            keep = [n for n in table.column_names if not n.startswith("__index_level_")]
            yield _arrow_to_geopandas(table.select(keep))

    def total_bounds(self) -> np.ndarray:
        """(minx, miny, maxx, maxy) of every object, in their CRS (from the file's header, else one batched pass)."""
        if self._bounds is None or not np.all(np.isfinite(self._bounds)):
            b = np.array([np.inf, np.inf, -np.inf, -np.inf])
            for _, part in self.batches():
                if len(part) and not part.geometry.isna().all():
                    x0, y0, x1, y1 = part.total_bounds
                    b = np.array([min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)])
            self._bounds = b
        return self._bounds

    def take(self, rows: np.ndarray, store: Any = None, geometry_only: bool = False) -> Any:
        """The objects ``rows`` (0-based, any order), from the run's store, as a GeoDataFrame (``geometry_only``:
        without the attributes)."""
        assert store is not None, "FileObjects.take needs the run's store (filled by the planning pass)"
        return store.plan.objects(rows, self.columns, self.geometry, self.dtypes, self.crs, geometry_only)


def _parquet_meta(pf: Any) -> dict[bytes, bytes]:
    """The file's key-value metadata (``geo`` may be written there only, at the end) over the schema's."""
    return {**(pf.schema_arrow.metadata or {}), **(pf.metadata.metadata or {})}


#: objects as the monitoring run sees them
Objects = FrameObjects | FileObjects


__all__ = ["OBJECT_BATCH", "FileObjects", "FrameObjects", "Objects"]
