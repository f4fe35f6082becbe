"""Monitoring on STAC dated scenes: per-object per-date statistics from the served catalog (day mosaics, clouds masked
from the SCL-like asset) equal those from the local GeoTIFFs of the same pixels with the classification as a mask
band; Python (``monitor_objects(dated_scenes(...), objects)``) and ``geosam monitor --stac-search`` / item JSONs /
an ItemCollection."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner

from geosam.cli.main import cli
from geosam.errors import ConfigError
from geosam.monitor.dates import date_scenes
from geosam.monitor.series import monitor_objects
from geosam.stac.search import dated_scenes, stac_scenes
from tests._stac_fixtures import item_url
from tests.data.make_stac import DATES, SCL_CLOUD

CLOUDS = (3, 8, 9, 10)
STATS = ["ndvi_mean", "ndvi_median", "ndvi_frac_above", "valid_fraction", "n_pixels", "n_valid", "status"]


@pytest.fixture()
def fields(stac_catalog, tmp_path):
    """A grid of 8 x 5 boxes (50 x 50 px each) over the scene, some under the clouds of each date."""
    with rasterio.open(stac_catalog.stacks[0]) as ds:
        t, crs = ds.transform, ds.crs
    boxes = []
    for r0 in range(10, 379 - 60, 70):
        for c0 in range(10, 578 - 60, 70):
            x0, y1 = t * (c0, r0)
            x1, y0 = t * (c0 + 50, r0 + 50)
            boxes.append(shapely.box(x0, y0, x1, y1))
    path = tmp_path / "fields.gpkg"
    gpd.GeoDataFrame({"field": np.arange(len(boxes))}, geometry=boxes, crs=crs).to_file(path)
    return path


@pytest.fixture()
def local_dates(stac_catalog, tmp_path) -> list[str]:
    """Per date, the local 10 m stack plus the classification (20 m repeated 2 x 2) as band 5; dated by file name."""
    out = []
    for (date, _), stack, item in zip(DATES, stac_catalog.stacks, stac_catalog.items):
        with rasterio.open(stack) as src, rasterio.open(item.parent / "scl.tif") as scl:
            data, profile = src.read(), src.profile
            cls = np.repeat(np.repeat(scl.read(1), 2, axis=0), 2, axis=1)[: src.height, : src.width]
        profile.update(count=5, nodata=None)
        path = tmp_path / f"local_{date}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.concatenate([data, cls[None].astype(data.dtype)]))
        out.append(str(path))
    return out


def _long(result):
    return result.long.sort_values(["object_id", "date"]).reset_index(drop=True)


def _assert_same_stats(a, b) -> None:
    assert list(a["date"]) == list(b["date"]) and list(a["object_id"]) == list(b["object_id"])
    for col in STATS:
        if a[col].dtype.kind == "f":
            np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
        else:
            assert list(a[col]) == list(b[col]), col


def test_monitor_objects_on_dated_stac_scenes_equals_the_local_geotiffs(stac_served, fields, local_dates) -> None:
    series = dated_scenes(f"{stac_served.url}/collection.json", assets="red,green,blue,nir", mask_asset="scl",
                          mask_values=CLOUDS)
    stac = monitor_objects(series, fields, indices=("ndvi",))
    local = monitor_objects(local_dates, fields, indices=("ndvi",), band_roles="red=1,green=2,blue=3,nir=4",
                            reflectance_scale=1e-4, mask_band=5, mask_values=CLOUDS)
    unmasked = monitor_objects(local_dates, fields, indices=("ndvi",), band_roles="red=1,green=2,blue=3,nir=4",
                               reflectance_scale=1e-4)
    assert [d.isoformat() for d in stac.dates] == [d for d, _ in DATES]
    a, b, c = _long(stac), _long(local), _long(unmasked)
    _assert_same_stats(a, b)
    cloudy = (a["valid_fraction"] < 1).to_numpy()
    assert 0 < cloudy.sum() < len(a)  # clouds excluded from some objects on each date, not all
    assert (c["valid_fraction"] == 1).all()
    assert not np.allclose(a.loc[cloudy, "ndvi_mean"].dropna(), c.loc[cloudy, "ndvi_mean"][a.loc[cloudy, "ndvi_mean"]
                                                                                             .notna()])
    for col in ("ndvi_mean", "valid_fraction"):  # the wide tables agree too
        for d, _ in DATES:
            np.testing.assert_array_equal(stac.wide[f"{col}_{d}"], local.wide[f"{col}_{d}"])


def test_date_scenes_of_stac_scenes_items_and_collections(stac_catalog, stac_served) -> None:
    url = f"{stac_served.url}/collection.json"
    from_collection = date_scenes(url)
    from_items = date_scenes([item_url(stac_served, stac_catalog, 1), item_url(stac_served, stac_catalog, 0)])
    from_scenes = date_scenes(stac_scenes(url, "day"))
    for got in (from_collection, from_items, from_scenes):
        assert [(s.label, s.date_from) for s in got] == [(d, "STAC") for d, _ in DATES]
        assert [s.source.names for s in got] == [("red", "green", "blue", "nir")] * 2
    with pytest.raises(ConfigError, match="STAC scenes bring their dates"):
        date_scenes(url, dates=["2024-01-01"])
    with pytest.raises(ConfigError, match="not a mix"):
        date_scenes([dated_scenes(url)[0], item_url(stac_served, stac_catalog)])


def _wide(path):
    gdf = gpd.read_file(path)
    return gdf.sort_values("field").reset_index(drop=True)


def test_the_monitor_command_on_a_search_items_and_a_collection(stac_catalog, stac_served, fields, local_dates,
                                                                tmp_path) -> None:
    common = ["--objects", str(fields), "--index", "ndvi", "--mask-values", "3,8,9,10"]
    sources = {
        "search": ["--stac-search", stac_served.url, "--collection", "sentinel-2-l2a", "--datetime",
                   "2024-04/2024-10", "--mask-asset", "scl"],
        "items": [item_url(stac_served, stac_catalog, 0), item_url(stac_served, stac_catalog, 1), "--mask-asset",
                  "scl"],
        "collection": [str(stac_catalog.collection), "--mask-asset", "scl"],
        "local": [*local_dates, "--mask-band", "5", "--band-roles", "red=1,green=2,blue=3,nir=4",
                  "--reflectance-scale", "1e-4"],
    }
    for name, args in sources.items():
        res = CliRunner().invoke(cli, ["monitor", *args, *common, "-o", str(tmp_path / f"{name}.gpkg")])
        assert res.exit_code == 0, (name, res.output)
        assert f"40 objects x 2 dates ({DATES[0][0]}, {DATES[1][0]})" in res.output
    local = _wide(tmp_path / "local.gpkg")
    assert (local[f"valid_fraction_{DATES[0][0]}"] < 1).any()
    for name in ("search", "items", "collection"):
        got = _wide(tmp_path / f"{name}.gpkg")
        assert list(got.columns) == list(local.columns)
        cols = [c for c in local.columns if c != "geometry"]
        assert got[cols].equals(local[cols]), name


def test_the_monitor_command_refuses_stac_options_without_stac_and_no_scenes(stac_catalog, fields, tmp_path) -> None:
    out = str(tmp_path / "x.gpkg")
    res = CliRunner().invoke(cli, ["monitor", str(stac_catalog.stacks[0]), "--mask-asset", "scl", "--objects",
                                   str(fields), "-o", out])
    assert res.exit_code != 0 and "--assets and --mask-asset need STAC scenes" in res.output
    res = CliRunner().invoke(cli, ["monitor", "--objects", str(fields), "-o", out])
    assert res.exit_code != 0 and "give DATE_SCENES" in res.output
    assert not (tmp_path / "x.gpkg").exists()
    assert SCL_CLOUD in CLOUDS
