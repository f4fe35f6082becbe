"""Outlines a GIS user can use: simplify, regularize, smooth and fill holes, in metres whatever the CRS.

`refine_outlines` applies an `OutlineConfig` to any GeoDataFrame; runs apply it to every batch of their
table (`refine_frames`). The single steps work on arrays of geometries in metres:
`simplify` (neighbours keep one shared edge; `geosam.outline.coverage`), `regularize` (right angles along
each building's dominant direction, fitted to the raw outline; `geosam.outline.regular`), `smooth`
(Gaussian along the outline, shared edges alike; `geosam.outline.smoothing`) and `fill_holes`;
`geosam.outline.metric` gets geometries into metres and back.
"""

from __future__ import annotations

from geosam.config.outline import OutlineConfig
from geosam.outline.coverage import fill_holes, simplify
from geosam.outline.refine import outline_hook, refine_frames, refine_geometries, refine_outlines, refine_table
from geosam.outline.regular import regular_share, regularize
from geosam.outline.smoothing import smooth

__all__ = ["OutlineConfig", "fill_holes", "outline_hook", "refine_frames", "refine_geometries", "refine_outlines", "refine_table",
           "regular_share", "regularize", "simplify", "smooth"]
