"""The monitoring tables: wide (one row per object) and long (one row per object and date), and their files.

Wide: the object's geometry and attribute columns, ``object_id``, per date ``<index>_mean_<YYYY-MM-DD>``,
``valid_fraction_<YYYY-MM-DD>`` and ``status_<YYYY-MM-DD>``, then the change columns
(`geosam.monitor.change`), flags and ``rank``. Written in every vector format geosam writes
(`geosam.write.vector.write_vector`).

Long: ``object_id`` (and ``track_id`` when tracked), ``date``, ``n_pixels``, ``n_valid``, ``valid_fraction``,
``<index>_mean`` / ``_median`` / ``_frac_above`` and ``status``. Written as CSV (``.csv``), Parquet without
geometry (``.parquet``) or GeoParquet with each row's geometry (``.geoparquet``). Every write is atomic
(`geosam.write.paths.atomic_output`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geosam.errors import ExportError
from geosam.monitor.zonal import DateStats

#: Long-table file extensions and what they hold.
LONG_FORMATS = {".csv": "CSV", ".parquet": "Parquet (no geometry)", ".geoparquet": "GeoParquet"}


def check_long_path(path: str | os.PathLike[str]) -> Path:
    """The long table's path; ExportError naming it for an extension other than `LONG_FORMATS`."""
    p = Path(path)
    if p.suffix.lower() not in LONG_FORMATS:
        raise ExportError(f"{p}: the long table is written as {', '.join(LONG_FORMATS)}; got {p.suffix or 'none'!r}")
    return p


def wide_columns(stats: Sequence[DateStats], dates: Sequence[dt.date], names: Sequence[str],
                 rows: Any = None) -> dict[str, Any]:
    """Per-date columns of the wide table; ``rows``: per date, the table row of each object (None: identity)."""
    out: dict[str, Any] = {}
    for k, (st, d) in enumerate(zip(stats, dates)):
        label = d.isoformat()
        take = (lambda a: a) if rows is None else (lambda a, r=rows[k]: _scatter(a, r))
        for n in names:
            out[f"{n}_mean_{label}"] = take(st.values[f"{n}_mean"])
        out[f"valid_fraction_{label}"] = take(st.valid_fraction)
        out[f"status_{label}"] = take(st.status) if rows is None else _scatter(st.status, rows[k], fill="absent")
    return out


def _scatter(values: np.ndarray, rows: tuple[np.ndarray, int], fill: Any = None) -> np.ndarray:
    """Values of a date's objects placed at their table rows (``rows`` = (row per object, number of rows));
    rows without an object get ``fill`` (None: NaN)."""
    where, n = rows
    out = np.full(n, np.nan if fill is None else fill, dtype=np.float64 if fill is None else values.dtype)
    out[where] = values
    return out


def long_table(stats: Sequence[DateStats], dates: Sequence[dt.date], object_ids: Sequence[np.ndarray],
               geoms: Sequence[np.ndarray], crs: Any, extra: dict[str, Sequence[np.ndarray]] | None = None) -> Any:
    """The long table as a GeoDataFrame (one row per object and date, oldest date first)."""
    import geopandas as gpd
    import pandas as pd

    parts = []
    for k, (st, d) in enumerate(zip(stats, dates)):
        cols: dict[str, Any] = {"object_id": object_ids[k]}
        for key, vals in (extra or {}).items():
            cols[key] = vals[k]
        cols.update({"date": d.isoformat(), "n_pixels": st.n_pixels, "n_valid": st.n_valid,
                     "valid_fraction": st.valid_fraction, **st.values, "status": st.status.astype(str)})
        parts.append(gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries(geoms[k], crs=crs)))
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=crs)


def write_long(table: Any, path: str | os.PathLike[str]) -> Path:
    """Write the long table atomically as CSV, Parquet or GeoParquet (by extension)."""
    from geosam.write.paths import atomic_output, check_writable_path

    p = check_long_path(path)
    check_writable_path(p)
    ext = p.suffix.lower()
    try:
        with atomic_output(p) as tmp:
            if ext == ".geoparquet":
                table.to_parquet(tmp, index=False)
            else:
                plain = table.drop(columns=table.geometry.name)
                if ext == ".csv":
                    plain.to_csv(tmp, index=False)
                else:
                    import pandas as pd

                    pd.DataFrame(plain).to_parquet(tmp, index=False)
    except ExportError:
        raise
    except Exception as exc:  # pyarrow / pandas / OS errors
        raise ExportError(f"{p}: cannot write the long table ({exc})") from exc
    return p


def write_long_batches(frames: Iterable[Any], path: str | os.PathLike[str], geometry_types: set[str]) -> Path:
    """Write the long table from batches (same columns; at least one, maybe empty), never whole in memory.

    Args:
        frames: The long table's batches (`long_table` frames), in order.
        path: ``.csv``, ``.parquet`` (no geometry) or ``.geoparquet`` (`geosam.write.vector.write_frames`).
        geometry_types: The geometry types the batches hold (``.geoparquet``).

    Returns:
        The path.

    Raises:
        ExportError: A bad path or a failed write.
    """
    from geosam.write.paths import atomic_output, check_writable_path

    p = check_long_path(path)
    ext = p.suffix.lower()
    if ext == ".geoparquet":
        from geosam.write.vector import write_frames

        return write_frames(frames, p, geometry_types=geometry_types)
    check_writable_path(p)
    try:
        with atomic_output(p) as tmp:
            _write_plain(frames, tmp, ext)
    except ExportError:
        raise
    except Exception as exc:  # pyarrow / pandas / OS errors
        raise ExportError(f"{p}: cannot write the long table ({exc})") from exc
    return p


def _write_plain(frames: Iterable[Any], tmp: Path, ext: str) -> None:
    """CSV (appended batch by batch) or Parquet (one row group per batch) without the geometry column."""
    import pandas as pd

    writer: Any = None
    try:
        for k, table in enumerate(frames):
            plain = pd.DataFrame(table.drop(columns=table.geometry.name))
            if ext == ".csv":
                plain.to_csv(tmp, index=False, mode="w" if k == 0 else "a", header=k == 0)
                continue
            import pyarrow as pa
            import pyarrow.parquet as pq

            if writer is None:
                batch = pa.Table.from_pandas(plain, preserve_index=False)
                writer = pq.ParquetWriter(tmp, batch.schema)
            else:
                batch = pa.Table.from_pandas(plain, schema=writer.schema, preserve_index=False)
            writer.write_table(batch)
    finally:
        if writer is not None:
            writer.close()


__all__ = ["LONG_FORMATS", "check_long_path", "long_table", "wide_columns", "write_long", "write_long_batches"]
