"""The prompt prefilter: a chip's grid prompts kept only near pixels whose index passes (see `geosam.index`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from geosam.config.index_table import check_index
from geosam.errors import ConfigError
from geosam.index.calculator import IndexCalculator
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from geosam.read.scene import Chip, Scene

Arr = np.ndarray


def grid_pixels(height: int, width: int, points_per_side: int) -> tuple[Arr, Arr]:
    """(rows, cols) int64 of the chip pixels under SAM's point grid (x fastest): the pixels the generator
    decodes (`geosam.segment.sam_utils.build_point_grid`, `grid_pixel_indices`)."""
    from geosam.segment.sam_utils import build_point_grid, grid_pixel_indices

    points = build_point_grid(int(points_per_side)) * np.array([width, height], dtype=np.float64)
    return grid_pixel_indices(points, height, width)


class Prefilter:
    """Restrict a chip's prompts to pixels near passing index values (see the module docstring).

    min_index: {index: threshold}; radius_px: None = one grid spacing of the chip (ceil(chip side / points_per_side)).
    """

    def __init__(self, calc: IndexCalculator, min_index: Mapping[str, float], radius_px: int | None = None) -> None:
        if not min_index:
            raise ConfigError("the prefilter needs min_index (e.g. min_index={'ndvi': 0.3})")
        self.calc = calc
        self.min_index = {check_index(k): float(v) for k, v in min_index.items()}
        self.radius_px = radius_px

    def radius_for(self, height: int, width: int, points_per_side: int) -> int:
        if self.radius_px is not None:
            return int(self.radius_px)
        return math.ceil(max(height, width) / points_per_side)

    def mask(self, scene: Scene, window: PixelWindow, radius_px: int) -> Arr:
        """Bool (H, W) of ``window``: within ``radius_px`` of a passing pixel, for every index."""
        from scipy import ndimage

        i = scene.info
        r = max(0, int(radius_px))
        c0, r0 = max(0, window.col_off - r), max(0, window.row_off - r)
        c1, r1 = min(i.width, window.col_end + r), min(i.height, window.row_end + r)
        grown = PixelWindow(c0, r0, c1 - c0, r1 - r0)
        idx = self.calc.compute(scene, grown)
        ok = np.ones((grown.height, grown.width), dtype=bool)
        for n, t in self.min_index.items():
            passing = idx[n] >= np.float64(t)  # NaN never passes
            if r > 0:
                passing = ndimage.maximum_filter(passing.view(np.uint8), size=2 * r + 1, mode="constant").view(bool)
            ok &= passing
        return ok[window.relative_to(grown).slices()]

    def apply(self, chip: Chip, scene: Scene, points_per_side: int) -> tuple[int, int]:
        """Set ``chip.prompt_mask``; return (grid prompts on valid pixels, of them still allowed)."""
        h, w = chip.valid.shape
        chip.prompt_mask = self.mask(scene, chip.spec.window, self.radius_for(h, w, points_per_side))
        rows, cols = grid_pixels(h, w, points_per_side)
        return int(chip.valid[rows, cols].sum()), int(chip.prompt_region()[rows, cols].sum())


__all__ = ["Prefilter", "grid_pixels"]
