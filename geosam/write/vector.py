"""Vector files: GeoJSON, GeoPackage, Shapefile or GeoParquet, written from one frame or streamed batches.

`write_frames` writes any number of GeoDataFrame batches (same columns) into one
file through a single Arrow stream (pyogrio for the OGR formats, a Parquet writer for
GeoParquet), so a table of millions of rows is written without ever being whole in
memory; `write_vector` is the one-frame case. The write is atomic
(`geosam.write.paths.atomic_output`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosam.errors import ExportError, GeosamError
from geosam.write.failed_chips import write_failed_chips
from geosam.write.paths import atomic_output, check_writable_path, output_files

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

log = logging.getLogger(__name__)

#: File extension -> (format name, OGR driver or None for GeoParquet).
VECTOR_FORMATS: dict[str, tuple[str, str | None]] = {
    ".geojson": ("GeoJSON", "GeoJSON"),
    ".json": ("GeoJSON", "GeoJSON"),
    ".gpkg": ("GeoPackage", "GPKG"),
    ".shp": ("Shapefile", "ESRI Shapefile"),
    ".parquet": ("GeoParquet", None),
    ".geoparquet": ("GeoParquet", None),
}

#: Longest attribute name a Shapefile (dBASE) can hold.
SHAPEFILE_MAX_FIELD = 10

#: Geometry type declared for an empty layer (geosam writes polygons).
EMPTY_GEOMETRY_TYPE = "Polygon"

#: drivers whose layers hold either single or multi geometries, not both (as pyogrio: promote to multi)
_NO_MIXED = ("GPKG",)


def vector_format(path: Path) -> tuple[str, str | None]:
    """(format name, OGR driver or None for GeoParquet) of ``path``'s extension; ExportError if unknown."""
    ext = path.suffix.lower()
    if ext not in VECTOR_FORMATS:
        supported = ", ".join(sorted(VECTOR_FORMATS))
        raise ExportError(f"{path}: unknown vector format {ext or '(no extension)'!r}; use one of {supported}")
    return VECTOR_FORMATS[ext]


def shapefile_field_names(columns: list[str]) -> dict[str, str]:
    """Deterministic map of column names to unique Shapefile field names (<= 10 chars).

    Names that fit are kept; longer ones are truncated to 10 characters, and a
    clash (case-insensitive, as dBASE compares) gets a numeric suffix:
    ``predicted_iou_mean`` -> ``predicted_``, then ``predicte_1``, ``predicte_2``...
    Only names that change are in the result.
    """
    taken = {c.lower() for c in columns if len(c) <= SHAPEFILE_MAX_FIELD}
    out: dict[str, str] = {}
    for c in columns:
        if len(c) <= SHAPEFILE_MAX_FIELD:
            continue
        new = c[:SHAPEFILE_MAX_FIELD]
        k = 0
        while new.lower() in taken:
            k += 1
            suffix = f"_{k}"
            new = c[: SHAPEFILE_MAX_FIELD - len(suffix)] + suffix
        taken.add(new.lower())
        out[c] = new
    return out


def _is_wgs84(crs: Any) -> bool:
    try:
        return crs is not None and crs.to_epsg() == 4326
    except Exception:  # noqa: BLE001 - a predicate: pyproj raises many types on odd CRSs
        return False


def read_vector(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read a vector file of any format `write_vector` writes (GeoParquet included)."""
    import geopandas as gpd

    if vector_format(Path(path))[1] is None:
        return gpd.read_parquet(path)
    return gpd.read_file(path, engine="pyogrio")


def write_vector(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    to_crs: Any = None,
    overwrite: bool = True,
    layer: str | None = None,
) -> Path:
    """Write `gdf` to `path` in the format its extension names.

    Formats: `.geojson`/`.json` (GeoJSON), `.gpkg` (GeoPackage), `.shp` (Shapefile; column
    names longer than 10 characters are shortened by `shapefile_field_names`, with a
    warning), `.parquet`/`.geoparquet` (GeoParquet). GeoJSON is written in the data's CRS
    with a `crs` member (read by GDAL and QGIS); RFC 7946 readers assume WGS84, so a
    warning is logged when the CRS is not EPSG:4326 -- pass `to_crs="EPSG:4326"` for web use.

    The write is atomic (`geosam.write.paths.atomic_output`): an existing file is replaced
    only once the new one is complete. Parent folders are created. A GeoDataFrame without
    rows gives a valid empty file with the CRS and (except GeoJSON, which has no schema)
    the columns. For a geosam run's table whose chips failed (`skip_bad_chips`), their
    footprints are written beside it (`geosam.write.failed_chips.write_failed_chips`).

    Args:
        gdf: The table to write.
        path: The output file; its extension chooses the format.
        to_crs: Reproject first (anything pyproj accepts); None keeps the data's CRS.
        overwrite: Replace an existing file (the default, as in geopandas); False refuses
            one (for a GeoPackage: an existing layer of that name).
        layer: GeoPackage layer to write or replace (default: the file stem); other
            layers are kept.

    Returns:
        The written path.

    Raises:
        ExportError: An unknown extension, a folder at `path`, an unwritable folder, an
            existing file with `overwrite=False`, or a failed write.
    """
    import geopandas as gpd

    if not isinstance(gdf, gpd.GeoDataFrame):
        raise ExportError(f"{path}: expected a GeoDataFrame, got {type(gdf).__name__}")
    if to_crs is not None:
        if gdf.crs is None:
            raise ExportError(f"{path}: cannot reproject to {to_crs}: the GeoDataFrame has no CRS (set one first)")
        from geosam.assemble.reproject import reproject

        gdf = reproject(gdf, to_crs)  # valid, split at the antimeridian
    types = {str(t) for t in gdf.geometry.geom_type.dropna().unique()}
    out = write_frames([gdf], path, geometry_types=types, overwrite=overwrite, layer=layer)
    if "geosam" in gdf.attrs:  # a geosam run's table: its failed chips beside it (geosam.write.failed_chips)
        write_failed_chips(gdf.attrs["geosam"], out)
    return out


def write_frames(
    frames: Iterable[gpd.GeoDataFrame],
    path: str | os.PathLike[str],
    *,
    geometry_types: set[str],
    overwrite: bool = True,
    layer: str | None = None,
) -> Path:
    """Write GeoDataFrame batches (same columns and CRS; at least one, maybe empty) as one file.

    ``geometry_types``: every geometry type the batches hold (declares the layer's type: a
    GeoPackage with both Polygon and MultiPolygon gets MultiPolygons, as geopandas writes it).
    Batches are consumed one at a time. Formats, atomicity, GeoPackage layers and
    ``overwrite`` as in `write_vector`. Returns the path.
    """
    path = Path(path)
    fmt, driver = vector_format(path)
    if layer is not None and driver != "GPKG":
        raise ExportError(f"{path}: layer={layer!r} applies to GeoPackages (.gpkg) only")
    layer = (layer or path.stem.lstrip("-") or "objects") if driver == "GPKG" else None  # GDAL refuses a leading '-' 
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file path (geosam never replaces a folder)")
    check_writable_path(path)
    layers = _gpkg_layers(path) if driver == "GPKG" and path.exists() else None
    if not overwrite:
        if layers is not None and layer in layers:
            raise ExportError(f"{path}: layer {layer!r} exists; pass overwrite=True to replace it")
        existing = [f for f in output_files(path) if f.exists()]
        if existing and layers is None:
            raise ExportError(f"{path}: file exists; pass overwrite=True to replace it")
    counter = _Counter(iter(frames))
    try:
        with atomic_output(path, copy_existing=layers is not None) as tmp:
            if driver is None:
                _write_parquet(counter, tmp, geometry_types)
            else:
                _write_ogr(counter, tmp, driver, layer, path, geometry_types)
    except GeosamError:
        raise
    except Exception as exc:  # pyogrio / pyarrow / OS errors
        raise ExportError(f"{path}: cannot write {fmt} ({exc})") from exc
    log.info("wrote %d features to %s (%s%s)", counter.rows, path, fmt, f", layer {layer!r}" if layer else "")
    return path


class _Counter:
    """Iterate the frames, counting rows."""

    def __init__(self, frames: Iterator[gpd.GeoDataFrame]) -> None:
        self.frames, self.rows = frames, 0

    def __iter__(self) -> Iterator[gpd.GeoDataFrame]:
        for f in self.frames:
            self.rows += len(f)
            yield f


def _gpkg_layers(path: Path) -> list[str] | None:
    """Layer names of an existing GeoPackage; None if it is not one GDAL can read (then it is replaced whole)."""
    import pyogrio

    try:
        return [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception:  # noqa: BLE001 - a predicate: unreadable means "not a GeoPackage"
        log.warning("%s: not a readable GeoPackage; it will be replaced as a whole", path)
        return None


def _attr_table(gdf: gpd.GeoDataFrame, schema: pa.Schema | None, renames: dict[str, str]) -> pa.Table:
    """The batch as an Arrow table: attributes (``schema`` fixes their types) + WKB ``geometry``."""
    import pandas as pd
    import pyarrow as pa
    import shapely

    attrs = pd.DataFrame(gdf.drop(columns=gdf.geometry.name)).rename(columns=renames)
    if schema is None:
        fields = []
        for name in attrs.columns:
            typ = pa.Schema.from_pandas(attrs[[name]], preserve_index=False).field(0).type
            fields.append(pa.field(str(name), pa.string() if pa.types.is_null(typ) else typ))
        attr_schema = pa.schema(fields)
    else:
        attr_schema = pa.schema([f for f in schema if f.name != "geometry"])
    tbl = pa.Table.from_pandas(attrs, schema=attr_schema, preserve_index=False)
    return tbl.append_column("geometry", pa.array(shapely.to_wkb(gdf.geometry.values), type=pa.binary()))


def _declared_type(types: set[str], driver: str | None) -> str:
    if not types:
        return EMPTY_GEOMETRY_TYPE
    if len(types) == 1:
        return next(iter(types))
    if types == {"Polygon", "MultiPolygon"} and driver in _NO_MIXED:
        return "MultiPolygon"
    return "Unknown"


def _promoted(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Polygons as one-part MultiPolygons (a layer declared MultiPolygon)."""
    from shapely.geometry import MultiPolygon

    geoms = [MultiPolygon([g]) if g is not None and g.geom_type == "Polygon" else g for g in gdf.geometry]
    return gdf.set_geometry(gdf.geometry.__class__(geoms, crs=gdf.crs, index=gdf.index))


def _ogr_crs(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt("WKT1_GDAL")


def _write_ogr(frames: Iterable[gpd.GeoDataFrame], tmp: Path, driver: str, layer: str | None, shown: Path,
               types: set[str]) -> None:
    """Stream the frames into ``tmp`` with pyogrio; ``shown`` is the path named in warnings (the final target)."""
    import pyarrow as pa
    from pyogrio.raw import write_arrow

    it = iter(frames)
    first = next(it)
    if first.crs is None:
        log.warning("%s: the GeoDataFrame has no CRS; the file will not be georeferenced", shown)
    if driver == "GeoJSON" and first.crs is not None and not _is_wgs84(first.crs):
        log.warning("%s: writing GeoJSON in %s with a 'crs' member; RFC 7946 readers assume WGS84 "
                    "(pass to_crs='EPSG:4326' for web maps)", shown, first.crs.to_string())
    renames: dict[str, str] = {}
    if driver == "ESRI Shapefile":
        renames = shapefile_field_names([str(c) for c in first.columns if c != first.geometry.name])
        if renames:
            log.warning("%s: Shapefile field names are limited to %d characters; renamed %s", shown,
                        SHAPEFILE_MAX_FIELD, ", ".join(f"{a!r} -> {b!r}" for a, b in renames.items()))
    declared = _declared_type(types, driver)
    promote = declared == "MultiPolygon" and "Polygon" in types

    def prep(f: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        return _promoted(f) if promote else f

    head = _attr_table(prep(first), None, renames)
    schema = head.schema

    failed: list[BaseException] = []  # pyogrio reports a failing stream without its cause

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from head.to_batches()
            for f in it:
                yield from _attr_table(prep(f), schema, renames).to_batches()
        except BaseException as exc:
            failed.append(exc)
            raise

    kw: dict[str, Any] = {"layer": layer} if layer is not None else {}
    try:
        write_arrow(pa.RecordBatchReader.from_batches(schema, batches()), tmp, driver=driver,
                    geometry_name="geometry", geometry_type=declared, crs=_ogr_crs(first.crs), **kw)
    except Exception:
        if failed:
            raise failed[0] from None
        raise


def _write_parquet(frames: Iterable[gpd.GeoDataFrame], tmp: Path, types: set[str]) -> None:
    """Stream the frames into a GeoParquet file; its ``geo`` metadata (types, bbox) is written at the end."""
    import json

    import pyarrow.parquet as pq
    from geopandas.io.arrow import _create_metadata

    writer = None
    bounds = [float("inf"), float("inf"), float("-inf"), float("-inf")]
    first = None
    for f in frames:
        if first is None:
            first = f
        tbl = _attr_table(f, None if writer is None else writer.schema, {})
        if writer is None:
            writer = pq.ParquetWriter(tmp, tbl.schema)
        writer.write_table(tbl)
        if len(f):
            b = f.total_bounds
            bounds = [min(bounds[0], b[0]), min(bounds[1], b[1]), max(bounds[2], b[2]), max(bounds[3], b[3])]
    assert writer is not None and first is not None, "write_frames needs at least one frame"
    meta = _create_metadata(first.iloc[:0])
    col = meta["columns"][first.geometry.name]
    col["geometry_types"] = sorted(types)
    if all(abs(v) != float("inf") for v in bounds):
        col["bbox"] = bounds
    else:
        col.pop("bbox", None)
    if first.geometry.name != "geometry":
        meta["columns"] = {"geometry": col}
    meta["primary_column"] = "geometry"
    writer.add_key_value_metadata({"geo": json.dumps(meta)})
    writer.close()


__all__ = ["EMPTY_GEOMETRY_TYPE", "SHAPEFILE_MAX_FIELD", "VECTOR_FORMATS", "read_vector", "shapefile_field_names",
           "vector_format", "write_frames", "write_vector"]
