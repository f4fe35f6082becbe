"""Pictures of scenes and objects: the image as the model sees it, polygons coloured by a column.

* `show` -- a matplotlib axes with the scene (decimated, stretched exactly as the model sees it) in
  **map coordinates of the scene CRS**, polygons, lines or points over it coloured by a column (legend
  or colour bar) and a scale bar in metres; any GeoDataFrame in the scene CRS can be added with
  `gdf.plot(ax=ax)`.
* `explore` -- an interactive folium map (`gdf.explore`), extra `pip install "geosam-scenes[maps]"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.geo import same_crs
from geosam.plot.draw import add_scalebar, distinct_colours, draw_geometries, draw_image, read_quicklook, unit_name

if TYPE_CHECKING:
    import geopandas as gpd
    from matplotlib.axes import Axes


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
    ax.set_xlabel(f"x ({unit_name(info.crs_wkt)}, {info.crs_name})")
    ax.set_ylabel(f"y ({unit_name(info.crs_wkt)})")
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




__all__ = ["PlotStyle", "explore", "show"]
