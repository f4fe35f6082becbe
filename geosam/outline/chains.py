"""Outlines cut into chains between nodes, so an edge two objects share is changed once, for both.

A vertex is a *node* where the set of objects having a vertex there changes along the ring (where a
shared edge starts or ends) or where three or more objects meet. A chain runs from node to node; the
chain two neighbours share has the same vertices in both, and is transformed in one canonical
direction, so both get the same result. A ring without nodes (an object alone, or an island filling
another's hole exactly) is one closed chain, canonically started at its smallest vertex.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

#: vertices this close (m) to a neighbour's edge are on it
SNAP_M = 1e-4

#: (coordinates, closed) -> new coordinates with the same end points (an open chain's ends are kept)
#: a chain's new coordinates at a retry level: ``fn(coords, closed, level)`` (see `transform_valid`)
LevelFn = Callable[[np.ndarray, bool, int], np.ndarray]

log = logging.getLogger(__name__)


@dataclass
class _Ring:
    geom: int
    part: int
    hole: int  # -1: the exterior
    coords: np.ndarray  # without the repeated last point
    pieces: list[tuple[bytes, bool]] = field(default_factory=list)  # (chain key, reversed)


def _rings(geoms: np.ndarray, idx: np.ndarray) -> Iterator[_Ring]:
    for i in idx:
        g = geoms[i]
        parts = list(g.geoms) if g.geom_type == "MultiPolygon" else [g]
        for k, p in enumerate(parts):
            yield _Ring(int(i), k, -1, np.asarray(p.exterior.coords)[:-1, :2])
            for h, ring in enumerate(p.interiors):
                yield _Ring(int(i), k, h, np.asarray(ring.coords)[:-1, :2])


def _canonical(c: np.ndarray, closed: bool) -> tuple[np.ndarray, bool]:
    """The chain in its canonical direction (and start, when closed); True when it was reversed."""
    if closed:
        start = int(np.lexsort((c[:, 1], c[:, 0]))[0])
        c = np.roll(c, -start, axis=0)
        rev = c[-1].tolist() < c[1].tolist() if len(c) > 2 else False
        return (np.vstack([c[:1], c[:0:-1]]) if rev else c), rev
    a, b = c[0].tolist(), c[-1].tolist()
    rev = b < a or (a == b and len(c) > 2 and c[-2].tolist() < c[1].tolist())
    return (c[::-1] if rev else c), rev


def node(geoms: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``geoms`` with every vertex of a touching neighbour that lies on an edge inserted into that edge.

    Traced outlines drop the vertices where they run straight on, so where a neighbour's outline turns
    away, only the neighbour has a vertex; inserted, both outlines have the same vertices along the edge
    they share (GEOS's snapping, within `SNAP_M`: a reprojected outline's vertices leave its neighbour's
    straight edge by ~1e-6 m).
    """
    out = np.array(geoms, dtype=object)
    if len(idx) < 2:
        return out
    sub = out[idx]
    a, b = shapely.STRtree(sub).query(sub, predicate="dwithin", distance=SNAP_M)  # reprojected: may overlap a hair
    a, b = a[a != b], b[a != b]
    if not len(a):
        return out
    for i in np.unique(a):
        own = {xy.tobytes() for xy in shapely.get_coordinates(sub[i])}
        cand = np.unique(shapely.get_coordinates(sub[b[a == i]]), axis=0)
        cand = cand[[xy.tobytes() not in own for xy in cand]]
        if not len(cand):
            continue
        edge = shapely.boundary(sub[i])
        shapely.prepare(edge)
        on = cand[shapely.dwithin(edge, shapely.points(cand), SNAP_M)]
        if len(on):
            out[idx[i]] = shapely.snap(sub[i], shapely.multipoints(on), SNAP_M)
    return out


def cut(geoms: np.ndarray, idx: np.ndarray) -> tuple[list[_Ring], dict[bytes, tuple[np.ndarray, bool]]]:
    """The rings of ``geoms[idx]`` as chains, and every distinct chain (canonical coordinates, closed) by key.

    The outlines are noded first (`node`), so neighbours' shared edges have the same vertices.
    """
    rings = list(_rings(node(geoms, idx), idx))
    owners: dict[tuple[float, float], set[int]] = {}
    for r in rings:
        for xy in map(tuple, r.coords.tolist()):
            owners.setdefault(xy, set()).add(r.geom)
    chains: dict[bytes, tuple[np.ndarray, bool]] = {}
    for r in rings:
        sets = [frozenset(owners[xy]) for xy in map(tuple, r.coords.tolist())]
        n = len(sets)
        nodes = [j for j in range(n) if len(sets[j]) >= 3 or sets[j] != sets[j - 1] or sets[j] != sets[(j + 1) % n]]
        if not nodes:
            pieces = [(r.coords, True)]
        else:
            pieces = [(r.coords[[(a + k) % n for k in range((b - a) % n + 1 if b != a else n + 1)]], False)
                      for a, b in zip(nodes, nodes[1:] + nodes[:1])]
        for c, closed in pieces:
            canon, rev = _canonical(c, closed)
            key = (b"c" if closed else b"o") + canon.tobytes()
            chains.setdefault(key, (canon, closed))
            r.pieces.append((key, rev))
    return rings, chains


def keys_of(rings: list[_Ring], geoms: set[int]) -> set[bytes]:
    """The chain keys of the objects ``geoms`` (indices into the original array)."""
    return {key for r in rings if r.geom in geoms for key, _ in r.pieces}


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Indices of the non-empty (multi)polygons of ``geoms``."""
    kind = shapely.get_type_id(geoms)
    return np.flatnonzero(((kind == 3) | (kind == 6)) & ~shapely.is_empty(geoms))


def transform_valid(geoms: Any, fn: LevelFn, what: str, attempts: int = 4) -> np.ndarray:
    """The polygons of ``geoms`` rebuilt from their chains transformed by ``fn``, every output valid.

    Each distinct chain is transformed once, so neighbours' shared edges change alike. The chains of
    objects that come out invalid (or empty) are transformed again one level higher (``fn(c, closed, 1)``,
    then 2, ...: a milder change, or the raw chain), for their neighbours too, up to ``attempts`` builds;
    an object still invalid then keeps its outline.

    Args:
        geoms: polygons in metres (others pass through unchanged).
        fn: the chain transformation at a retry level (0 first).
        what: what ``fn`` does, for the debug line about objects kept as they were.
        attempts: the most rebuilds.

    Returns:
        The transformed geometries, aligned with ``geoms``.
    """
    out = np.array(geoms, dtype=object)
    idx = polygonal(out)
    if not len(idx):
        return out
    rings, chains = cut(out, idx)
    level = dict.fromkeys(chains, 0)
    done = {k: fn(c, closed, 0) for k, (c, closed) in chains.items()}
    for _ in range(attempts):
        new = rebuild(rings, done, out, idx)
        ok = shapely.is_valid(new) & ~shapely.is_empty(new)
        if ok.all():
            break
        for k in keys_of(rings, set(idx[~ok].tolist())):
            level[k] += 1
            done[k] = fn(*chains[k], level[k])
    if not ok.all():
        log.debug("%d outlines kept as they were (%s, they were not valid)", int((~ok).sum()), what)
    out[idx[ok]] = new[ok]
    return out


def _ring_coords(r: _Ring, done: dict[bytes, np.ndarray]) -> np.ndarray:
    out: list[np.ndarray] = []
    for key, rev in r.pieces:
        c = done[key]
        if key[:1] == b"c":
            return np.vstack([c[:1], c[:0:-1]]) if rev else c
        c = c[::-1] if rev else c
        out.append(c[:-1])
    return np.vstack(out)


def rebuild(rings: list[_Ring], done: dict[bytes, np.ndarray], geoms: np.ndarray, idx: np.ndarray) -> np.ndarray:
    by_geom: dict[int, dict[int, list[Any]]] = {}
    for r in rings:
        parts = by_geom.setdefault(r.geom, {})
        parts.setdefault(r.part, [None])
        c = _ring_coords(r, done)
        if r.hole < 0:
            parts[r.part][0] = c
        else:
            parts[r.part].append(c)
    out = []
    for i in idx:
        polys = [shapely.Polygon(rs[0], rs[1:]) for _, rs in sorted(by_geom[int(i)].items())]
        out.append(polys[0] if geoms[i].geom_type == "Polygon" else shapely.MultiPolygon(polys))
    return np.array(out, dtype=object)


__all__ = ["LevelFn", "cut", "keys_of", "node", "polygonal", "rebuild", "transform_valid"]
