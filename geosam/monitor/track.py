"""Objects tracked across dates: one-to-one matching of consecutive dates' objects by overlap.

Rule, for each pair of consecutive dates (A the earlier objects, B the later ones, both in one CRS):

1. **Match**: pairs (a, b) are ranked by IoU (intersection area / union area), highest first, and taken
   greedily while both are unmatched and ``IoU >= match_iou`` (default 0.3): a one-to-one matching.
   A matched b continues a's ``track_id``.
2. **Split**: an a of which two or more b lie mostly inside (``area(a & b) >= cover_fraction * area(b)``,
   default 0.5): those b have status ``split`` (the matched one keeps a's track, the others start new tracks).
3. **Merged**: a b that holds two or more a mostly inside (``area(a & b) >= cover_fraction * area(a)``):
   status ``merged`` (b keeps the track of its match, if any; the other parts' tracks end there).
4. Otherwise a matched b is ``persisted``, an unmatched b ``appeared`` (a new track), and an unmatched a
   that is not part of a merge ``vanished``: its track gets a row at date B without geometry.

At the first date every object is ``appeared``. Areas are true areas in square metres
(`geosam.geo.area_m2`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosam.geo import area_m2

Arr = np.ndarray

PERSISTED, APPEARED, VANISHED, SPLIT, MERGED = "persisted", "appeared", "vanished", "split", "merged"
TRACK_STATUSES = (PERSISTED, APPEARED, VANISHED, SPLIT, MERGED)


@dataclass(frozen=True)
class Match:
    """The outcome for the later date of one pair: per B object its status and the A object it continues (-1)."""

    status: Arr  # (len(B),) object
    parent: Arr  # (len(B),) int64: index in A whose track B continues, -1 for a new track
    vanished: Arr  # indices in A whose track ends without successor (vanished)


def match_dates(a: Arr, b: Arr, match_iou: float = 0.3, cover_fraction: float = 0.5) -> Match:
    """Match two dates' geometries (same CRS) by the module's rule."""
    import shapely

    status = np.full(len(b), APPEARED, dtype=object)
    parent = np.full(len(b), -1, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return Match(status, parent, np.arange(len(a)))
    ib, ia = shapely.STRtree(a).query(b, predicate="intersects")
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    area_a, area_b = shapely.area(a), shapely.area(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area_a[ia] + area_b[ib] - inter)
    matched_a = np.full(len(a), False)
    for k in np.argsort(-iou, kind="stable"):
        if not iou[k] >= match_iou:
            break
        if matched_a[ia[k]] or parent[ib[k]] >= 0:
            continue
        matched_a[ia[k]] = True
        parent[ib[k]] = ia[k]
    status[parent >= 0] = PERSISTED
    b_in_a = inter >= cover_fraction * area_b[ib]
    kids = np.bincount(ia[b_in_a], minlength=len(a))
    status[np.unique(ib[b_in_a & (kids[ia] >= 2)])] = SPLIT
    a_in_b = inter >= cover_fraction * area_a[ia]
    parts = np.bincount(ib[a_in_b], minlength=len(b))
    merged_b = parts >= 2
    status[merged_b] = MERGED
    in_merge = np.zeros(len(a), dtype=bool)
    in_merge[ia[a_in_b & merged_b[ib]]] = True
    return Match(status, parent, np.flatnonzero(~matched_a & ~in_merge))


def track_objects(frames: Sequence[Any], dates: Sequence[dt.date], match_iou: float = 0.3,
                  cover_fraction: float = 0.5) -> Any:
    """Track the objects of several dates.

    Args:
        frames: one GeoDataFrame per date (oldest first), all with a CRS.
        dates: their dates.
        match_iou / cover_fraction: the matching rule's thresholds (module docstring).

    Returns:
        A GeoDataFrame in the first frame's CRS, one row per object and date plus one per vanished track:
        ``track_id`` (from 1), ``date`` (``YYYY-MM-DD``), ``object`` (row position in that date's frame; -1 for
        vanished), ``status``, ``area_m2`` (0 for vanished) and the geometry (None for vanished).
    """
    import geopandas as gpd

    crs = frames[0].crs
    rows: list[tuple[int, str, int, str, float, Any]] = []
    prev_geoms: Arr | None = None
    prev_tracks = np.zeros(0, dtype=np.int64)
    next_id = 1
    for frame, date in zip(frames, dates):
        geoms = np.asarray(frame.to_crs(crs).geometry.values, dtype=object)
        areas = area_m2(list(geoms), crs)
        if prev_geoms is None:
            m = Match(np.full(len(geoms), APPEARED, dtype=object), np.full(len(geoms), -1), np.zeros(0, np.int64))
        else:
            m = match_dates(prev_geoms, geoms, match_iou, cover_fraction)
        tracks = np.where(m.parent >= 0, prev_tracks[np.maximum(m.parent, 0)] if len(prev_tracks) else 0, 0)
        new = m.parent < 0
        tracks[new] = np.arange(next_id, next_id + int(new.sum()))
        next_id += int(new.sum())
        label = date.isoformat()
        rows.extend((int(tracks[k]), label, k, str(m.status[k]), float(areas[k]), geoms[k]) for k in range(len(geoms)))
        rows.extend((int(prev_tracks[k]), label, -1, VANISHED, 0.0, None) for k in m.vanished)
        prev_geoms, prev_tracks = geoms, tracks.astype(np.int64)
    cols = ["track_id", "date", "object", "status", "area_m2", "geometry"]
    table = gpd.GeoDataFrame(dict(zip(cols, map(list, zip(*rows)))) if rows else {c: [] for c in cols},
                             geometry="geometry", crs=crs)
    return table.sort_values(["track_id", "date"], kind="stable").reset_index(drop=True)


def track_summary(tracks: Any) -> Any:
    """Per track: ``first_date``, ``last_date`` (where present), ``n_dates``, ``area_first_m2``,
    ``area_last_m2``, ``area_change_m2`` and ``area_ratio`` (last / first), and the last ``status``."""
    present = tracks[tracks["object"] >= 0]
    g = present.groupby("track_id", sort=True)
    out = g.agg(first_date=("date", "first"), last_date=("date", "last"), n_dates=("date", "size"),
                area_first_m2=("area_m2", "first"), area_last_m2=("area_m2", "last"))
    out["area_change_m2"] = out["area_last_m2"] - out["area_first_m2"]
    out["area_ratio"] = out["area_last_m2"] / out["area_first_m2"]
    out["last_status"] = tracks.groupby("track_id", sort=True)["status"].last()
    return out.reset_index()


__all__ = ["TRACK_STATUSES", "Match", "match_dates", "track_objects", "track_summary"]
