"""Pictures of scenes and objects: the image as the model sees it, polygons coloured by a column.

* `show` -- a matplotlib axes with the scene (decimated, stretched exactly as the model sees it) in
  **map coordinates of the scene CRS**, polygons, lines or points over it coloured by a column (legend
  or colour bar) and a scale bar in metres; any GeoDataFrame in the scene CRS can be added with
  `gdf.plot(ax=ax)`.
* `explore` -- an interactive folium map (`gdf.explore`), extra `pip install "geosam-scenes[maps]"`.

The CLI's PNG overlay (`render_overlay`) draws through `read_quicklook`, `draw_image`, `draw_geometries`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geosam.geo import same_crs, to_pyproj

if TYPE_CHECKING:
    import geopandas as gpd
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


@dataclass(frozen=True)
class PlotStyle:
    """How `show` draws: colours, outlines, legend, scale bar, title and figure size.

    Attributes:
        categorical: Treat `column` as categories (default: text and bool columns are).
        cmap: A matplotlib colormap name.
        vmin: Lower end of the numeric colour range (default the column's minimum).
        vmax: Upper end of the numeric colour range (default the column's maximum).
        alpha: Fill opacity of polygons (outlines are opaque).
        color: One colour for every feature when there is no `column`.
        linewidth: Outline width (points).
        legend: A legend or colour bar for `column`.
        scalebar: A scale bar in metres.
        title: The axes' title.
        figsize: Figure size (inches), for a new figure.
        seed: Seed of the distinct per-feature colours.
    """

    categorical: bool | None = None
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    alpha: float = 0.35
    color: Any = None
    linewidth: float = 1.0
    legend: bool = True
    scalebar: bool = True
    title: str | None = None
    figsize: tuple[float, float] = (8.0, 8.0)
    seed: int = 0


def _style(style: PlotStyle | None, overrides: dict[str, Any]) -> PlotStyle:
    """``style`` (default `PlotStyle`) with the fields named in ``overrides`` replaced."""
    unknown = sorted(set(overrides) - {f.name for f in fields(PlotStyle)})
    if unknown:
        raise TypeError(f"show() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return replace(style or PlotStyle(), **overrides)


def show(
    scene: Any,
    gdf: gpd.GeoDataFrame | None = None,
    column: str | None = None,
    *,
    ax: Axes | None = None,
    bands: Sequence[int] | None = None,
    fill_value: float | None = None,
    max_side_px: int = 1024,
    style: PlotStyle | None = None,
    **style_overrides: Any,
) -> Axes:
    """Show the scene as the model sees it, with `gdf`'s geometries over it.

    The image is a decimated read (`read_quicklook`, stretched like the model's input, invalid pixels
    black) placed at the scene's bounds, so **the axes are in the scene CRS's map coordinates** (add
    layers with `other.to_crs(gdf.crs).plot(ax=ax)`). `gdf` is reprojected to the scene CRS; empty and
    missing geometries are skipped. Colours: with `column` categorical (text, bool or
    `categorical=True`) one colour per category and a legend of the (sorted) categories; numeric,
    `cmap` (default viridis) over [`vmin`, `vmax`] (default the column's range) and a colour bar;
    missing values grey. Without `column`, `color` for all or else a distinct colour per feature.
    Polygons are filled at opacity `alpha` and outlined opaque. `scalebar`: a round length in metres
    (geodesic for geographic CRSs, the linear unit converted to metres for projected ones).

    Args:
        scene: A raster path, an open rasterio dataset or a DataArray.
        gdf: Geometries to draw over the image (any CRS); None shows the image alone.
        column: Column that colours the geometries.
        ax: Axes to draw on; None makes a new figure (`figsize`).
        bands: 1-based bands (1 or 3); default as the model reads them.
        fill_value: Pixels whose bands all equal this are invalid (black).
        max_side_px: Longest side of the decimated read (px).
        style: A `PlotStyle`.
        **style_overrides: `PlotStyle` fields (`cmap="magma", alpha=0.5`), overriding `style`'s.

    Returns:
        The axes, in the scene CRS's map coordinates.
    """
    st = _style(style, style_overrides)
    img, info = read_quicklook(scene, max_side_px, bands, fill_value)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=st.figsize)
    draw_image(ax, img, info)
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.set_xlabel(f"x ({_unit_name(info.crs_wkt)}, {info.crs_name})")
    ax.set_ylabel(f"y ({_unit_name(info.crs_wkt)})")
    if gdf is not None and len(gdf):
        gdf = _in_scene_crs(gdf, info.crs_wkt)
        keep = ~(gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy()
        gdf = gdf[keep]
        rgba = _feature_colours(gdf, column, st, ax if st.legend else None)
        face = rgba.copy()
        face[:, 3] *= st.alpha
        draw_geometries(ax, list(gdf.geometry), face, rgba, linewidth=st.linewidth)
    if st.scalebar:
        add_scalebar(ax, info.crs_wkt)
    if st.title:
        ax.set_title(st.title)
    return ax


def _in_scene_crs(gdf: gpd.GeoDataFrame, crs_wkt: str) -> gpd.GeoDataFrame:
    if gdf.crs is not None and not same_crs(gdf.crs, crs_wkt):
        return gdf.to_crs(crs_wkt)
    return gdf


def _feature_colours(gdf: gpd.GeoDataFrame, column: str | None, style: PlotStyle, ax: Axes | None) -> np.ndarray:
    """(n, 4) RGBA floats per feature; adds the legend or colour bar to ``ax`` when given."""
    import pandas as pd
    from matplotlib import colormaps
    from matplotlib import colors as mcolors

    categorical, cmap, vmin, vmax, color, seed = (style.categorical, style.cmap, style.vmin, style.vmax, style.color,
                                                  style.seed)
    n = len(gdf)
    grey = np.array(mcolors.to_rgba("0.6"))
    if column is None:
        if color is not None:
            return np.tile(np.array(mcolors.to_rgba(color)), (n, 1))
        return np.column_stack([distinct_colours(n, seed) / 255.0, np.ones(n)])
    values = gdf[column]
    if categorical is None:
        categorical = not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
    out = np.tile(grey, (n, 1))
    present = values.notna().to_numpy()
    if categorical:
        cats = sorted(pd.unique(values[present]), key=str)
        if cmap is not None:
            cm = colormaps[cmap].resampled(max(len(cats), 1))
            table = np.array([cm(i) for i in range(len(cats))])
        elif len(cats) <= 10:
            table = np.array([colormaps["tab10"](i) for i in range(len(cats))])
        else:
            table = np.column_stack([distinct_colours(len(cats), seed) / 255.0, np.ones(len(cats))])
        index = {c: i for i, c in enumerate(cats)}
        for j in np.flatnonzero(present):
            out[j] = table[index[values.iloc[j]]]
        if ax is not None and cats:
            from matplotlib.patches import Patch

            handles = [Patch(facecolor=table[i], edgecolor=table[i], label=str(c)) for i, c in enumerate(cats)]
            ax.legend(handles=handles, title=column, loc="upper right", fontsize="small", framealpha=0.85)
        return out
    v = values.to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(v)
    lo = vmin if vmin is not None else (float(np.nanmin(v[finite])) if finite.any() else 0.0)
    hi = vmax if vmax is not None else (float(np.nanmax(v[finite])) if finite.any() else 1.0)
    norm = mcolors.Normalize(lo, hi if hi > lo else lo + 1e-9)
    cm = colormaps[cmap or "viridis"]
    out[finite] = cm(norm(v[finite]))
    if ax is not None:
        from matplotlib.cm import ScalarMappable

        ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, shrink=0.7, label=column)
    return out


def _unit_name(crs_wkt: str) -> str:
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


def explore(gdf: gpd.GeoDataFrame, column: str | None = None, **kwargs: Any) -> Any:
    """An interactive folium map of `gdf` (`GeoDataFrame.explore`, web-mercator tiles, WGS 84 popups).

    Needs the extra `pip install "geosam-scenes[maps]"` (else an ImportError says so). Empty and missing
    geometries are dropped. Returns the `folium.Map`.

    Args:
        gdf: The objects, in any CRS.
        column: Column that colours them.
        **kwargs: Passed to `gdf.explore` (`tiles=None` for a map without a basemap, e.g. offline).
    """
    try:  # only checks that the extra is installed: geopandas imports them itself
        import folium  # noqa: F401
        import mapclassify  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'geosam.plot.explore needs folium and mapclassify: pip install "geosam-scenes[maps]"'
        ) from exc
    keep = ~(gdf.geometry.isna() | gdf.geometry.is_empty)
    return gdf[keep].explore(column=column, **kwargs)


__all__ = [
    "SCALEBAR_GID",
    "PlotStyle",
    "add_scalebar",
    "distinct_colours",
    "draw_geometries",
    "draw_image",
    "explore",
    "nice_length_m",
    "read_quicklook",
    "show",
]
