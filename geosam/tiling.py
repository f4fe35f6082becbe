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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from affine import Affine

from geosam.errors import ConfigError

if TYPE_CHECKING:
    from geosam.config import PromptWindowConfig


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


@dataclass(frozen=True)
class ChipSpec:
    """Everything a worker needs to read and georeference one chip.

    Small, hashable and picklable: this is the unit of work for Dask and for the
    per-chip journal. ``transform`` maps *chip* pixel coordinates to map
    coordinates; ``crs_wkt`` is the scene CRS as WKT.
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
    """The chip grid of a ``width`` x ``height`` scene.

    Returns ``(row, col, window, core)`` tuples in row-major order.
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


# ---------------------------------------------------------------------------
# prompt windows (prompt mode)


class HasExtent(Protocol):
    """A prompt as the window planner sees it (scene pixel coordinates)."""

    @property
    def prompt_id(self) -> Any: ...

    @property
    def box(self) -> tuple[float, float, float, float] | None: ...

    def extent(self) -> tuple[float, float, float, float]: ...


def _clip_extent(ext: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float] | None:
    x0, y0, x1, y1 = max(ext[0], 0.0), max(ext[1], 0.0), min(ext[2], float(width)), min(ext[3], float(height))
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def context_side(p: HasExtent, cfg: PromptWindowConfig) -> int:
    """Side (px) of the square context window a prompt wants (scene pixels)."""
    x0, y0, x1, y1 = p.extent()
    long_side = max(x1 - x0, y1 - y0)
    if p.box is None:
        return max(math.ceil(cfg.context * long_side), cfg.point_window_px, math.ceil(long_side) + 2)
    return max(math.ceil(cfg.context * long_side), cfg.min_window_px, math.ceil(long_side) + 2)


def _centred_window(ext: tuple[float, float, float, float], side: int, width: int, height: int) -> PixelWindow:
    """A ``side`` x ``side`` window centred on ``ext``, shifted inside the scene (clipped if larger)."""
    cx, cy = (ext[0] + ext[2]) / 2.0, (ext[1] + ext[3]) / 2.0

    def axis(c: float, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        off = math.floor(c - side / 2.0)
        return min(max(off, 0), size - side), side

    c0, w = axis(cx, width)
    r0, h = axis(cy, height)
    return PixelWindow(c0, r0, w, h)


def _contains(win: PixelWindow, ext: tuple[float, float, float, float]) -> bool:
    return win.col_off <= ext[0] and win.row_off <= ext[1] and ext[2] <= win.col_end and ext[3] <= win.row_end


def plan_windows(prompts: Sequence[HasExtent], width: int, height: int, cfg: PromptWindowConfig, chip_size_px: int,
                 overlap_px: int = 128) -> list[tuple[PixelWindow, list[int]]]:
    """Group prompts (inside the scene) into windows: [(window, [prompt index, ...]), ...].

    Scene pixel frame. ``chip_size_px`` > 0: a prompt goes to the grid chip
    whose core holds its centre when a square centred on it of side
    max(prompt side + 2, min(context side (:func:`context_side`), chip / 2))
    lies inside that chip; otherwise (near a chip edge, or larger than a chip)
    it gets its own window of side max(context side, chip size) centred on it.
    0: every prompt gets its own context window. Every window contains the
    whole extent (box and points) of each of its prompts.
    """
    by_window: dict[PixelWindow, list[int]] = {}
    cores: list[tuple[PixelWindow, PixelWindow]] = []
    if chip_size_px > 0:
        cores = [(win, core) for _, _, win, core in chip_grid(width, height, chip_size_px, overlap_px)]
    for i, p in enumerate(prompts):
        ext = _clip_extent(p.extent(), width, height)
        if ext is None:
            raise ValueError(f"prompt {p.prompt_id!r} lies outside the scene")
        side = context_side(p, cfg)
        want = _centred_window(ext, side, width, height)
        chosen = None
        if cores:
            cx = min(max((ext[0] + ext[2]) / 2.0, 0.0), width - 1e-6)
            cy = min(max((ext[1] + ext[3]) / 2.0, 0.0), height - 1e-6)
            # context a chip must give: the whole prompt plus a margin, the margin capped at half a chip
            long_side = math.ceil(max(ext[2] - ext[0], ext[3] - ext[1]))
            need = _centred_window(ext, max(long_side + 2, min(side, chip_size_px // 2)), width, height)
            for win, core in cores:
                if core.col_off <= cx < core.col_end and core.row_off <= cy < core.row_end:
                    ctx = (float(need.col_off), float(need.row_off), float(need.col_end), float(need.row_end))
                    if _contains(win, ctx) and _contains(win, ext):
                        chosen = win
                    break
            if chosen is None:
                chosen = _centred_window(ext, max(side, chip_size_px), width, height)
        else:
            chosen = want
        if not _contains(chosen, ext):  # cannot happen for a scene-clipped extent; guard the invariant
            raise AssertionError(f"window {chosen} does not contain prompt {p.prompt_id!r} {ext}")
        by_window.setdefault(chosen, []).append(i)
    return sorted(by_window.items(), key=lambda kv: (kv[0].row_off, kv[0].col_off, kv[0].width))
