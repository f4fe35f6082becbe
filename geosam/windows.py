"""PixelWindow: the pixel-frame value every stage shares; `WindowedDataset`: the base of dataset stand-ins.

Frame: **scene pixel coordinates** (column, row of the full raster, origin at the
top-left corner of the top-left pixel). Windows are half-open: a window covers
columns ``col_off .. col_end - 1`` and rows ``row_off .. row_end - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from affine import Affine
    from typing_extensions import Self


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


class WindowedDataset:
    """The base of the stand-ins for a rasterio dataset that `geosam.read.scene.Scene` reads window by window.

    A subclass (a DataArray's, a STAC item's) sets ``count``, ``width``, ``height`` and the transform
    (`set_transform`) and implements `band_valid`; the base gives ``res`` / ``bounds``, ``read_masks``,
    GDAL's ``dataset_mask`` (valid where any band is), ``tags``, ``close`` and the context manager.
    Windows are rasterio windows (or `PixelWindow`) in scene pixels; None is the whole raster.
    """

    count: int
    width: int
    height: int
    closed: bool = False
    _last: Any = None  # the subclass's cache of its last read (dropped on close)

    def set_transform(self, transform: Affine) -> None:
        """Set ``transform``, ``res`` (map units per pixel) and ``bounds`` (map units) from the affine transform."""
        from rasterio.coords import BoundingBox

        t = self.transform = transform
        self.res = (abs(t.a), abs(t.e))
        self.bounds = BoundingBox(t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def window_key(self, indexes: Sequence[int], window: Any, out_shape: Any) -> tuple[Any, ...]:
        """A read's key: (band indexes, (col, row, width, height) of the window, (rows, cols) out or None)."""
        w = (0, 0, self.width, self.height) if window is None else \
            (int(window.col_off), int(window.row_off), int(window.width), int(window.height))
        return tuple(int(i) for i in indexes), w, None if out_shape is None else tuple(int(n) for n in out_shape[-2:])

    def band_valid(self, indexes: Sequence[int], window: Any, out_shape: Any) -> np.ndarray:
        """Per band, True where a pixel is valid: (bands, rows, cols) bool."""
        raise NotImplementedError

    def mask_indexes(self, window: Any, out_shape: Any) -> Sequence[int]:
        """The bands whose masks make the dataset mask (default: all)."""
        return range(1, self.count + 1)

    def read_masks(self, indexes: Sequence[int], window: Any = None, out_shape: Any = None, **_: Any) -> np.ndarray:
        """255 where valid, else 0, per band, as uint8 (bands, H, W)."""
        return np.where(self.band_valid(indexes, window, out_shape), 255, 0).astype(np.uint8)

    def dataset_mask(self, window: Any = None, out_shape: Any = None, **_: Any) -> np.ndarray:
        """GDAL's dataset mask: 255 where any band is valid, else 0, as uint8 (H, W)."""
        valid = self.band_valid(self.mask_indexes(window, out_shape), window, out_shape)
        return np.where(valid.any(axis=0), 255, 0).astype(np.uint8)

    def tags(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self._last = None
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
