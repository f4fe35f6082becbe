"""Who owns a contested pixel: precedence among the chips that see it, and what each object keeps.

All functions work in **scene pixel coordinates** on boolean crops placed at `PixelWindow` values; they are pure.
The matching rule (which pieces are one object) is in `geosam.assemble.seams`.

**Ownership.** Whatever stays apart must not claim the same pixels twice. Every pixel has an order of precedence
among the chips that see it: the chip whose core holds it first (cores partition the scene), then the others by
chessboard distance from their cores, ties by chip (row, col). An object takes a pixel from its best-placed member
chip that sees it (the core's owner when that chip is a member), and loses it to any piece of another object from a
chip of higher precedence. So each chip decides the pixels of its own core, neighbours fill in only what its own
masks leave free, and as long as one chip's masks do not overlap, no two objects share a pixel. Where two views of
one object meet at a core cut, a detached sliver no thicker than the tolerance may be left (one view's edge just
beyond the cut, the other's just before it): `drop_slivers` removes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geosam.windows import PixelWindow

ChipKey = tuple[int, int]


def core_distance(win: PixelWindow, core: PixelWindow) -> np.ndarray:
    """Chessboard distance (px) from each pixel of ``win`` to the rectangle ``core`` (0 inside), int64 (H, W)."""
    cols = np.arange(win.col_off, win.col_end)
    rows = np.arange(win.row_off, win.row_end)
    dx = np.maximum(np.maximum(core.col_off - cols, cols - (core.col_end - 1)), 0)
    dy = np.maximum(np.maximum(core.row_off - rows, rows - (core.row_end - 1)), 0)
    return np.maximum(dy[:, None], dx[None, :])


def first_in_precedence(win: PixelWindow, chips: Sequence[tuple[ChipKey, PixelWindow, PixelWindow]]) -> np.ndarray:
    """For each pixel of ``win``: the index into ``chips`` ((key, window, core), sorted by key) of the chip of
    highest precedence that sees the pixel, -1 where none does. int64 (H, W)."""
    best = np.full((win.height, win.width), np.iinfo(np.int64).max, dtype=np.int64)
    choice = np.full((win.height, win.width), -1, dtype=np.int64)
    for i, (_, window, core) in enumerate(chips):
        w = window.intersection(win)
        if w is None:
            continue
        sl = w.relative_to(win).slices()
        d = core_distance(w, core)
        better = d < best[sl]
        best[sl][better] = d[better]
        choice[sl][better] = i
    return choice


def claims(
    w: PixelWindow,
    a: tuple[ChipKey, PixelWindow, PixelWindow, np.ndarray],
    b: tuple[ChipKey, PixelWindow, PixelWindow, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping pieces of two chips, ``(chip key, chip window, chip core, piece pixels over w)`` each.

    Returns:
        (pixels of ``a`` that ``b`` must give up, pixels of ``b`` that ``a`` must give up), both over ``w``: each
        piece's pixels where its chip takes precedence over the other's.
    """
    order = sorted([a, b], key=lambda t: t[0])
    first = first_in_precedence(w, [(k, win, core) for k, win, core, _ in order]) == 0
    a_first = first if order[0] is a else ~first
    return a[3] & a_first, b[3] & ~a_first


def drop_slivers(mask: np.ndarray, tolerance_px: int, disputed: np.ndarray) -> np.ndarray:
    """``mask`` without the seam slivers left where two chips' views of one object meet.

    A sliver is a 4-connected part, not the largest, at most ``tolerance_px`` + 1 pixels thick (gone after a
    chessboard erosion by ``ceil(tolerance_px / 2)``), all of whose pixels are ``disputed`` (some chip that sees
    them does not hold them). Parts every chip agrees on stay, so perfect masks come back as they are.

    Returns:
        ``mask`` itself when nothing is dropped, else a new array.
    """
    from scipy import ndimage

    if tolerance_px <= 0:
        return mask
    lab, n = ndimage.label(mask)
    if n < 2:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    r = -(-tolerance_px // 2)
    thick = ndimage.binary_erosion(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[thick | (mask & ~disputed)])] = True
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    if keep[1:].all():
        return mask
    return keep[lab]


View = tuple[ChipKey, PixelWindow, np.ndarray]  # a member piece: its chip, bbox and pixels


def own_pixels(
    view: View,
    blockers: Sequence[tuple[int, PixelWindow, np.ndarray]],
    members: set[int],
    deciding: Sequence[ChipKey],
    windows: dict[ChipKey, PixelWindow],
    cores: dict[ChipKey, PixelWindow],
) -> np.ndarray:
    """The pixels a piece gives its object: where its chip takes precedence over the other ``deciding`` chips, less
    those that pieces of other objects (``blockers`` whose uid is not in ``members``) hold."""
    chip, bbox, mask = view
    m = mask.copy()
    for uid, w, claim in blockers:
        if uid not in members:
            m[w.relative_to(bbox).slices()] &= ~claim
    if len(deciding) < 2:
        return m
    # in a deciding chip's core, that chip decides; only pixels outside every deciding core need distances
    free = np.ones(m.shape, dtype=bool)
    for c in deciding:
        in_core = cores[c].intersection(bbox)
        if in_core is not None:
            sl = in_core.relative_to(bbox).slices()
            free[sl] = False
            if c != chip:
                m[sl] = False
    if not (free & m).any():
        return m
    mine = core_distance(bbox, cores[chip])
    for c in deciding:
        seen = None if c == chip else windows[c].intersection(bbox)
        if seen is None:
            continue
        sl = seen.relative_to(bbox).slices()
        theirs = core_distance(seen, cores[c])
        m[sl] &= ~free[sl] | (mine[sl] < theirs) | ((mine[sl] == theirs) & (chip < c))
    return m


def disputed_pixels(views: Sequence[View], full: PixelWindow, windows: dict[ChipKey, PixelWindow]) -> np.ndarray:
    """Pixels of ``full`` that a member chip sees without its members holding them."""
    out = np.zeros((full.height, full.width), dtype=bool)
    for c in sorted({v[0] for v in views}):
        seen = windows[c].intersection(full)
        if seen is None:
            continue
        held = np.zeros_like(out)
        for chip, bbox, mask in views:
            if chip == c:
                held[bbox.relative_to(full).slices()] |= mask
        sl = seen.relative_to(full).slices()
        out[sl] |= ~held[sl]
    return out
