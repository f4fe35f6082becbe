"""Many items: ItemCollections and STAC API searches as scenes per item, per day and dated (cloud-masked);
the journal's fingerprint of an item; one clear error for each bad input."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
import rasterio

import geosam
from geosam.errors import ConfigError, StacError
from geosam.read.scene import Scene
from geosam.stac.fingerprint import stac_fingerprint
from geosam.stac.local import LocalCatalog
from geosam.stac.search import check_scenes, dated_scenes, read_items, search, stac_scenes
from geosam.windows import PixelWindow
from tests._stac_fixtures import ThresholdGenerator, geometries
from tests.data.make_stac import HALVES_COLLECTION, SCL_CLOUD

ALL = PixelWindow(0, 0, 578, 379)


def test_a_stac_api_search_gives_one_scene_per_item(stac_catalog, stac_served) -> None:
    srv = stac_served
    items = search(srv.url, collections="sentinel-2-l2a", bbox=(13.0, 48.0, 14.0, 49.0), datetime="2024-04/2024-10",
                   query="eo:cloud_cover<20")
    assert [i.id for i in items] == ["S2A_33UVP_20240503", "S2A_33UVP_20240712"]
    assert srv.searches[-1]["query"] == {"eo:cloud_cover": {"lt": "20"}}  # pystac-client's parsing, sent as asked
    scenes = stac_scenes(items, "item", assets="red,green,blue")
    assert [s.label for s in scenes] == ["S2A_33UVP_20240503", "S2A_33UVP_20240712"]
    for sc, stack in zip(scenes, stac_catalog.stacks):
        with Scene(sc) as a, Scene(stack) as b:
            np.testing.assert_array_equal(a.read_bands((1, 2, 3), ALL)[0], b.read_bands((1, 2, 3), ALL)[0])


def test_an_empty_search_and_an_unreachable_api_are_clear_errors(stac_served) -> None:
    srv = stac_served
    with pytest.raises(StacError, match=r"no items found; widen"):
        search(srv.url, collections="sentinel-2-l2a", datetime="2019-01-01/2019-02-01")
    with pytest.raises(StacError, match=r"search of http://127.0.0.1:9 .*failed"):
        search("http://127.0.0.1:9", collections="sentinel-2-l2a")


def test_one_mosaic_per_day_joins_the_granules_of_that_day(stac_catalog) -> None:
    items = read_items([*stac_catalog.halves, stac_catalog.items[1]])
    scenes = stac_scenes(items, "day")
    assert [s.label for s in scenes] == [f"{HALVES_COLLECTION}_2024-05-03_R22", "sentinel-2-l2a_2024-07-12_R22"]
    assert [len(s.items) for s in scenes] == [2, 1]
    with Scene(scenes[0]) as day, Scene(stac_catalog.stacks[0]) as whole:
        assert (day.info.width, day.info.height, day.info.transform) == (578, 379, whole.info.transform)
        np.testing.assert_array_equal(day.read_bands((1, 2, 3, 4), ALL)[0], whole.read_bands((1, 2, 3, 4), ALL)[0])


def test_dated_scenes_mask_clouds_from_the_classification_asset(stac_catalog, stac_served) -> None:
    srv = stac_served
    series = dated_scenes(f"{srv.url}/collection.json", assets="red,green,blue,nir", mask_asset="scl",
                          mask_values=(3, 8, 9, 10))
    assert [d.date for d in series] == [dt.date(2024, 5, 3), dt.date(2024, 7, 12)]
    for d, item in zip(series, stac_catalog.items):
        with rasterio.open(item.parent / "scl.tif") as ds:
            scl = np.repeat(np.repeat(ds.read(1), 2, axis=0), 2, axis=1)[:379, :578]
        with Scene(d.scene) as sc:
            _, valid = sc.read_window(ALL)
        assert (scl == SCL_CLOUD).sum() > 1000
        np.testing.assert_array_equal(valid, scl != SCL_CLOUD)  # clouds (20 m) masked on the 10 m grid


def test_mixed_crss_in_one_day_are_an_error_before_anything_is_read(stac_catalog, tmp_path) -> None:
    other = tmp_path / "B"
    shutil.copytree(stac_catalog.halves[1].parent, other)
    for tif in other.glob("*.tif"):  # the same pixels declared in the next UTM zone
        with rasterio.open(tif, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
            ds.crs = rasterio.crs.CRS.from_epsg(32634)
    item_path = other / stac_catalog.halves[1].name
    doc = json.loads(item_path.read_text())
    doc["properties"]["proj:epsg"] = 32634
    item_path.write_text(json.dumps(doc))
    scenes = stac_scenes([stac_catalog.halves[0], item_path], "day")
    with pytest.raises(StacError, match=r"different CRSs \(S2A_33UVP_20240503_A: EPSG:32633, "
                                        r"S2A_33UVP_20240503_B: EPSG:32634\).*one item at a time"):
        check_scenes(scenes)
    with pytest.raises(StacError, match="different CRSs"):
        dated_scenes([stac_catalog.halves[0], item_path])
    assert len(stac_scenes([stac_catalog.halves[0], item_path], "item")) == 2  # per item it is fine
    with pytest.raises(ConfigError, match="group must be one of"):
        stac_scenes(stac_catalog.items[0], "month")


def test_a_journal_refuses_an_item_whose_asset_changed(stac_catalog, tmp_path) -> None:
    root = tmp_path / "www"
    shutil.copytree(stac_catalog.items[0].parent, root / "item")
    own = LocalCatalog(root)  # a copy, served by its own server: the test changes an asset
    try:
        url = f"{own.url}/item/{stac_catalog.items[0].name}"
        sc = geosam.stac.stac_scene(url, "red,green,blue")
        before = stac_fingerprint(sc)
        assert [a["key"] for a in before[0]["assets"]] == ["red", "green", "blue"]
        assert all(a["etag"] and int(a["size_bytes"]) > 0 for a in before[0]["assets"])
        kw = {"chip_size_px": 256, "overlap_px": 0, "progress": False, "overview_max_px": 2048}
        journal = tmp_path / "run.journal"
        first = geosam.segment_scene(url, ThresholdGenerator(), journal=journal, **kw)
        again = geosam.segment_scene(url, ThresholdGenerator(), journal=journal, **kw)  # replayed
        assert geometries(again) == geometries(first) and again.attrs["geosam"]["chips_replayed"] > 0
        with rasterio.open(root / "item" / "blue.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:  # the provider reprocessed one band
            ds.write(np.maximum(ds.read(1) // 2, 1), 1)
        assert stac_fingerprint(sc) != before
        with pytest.raises(ConfigError, match="stac"):
            geosam.segment_scene(url, ThresholdGenerator(), journal=journal, **kw)
    finally:
        own.stop()
