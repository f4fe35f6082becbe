"""A remote scene read by windows: a Cloud-Optimized GeoTIFF over HTTP (``/vsicurl/``).

The COG is served on 127.0.0.1 with byte-range support by the package's own server
(`geosam.stac.local.LocalCatalog`); labels for the oracle generator stay local. Results must equal the
local run, and a run that needs one window must transfer far less than the file.
If GDAL is built without curl, the tests are skipped saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

import geosam
from geosam.stac.local import LocalCatalog
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(COG image, local label raster): 1024 x 1024 px, 128 px blocks, with overviews; objects bright, plus noise."""
    d = tmp_path_factory.mktemp("remote")
    files = make_oracle_scene(d, width=1024, height=1024, n_objects=40, seed=7)
    with rasterio.open(files.label_path) as lab:
        objects = lab.read(1) > 0
    with rasterio.open(files.image_path) as src:
        data = np.where(objects, 220, 40).astype(np.uint8)[None].repeat(src.count, 0)  # bright objects (prompt oracle)
        noise = np.random.default_rng(0).integers(0, 24, data.shape, dtype=np.uint8)  # realistic, not compressible
        prof = {"driver": "COG", "width": src.width, "height": src.height, "count": src.count, "dtype": "uint8",
                "crs": src.crs, "transform": src.transform, "blocksize": 128, "compress": "deflate"}
    path = d / "www" / "scene.tif"
    path.parent.mkdir()
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(np.clip(data.astype(np.int16) + noise - 12, 0, 255).astype(np.uint8))
    with rasterio.open(path) as ds:
        assert ds.overviews(1) and ds.block_shapes[0] == (128, 128)
    return path, files.label_path


@pytest.fixture(scope="module")
def server(cog: tuple[Path, Path]) -> Iterator[LocalCatalog]:
    srv = LocalCatalog(cog[0].parent, lifetime_s=600)
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            rasterio.open(f"/vsicurl/{srv.url}/scene.tif").close()
    except rasterio.errors.RasterioIOError as exc:
        srv.stop()
        pytest.skip(f"GDAL cannot read over HTTP here (built without curl?): {exc}")
    yield srv
    srv.stop()


def geometries(gdf) -> list[bytes]:
    return [g.normalize().wkb for g in gdf.geometry]


def test_segment_a_remote_cog_equals_the_local_run(cog: tuple[Path, Path], server: LocalCatalog) -> None:
    path, labels = cog
    kw = {"chip_size_px": 256, "overlap_px": 32, "progress": False}
    local = geosam.segment_scene(path, OracleMaskGenerator(labels), **kw)
    server.reset()
    remote = geosam.segment_scene(f"/vsicurl/{server.url}/scene.tif", OracleMaskGenerator(labels), **kw)
    assert server.bytes_sent > 0
    assert len(remote) == len(local) > 10
    assert geometries(remote) == geometries(local)
    np.testing.assert_array_equal(remote["area_m2"], local["area_m2"])


def test_one_prompt_reads_a_small_part_of_a_remote_cog(cog: tuple[Path, Path], server: LocalCatalog) -> None:
    from tests.test_user_mistakes import oracle_bundle

    path, labels = cog
    with rasterio.open(labels) as ds:
        lab = ds.read(1)
        t = ds.transform
    rows, cols = np.nonzero(lab == lab[lab > 0].min())  # one object: a box prompt around it, grown a little
    x0, y1 = t * (cols.min() - 4, rows.min() - 4)
    x1, y0 = t * (cols.max() + 5, rows.max() + 5)
    prompt = [(x0, y0, x1, y1)]
    bundle = oracle_bundle()
    local = geosam.segment_prompts(path, prompt, model=bundle, progress=False)
    server.reset()
    remote = geosam.segment_prompts(f"/vsicurl/{server.url}/scene.tif", prompt, model=bundle, progress=False)
    assert remote["status"].tolist() == local["status"].tolist() == ["ok"]
    assert geometries(remote) == geometries(local)
    size = path.stat().st_size
    assert 0 < server.bytes_sent < size / 4, (server.bytes_sent, size)
