"""Pictures of objects through time: the series of chosen objects, and a map coloured by change.

``geosam.plot.series(result, ids)`` and ``geosam.plot.change_map(result, "ndvi_delta")``; ``result`` is a
`geosam.monitor.series.MonitorResult`. Neither reads a raster: put the scene under a change map with
``ax = geosam.plot.show(scene)`` and ``geosam.plot.change_map(result, ax=ax, crs=scene_crs)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _id_column(wide: Any) -> str:
    return "track_id" if "track_id" in wide.columns else "object_id"


def series(result: Any, ids: Sequence[int] | None = None, index: str = "ndvi", *, ax: Axes | None = None,
           max_objects: int = 8) -> Axes:
    """Lines of ``<index>_mean`` against date for the objects ``ids`` (``object_id``, or ``track_id`` when tracked).

    Args:
        result: a `geosam.monitor.series.MonitorResult`.
        ids: the objects to draw; default the first ``max_objects`` rows of the wide table (its rank order).
        index: which index.
        ax: the axes to draw on (default a new figure).
        max_objects: how many rows are drawn when ``ids`` is None.

    Returns:
        The axes. Missing values (a status other than ``ok``) are gaps, each valid value a marker.
    """
    import matplotlib.pyplot as plt

    wide = result.wide
    key = _id_column(wide)
    cols = [f"{index}_mean_{d.isoformat()}" for d in result.dates]
    if cols[0] not in wide.columns:
        raise ConfigError(f"the result has no {index!r} series (columns like {cols[0]!r})")
    rows = wide.head(max_objects) if ids is None else wide[wide[key].isin(list(ids))]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    x = np.array(result.dates, dtype="datetime64[D]")
    for _, row in rows.iterrows():
        y = row[cols].to_numpy(dtype=np.float64)
        ax.plot(x, y, marker="o", label=f"{key} {row[key]}")
    ax.set_xticks(x)
    ax.set_xticklabels([d.isoformat() for d in result.dates], rotation=30, ha="right")
    ax.set_xlabel("date")
    ax.set_ylabel(f"{index} mean")
    if len(rows):
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def change_map(result: Any, column: str = "ndvi_delta", *, ax: Axes | None = None, crs: Any = None,
               cmap: str = "RdYlGn", alpha: float = 0.8, legend: bool = True) -> Axes:
    """The objects coloured by ``column`` (default ``ndvi_delta``; a diverging map centred on 0 for change).

    Args:
        result: a `geosam.monitor.series.MonitorResult`.
        column: a numeric or boolean column of the wide table.
        ax: the axes to draw on (e.g. one from ``geosam.plot.show(scene)``; default a new figure).
        crs: reproject the objects to this CRS first (the scene's, when drawing over it).
        cmap: a matplotlib colormap name (as geopandas' ``plot``).
        alpha: fill opacity.
        legend: a colour bar (numbers) or a legend (categories).

    Returns:
        The axes. Objects without a value are drawn grey, outlined.
    """
    import matplotlib.pyplot as plt

    wide = result.wide
    if column not in wide.columns:
        raise ConfigError(f"cannot colour by {column!r}: the wide table has no such column")
    gdf = wide if crs is None else wide.to_crs(crs)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    values = gdf[column]
    kw: dict[str, Any] = {}
    if values.dtype.kind == "f":
        lim = float(np.nanmax(np.abs(values.to_numpy()))) if np.isfinite(values.to_numpy()).any() else 1.0
        kw = {"vmin": -lim, "vmax": lim} if column.endswith(("_delta", "_slope_per_year")) else {}
        kw["legend_kwds"] = {"label": column, "shrink": 0.7}
    else:
        gdf = gdf.assign(**{column: values.astype(str)})
        kw["categorical"] = True
    gdf.plot(column=column, ax=ax, cmap=cmap, alpha=alpha, legend=legend, edgecolor="black", linewidth=0.4,
             missing_kwds={"color": "lightgrey", "edgecolor": "grey", "hatch": "//"}, **kw)
    ax.set_title(column)
    return ax


__all__ = ["change_map", "series"]
