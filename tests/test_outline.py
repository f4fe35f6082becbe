"""Outline refinement (geosam.outline): validity, shared edges, metres in any CRS, holes, regular corners."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import Polygon, box

from geosam.config import OutlineConfig, SegmentConfig
from geosam.errors import ConfigError
from geosam.outline import fill_holes, refine_outlines, regular_share, simplify, smooth
from geosam.outline.regular import corner_angles

UTM = "EPSG:32633"


def field_labels(seed: int = 0, size: int = 120, n: int = 9) -> np.ndarray:
    """Adjacent fields: a Voronoi partition of ``size`` x ``size`` px with wiggly borders, labels 1..n."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    xx += 3 * np.sin(yy / 7.0)
    yy += 3 * np.cos(xx / 9.0)
    seeds = rng.uniform(0, size, (n, 2))
    d = (xx[None] - seeds[:, 0, None, None]) ** 2 + (yy[None] - seeds[:, 1, None, None]) ** 2
    return (np.argmin(d, axis=0) + 1).astype(np.int32)


def traced(labels: np.ndarray, transform: Affine) -> list[Polygon]:
    """One polygon per label, traced along pixel edges (as runs trace masks)."""
    out: dict[int, list] = {}
    for geom, v in features.shapes(labels, mask=labels > 0, transform=transform):
        out.setdefault(int(v), []).append(shapely.geometry.shape(geom))
    return [shapely.union_all(v) if len(v) > 1 else v[0] for _, v in sorted(out.items())]


def utm_fields(pixel_m: float = 2.0) -> gpd.GeoDataFrame:
    t = Affine(pixel_m, 0, 500_000, 0, -pixel_m, 5_000_000)
    return gpd.GeoDataFrame({"id": range(1, 10)}, geometry=traced(field_labels(), t), crs=UTM)


def assert_coverage(geoms: np.ndarray, gap_m: float) -> None:
    """Every geometry valid, no overlaps, no mismatched shared edges, no gap narrower than ``gap_m``."""
    assert shapely.is_valid(geoms).all()
    assert bool(shapely.coverage_is_valid(geoms, gap_width=gap_m))


def n_vertices(geoms) -> int:
    return int(shapely.get_num_coordinates(np.asarray(geoms, dtype=object)).sum())


def test_simplify_keeps_shared_edges() -> None:
    raw = utm_fields()
    g = np.asarray(raw.geometry.values, dtype=object)
    assert shapely.is_valid(g).all() and not bool(shapely.coverage_is_valid(g))  # traced: T-junctions
    out = simplify(g, 1.0, 2.0)
    assert_coverage(out, 2.0)
    assert n_vertices(out) * 3 <= n_vertices(g)
    # nothing lost or gained where the fields meet: the union only changed at the outer boundary
    assert shapely.union_all(out).area == pytest.approx(shapely.union_all(g).area, rel=2e-3)
    assert sum(p.area for p in out) == pytest.approx(shapely.union_all(out).area, rel=1e-9)
    for a, b in zip(out, g):
        assert shapely.hausdorff_distance(a, b) <= 1.0 + 2.0 * math.sqrt(0.5) + 1e-9


def test_smooth_keeps_shared_edges_and_is_valid() -> None:
    g = np.asarray(utm_fields().geometry.values, dtype=object)
    out = smooth(g, 3.0)
    assert_coverage(out, 2.0)
    assert not any(a.equals(b) for a, b in zip(out, g))  # every field's outline changed
    # no staircase left: hardly any right angle among the corners away from where three fields meet
    assert regular_share(list(out)) < 0.3 < regular_share(list(g))


def test_tolerance_is_metres_in_a_geographic_crs() -> None:
    raw = utm_fields()
    geo = raw.to_crs("EPSG:4326")
    a = refine_outlines(raw, simplify_m=3.0)
    b = refine_outlines(geo, simplify_m=3.0)
    assert shapely.is_valid(b.geometry.values).all()
    assert_coverage(np.asarray(b.geometry.values, dtype=object), 1e-5)
    # the same simplification in metres (within rounding of the reprojection)
    back = b.to_crs(UTM)
    for p, q, r in zip(a.geometry, back.geometry, raw.geometry):
        assert abs(n_vertices([p]) - n_vertices([q])) <= 0.1 * n_vertices([p]) + 2
        assert shapely.hausdorff_distance(q, r) <= 3.0 + 2.0 * math.sqrt(0.5) + 0.01
    assert n_vertices(b.geometry) * 3 <= n_vertices(geo.geometry)
    # a tolerance of 3 degrees would have left triangles; 3 m keeps the fields' shapes
    assert (back.geometry.intersection(raw.geometry).area / raw.geometry.union(back.geometry).area).min() > 0.95


@pytest.mark.parametrize("crs", [UTM, "EPSG:4326"])
def test_fill_holes_by_area(crs: str) -> None:
    from geosam.geo import area_m2

    x, y = 500_000, 5_000_000  # on the zone's central meridian: UTM areas are true to 0.1 %
    shell = box(x, y, x + 100, y + 100)
    small, big = box(x + 10, y + 10, x + 11.5, y + 12), box(x + 50, y + 50, x + 53, y + 53)  # 3 m2 and 9 m2
    poly = Polygon(shell.exterior, [small.exterior, big.exterior])
    raw = gpd.GeoDataFrame({"area_m2": [poly.area]}, geometry=[poly], crs=UTM).to_crs(crs)
    before = raw.geometry.iloc[0]
    out = refine_outlines(raw, fill_holes_m2=4)
    g = out.geometry.iloc[0]
    assert g.is_valid and len(g.interiors) == 1
    assert shapely.Polygon(g.interiors[0]).equals(shapely.Polygon(before.interiors[1]))  # the 9 m2 one stays
    assert list(out.columns[:2]) == ["area_m2", "area_raw_m2"]
    assert out["area_raw_m2"].iloc[0] == pytest.approx(10_000 - 12)
    assert out["area_m2"].iloc[0] == pytest.approx(area_m2([g], crs)[0])
    assert out["area_m2"].iloc[0] == pytest.approx(10_000 - 9, rel=2e-3)
    assert raw.geometry.iloc[0] is before and len(before.interiors) == 2  # input untouched
    assert fill_holes(np.array([poly], dtype=object), 0.0)[0] is poly


def rotated_mask_outline(shape: Polygon, angle_deg: float, pixel: float = 0.5) -> tuple[Polygon, Polygon]:
    """(true shape rotated, its pixel-traced outline at ``pixel`` m) in metres."""
    true = shapely.affinity.rotate(shape, angle_deg, origin="centroid")
    x0, y0, x1, y1 = true.bounds
    t = Affine(pixel, 0, math.floor(x0) - 2, 0, -pixel, math.ceil(y1) + 2)
    w, h = int((x1 - x0) / pixel) + 10, int((y1 - y0) / pixel) + 10
    m = features.rasterize([(true, 1)], out_shape=(h, w), transform=t).astype(np.int32)
    return true, traced(m, t)[0]


BUILDINGS = [box(0, 0, 20, 12), Polygon([(0, 0), (24, 0), (24, 8), (10, 8), (10, 18), (0, 18)]),
             Polygon([(0, 0), (30, 0), (30, 20), (20, 20), (20, 10), (10, 10), (10, 20), (0, 20)])]


@pytest.mark.parametrize("angle", [0.0, 17.0, 38.0])
def test_regularize_gives_right_angles_that_fit(angle: float) -> None:
    truths, raws = zip(*(rotated_mask_outline(b, angle) for b in BUILDINGS))
    gdf = gpd.GeoDataFrame(geometry=list(raws), crs=UTM)
    out = refine_outlines(gdf, regularize=True)
    geoms = list(out.geometry)
    assert shapely.is_valid(np.asarray(geoms, dtype=object)).all()
    assert regular_share(geoms) >= 0.9
    for g, t, r in zip(geoms, truths, raws):
        assert n_vertices([g]) == n_vertices([t])  # the building's own corners, no staircase
        iou = g.intersection(t).area / g.union(t).area
        assert iou >= r.intersection(t).area / r.union(t).area - 0.01 and iou > 0.93


def test_regularize_45_and_shapes_that_fit_nothing() -> None:
    octagon = Polygon([(4, 0), (16, 0), (20, 4), (20, 12), (16, 16), (4, 16), (0, 12), (0, 4)])
    true, raw = rotated_mask_outline(octagon, 10.0)
    blob = Polygon([(0, 0), (30, 2), (8, 6), (28, 14), (2, 20), (-6, 9)])  # a star: no regular shape fits it
    out = refine_outlines(gpd.GeoDataFrame(geometry=[raw, blob], crs=UTM), regularize=True, regularize_45=True)
    g = out.geometry.iloc[0]
    assert g.is_valid and regular_share([g], step_deg=45.0) == 1.0
    assert g.intersection(true).area / g.union(true).area > 0.93
    ang = corner_angles(g)
    assert ((np.abs(ang - 45) < 5).sum()) >= 6  # the cut corners are 45-degree edges
    assert out.geometry.iloc[1] is blob  # it keeps its outline


def test_every_output_is_valid() -> None:
    rng = np.random.default_rng(1)
    geoms = []
    for _ in range(8):  # blobs with thin necks, holes, islands
        m = np.zeros((60, 60), dtype=np.int32)
        for _ in range(6):
            y, x, r = rng.integers(5, 55), rng.integers(5, 55), rng.integers(2, 9)
            yy, xx = np.ogrid[:60, :60]
            m[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1
        m[rng.integers(0, 60, 40), rng.integers(0, 60, 40)] ^= 1
        geoms += traced(m, Affine(1, 0, 0, 0, -1, 60))
    gdf = gpd.GeoDataFrame(geometry=geoms, crs=UTM)
    for kw in [{"simplify_m": 0.5}, {"simplify_m": 3.0}, {"regularize": True}, {"regularize": True, "regularize_45": True},
               {"smooth": True, "simplify_m": 0.5}, {"fill_holes_m2": 5.0}, {"smooth": True, "smooth_m": 4.0}]:
        out = refine_outlines(gdf, **kw)
        assert out.geometry.is_valid.all(), kw
        assert not out.geometry.is_empty.any(), kw


def test_config_checks_and_routing() -> None:
    cfg = SegmentConfig.from_settings(simplify_m=0.5, fill_holes_m2=4, regularize=True)
    assert cfg.outline == OutlineConfig(simplify_m=0.5, regularize=True, fill_holes_m2=4.0)
    assert cfg.outline.active and not OutlineConfig().active
    for bad in [{"simplify_m": -1}, {"fill_holes_m2": "x"}, {"smooth_m": 0}, {"regularize_45": True},
                {"regularize": True, "smooth": True}]:
        with pytest.raises(ConfigError):
            OutlineConfig(**bad)
    with pytest.raises(ConfigError, match="simplify_m"):
        refine_outlines(utm_fields(), simplify_m=float("nan"))


def test_nothing_on_leaves_the_table_alone() -> None:
    raw = utm_fields()
    out = refine_outlines(raw)
    assert all(a is b for a, b in zip(out.geometry, raw.geometry))
    assert out.attrs["geosam_outline"]["changed"] == 0


@pytest.mark.parametrize("option", [{"simplify_m": 2.0}, {"smooth": True}])
def test_neighbours_in_different_batches_keep_their_edge(option: dict) -> None:
    from geosam.outline import OutlineConfig, refine_frames
    from geosam.outline.refine import OutlineStats

    raw = utm_fields()
    top = raw.geometry.bounds  # in the object store's order: by top row, then left column
    raw = raw.iloc[np.lexsort((top.minx.to_numpy(), -top.maxy.to_numpy()))]
    batches = [raw.iloc[:5], raw.iloc[5:]]
    cfg = OutlineConfig(**option)
    summary: dict = {}
    out = np.concatenate([np.asarray(f.geometry.values, dtype=object)
                          for f in refine_frames(iter(batches), cfg, summary)])
    assert_coverage(out, 2.0)
    assert summary["outline"]["objects"] == 9 and summary["outline"]["changed"] == 9
    # refined one batch at a time, without the neighbouring batches, the fields would not fit together
    stats = OutlineStats(cfg)
    apart = np.concatenate([np.asarray(stats.apply(f).geometry.values, dtype=object) for f in batches])
    assert not bool(shapely.coverage_is_valid(apart))


def test_simplify_keeps_a_rectangle_and_cuts_only_staircases() -> None:
    from geosam.outline.coverage import cut_steps

    rect = np.array([(0, 0), (40, 0), (40, 20), (0, 20)], dtype=float)
    assert np.array_equal(cut_steps(rect, True, 20.0), rect)  # turns alike: corners, not steps
    stairs = np.array([(0, 0), (3, 0), (3, 1), (6, 1), (6, 2)], dtype=float)  # right, left turns: risers
    # the riser at the open end is not known to be one (the turn beyond the end is not known): it stays
    assert np.allclose(cut_steps(stairs, False, 1.0), [(0, 0), (1.5, 0), (3, 0.5), (4.5, 1), (6, 1), (6, 2)])
    out = refine_outlines(gpd.GeoDataFrame(geometry=[box(0, 0, 100, 60)], crs=UTM), simplify_m=5.0)
    assert out.geometry.iloc[0].equals(box(0, 0, 100, 60))
