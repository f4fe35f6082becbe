"""Quick-look PNGs: the (decimated) scene with polygon outlines drawn over it.

Drawn with the same primitives as `geosam.plot.show` (`geosam.plot.draw`); the CLI's ``--overlay``.

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
from geosam.plot.draw import distinct_colours, draw_geometries, draw_image, read_quicklook
from geosam.write.paths import atomic_output, check_not_input, local_input

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)
_DPI = 72.0


def render_overlay(
    image_path: Any,
    gdf: gpd.GeoDataFrame,
    png_path: str | os.PathLike[str],
    *,
    max_side_px: int = 2048,
    bands: tuple[int, ...] | None = None,
    outline_px: int = 1,
    fill_alpha: int = 80,
    seed: int = 0,
) -> Path:
    """Draw polygon outlines over a quick-look of the scene into a PNG.

    The scene is read decimated (nearest neighbour; GDAL uses overviews when present),
    non-uint8 bands are stretched 2-98 % on that read, invalid pixels are black. Each
    feature gets a random distinct colour, a translucent fill and an opaque outline;
    holes are left unfilled. `gdf` is reprojected to the scene CRS. The PNG is exactly as
    large as the decimated read.

    Args:
        image_path: The scene: a raster path, an xarray DataArray or a STAC item / `geosam.stac.StacScene`
            (anything `geosam.read.scene.Scene` opens).
        gdf: The polygons to draw.
        png_path: The PNG to write.
        max_side_px: Longest side of the decimated read (px).
        bands: 1-based bands (1 or 3); default red/green/blue or the first bands.
        outline_px: Outline width (px).
        fill_alpha: Fill opacity, 0-255.
        seed: Seed of the per-feature colours.

    Returns:
        The written PNG path.
    """
    import shapely
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    png_path = Path(png_path)
    check_not_input(png_path, {"scene": local_input(image_path)}, "overlay")
    if max_side_px < 1:
        raise ExportError(f"{png_path}: max_side_px must be positive, got {max_side_px}")
    scene = os.fspath(image_path) if isinstance(image_path, os.PathLike) else image_path
    img, info = read_quicklook(scene, max_side_px, bands)
    oh, ow = img.shape[:2]

    if len(gdf) and gdf.crs is not None and not same_crs(gdf.crs, _rio_crs(info.crs_wkt)):
        gdf = gdf.to_crs(info.crs_wkt)
    geoms = np.asarray(gdf.geometry.values, dtype=object) if len(gdf) else np.zeros(0, dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))] if geoms.size else geoms
    edge = np.column_stack([distinct_colours(len(geoms), seed) / 255.0, np.ones(len(geoms))])
    face = edge.copy()
    face[:, 3] = fill_alpha / 255.0

    # one figure pixel per image pixel: at 72 dpi a point is a pixel
    fig = Figure(figsize=(ow / _DPI, oh / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    draw_image(ax, img, info, aspect="auto")
    draw_geometries(ax, geoms, face, edge, linewidth=float(outline_px), markersize=float((4 * outline_px) ** 2))
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (oh, ow):  # float rounding of the figure size; never more than a pixel
        rgba = np.asarray(Image.fromarray(rgba).resize((ow, oh), Image.Resampling.NEAREST))
    out = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
    try:
        with atomic_output(png_path) as tmp:
            out.save(tmp, format="PNG")
    except OSError as exc:
        raise ExportError(f"{png_path}: cannot write the PNG ({exc})") from exc
    log.info("wrote %s (%d x %d px, %d features)", png_path, ow, oh, len(geoms))
    return png_path


def _rio_crs(wkt: str) -> Any:  # rasterio.crs.CRS
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


__all__ = ["render_overlay"]
