"""Chip grid over a scene: overlapping windows, each owning a *core*.

Frames: every window here is in **scene pixel coordinates** (column, row of the
full raster, origin at the top-left corner of the top-left pixel).

Edge policy: chips are *shifted inward*. Every chip has the full
``chip_size_px`` unless the scene itself is smaller than one chip, in which
case there is a single chip covering the whole scene. The last chip of a row
or column therefore overlaps its neighbour by more than ``overlap_px``.

Cores partition the scene exactly: each pixel belongs to the core of exactly
one chip. The boundary between two neighbouring chips lies in the middle of
their shared strip, so each chip owns the part of the overlap nearest to its
own centre.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine

from geosam.errors import ConfigError
from geosam.windows import PixelWindow


@dataclass(frozen=True)
class ChipSpec:
    """Everything a worker needs to read and georeference one chip.

    Small, hashable and picklable: this is the unit of work for Dask and for the
    per-chip journal.

    Attributes:
        path: The scene (path or GDAL URL) the chip is read from.
        row: Chip row in the grid.
        col: Chip column in the grid.
        window: The chip's window in scene pixel coordinates.
        core: The part of the window this chip decides (the cores partition the scene).
        transform: Maps *chip* pixel coordinates to map coordinates.
        crs_wkt: The scene CRS as WKT.
        scene_width: Scene width (px).
        scene_height: Scene height (px).
    """

    path: str
    row: int
    col: int
    window: PixelWindow
    core: PixelWindow
    scene_width: int
    scene_height: int
    transform: Affine
    crs_wkt: str

    @property
    def chip_id(self) -> str:
        return f"r{self.row}c{self.col}"

    @property
    def crs(self):  # -> rasterio.crs.CRS
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt)

    def edges_inside_scene(self) -> tuple[bool, bool, bool, bool]:
        """Which chip sides (left, top, right, bottom) lie inside the scene.

        A mask touching such a side may be truncated by the chip.
        """
        w = self.window
        return (
            w.col_off > 0,
            w.row_off > 0,
            w.col_end < self.scene_width,
            w.row_end < self.scene_height,
        )


def _starts(length: int, chip: int, stride: int) -> list[int]:
    """Chip start offsets along one axis, the last shifted inward."""
    if length <= chip:
        return [0]
    starts = list(range(0, length - chip, stride))
    if starts[-1] + chip < length:
        starts.append(length - chip)
    return starts


def _core_bounds(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Core [begin, end) per chip along one axis; together they partition [0, length)."""
    cuts = [0]
    for a, b in itertools.pairwise(starts):
        # middle of the shared strip [b, a + size)
        cuts.append((b + min(a + size, length)) // 2)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def chip_grid(
    width: int,
    height: int,
    chip_size_px: int,
    overlap_px: int,
) -> list[tuple[int, int, PixelWindow, PixelWindow]]:
    """The chip grid of a `width` x `height` scene.

    Edge chips are shifted inward so every chip is full size (a scene smaller than a
    chip is one chip); the cores partition the scene, the boundary between two chips
    being the middle of their shared strip.

    Args:
        width: Scene width (px).
        height: Scene height (px).
        chip_size_px: Chip side (px).
        overlap_px: Overlap of neighbouring chips (px).

    Returns:
        `(row, col, window, core)` tuples in row-major order, windows in scene pixel coordinates.
    """
    if chip_size_px < 16:
        raise ConfigError(f"chip_size_px must be at least 16, got {chip_size_px}")
    if overlap_px < 0 or overlap_px * 2 >= chip_size_px:
        raise ConfigError(
            f"overlap_px must be >= 0 and less than half of chip_size_px ({chip_size_px}), got {overlap_px}"
        )
    if width <= 0 or height <= 0:
        raise ConfigError(f"scene has no pixels ({width} x {height})")
    stride = chip_size_px - overlap_px
    xs = _starts(width, chip_size_px, stride)
    ys = _starts(height, chip_size_px, stride)
    cw = min(chip_size_px, width)
    ch = min(chip_size_px, height)
    xcores = _core_bounds(xs, cw, width)
    ycores = _core_bounds(ys, ch, height)
    out = []
    for r, (y, (cy0, cy1)) in enumerate(zip(ys, ycores)):
        for c, (x, (cx0, cx1)) in enumerate(zip(xs, xcores)):
            out.append((r, c, PixelWindow(x, y, cw, ch), PixelWindow(cx0, cy0, cx1 - cx0, cy1 - cy0)))
    return out


def iter_chip_specs(
    path: str,
    width: int,
    height: int,
    transform: Affine,
    crs_wkt: str,
    chip_size_px: int,
    overlap_px: int,
) -> Iterator[ChipSpec]:
    """Chip specs for a scene, each with its own window transform."""
    for r, c, win, core in chip_grid(width, height, chip_size_px, overlap_px):
        yield ChipSpec(
            path=path,
            row=r,
            col=c,
            window=win,
            core=core,
            scene_width=width,
            scene_height=height,
            transform=transform @ Affine.translation(win.col_off, win.row_off),
            crs_wkt=crs_wkt,
        )
