"""STAC items as scenes: per-band COGs over HTTP range requests, on one grid, equal to a local stack.

The stac_catalog (`tests.data.make_stac`) is served on 127.0.0.1 by `geosam.stac.local.LocalCatalog`
(the `stac_served` fixture); bytes are counted per asset and per chip.
"""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio

import geosam
from geosam.config import ReadConfig
from geosam.errors import BandError, InvalidRasterError, StacError
from geosam.read.scene import Scene
from geosam.stac import stac_scene
from geosam.windows import PixelWindow
from tests._stac_fixtures import ThresholdGenerator, geometries, item_url

ALL = PixelWindow(0, 0, 578, 379)


def test_an_item_url_reads_its_bands_by_common_name_onto_the_finest_grid(stac_catalog, stac_served) -> None:
    srv = stac_served
    with Scene(item_url(srv, stac_catalog)) as sc, Scene(stac_catalog.stacks[0]) as local:
        assert sc.path == "stac:S2A_33UVP_20240503"
        assert sc.info.descriptions == ("red", "green", "blue", "nir")  # the default bands, in this order
        assert (sc.info.width, sc.info.height, sc.info.res) == (578, 379, (10.0, 10.0))
        assert sc.info.transform == local.info.transform and sc.info.crs_name == "EPSG:32633"
        assert sc.bands == (1, 2, 3)  # red, green, blue by colour interpretation
        data, valid = sc.read_bands((1, 2, 3, 4), ALL)  # nir (20 m) read onto the 10 m grid, nearest
        want, want_valid = local.read_bands((1, 2, 3, 4), ALL)
    np.testing.assert_array_equal(data, want)
    np.testing.assert_array_equal(valid, want_valid)


def test_an_item_file_a_pystac_item_and_chosen_assets(stac_catalog) -> None:
    item = pystac.Item.from_file(str(stac_catalog.items[1]))
    for source in (stac_catalog.items[1], str(stac_catalog.items[1]), item):
        with Scene(stac_scene(source, assets="nir,red,green")) as sc:  # by common name, in the order given
            assert sc.info.descriptions == ("nir", "red", "green") and sc.bands == (1, 2, 3)
    with Scene(stac_scene(item, ["red", "green", "blue"], resolution_m=20)) as sc:  # a coarser grid asked for
        assert (sc.info.width, sc.info.height, sc.info.res) == (289, 190, (20.0, 20.0))
    roles = geosam.config.bands.resolve_band_roles(Scene(stac_scene(item, "red,green,blue,nir")))
    assert roles.bands == {"red": 1, "green": 2, "blue": 3, "nir": 4}  # roles from the common names
    assert roles.scales["nir"] == pytest.approx(1e-4)  # and reflectance scale from raster:bands


def test_each_chip_reads_only_its_part_of_each_asset(stac_catalog, stac_served) -> None:
    srv = stac_served
    sizes = {f"/{p.relative_to(stac_catalog.root).as_posix()}": p.stat().st_size
             for p in stac_catalog.items[0].parent.glob("*.tif")}
    sc = Scene(item_url(srv, stac_catalog), ReadConfig(overview_max_px=128))  # the stretch sample from overviews
    opened = srv.bytes_by_path
    total = dict(opened)
    per_chip = []
    for spec in sc.chip_specs(128, 0):
        srv.reset()
        chip = sc.read_chip(spec)
        assert chip.raw is not None and chip.raw.shape[0] == 3
        per_chip.append(srv.bytes_by_path)
        for path, n in per_chip[-1].items():
            total[path] = total.get(path, 0) + n
    sc.close()
    tifs = [p for p in opened if p.endswith(".tif")]
    assert sorted(tifs) == sorted(p for p in sizes if not p.endswith(("nir.tif", "scl.tif")))  # nir not read
    for path in tifs:
        assert opened[path] < sizes[path] / 8, (path, opened[path], sizes[path])  # header + small overview
    for chip_bytes in per_chip:
        for path, n in chip_bytes.items():
            assert n <= sizes[path] / 4, (path, n, sizes[path])  # a 128 px chip: a few blocks, never the asset
    for path in tifs:  # every chip of the scene read: each block about once, the asset about once in all
        assert total[path] < 1.6 * sizes[path], (path, total[path], sizes[path])


def test_segmenting_an_item_equals_segmenting_the_local_stack(stac_catalog, stac_served) -> None:
    srv = stac_served
    kw = {"chip_size_px": 256, "overlap_px": 32, "progress": False, "overview_max_px": 2048}
    local = geosam.segment_scene(stac_catalog.stacks[0], ThresholdGenerator(), **kw)
    remote = geosam.segment_scene(item_url(srv, stac_catalog), ThresholdGenerator(), **kw)
    assert len(local) > 10
    assert geometries(remote) == geometries(local)


def test_a_missing_band_names_the_bands_the_item_has(stac_catalog) -> None:
    with pytest.raises(BandError, match=r"no band 'swir16'.*red \(red\).*nir \(nir\).*scl") as err:
        stac_scene(stac_catalog.items[0], "red,swir16")
    assert "S2A_33UVP_20240503" in str(err.value)


def test_an_unreachable_item_and_an_asset_404(stac_catalog, stac_served, tmp_path) -> None:
    srv = stac_served
    with pytest.raises(StacError, match="cannot reach"):
        Scene("http://127.0.0.1:9/item.json")
    with pytest.raises(StacError, match="HTTP 404"):
        Scene(f"{srv.url}/no/such/item.json")
    folder = f"{srv.url}/{stac_catalog.items[0].parent.name}"
    doc = stac_catalog.items[0].read_text().replace('"./blue.tif"', '"./missing.tif"').replace('"./', f'"{folder}/')
    (tmp_path / "item.json").write_text(doc)  # a local item of remote assets, one of them missing
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "out.gpkg"
    with pytest.raises(InvalidRasterError, match=r"stac:S2A_33UVP_20240503.*asset 'blue'.*missing\.tif\): HTTP 404"):
        geosam.segment_scene_to_file(tmp_path / "item.json", out, ThresholdGenerator(), progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_chip_that_cannot_be_read_follows_skip_bad_chips(stac_catalog, stac_served, monkeypatch) -> None:
    from geosam.stac import dataset

    srv = stac_served
    real = dataset.load_window

    def flaky(scene, keys, geobox, dtype):
        if geobox.shape == (128, 128) and (round(geobox.affine.c), round(geobox.affine.f)) == (359130 + 2560, 5352340):
            raise rasterio.errors.RasterioIOError("HTTP response code: 500")
        return real(scene, keys, geobox, dtype)

    monkeypatch.setattr(dataset, "load_window", flaky)
    kw = {"chip_size_px": 128, "overlap_px": 0, "progress": False, "overview_max_px": 128}
    with pytest.raises(InvalidRasterError, match="HTTP response code: 500"):
        geosam.segment_scene(item_url(srv, stac_catalog), ThresholdGenerator(), **kw)
    gdf = geosam.segment_scene(item_url(srv, stac_catalog), ThresholdGenerator(), skip_bad_chips=True, **kw)
    assert [f["chip_id"] for f in gdf.attrs["geosam"]["chips_failed"]] == ["r0c2"]
    assert len(gdf) > 0


def test_a_signing_hook_and_the_remote_settings(stac_catalog, stac_served) -> None:
    from geosam.stac import RemoteEnv

    srv = stac_served
    signed: list[str] = []

    def sign(href: str) -> str:
        signed.append(href)
        return href + "?sig=abc"  # what the Planetary Computer's sign does: a token in the query

    env = RemoteEnv(timeout_s=5, max_retries=2, no_sign_request=True, requester_pays=True,
                    options=(("GDAL_HTTP_MULTIPLEX", "NO"),))
    opts = env.gdal_options()
    assert (opts["AWS_NO_SIGN_REQUEST"], opts["AWS_REQUEST_PAYER"], opts["GDAL_HTTP_MAX_RETRY"]) == ("YES", "requester", 2)
    assert opts["GDAL_HTTP_TIMEOUT"] == 5 and opts["GDAL_HTTP_MULTIPLEX"] == "NO"
    with Scene(stac_scene(item_url(srv, stac_catalog), "red,green,blue", env=env, sign=sign),
               ReadConfig(overview_max_px=128)) as sc:
        sc.read_chip(sc.chip_specs(128, 0)[0])
    assert {h.rsplit("/", 1)[1] for h in signed} == {"red.tif", "green.tif", "blue.tif"}
    with pytest.raises(StacError, match="fall on 2 days"):
        stac_scene([stac_catalog.items[0], stac_catalog.items[1]])


def test_transient_http_errors_are_retried(stac_catalog) -> None:
    from geosam.stac import RemoteEnv
    from geosam.stac.local import LocalCatalog

    with Scene(stac_catalog.stacks[0]) as local:
        want = local.read_bands((1,), local.chip_specs(128, 0)[4].window)[0]
    for failures, ok in ((2, True), (1000, False)):  # two 503s, then a store that keeps failing
        with LocalCatalog(stac_catalog.root) as srv:  # a new URL: nothing in GDAL's cache yet
            env = RemoteEnv(max_retries=3, retry_delay_s=0.05)
            with Scene(stac_scene(item_url(srv, stac_catalog), "red", env=env), ReadConfig(overview_max_px=128)) as sc:
                srv.fail_next(failures)
                if ok:  # GDAL retried the 503s: the right pixels
                    np.testing.assert_array_equal(sc.read_chip(sc.chip_specs(128, 0)[4]).raw, want)
                else:  # a chip that still cannot be read: an InvalidRasterError naming the asset (skip_bad_chips)
                    with pytest.raises(InvalidRasterError, match=r"cannot read window .*red\.tif"):
                        sc.read_chip(sc.chip_specs(128, 0)[4])
