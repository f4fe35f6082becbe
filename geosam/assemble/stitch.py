"""Per-chip masks -> polygons in map coordinates, merged across chip seams.

All seam logic runs in **scene pixel coordinates** (x = column, y = row, pixel
edges on integers) on boolean mask crops, so matching and merging are exact
pixel operations. Each finished object is polygonised once (holes kept) and the
scene's affine transform is applied only then.

Merging rule (details in `geosam.assemble.seams`). Two masks from different
chips are compared inside the rectangle where the two chip windows overlap
(the shared strip), which both chips see whole. They are the same
object when their parts there agree: IoU >= ``match_iou``; or, since a model's
two views of one object differ by a few pixels along the outline, when the
smaller part lies mostly inside the larger, both agree outside a band of
``seam_tolerance_px`` pixels, and each is the other's best such candidate; or
when a sliver at one chip's edge lies within that band of the other chip's
view. Objects that merely touch stay apart. Matches are joined with a
union-find, so an object larger than a chip (seen truncated by every chip) is
assembled from all of them.

Ownership rule (details in `geosam.assemble.ownership`). Every pixel has an order of precedence among the chips that
see it: the chip whose core holds it, then the others by distance from their
cores. An object takes each pixel from its member chip of highest precedence
that sees it (so in a member chip's core, that chip's mask decides), and gives
up pixels that a piece of another object, from a chip of higher precedence,
holds. Objects truncated at a chip edge are thereby completed from the
neighbours that see the rest, and pieces left apart (two chips that disagree
too much) never claim the same pixels twice: each chip decides its own core.
Detached slivers left where two views meet at a core cut are dropped.

The stitcher is streaming: chips are added one at a time in any order, and an
object is finished (and leaves memory) as soon as every chip whose window
touches a chip it was seen in has been added or skipped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from geosam.assemble.ownership import claims, disputed_pixels, drop_slivers, own_pixels
from geosam.assemble.result import ChipResult
from geosam.assemble.seams import SEAM_TOLERANCE_PX, Part, Side, UnionFind, match_chips, on_window
from geosam.segment.base import ChipMasks
from geosam.tile.grid import ChipSpec
from geosam.windows import PixelWindow

log = logging.getLogger(__name__)

ChipKey = tuple[int, int]


def mask_to_pixel_geometry(mask: np.ndarray, col_off: int, row_off: int) -> Polygon | MultiPolygon | None:
    """Polygonise a boolean mask into scene pixel coordinates (holes kept).

    ``col_off``/``row_off`` place the mask's pixel (0, 0) in the scene. Works on
    the mask's bounding box only, so small masks in large chips are cheap.
    Returns None for an empty mask.
    """
    from rasterio.features import shapes

    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = np.ascontiguousarray(mask[r0:r1, c0:c1]).astype(np.uint8)
    tr = Affine.translation(col_off + c0, row_off + r0)
    parts = [g["coordinates"] for g, v in shapes(sub, mask=sub.astype(bool), transform=tr, connectivity=4) if v == 1]
    if not parts:
        return None
    polys = _polygons(parts)
    return polys[0] if len(polys) == 1 else MultiPolygon(list(polys))


def _polygons(parts: Sequence[Sequence[Sequence[tuple[float, float]]]]) -> np.ndarray:
    """``shapely.geometry.shape`` of each GeoJSON polygon's rings, built in one call from one coordinate array
    (not point by point in Python: a speckled mask has thousands of parts); the same coordinates and ring order."""
    rings = [r for p in parts for r in p]
    coords = np.array([xy for r in rings for xy in r], dtype=np.float64)
    ring_ends = np.cumsum([len(r) for r in rings])
    part_ends = np.cumsum([len(p) for p in parts])
    offsets = (np.concatenate([[0], ring_ends]), np.concatenate([[0], part_ends]))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, offsets)


#: largest merged object (pixels of its bounding box) assembled on a raster canvas;
#: larger ones are assembled by vector union of their pieces.
CANVAS_MAX_PX = 64_000_000


@dataclass
class _Piece:
    """One mask of one chip: a boolean crop at ``bbox`` (scene pixel coordinates)."""

    uid: int
    chip: ChipKey
    bbox: PixelWindow
    mask: np.ndarray
    area_px: int
    predicted_iou: float
    stability_score: float
    attrs: dict[str, Any] = field(default_factory=dict)
    #: pixels other pieces' chips take precedence over: (their uid, window, pixels over it)
    blockers: list[tuple[int, PixelWindow, np.ndarray]] = field(default_factory=list)

    def crop(self, win: PixelWindow) -> np.ndarray:
        """The mask inside ``win`` (which must lie inside ``bbox``)."""
        return self.mask[win.relative_to(self.bbox).slices()]


@dataclass
class StitchedObject:
    """A finished object: its outline in scene pixel coordinates and attributes.

    mask/bbox: the object's final pixels (bool crop at ``bbox``, scene pixel
    coordinates), for per-object statistics; None for objects too large for a
    raster canvas (see ``CANVAS_MAX_PX``).
    """

    geom_px: Any
    area_px: int
    predicted_iou: float
    stability_score: float
    n_chips: int
    n_pieces: int
    chips: tuple[ChipKey, ...]
    attrs: list[dict[str, Any]] = field(default_factory=list)
    mask: np.ndarray | None = None
    bbox: PixelWindow | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Stitcher:
    """Merge chip masks into whole objects, streaming.

    specs: the full chip grid of the scene (every chip that will be added or
        skipped), used to know neighbours and cores.
    match_iou: IoU inside the shared overlap above which two masks of
        neighbouring chips are one object.
    seam_tolerance_px: width of the band (scene pixels) along an outline in
        which two chips' masks of one object may disagree (0: IoU only).

    Pieces are kept as boolean crops (exact, cheap to intersect); polygons are
    made once per finished object.
    """

    def __init__(self, specs: Sequence[ChipSpec], match_iou: float = 0.5,
                 seam_tolerance_px: int = SEAM_TOLERANCE_PX) -> None:
        self.match_iou = match_iou
        self.seam_tolerance_px = int(seam_tolerance_px)
        self.windows: dict[ChipKey, PixelWindow] = {}
        self.cores: dict[ChipKey, PixelWindow] = {}
        for s in specs:
            self.windows[(s.row, s.col)] = s.window
            self.cores[(s.row, s.col)] = s.core
        self.neighbours: dict[ChipKey, list[ChipKey]] = self._find_neighbours()
        self.done: set[ChipKey] = set()
        self.pieces: dict[int, _Piece] = {}
        self.by_chip: dict[ChipKey, list[int]] = defaultdict(list)
        self.uf = UnionFind()
        self._next_uid = 0
        self.n_pieces_total = 0
        #: seconds spent polygonising finished objects (part of the stitch time)
        self.polygonise_s = 0.0

    def _find_neighbours(self) -> dict[ChipKey, list[ChipKey]]:
        keys = list(self.windows)
        out: dict[ChipKey, list[ChipKey]] = {k: [] for k in keys}
        rows = sorted({k[0] for k in keys})
        cols = sorted({k[1] for k in keys})
        # windows on a grid: neighbours along each axis are found per axis
        row_win = {r: next(self.windows[k] for k in keys if k[0] == r) for r in rows}
        col_win = {c: next(self.windows[k] for k in keys if k[1] == c) for c in cols}
        row_nb = {
            r: [q for q in rows if row_win[q].row_off < row_win[r].row_end and row_win[r].row_off < row_win[q].row_end]
            for r in rows
        }
        col_nb = {
            c: [q for q in cols if col_win[q].col_off < col_win[c].col_end and col_win[c].col_off < col_win[q].col_end]
            for c in cols
        }
        for r, c in keys:
            out[(r, c)] = [(rr, cc) for rr in row_nb[r] for cc in col_nb[c] if (rr, cc) != (r, c) and (rr, cc) in self.windows]
        return out

    # -- adding ------------------------------------------------------------
    def add(self, spec: ChipSpec, result: ChipResult | ChipMasks, attrs: Sequence[dict[str, Any]] | None = None) -> None:
        """Add one chip's masks: a `ChipResult` (crops in scene pixels), or
        `ChipMasks` in the chip pixel frame; ``attrs`` are carried per mask."""
        key = (spec.row, spec.col)
        if key in self.done:
            raise ValueError(f"chip {spec.chip_id} was already added")
        if isinstance(result, ChipMasks):
            result = ChipResult.from_masks(spec.chip_id, spec.window, result)
        new: list[int] = []
        for i, mc in enumerate(result.crops()):
            uid = self._next_uid
            self._next_uid += 1
            self.pieces[uid] = _Piece(
                uid=uid,
                chip=key,
                bbox=mc.bbox,
                mask=mc.mask,
                area_px=mc.area_px,
                predicted_iou=mc.predicted_iou,
                stability_score=mc.stability_score,
                attrs=dict(attrs[i]) if attrs is not None else {},
            )
            self.uf.add(uid)
            new.append(uid)
        self.n_pieces_total += len(new)
        for nb in self.neighbours[key]:
            if nb in self.done and self.by_chip.get(nb):
                self._match(key, new, nb, self.by_chip[nb])
        self.by_chip[key] = new
        self.done.add(key)

    def _parts_in(self, uids: list[int], shared: PixelWindow) -> list[Part]:
        """The pieces touching ``shared``: their bbox inside shared and their pixel count there."""
        out = []
        for u in uids:
            p = self.pieces[u]
            w = p.bbox.intersection(shared)
            if w is None:
                continue
            n = int(np.count_nonzero(p.crop(w)))
            if n:
                out.append(Part(u, w, n))
        return out

    def _match(self, key: ChipKey, uids: list[int], nb: ChipKey, nb_uids: list[int]) -> None:
        shared = self.windows[key].intersection(self.windows[nb])
        if shared is None or not uids or not nb_uids:
            return
        a_parts = self._parts_in(uids, shared)
        b_parts = self._parts_in(nb_uids, shared)
        if not a_parts and not b_parts:
            return
        pieces = self.pieces

        def same_kind(a: int, b: int) -> bool:  # masks of different labels (text mode) are different objects
            return pieces[a].attrs.get("label") == pieces[b].attrs.get("label")

        matched, apart = match_chips(
            Side(self.windows[key], a_parts, [(u, pieces[u].bbox) for u in uids]),
            Side(self.windows[nb], b_parts, [(u, pieces[u].bbox) for u in nb_uids]),
            lambda u, w: on_window(pieces[u].mask, pieces[u].bbox, w), same_kind, self.match_iou,
            self.seam_tolerance_px,
        )
        for ua, ub in matched:
            self.uf.union(ua, ub)
        for ua, ub, w in apart:  # left apart: each gives up what the other's chip takes precedence over
            pa, pb = pieces[ua], pieces[ub]
            give_a, give_b = claims(w, (pa.chip, self.windows[pa.chip], self.cores[pa.chip], pa.crop(w)),
                                    (pb.chip, self.windows[pb.chip], self.cores[pb.chip], pb.crop(w)))
            if give_a.any():
                pb.blockers.append((ua, w, give_a))
            if give_b.any():
                pa.blockers.append((ub, w, give_b))

    # -- finishing ---------------------------------------------------------
    def _components(self, uids: Iterable[int]) -> dict[int, list[int]]:
        comps: dict[int, list[int]] = defaultdict(list)
        for u in uids:
            comps[self.uf.find(u)].append(u)
        return comps

    def pop_finished(self, final: bool = False) -> list[StitchedObject]:
        """Finished objects, removed from memory.

        An object is finished when every chip neighbouring a chip it was seen in
        has been added or skipped; with ``final=True`` everything is finished.
        """
        comps = self._components(self.pieces)
        out: list[StitchedObject] = []
        for members in comps.values():
            chips = {self.pieces[u].chip for u in members}
            if not final and not all(nb in self.done for c in chips for nb in self.neighbours[c]):
                continue
            obj = self._build(members, chips)
            if obj is not None:
                out.append(obj)
            for u in members:
                p = self.pieces.pop(u)
                # parents never leave a component, so dropping a whole component is safe
                self.uf.remove(u)
                lst = self.by_chip.get(p.chip)
                if lst is not None:
                    lst.remove(u)
        return out

    def _own(self, p: _Piece, members: set[int], deciding: Sequence[ChipKey]) -> np.ndarray:
        return own_pixels((p.chip, p.bbox, p.mask), p.blockers, members, deciding, self.windows, self.cores)

    def _without_slivers(self, canvas: np.ndarray, full: PixelWindow, disputed: np.ndarray, g: Any) -> tuple[Any, Any]:
        """``canvas`` and its polygon without detached seam slivers (`geosam.assemble.ownership.drop_slivers`)."""
        kept = drop_slivers(canvas, self.seam_tolerance_px, disputed)
        if kept is canvas:
            return canvas, g
        return kept, self._polygonise(kept, full.col_off, full.row_off)

    def _polygonise(self, mask: np.ndarray, col_off: int, row_off: int) -> Any:
        t0 = time.perf_counter()
        try:
            return mask_to_pixel_geometry(mask, col_off, row_off)
        finally:
            self.polygonise_s += time.perf_counter() - t0

    def _build(self, members: list[int], chips: set[ChipKey]) -> StitchedObject | None:
        # by chip, then mask order within the chip: the same whatever order chips arrived in
        pieces = sorted((self.pieces[u] for u in members), key=lambda p: (p.chip, p.uid))
        ids, deciding = set(members), sorted(chips)
        blocked = any(uid not in ids for p in pieces for uid, _, _ in p.blockers)
        if len(pieces) == 1 and not blocked:
            p = pieces[0]
            g = self._polygonise(p.mask, p.bbox.col_off, p.bbox.row_off)
            area, canvas, full = p.area_px, p.mask, p.bbox
        else:
            c0 = min(p.bbox.col_off for p in pieces)
            r0 = min(p.bbox.row_off for p in pieces)
            c1 = max(p.bbox.col_end for p in pieces)
            r1 = max(p.bbox.row_end for p in pieces)
            full = PixelWindow(c0, r0, c1 - c0, r1 - r0)
            if full.width * full.height <= CANVAS_MAX_PX:
                canvas = np.zeros((full.height, full.width), dtype=bool)
                for p in pieces:
                    canvas[p.bbox.relative_to(full).slices()] |= self._own(p, ids, deciding)
                g = self._polygonise(canvas, c0, r0)
                if isinstance(g, MultiPolygon):  # cut by other objects' pixels, or where views meet at a core cut
                    disputed = (disputed_pixels([(p.chip, p.bbox, p.mask) for p in pieces], full, self.windows)
                                if len(pieces) > 1 else np.ones_like(canvas))
                    canvas, g = self._without_slivers(canvas, full, disputed, g)
                area = int(canvas.sum())
            else:  # a huge object: vector union of the pieces' own pixels
                canvas, full = None, None
                geoms = [self._polygonise(self._own(p, ids, deciding), p.bbox.col_off, p.bbox.row_off) for p in pieces]
                g = _polygonal(unary_union([q for q in geoms if q is not None]))
                area = round(g.area)
        if g is None or g.is_empty:
            return None
        w = np.array([p.area_px for p in pieces], dtype=np.float64)
        w = w / w.sum()
        return StitchedObject(
            geom_px=g,
            area_px=area,
            predicted_iou=float(np.dot(w, [p.predicted_iou for p in pieces])),
            stability_score=float(np.dot(w, [p.stability_score for p in pieces])),
            n_chips=len(chips),
            n_pieces=len(pieces),
            chips=tuple(sorted(chips)),
            attrs=[p.attrs for p in pieces],
            mask=canvas,
            bbox=full,
        )


def _polygonal(g: Any) -> Any:
    """Keep only the polygonal part of a geometry (drop stray lines/points)."""
    if isinstance(g, (Polygon, MultiPolygon)):
        return g
    polys: list[Polygon] = []
    for part in getattr(g, "geoms", []):
        if isinstance(part, Polygon):
            polys.append(part)
        elif isinstance(part, MultiPolygon):
            polys.extend(part.geoms)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)
