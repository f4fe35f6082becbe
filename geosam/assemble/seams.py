"""The seam rule: which pieces of neighbouring chips are one object.

All functions work in **scene pixel coordinates** on boolean crops placed at `PixelWindow` values; they are pure
and know nothing of the streaming stitcher (`geosam.assemble.stitch.Stitcher`) that calls them.

**Matching.** Two pieces of neighbouring chips are compared inside the chips' shared strip (the intersection of the
two windows, which both chips see whole), on their parts there, ``a`` and ``b``:

1. *Agreement*: ``IoU(a, b) >= match_iou`` joins them (the exact rule, unchanged).
2. *Tolerant agreement*, for pairs that fail 1 and share pixels: a model's two views of one object differ by a band
   of a few pixels along the outline, which costs a thin sliver (an object that only just enters the strip) most
   of its IoU. So the pair is also one object when

   * the smaller part lies mostly inside the larger (``|a & b| >= MIN_CONTAINMENT * min(|a|, |b|)``), and
   * the parts agree outside a band of ``tolerance_px`` pixels: at least ``MIN_AGREEMENT`` of their pixels lie
     within ``tolerance_px`` (chessboard distance) of the other part, and
   * they are each other's best such candidate (mutual best match), and neither was joined by rule 1 in this strip.

   Objects that merely touch fail this: one's part is not within a few pixels of the other's (a building's part
   is not explained by a thin rim of its neighbour), and each has a better partner, itself seen by the other chip.
3. *A sliver cut by its chip*: a part with no partner in the strip that reaches its chip's edge (the object goes on
   where only the neighbour sees it) joins the neighbour's piece within ``tolerance_px`` of ``MIN_AGREEMENT`` of
   its pixels, the nearest one (`match_near`): the other view, eroded a pixel or two, may have left the strip.

Ownership (which pixels each object keeps) is in `geosam.assemble.ownership`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geosam.config.parts import OutputConfig
from geosam.windows import PixelWindow

#: default width of the band (scene pixels) in which two chips' outlines of one object may disagree
SEAM_TOLERANCE_PX: int = OutputConfig.seam_tolerance_px
#: tolerant rule: share of the smaller part that must lie inside the larger one
MIN_CONTAINMENT = 0.5
#: tolerant rule: share of both parts' pixels that must lie within the tolerance band of the other part
MIN_AGREEMENT = 0.9

ChipKey = tuple[int, int]


class UnionFind:
    """Disjoint sets of piece uids (path halving; the smaller uid is the root)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent[x] = x

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb

    def remove(self, x: int) -> None:
        del self.parent[x]


@dataclass(frozen=True)
class Part:
    """A piece's pixels inside a shared strip: its uid, the window they span there, and their count."""

    uid: int
    window: PixelWindow
    n_px: int


@dataclass(frozen=True)
class Side:
    """One chip of a pair: its window, its pieces' parts in the shared strip, and all its pieces (uid, bbox)."""

    window: PixelWindow
    parts: Sequence[Part]
    pieces: Sequence[tuple[int, PixelWindow]]


def on_window(mask: np.ndarray, bbox: PixelWindow, win: PixelWindow) -> np.ndarray:
    """``mask`` (placed at ``bbox``) read over ``win``; False outside ``bbox``."""
    if bbox.intersection(win) == win:  # inside: a view, no copy
        return mask[win.relative_to(bbox).slices()]
    out = np.zeros((win.height, win.width), dtype=bool)
    w = bbox.intersection(win)
    if w is not None:
        out[w.relative_to(win).slices()] = mask[w.relative_to(bbox).slices()]
    return out


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Chessboard dilation by ``r`` px (separable maxima along rows, then columns)."""
    from scipy import ndimage

    return ndimage.maximum_filter(m.view(np.uint8), size=2 * r + 1, mode="constant").view(bool)


def tolerant_agreement(a: np.ndarray, b: np.ndarray, tolerance_px: int) -> float:
    """Share of the pixels of ``a`` and ``b`` (same frame) lying within ``tolerance_px`` of the other mask."""
    na, nb = int(a.sum()), int(b.sum())
    if na + nb == 0:
        return 0.0
    near = int(np.count_nonzero(a & _dilate(b, tolerance_px))) + int(np.count_nonzero(b & _dilate(a, tolerance_px)))
    return near / (na + nb)


def mutual_best(scores: dict[tuple[int, int], tuple[float, int]]) -> list[tuple[int, int]]:
    """Pairs ``(a, b)`` that are each other's best-scoring candidate (ties: the lower uid)."""
    best_a: dict[int, tuple[tuple[float, int], int]] = {}
    best_b: dict[int, tuple[tuple[float, int], int]] = {}
    for (a, b), s in sorted(scores.items()):
        if a not in best_a or s > best_a[a][0]:
            best_a[a] = (s, b)
        if b not in best_b or s > best_b[b][0]:
            best_b[b] = (s, a)
    return [(a, b) for a, (_, b) in best_a.items() if best_b[b][1] == a]


def match_strip(
    shared: PixelWindow,
    a_parts: Sequence[Part],
    b_parts: Sequence[Part],
    pixels: Callable[[int, PixelWindow], np.ndarray],
    same_kind: Callable[[int, int], bool],
    match_iou: float,
    tolerance_px: int,
) -> tuple[list[tuple[int, int]], list[tuple[int, int, PixelWindow]]]:
    """Match the parts of two chips' pieces inside their shared strip ``shared``.

    Args:
        shared: the intersection of the two chip windows.
        a_parts, b_parts: each chip's pieces that have pixels in ``shared``.
        pixels: ``pixels(uid, window)``: a piece's mask over ``window`` (inside ``shared``).
        same_kind: whether two pieces may be one object at all (e.g. text mode: same label).
        match_iou: rule 1's IoU.
        tolerance_px: rule 2's band; 0 switches rule 2 off.

    Returns:
        The matched ``(a uid, b uid)`` pairs, and the overlapping pairs left apart, with the window where their
        bounding boxes meet (for `claims`).
    """
    matched: list[tuple[int, int]] = []
    apart: list[tuple[int, int, PixelWindow]] = []
    tolerant: dict[tuple[int, int], tuple[float, int]] = {}
    b_box = np.array([p.window.bounds() for p in b_parts], dtype=np.int64).reshape(-1, 4)
    for pa in a_parts:
        c0, r0, c1, r1 = pa.window.bounds()
        hit = (b_box[:, 0] < c1) & (b_box[:, 2] > c0) & (b_box[:, 1] < r1) & (b_box[:, 3] > r0)
        for j in np.flatnonzero(hit):
            pb = b_parts[int(j)]
            w = pa.window.intersection(pb.window)
            if w is None or not same_kind(pa.uid, pb.uid):
                continue
            inter = int(np.count_nonzero(pixels(pa.uid, w) & pixels(pb.uid, w)))
            if not inter:
                continue
            if inter / (pa.n_px + pb.n_px - inter) >= match_iou:
                matched.append((pa.uid, pb.uid))
                continue
            apart.append((pa.uid, pb.uid, w))
            if tolerance_px <= 0 or inter < MIN_CONTAINMENT * min(pa.n_px, pb.n_px):
                continue
            c0_, r0_, c1_, r1_ = pa.window.bounds()
            u = PixelWindow(min(c0_, pb.window.col_off), min(r0_, pb.window.row_off), 0, 0)
            u = PixelWindow(u.col_off, u.row_off, max(c1_, pb.window.col_end) - u.col_off,
                            max(r1_, pb.window.row_end) - u.row_off)
            agree = tolerant_agreement(pixels(pa.uid, u), pixels(pb.uid, u), tolerance_px)
            if agree >= MIN_AGREEMENT:
                tolerant[(pa.uid, pb.uid)] = (agree, inter)
    joined_a = {a for a, _ in matched}
    joined_b = {b for _, b in matched}
    tolerant = {k: v for k, v in tolerant.items() if k[0] not in joined_a and k[1] not in joined_b}
    pairs = mutual_best(tolerant)
    done = set(pairs)
    return matched + pairs, [t for t in apart if (t[0], t[1]) not in done]


def _grow(w: PixelWindow, r: int) -> PixelWindow:
    return PixelWindow(w.col_off - r, w.row_off - r, w.width + 2 * r, w.height + 2 * r)


def cut_by_chip(part: PixelWindow, chip: PixelWindow, other: PixelWindow) -> bool:
    """Does a part (window ``part``) reach a side of its ``chip`` window that lies inside the ``other`` chip's
    window (so the object may continue where only the other chip sees it)?"""
    return ((part.col_off == chip.col_off > other.col_off) or (part.row_off == chip.row_off > other.row_off)
            or (part.col_end == chip.col_end < other.col_end) or (part.row_end == chip.row_end < other.row_end))


def match_near(
    lonely: Sequence[Part],
    others: Sequence[tuple[int, PixelWindow]],
    pixels: Callable[[int, PixelWindow], np.ndarray],
    same_kind: Callable[[int, int], bool],
    tolerance_px: int,
) -> list[tuple[int, int]]:
    """Rule 3: a part with no partner in the strip, cut by its chip's edge, joins the other chip's piece that
    lies within ``tolerance_px`` of (``MIN_AGREEMENT`` of) its pixels: the nearest such piece, anywhere near.

    A sliver that only just enters the strip in one chip's view may have no pixel in common with the other
    chip's view of the same object (eroded a few pixels back, out of the strip). ``others``: (uid, bbox) of the
    other chip's pieces not joined in this strip. Returns (lonely uid, other uid) pairs.
    """
    from scipy import ndimage

    out = []
    boxes = np.array([w.bounds() for _, w in others], dtype=np.int64).reshape(-1, 4)
    for x in lonely:
        region = _grow(x.window, tolerance_px)
        c0, r0, c1, r1 = region.bounds()
        hit = (boxes[:, 0] < c1) & (boxes[:, 2] > c0) & (boxes[:, 1] < r1) & (boxes[:, 3] > r0)
        mine = np.zeros((region.height, region.width), bool)
        mine[tolerance_px:-tolerance_px, tolerance_px:-tolerance_px] = pixels(x.uid, x.window)
        need = int(np.ceil(MIN_AGREEMENT * x.n_px))
        best: tuple[int, int, int] | None = None
        for j in np.flatnonzero(hit):
            uid = others[int(j)][0]
            theirs = pixels(uid, region)
            if not theirs.any() or not same_kind(x.uid, uid):
                continue
            dist = np.sort(ndimage.distance_transform_cdt(~theirs, metric="chessboard")[mine])
            r = int(dist[need - 1])  # the distance within which MIN_AGREEMENT of the part lies
            near = int(np.count_nonzero(dist <= r))
            if r <= tolerance_px and (best is None or (r, -near, uid) < (best[0], -best[1], best[2])):
                best = (r, near, uid)
        if best is not None:
            out.append((x.uid, best[2]))
    return out


def match_chips(
    a: Side,
    b: Side,
    pixels: Callable[[int, PixelWindow], np.ndarray],
    same_kind: Callable[[int, int], bool],
    match_iou: float,
    tolerance_px: int,
) -> tuple[list[tuple[int, int]], list[tuple[int, int, PixelWindow]]]:
    """Rules 1-3 for two neighbouring chips: the pairs to join, and the overlapping pairs left apart (see
    `match_strip`)."""
    shared = a.window.intersection(b.window)
    if shared is None:
        return [], []
    matched, apart = match_strip(shared, a.parts, b.parts, pixels, same_kind, match_iou, tolerance_px)
    if tolerance_px <= 0:
        return matched, apart
    joined = {u for pair in matched for u in pair}
    for mine, theirs, flip in ((a, b, False), (b, a, True)):
        lonely = [p for p in mine.parts if p.uid not in joined and cut_by_chip(p.window, mine.window, theirs.window)]
        free = [(u, w) for u, w in theirs.pieces if u not in joined]
        if lonely and free:
            near = match_near(lonely, free, pixels, same_kind, tolerance_px)
            matched += [(y, x) if flip else (x, y) for x, y in near]
    return matched, apart
