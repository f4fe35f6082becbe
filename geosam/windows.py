"""PixelWindow: the pixel-frame value every stage shares.

Frame: **scene pixel coordinates** (column, row of the full raster, origin at the
top-left corner of the top-left pixel). Windows are half-open: a window covers
columns ``col_off .. col_end - 1`` and rows ``row_off .. row_end - 1``.
"""

from __future__ import annotations

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
