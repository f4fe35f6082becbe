"""geosam.monitor: per-object per-date statistics against a direct computation (rasterio window + numpy, pixel
centres inside the object), on files in different CRSs, a band stack and a DataArray; change columns."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT / "data" / "ftw_sentinel2_rgbn_2dates.tif"
STACK = {"2021-06-01": "red=1,green=2,blue=3,nir=4", "2021-09-01": "red=5,green=6,blue=7,nir=8"}


def _fields(crs: str, n: int = 40, seed: int = 0, shrink_m: float = 300.0):
    """Random rotated rectangles and blobs inside the S2 sample, in ``crs`` (some overlapping)."""
    import geopandas as gpd
    import rasterio
    from shapely import affinity
    from shapely.geometry import Point, box

    rng = np.random.default_rng(seed)
    with rasterio.open(S2) as d:
        b, scrs = d.bounds, d.crs
    geoms = []
    for k in range(n):
        x = rng.uniform(b.left + shrink_m, b.right - shrink_m)
        y = rng.uniform(b.bottom + shrink_m, b.top - shrink_m)
        if k % 3 == 0:
            g = Point(x, y).buffer(rng.uniform(15, 90))
        else:
            g = affinity.rotate(box(x, y, x + rng.uniform(20, 250), y + rng.uniform(20, 150)), rng.uniform(0, 90))
        geoms.append(g)
    gdf = gpd.GeoDataFrame({"field": [f"f{k}" for k in range(n)], "crop": rng.integers(0, 5, n)},
                           geometry=geoms, crs=scrs)
    return gdf.to_crs(crs)


def _reference(path_or_arrays, bands, geom, crs_of_geom, invalid=None):
    """Direct computation: NDVI mean/median/frac>=0.3, pixel count and valid count of ``geom`` on one date.

    ``path_or_arrays``: a raster path, or (data (bands, H, W), transform, crs). Pixels whose centre is inside
    the geometry (shapely.contains_xy); valid = the file's mask for both bands and not ``invalid``.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.windows import Window

    if isinstance(path_or_arrays, (str, Path)):
        ds = rasterio.open(path_or_arrays)
        t, crs, H, W = ds.transform, ds.crs, ds.height, ds.width
    else:
        data, t, crs = path_or_arrays
        ds = None
        H, W = data.shape[1:]
    g = gpd.GeoSeries([geom], crs=crs_of_geom).to_crs(crs).iloc[0]
    x0, y0, x1, y1 = g.bounds
    c0, c1 = int(np.floor((x0 - t.c) / t.a)) - 1, int(np.ceil((x1 - t.c) / t.a)) + 1
    r0, r1 = int(np.floor((y1 - t.f) / t.e)) - 1, int(np.ceil((y0 - t.f) / t.e)) + 1
    cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    xs, ys = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    inside = shapely.contains_xy(g, xs, ys)
    n_pixels = int(inside.sum())
    inr = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    rr, cc = rows[inside & inr], cols[inside & inr]
    flagged = invalid[rr, cc] if invalid is not None else np.zeros(rr.shape, bool)
    if ds is not None:
        win = Window(max(c0, 0), max(r0, 0), min(c1, W) - max(c0, 0), min(r1, H) - max(r0, 0))
        arr = ds.read(list(bands), window=win).astype(np.float32)
        msk = np.all(ds.read_masks(list(bands), window=win) > 0, axis=0)
        ds.close()
        rr, cc = rr - max(r0, 0), cc - max(c0, 0)
    else:
        arr, msk = data[[b - 1 for b in bands]].astype(np.float32), np.ones((H, W), bool)
    red, nir = arr[0][rr, cc], arr[1][rr, cc]
    ok = msk[rr, cc] & np.isfinite(red) & np.isfinite(nir)
    ok &= ~flagged
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = ((nir - red) / (nir + red)).astype(np.float32)
    v = ndvi[ok & np.isfinite(ndvi)]
    stats = (np.mean(v, dtype=np.float64), float(np.median(v)), np.count_nonzero(v >= 0.3) / v.size) if v.size \
        else (np.nan,) * 3
    return n_pixels, int(ok.sum()), stats


def _check(result, refs, date):
    long = result.long[result.long["date"] == date].sort_values("object_id")
    for (n_pix, n_val, (mean, median, frac)), row in zip(refs, long.itertuples()):
        assert row.n_pixels == n_pix
        assert row.n_valid == n_val
        if row.status == "ok":
            np.testing.assert_allclose(row.ndvi_mean, mean, rtol=2e-6, atol=1e-6)
            np.testing.assert_allclose(row.ndvi_median, median, rtol=2e-6, atol=1e-6)
            np.testing.assert_allclose(row.ndvi_frac_above, frac, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def two_crs_files(tmp_path_factory):
    """Date A: bands 1-4 of the sample in UTM 33N with nodata 0 in a corner and a date tag; date B: bands 5-8
    warped to Web Mercator at 13 m, with its date in the file name (read in its own grid)."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    d = tmp_path_factory.mktemp("monitor")
    with rasterio.open(S2) as src:
        prof = src.profile | {"count": 4, "nodata": 0}
        a = src.read([1, 2, 3, 4])
        a[:, :60, :80] = 0
        pa = d / "date_a.tif"
        with rasterio.open(pa, "w", **prof) as dst:
            dst.write(a)
            dst.update_tags(TIFFTAG_DATETIME="2021:06:01 10:30:00")
        t, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds, resolution=13)
        pb = d / "s2_2021-09-01.tif"
        with rasterio.open(pb, "w", **(prof | {"crs": "EPSG:3857", "transform": t, "width": w, "height": h})) as dst:
            for k, band in enumerate([5, 6, 7, 8], start=1):
                reproject(rasterio.band(src, band), rasterio.band(dst, k), resampling=Resampling.nearest)
    return pa, pb


def test_files_in_different_crs_match_direct_computation(two_crs_files):
    from geosam.monitor.series import monitor_objects

    pa, pb = two_crs_files
    objs = _fields("EPSG:4326", n=40)
    r = monitor_objects([str(pb), str(pa)], objs, band_roles="red=1,green=2,blue=3,nir=4", chip_size_px=128,
                        min_valid=0.0)
    assert [d.isoformat() for d in r.dates] == ["2021-06-01", "2021-09-01"]
    assert r.wide["field"].tolist() == objs["field"].tolist()  # attributes carried through, order kept
    for path, date in ((pa, "2021-06-01"), (pb, "2021-09-01")):
        refs = [_reference(path, (1, 4), g, objs.crs) for g in objs.geometry]
        _check(r, refs, date)
        assert r.long[r.long["date"] == date]["n_valid"].sum() > 0


@pytest.mark.parametrize("chip", [64, 16])  # 16 px: most objects are larger than a chip, read chip by chip
def test_band_stack_matches_direct_computation(chip):
    from geosam.monitor.series import monitor_objects

    objs = _fields("EPSG:32633", n=60, seed=1)
    r = monitor_objects(str(S2), objs, stack=STACK, chip_size_px=chip)
    for bands, date in (((1, 4), "2021-06-01"), ((5, 8), "2021-09-01")):
        _check(r, [_reference(S2, bands, g, objs.crs) for g in objs.geometry], date)
    a, b = r.wide["ndvi_mean_2021-06-01"], r.wide["ndvi_mean_2021-09-01"]
    np.testing.assert_allclose(r.wide["ndvi_delta"], b - a)


def test_dataarray_with_time_matches_direct_computation():
    import rasterio
    import xarray as xr

    from geosam.monitor.series import monitor_objects

    with rasterio.open(S2) as src:
        data, t, crs = src.read().astype(np.float32), src.transform, src.crs
    data[4:, 100:140, 200:260] = np.nan  # no data in date B there
    stack = np.stack([data[:4], data[4:]])
    da = xr.DataArray(stack, dims=("time", "band", "y", "x"),
                      coords={"time": np.array(["2021-06-01", "2021-09-01"], dtype="datetime64[ns]"),
                              "band": ["red", "green", "blue", "nir"]},
                      attrs={"transform": t, "crs": str(crs)})
    objs = _fields("EPSG:32633", n=30, seed=2)
    r = monitor_objects(da, objs, chip_size_px=100, min_valid=0.0)
    for k, date in enumerate(("2021-06-01", "2021-09-01")):
        _check(r, [_reference((stack[k], t, crs), (1, 4), g, objs.crs) for g in objs.geometry], date)


def test_cloud_mask_band_and_min_valid(tmp_path):
    """SCL-like mask band: values 3, 8, 9, 10 are invalid; an object mostly under cloud gets no value and says why."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from geosam.monitor.series import monitor_objects

    with rasterio.open(S2) as src:
        prof = src.profile | {"count": 5}
        data = src.read([1, 2, 3, 4])
        t, crs = src.transform, src.crs
    scl = np.full(data.shape[1:], 4, dtype=np.uint16)
    scl[50:150, 50:150] = 9
    scl[200:210, :] = 3
    p = tmp_path / "d_2022-05-05.tif"
    with rasterio.open(p, "w", **prof) as dst:
        dst.write(np.concatenate([data, scl[None]]))
    x = lambda c: t.c + c * t.a
    y = lambda r: t.f + r * t.e
    objs = gpd.GeoDataFrame(geometry=[box(x(40.2), y(160.2), x(100.3), y(60.1)),  # ~80 % cloud
                                      box(x(300.4), y(220.3), x(330.1), y(195.2)),  # partly a 3-stripe
                                      box(x(400.2), y(90.4), x(430.7), y(60.3))], crs=crs)
    r = monitor_objects([str(p)], objs, band_roles="red=1,green=2,blue=3,nir=4", mask_band=5,
                        mask_values=(3, 8, 9, 10), min_valid=0.5)
    long = r.long.sort_values("object_id")
    assert long["status"].tolist() == ["too_few_valid", "ok", "ok"]
    assert np.isnan(long["ndvi_mean"].iloc[0])
    for k, g in enumerate(objs.geometry):
        n_pix, n_val, stats = _reference(p, (1, 4), g, crs, invalid=np.isin(scl, (3, 8, 9, 10)))
        assert long["n_pixels"].iloc[k] == n_pix and long["n_valid"].iloc[k] == n_val
        if k:
            np.testing.assert_allclose(long["ndvi_mean"].iloc[k], stats[0], rtol=2e-6)
    assert 0 < long["valid_fraction"].iloc[1] < 1


def test_object_outside_a_date_and_smaller_than_a_pixel(two_crs_files, tmp_path):
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from geosam.monitor.series import monitor_objects

    pa, _ = two_crs_files
    with rasterio.open(pa) as src:  # date B covers only the western half
        prof = src.profile | {"width": src.width // 2}
        half = src.read(window=((0, src.height), (0, src.width // 2)))
        b = src.bounds
    pb = tmp_path / "west_2021-07-01.tif"
    with rasterio.open(pb, "w", **prof) as dst:
        dst.write(half)
    east = box(b.right - 500, b.bottom + 500, b.right - 300, b.bottom + 700)
    west = box(b.left + 1000, b.bottom + 500, b.left + 1200, b.bottom + 700)
    tiny = box(b.left + 1001, b.bottom + 801, b.left + 1003, b.bottom + 803)  # no pixel centre inside
    objs = gpd.GeoDataFrame(geometry=[east, west, tiny], crs=prof["crs"])
    r = monitor_objects([str(pa), str(pb)], objs, band_roles="red=1,green=2,blue=3,nir=4")
    assert r.wide["status_2021-07-01"].tolist() == ["outside_footprint", "ok", "no_pixel_centre"]
    assert r.wide["status_2021-06-01"].tolist() == ["ok", "ok", "no_pixel_centre"]
    assert np.isnan(r.wide["ndvi_mean_2021-07-01"].iloc[0])
    assert r.wide["ndvi_n_dates"].tolist() == [1, 2, 0]


def test_series_change_columns():
    from geosam.monitor.change import flags, series_change

    dates = [dt.date(2024, 1, 1), dt.date(2024, 4, 1), dt.date(2024, 7, 1), dt.date(2025, 1, 1)]
    v = np.array([[0.8, 0.7, 0.3, 0.4],
                  [np.nan, 0.2, np.nan, 0.6],
                  [0.5, np.nan, np.nan, np.nan],
                  [0.1, 0.2, 0.3, 0.4]])
    c = series_change(v, dates, "ndvi")
    np.testing.assert_allclose(c["ndvi_first"], [0.8, 0.2, 0.5, 0.1])
    np.testing.assert_allclose(c["ndvi_last"], [0.4, 0.6, 0.5, 0.4])
    np.testing.assert_allclose(c["ndvi_delta"], [-0.4, 0.4, np.nan, 0.3])
    years = np.array([(d - dates[0]).days / 365.25 for d in dates])
    for k in (0, 1, 3):
        ok = np.isfinite(v[k])
        np.testing.assert_allclose(c["ndvi_slope_per_year"][k], np.polyfit(years[ok], v[k][ok], 1)[0])
    assert np.isnan(c["ndvi_slope_per_year"][2])
    np.testing.assert_allclose(c["ndvi_max_drop"], [0.4, 0.0, np.nan, 0.0])
    assert c["ndvi_max_drop_date"].tolist() == ["2024-07-01", "", "", ""]
    assert c["ndvi_n_dates"].tolist() == [4, 2, 1, 4]
    f = flags(c, [("ndvi", -0.2)], [("ndvi", 0.35)])
    assert f["ndvi_loss"].tolist() == [True, False, False, False]
    assert f["ndvi_gain"].tolist() == [False, True, False, False]


def test_rank_and_flags_in_the_wide_table():
    from geosam.monitor.series import monitor_objects

    objs = _fields("EPSG:32633", n=25, seed=3)
    r = monitor_objects(str(S2), objs, stack=STACK, rank_by="ndvi_delta", ascending=True, loss=["ndvi:-0.3"])
    w = r.wide
    assert w["rank"].tolist() == list(range(1, 26))
    d = w["ndvi_delta"].to_numpy()
    assert np.all(np.diff(d[np.isfinite(d)]) >= 0)
    assert (w["ndvi_loss"] == (w["ndvi_delta"] <= -0.3)).all()
    assert sorted(w["object_id"]) == list(range(1, 26))


def test_label_stats_equals_per_object_numpy():
    """The grouped (bincount) statistics equal numpy on each label's pixels."""
    from geosam.index.zonal import zonal_stats
    from geosam.monitor.zonal import label_stats

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, (50, 60)).astype(np.int32)
    vals = rng.normal(0.3, 0.2, (50, 60)).astype(np.float32)
    vals[rng.random((50, 60)) < 0.1] = np.nan
    valid = np.isfinite(vals)
    n_pix, n_val, out = label_stats(labels, 5, valid, {"ndvi": vals}, {"ndvi": 0.3})
    for k in range(1, 6):
        m = labels == k
        assert n_pix[k - 1] == m.sum() and n_val[k - 1] == (m & valid).sum()
        mean, median, frac = zonal_stats(vals[m], 0.3)
        np.testing.assert_allclose([out["ndvi_mean"][k - 1], out["ndvi_median"][k - 1], out["ndvi_frac_above"][k - 1]],
                                   [mean, median, frac], rtol=1e-6)


def test_bulk_shapes_rasterize_like_shapely_geometries():
    """Polygons with holes and multipolygons burn the same pixels through `shapes` as through shapely."""
    from affine import Affine
    from rasterio.features import rasterize
    from shapely.geometry import MultiPolygon, Point, box

    from geosam.monitor.zonal import shapes

    ring = Point(50, 50).buffer(30).difference(Point(50, 50).buffer(12))
    multi = MultiPolygon([box(100, 10, 120, 30), box(130, 10, 150, 40)])
    geoms = np.array([ring, multi, box(10, 70, 40, 95).buffer(3)], dtype=object)
    t = Affine(1.0, 0, 0, 0, -1.0, 100)
    a = rasterize(zip(geoms, range(1, 4)), out_shape=(100, 160), transform=t, dtype="int32")
    b = rasterize(zip(shapes(geoms), range(1, 4)), out_shape=(100, 160), transform=t, dtype="int32")
    assert (a == b).all() and set(np.unique(a)) == {0, 1, 2, 3}


def test_rows_without_geometry_stay_with_a_status():
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    from geosam.monitor.series import monitor_objects

    objs = _fields("EPSG:32633", n=3, seed=5)
    x0, y0 = objs.geometry.iloc[0].centroid.coords[0]
    objs = gpd.GeoDataFrame({"name": ["a", "none", "empty", "b"]},
                            geometry=[box(x0, y0, x0 + 100, y0 + 100), None, Polygon(), objs.geometry.iloc[1]],
                            crs=objs.crs)
    r = monitor_objects(str(S2), objs, stack=STACK)
    assert r.wide["name"].tolist() == ["a", "none", "empty", "b"]
    assert r.wide["status_2021-06-01"].tolist() == ["ok", "no_pixel_centre", "no_pixel_centre", "ok"]
