"""Quick-look PNGs: the (decimated) scene with polygon outlines drawn over it.

Frames: the PNG's pixels are those of a decimated read of ``image_path``
(longest side ``max_side_px``); polygons are reprojected to the scene CRS and
mapped to those pixels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.errors import ExportError
from geosam.geo import same_crs
from geosam.outputs import atomic_output, check_not_input

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)



def distinct_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 RGB colours with well-spread hues (golden-ratio steps), bright and saturated."""
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    h = (rng.uniform() + np.arange(n) * 0.618033988749895) % 1.0
    s = rng.uniform(0.65, 1.0, n)
    v = rng.uniform(0.8, 1.0, n)
    return np.round(hsv_to_rgb(np.stack([h, s, v], axis=-1).reshape(-1, 3)) * 255).astype(np.uint8).reshape(n, 3)


def _read_quicklook(image_path: str, max_side_px: int, bands: tuple[int, ...] | None) -> tuple[np.ndarray, Any]:
    """Decimated (H, W, 3) uint8 image, stretched exactly as the model sees the scene
    (:meth:`geosam.io.Scene.to_uint8`), and the scene's :class:`~geosam.io.SceneInfo`."""
    from geosam.config import ReadConfig
    from geosam.io import Scene
    from geosam.tiling import PixelWindow

    with Scene(image_path, ReadConfig(bands=bands)) as sc:
        info = sc.info
        scale = min(1.0, max_side_px / max(info.width, info.height))
        shape = (max(1, round(info.height * scale)), max(1, round(info.width * scale)))
        data, valid = sc.read_window(PixelWindow(0, 0, info.width, info.height), out_shape=shape)
        return sc.to_uint8(data, valid), info


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
    check_not_input(png_path, {"scene": image_path}, "overlay")
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

    try:
        with atomic_output(png_path) as tmp:
            out.convert("RGB").save(tmp, format="PNG")
    except OSError as exc:
        raise ExportError(f"{png_path}: cannot write the PNG ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features)", png_path, ow, oh, len(geoms))
    return png_path


def _flat(line: Any) -> list[float]:
    """Vertices of a ring or line as a flat [x0, y0, x1, y1, ...] list for PIL."""
    return np.asarray(line.coords)[:, :2].ravel().tolist()


def _rio_crs(wkt: str) -> Any:  # rasterio.crs.CRS
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


__all__ = ["distinct_colours", "render_overlay"]
