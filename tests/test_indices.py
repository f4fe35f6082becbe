"""Vegetation indices: band roles, zonal statistics, ranking, prefilter, index raster, CLI."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from scipy import ndimage

import geosam
import geosam.assemble.stitch
import geosam.modes.everything
from geosam.cli.main import cli
from geosam.config.bands import parse_band_roles, resolve_band_roles
from geosam.config.index_table import INDICES
from geosam.errors import BandError, ConfigError
from geosam.index.calculator import IndexCalculator
from geosam.index.prefilter import grid_pixels
from geosam.read.scene import Scene
from geosam.testing import OracleMaskGenerator, PromptedOracleMaskGenerator
from geosam.write.index_raster import write_index_raster
from tests.data.make_scenes import make_index_scene, make_oracle_scene

DATA = Path(__file__).resolve().parents[1] / "data"
S2 = DATA / "ftw_sentinel2_rgbn_2dates.tif"
S2_ROLES = {"red": 1, "green": 2, "blue": 3, "nir": 4}
ALL = ["ndvi", "ndwi", "savi", "evi", "exg", "vari", "gli"]


def ref_index(name: str, r, g, b, n) -> np.ndarray:
    """Direct float64 numpy formulas (NaN where the denominator is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        num, den = {
            "ndvi": (n - r, n + r),
            "ndwi": (g - n, g + n),
            "savi": (1.5 * (n - r), n + r + 0.5),
            "evi": (2.5 * (n - r), n + 6 * r - 7.5 * b + 1),
            "exg": (2 * g - r - b, r + g + b),
            "vari": (g - r, g + r - b),
            "gli": (2 * g - r - b, 2 * g + r + b),
        }[name]
        return np.where(den != 0, num / den, np.nan)


@pytest.fixture(scope="module")
def idx_scene(tmp_path_factory):
    return make_index_scene(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def s2_labels(tmp_path_factory) -> Path:
    """Objects on the Sentinel-2 grid: 4-connected components of NDVI > 0.45 (>= 20 px), plus a few boxes."""
    with rasterio.open(S2) as ds:
        a = ds.read([1, 4]).astype(np.float64)
        profile = ds.profile
    ndvi = (a[1] - a[0]) / (a[1] + a[0])
    lab, _n = ndimage.label(ndvi > 0.45)
    sizes = np.bincount(lab.ravel())
    lab[sizes[lab] < 20] = 0
    lab[lab > 0] = np.unique(lab[lab > 0], return_inverse=True)[1] + 1
    k = int(lab.max())
    for i, (r, c) in enumerate([(100, 250), (250, 120), (200, 400)], start=1):  # mixed, non-vegetated boxes
        box = lab[r : r + 30, c : c + 40]
        box[box == 0] = k + i
    path = tmp_path_factory.mktemp("s2") / "labels.tif"
    profile.update(count=1, dtype="uint32", nodata=None, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(lab.astype(np.uint32), 1)
    return path


def _labels_of(gdf, label_path) -> np.ndarray:
    """The label under each object's representative point."""
    with rasterio.open(label_path) as ds:
        pts = gdf.geometry.representative_point()
        return np.array([v[0] for v in ds.sample(list(zip(pts.x, pts.y)))], dtype=np.int64)


# -- formulas -------------------------------------------------------------------


def test_formulas_float32_and_zero_denominators():
    rng = np.random.default_rng(0)
    r, g, b, n = (rng.uniform(0, 0.6, (50, 60)) for _ in range(4))
    r[0, 0] = n[0, 0] = 0.0  # ndvi 0/0
    r[1, 1] = g[1, 1] = b[1, 1] = 0.0  # exg/gli 0/0
    valid = np.ones(r.shape, dtype=bool)
    valid[5, :] = False
    roles = resolve_roles_plain({"red": 1, "green": 2, "blue": 3, "nir": 4})
    out = IndexCalculator(roles, ALL).from_arrays({"red": r, "green": g, "blue": b, "nir": n}, valid)
    for name in ALL:
        assert out[name].dtype == np.float32
        ref = ref_index(name, r, g, b, n)
        ref[~valid] = np.nan
        np.testing.assert_allclose(out[name], ref, rtol=1e-3, atol=2e-5, equal_nan=True, err_msg=name)  # float32 near 0 denominators
    assert np.isnan(out["ndvi"][0, 0]) and np.isnan(out["exg"][1, 1]) and np.isnan(out["gli"][1, 1])
    assert np.isnan(out["ndvi"][5]).all()


def resolve_roles_plain(bands):
    from geosam.config.bands import BandRoles

    return BandRoles(path="mem", bands=bands)


# -- zonal statistics ----------------------------------------------------------------


def test_zonal_stats_generated_scene_match_numpy(idx_scene):
    gdf = geosam.segment_scene(
        idx_scene.image_path, OracleMaskGenerator(idx_scene.label_path), chip_size_px=256, overlap_px=32,
        indices=ALL, reflectance_scale=1e-4, index_thresholds={"ndvi": 0.5}, progress=False,
    )
    assert len(gdf) == idx_scene.n_objects
    with rasterio.open(idx_scene.image_path) as ds:
        raw = ds.read().astype(np.float64)
        valid = np.all(ds.read_masks() != 0, axis=0)
    with rasterio.open(idx_scene.label_path) as ds:
        labels = ds.read(1)
    r, g, b, n = raw * 1e-4
    refs = {name: ref_index(name, r, g, b, n) for name in ALL}
    for lab, row in zip(_labels_of(gdf, idx_scene.label_path), gdf.itertuples()):
        m = (labels == lab) & valid
        for name in ALL:
            v = refs[name][m]
            v = v[np.isfinite(v)]
            assert abs(getattr(row, f"{name}_mean") - v.mean()) < 1e-4, (lab, name)
            assert abs(getattr(row, f"{name}_median") - np.median(v)) < 1e-4, (lab, name)
        v = refs["ndvi"][m]
        assert row.ndvi_frac_above == pytest.approx(np.mean(v >= 0.5))
    veg = gdf["ndvi_mean"].to_numpy()[np.isin(_labels_of(gdf, idx_scene.label_path), idx_scene.vegetated)]
    assert veg.min() > 0.6 and gdf["ndvi_mean"].min() < 0.15


def test_zonal_stats_sentinel2_scene_match_numpy(s2_labels):
    gdf = geosam.segment_scene(
        S2, OracleMaskGenerator(s2_labels), chip_size_px=256, overlap_px=32, band_roles=S2_ROLES,
        reflectance_scale=1e-4, indices=["ndvi", "ndwi", "evi"], progress=False,
    )
    with rasterio.open(S2) as ds:
        r, g, b, n = ds.read([1, 2, 3, 4]).astype(np.float64) * 1e-4
    with rasterio.open(s2_labels) as ds:
        labels = ds.read(1)
    assert len(gdf) == labels.max()
    assert (gdf["n_chips"] > 1).any()
    for lab, row in zip(_labels_of(gdf, s2_labels), gdf.itertuples()):
        for name in ("ndvi", "ndwi", "evi"):
            v = ref_index(name, r, g, b, n)[labels == lab]
            assert abs(getattr(row, f"{name}_mean") - np.nanmean(v)) < 1e-4, (lab, name)
    # date B (bands 5-8) gives other values
    gdf_b = geosam.segment_scene(
        S2, OracleMaskGenerator(s2_labels), chip_size_px=1024, band_roles="red=5,green=6,blue=7,nir=8",
        indices="ndvi", progress=False,
    )
    assert not np.allclose(np.sort(gdf_b["ndvi_mean"]), np.sort(gdf["ndvi_mean"]))


def test_stitched_objects_get_single_chip_statistics(idx_scene, monkeypatch):
    kw = {"indices": ["ndvi", "exg", "evi"], "reflectance_scale": 1e-4, "progress": False}
    gen = OracleMaskGenerator(idx_scene.label_path)
    one = geosam.segment_scene(idx_scene.image_path, gen, chip_size_px=1024, **kw)
    many = geosam.segment_scene(idx_scene.image_path, gen, chip_size_px=128, overlap_px=32, **kw)
    monkeypatch.setattr(geosam.assemble.stitch, "CANVAS_MAX_PX", 1)  # stitched objects become vector-only (mask None)
    vec = geosam.segment_scene(idx_scene.image_path, gen, chip_size_px=128, overlap_px=32, **kw)
    assert (one["n_chips"] == 1).all() and (many["n_chips"] > 1).sum() >= 5
    for other in (many, vec):
        assert len(other) == len(one)
        assert all(a.equals(b) for a, b in zip(one.geometry, other.geometry))
        cols = [c for c in one.columns if c.split("_")[0] in ("ndvi", "exg", "evi")]
        np.testing.assert_allclose(other[cols].to_numpy(float), one[cols].to_numpy(float), rtol=0, atol=1e-9)


# -- filtering, ranking ------------------------------------------------------------------


def test_min_index_rank_by_top_k(idx_scene):
    gen = OracleMaskGenerator(idx_scene.label_path)
    kw = {"chip_size_px": 256, "overlap_px": 32, "reflectance_scale": 1e-4, "progress": False}
    full = geosam.segment_scene(idx_scene.image_path, gen, indices="ndvi", **kw)
    kept = geosam.segment_scene(idx_scene.image_path, gen, min_index={"ndvi": 0.3}, rank_by="ndvi_mean", **kw)
    assert sorted(_labels_of(kept, idx_scene.label_path)) == idx_scene.vegetated
    assert len(kept) == (full["ndvi_mean"] >= 0.3).sum()
    assert list(kept["rank"]) == list(range(1, len(kept) + 1))
    assert np.all(np.diff(kept["ndvi_mean"].to_numpy()) <= 0)
    assert sorted(kept["id"]) == list(range(1, len(kept) + 1))
    top = geosam.segment_scene(idx_scene.image_path, gen, rank_by="ndvi_mean", top_k=3, **kw)
    assert len(top) == 3 and np.allclose(top["ndvi_mean"], kept["ndvi_mean"][:3])


# -- prefilter -------------------------------------------------------------------------


def test_prefilter_keeps_vegetated_objects_and_skips_prompts(idx_scene):
    pps, kw = 16, {"chip_size_px": 256, "overlap_px": 32, "reflectance_scale": 1e-4, "progress": False}
    flt = {"min_index": {"ndvi": 0.3}}
    g_full = PromptedOracleMaskGenerator(idx_scene.label_path, pps)
    full = geosam.segment_scene(idx_scene.image_path, g_full, indices="ndvi", **kw)
    full_kept = full[full["ndvi_mean"] >= 0.3]
    g_pre = PromptedOracleMaskGenerator(idx_scene.label_path, pps)
    pre = geosam.segment_scene(idx_scene.image_path, g_pre, prefilter=True, **flt, **kw)
    st = pre.attrs["geosam"]

    # every vegetated object the full run keeps is kept, with the same outline and statistics
    assert set(_labels_of(full_kept, idx_scene.label_path)) <= set(idx_scene.vegetated)
    assert len(full_kept) >= 10 and len(pre) == len(full_kept)
    assert all(a.equals(b) for a, b in zip(full_kept.geometry, pre.geometry))
    np.testing.assert_array_equal(full_kept["ndvi_mean"].to_numpy(), pre["ndvi_mean"].to_numpy())

    # prompts: at least those that fell on non-vegetated objects are skipped
    with rasterio.open(idx_scene.label_path) as ds:
        labels = ds.read(1)
    on_other = 0
    with Scene(idx_scene.image_path) as sc:
        for spec in sc.chip_specs(256, 32):
            rows, cols = grid_pixels(spec.window.height, spec.window.width, pps)
            lab = labels[spec.window.slices()][rows, cols]
            on_other += int(np.count_nonzero((lab > 0) & (lab % 2 == 1)))
    assert st["prompts_total"] == g_full.prompts_received
    assert st["prompts_skipped_prefilter"] >= on_other > 0
    assert g_pre.prompts_received == st["prompts_total"] - st["prompts_skipped_prefilter"]
    assert g_pre.chips_called == st["chips_total"] - st["chips_skipped_prefilter"] - st["chips_skipped_invalid"]

    # radius 0: exactly the prompts on pixels below the threshold are skipped
    g0 = PromptedOracleMaskGenerator(idx_scene.label_path, pps)
    pre0 = geosam.segment_scene(idx_scene.image_path, g0, prefilter=True, prefilter_radius_px=0, **flt, **kw)
    assert len(pre0) == len(full_kept)
    with Scene(idx_scene.image_path) as sc:
        calc = IndexCalculator(resolve_band_roles(sc, None, 1e-4), ["ndvi"])
        passing = 0
        for spec in sc.chip_specs(256, 32):
            rows, cols = grid_pixels(spec.window.height, spec.window.width, pps)
            passing += int(np.count_nonzero(calc.compute(sc, spec.window)["ndvi"][rows, cols] >= 0.3))
    assert g0.prompts_received == passing <= g_pre.prompts_received


def _write(path, bands: np.ndarray, **kw) -> Path:
    count, h, w = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=bands.dtype.name,
                       crs="EPSG:32633", transform=from_origin(500000, 5300000, 10, 10), **kw) as ds:
        ds.write(bands)
    return Path(path)


def test_prefilter_radius_keeps_partly_vegetated_object(tmp_path):
    """An object vegetated on one side only, whose grid point sits on the bare side (pps 4 -> grid at 8, 24, 40, 56)."""
    h = w = 64
    red = np.full((h, w), 3000, np.uint16)
    nir = np.full((h, w), 3000, np.uint16)  # ndvi 0
    lab = np.zeros((h, w), np.uint32)
    lab[20:32, 20:34] = 1  # grid point (24, 24) is on the bare part
    nir[20:32, 27:34] = 27000  # ndvi 0.8 on half of the object -> mean 0.4
    img = _write(tmp_path / "img.tif", np.stack([red, red, red, nir]))
    labels = _write(tmp_path / "lab.tif", lab[None])
    kw = {"chip_size_px": 64, "overlap_px": 0, "band_roles": "naip", "min_index": {"ndvi": 0.3}, "progress": False}
    full = geosam.segment_scene(img, PromptedOracleMaskGenerator(labels, 4), **kw)
    near = geosam.segment_scene(img, PromptedOracleMaskGenerator(labels, 4), prefilter=True, prefilter_radius_px="grid",
                                **kw)
    strict = geosam.segment_scene(img, PromptedOracleMaskGenerator(labels, 4), prefilter=True, prefilter_radius_px=0, **kw)
    assert len(full) == 1 and full["ndvi_mean"][0] == pytest.approx(0.4, abs=1e-6)
    assert len(near) == 1  # one grid spacing (16 px) reaches the vegetated half
    assert len(strict) == 0  # the documented limit without a neighbourhood


def test_prefilter_skips_whole_chips(tmp_path):
    h, w = 64, 256
    red = np.full((h, w), 3000, np.uint16)
    nir = red.copy()
    nir[10:30, 10:30] = 27000
    lab = np.zeros((h, w), np.uint32)
    lab[10:30, 10:30] = 1
    lab[10:30, 200:230] = 2
    img = _write(tmp_path / "img.tif", np.stack([red, red, red, nir]))
    labels = _write(tmp_path / "lab.tif", lab[None])
    gen = PromptedOracleMaskGenerator(labels, 8)
    gdf = geosam.segment_scene(img, gen, chip_size_px=64, overlap_px=0, band_roles="naip", min_index="ndvi=0.3",
                               prefilter=True, progress=False)
    st = gdf.attrs["geosam"]
    assert len(gdf) == 1 and st["chips_total"] == 4 and st["chips_skipped_prefilter"] == 3 and gen.chips_called == 1


# -- band roles --------------------------------------------------------------------------


def test_band_roles_and_scaling(tmp_path, idx_scene):
    assert parse_band_roles("red=1, nir=4") == {"red": 1, "nir": 4} and parse_band_roles("Sentinel2") == "sentinel2"
    with Scene(idx_scene.image_path) as sc:  # descriptions red, green, blue, nir
        r = resolve_band_roles(sc)
        assert dict(r.bands) == {"red": 1, "green": 2, "blue": 3, "nir": 4} and r.scale_offset("red") == (1.0, 0.0)
        r = resolve_band_roles(sc, {"nir": 4, "red": 1}, reflectance_scale=1e-4, reflectance_offset=-0.1)
        assert r.scale_offset("nir") == (1e-4, -0.1)
    s2 = _write(tmp_path / "s2.tif", np.ones((12, 8, 8), np.uint16))
    with rasterio.open(s2, "r+") as ds:
        ds.update_tags(PROCESSING_BASELINE="04.00")
    with Scene(s2) as sc:
        r = resolve_band_roles(sc, "sentinel2")
        assert r.bands["red"] == 4 and r.bands["nir"] == 8 and r.bands["swir1"] == 11
        assert r.scale_offset("red") == (1e-4, -0.1)
    l8 = _write(tmp_path / "l8.tif", np.ones((7, 8, 8), np.uint16))
    with Scene(l8) as sc:
        r = resolve_band_roles(sc, "landsat8")
        assert r.bands["nir"] == 5 and r.scale_offset("nir") == (2.75e-5, -0.2)
    meta = _write(tmp_path / "meta.tif", np.ones((4, 8, 8), np.int16))
    with rasterio.open(meta, "r+") as ds:
        ds.scales = (1e-4,) * 4
        ds.offsets = (-0.1,) * 4
    with Scene(meta) as sc:
        assert resolve_band_roles(sc, "naip").scale_offset("nir") == (1e-4, -0.1)
        assert resolve_band_roles(sc, "naip", reflectance_scale=2e-4).scale_offset("nir")[0] == 2e-4


def test_band_role_errors(tmp_path, idx_scene):
    rgb = make_oracle_scene(tmp_path, width=200, height=150, n_objects=5)
    with pytest.raises(BandError) as e:
        geosam.segment_scene(rgb.image_path, OracleMaskGenerator(rgb.label_path), indices=["exg", "ndvi"], progress=False)
    msg = str(e.value)
    assert "'ndvi'" in msg and "'nir'" in msg and str(rgb.image_path) in msg
    gdf = geosam.segment_scene(rgb.image_path, OracleMaskGenerator(rgb.label_path), indices="exg,vari,gli",
                               progress=False)  # roles from RGB colour interpretation
    assert gdf["exg_mean"].notna().all()
    with pytest.raises(BandError, match="12 .*13"):
        geosam.segment_scene(S2, OracleMaskGenerator(rgb.label_path), band_roles="sentinel2", indices="ndvi")
    with pytest.raises(BandError, match="nir=9 does not exist"):
        geosam.segment_scene(S2, OracleMaskGenerator(rgb.label_path), band_roles={"red": 1, "nir": 9}, indices="ndvi")
    for bad in ({"band_roles": {"infrared": 4}}, {"indices": "ndxi"}, {"band_roles": "modis"}, {"prefilter_radius_px": -1},
                {"prefilter_radius_px": "near"},
                {"rank_by": "ndvi_mode"}, {"top_k": 5}, {"prefilter": True}, {"min_index": "ndvi"},
                {"band_roles": "red=one"}):
        with pytest.raises(ConfigError):
            geosam.SegmentConfig().with_overrides(**bad)


# -- index raster and CLI ---------------------------------------------------------------------


def test_index_raster_matches_numpy(tmp_path):
    out = write_index_raster(S2, tmp_path / "vi.tif", ["ndvi", "exg"], band_roles=S2_ROLES,
                             reflectance_scale=1e-4, block_px=128)
    with rasterio.open(S2) as ds:
        r, g, b, n = ds.read([1, 2, 3, 4]).astype(np.float64) * 1e-4
        transform, shape = ds.transform, (ds.height, ds.width)
    with rasterio.open(out) as ds:
        assert ds.transform == transform and (ds.height, ds.width) == shape and ds.dtypes[0] == "float32"
        assert ds.descriptions == ("ndvi", "exg")
        np.testing.assert_allclose(ds.read(1), ref_index("ndvi", r, g, b, n), atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ds.read(2), ref_index("exg", r, g, b, n), atol=1e-6, equal_nan=True)


def test_cli_indices_min_index_round_trip(idx_scene, tmp_path, monkeypatch):
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator",
                        lambda cfg: PromptedOracleMaskGenerator(idx_scene.label_path, cfg.amg.points_per_side))
    out, vi = tmp_path / "veg.gpkg", tmp_path / "vi.tif"
    res = CliRunner().invoke(cli, [
        "segment", str(idx_scene.image_path), "-o", str(out), "--chip-size", "256", "--overlap", "32",
        "--points-per-side", "16", "--band-roles", "red=1,green=2,blue=3,nir=4", "--reflectance-scale", "1e-4",
        "--indices", "ndvi,exg", "--min-index", "ndvi=0.3", "--min-index", "exg=0.0", "--rank-by", "ndvi_mean",
        "--top-k", "5", "--prefilter", "--index-raster", str(vi), "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    assert "prefilter:" in res.output and "prompts" in res.output
    gdf = gpd.read_file(out)
    assert len(gdf) == 5 and (gdf["ndvi_mean"] >= 0.3).all() and (gdf["exg_mean"] >= 0).all()
    assert {"ndvi_median", "ndvi_frac_above", "exg_frac_above", "rank"} <= set(gdf.columns)
    assert list(gdf["rank"]) == [1, 2, 3, 4, 5]
    with rasterio.open(vi) as ds:
        assert ds.count == 2 and ds.descriptions == ("ndvi", "exg")
    before = out.read_bytes()
    res = CliRunner().invoke(cli, ["segment", str(idx_scene.image_path), "-o", str(out), "--band-roles", "rgb",
                                   "--indices", "ndvi", "--no-progress"])
    assert res.exit_code == 1 and "file exists" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(cli, ["segment", str(idx_scene.image_path), "-o", str(out), "--band-roles", "rgb",
                                   "--indices", "ndvi", "--no-progress", "--overwrite"])
    assert res.exit_code == 1 and "'nir'" in res.output and "Traceback" not in res.output
    assert out.read_bytes() == before  # a failed run leaves the earlier output as it was


def test_index_names_are_documented():
    import geosam.index

    for name in INDICES:
        assert name in geosam.index.__doc__


def test_cli_index_raster_bands_checked_before_the_model(tmp_path):
    """--index-raster on a scene without NIR fails on the band, before any model is looked for."""
    res = CliRunner().invoke(cli, ["segment", str(DATA / "banepa_predict.tif"), "-o", str(tmp_path / "o.gpkg"),
                                   "--index-raster", str(tmp_path / "vi.tif"), "--model", str(tmp_path / "no-model"),
                                   "--no-progress"])
    assert res.exit_code == 1 and "'nir'" in res.output and "no-model" not in res.output
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "vi.tif").exists()
