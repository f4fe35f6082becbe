"""Outline settings: simplification, regularisation, smoothing and hole filling, in map units (metres)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from geosam.errors import ConfigError


def _metres(name: str, value: Any, unit: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be a number of {unit} >= 0 (0 = off), got {value!r}")
    return v


@dataclass(frozen=True)
class OutlineConfig:
    """How finished outlines are refined (`geosam.outline.refine_outlines`); lengths in metres whatever the CRS.

    simplify_m: simplification tolerance (m; 0 = off); neighbours keep one shared edge.
    regularize: right angles along each object's dominant direction (buildings), fitted to the raw outline;
        an object no regular shape fits keeps its outline.
    regularize_45: with ``regularize``, also allow edges at 45 degrees.
    smooth: Gaussian smoothing along the outline (natural objects: crowns, fields, water).
    smooth_m: the smoothing's standard deviation (m); None: 1.5 x the outline's typical step (the pixel size
        for traced masks).
    fill_holes_m2: fill holes smaller than this (m2; 0 = off).
    """

    simplify_m: float = 0.0
    regularize: bool = False
    regularize_45: bool = False
    smooth: bool = False
    smooth_m: float | None = None
    fill_holes_m2: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "simplify_m", _metres("simplify_m", self.simplify_m, "metres"))
        object.__setattr__(self, "fill_holes_m2", _metres("fill_holes_m2", self.fill_holes_m2, "square metres"))
        if self.smooth_m is not None:
            v = _metres("smooth_m", self.smooth_m, "metres")
            if v == 0:
                raise ConfigError("smooth_m must be > 0 metres (or None for 1.5 x the outline's step)")
            object.__setattr__(self, "smooth_m", v)
        if self.regularize and self.smooth:
            raise ConfigError("regularize (buildings) and smooth (natural objects) exclude each other; choose one")
        if self.regularize_45 and not self.regularize:
            raise ConfigError("regularize_45 allows 45-degree edges when regularizing: give regularize=True too")

    @property
    def active(self) -> bool:
        """Whether any outline option is on."""
        return bool(self.simplify_m or self.regularize or self.smooth or self.fill_holes_m2)

    def settings(self) -> dict[str, Any]:
        """The settings as a plain dict (run statistics)."""
        return asdict(self)


__all__ = ["OutlineConfig"]
