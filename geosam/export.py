"""Write results: vector files, instance-label rasters and quick-look PNGs.

* :func:`write_vector` -- GeoJSON, GeoPackage, Shapefile or GeoParquet, chosen
  by the file extension; empty results still give a valid file with the
  columns and the CRS (GeoJSON cannot store columns without features).
* :func:`write_label_raster` -- a uint32 instance-label GeoTIFF on the grid of
  the input scene, rasterized block by block so memory stays bounded.
* :func:`render_overlay` -- a PNG of the (decimated) scene with the polygon
  outlines drawn over it.

Frames: polygons are in the CRS of their GeoDataFrame (map units); raster
grids are those of the file named ``like_path`` / ``image_path``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.errors import ExportError
from geosam.geo import same_crs

if TYPE_CHECKING:
    import geopandas as gpd

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
_SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")

#: Geometry type declared for an empty layer (geosam writes polygons).
EMPTY_GEOMETRY_TYPE = "Polygon"

#: Largest instance id a uint32 label raster can hold.
MAX_LABEL = np.iinfo(np.uint32).max


# ----------------------------------------------------------------------------
# helpers


def _vector_format(path: Path) -> tuple[str, str | None]:
    ext = path.suffix.lower()
    if ext not in VECTOR_FORMATS:
        supported = ", ".join(sorted(VECTOR_FORMATS))
        raise ExportError(f"{path}: unknown vector format {ext or '(no extension)'!r}; use one of {supported}")
    return VECTOR_FORMATS[ext]


def _ensure_writable_folder(path: Path) -> None:
    """Create ``path``'s parent folder if needed; ExportError naming the path if it is not writable."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{path}: cannot create folder {parent} ({exc.strerror or exc})") from exc
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{path}: folder {parent} is not writable; choose another output path")


def check_output_path(path: str | os.PathLike[str], kind: str = "vector") -> Path:
    """Fail early (before hours of segmentation) on an output path that cannot be written.

    kind: "vector" (extension must be a supported vector format), "raster" (.tif/.tiff) or
    "png". Creates the parent folder; changes nothing else.
    """
    path = Path(path)
    if kind == "vector":
        _vector_format(path)
    elif kind == "raster" and path.suffix.lower() not in (".tif", ".tiff"):
        raise ExportError(f"{path}: a label or index raster must be a GeoTIFF (.tif or .tiff)")
    elif kind == "png" and path.suffix.lower() != ".png":
        raise ExportError(f"{path}: the overlay is written as PNG; use a .png file name")
    _ensure_writable_folder(path)
    return path


def _prepare_target(path: Path, overwrite: bool, sidecars: tuple[str, ...] = ()) -> None:
    """Create the parent folder, check it is writable, remove an old file if allowed."""
    _ensure_writable_folder(path)
    targets = [path] + [path.with_suffix(s) for s in sidecars if path.with_suffix(s) != path]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{path}: file exists; pass overwrite=True to replace it")
    for p in existing:
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            raise ExportError(f"{path}: cannot replace existing {p} ({exc.strerror or exc})") from exc


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


# ----------------------------------------------------------------------------
# vectors


def write_vector(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    to_crs: Any = None,
    overwrite: bool = True,
) -> Path:
    """Write ``gdf`` to ``path`` in the format its extension names; return the path.

    Formats: ``.geojson``/``.json`` (GeoJSON), ``.gpkg`` (GeoPackage, layer
    named after the file stem), ``.shp`` (Shapefile; column names longer than
    10 characters are shortened by :func:`shapefile_field_names`, with a
    warning), ``.parquet``/``.geoparquet`` (GeoParquet). ``to_crs`` reprojects
    first (anything pyproj accepts). GeoJSON is written in the data's CRS with
    a ``crs`` member (read by GDAL and QGIS); RFC 7946 readers assume WGS84, so
    a warning is logged when the CRS is not EPSG:4326 -- pass
    ``to_crs="EPSG:4326"`` for web use.

    Parent folders are created. A GeoDataFrame without rows gives a valid
    empty file with the CRS and (except GeoJSON, which has no schema) the
    columns. Raises :class:`ExportError` for an unknown extension, an
    unwritable folder, an existing file with ``overwrite=False`` or a write
    failure.
    """
    import geopandas as gpd

    path = Path(path)
    fmt, driver = _vector_format(path)
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise ExportError(f"{path}: expected a GeoDataFrame, got {type(gdf).__name__}")
    if to_crs is not None:
        if gdf.crs is None:
            raise ExportError(f"{path}: cannot reproject to {to_crs}: the GeoDataFrame has no CRS (set one first)")
        gdf = gdf.to_crs(to_crs)
    if gdf.crs is None:
        log.warning("%s: the GeoDataFrame has no CRS; the file will not be georeferenced", path)
    sidecars = _SHAPEFILE_SIDECARS if driver == "ESRI Shapefile" else ()
    _prepare_target(path, overwrite, sidecars)

    try:
        if driver is None:
            gdf.to_parquet(path, index=False)
        else:
            _write_ogr(gdf, path, fmt, driver)
    except ExportError:
        raise
    except Exception as exc:  # pyogrio / pyarrow / OS errors
        raise ExportError(f"{path}: cannot write {fmt} ({exc})") from exc
    log.info("wrote %d features to %s (%s)", len(gdf), path, fmt)
    return path


def _write_ogr(gdf: gpd.GeoDataFrame, path: Path, fmt: str, driver: str) -> None:
    kw: dict[str, Any] = {"driver": driver, "engine": "pyogrio", "index": False}
    if driver == "GPKG":
        kw["layer"] = path.stem
    if driver == "GeoJSON" and gdf.crs is not None and not _is_wgs84(gdf.crs):
        log.warning(
            "%s: writing GeoJSON in %s with a 'crs' member; RFC 7946 readers assume WGS84 "
            "(pass to_crs='EPSG:4326' for web maps)",
            path,
            gdf.crs.to_string(),
        )
    if driver == "ESRI Shapefile":
        renames = shapefile_field_names([str(c) for c in gdf.columns if c != gdf.geometry.name])
        if renames:
            log.warning(
                "%s: Shapefile field names are limited to %d characters; renamed %s",
                path,
                SHAPEFILE_MAX_FIELD,
                ", ".join(f"{a!r} -> {b!r}" for a, b in renames.items()),
            )
            gdf = gdf.rename(columns=renames)
    if len(gdf) == 0:
        kw["geometry_type"] = EMPTY_GEOMETRY_TYPE
    gdf.to_file(path, **kw)


# ----------------------------------------------------------------------------
# label raster


def _label_ids(gdf: gpd.GeoDataFrame, id_column: str | None, path: Path) -> np.ndarray:
    """Instance ids as uint32, checked to be whole numbers in 1..2^32-1."""
    if id_column is None:
        return np.arange(1, len(gdf) + 1, dtype=np.uint32)
    if id_column not in gdf.columns:
        cols = ", ".join(str(c) for c in gdf.columns if c != gdf.geometry.name)
        raise ExportError(
            f"{path}: id column {id_column!r} not in the GeoDataFrame (columns: {cols}); "
            "pass id_column=None to number the features 1..N"
        )
    raw = np.asarray(gdf[id_column])
    try:
        vals = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path}: id column {id_column!r} must hold integers ({exc})") from exc
    bad = ~np.isfinite(vals) | (vals != np.round(vals)) | (vals < 1) | (vals > MAX_LABEL)
    if bad.any():
        raise ExportError(
            f"{path}: id column {id_column!r} must hold whole numbers 1..{MAX_LABEL} "
            f"(0 is the background); e.g. row {int(np.flatnonzero(bad)[0])} has {raw[bad][0]!r}"
        )
    return vals.astype(np.uint32)


def write_label_raster(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    like_path: str | os.PathLike[str],
    id_column: str | None = "id",
    block_px: int = 1024,
) -> Path:
    """Rasterize polygons into an instance-label GeoTIFF on the grid of ``like_path``.

    The output has the size, transform and CRS of ``like_path``; pixels are
    uint32, 0 = background, else the feature's ``id_column`` value (None:
    row number 1..N). A pixel belongs to a polygon when its centre is inside;
    where polygons overlap, the later row wins (as in
    ``rasterio.features.rasterize``). ``gdf`` is reprojected to the raster
    CRS if needed (a missing CRS is taken to be the raster's, with a warning).

    Written ``block_px`` x ``block_px`` px at a time, each block burning only
    the polygons an STRtree finds intersecting it, so memory is bounded by a
    block and the geometries. The file is a tiled (256 px) deflate GeoTIFF.
    """
    import rasterio
    import shapely
    from affine import Affine
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from geosam.io import open_raster

    path = Path(path)
    if block_px < 16:
        raise ExportError(f"{path}: block_px must be at least 16, got {block_px}")
    if path.suffix.lower() not in (".tif", ".tiff"):
        log.warning("%s: writing a GeoTIFF to a file without a .tif extension", path)
    with open_raster(os.fspath(like_path)) as src:
        width, height, transform, crs = src.width, src.height, src.transform, src.crs

    ids = _label_ids(gdf, id_column, path)
    if len(gdf) and crs is not None:
        if gdf.crs is None:
            log.warning("%s: the GeoDataFrame has no CRS; assuming the raster's (%s)", path, crs.to_string())
        elif not same_crs(gdf.crs, crs):
            gdf = gdf.to_crs(crs.to_wkt())
    geoms = np.asarray(gdf.geometry.values, dtype=object) if len(gdf) else np.zeros(0, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms)) if geoms.size else np.zeros(0, dtype=bool)
    geoms, ids = geoms[keep], ids[keep]
    tree = shapely.STRtree(geoms)

    _prepare_target(path, overwrite=True)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint32",
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    n_burnt = 0
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.set_band_description(1, "instance id (0 = background)")
            for r0 in range(0, height, block_px):
                for c0 in range(0, width, block_px):
                    win = Window(c0, r0, min(block_px, width - c0), min(block_px, height - r0))
                    wt = transform @ Affine.translation(c0, r0)
                    shape = (int(win.height), int(win.width))
                    x0, y1 = wt @ (0, 0)
                    x1, y0 = wt @ (shape[1], shape[0])
                    hits = np.sort(tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
                    if hits.size == 0:
                        block = np.zeros(shape, dtype=np.uint32)
                    else:
                        block = rasterize(
                            zip(geoms[hits], ids[hits].tolist()),
                            out_shape=shape,
                            transform=wt,
                            fill=0,
                            dtype="uint32",
                        )
                        n_burnt += int(hits.size)
                    dst.write(block, 1, window=win)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{path}: cannot write the label raster ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features, %d block burns)", path, width, height, len(geoms), n_burnt)
    return path


# ----------------------------------------------------------------------------
# overlay


def distinct_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 RGB colours with well-spread hues (golden-ratio steps), bright and saturated."""
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    h = (rng.uniform() + np.arange(n) * 0.618033988749895) % 1.0
    s = rng.uniform(0.65, 1.0, n)
    v = rng.uniform(0.8, 1.0, n)
    return np.round(hsv_to_rgb(np.stack([h, s, v], axis=-1).reshape(-1, 3)) * 255).astype(np.uint8).reshape(n, 3)


def _read_quicklook(image_path: str, max_side_px: int, bands: tuple[int, ...] | None):
    """Decimated (H, W, 3) uint8 image, its full-resolution transform, size and CRS."""
    from rasterio.enums import Resampling

    from geosam.errors import BandError
    from geosam.io import SceneInfo, default_bands, open_raster

    with open_raster(image_path) as ds:
        info = SceneInfo.from_dataset(ds)
        sel = tuple(int(b) for b in bands) if bands else default_bands(info)
        if len(sel) not in (1, 3) or any(b < 1 or b > info.count for b in sel):
            raise BandError(f"{image_path}: select 1 or 3 of bands 1..{info.count} for the overlay, got {list(sel)}")
        scale = min(1.0, max_side_px / max(info.width, info.height))
        oh, ow = max(1, round(info.height * scale)), max(1, round(info.width * scale))
        kw = {"out_shape": (len(sel), oh, ow), "resampling": Resampling.nearest}
        data = ds.read(list(sel), **kw)
        valid = np.all(ds.read_masks(list(sel), **kw) != 0, axis=0)
    if data.dtype != np.uint8:
        out = np.zeros(data.shape, dtype=np.uint8)
        for k in range(data.shape[0]):
            band = data[k].astype(np.float64)
            vals = band[valid & np.isfinite(band)]
            if vals.size == 0:
                continue
            lo, hi = np.percentile(vals, [2.0, 98.0])
            hi = hi if hi > lo else lo + 1.0
            f = np.nan_to_num((band - lo) / (hi - lo), nan=0.0, posinf=1.0, neginf=0.0)
            out[k] = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
        data = out
    img = np.moveaxis(data, 0, -1)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = np.ascontiguousarray(img)
    img[~valid] = 0
    return img, info


def render_overlay(
    image_path: str | os.PathLike[str],
    gdf: gpd.GeoDataFrame,
    png_path: str | os.PathLike[str],
    *,
    max_side_px: int = 2048,
    bands: tuple[int, ...] | None = None,
    outline_px: int = 1,
    fill_alpha: int = 80,
    seed: int = 0,
) -> Path:
    """Draw polygon outlines over a quick-look of the scene; return the PNG path.

    The scene is read decimated (nearest neighbour, longest side
    ``max_side_px`` px; GDAL uses overviews when present), non-uint8 bands
    are stretched 2-98 % on that read, invalid pixels are black. ``bands``:
    1-based bands (1 or 3), default red/green/blue or the first bands. Each
    feature gets a random distinct colour (reproducible with ``seed``), a fill
    of opacity ``fill_alpha`` / 255 and an opaque outline ``outline_px`` px
    wide; holes are left unfilled. ``gdf`` is reprojected to the scene CRS.
    The PNG is exactly as large as the decimated read.
    """
    import shapely
    from affine import Affine
    from PIL import Image, ImageDraw

    png_path = Path(png_path)
    if max_side_px < 1:
        raise ExportError(f"{png_path}: max_side_px must be positive, got {max_side_px}")
    img, info = _read_quicklook(os.fspath(image_path), max_side_px, bands)
    oh, ow = img.shape[:2]

    if len(gdf) and gdf.crs is not None and not same_crs(gdf.crs, _rio_crs(info.crs_wkt)):
        gdf = gdf.to_crs(info.crs_wkt)
    geoms = np.asarray(gdf.geometry.values, dtype=object) if len(gdf) else np.zeros(0, dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))] if geoms.size else geoms
    # map coordinates -> output pixel coordinates, all vertices at once
    to_px = Affine.scale(ow / info.width, oh / info.height) @ ~info.transform
    m = np.array([[to_px.a, to_px.b], [to_px.d, to_px.e]])
    off = np.array([to_px.c, to_px.f])
    geoms = shapely.transform(geoms, lambda xy: xy @ m.T + off) if geoms.size else geoms
    colours = distinct_colours(len(geoms), seed)

    base = Image.fromarray(img, "RGB").convert("RGBA")
    fill_layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(fill_layer)
    # larger features first, so a feature inside another's hole is not erased by that hole
    order = np.argsort(-shapely.area(shapely.envelope(geoms))) if geoms.size else np.zeros(0, dtype=int)
    for i in order:
        c = tuple(int(v) for v in colours[i])
        for part in shapely.get_parts(geoms[i]):
            if isinstance(part, shapely.Polygon):
                fill.polygon(_flat(part.exterior), fill=(*c, fill_alpha))
                for ring in part.interiors:
                    fill.polygon(_flat(ring), fill=(0, 0, 0, 0))
    out = Image.alpha_composite(base, fill_layer)
    draw = ImageDraw.Draw(out)
    for i in range(len(geoms)):
        c = (*(int(v) for v in colours[i]), 255)
        for part in shapely.get_parts(geoms[i]):
            if isinstance(part, shapely.Polygon):
                for ring in (part.exterior, *part.interiors):
                    draw.line(_flat(ring), fill=c, width=outline_px)
            elif isinstance(part, shapely.LineString):
                draw.line(_flat(part), fill=c, width=outline_px)
            elif isinstance(part, shapely.Point):
                r = max(2, outline_px * 2)
                draw.ellipse((part.x - r, part.y - r, part.x + r, part.y + r), outline=c, width=outline_px)

    _prepare_target(png_path, overwrite=True)
    try:
        out.convert("RGB").save(png_path, format="PNG")
    except OSError as exc:
        raise ExportError(f"{png_path}: cannot write the PNG ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features)", png_path, ow, oh, len(geoms))
    return png_path


def _flat(line: Any) -> list[float]:
    """Vertices of a ring or line as a flat [x0, y0, x1, y1, ...] list for PIL."""
    return np.asarray(line.coords)[:, :2].ravel().tolist()


def _rio_crs(wkt: str):  # -> rasterio.crs.CRS
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


__all__ = [
    "VECTOR_FORMATS",
    "check_output_path",
    "distinct_colours",
    "render_overlay",
    "shapefile_field_names",
    "write_label_raster",
    "write_vector",
]
