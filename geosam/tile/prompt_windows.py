"""Windows planned around prompts (prompt mode): which chip or own window decodes each prompt.

Frame: scene pixel coordinates, as `geosam.tile.grid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from geosam.tile.grid import chip_grid
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from geosam.config import PromptWindowConfig


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


def plan_windows(prompts: Sequence[HasExtent], width: int, height: int, cfg: PromptWindowConfig, chip_size_px: int,
                 overlap_px: int = 128) -> list[tuple[PixelWindow, list[int]]]:
    """Group prompts (inside the scene) into windows: [(window, [prompt index, ...]), ...].

    Scene pixel frame. ``chip_size_px`` > 0: a prompt goes to the grid chip
    whose core holds its centre when a square centred on it of side
    max(prompt side + 2, min(context side (`context_side`), chip / 2))
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
        want = PixelWindow.centred_on(ext, (side, side), width, height)
        chosen = None
        if cores:
            cx = min(max((ext[0] + ext[2]) / 2.0, 0.0), width - 1e-6)
            cy = min(max((ext[1] + ext[3]) / 2.0, 0.0), height - 1e-6)
            # context a chip must give: the whole prompt plus a margin, the margin capped at half a chip
            long_side = math.ceil(max(ext[2] - ext[0], ext[3] - ext[1]))
            need_side = max(long_side + 2, min(side, chip_size_px // 2))
            need = PixelWindow.centred_on(ext, (need_side, need_side), width, height)
            for win, core in cores:
                if core.col_off <= cx < core.col_end and core.row_off <= cy < core.row_end:
                    ctx = (float(need.col_off), float(need.row_off), float(need.col_end), float(need.row_end))
                    if win.contains_box(ctx) and win.contains_box(ext):
                        chosen = win
                    break
            if chosen is None:
                big = max(side, chip_size_px)
                chosen = PixelWindow.centred_on(ext, (big, big), width, height)
        else:
            chosen = want
        if not chosen.contains_box(ext):  # cannot happen for a scene-clipped extent; guard the invariant
            raise AssertionError(f"window {chosen} does not contain prompt {p.prompt_id!r} {ext}")
        by_window.setdefault(chosen, []).append(i)
    return sorted(by_window.items(), key=lambda kv: (kv[0].row_off, kv[0].col_off, kv[0].width))
