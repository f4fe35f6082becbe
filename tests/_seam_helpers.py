"""Seam checks shared by tests/test_seams.py and benchmarks/bench_seams.py.

Everything here works in **scene pixel coordinates** on an instance-label array (0 = background, k > 0 = object
k): scenes are label arrays (generated, or rasterised from the shipped label geometry), chips see the labels
through `geosam.testing.perturb_masks`, the stitcher's output is scored against the labels by `seam_counts`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geosam.assemble.result import ChipResult
from geosam.segment.base import ChipMasks
from geosam.testing import perturb_masks
from geosam.tile.grid import ChipSpec, iter_chip_specs

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# scenes


def _paint(lab: np.ndarray, mask: np.ndarray, r0: int, c0: int, k: int) -> bool:
    """Paint object ``k`` where ``mask`` (placed at r0, c0) lies on background; False if it would overlap."""
    h, w = mask.shape
    if r0 < 0 or c0 < 0 or r0 + h > lab.shape[0] or c0 + w > lab.shape[1]:
        return False
    sub = lab[r0 : r0 + h, c0 : c0 + w]
    if (sub[mask] != 0).any():
        return False
    sub[mask] = k
    return True


def _rotated_rect(length: float, width: float, angle: float) -> np.ndarray:
    half = 0.5 * math.hypot(length, width)
    n = math.ceil(2 * half) + 1
    y, x = np.mgrid[0:n, 0:n] + 0.5 - n / 2
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    m = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def building_labels(size_px: int = 2560, seed: int = 0, street_px: int = 14) -> np.ndarray:
    """A dense built-up scene: rows of buildings along streets, with small gaps, some touching.

    Buildings are 22-80 px wide and 20-56 px deep (rectangles, L shapes, and rotated rectangles), 1-5 px apart
    along a row; about one gap in six is 0 (the two buildings share a wall). Rows are ``street_px`` apart, and
    each row is offset at random, so buildings fall on every part of a chip grid. ~1600 buildings at 2560 px.

    Returns:
        uint32 (size_px, size_px) label array, objects 1..N, each one 4-connected component.
    """
    rng = np.random.default_rng(seed)
    lab = np.zeros((size_px, size_px), np.uint32)
    k = 0
    y = int(rng.integers(0, 20))
    while y < size_px - 20:
        depth = int(rng.integers(20, 57))
        x = int(rng.integers(0, 30))
        while x < size_px - 20:
            w = int(rng.integers(22, 81))
            kind = rng.random()
            if kind < 0.3:  # an empty lot
                x += w + int(rng.integers(1, 6))
                continue
            if kind < 0.75:
                m = np.ones((depth - int(rng.integers(0, 8)), w), bool)
            elif kind < 0.88:  # L shape
                m = np.ones((depth, w), bool)
                m[: depth // 2, w // 2 :] = False
                m = m[:, ::-1] if rng.random() < 0.5 else m
            else:  # rotated, fitting the lot
                m = _rotated_rect(w * 0.8, depth * 0.7, float(rng.uniform(-0.6, 0.6)))
            if _paint(lab, m, y + int(rng.integers(0, max(depth - m.shape[0], 0) + 1)), x, k + 1):
                k += 1
            touching = rng.random() < 1 / 6 and kind < 0.88
            x += m.shape[1] + (0 if touching else int(rng.integers(1, 6)))
        y += depth + street_px + int(rng.integers(0, 6))
    return lab


def rasterised_labels(vector: str, raster: str) -> np.ndarray:
    """The shipped label geometry ``vector`` (data/…) burnt on the grid of ``raster``: objects 1..N in file order.

    The fields' GeoJSON holds the Albers raster's metres under a WGS 84 label (GeoJSON cannot name the projection),
    so its CRS is taken to be the raster's, as in notebooks/seams.ipynb.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    with rasterio.open(ROOT / raster) as ds:
        shape, transform, crs = (ds.height, ds.width), ds.transform, ds.crs
    gdf = gpd.read_file(ROOT / vector)
    gdf = gdf.set_crs(crs, allow_override=True) if "albers" in raster else gdf.to_crs(crs)
    pairs = [(g, i + 1) for i, g in enumerate(gdf.geometry)]
    return rasterize(pairs, out_shape=shape, transform=transform, fill=0, dtype="uint32")


# ---------------------------------------------------------------------------
# chips


def scene_specs(labels: np.ndarray, chip_px: int, overlap_px: int) -> list[ChipSpec]:
    """The chip grid of a label array (identity transform: map = scene pixel coordinates)."""
    h, w = labels.shape
    return list(iter_chip_specs("labels", w, h, Affine.identity(), "", chip_px, overlap_px))


def noisy_chip_results(labels: np.ndarray, specs: Sequence[ChipSpec], seed: int = 0,
                       **noise: Any) -> list[ChipResult]:
    """What every chip of ``specs`` sees of ``labels``: one mask per object, perturbed by `perturb_masks`.

    The noise of a chip depends only on ``seed`` and its (row, col), as `geosam.testing.NoisyOracleMaskGenerator`.
    """
    out = []
    for s in specs:
        sub = labels[s.window.slices()]
        ids = np.unique(sub[sub > 0])
        masks = sub[None] == ids[:, None, None]
        if ids.size and any(noise.get(k) for k in ("radius_px", "shift_px", "edge_cut_px")):
            rng = np.random.default_rng([seed, s.row, s.col])
            masks = perturb_masks(masks, rng, cut_edges=s.edges_inside_scene(), **noise)
        ones = np.ones(ids.size, np.float32)
        out.append(ChipResult.from_masks(s.chip_id, s.window, ChipMasks(masks, ones, ones)))
    return out


def stitch(specs: Sequence[ChipSpec], results: Iterable[ChipResult], **kwargs: Any) -> list[Any]:
    """Stitch chip results (in grid order) with `geosam.assemble.stitch.Stitcher`; every object."""
    from geosam.assemble.stitch import Stitcher

    st = Stitcher(specs, **kwargs)
    objs = []
    for s, r in zip(specs, results):
        st.add(s, r)
        objs.extend(st.pop_finished())
    return objs + st.pop_finished(final=True)


# ---------------------------------------------------------------------------
# scores


def object_masks(objs: Iterable[Any]) -> list[tuple[np.ndarray, tuple[int, int, int, int], int]]:
    """(bool mask, (col_off, row_off, width, height), polygon parts) per stitched object."""
    out = []
    for o in objs:
        g = o.geom_px
        parts = len(g.geoms) if g.geom_type == "MultiPolygon" else 1
        b = o.bbox
        out.append((o.mask, (b.col_off, b.row_off, b.width, b.height), parts))
    return out


def _has_block(m: np.ndarray) -> bool:
    """Does ``m`` hold a 2 x 2 block of pixels (an overlap more than a pixel wide in both directions)?"""
    return bool((m[1:, 1:] & m[:-1, 1:] & m[1:, :-1] & m[:-1, :-1]).any())


def overlapping_pairs(objs: Sequence[tuple[np.ndarray, tuple[int, int, int, int], int]],
                      same_object: np.ndarray | None = None) -> int:
    """Pairs of objects whose pixels overlap by more than a pixel's width (a 2 x 2 block in common).

    With ``same_object`` (the truth label each object mostly covers), only pairs of one label are counted:
    duplicates.
    """
    boxes = np.array([b for _, b, _ in objs], dtype=np.int64).reshape(-1, 4)
    c0, r0 = boxes[:, 0], boxes[:, 1]
    c1, r1 = c0 + boxes[:, 2], r0 + boxes[:, 3]
    n = 0
    for i in range(len(objs)):
        hit = (c0[i + 1 :] < c1[i]) & (c1[i + 1 :] > c0[i]) & (r0[i + 1 :] < r1[i]) & (r1[i + 1 :] > r0[i])
        for j in np.flatnonzero(hit) + i + 1:
            if same_object is not None and same_object[i] != same_object[j]:
                continue
            x0, y0 = max(c0[i], c0[j]), max(r0[i], r0[j])
            x1, y1 = min(c1[i], c1[j]), min(r1[i], r1[j])
            a = objs[i][0][y0 - r0[i] : y1 - r0[i], x0 - c0[i] : x1 - c0[i]]
            b = objs[j][0][y0 - r0[j] : y1 - r0[j], x0 - c0[j] : x1 - c0[j]]
            n += _has_block(a & b)
    return n


def truth_parts(labels: np.ndarray) -> np.ndarray:
    """4-connected components per label (index = label), as polygonising the truth would give."""
    from scipy import ndimage

    out = np.zeros(int(labels.max()) + 1, np.int64)
    for k, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is not None:
            out[k] = ndimage.label(labels[sl] == k)[1]
    return out


def seam_counts(objs: Sequence[tuple[np.ndarray, tuple[int, int, int, int], int]],
                labels: np.ndarray) -> dict[str, Any]:
    """Score stitched objects against the truth ``labels``.

    Each object (each polygon part counts) belongs to the truth object it covers most. A truth object is
    *whole* when polygons belong to it with no more parts than it has itself (one, but for a few real footprints
    that rasterise into two) and merge nothing; *split* when they have more; *missing* when none. A polygon is *merged* when it covers at least half of two or more
    truth objects. *Extra polygons* = polygons beyond one per truth object found. *Duplicates* = pairs of
    polygons of one truth object overlapping by more than a pixel's width; *overlaps* = any such pairs.
    """
    n_truth = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n_truth + 1)
    expected = truth_parts(labels)
    present = np.flatnonzero(area[1:]) + 1
    owner = np.zeros(len(objs), np.int64)
    parts_of = np.zeros(n_truth + 1, np.int64)
    merged_into = np.zeros(n_truth + 1, bool)
    n_merged = 0
    for i, (m, (c, r, w, h), parts) in enumerate(objs):
        under = labels[r : r + h, c : c + w][m]
        cnt = np.bincount(under, minlength=n_truth + 1)
        cnt[0] = 0
        owner[i] = int(np.argmax(cnt)) if cnt.any() else 0
        parts_of[owner[i]] += parts
        covered = np.flatnonzero(cnt[1:] * 2 >= area[1:]) + 1
        if covered.size >= 2:
            n_merged += 1
            merged_into[covered] = True
    whole = (parts_of[present] >= 1) & (parts_of[present] <= expected[present]) & ~merged_into[present]
    found = parts_of[present] >= 1
    return {
        "objects": int(present.size),
        "whole": int(whole.sum()),
        "whole_pct": round(100.0 * float(whole.sum()) / max(present.size, 1), 2),
        "split": int((parts_of[present] > expected[present]).sum()),
        "missing": int((~found).sum()),
        "extra_polygons": int(np.maximum(parts_of[present] - expected[present], 0).sum() + parts_of[0]),
        "merged": n_merged,
        "duplicates": overlapping_pairs(objs, owner),
        "overlaps": overlapping_pairs(objs),
    }
