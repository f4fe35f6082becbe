"""Deterministic generated scenes for tests and benchmarks.

Like torchgeo's ``tests/data/*/data.py``, this script is checked in and called
by the tests: nothing binary is stored in the repository.

Two kinds of scene:

* :func:`make_oracle_scene` -- a small scene (default 1200 x 1000 px) with an
  RGB uint8 image and an aligned instance-label raster (0 = background,
  1..N = objects). Objects are many shapes and sizes, each one 4-connected
  component, non-overlapping, spread over the whole scene so that they cross
  chip seams and corners for chip sizes 128-512 px. Built in about a second.
* :func:`make_large_tiled_scene` -- a large scene (default 20000 x 20000 px)
  written block by block, for streaming benchmarks. The full array is never
  allocated.

Run ``python -m tests.data.make_scenes OUT_DIR`` to write example scenes.

Frames: object geometry is built in scene pixel coordinates (row, column of
the pixel centre = index + 0.5); the affine transform maps them to the CRS.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Smallest object, in pixels, that a generated scene contains.
MIN_OBJECT_PX = 20

#: Pixel size of projected scenes (CRS units, metres for UTM).
PROJECTED_PIXEL_SIZE = 0.5
#: Pixel size of geographic scenes (degrees, ~0.5 m at 48 deg N along a meridian).
GEOGRAPHIC_PIXEL_SIZE = 5e-6
#: Where scenes are placed (longitude, latitude, degrees): the upper-left corner.
ORIGIN_LONLAT = (13.1, 48.3)

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SceneFiles:
    """Paths and contents of a generated scene.

    image_path: RGB uint8 GeoTIFF.
    label_path: single-band uint32 instance-label GeoTIFF on the same grid.
    n_objects: number of objects (labels 1..n_objects are all present).
    labels: the labels, ``[1, 2, ..., n_objects]``.
    """

    image_path: Path
    label_path: Path
    n_objects: int
    labels: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------
# georeferencing


def scene_transform(crs: str):  # -> affine.Affine
    """North-up transform of a generated scene in ``crs``.

    Geographic CRSs get ``GEOGRAPHIC_PIXEL_SIZE`` degree pixels with the
    upper-left corner at ``ORIGIN_LONLAT``; projected ones get
    ``PROJECTED_PIXEL_SIZE`` pixels with the corner at ``ORIGIN_LONLAT``
    projected and floored to a whole 100 CRS units (e.g. E 359600, N 5350900 in
    EPSG:32633).
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_transform

    def from_origin(x0: float, y0: float, dx: float, dy: float) -> Affine:
        return Affine(dx, 0.0, x0, 0.0, -dy, y0)

    c = CRS.from_user_input(crs)
    lon, lat = ORIGIN_LONLAT
    if c.is_geographic:
        return from_origin(lon, lat, GEOGRAPHIC_PIXEL_SIZE, GEOGRAPHIC_PIXEL_SIZE)
    xs, ys = warp_transform(CRS.from_epsg(4326), c, [lon], [lat])
    x0 = math.floor(xs[0] / 100.0) * 100.0
    y0 = math.floor(ys[0] / 100.0) * 100.0
    return from_origin(x0, y0, PROJECTED_PIXEL_SIZE, PROJECTED_PIXEL_SIZE)


# --------------------------------------------------------------------------
# shapes: each returns a bool mask and the scene pixel (row, col) of its top-left


Shape = tuple[np.ndarray, int, int]


def _grid(cy: float, cx: float, ry: float, rx: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pixel-centre offsets (dy, dx) from (cy, cx) over a box of half-size (ry, rx)."""
    r0 = math.floor(cy - ry) - 1
    c0 = math.floor(cx - rx) - 1
    r1 = math.ceil(cy + ry) + 2
    c1 = math.ceil(cx + rx) + 2
    dy = (np.arange(r0, r1, dtype=np.float64) + 0.5 - cy)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float64) + 0.5 - cx)[None, :]
    return dy, dx, r0, c0


def _rotated(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) coordinates rotated by ``angle`` radians (u along the shape's long axis)."""
    ca, sa = math.cos(angle), math.sin(angle)
    return dx * ca + dy * sa, -dx * sa + dy * ca


def ellipse(cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> Shape:
    """Filled ellipse with semi-axes (rx along ``angle``, ry across), pixels."""
    r = max(ry, rx)
    dy, dx, r0, c0 = _grid(cy, cx, r, r)
    u, v = _rotated(dy, dx, angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0, r0, c0


def rotated_rect(cy: float, cx: float, length: float, width: float, angle: float = 0.0) -> Shape:
    """Rectangle ``length`` x ``width`` px, long side along ``angle`` (radians from +x)."""
    r = 0.5 * math.hypot(length, width)
    dy, dx, r0, c0 = _grid(cy, cx, r, r)
    u, v = _rotated(dy, dx, angle)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2), r0, c0


def rect(r0: int, c0: int, h: int, w: int) -> Shape:
    """Axis-aligned rectangle of whole pixels with top-left (r0, c0)."""
    return np.ones((h, w), dtype=bool), r0, c0


def annulus(cy: float, cx: float, r_out: float, r_in: float, squash: float = 1.0, angle: float = 0.0) -> Shape:
    """Ring between two concentric ellipses (outer semi-axes r_out, r_out*squash)."""
    dy, dx, r0, c0 = _grid(cy, cx, r_out, r_out)
    u, v = _rotated(dy, dx, angle)
    d_out = (u / r_out) ** 2 + (v / (r_out * squash)) ** 2
    d_in = (u / r_in) ** 2 + (v / (r_in * squash)) ** 2
    return (d_out <= 1.0) & (d_in > 1.0), r0, c0


def rect_with_hole(r0: int, c0: int, h: int, w: int, hr0: int, hc0: int, hh: int, hw: int) -> Shape:
    """h x w rectangle with a rectangular hole (offset hr0, hc0 inside, size hh x hw)."""
    m = np.ones((h, w), dtype=bool)
    m[hr0 : hr0 + hh, hc0 : hc0 + hw] = False
    return m, r0, c0


def l_shape(r0: int, c0: int, h: int, w: int, t: int, flip: int = 0) -> Shape:
    """L of height h, width w and arm thickness t; ``flip`` 0-3 picks the corner."""
    m = np.zeros((h, w), dtype=bool)
    m[:, :t] = True
    m[h - t :, :] = True
    if flip & 1:
        m = m[:, ::-1]
    if flip & 2:
        m = m[::-1, :]
    return np.ascontiguousarray(m), r0, c0


def u_shape(r0: int, c0: int, h: int, w: int, t: int, rot: int = 0) -> Shape:
    """U of height h, width w and wall thickness t, rotated by ``rot`` quarter turns."""
    m = np.zeros((h, w), dtype=bool)
    m[:, :t] = True
    m[:, w - t :] = True
    m[h - t :, :] = True
    return np.ascontiguousarray(np.rot90(m, rot)), r0, c0


def blob(rng: np.random.Generator, cy: float, cx: float, r: float) -> Shape:
    """Irregular shape: a disc of radius ``r`` with a smooth random boundary."""
    dy, dx, r0, c0 = _grid(cy, cx, 1.5 * r, 1.5 * r)
    theta = np.arctan2(dy, dx)
    radius = np.full(theta.shape, r)
    for k in (2, 3, 5):
        radius = radius + r * rng.uniform(0.05, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) <= radius, r0, c0


# --------------------------------------------------------------------------
# placement


class _Canvas:
    """The label raster being built, with non-overlap and connectivity checks."""

    def __init__(self, height: int, width: int) -> None:
        self.labels = np.zeros((height, width), dtype=np.uint32)
        self.height = height
        self.width = width
        self.n = 0

    def _clip(self, shape: Shape) -> tuple[np.ndarray, int, int] | None:
        m, r0, c0 = shape
        h, w = m.shape
        a0, b0 = max(r0, 0), max(c0, 0)
        a1, b1 = min(r0 + h, self.height), min(c0 + w, self.width)
        if a1 <= a0 or b1 <= b0:
            return None
        m = m[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            return None
        m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return m, a0 + int(rows[0]), b0 + int(cols[0])

    def fits(self, shapes: list[Shape], gap: int, whole: bool = False) -> list[tuple[np.ndarray, int, int]] | None:
        """The clipped shapes if they can be placed together, else None.

        Each clipped shape must be one 4-connected component of at least
        ``MIN_OBJECT_PX`` pixels; the shapes must not overlap each other nor
        come closer than ``gap`` px (Chebyshev) to an object already placed.
        ``whole`` rejects shapes that the scene border would cut.
        """
        clipped = []
        for s in shapes:
            c = self._clip(s)
            if c is None:
                return None
            m, r0, c0 = c
            if whole and int(m.sum()) != int(s[0].sum()):
                return None
            if int(m.sum()) < MIN_OBJECT_PX:
                return None
            # the cheap tests first (the outcome does not depend on their order): an object under the shape
            if (m & (self.labels[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] != 0)).any():
                return None
            a0, b0 = max(r0 - gap, 0), max(c0 - gap, 0)
            a1 = min(r0 + m.shape[0] + gap, self.height)
            b1 = min(c0 + m.shape[1] + gap, self.width)
            region = self.labels[a0:a1, b0:b1] != 0
            if gap > 0 and region.any():
                grown = np.zeros(region.shape, dtype=bool)
                grown[r0 - a0 : r0 - a0 + m.shape[0], c0 - b0 : c0 - b0 + m.shape[1]] = m
                grown = ndimage.binary_dilation(grown, structure=np.ones((3, 3), bool), iterations=gap)
                if (grown & region).any():
                    return None
            if ndimage.label(m, structure=_FOUR)[1] != 1:
                return None
            clipped.append(c)
        # shapes of one group must not overlap each other either
        for i in range(len(clipped)):
            for j in range(i + 1, len(clipped)):
                if _overlap(clipped[i], clipped[j]):
                    return None
        return clipped

    def place(self, clipped: list[tuple[np.ndarray, int, int]]) -> list[int]:
        out = []
        for m, r0, c0 in clipped:
            self.n += 1
            view = self.labels[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]]
            view[m] = self.n
            out.append(self.n)
        return out

    def try_place(
        self,
        rng: np.random.Generator,
        make: Callable[[float, float], list[Shape]],
        *,
        gap: int = 2,
        tries: int = 60,
        whole: bool = False,
    ) -> list[int]:
        """Place the group ``make(cy, cx)`` at a random position; [] if it never fits."""
        for k in range(tries):
            cy = rng.uniform(0, self.height)
            cx = rng.uniform(0, self.width)
            shapes = make(cy, cx)
            clipped = self.fits(shapes, gap, whole)
            if clipped is not None:
                return self.place(clipped)
            if whole and any(self._never_whole(s) for s in shapes):
                # no position fits it: draw what the remaining tries would (the ``whole`` makers draw nothing
                # themselves), so that the scene is the one the full loop gives, without building the shapes
                for _ in range(tries - k - 1):
                    rng.uniform(0, self.height)
                    rng.uniform(0, self.width)
                return []
        return []

    def _never_whole(self, shape: Shape) -> bool:
        """The shape's pixels span more rows or columns than the scene by a margin (a shift by a fraction of a
        pixel changes the span by at most one or two): no position keeps it whole."""
        m = shape[0]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        return rows.size > 0 and (rows[-1] - rows[0] > self.height + 3 or cols[-1] - cols[0] > self.width + 3)


def _overlap(a: tuple[np.ndarray, int, int], b: tuple[np.ndarray, int, int]) -> bool:
    ma, ra, ca = a
    mb, rb, cb = b
    r0, c0 = max(ra, rb), max(ca, cb)
    r1 = min(ra + ma.shape[0], rb + mb.shape[0])
    c1 = min(ca + ma.shape[1], cb + mb.shape[1])
    if r1 <= r0 or c1 <= c0:
        return False
    sa = ma[r0 - ra : r1 - ra, c0 - ca : c1 - ca]
    sb = mb[r0 - rb : r1 - rb, c0 - cb : c1 - cb]
    return bool((sa & sb).any())


def _subtract(a: Shape, b: Shape) -> Shape:
    """Shape ``a`` minus the pixels of ``b``."""
    ma, ra, ca = a
    mb, rb, cb = b
    ma = ma.copy()
    r0, c0 = max(ra, rb), max(ca, cb)
    r1 = min(ra + ma.shape[0], rb + mb.shape[0])
    c1 = min(ca + ma.shape[1], cb + mb.shape[1])
    if r1 > r0 and c1 > c0:
        ma[r0 - ra : r1 - ra, c0 - ca : c1 - ca] &= ~mb[r0 - rb : r1 - rb, c0 - cb : c1 - cb]
    return ma, ra, ca


# --------------------------------------------------------------------------
# the object catalogue


def _angle(rng: np.random.Generator) -> float:
    return float(rng.uniform(0, math.pi))


def _random_object(rng: np.random.Generator) -> Callable[[float, float], list[Shape]]:
    """A random ordinary object (small to medium), as a placement function."""
    kind = rng.choice(["disc", "ellipse", "rect", "rrect", "bar", "ring", "hole", "L", "U", "blob"],
                      p=[0.16, 0.14, 0.14, 0.12, 0.09, 0.06, 0.05, 0.07, 0.05, 0.12])
    if kind == "disc":
        r = float(np.exp(rng.uniform(np.log(3.2), np.log(40))))
        return lambda cy, cx: [ellipse(cy, cx, r, r)]
    if kind == "ellipse":
        rx = float(rng.uniform(6, 60))
        ry = float(rx * rng.uniform(0.3, 0.9))
        a = _angle(rng)
        return lambda cy, cx: [ellipse(cy, cx, ry, rx, a)]
    if kind == "rect":
        h, w = (int(v) for v in rng.integers(5, 90, size=2))
        return lambda cy, cx: [rect(int(cy) - h // 2, int(cx) - w // 2, h, w)]
    if kind == "rrect":
        ln, wd = float(rng.uniform(12, 110)), float(rng.uniform(6, 40))
        a = _angle(rng)
        return lambda cy, cx: [rotated_rect(cy, cx, ln, wd, a)]
    if kind == "bar":
        ln, wd = float(rng.uniform(40, 220)), float(rng.uniform(2.0, 4.0))
        a = _angle(rng)
        return lambda cy, cx: [rotated_rect(cy, cx, ln, wd, a)]
    if kind == "ring":
        ro = float(rng.uniform(12, 45))
        ri = float(ro - rng.uniform(3.5, max(4.0, ro * 0.5)))
        sq, a = float(rng.uniform(0.6, 1.0)), _angle(rng)
        return lambda cy, cx: [annulus(cy, cx, ro, ri, sq, a)]
    if kind == "hole":
        h, w = (int(v) for v in rng.integers(24, 100, size=2))
        t = int(rng.integers(4, 10))
        return lambda cy, cx: [rect_with_hole(int(cy) - h // 2, int(cx) - w // 2, h, w, t, t, h - 2 * t, w - 2 * t)]
    if kind == "L":
        h, w = (int(v) for v in rng.integers(20, 110, size=2))
        t, f = int(rng.integers(4, 14)), int(rng.integers(0, 4))
        return lambda cy, cx: [l_shape(int(cy) - h // 2, int(cx) - w // 2, h, w, t, f)]
    if kind == "U":
        h, w = (int(v) for v in rng.integers(24, 110, size=2))
        t, rot = int(rng.integers(4, 12)), int(rng.integers(0, 4))
        return lambda cy, cx: [u_shape(int(cy) - h // 2, int(cx) - w // 2, h, w, t, rot)]
    r = float(rng.uniform(8, 45))
    brng = np.random.default_rng(rng.integers(2**32))
    return lambda cy, cx: [blob(np.random.default_rng(brng.integers(2**32)), cy, cx, r)]


def _build_labels(height: int, width: int, n_objects: int, rng: np.random.Generator) -> np.ndarray:
    """The label raster: special objects first (large, long, touching, border), then random ones."""
    cv = _Canvas(height, width)
    counts: dict[str, int] = {}

    def put(name: str, make: Callable[[float, float], list[Shape]], **kw: int | bool) -> None:
        got = cv.try_place(rng, make, **kw)
        counts[name] = counts.get(name, 0) + len(got)
        if not got:
            log.debug("could not place a %s object in a %d x %d scene", name, width, height)

    # 1. objects touching the scene border (centres on or near an edge / corner)
    border_makers: list[Callable[[float, float], list[Shape]]] = [
        lambda cy, cx: [rect(int(cy) - 30, -10, 60, 70)],
        lambda cy, cx: [ellipse(-5.0, cx, 35, 50)],
        lambda cy, cx: [rotated_rect(cy, width - 20.0, 160, 30, 0.6)],
        lambda cy, cx: [ellipse(height + 2.0, cx, 40, 28, 0.2)],
        lambda cy, cx: [rect(height - 45, width - 55, 80, 80)],
        lambda cy, cx: [annulus(0.0, 0.0, 45, 30)],
        lambda cy, cx: [rotated_rect(height - 1.0, cx, 300, 3.0, 0.0)],
    ]
    for make in border_makers:
        put("border", make, tries=30)

    # 2. large objects (larger than a 256 px chip)
    put("large ellipse", lambda cy, cx: [ellipse(cy, cx, 165, 190, 0.3)], whole=True, tries=200)
    put(
        "large rect with hole",
        lambda cy, cx: [rect_with_hole(int(cy) - 160, int(cx) - 175, 320, 350, 70, 90, 150, 120)],
        whole=True,
        tries=200,
    )
    put("large U", lambda cy, cx: [u_shape(int(cy) - 170, int(cx) - 155, 340, 310, 40, 1)], whole=True, tries=200)

    # 3. long thin bars (2-4 px wide) that cross many seams, axis-aligned and rotated
    long_side = max(height, width)
    for wd, a in ((2.0, 0.0), (3.0, math.pi / 2), (2.0, 0.41), (3.0, 2.3), (4.0, 1.1), (2.5, 2.8)):
        ln = float(rng.uniform(0.45, 0.7) * long_side)
        put("long bar", lambda cy, cx, ln=ln, wd=wd, a=a: [rotated_rect(cy, cx, ln, wd, a)], gap=3)

    # 4. rings and shapes with holes, one with an island object inside its hole
    put("ring with island", lambda cy, cx: [annulus(cy, cx, 60, 40), ellipse(cy, cx, 18, 24, 0.5)])
    for ro, ri in ((30, 22), (48, 30), (22, 15)):
        put("ring", lambda cy, cx, ro=ro, ri=ri: [annulus(cy, cx, ro, ri, 0.8, _angle(rng))])
    put("rect with hole", lambda cy, cx: [rect_with_hole(int(cy) - 40, int(cx) - 60, 80, 120, 20, 30, 30, 50)])

    # 5. L and U shapes
    for f in range(4):
        put("L", lambda cy, cx, f=f: [l_shape(int(cy) - 40, int(cx) - 35, 80, 70, 10 + 3 * f, f)])
    for rot in range(2):
        put("U", lambda cy, cx, rot=rot: [u_shape(int(cy) - 45, int(cx) - 40, 90, 80, 12, rot)])

    # 6. touching objects: adjacent rectangles sharing edges, and a disc biting into a rectangle
    def parcels(cy: float, cx: float) -> list[Shape]:
        r0, c0 = int(cy) - 60, int(cx) - 80
        return [rect(r0, c0, 60, 90), rect(r0, c0 + 90, 60, 70), rect(r0 + 60, c0, 55, 50), rect(r0 + 60, c0 + 50, 55, 110)]

    def strip_fields(cy: float, cx: float) -> list[Shape]:
        r0, c0 = int(cy) - 50, int(cx) - 60
        return [rect(r0, c0 + 24 * k, 100, 24) for k in range(5)]

    def bitten(cy: float, cx: float) -> list[Shape]:
        field_ = rect(int(cy) - 40, int(cx) - 60, 80, 120)
        pond = ellipse(cy, cx + 60, 25, 25)
        return [_subtract(field_, pond), pond]

    for make in (parcels, parcels, strip_fields, bitten, bitten):
        put("touching", make)

    # 7. discs and ellipses of every size, from ~30 px to large
    for r in (3.2, 4, 5, 7, 10, 14, 20, 28, 40, 55, 75):
        put("disc", lambda cy, cx, r=r: [ellipse(cy, cx, r, r)], tries=200)
    for r in (5, 12, 30, 70):
        put("ellipse", lambda cy, cx, r=r: [ellipse(cy, cx, r * 0.45, r, _angle(rng))])

    # 8. fill with random ordinary objects
    budget = 40 * max(n_objects, 1)
    while cv.n < n_objects and budget > 0:
        budget -= 1
        cv.try_place(rng, _random_object(rng), tries=5)
    if cv.n < n_objects:
        raise RuntimeError(
            f"could place only {cv.n} of {n_objects} objects in a {width} x {height} scene; "
            "ask for fewer objects or a larger scene"
        )
    log.debug("placed %d objects: %s", cv.n, counts)
    return cv.labels


def check_objects(labels: np.ndarray, min_px: int = MIN_OBJECT_PX) -> int:
    """Check an instance-label array; return the number of objects.

    Raises ValueError unless the labels are exactly 1..N, each at least
    ``min_px`` pixels forming one 4-connected component.
    """
    present = np.unique(labels)
    present = present[present != 0]
    n = int(present.size)
    if n and (present[0] != 1 or present[-1] != n):
        raise ValueError(f"labels are not 1..{n}: {present[:5]}...{present[-5:]}")
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)
    small = np.flatnonzero(counts[1:] < min_px) + 1
    if small.size:
        raise ValueError(f"objects smaller than {min_px} px: {small.tolist()}")
    for k, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        if ndimage.label(labels[sl] == k, structure=_FOUR)[1] != 1:
            raise ValueError(f"object {k} is not one 4-connected component")
    return n


# --------------------------------------------------------------------------
# image synthesis


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) HSV in [0, 1] -> (N, 3) float RGB in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [np.stack(x, axis=-1) for x in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )
    return table[i, np.arange(h.size)]


def object_colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n + 1, 3) uint8 colours: row 0 unused (background), rows 1..n bright, saturated."""
    h = (rng.uniform(0, 1) + np.arange(n) * 0.618033988749895) % 1.0
    s = rng.uniform(0.45, 0.9, n)
    v = rng.uniform(0.6, 0.98, n)
    rgb = np.zeros((n + 1, 3), dtype=np.uint8)
    rgb[1:] = np.round(_hsv_to_rgb(h, s, v) * 255).astype(np.uint8)
    return rgb


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float background: dark olive/brown with a smooth texture and row stripes."""
    coarse = rng.normal(0, 1, size=(max(2, height // 16 + 2), max(2, width // 16 + 2)))
    tex = ndimage.zoom(coarse, 16, order=1)[:height, :width]
    rows = np.arange(height, dtype=np.float32)[:, None]
    stripes = 4.0 * np.sin(rows / 3.0)
    base = np.array([78.0, 84.0, 58.0], dtype=np.float32)
    return base + (6.0 * tex + stripes)[..., None] * np.array([1.0, 0.9, 0.7], dtype=np.float32)


def render_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) uint8 RGB image of a label raster: one colour per object, mild noise."""
    h, w = labels.shape
    n = int(labels.max())
    colours = object_colours(n, rng).astype(np.float32)
    img = np.where((labels != 0)[..., None], colours[labels], _background(h, w, rng))
    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    return np.moveaxis(np.clip(img + 0.5, 0, 255).astype(np.uint8), -1, 0)


# --------------------------------------------------------------------------
# writers


def _profile(width: int, height: int, count: int, dtype: str, crs: str, transform, block: int = 256) -> dict:
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "interleave": "pixel",
    }


def make_oracle_scene(
    out_dir: str | Path,
    *,
    crs: str = "EPSG:32633",
    width: int = 1200,
    height: int = 1000,
    seed: int = 0,
    n_objects: int = 120,
    name: str | None = None,
) -> SceneFiles:
    """Write an RGB image and its instance-label raster; return their paths.

    Both GeoTIFFs share the size (``width`` x ``height`` px), transform (see
    :func:`scene_transform`) and CRS. The label raster is uint32, 0 =
    background, objects 1..N with N >= ``n_objects``; every object is one
    4-connected component of at least ``MIN_OBJECT_PX`` px, objects never
    overlap. Same arguments -> identical files.

    ``name`` is the file-name stem (default ``scene_<epsg>_<seed>``).
    """
    import rasterio
    from rasterio.enums import ColorInterp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = _build_labels(height, width, n_objects, rng)
    n = check_objects(labels)
    image = render_image(labels, rng)

    stem = name or f"scene_{re.sub(r'[^a-z0-9]+', '', crs.lower())[:24]}_{seed}"
    image_path = out / f"{stem}_image.tif"
    label_path = out / f"{stem}_labels.tif"
    transform = scene_transform(crs)
    with rasterio.open(image_path, "w", photometric="RGB", **_profile(width, height, 3, "uint8", crs, transform)) as ds:
        ds.write(image)
        ds.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    with rasterio.open(label_path, "w", **_profile(width, height, 1, "uint32", crs, transform)) as ds:
        ds.write(labels, 1)
        ds.set_band_description(1, "instance label (0 = background)")
    log.info("wrote %s and %s (%d objects)", image_path, label_path, n)
    return SceneFiles(image_path=image_path, label_path=label_path, n_objects=n, labels=list(range(1, n + 1)))


# --------------------------------------------------------------------------
# multispectral scene with known vegetation index values


@dataclass(frozen=True)
class IndexSceneFiles:
    """A 4-band (R, G, B, NIR) uint16 scene, its labels and which objects are vegetated.

    image_path: uint16 reflectance x 10000 (use ``reflectance_scale=1e-4``), band
        descriptions ``red, green, blue, nir``, nodata 0 (a background patch at
        the top-left corner is nodata).
    vegetated: labels of the vegetated objects (every even label): every pixel
        has NDVI >= 0.6. Other objects and the background have NDVI < 0.15.
    """

    image_path: Path
    label_path: Path
    n_objects: int
    labels: list[int]
    vegetated: list[int]


#: (R, G, B, NIR) x 10000 of vegetated objects, other objects and background.
INDEX_SCENE_REFLECTANCE = {
    "vegetated": (500, 900, 400, 4000),
    "other": (2500, 2300, 2100, 2700),
    "background": (1800, 1700, 1500, 2000),
}


def make_index_scene(
    out_dir: str | Path,
    *,
    crs: str = "EPSG:32633",
    width: int = 600,
    height: int = 500,
    seed: int = 0,
    n_objects: int = 40,
    name: str | None = None,
) -> IndexSceneFiles:
    """Write a multispectral scene where half of the objects are vegetated; same arguments -> same files.

    Per object the reflectance is the table's value times a random factor in
    [0.9, 1.1] (per band), plus per-pixel noise (sd 40 DN); values stay >= 1.
    """
    import rasterio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = _build_labels(height, width, n_objects, rng)
    n = check_objects(labels)
    table = np.zeros((n + 1, 4), dtype=np.float64)
    table[0] = INDEX_SCENE_REFLECTANCE["background"]
    for k in range(1, n + 1):
        base = np.array(INDEX_SCENE_REFLECTANCE["vegetated" if k % 2 == 0 else "other"], dtype=np.float64)
        table[k] = base * rng.uniform(0.9, 1.1, size=4)
    img = table[labels] + rng.normal(0.0, 40.0, size=(height, width, 4))
    img = np.clip(np.rint(img), 1, 65535).astype(np.uint16)
    corner = np.zeros((height, width), dtype=bool)
    corner[:12, :12] = True
    img[corner & (labels == 0)] = 0
    img = np.moveaxis(img, -1, 0)

    stem = name or f"index_{re.sub(r'[^a-z0-9]+', '', crs.lower())[:24]}_{seed}"
    image_path = out / f"{stem}_image.tif"
    label_path = out / f"{stem}_labels.tif"
    transform = scene_transform(crs)
    with rasterio.open(image_path, "w", nodata=0, **_profile(width, height, 4, "uint16", crs, transform)) as ds:
        ds.write(img)
        for b, d in enumerate(("red", "green", "blue", "nir"), start=1):
            ds.set_band_description(b, d)
    with rasterio.open(label_path, "w", **_profile(width, height, 1, "uint32", crs, transform)) as ds:
        ds.write(labels, 1)
    labs = list(range(1, n + 1))
    return IndexSceneFiles(image_path, label_path, n, labs, [k for k in labs if k % 2 == 0])


# --------------------------------------------------------------------------
# large scene, written block by block


@dataclass(frozen=True)
class LargeSceneFiles:
    """Paths of a large generated scene and its number of objects."""

    image_path: Path
    label_path: Path
    n_objects: int


#: Cell of the jittered object grid of large scenes, px. Not a divisor of the
#: 512 px block, so that some objects straddle block (and chip) boundaries.
LARGE_CELL_PX = 80


def _large_cells(size: int, cell: int, seed: int) -> dict[str, np.ndarray]:
    """Per-cell object parameters (one object or none per cell), arrays of (ny, nx)."""
    rng = np.random.default_rng(seed)
    n = -(-size // cell)
    shape = (n, n)
    kind = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=shape, p=[0.1, 0.45, 0.45])
    hy = rng.uniform(4, cell / 2 - 4, size=shape)
    hx = rng.uniform(4, cell / 2 - 4, size=shape)
    iy, ix = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    # centre anywhere that keeps the object 2 px inside its cell
    cy = iy * cell + 2 + hy + rng.uniform(0, 1, size=shape) * (cell - 4 - 2 * hy)
    cx = ix * cell + 2 + hx + rng.uniform(0, 1, size=shape) * (cell - 4 - 2 * hx)
    # drop objects that would be cut by the scene edge (keeps every object >= MIN_OBJECT_PX)
    kind[(cy + hy + 1 > size) | (cx + hx + 1 > size)] = 0
    label = np.zeros(shape, dtype=np.uint32)
    present = kind != 0
    label[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    colours = object_colours(int(present.sum()), rng)
    return {"kind": kind, "cy": cy, "cx": cx, "hy": hy, "hx": hx, "label": label, "colour": colours[label]}


def _large_block(cells: dict[str, np.ndarray], cell: int, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """Labels (h, w) of the block with top-left (r0, c0), scene px."""
    yy = np.arange(r0, r0 + h, dtype=np.float64) + 0.5
    xx = np.arange(c0, c0 + w, dtype=np.float64) + 0.5
    iy = (yy // cell).astype(np.intp)[:, None]
    ix = (xx // cell).astype(np.intp)[None, :]
    kind = cells["kind"][iy, ix]
    dy = (yy[:, None] - cells["cy"][iy, ix]) / cells["hy"][iy, ix]
    dx = (xx[None, :] - cells["cx"][iy, ix]) / cells["hx"][iy, ix]
    inside = np.where(kind == 1, (np.abs(dy) <= 1) & (np.abs(dx) <= 1), (kind == 2) & (dy * dy + dx * dx <= 1))
    return np.where(inside, cells["label"][iy, ix], np.uint32(0)).astype(np.uint32)


def make_large_tiled_scene(
    path_image: str | Path,
    path_label: str | Path,
    size: int = 20000,
    block: int = 512,
    seed: int = 0,
    *,
    crs: str = "EPSG:32633",
    noise: int = 0,
    overviews: bool = False,
) -> LargeSceneFiles:
    """Write a ``size`` x ``size`` px RGB scene and its labels, one block at a time.

    Objects are rectangles and ellipses on a jittered ``LARGE_CELL_PX`` grid
    (at most one per cell, 8-36 px across), so many straddle the ``block`` px
    tile boundaries. Both files are tiled (``block`` x ``block``) deflate
    GeoTIFFs on the grid of :func:`scene_transform`. Peak memory is a few
    blocks plus the per-cell parameters (~6 arrays of (size / 80)^2), never
    the full raster. ``noise`` is the +/- amplitude (uint8 levels) of the image
    noise (default 0: flat colours, ~10 MB and ~20 s at 20000 px; 1 makes the file
    ~25x larger and the write ~4x slower). ``overviews`` builds 2-32x
    overviews of the image (slower to write, faster decimated reads).
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.windows import Window

    path_image, path_label = Path(path_image), Path(path_label)
    for p in (path_image, path_label):
        p.parent.mkdir(parents=True, exist_ok=True)
    cell = LARGE_CELL_PX
    cells = _large_cells(size, cell, seed)
    n = int(cells["label"].max())
    transform = scene_transform(crs)
    big = {"BIGTIFF": "IF_SAFER"}
    img_profile = _profile(size, size, 3, "uint8", crs, transform, block) | big | {"predictor": 2}
    lab_profile = _profile(size, size, 1, "uint32", crs, transform, block) | big
    base = np.array([78, 84, 58], dtype=np.int16)
    with (
        rasterio.open(path_image, "w", photometric="RGB", **img_profile) as dimg,
        rasterio.open(path_label, "w", **lab_profile) as dlab,
    ):
        dimg.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                h, w = min(block, size - r0), min(block, size - c0)
                lab = _large_block(cells, cell, r0, c0, h, w)
                win = Window(c0, r0, w, h)
                dlab.write(lab, 1, window=win)
                obj = lab != 0
                img = np.broadcast_to(base, (h, w, 3)).copy()
                if obj.any():
                    ys, xs = np.nonzero(obj)
                    img[ys, xs] = cells["colour"][(ys + r0) // cell, (xs + c0) // cell]
                if noise > 0:
                    brng = np.random.default_rng([seed, r0, c0])
                    img += brng.integers(-noise, noise + 1, size=img.shape, dtype=np.int16)
                dimg.write(np.moveaxis(np.clip(img, 0, 255).astype(np.uint8), -1, 0), window=win)
        if overviews:
            dimg.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    log.info("wrote %s and %s (%d x %d px, %d objects)", path_image, path_label, size, size, n)
    return LargeSceneFiles(image_path=path_image, label_path=path_label, n_objects=n)


def main(argv: list[str] | None = None) -> None:
    """Write example scenes: oracle scenes in EPSG:32633 and EPSG:4326, optionally a large one."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large-size", type=int, default=0, help="also write a large tiled scene of this size (px)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for crs in ("EPSG:32633", "EPSG:4326"):
        make_oracle_scene(args.out_dir, crs=crs, seed=args.seed)
    if args.large_size:
        make_large_tiled_scene(
            args.out_dir / f"large_{args.large_size}_image.tif",
            args.out_dir / f"large_{args.large_size}_labels.tif",
            size=args.large_size,
            seed=args.seed,
        )


if __name__ == "__main__":
    main()
