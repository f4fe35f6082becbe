"""Pictures: scenes and objects (`geosam.plot.scene`), objects through time (`geosam.plot.monitor`), the CLI's
PNG overlay (`geosam.plot.overlay`), all drawn with the primitives of `geosam.plot.draw`.

* `show` -- the scene as the model sees it, in map coordinates of the scene CRS, objects over it coloured by a
  column, a scale bar in metres;
* `explore` -- an interactive folium map (extra ``pip install "geosam-scenes[maps]"``);
* `series` -- ``<index>_mean`` against date for chosen objects of a `geosam.monitor_objects` result;
* `change_map` -- the objects of such a result coloured by change (e.g. ``ndvi_delta``);
* `render_overlay` -- a PNG of polygon outlines over a quick-look (``--overlay``).

Matplotlib, geopandas and folium load only when a picture is drawn.
"""

from __future__ import annotations

from geosam.plot.draw import (
    SCALEBAR_GID,
    add_scalebar,
    distinct_colours,
    draw_geometries,
    draw_image,
    nice_length_m,
    read_quicklook,
)
from geosam.plot.monitor import change_map, series
from geosam.plot.overlay import render_overlay
from geosam.plot.scene import PlotStyle, explore, show

__all__ = [
    "SCALEBAR_GID",
    "PlotStyle",
    "add_scalebar",
    "change_map",
    "distinct_colours",
    "draw_geometries",
    "draw_image",
    "explore",
    "nice_length_m",
    "read_quicklook",
    "render_overlay",
    "series",
    "show",
]
