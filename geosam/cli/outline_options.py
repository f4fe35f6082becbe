"""The outline options of the segment / prompt / text commands (`geosam.outline`), as one decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geosam.cli.help import option
from geosam.config import OutlineConfig

F = Callable[..., Any]
_D = OutlineConfig()

def _outline_option(*decls: str, **kw: Any) -> Callable[[Any], Any]:
    """An option listed under --help's "Outlines" section."""
    return option(*decls, group="outlines", **kw)


_OPTIONS = [
    _outline_option("--simplify", "simplify_m", type=float, default=_D.simplify_m, show_default=True, metavar="METRES",
                 help="Simplify outlines: no vertex moves farther than this (m, whatever the CRS; pixel staircases "
                 "are measured from their midpoints). Neighbours keep one shared edge. 0 = off."),
    _outline_option("--regularize", is_flag=True,
                 help="Buildings: right angles along each object's dominant direction, fitted to its outline "
                 "(an object no regular shape fits keeps its outline)."),
    _outline_option("--regularize-45", "regularize_45", is_flag=True, help="With --regularize: also allow 45-degree edges."),
    _outline_option("--smooth", is_flag=True, help="Natural objects (crowns, fields, water): smooth outlines; shared "
                 "edges stay shared."),
    _outline_option("--smooth-m", "smooth_m", type=float, default=None, metavar="METRES",
                 help="Smoothing scale of --smooth (m; default 1.5 pixels)."),
    _outline_option("--fill-holes", "fill_holes_m2", type=float, default=_D.fill_holes_m2, show_default=True,
                 metavar="M2", help="Fill holes smaller than this (m2). 0 = off."),
]


def outline_options(fn: F) -> F:
    """Adds --simplify, --regularize, --regularize-45, --smooth, --smooth-m, --fill-holes (flat `OutlineConfig`
    settings: ``simplify_m, regularize, regularize_45, smooth, smooth_m, fill_holes_m2``)."""
    for opt in reversed(_OPTIONS):
        fn = opt(fn)
    return fn


__all__ = ["outline_options"]
