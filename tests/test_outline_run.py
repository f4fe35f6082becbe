"""Outline options in runs: every batch refined as the table is built, in every mode, and through the CLI."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

import geosam
from geosam.geo import area_m2
from geosam.testing import OracleMaskGenerator
from tests.test_outline import field_labels, n_vertices

PIXEL_M = 2.0


def write(path: Path, data: np.ndarray, crs: str, transform: Affine) -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform) as ds:
        ds.write(data)
    return path


@pytest.fixture(scope="module", params=["EPSG:32633", "EPSG:4326"])
def fields(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image, label raster) of adjacent fields with holes (1-px and 9-px background specks), 120 x 120 px."""
    d = tmp_path_factory.mktemp("fields")
    lab = field_labels(seed=2)
    lab[30, 30] = 0  # a 4 m2 hole
    lab[60:63, 80:83] = 0  # a 36 m2 hole
    if request.param == "EPSG:4326":
        t = Affine(PIXEL_M / 111_320 / 0.7, 0, 15.0, 0, -PIXEL_M / 111_320, 45.5)  # ~2 m pixels at 45.5 N
    else:
        t = Affine(PIXEL_M, 0, 500_000, 0, -PIXEL_M, 5_000_000)
    rgb = np.random.default_rng(0).integers(0, 255, (3, *lab.shape), dtype=np.uint8)
    return write(d / "img.tif", rgb, request.param, t), write(d / "lab.tif", lab, request.param, t)


def check_table(gdf: gpd.GeoDataFrame, raw: gpd.GeoDataFrame) -> None:
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    assert shapely.is_valid(geoms).all()
    assert bool(shapely.coverage_is_valid(geoms))  # neighbours still share their edges
    cols = list(gdf.columns)
    assert cols[cols.index("area_m2") + 1] == "area_raw_m2"
    assert np.allclose(gdf["area_m2"], area_m2(list(geoms), gdf.crs))
    assert np.allclose(gdf["area_raw_m2"], raw["area_m2"])
    assert n_vertices(geoms) * 2 < n_vertices(raw.geometry)
    assert sum(len(p.interiors) for p in geoms) == 1  # only the 36 m2 hole is left


def test_segment_scene_refines_every_batch(fields: tuple[Path, Path], tmp_path: Path) -> None:
    img, lab = fields
    kw = {"chip_size_px": 64, "overlap_px": 8, "progress": False}
    raw = geosam.segment_scene(img, OracleMaskGenerator(lab), **kw)
    gdf = geosam.segment_scene(img, OracleMaskGenerator(lab), simplify_m=1.0, fill_holes_m2=10, **kw)
    assert len(gdf) == len(raw) == 9 and "area_raw_m2" not in raw.columns
    check_table(gdf, raw)
    st = gdf.attrs["geosam"]["outline"]
    assert st["simplify_m"] == 1.0 and st["fill_holes_m2"] == 10 and st["objects"] == 9 and st["changed"] == 9
    assert st["vertices_after"] == n_vertices(gdf.geometry) and st["vertices_before"] == n_vertices(raw.geometry)
    # streamed into a file: the same table
    summary = geosam.segment_scene_to_file(img, tmp_path / "f.gpkg", OracleMaskGenerator(lab), simplify_m=1.0,
                                           fill_holes_m2=10, **kw)
    back = gpd.read_file(tmp_path / "f.gpkg")
    assert {**summary.details["outline"], "seconds": 0} == {**st, "seconds": 0}
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(back.geometry, gdf.geometry))


def test_text_mode_and_smoothing(fields: tuple[Path, Path]) -> None:
    from tests.test_text import _Phrases

    img, lab = fields
    gdf = geosam.segment_text(img, ["building", "solar panel"], mask_generator=_Phrases(str(lab)), chip_size_px=64,
                              overlap_px=8, progress=False, smooth=True, simplify_m=0.5, fill_holes_m2=10)
    assert list(gdf.columns[:7]) == ["id", "label", "score", "area_m2", "area_raw_m2", "n_chips", "model"]
    assert "area_raw_m2" in gdf.columns and gdf.attrs["geosam"]["outline"]["smooth"]
    assert gdf.attrs["geosam"]["outline"]["smooth_m_used"] == pytest.approx(1.5 * PIXEL_M, rel=0.05)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    assert shapely.is_valid(geoms).all() and bool(shapely.coverage_is_valid(geoms))


def test_prompt_mode_refines_its_table(tiny_sam_dir: str, fields: tuple[Path, Path]) -> None:
    img, _ = fields
    with rasterio.open(img) as ds:
        x0, y0 = ds.xy(20, 20)
        x1, y1 = ds.xy(90, 90)
    prompts = [shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))]
    gdf = geosam.segment_prompts(img, prompts, model=tiny_sam_dir, device="cpu", dtype="float32", chip_size_px=0, simplify_m=2.0,
                                 regularize=True)
    st = gdf.attrs["geosam"]["outline"]
    assert st["regularize"] and st["simplify_m"] == 2.0 and st["objects"] == 1
    assert gdf.geometry.is_valid.all() and "area_raw_m2" in gdf.columns


def test_cli_outline_options(fields: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geosam.modes.everything
    from geosam.cli.main import cli

    img, lab = fields
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: OracleMaskGenerator(lab))
    base = ["segment", str(img), "--chip-size", "64", "--overlap", "8", "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "raw.geojson")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "out.geojson"), "--simplify", "1", "--fill-holes", "10"])
    assert res.exit_code == 0, res.output
    assert "outlines:" in res.output
    check_table(gpd.read_file(tmp_path / "out.geojson"), gpd.read_file(tmp_path / "raw.geojson"))
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "bad.geojson"), "--simplify", "-1"])
    assert res.exit_code != 0 and "simplify_m" in res.output and not (tmp_path / "bad.geojson").exists()
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "bad.geojson"), "--regularize", "--smooth"])
    assert res.exit_code != 0 and "exclude each other" in res.output


def test_outline_options_do_not_change_the_journal_key() -> None:
    from geosam.config import SegmentConfig
    from geosam.run.journal import run_settings

    plain, refined = SegmentConfig(), SegmentConfig.from_settings(simplify_m=1.0, regularize=True)
    assert run_settings(plain.flat(), None, []) == run_settings(refined.flat(), None, [])
