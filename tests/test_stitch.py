"""Exact stitching with the oracle generator: one polygon per object across seams."""

from collections import defaultdict

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import CRS, Transformer
from rasterio.features import shapes
from shapely.geometry import shape
from shapely.ops import unary_union

from geosam.assemble.stitch import Stitcher, mask_to_pixel_geometry
from geosam.geo import area_m2
from geosam.modes.everything import segment_scene
from geosam.segment.base import ChipMasks
from geosam.testing import OracleMaskGenerator
from geosam.tile.grid import iter_chip_specs
from tests.data.make_scenes import make_oracle_scene


@pytest.fixture(scope="module", params=["EPSG:32633", "EPSG:4326"])
def oracle_scene(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param.replace(":", "_"))
    return make_oracle_scene(d, crs=request.param, seed=7)


def _truth(label_path):
    with rasterio.open(label_path) as ds:
        lab = ds.read(1)
        tr, crs = ds.transform, ds.crs
    parts = defaultdict(list)
    for g, v in shapes(lab.astype(np.int32), mask=lab > 0, transform=tr, connectivity=4):
        parts[int(v)].append(shape(g))
    return {k: unary_union(v) for k, v in parts.items()}, crs


@pytest.mark.parametrize("chip,overlap", [(256, 32), (200, 48), (384, 64), (128, 16)])
def test_every_object_exactly_once(oracle_scene, chip, overlap):
    truth, crs = _truth(oracle_scene.label_path)
    assert len(truth) >= 100
    gdf = segment_scene(oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path),
                        chip_size_px=chip, overlap_px=overlap, progress=False)
    assert gdf.crs == CRS.from_user_input(crs.to_wkt())
    assert len(gdf) == len(truth), "extra or missing polygons"
    assert (gdf.geometry.geom_type == "Polygon").all(), "an object came out in pieces"
    keys = list(truth)
    tree = shapely.STRtree([truth[k] for k in keys])
    matched = {}
    for i, g in enumerate(gdf.geometry):
        cand = tree.query(g)
        best = max(cand, key=lambda j: truth[keys[j]].intersection(g).area)
        t = truth[keys[best]]
        iou = t.intersection(g).area / t.union(g).area
        assert iou >= 0.99, f"object {keys[best]} IoU {iou:.4f}"
        assert keys[best] not in matched, f"object {keys[best]} came out twice"
        matched[keys[best]] = i
    assert len(matched) == len(truth)
    # the scene really exercises seams and corners
    assert (gdf.n_chips > 1).sum() >= 30
    assert (gdf.n_chips >= 4).sum() >= 3
    # holes kept
    assert sum(len(p.interiors) for p in gdf.geometry) >= sum(len(t.interiors) for t in truth.values()) > 0


def test_area_m2_is_true_area(oracle_scene):
    gdf = segment_scene(oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path),
                        chip_size_px=256, overlap_px=32, progress=False)
    with rasterio.open(oracle_scene.label_path) as ds:
        crs = ds.crs
    if crs.is_geographic:
        tf = Transformer.from_crs(crs.to_wkt(), "EPSG:32633", always_xy=True)
        to_utm = lambda xy: np.column_stack(tf.transform(xy[:, 0], xy[:, 1]))
        expected = np.array([shapely.transform(g, to_utm).area for g in gdf.geometry])
        np.testing.assert_allclose(gdf.area_m2, expected, rtol=2e-3)
    else:
        np.testing.assert_allclose(gdf.area_m2, gdf.geometry.area, rtol=1e-12)


def test_area_m2_converts_feet():
    x, y = 6_561_667, 2_100_000  # inside the zone (its origin, 0, 0, lies ~2000 km away, where the map scale is off)
    g = shapely.box(x, y, x + 100, y + 100)  # 100 ft x 100 ft
    a = area_m2([g], "EPSG:2227")  # NAD83 / California zone 3 (ftUS)
    assert a[0] == pytest.approx(10000 * 0.3048006096**2, rel=1e-6)


def test_mask_to_pixel_geometry_exact_with_hole():
    m = np.zeros((20, 20), bool)
    m[2:12, 3:13] = True
    m[5:8, 6:9] = False
    g = mask_to_pixel_geometry(m, 100, 50)
    assert g.geom_type == "Polygon" and len(g.interiors) == 1
    assert g.area == m.sum()
    assert g.bounds == (103, 52, 113, 62)
    assert mask_to_pixel_geometry(np.zeros((4, 4), bool), 0, 0) is None


def test_mask_to_pixel_geometry_of_speckle_equals_shapes_part_by_part():
    """Many parts with and without holes (built from one coordinate array): exactly the polygons ``shape()`` makes of
    rasterio's features one by one, in the same order."""
    from shapely.geometry import MultiPolygon

    rng = np.random.default_rng(3)
    m = rng.random((90, 70)) < 0.45
    m[30:60, 10:40] = True
    m[40:45, 20:26] = False  # a part with a hole, among speckle
    g = mask_to_pixel_geometry(m, 7, 11)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    sub = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8)
    tr = rasterio.Affine.translation(7 + cols[0], 11 + rows[0])
    want = [shape(f) for f, v in shapes(sub, mask=sub.astype(bool), transform=tr, connectivity=4) if v == 1]
    assert isinstance(g, MultiPolygon) and len(g.geoms) == len(want) > 100
    assert any(len(p.interiors) > 0 for p in g.geoms)
    assert [p.wkb for p in g.geoms] == [p.wkb for p in want]
    assert g.area == m.sum()


def _specs(w, h, chip, ov):
    return list(iter_chip_specs("x.tif", w, h, rasterio.Affine.identity(), "", chip, ov))


def test_streaming_finishes_objects_when_neighbours_done():
    specs = _specs(300, 100, 128, 32)  # one row of chips
    st = Stitcher(specs)
    lab = np.zeros((100, 300), np.int32)
    lab[10:30, 5:20] = 1  # only in the first chip
    lab[40:60, 90:250] = 2  # crosses seams
    finished = []
    for s in specs:
        r, c = s.window.slices()
        sub = lab[r, c]
        ids = [i for i in (1, 2) if (sub == i).any()]
        st.add(s, ChipMasks(np.stack([sub == i for i in ids]), np.ones(len(ids)), np.ones(len(ids))))
        finished.extend(st.pop_finished())
        if s.col == 1:  # first chip's neighbours done -> object 1 out; object 2 still open
            assert [o.geom_px.area for o in finished] == [300.0]
    finished.extend(st.pop_finished(final=True))
    assert sorted(o.geom_px.area for o in finished) == [300.0, 3200.0]
    assert not st.pieces
    with pytest.raises(ValueError, match="already added"):
        st.add(specs[0], ChipMasks.empty(1, 1))


def test_touching_objects_stay_separate():
    specs = _specs(200, 200, 128, 32)
    st = Stitcher(specs)
    lab = np.zeros((200, 200), np.int32)
    lab[20:180, 20:100] = 1
    lab[20:180, 100:180] = 2  # shares an edge with 1, across the seam
    for s in specs:
        r, c = s.window.slices()
        sub = lab[r, c]
        ids = [i for i in (1, 2) if (sub == i).any()]
        st.add(s, ChipMasks(np.stack([sub == i for i in ids]), np.ones(len(ids)), np.ones(len(ids))))
    objs = st.pop_finished(final=True)
    assert sorted(o.geom_px.area for o in objs) == [160 * 80.0, 160 * 80.0]


def _two_chips():
    """Two chips side by side (cols 0..99 and 60..159, overlap 40 px; cores split at column 80)."""
    from affine import Affine

    specs = list(iter_chip_specs("mem.tif", 160, 100, Affine.identity(), "", 100, 40))
    assert [(s.window.col_off, s.core.col_off, s.core.width) for s in specs] == [(0, 0, 80), (60, 80, 80)]
    return specs


def _rect_mask(spec, c0, c1, r0=30, r1=70):
    """A (1, H, W) chip-frame mask of scene columns c0..c1-1 and rows r0..r1-1."""
    m = np.zeros((1, spec.window.height, spec.window.width), bool)
    m[0, r0:r1, max(c0 - spec.window.col_off, 0) : max(c1 - spec.window.col_off, 0)] = True
    return ChipMasks(m, [0.9], [0.95])


@pytest.mark.parametrize("shift, merged", [(0, True), (12, True), (13, False), (30, False)])
def test_imperfect_seam_merges_exactly_at_match_iou(shift, merged):
    """The left chip sees an object up to its edge (col 100); the right chip sees it shifted right by ``shift``.

    Inside the shared strip (cols 60..99) the left part is cols 60..99 (40 px wide); the right part is cols
    60 + shift..99: IoU = (40 - shift) / 40, compared with match_iou = 0.7 (12 -> 0.7, 13 -> 0.675).
    """
    left, right = _two_chips()
    st = Stitcher([left, right], match_iou=0.7)
    st.add(left, _rect_mask(left, 20, 100))
    st.add(right, _rect_mask(right, 60 + shift, 140))
    objs = st.pop_finished(final=True)
    assert len(objs) == (1 if merged else 2)
    if merged:
        (o,) = objs
        assert o.n_chips == 2
        # each chip's core decides its side: cols 20..79 from the left chip, 80..139 from the right one
        assert o.geom_px.equals(shapely.box(20, 30, 140, 70))
        assert o.area_px == 120 * 40
    else:
        assert sorted(o.n_chips for o in objs) == [1, 1]
