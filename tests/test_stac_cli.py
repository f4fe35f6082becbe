"""``geosam segment`` on STAC: an item URL equals its local stack with a tiny SAM; searches write one file per
item; bad input is one clear error and writes nothing."""

from __future__ import annotations

import geopandas as gpd
import pytest
from click.testing import CliRunner

from geosam.cli.main import cli
from tests._stac_fixtures import item_url

TINY = ["--chip-size", "512", "--overlap", "64", "--points-per-side", "2", "--pred-iou-thresh", "0",
        "--stability-score-thresh", "0", "--no-progress"]


def run(*args: str):
    return CliRunner().invoke(cli, ["segment", *args])


def wkbs(path) -> list[bytes]:
    return sorted(g.normalize().wkb for g in gpd.read_file(path).geometry)


@pytest.mark.slow  # a tiny SAM on 2 chips: ~12 s on a quiet 2-core machine
def test_segment_an_item_url_equals_the_local_stack(stac_catalog, stac_served, tiny_sam_dir, tmp_path) -> None:
    srv = stac_served
    res = run(item_url(srv, stac_catalog), "--assets", "red,green,blue", "-o", str(tmp_path / "item.gpkg"),
              "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    assert "item.gpkg:" in res.output
    res = run(str(stac_catalog.stacks[0]), "--bands", "1,2,3", "-o", str(tmp_path / "local.gpkg"),
              "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    local = wkbs(tmp_path / "local.gpkg")
    assert len(local) > 0 and wkbs(tmp_path / "item.gpkg") == local


@pytest.mark.slow
def test_a_search_writes_one_file_per_item(stac_served, tiny_sam_dir, tmp_path) -> None:
    srv = stac_served
    out = tmp_path / "out"
    res = run("--stac-search", srv.url, "--collection", "sentinel-2-l2a", "--bbox", "13,48,14,49",
              "--datetime", "2024-04/2024-10", "--query", "eo:cloud_cover<20", "--assets", "red,green,blue",
              "--mask-asset", "scl", "--mask-values", "3,8,9,10", "--output-dir", str(out), "--model",
              tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["S2A_33UVP_20240503.gpkg", "S2A_33UVP_20240712.gpkg"]
    assert "2 of 2 scenes done" in res.output
    assert srv.searches[-1]["bbox"] == [13.0, 48.0, 14.0, 49.0]


def test_bad_stac_input_is_one_error_and_writes_nothing(stac_catalog, stac_served, tmp_path) -> None:
    srv = stac_served
    out = tmp_path / "out"
    cases = [
        (["--stac-search", srv.url, "--collection", "sentinel-2-l2a", "--datetime", "2019-01/2019-02"],
         "no items found"),
        (["--stac-search", "http://127.0.0.1:9", "--collection", "sentinel-2-l2a"], "search of http://127.0.0.1:9"),
        ([item_url(srv, stac_catalog), "--assets", "red,swir16"], "has no band 'swir16'; it has: red (red)"),
        ([f"{srv.url}/nothing/here.json"], "HTTP 404"),
        (["--stac-items", str(stac_catalog.collection), "--assets", "red,green,blue"], "give --output-dir"),
        ([str(stac_catalog.stacks[0]), "--assets", "red"], "--assets and --mask-asset need STAC scenes"),
        ([item_url(srv, stac_catalog), "--mask-asset", "scl"], "mask_asset 'scl' needs mask_values"),  # masks nothing
    ]
    for args, message in cases:
        res = run(*args, "--output-dir" if "give --output-dir" not in message else "-o",
                  str(out if "give --output-dir" not in message else tmp_path / "x.gpkg"), *TINY)  # before any model
        assert res.exit_code != 0, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a tiny SAM on 2 chips per scene, 4 runs
def test_segment_extras_and_merge_on_stac_equal_those_on_the_local_stacks(stac_catalog, stac_served, tiny_sam_dir,
                                                                          tmp_path) -> None:
    import numpy as np
    import rasterio
    from PIL import Image

    srv = stac_served
    extras = {tag: ["--label-raster", str(tmp_path / f"{tag}_labels.tif"), "--index-raster",
                    str(tmp_path / f"{tag}_ndvi.tif"), "--overlay", str(tmp_path / f"{tag}.png")]
              for tag in ("stac", "local")}
    res = run(item_url(srv, stac_catalog), "--assets", "red,green,blue,nir", "--bands", "1,2,3", "-o",
              str(tmp_path / "stac.gpkg"), *extras["stac"], "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    res = run(str(stac_catalog.stacks[0]), "--bands", "1,2,3", "--reflectance-scale", "1e-4", "-o",
              str(tmp_path / "local.gpkg"), *extras["local"], "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    assert wkbs(tmp_path / "stac.gpkg") == wkbs(tmp_path / "local.gpkg")
    for name in ("labels.tif", "ndvi.tif"):
        with rasterio.open(tmp_path / f"stac_{name}") as a, rasterio.open(tmp_path / f"local_{name}") as b:
            assert (a.transform, a.crs, a.shape) == (b.transform, b.crs, b.shape)
            np.testing.assert_array_equal(a.read(), b.read())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "stac.png")), np.asarray(Image.open(tmp_path / "local.png")))
    res = run("--stac-items", f"{srv.url}/collection.json", "--assets", "red,green,blue", "--merge", "-o",
              str(tmp_path / "stac_merged.gpkg"), "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    res = run(*(str(p) for p in stac_catalog.stacks), "--bands", "1,2,3", "--merge", "-o",
              str(tmp_path / "local_merged.gpkg"), "--model", tiny_sam_dir, *TINY)
    assert res.exit_code == 0, res.output
    a, b = gpd.read_file(tmp_path / "stac_merged.gpkg"), gpd.read_file(tmp_path / "local_merged.gpkg")
    assert sorted(a["scene"].unique()) == ["S2A_33UVP_20240503", "S2A_33UVP_20240712"]
    assert len(a) == len(b) > 0 and wkbs(tmp_path / "stac_merged.gpkg") == wkbs(tmp_path / "local_merged.gpkg")
