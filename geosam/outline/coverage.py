"""Simplification that keeps neighbours neighbours, and hole filling; geometries in metres.

Outlines are cut into chains between nodes (`geosam.outline.chains`), so an edge two objects share is
simplified once and both keep the same edge: no gaps, no slivers. Each chain is simplified with
Douglas-Peucker, whose tolerance is a distance (no input vertex ends farther than it from the output),
unlike GEOS's coverage simplification (`shapely.coverage_simplify`, Visvalingam-Whyatt, whose tolerance is
the square root of a triangle's area: at half a pixel it leaves a pixel staircase in place).
"""

from __future__ import annotations

import numpy as np
import shapely

from geosam.outline.chains import polygonal, transform_valid
from geosam.outline.regular import _dp, _ring_dp

#: a vertex is a staircase step when one of its edges is at most this many pixels long
STEP_EDGE = 1.5


def overlapping(geoms: np.ndarray) -> np.ndarray:
    """Indices (into ``geoms``) of the objects whose interior overlaps another object's interior."""
    if len(geoms) < 2:
        return np.zeros(0, dtype=np.int64)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    if not len(a):
        return np.zeros(0, dtype=np.int64)
    inner = shapely.relate_pattern(geoms[a], geoms[b], "2********")
    return np.unique(np.concatenate([a[inner], b[inner]]))


def _turns(pts: np.ndarray) -> np.ndarray:
    """Sign of the turn at each interior point of ``pts`` (+1 left, -1 right, 0 straight); 0 at the two ends."""
    a, b = pts[1:-1] - pts[:-2], pts[2:] - pts[1:-1]
    return np.concatenate([[0.0], np.sign(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), [0.0]])


def cut_steps(c: np.ndarray, closed: bool, step_m: float) -> np.ndarray:
    """A pixel staircase's steps cut: the two corners of a *riser* (an edge of at most 1.5 ``step_m`` between a left
    and a right turn) become the midpoints of their edges, i.e. the line through the pixel edges' midpoints that
    marching squares traces. Corners of a rectangle (turns alike), long edges and an open chain's ends stay."""
    if step_m <= 0 or len(c) < 3:
        return c
    pts = np.vstack([c[-2:], c, c[:2]]) if closed else c
    turn = _turns(pts)
    seg = np.hypot(*np.diff(pts, axis=0).T)  # seg[k]: from point k to k + 1
    short = seg <= STEP_EDGE * step_m
    riser = short & (turn[:-1] * turn[1:] < 0)  # edge k joins a left and a right turn
    lo, hi = (2, len(pts) - 2) if closed else (1, len(pts) - 1)
    out = [] if closed else [c[0]]
    for k in range(lo, hi):
        v = pts[k]
        if riser[k - 1] or riser[k]:
            out.append((pts[k - 1] + v) / 2)
            out.append((v + pts[k + 1]) / 2)
        else:
            out.append(v)
    if not closed:
        out.append(c[-1])
    res = np.array(out)
    keep = np.concatenate([[True], np.any(np.diff(res, axis=0) != 0, axis=1)])  # drop repeated points
    return res[keep]


def _dp_chain(c: np.ndarray, closed: bool, tol: float, step_m: float) -> np.ndarray:
    """One chain simplified by Douglas-Peucker (an open chain keeps its ends; a closed one at least 3 vertices)."""
    c2 = cut_steps(c, closed, step_m)
    if closed:
        if len(c2) > 1 and not np.any(c2[-1] != c2[0]):
            c2 = c2[:-1]
        kept = _ring_dp(c2, tol) if len(c2) > 3 else list(range(len(c2)))
        return c2[kept] if len(kept) >= 3 else c
    return c2[_dp(c2, tol)]


def simplify(geoms: np.ndarray, tolerance_m: float, step_m: float = 0.0) -> np.ndarray:
    """Simplified outlines: no vertex of an input outline farther than ``tolerance_m`` from the output's,
    an edge that neighbours share simplified once for both, every output valid.

    Douglas-Peucker runs on each chain between nodes (`geosam.outline.chains`); an object whose
    simplified outline is not valid gets its chains simplified again at half the tolerance (its
    neighbours' shared edges with it too), and after three halvings keeps its outline.

    Args:
        geoms: polygons in metres (others pass through unchanged).
        tolerance_m: the largest distance (m) between an input vertex and the simplified outline.
        step_m: the pixel size of outlines traced from masks (0: none); their staircase's corners are cut
            first (`cut_steps`), so distances count from the line through the pixel edges' midpoints.

    Returns:
        The simplified geometries, aligned with ``geoms``.
    """
    if tolerance_m <= 0:
        return np.array(geoms, dtype=object)

    def chain(c: np.ndarray, closed: bool, level: int) -> np.ndarray:
        # a failed object's chains: half the tolerance, at most three times, then the raw chain
        return _dp_chain(c, closed, tolerance_m / 2**level, step_m) if level < 3 else c

    return transform_valid(geoms, chain, "simplified")


def fill_holes(geoms: np.ndarray, max_hole_m2: float) -> np.ndarray:
    """Outlines without their holes smaller than ``max_hole_m2`` (square metres).

    A hole filled in one object leaves any object inside that hole as it is (it then overlaps the
    filled object, as a tree inside a field would).
    """
    out = np.array(geoms, dtype=object)
    if max_hole_m2 <= 0:
        return out
    for i in polygonal(out):
        g = out[i]
        parts = list(g.geoms) if g.geom_type == "MultiPolygon" else [g]
        if not any(len(p.interiors) for p in parts):
            continue
        kept = [shapely.Polygon(p.exterior, [h for h in p.interiors if shapely.Polygon(h).area >= max_hole_m2])
                for p in parts]
        res = kept[0] if len(kept) == 1 else shapely.MultiPolygon(kept)
        out[i] = res if res.is_valid else shapely.union_all(kept)  # a part inside a filled hole
    return out


__all__ = ["cut_steps", "fill_holes", "overlapping", "simplify"]
