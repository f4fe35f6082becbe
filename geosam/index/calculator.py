"""Index values of a scene in any window (`IndexCalculator`), and the band check before any model work.

Formulas and the reflectance rule: `geosam.index`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.config.bands import BandRoles, resolve_band_roles
from geosam.config.index_table import INDICES, check_index
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from geosam.read.scene import Scene

Arr = np.ndarray


class IndexCalculator:
    """Compute several indices of one scene in any window, reading each band once.

    roles: resolved `BandRoles`; raises
    `BandError` at construction if an index needs an
    unmapped band.
    """

    def __init__(self, roles: BandRoles, names: Sequence[str]) -> None:
        self.roles = roles
        self.names = tuple(check_index(n) for n in names)
        needed: dict[str, int] = {}
        for n in self.names:
            for role in INDICES[n].roles:
                needed.setdefault(role, roles.band(role, n))
        self.role_bands = needed  # role -> 1-based band

    def from_arrays(self, raw: Mapping[str, Arr], valid: Arr) -> dict[str, Arr]:
        """Indices from raw band values per role (H, W) and a valid mask; float32, NaN where invalid."""
        refl: dict[str, Arr] = {}
        for role, a in raw.items():
            scale, offset = self.roles.scale_offset(role)
            r = a.astype(np.float32) * np.float32(scale) + np.float32(offset)
            r[~valid] = np.nan
            refl[role] = r
        out = {}
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for n in self.names:
                d = INDICES[n]
                out[n] = d.fn(*(refl[r] for r in d.roles)).astype(np.float32, copy=False)
        return out

    def compute(self, scene: Scene, window: PixelWindow) -> dict[str, Arr]:
        """Every index in ``window`` (scene pixel coordinates), (H, W) float32 each."""
        roles = list(self.role_bands)
        data, valid = scene.read_bands([self.role_bands[r] for r in roles], window)
        return self.from_arrays({r: data[i] for i, r in enumerate(roles)}, valid)


def calculator_for(scene: Scene, cfg: Any, names: Sequence[str]) -> IndexCalculator:
    """An `IndexCalculator` for an open scene and a `SegmentConfig`."""
    roles = resolve_band_roles(scene, cfg.band_roles, cfg.reflectance_scale, cfg.reflectance_offset)
    return IndexCalculator(roles, names)


def check_index_bands(scene: Any, indices: Sequence[str], *, band_roles: Any = None,
                      reflectance_scale: float | None = None, reflectance_offset: float | None = None) -> None:
    """`BandError` now (before any model work) if ``scene`` lacks a band the indices need."""
    from geosam.read.scene import Scene

    with Scene(scene, stretch=None) as sc:
        IndexCalculator(resolve_band_roles(sc, band_roles, reflectance_scale, reflectance_offset), indices)


__all__ = ["IndexCalculator", "calculator_for", "check_index_bands"]
