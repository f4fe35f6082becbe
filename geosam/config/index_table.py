"""The spectral index table: names, band roles, formulas and default thresholds.

Pure definitions (numpy only), so that `geosam.config` can validate index
names without importing the I/O stack. The statistics, ranking and prefilter
that use them are in `geosam.index`; formulas are listed there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geosam.errors import ConfigError

Arr = np.ndarray


def _ratio(num: Arr, den: Arr) -> Arr:
    """num / den in float32, NaN where den is 0 or either is NaN."""
    out = np.full(np.broadcast(num, den).shape, np.nan, dtype=np.float32)
    np.divide(num, den, out=out, where=(den != 0) & np.isfinite(den))
    return out


@dataclass(frozen=True)
class IndexDef:
    """One index: the band roles it needs, its formula and default threshold."""

    name: str
    roles: tuple[str, ...]
    fn: Callable[..., Arr]
    threshold: float
    description: str


INDICES: dict[str, IndexDef] = {
    d.name: d
    for d in (
        IndexDef("ndvi", ("nir", "red"), lambda n, r: _ratio(n - r, n + r), 0.3, "normalised difference vegetation"),
        IndexDef("ndwi", ("green", "nir"), lambda g, n: _ratio(g - n, g + n), 0.0, "normalised difference water"),
        IndexDef(
            "savi", ("nir", "red"), lambda n, r: _ratio(np.float32(1.5) * (n - r), n + r + np.float32(0.5)), 0.2,
            "soil-adjusted vegetation (L = 0.5)",
        ),
        IndexDef(
            "evi", ("nir", "red", "blue"),
            lambda n, r, b: _ratio(np.float32(2.5) * (n - r), n + np.float32(6) * r - np.float32(7.5) * b + np.float32(1)),
            0.2, "enhanced vegetation",
        ),
        IndexDef("ndmi", ("nir", "swir1"), lambda n, s: _ratio(n - s, n + s), 0.0, "normalised difference moisture"),
        IndexDef("ndre", ("nir", "rededge"), lambda n, e: _ratio(n - e, n + e), 0.2, "normalised difference red edge"),
        IndexDef("exg", ("red", "green", "blue"), lambda r, g, b: _ratio(2 * g - r - b, r + g + b), 0.05,
                 "excess green on chromatic coordinates"),
        IndexDef("vari", ("red", "green", "blue"), lambda r, g, b: _ratio(g - r, g + r - b), 0.0,
                 "visible atmospherically resistant"),
        IndexDef("gli", ("red", "green", "blue"), lambda r, g, b: _ratio(2 * g - r - b, 2 * g + r + b), 0.0,
                 "green leaf"),
    )
}

STATS = ("mean", "median", "frac_above")


def check_index(name: str) -> str:
    key = str(name).strip().lower()
    if key not in INDICES:
        raise ConfigError(f"unknown index {name!r}; known: {sorted(INDICES)}")
    return key


__all__ = ["INDICES", "STATS", "IndexDef", "check_index"]
