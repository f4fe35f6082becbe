"""STAC scenes everywhere a raster goes after a run: merged tables, label and index rasters, overlays -- each equal
to the same output of the local GeoTIFF stack of the same pixels; output-beside-input checks only for local files."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from geosam.errors import ExportError
from geosam.modes.scenes import segment_scenes
from geosam.plot.overlay import render_overlay
from geosam.stac.search import stac_scenes
from geosam.write.index_raster import write_index_raster
from geosam.write.label_raster import label_dataarray, write_label_raster
from tests._stac_fixtures import ThresholdGenerator, geometries, item_url

KW = {"chip_size_px": 256, "overlap_px": 32, "progress": False, "overview_max_px": 2048}


def _raster(path) -> tuple[np.ndarray, object, object, tuple]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs, ds.descriptions


def test_merge_of_a_served_collection_equals_merging_the_local_stacks(stac_catalog, stac_served, tmp_path) -> None:
    scenes = stac_scenes(f"{stac_served.url}/collection.json", "item", assets="red,green,blue")
    remote = segment_scenes(scenes, ThresholdGenerator(), merge=True, output=tmp_path / "stac.gpkg", **KW)
    local = segment_scenes([str(p) for p in stac_catalog.stacks], ThresholdGenerator(), merge=True,
                           output=tmp_path / "local.gpkg", **KW)
    assert remote.ok and local.ok
    assert remote.outputs["*"] == str(tmp_path / "stac.gpkg")
    assert list(remote.merged["scene"].unique()) == [s.label for s in scenes]  # STAC scenes named by item id
    by_path = dict(zip((str(p) for p in stac_catalog.stacks), (s.label for s in scenes)))
    assert list(local.merged["scene"].map(by_path)) == list(remote.merged["scene"])
    for label in by_path.values():
        a = remote.merged[remote.merged["scene"] == label]
        b = local.merged[local.merged["scene"].map(by_path) == label]
        assert len(a) > 10 and geometries(a) == geometries(b)
    cols = [c for c in local.merged.columns if c not in ("scene", "geometry")]
    assert list(remote.merged.columns) == list(local.merged.columns)
    np.testing.assert_array_equal(remote.merged[cols].to_numpy(), local.merged[cols].to_numpy())


def test_output_dir_of_stac_scenes_names_files_by_item_id(stac_catalog, stac_served, tmp_path) -> None:
    scenes = stac_scenes(f"{stac_served.url}/collection.json", "item", assets="red,green,blue")
    res = segment_scenes(scenes, ThresholdGenerator(), output_dir=tmp_path / "out", **{**KW, "chip_size_px": 512})
    assert res.ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{s.label}.gpkg" for s in scenes]


def test_label_index_raster_and_overlay_of_an_item_equal_those_of_the_local_stack(stac_catalog, stac_served,
                                                                                  tmp_path) -> None:
    import geosam

    item = item_url(stac_served, stac_catalog)
    stack = stac_catalog.stacks[0]
    gdf = geosam.segment_scene(stack, ThresholdGenerator(), **KW)
    assert len(gdf) > 10
    scene = stac_scenes(item, "item", assets="red,green,blue,nir")[0]
    for like, tag in ((scene, "stac"), (item, "url"), (stack, "local")):
        write_label_raster(gdf, tmp_path / f"labels_{tag}.tif", like_path=like)
        write_index_raster(like, tmp_path / f"index_{tag}.tif", ("ndvi", "ndwi"))
        render_overlay(like, gdf, tmp_path / f"overlay_{tag}.png")
    labels, t, crs, _ = _raster(tmp_path / "labels_local.tif")
    index, _, _, names = _raster(tmp_path / "index_local.tif")
    png = np.asarray(Image.open(tmp_path / "overlay_local.png"))
    assert labels.max() == len(gdf) and names == ("ndvi", "ndwi") and np.isfinite(index).mean() > 0.9
    for tag in ("stac", "url"):
        got, gt, gcrs, _ = _raster(tmp_path / f"labels_{tag}.tif")  # the chip grid of the item: the stack's
        assert (gt, gcrs) == (t, crs)
        np.testing.assert_array_equal(got, labels)
        got, gt, _, gnames = _raster(tmp_path / f"index_{tag}.tif")
        assert gt == t and gnames == names
        np.testing.assert_allclose(got, index, rtol=1e-6, atol=1e-7)  # reflectance scale 1e-4 cancels in ratios
        np.testing.assert_array_equal(np.isnan(got), np.isnan(index))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"overlay_{tag}.png")), png)
    da = label_dataarray(gdf, scene)
    np.testing.assert_array_equal(da.values, labels[0])


def test_a_coarser_resolution_gives_rasters_on_that_grid(stac_catalog, stac_served, tmp_path) -> None:
    import geosam

    stack = stac_catalog.stacks[0]
    gdf = geosam.segment_scene(stack, ThresholdGenerator(), **KW)
    scene = stac_scenes(item_url(stac_served, stac_catalog), "item", assets="red,nir", resolution_m=20.0)[0]
    write_label_raster(gdf, tmp_path / "labels.tif", like_path=scene)
    write_index_raster(scene, tmp_path / "ndvi.tif", ("ndvi",))
    with rasterio.open(stack) as ref:
        left, top = ref.transform.c, ref.transform.f
    for name in ("labels.tif", "ndvi.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert (ds.transform.a, -ds.transform.e, ds.transform.c, ds.transform.f) == (20.0, 20.0, left, top)
            assert (ds.width, ds.height) == (289, 190)


def test_outputs_over_a_local_item_json_are_refused_and_remote_items_are_not_inputs(stac_catalog,
                                                                                     stac_served, tmp_path) -> None:
    import geopandas as gpd

    empty = gpd.GeoDataFrame(geometry=[], crs="EPSG:32633")
    item = stac_catalog.items[0]
    before = item.read_bytes()
    with pytest.raises(ExportError, match="would overwrite the input like_path"):
        write_label_raster(empty, item, like_path=item)
    with pytest.raises(ExportError, match="would overwrite the input scene"):
        write_index_raster(item, item, ("ndvi",))
    assert item.read_bytes() == before
    out = write_label_raster(empty, tmp_path / "l.tif", like_path=item_url(stac_served, stac_catalog), id_column=None)
    assert _raster(out)[0].max() == 0
