"""PixelWindow: the pixel-frame value every stage shares.

Frame: **scene pixel coordinates** (column, row of the full raster, origin at the
top-left corner of the top-left pixel). Windows are half-open: a window covers
columns ``col_off .. col_end - 1`` and rows ``row_off .. row_end - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of whole pixels in scene pixel coordinates."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    def to_rasterio(self):  # -> rasterio.windows.Window
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.width, self.height)

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        c0 = max(self.col_off, other.col_off)
        r0 = max(self.row_off, other.row_off)
        c1 = min(self.col_end, other.col_end)
        r1 = min(self.row_end, other.row_end)
        if c1 <= c0 or r1 <= r0:
            return None
        return PixelWindow(c0, r0, c1 - c0, r1 - r0)

    def relative_to(self, outer: PixelWindow) -> PixelWindow:
        """This window expressed in the pixel frame of ``outer``."""
        return PixelWindow(self.col_off - outer.col_off, self.row_off - outer.row_off, self.width, self.height)

    def slices(self) -> tuple[slice, slice]:
        """(row slice, column slice) for indexing an array in the same frame."""
        return slice(self.row_off, self.row_end), slice(self.col_off, self.col_end)

    def bounds(self) -> tuple[int, int, int, int]:
        """(minx, miny, maxx, maxy) in pixel units (x = column, y = row)."""
        return self.col_off, self.row_off, self.col_end, self.row_end

    def contains_box(self, box: tuple[float, float, float, float]) -> bool:
        """Whether the box (x0, y0, x1, y1), scene pixels, lies whole inside this window."""
        return self.col_off <= box[0] and self.row_off <= box[1] and box[2] <= self.col_end and box[3] <= self.row_end

    @classmethod
    def centred_on(cls, box: tuple[float, float, float, float], size: tuple[int, int], scene_width: int,
                   scene_height: int) -> PixelWindow:
        """A window of ``size`` (width, height) px centred on ``box``, shifted inside the scene.

        Along an axis where ``size`` is not smaller than the scene, the window is the whole scene.

        Args:
            box: (x0, y0, x1, y1), scene pixels.
            size: The window's (width, height) in pixels.
            scene_width: The scene's width (px).
            scene_height: The scene's height (px).

        Returns:
            The window.
        """

        def axis(centre: float, side: int, n: int) -> tuple[int, int]:
            if side >= n:
                return 0, n
            return min(max(math.floor(centre - side / 2.0), 0), n - side), side

        c0, w = axis((box[0] + box[2]) / 2.0, size[0], scene_width)
        r0, h = axis((box[1] + box[3]) / 2.0, size[1], scene_height)
        return cls(c0, r0, w, h)
