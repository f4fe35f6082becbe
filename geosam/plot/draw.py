"""Drawing primitives shared by every geosam picture: a decimated read of the scene, the image in map
coordinates, geometries with one colour each, and a scale bar in metres.

`geosam.plot.scene.show` and the CLI's PNG overlay (`geosam.plot.overlay.render_overlay`) both draw through
`read_quicklook`, `draw_image` and `draw_geometries`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geosam.geo import to_pyproj

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from geosam.read.scene import SceneInfo

#: gid of the scale bar's line, so that it can be found on an axes (tests, styling)
SCALEBAR_GID = "geosam-scalebar"


def distinct_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 RGB colours with well-spread hues (golden-ratio steps), bright and saturated."""
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    h = (rng.uniform() + np.arange(n) * 0.618033988749895) % 1.0
    s = rng.uniform(0.65, 1.0, n)
    v = rng.uniform(0.8, 1.0, n)
    return np.round(hsv_to_rgb(np.stack([h, s, v], axis=-1).reshape(-1, 3)) * 255).astype(np.uint8).reshape(n, 3)


def read_quicklook(
    scene: Any, max_side_px: int = 1024, bands: Sequence[int] | None = None, fill_value: float | None = None
) -> tuple[np.ndarray, SceneInfo]:
    """A decimated (H, W, 3) uint8 image of the whole scene and its `SceneInfo`.

    The longest side is at most `max_side_px` px (nearest-neighbour decimation; GDAL uses overviews
    when present); values are stretched exactly as the model sees them (`Scene.to_uint8`: uint8 as is,
    other types by the scene's 2-98 % per-band stretch); invalid pixels (nodata, mask bands,
    `fill_value`) are black. `bands`: 1-based, 1 or 3 of them; default red/green/blue or the first
    bands. `scene`: a path, an open rasterio dataset or an xarray DataArray.
    """
    from geosam.config import ReadConfig
    from geosam.read.scene import Scene
    from geosam.windows import PixelWindow

    fill = None if fill_value is None else (float(fill_value),)
    with Scene(scene, ReadConfig(bands=tuple(bands) if bands else None, fill_value=fill)) as sc:
        info = sc.info
        scale = min(1.0, max_side_px / max(info.width, info.height))
        shape = (max(1, round(info.height * scale)), max(1, round(info.width * scale)))
        data, valid = sc.read_window(PixelWindow(0, 0, info.width, info.height), out_shape=shape)
        return sc.to_uint8(data, valid), info


def draw_image(ax: Axes, img: np.ndarray, info: SceneInfo, *, aspect: Literal["auto", "equal"] | float | None = None
               ) -> None:
    """Draw an (H, W, 3) image covering the scene's bounds, in the scene's map coordinates.

    ``aspect``: matplotlib's; default equal for projected CRSs and
    1 / cos(latitude) for geographic ones (a degree of longitude is shorter).
    """
    left, bottom, right, top = info.bounds
    ax.imshow(img, extent=(left, right, bottom, top), origin="upper", interpolation="nearest", resample=False)
    if aspect is None:
        aspect = 1.0 / max(math.cos(math.radians((bottom + top) / 2)), 1e-6) if info.is_geographic else "equal"
    ax.set_aspect(aspect)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)


def draw_geometries(
    ax: Axes,
    geoms: Sequence[Any] | np.ndarray,
    facecolors: np.ndarray,
    edgecolors: np.ndarray,
    *,
    linewidth: float = 1.0,
    markersize: float = 20.0,
    zorder: float = 2.0,
) -> None:
    """Draw shapely geometries (map coordinates of the axes) with one RGBA colour each (floats in [0, 1]).

    Polygons are filled with `facecolors` and outlined with `edgecolors` (holes stay open), lines and
    points take `edgecolors`; larger polygons are drawn first so that small ones stay visible.
    """
    import shapely
    from matplotlib.collections import LineCollection, PathCollection

    arr = np.asarray(geoms, dtype=object)
    if arr.size == 0:
        return
    order = np.argsort(-shapely.area(shapely.envelope(arr)), kind="stable")
    paths, pface, pedge, lines, ledge, pts, ptc = [], [], [], [], [], [], []
    for i in order:
        for part in shapely.get_parts(arr[i]):
            if isinstance(part, shapely.Polygon):
                paths.append(_polygon_path(part))
                pface.append(facecolors[i])
                pedge.append(edgecolors[i])
            elif isinstance(part, (shapely.LineString, shapely.LinearRing)):
                lines.append(np.asarray(part.coords)[:, :2])
                ledge.append(edgecolors[i])
            elif isinstance(part, shapely.Point):
                pts.append((part.x, part.y))
                ptc.append(edgecolors[i])
    if paths:
        ax.add_collection(PathCollection(paths, facecolors=pface, edgecolors=pedge, linewidths=linewidth,
                                         zorder=zorder), autolim=False)
    if lines:
        ax.add_collection(LineCollection(lines, colors=ledge, linewidths=linewidth, zorder=zorder), autolim=False)
    if pts:
        xy = np.asarray(pts)
        ax.scatter(xy[:, 0], xy[:, 1], s=markersize, c=np.asarray(ptc), edgecolors="white", linewidths=0.5,
                   zorder=zorder + 0.1)


def _polygon_path(poly: Any) -> Any:
    """A matplotlib Path of a polygon, exterior counter-clockwise and holes clockwise (so holes stay open)."""
    from matplotlib.path import Path
    from shapely.geometry.polygon import orient

    poly = orient(poly, 1.0)
    verts, codes = [], []
    for ring in (poly.exterior, *poly.interiors):
        xy = np.asarray(ring.coords)[:, :2]
        c = np.full(len(xy), Path.LINETO, dtype=Path.code_type)
        c[0], c[-1] = Path.MOVETO, Path.CLOSEPOLY
        verts.append(xy)
        codes.append(c)
    return Path(np.concatenate(verts), np.concatenate(codes))


def unit_name(crs_wkt: str) -> str:
    pcrs = to_pyproj(crs_wkt)
    return "degrees" if pcrs.is_geographic else (pcrs.axis_info[0].unit_name or "units")


def nice_length_m(max_m: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above ``max_m`` (a scale bar's length)."""
    if max_m <= 0 or not math.isfinite(max_m):
        raise ValueError(f"a scale bar needs a positive length, got {max_m}")
    k = math.floor(math.log10(max_m))
    for m in (5.0, 2.0, 1.0):
        if m * 10.0**k <= max_m * (1 + 1e-12):
            return m * 10.0**k
    return 10.0**k


def add_scalebar(ax: Axes, crs: Any, *, fraction: float = 0.25, loc: tuple[float, float] = (0.05, 0.05)) -> float:
    """Draw a scale bar on an axes in map coordinates of `crs`.

    The bar is the longest round length (1, 2, 5 x 10^k m) not above `fraction` of the axes' width.
    Geographic CRSs: it runs due east for that many metres on the ellipsoid (pyproj `Geod`);
    projected CRSs: that many metres in the CRS's linear unit. The line has gid `SCALEBAR_GID`.

    Args:
        ax: Axes whose data coordinates are map coordinates of `crs`.
        crs: The axes' CRS (anything pyproj accepts).
        fraction: Longest bar, as a fraction of the axes' width.
        loc: Where the bar starts, in axes fractions (x, y).

    Returns:
        The bar's length in metres.
    """
    import matplotlib.patheffects as pe
    from pyproj import Geod

    pcrs = to_pyproj(crs)
    (x_left, x_right), (y_bottom, y_top) = ax.get_xlim(), ax.get_ylim()
    x0 = x_left + loc[0] * (x_right - x_left)
    y0 = y_bottom + loc[1] * (y_top - y_bottom)
    if pcrs.is_geographic:
        ell = pcrs.ellipsoid
        geod = Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre) if ell is not None else Geod(ellps="WGS84")
        width_m = geod.inv(x0, y0, x0 + fraction * (x_right - x_left), y0)[2]
        length = nice_length_m(width_m)
        x1 = float(geod.fwd(x0, y0, 90.0, length)[0])
    else:
        factor = next((a.unit_conversion_factor for a in pcrs.axis_info if a.unit_conversion_factor), 1.0)
        length = nice_length_m(fraction * (x_right - x_left) * factor)
        x1 = x0 + length / factor
    halo = [pe.withStroke(linewidth=5, foreground="white")]
    ax.plot([x0, x1], [y0, y0], color="black", linewidth=3, solid_capstyle="butt", gid=SCALEBAR_GID,
            path_effects=halo, zorder=5)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.annotate(label, ((x0 + x1) / 2, y0), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                fontsize="small", path_effects=[pe.withStroke(linewidth=3, foreground="white")], zorder=5)
    ax.set_xlim(x_left, x_right)
    ax.set_ylim(y_bottom, y_top)
    return length



__all__ = ["SCALEBAR_GID", "add_scalebar", "distinct_colours", "draw_geometries", "draw_image", "nice_length_m",
           "read_quicklook", "unit_name"]
