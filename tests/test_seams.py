"""Seams under per-chip mask noise: the stitcher joins what one object is, keeps touching objects apart, and never
gives two polygons the same pixels (the exact, noise-free tests are in test_stitch.py and test_oracle.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize

from geosam.assemble.ownership import drop_slivers
from geosam.assemble.seams import tolerant_agreement
from geosam.assemble.stitch import Stitcher
from geosam.config import SegmentConfig
from geosam.errors import ConfigError
from geosam.modes.everything import segment_scene
from geosam.segment.base import ChipMasks
from geosam.testing import NoisyOracleMaskGenerator, OracleMaskGenerator, perturb_masks
from geosam.tile.grid import iter_chip_specs
from tests._seam_helpers import (
    building_labels,
    noisy_chip_results,
    object_masks,
    overlapping_pairs,
    rasterised_labels,
    scene_specs,
    seam_counts,
    stitch,
)
from tests.data.make_scenes import make_oracle_scene


@pytest.fixture(scope="module")
def town() -> np.ndarray:
    """~200 buildings, 1-5 px apart, one gap in six closed (shared walls)."""
    return building_labels(size_px=900, seed=3)


@pytest.fixture(scope="module")
def pan() -> np.ndarray:
    """The 43 real footprints of data/solaris_pan_buildings.geojson on the 900 px, 0.5 m scene."""
    return rasterised_labels("data/solaris_pan_buildings.geojson", "data/solaris_pan_uint16.tif")


def _counts(labels: np.ndarray, chip: int, overlap: int, seeds: range, **noise) -> dict[str, float]:
    specs = scene_specs(labels, chip, overlap)
    total: dict[str, float] = {}
    for seed in seeds:
        objs = stitch(specs, noisy_chip_results(labels, specs, seed=seed, **noise))
        for k, v in seam_counts(object_masks(objs), labels).items():
            total[k] = total.get(k, 0) + v
    total["whole_pct"] = 100.0 * total["whole"] / total["objects"]
    return total


# ---------------------------------------------------------------------------
# the noise model


def _square(n: int = 40) -> np.ndarray:
    m = np.zeros((1, n, n), bool)
    m[0, 10:30, 10:30] = True
    return m


def test_perturb_masks_moves_outlines_in_and_out() -> None:
    m = _square()
    assert np.array_equal(perturb_masks(m, np.random.default_rng(0), radius_px=0), m)
    sizes = {int(perturb_masks(m, np.random.default_rng(s), radius_px=2).sum()) for s in range(40)}
    assert min(sizes) < 400 < max(sizes) and 400 in sizes  # eroded, dilated and untouched all occur
    assert min(sizes) >= 16 * 16 and max(sizes) <= 24 * 24


def test_perturb_masks_keeps_chip_edges_and_cuts_them_on_request() -> None:
    m = np.zeros((1, 30, 30), bool)
    m[0, 10:20, 20:] = True  # runs out of the chip on the right
    for s in range(20):
        out = perturb_masks(m, np.random.default_rng(s), radius_px=2)
        assert out[0, 12:18, -1].all()  # erosion does not eat the chip edge: the object goes on there
    cut = [perturb_masks(m, np.random.default_rng(s), radius_px=0, edge_cut_px=3, cut_edges=(False, False, True, False))
           for s in range(20)]
    assert any(not c[0, :, -1].any() for c in cut)
    assert all(c[0, :, :27].sum() == m[0, :, :27].sum() for c in cut)  # only within 3 px of the right edge


def test_perturb_masks_disjoint_and_shifts() -> None:
    m = np.zeros((2, 30, 30), bool)
    m[0, 5:25, 5:15] = True
    m[1, 5:25, 15:25] = True  # shares an edge with mask 0
    for s in range(20):
        out = perturb_masks(m, np.random.default_rng(s), radius_px=3, shift_px=2)
        assert not (out[0] & out[1]).any()
    loose = [perturb_masks(m, np.random.default_rng(s), radius_px=3, disjoint=False) for s in range(20)]
    assert any((o[0] & o[1]).any() for o in loose)


def test_noisy_oracle_is_per_chip_and_reproducible(tmp_path: Path) -> None:
    scene = make_oracle_scene(tmp_path, width=400, height=300, n_objects=15, seed=2)
    noisy = NoisyOracleMaskGenerator(scene.label_path, radius_px=2, seed=5)
    again = NoisyOracleMaskGenerator(scene.label_path, radius_px=2, seed=5)
    exact = OracleMaskGenerator(scene.label_path)
    from geosam.read.scene import Scene

    with Scene(scene.image_path) as sc:
        chips = [sc.read_chip(s) for s in sc.chip_specs(256, 64)]
    differs = 0
    for c in chips:
        m, labels = noisy.generate_with_labels(c)
        e, elabels = exact.generate_with_labels(c)
        np.testing.assert_array_equal(labels, elabels)
        np.testing.assert_array_equal(m.masks, again.generate(c).masks)
        differs += int((m.masks != e.masks).any())
    assert differs >= 2
    with pytest.raises(ConfigError, match="radius_px=-1"):
        NoisyOracleMaskGenerator(scene.label_path, radius_px=-1)


# ---------------------------------------------------------------------------
# the rule, piece by piece


def _two_chips():
    """Two chips side by side (cols 0..99 and 60..159, overlap 40 px; cores split at column 80)."""
    return list(iter_chip_specs("mem.tif", 160, 100, Affine.identity(), "", 100, 40))


def _masks(spec, *rects: tuple[int, int, int, int]) -> ChipMasks:
    """Chip-frame masks of scene rectangles (c0, c1, r0, r1), one per rectangle."""
    m = np.zeros((len(rects), spec.window.height, spec.window.width), bool)
    for i, (c0, c1, r0, r1) in enumerate(rects):
        m[i, r0:r1, max(c0 - spec.window.col_off, 0) : max(c1 - spec.window.col_off, 0)] = True
    return ChipMasks(m, np.ones(len(rects)), np.ones(len(rects)))


def test_sliver_that_fails_iou_is_joined() -> None:
    """The object enters the left chip by 4 px (cols 96..99); the left chip draws 6 px of it, the right 2 px."""
    left, right = _two_chips()
    for tolerance, n in ((6, 1), (0, 2)):
        st = Stitcher([left, right], seam_tolerance_px=tolerance)
        st.add(left, _masks(left, (94, 100, 30, 70)))
        st.add(right, _masks(right, (98, 150, 32, 68)))  # IoU in the strip: 2 * 36 / (6 * 40) = 0.3
        objs = st.pop_finished(final=True)
        assert len(objs) == n
    st = Stitcher([left, right])
    st.add(left, _masks(left, (94, 100, 30, 70)))
    st.add(right, _masks(right, (98, 150, 32, 68)))
    (o,) = st.pop_finished(final=True)
    assert o.n_chips == 2 and o.geom_px.geom_type == "Polygon"
    # the right chip's core (cols 80..) decides: its outline, not the left chip's wider one
    assert o.geom_px.bounds == (98, 32, 150, 68)


def test_sliver_without_common_pixels_is_joined() -> None:
    """The left chip sees 2 px at its edge (cols 98, 99); the right chip's view starts at col 101."""
    left, right = _two_chips()
    st = Stitcher([left, right])
    st.add(left, _masks(left, (98, 100, 30, 70)))
    st.add(right, _masks(right, (101, 150, 30, 70)))
    (o,) = st.pop_finished(final=True)
    assert o.geom_px.bounds == (101, 30, 150, 70)  # the sliver lies in the right chip's core: its view


def test_touching_objects_stay_apart_under_noise() -> None:
    """Two objects share an edge at col 90, inside the strip; each chip puts that edge up to 6 px off."""
    left, right = _two_chips()
    for d_left, d_right in ((3, -3), (-3, 3), (6, -6), (-6, 6), (2, 2)):
        st = Stitcher([left, right])
        st.add(left, _masks(left, (20, 90 + d_left, 30, 70), (90 + d_left, 100, 30, 70)))
        st.add(right, _masks(right, (60, 90 + d_right, 30, 70), (90 + d_right, 150, 30, 70)))
        objs = sorted(st.pop_finished(final=True), key=lambda o: o.geom_px.bounds)
        assert len(objs) == 2, (d_left, d_right)
        a, b = (o.geom_px for o in objs)
        assert a.bounds[0] == 20 and b.bounds[2] == 150
        assert a.geom_type == b.geom_type == "Polygon"
        assert a.intersection(b).area == 0
        assert a.bounds[2] == b.bounds[0] == 90 + d_right  # the edge where the right chip, owning col 80 on, puts it


def test_pieces_left_apart_do_not_share_pixels() -> None:
    """Views too far apart to be joined stay two objects, and each chip keeps its own core's pixels."""
    left, right = _two_chips()
    st = Stitcher([left, right], match_iou=0.9, seam_tolerance_px=0)
    st.add(left, _masks(left, (40, 100, 30, 70)))
    st.add(right, _masks(right, (78, 150, 30, 70)))  # IoU in the strip: 22 / 40
    a, b = sorted((o.geom_px for o in st.pop_finished(final=True)), key=lambda g: g.bounds)
    assert a.bounds == (40, 30, 80, 70)  # the left view, up to the left core's end (col 80)
    assert b.bounds == (80, 30, 150, 70)  # the right view, less cols 78, 79: the left core, where the left chip
    assert a.intersection(b).area == 0  # ... has its own object


def test_tolerant_agreement_and_slivers() -> None:
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.zeros((20, 20), bool)
    b[7:13, 7:13] = True
    assert tolerant_agreement(a, b, 2) == 1.0
    assert tolerant_agreement(a, b, 1) < 1.0
    m = np.zeros((30, 30), bool)
    m[5:25, 5:20] = True
    m[5:25, 22:25] = True  # a 3 px sliver, 2 px off the body
    everywhere = np.ones_like(m)
    assert drop_slivers(m, 6, everywhere).sum() == 20 * 15
    assert drop_slivers(m, 1, everywhere) is m  # 3 px is thicker than 1 + 1: not a sliver at this tolerance
    assert drop_slivers(m, 0, everywhere) is m
    undisputed = everywhere.copy()
    undisputed[5:25, 22:25] = False  # every chip seeing it holds it: a part of the object, not a sliver
    assert drop_slivers(m, 6, undisputed) is m


# ---------------------------------------------------------------------------
# whole / split / merged counts


def test_perfect_masks_unchanged(town: np.ndarray) -> None:
    specs = scene_specs(town, 256, 32)
    chips = noisy_chip_results(town, specs)
    tolerant = stitch(specs, chips)
    iou_only = stitch(specs, chips, seam_tolerance_px=0)
    assert len(tolerant) == len(iou_only) == int(town.max())
    for a, b in zip(tolerant, iou_only):
        assert a.geom_px.equals(b.geom_px) and a.chips == b.chips
    assert seam_counts(object_masks(tolerant), town)["whole"] == int(town.max())


@pytest.mark.parametrize(("radius", "min_whole_pct"), [(2, 99.5), (3, 99.0)])
def test_generated_buildings_under_noise(town: np.ndarray, radius: int, min_whole_pct: float) -> None:
    c = _counts(town, 256, 32, range(2), radius_px=radius)
    assert c["objects"] >= 2 * 150
    assert c["whole_pct"] >= min_whole_pct, c
    assert c["merged"] == 0 and c["missing"] == 0
    assert c["duplicates"] == 0 and c["overlaps"] == 0, "two polygons share more than a pixel's width"


def test_real_footprints_under_noise(pan: np.ndarray) -> None:
    c = _counts(pan, 128, 32, range(3), radius_px=2)
    assert c["objects"] == 3 * 43
    assert c["whole_pct"] >= 97.5, c  # 128 px chips: each footprint is cut by a seam or two
    assert c["merged"] == 0 and c["duplicates"] == 0 and c["overlaps"] == 0


def test_real_fields_under_shift_and_edge_cut() -> None:
    fields = rasterised_labels("data/solaris_albers_fields.geojson", "data/solaris_albers.tif")
    c = _counts(fields, 128, 32, range(2), radius_px=1, shift_px=1, edge_cut_px=3)
    assert c["objects"] == 2 * 19
    assert c["whole_pct"] >= 97, c
    assert c["merged"] == 0 and c["duplicates"] == 0 and c["overlaps"] == 0


def test_old_rule_leaves_duplicates(town: np.ndarray) -> None:
    """The same noise with rule 1 alone (IoU): what the tolerant rule is for."""
    specs = scene_specs(town, 256, 32)
    objs = stitch(specs, noisy_chip_results(town, specs, seed=0, radius_px=3), seam_tolerance_px=0)
    c = seam_counts(object_masks(objs), town)
    assert c["split"] > 0 and c["whole_pct"] < 99.0


# ---------------------------------------------------------------------------
# end to end


def test_segment_scene_with_noisy_oracle(tmp_path: Path) -> None:
    """The run loop and the table: no two output polygons share more than a pixel's width, nothing merges."""
    scene = make_oracle_scene(tmp_path, width=700, height=600, n_objects=60, seed=4)
    gdf = segment_scene(scene.image_path, NoisyOracleMaskGenerator(scene.label_path, radius_px=2, seed=1),
                        chip_size_px=192, overlap_px=32, progress=False)
    with rasterio.open(scene.label_path) as ds:
        labels, transform = ds.read(1), ds.transform
    objs = []
    for g in gdf.geometry:
        m = rasterize([(g, 1)], out_shape=labels.shape, transform=transform, fill=0, dtype="uint8").astype(bool)
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        parts = len(g.geoms) if g.geom_type == "MultiPolygon" else 1
        objs.append((m[r0:r1, c0:c1], (c0, r0, c1 - c0, r1 - r0), parts))
    c = seam_counts(objs, labels)
    assert overlapping_pairs(objs) == 0
    assert c["merged"] == 0 and c["duplicates"] == 0
    assert c["whole_pct"] >= 85, c  # thin bars 2-4 px wide break under ±2 px erosion whatever the stitcher does
    assert (gdf.n_chips > 1).sum() >= 10


def test_seam_tolerance_is_a_setting() -> None:
    assert SegmentConfig().with_overrides(seam_tolerance_px=3).output.seam_tolerance_px == 3
    with pytest.raises(ConfigError, match="seam_tolerance_px"):
        SegmentConfig().with_overrides(seam_tolerance_px=-1)
