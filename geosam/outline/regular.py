"""Building regularisation: right angles along each building's dominant direction, fitted to the raw outline.

For each object, candidate regular shapes are built for a few dominant directions and simplification
levels: the outline is rotated so the direction is the x axis, simplified (Douglas-Peucker, vertex
indices kept), each simplified edge is snapped to the nearest allowed direction (0 / 90 degrees, and
45 / 135 with ``allow_45``), consecutive edges of one direction merge into a run, each run's line is
placed at the length-weighted mean position of the raw outline it replaces (least squares, so the
area it cuts off balances the area it adds), and the corners are where consecutive runs' lines meet.
The candidate closest to the raw outline (IoU, with a small price per vertex) wins; where none comes
within ``min_fit_iou`` of the raw outline, the object keeps its outline. Geometries are in metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

#: IoU with the raw outline a regular shape needs to replace it
MIN_FIT_IOU = 0.75
#: IoU a candidate gives up per extra vertex (prefers the simpler of two shapes that fit alike)
VERTEX_PRICE = 0.002
#: Douglas-Peucker tolerances of the candidates, as fractions of the square root of the object's area
TOLERANCES = (0.03, 0.05, 0.08, 0.12, 0.2)


def _dp(coords: np.ndarray, tol: float) -> list[int]:
    """Indices of the vertices Douglas-Peucker keeps on the open polyline ``coords`` (ends included)."""
    keep = [0, len(coords) - 1]
    stack = [(0, len(coords) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = coords[i], coords[j]
        seg = b - a
        pts = coords[i + 1:j] - a
        n = math.hypot(*seg)
        d = np.abs(seg[0] * pts[:, 1] - seg[1] * pts[:, 0]) / n if n > 0 else np.hypot(pts[:, 0], pts[:, 1])
        k = int(np.argmax(d))
        if d[k] > tol:
            m = i + 1 + k
            keep.append(m)
            stack += [(i, m), (m, j)]
    return sorted(set(keep))


def _ring_dp(ring: np.ndarray, tol: float) -> list[int]:
    """Kept vertex indices of a closed ring (``ring`` without the repeated last point), split at the
    vertex farthest from the first so both halves are open polylines."""
    far = int(np.argmax(np.hypot(*(ring - ring[0]).T)))
    closed = np.vstack([ring, ring[:1]])
    first = _dp(closed[: far + 1], tol)
    second = [far + k for k in _dp(closed[far:], tol)]
    return sorted({i % len(ring) for i in first + second})


def _directions(allow_45: bool) -> np.ndarray:
    return np.radians([0.0, 45.0, 90.0, 135.0] if allow_45 else [0.0, 90.0])


def _runs(ring: np.ndarray, kept: list[int], dirs: np.ndarray) -> list[tuple[int, list[int]]]:
    """(direction index, raw vertex indices of the chain) per run of equally snapped edges."""
    n = len(ring)
    runs: list[tuple[int, list[int]]] = []
    for a, b in zip(kept, kept[1:] + kept[:1]):
        v = ring[b] - ring[a]
        ang = math.atan2(v[1], v[0]) % math.pi
        diff = np.abs((ang - dirs + math.pi / 2) % math.pi - math.pi / 2)
        d = int(np.argmin(diff))
        chain = [(a + k) % n for k in range((b - a) % n + 1)]
        if runs and runs[-1][0] == d:
            runs[-1][1].extend(chain[1:])
        else:
            runs.append((d, chain))
    if len(runs) > 1 and runs[0][0] == runs[-1][0]:
        d, chain = runs.pop()
        runs[0] = (d, chain + runs[0][1][1:])
    return runs


def _line(ring: np.ndarray, chain: list[int], theta: float) -> tuple[np.ndarray, float]:
    """Unit normal and offset of the run's line: the length-weighted mean of ``normal . p`` along the chain."""
    normal = np.array([-math.sin(theta), math.cos(theta)])
    pts = ring[chain]
    seg = np.diff(pts, axis=0)
    w = np.hypot(seg[:, 0], seg[:, 1])
    mid = (pts[1:] + pts[:-1]) / 2 @ normal
    off = float((w * mid).sum() / w.sum()) if w.sum() > 0 else float(pts[0] @ normal)
    return normal, off


def _fit_ring(ring: np.ndarray, tol: float, allow_45: bool) -> np.ndarray | None:
    """A regular ring (axis-aligned frame) for the raw ``ring``, or None when it does not close."""
    dirs = _directions(allow_45)
    runs = _runs(ring, _ring_dp(ring, tol), dirs)
    if len(runs) < 4 or (not allow_45 and len(runs) % 2):
        return None
    lines = [_line(ring, chain, float(dirs[d])) for d, chain in runs]
    corners = []
    for (n1, o1), (n2, o2) in zip(lines, lines[1:] + lines[:1]):
        det = n1[0] * n2[1] - n1[1] * n2[0]
        if abs(det) < 1e-9:
            return None
        corners.append(((o1 * n2[1] - o2 * n1[1]) / det, (n1[0] * o2 - n2[0] * o1) / det))
    return np.array(corners)


def _rotate(coords: np.ndarray, theta: float, origin: np.ndarray) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    d = coords - origin
    return np.column_stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]]) + origin


def dominant_angles(poly: Any) -> list[float]:
    """Candidate dominant directions (radians, in [0, pi/2)) of a polygon: its minimum rotated
    rectangle's, and the length-weighted mean of its simplified edges' directions (modulo 90 degrees)."""
    out = []
    rect = np.asarray(shapely.minimum_rotated_rectangle(poly).exterior.coords)
    if len(rect) >= 3:
        v = rect[1] - rect[0]
        out.append(math.atan2(v[1], v[0]) % (math.pi / 2))
    ring = np.asarray(poly.exterior.coords)[:-1]
    if len(ring) >= 3:
        kept = ring[_ring_dp(ring, 0.05 * math.sqrt(poly.area))]
        seg = np.roll(kept, -1, axis=0) - kept
        w = np.hypot(seg[:, 0], seg[:, 1])
        a4 = 4 * np.arctan2(seg[:, 1], seg[:, 0])
        out.append((math.atan2((w * np.sin(a4)).sum(), (w * np.cos(a4)).sum()) / 4) % (math.pi / 2))
    uniq: list[float] = []
    for a in out:
        if all(abs((a - b + math.pi / 4) % (math.pi / 2) - math.pi / 4) > math.radians(0.5) for b in uniq):
            uniq.append(a)
    return uniq


def _iou(a: Any, b: Any) -> float:
    u = shapely.union(a, b).area
    return float(shapely.intersection(a, b).area / u) if u > 0 else 0.0


def _candidates(shell: Any, allow_45: bool) -> list[Any]:
    """Regular shapes for one polygon without holes."""
    origin = np.asarray(shell.centroid.coords[0])
    size = math.sqrt(shell.area)
    out = []
    for theta in dominant_angles(shell):
        ext = _rotate(np.asarray(shell.exterior.coords)[:-1], -theta, origin)
        for f in TOLERANCES:
            ring = _fit_ring(ext, f * size, allow_45)
            if ring is None:
                continue
            shape = shapely.Polygon(_rotate(ring, theta, origin))
            if shape.is_valid and shape.area > 0:
                out.append(shape)
    return out


def regularize_polygon(poly: Any, *, allow_45: bool = False, min_fit_iou: float = MIN_FIT_IOU) -> Any:
    """The regular shape that fits ``poly`` best, or ``poly`` itself when none fits.

    The exterior is fitted; holes are cut out of the fitted shape as they are.

    Args:
        poly: a Polygon or MultiPolygon in metres (each part is fitted on its own).
        allow_45: also allow edges at 45 degrees to the dominant direction.
        min_fit_iou: the IoU with ``poly``'s exterior a regular shape needs to replace it.

    Returns:
        A valid Polygon / MultiPolygon (the input when it is not polygonal or nothing fits).
    """
    if poly.is_empty or poly.geom_type not in ("Polygon", "MultiPolygon"):
        return poly
    if poly.geom_type == "MultiPolygon":
        parts = [regularize_polygon(p, allow_45=allow_45, min_fit_iou=min_fit_iou) for p in poly.geoms]
        out = shapely.MultiPolygon(parts)
        return out if out.is_valid else poly
    shell = shapely.Polygon(poly.exterior)
    if len(poly.exterior.coords) <= 5:  # a triangle or a quadrilateral: nothing to gain
        return poly
    best, best_score = None, -math.inf
    for cand in _candidates(shell, allow_45):
        iou = _iou(cand, shell)
        if iou < min_fit_iou:
            continue
        score = iou - VERTEX_PRICE * len(cand.exterior.coords)
        if score > best_score:
            best, best_score = cand, score
    if best is None or best.equals(shell):
        return poly
    if poly.interiors:
        best = best.difference(shapely.union_all([shapely.Polygon(h) for h in poly.interiors]))
        if best.geom_type != "Polygon" or not best.is_valid or best.is_empty:
            return poly
    return best


def regularize(geoms: Sequence[Any] | np.ndarray, *, allow_45: bool = False, min_fit_iou: float = MIN_FIT_IOU) -> np.ndarray:
    """`regularize_polygon` on every geometry (metres); returns an array aligned with ``geoms``."""
    return np.array([regularize_polygon(g, allow_45=allow_45, min_fit_iou=min_fit_iou) if g is not None else g
                     for g in geoms], dtype=object)


def corner_angles(poly: Any) -> np.ndarray:
    """Interior-side turning angles (degrees, 0..180) at every corner of a polygon's rings, after dropping
    vertices where the outline runs straight on (within 1 degree); 90 = right angle."""
    parts = list(poly.geoms) if poly.geom_type == "MultiPolygon" else [poly]
    out = []
    for p in parts:
        for ring in [p.exterior, *p.interiors]:
            c = np.asarray(ring.coords)[:-1]
            if len(c) < 3:
                continue
            a = c - np.roll(c, 1, axis=0)
            b = np.roll(c, -1, axis=0) - c
            ang = np.degrees(np.abs(np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], (a * b).sum(axis=1))))
            out.append(ang[ang > 1.0])
    return np.concatenate(out) if out else np.zeros(0)


def regular_share(polys: Sequence[Any], *, step_deg: float = 90.0, within_deg: float = 5.0) -> float:
    """Share of corners whose angle is within ``within_deg`` of a multiple of ``step_deg`` (NaN: no corner)."""
    angles = np.concatenate([corner_angles(p) for p in polys if p is not None and not p.is_empty] or [np.zeros(0)])
    if not len(angles):
        return math.nan
    off = np.abs((angles + step_deg / 2) % step_deg - step_deg / 2)
    return float((off <= within_deg).mean())


__all__ = ["corner_angles", "dominant_angles", "regular_share", "regularize", "regularize_polygon"]
