"""The STAC option group on every command that takes a scene: ``info`` describes what an item would read, ``prompt``
and ``text`` on an item equal the same run on the local stack, one clear error where the options give several scenes;
``segment``'s one-scene extras on an item."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner

from geosam.cli.main import cli
from tests._stac_fixtures import item_url
from tests.data.make_stac import make_other_zone

SEARCH = ["--collection", "sentinel-2-l2a", "--bbox", "13,48,14,49"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def wkbs(path) -> list[bytes]:
    return sorted(g.normalize().wkb for g in gpd.read_file(path).geometry)


def same_objects(path, reference) -> bool:
    """``path`` holds ``reference``'s rows: the same CRS, columns and values, and the same shapes (a GeoPackage
    layer holds MultiPolygons where GeoJSON keeps a one-part Polygon as it is)."""
    a, b = gpd.read_file(path), gpd.read_file(reference)
    assert a.crs == b.crs and list(a.columns) == list(b.columns) and len(a) == len(b)
    # the same values; GeoJSON reads small integers back as int32
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"), check_dtype=False)
    return bool(a.geometry.geom_equals(b.geometry).all())


def test_info_of_an_item_prints_grid_bands_and_asset_sizes(stac_catalog, stac_served) -> None:
    url = item_url(stac_served, stac_catalog)
    res = run("info", url, "--assets", "red,nir", "--mask-asset", "scl", "--mask-values", "9", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    folder = stac_catalog.items[0].parent
    assert (d["width"], d["height"], d["bands"], d["descriptions"]) == (578, 379, 2, ["red", "nir"])
    s = d["stac"]
    assert s["items"] == ["S2A_33UVP_20240503"] and s["grid"]["resolution"] == 10.0
    assert (s["grid"]["width"], s["grid"]["height"], s["grid"]["crs"]) == (578, 379, "EPSG:32633")
    assert [(b["band"], b["name"], b["asset"]) for b in s["bands"]] == [(1, "red", "red"), (2, "nir", "nir")]
    assert s["mask"] == {"asset": "scl", "values": [9]}
    sizes = {a["key"]: (a["size_bytes"], a["resolution"], a["shape"]) for a in s["assets"]}
    assert sizes == {k: (os.path.getsize(folder / f"{k}.tif"), r, shape) for k, r, shape in
                     (("red", 10.0, [379, 578]), ("nir", 20.0, [190, 289]), ("scl", 20.0, [190, 289]))}
    assert s["asset_bytes"] == sum(v[0] for v in sizes.values())
    res = run("info", url, "--assets", "red,nir", "--resolution", "20")
    assert res.exit_code == 0, res.output
    assert "289 x 190 px of 20 (EPSG:32633)" in res.output
    assert f"S2A_33UVP_20240503 nir: 289 x 190 px of 20, uint16, {os.path.getsize(folder / 'nir.tif') / 1e6:.2f} MB" \
        in res.output


def test_info_takes_a_search_that_gives_one_scene_and_refuses_several(stac_catalog, stac_served) -> None:
    res = run("info", "--stac-search", stac_served.url, *SEARCH, "--datetime", "2024-07-01/2024-07-31")
    assert res.exit_code == 0, res.output
    assert "S2A_33UVP_20240712" in res.output and "band 1: red" in res.output
    res = run("info", "--stac-search", stac_served.url, *SEARCH)
    assert res.exit_code != 0
    assert "the STAC options give 2 scenes (S2A_33UVP_20240503, S2A_33UVP_20240712); this command takes one" \
        in res.output
    res = run("info", item_url(stac_served, stac_catalog), "--check")
    assert res.exit_code != 0 and "--check reads every block of a raster file" in res.output
    res = run("info")
    assert res.exit_code != 0 and "give SCENE" in res.output


def _boxes(stack) -> str:
    with rasterio.open(stack) as ds:
        t = ds.transform
    boxes = []
    for c0, r0 in ((100, 80), (300, 200)):
        x0, y1 = t * (c0, r0)
        x1, y0 = t * (c0 + 60, r0 + 50)
        boxes.append(f"{x0},{y0},{x1},{y1}")
    return ";".join(boxes)


def test_prompt_on_a_search_equals_prompt_on_the_local_stacks(stac_catalog, stac_served, tiny_sam_dir,
                                                              tmp_path) -> None:
    """The tiny random SAM: its masks are noise, but noise of the pixels it reads (the two dates give other
    outlines), so equal outlines mean equal pixels read; ~1 s a run where LiteMedSAM took ~6."""
    common = ["--boxes", _boxes(stac_catalog.stacks[0]), "--model", tiny_sam_dir, "--device", "cpu", "--dtype",
              "float32", "--no-progress"]
    # a search giving several items: the same prompts on each, one output per item
    res = run("prompt", "--stac-search", stac_served.url, *SEARCH, "--assets", "red,green,blue", "--output-dir",
              str(tmp_path / "each"), *common)
    assert res.exit_code == 0, res.output
    assert "2 of 2 scenes done" in res.output
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["S2A_33UVP_20240503.gpkg",
                                                                     "S2A_33UVP_20240712.gpkg"]
    # --format: the same objects, as GeoJSON (one date of the search: the naming and format, not the model again)
    res = run("prompt", "--stac-search", stac_served.url, *SEARCH, "--datetime", "2024-05-03", "--assets",
              "red,green,blue", "--output-dir", str(tmp_path / "json"), "--format", "geojson", *common)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "json").iterdir()) == ["S2A_33UVP_20240503.geojson"]
    for k, (stack, item) in enumerate(zip(stac_catalog.stacks, stac_catalog.items)):
        res = run("prompt", str(stack), "--bands", "1,2,3", "-o", str(tmp_path / f"local_{k}.gpkg"), *common)
        assert res.exit_code == 0, res.output
        local = wkbs(tmp_path / f"local_{k}.gpkg")
        assert len(local) == 2 and wkbs(tmp_path / "each" / f"{item.stem}.gpkg") == local
    assert wkbs(tmp_path / "local_0.gpkg") != wkbs(tmp_path / "local_1.gpkg")  # the pixels shape the outlines
    item = "S2A_33UVP_20240503"
    assert same_objects(tmp_path / "json" / f"{item}.geojson", tmp_path / "each" / f"{item}.gpkg")


def test_prompt_and_text_refuse_several_scenes_and_bad_bands_before_any_model(stac_catalog, stac_served,
                                                                             tmp_path) -> None:
    out = str(tmp_path / "x.gpkg")
    cases = [
        (["prompt", "--stac-items", f"{stac_served.url}/collection.json", "--points", "1,2", "-o", out],
         "the STAC options give 2 scenes"),
        (["text", "--stac-search", stac_served.url, *SEARCH, "--text", "field", "-o", out],
         "the STAC options give 2 scenes"),
        (["text", item_url(stac_served, stac_catalog), "--assets", "red,swir16", "--text", "field", "-o", out],
         "has no band 'swir16'"),
        (["prompt", str(stac_catalog.stacks[0]), "--mask-asset", "scl", "--points", "1,2", "-o", out],
         "--assets and --mask-asset need STAC scenes"),
        (["prompt", str(stac_catalog.stacks[0]), "--points", "1,2", "--output-dir", str(tmp_path / "d")],
         "--output-dir is for STAC options giving several scenes"),
        (["text", "--stac-items", str(stac_catalog.collection), "--text", "field", "--output-dir",
          str(tmp_path / "d"), "--overlay", str(tmp_path / "o.png")], "--overlay take one scene"),
        (["text", "--stac-items", str(stac_catalog.collection), "--text", "field", "--output-dir",
          str(tmp_path / "d"), "-o", out], "not both"),
        (["prompt", item_url(stac_served, stac_catalog), "--points", "1,2"], "give -o/--output FILE"),
        (["prompt", "--stac-items", str(stac_catalog.collection), "--points", "1,2", "--output-dir",
          str(tmp_path / "d"), "--format", "xyz"], "--format .xyz: unknown vector format; use one of"),
        (["text", "--stac-items", str(stac_catalog.collection), "--text", "field", "--output-dir",
          str(tmp_path / "d"), "--format", ".kml"], "--format .kml: unknown vector format; use one of"),
        (["text", item_url(stac_served, stac_catalog), "--text", "field", "-o", out, "--format", "geojson"],
         "--format .geojson names the type of --output-dir files"),
    ]
    for args, message in cases:
        res = run(*args, "--model", "/nonexistent/model")  # a model would fail to load: the check comes first
        assert res.exit_code != 0, (args, res.output)
        assert message in res.output, (args, res.output)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning", "ignore:.*has no CRS; assuming:UserWarning")
def test_prompts_without_a_crs_are_refused_on_scenes_in_several_crss(stac_catalog, tmp_path) -> None:
    """Two items in two UTM zones: prompts without a CRS (a file without one, --boxes without --prompt-crs,
    exemplars without one) can be right in one zone only; refused before any model, naming what has no CRS and
    each CRS with its items. With a CRS, the same prompts pass (each scene's run gets as far as its model)."""
    from shapely.geometry import box

    collection = make_other_zone(stac_catalog, tmp_path / "zones")
    boxes = _boxes(stac_catalog.stacks[0])
    no_crs = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame(geometry=[box(*map(float, b.split(","))) for b in boxes.split(";")]).to_file(no_crs)
    assert gpd.read_file(no_crs).crs is None
    with_crs = tmp_path / "boxes_32633.gpkg"
    gpd.read_file(no_crs).set_crs("EPSG:32633").to_file(with_crs)
    out = tmp_path / "out"
    common = ["--stac-items", str(collection), "--assets", "red,green,blue", "--output-dir", str(out), "--model",
              "/nonexistent/model", "--no-progress"]
    zones = "the scenes are in 2 CRSs (EPSG:32633: S2A_33UVP_20240503; EPSG:32634: S2A_34UCV_20240712)"
    cases = [
        (["prompt", "--prompts", str(no_crs)], f"the prompts file {no_crs}: no CRS, and {zones}"),
        (["prompt", "--boxes", boxes], f"the points / boxes: no CRS, and {zones}"),
        (["prompt", "--prompts", str(with_crs), "--points", "360500,5351000"],
         f"the points / boxes: no CRS, and {zones}"),
        (["text", "--exemplars", str(no_crs)], f"the exemplars file {no_crs}: no CRS, and {zones}"),
    ]
    for args, message in cases:
        res = run(*args, *common)
        assert res.exit_code == 1, (args, res.output)
        assert message in " ".join(res.output.split()), (args, res.output)
    assert not out.exists()
    for args in (["prompt", "--boxes", boxes, "--prompt-crs", "EPSG:32633"], ["prompt", "--prompts", str(with_crs)],
                 ["text", "--exemplars", str(with_crs)]):
        res = run(*args, *common)
        assert res.exit_code == 1 and "no CRS" not in res.output, (args, res.output)
        assert "S2A_34UCV_20240712: failed:" in res.output and "0 of 2 scenes done, 2 failed" in res.output


@pytest.mark.slow  # a tiny SAM 3 on 4 chips, twice
def test_text_on_an_item_equals_text_on_the_local_stack(stac_catalog, stac_served, tiny_sam3_dir, tmp_path) -> None:
    common = ["--text", "field", "--model", tiny_sam3_dir, "--device", "cpu", "--dtype", "float32", "--chip-size",
              "336", "--overlap", "32", "--score-threshold", "0.0", "--no-progress"]
    res = run("text", "--stac-search", stac_served.url, *SEARCH, "--datetime", "2024-05-03", "--assets",
              "red,green,blue", "-o", str(tmp_path / "stac.gpkg"), "--label-raster", str(tmp_path / "stac.tif"),
              *common)
    assert res.exit_code == 0, res.output
    res = run("text", str(stac_catalog.stacks[0]), "--bands", "1,2,3", "-o", str(tmp_path / "local.gpkg"),
              "--label-raster", str(tmp_path / "local.tif"), *common)
    assert res.exit_code == 0, res.output
    local = wkbs(tmp_path / "local.gpkg")
    assert len(local) > 0 and wkbs(tmp_path / "stac.gpkg") == local
    # --output-dir with --format: the same objects, as GeoJSON named by item id
    res = run("text", "--stac-search", stac_served.url, *SEARCH, "--datetime", "2024-05-03", "--assets",
              "red,green,blue", "--output-dir", str(tmp_path / "each"), "--format", ".geojson", *common)
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "each").iterdir()] == ["S2A_33UVP_20240503.geojson"]
    assert same_objects(tmp_path / "each" / "S2A_33UVP_20240503.geojson", tmp_path / "stac.gpkg")
    with rasterio.open(tmp_path / "stac.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
