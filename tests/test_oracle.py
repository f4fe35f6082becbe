"""The oracle mask generator and the generated test scenes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage

from geosam.errors import ConfigError, InvalidRasterError
from geosam.read.scene import Scene
from geosam.segment.base import ChipMasks, MaskGenerator
from geosam.testing import OracleMaskGenerator
from geosam.tile.grid import iter_chip_specs
from tests.data.make_scenes import (
    SceneFiles,
    check_objects,
    make_large_tiled_scene,
    make_oracle_scene,
)

FOUR = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def utm_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return make_oracle_scene(tmp_path_factory.mktemp("utm"), crs="EPSG:32633")


@pytest.fixture(scope="module")
def geo_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return make_oracle_scene(tmp_path_factory.mktemp("geo"), crs="EPSG:4326", seed=3)


def read_labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32633") -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform,
    ) as ds:
        ds.write(data)
    return path


# ---------------------------------------------------------------------------
# generated scenes


@pytest.mark.parametrize("fixture", ["utm_scene", "geo_scene"])
def test_scene_objects(fixture: str, request: pytest.FixtureRequest) -> None:
    scene: SceneFiles = request.getfixturevalue(fixture)
    lab = read_labels(scene.label_path)
    assert lab.dtype == np.uint32
    assert scene.n_objects >= 100
    assert scene.labels == list(range(1, scene.n_objects + 1))
    assert check_objects(lab) == scene.n_objects  # 1..N, >= 20 px, each one 4-connected component
    counts = np.bincount(lab.ravel())
    assert counts[1:].min() >= 20
    for k, sl in enumerate(ndimage.find_objects(lab.astype(np.int64)), start=1):
        assert ndimage.label(lab[sl] == k, structure=FOUR)[1] == 1


def test_scene_georeferencing(utm_scene: SceneFiles, geo_scene: SceneFiles) -> None:
    with rasterio.open(utm_scene.image_path) as im, rasterio.open(utm_scene.label_path) as lb:
        assert im.count == 3 and im.dtypes[0] == "uint8"
        assert (im.width, im.height) == (lb.width, lb.height) == (1200, 1000)
        assert im.transform == lb.transform and im.crs == lb.crs
        assert im.crs.to_epsg() == 32633
        assert im.res == (0.5, 0.5)
        assert 200_000 < im.transform.c < 800_000 and 5_000_000 < im.transform.f < 6_000_000
    with rasterio.open(geo_scene.image_path) as im, rasterio.open(geo_scene.label_path) as lb:
        assert im.crs.to_epsg() == 4326 and im.transform == lb.transform
        assert im.res == pytest.approx((5e-6, 5e-6))
        assert (im.transform.c, im.transform.f) == pytest.approx((13.1, 48.3))


def test_scene_has_the_hard_cases(utm_scene: SceneFiles) -> None:
    lab = read_labels(utm_scene.label_path)
    slices = ndimage.find_objects(lab.astype(np.int64))
    sizes = [(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for sl in slices]
    # larger than a 256 px chip, on both axes
    assert sum(h > 300 and w > 300 for h, w in sizes) >= 2
    # thin and long: 2-4 px wide bars longer than a 384 px chip
    areas = np.bincount(lab.ravel())[1:]
    extents = np.array([max(h, w) for h, w in sizes])
    assert np.sum((extents > 400) & (areas < 5 * extents)) >= 3
    # touching the scene border on every side
    assert lab[0].any() and lab[-1].any() and lab[:, 0].any() and lab[:, -1].any()
    # two different objects sharing an edge
    horiz = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
    vert = (lab[1:] != lab[:-1]) & (lab[1:] > 0) & (lab[:-1] > 0)
    assert horiz.sum() + vert.sum() > 100
    # objects with holes: background pixels enclosed by a single object
    holes = 0
    for k, sl in enumerate(slices, start=1):
        m = lab[sl] == k
        if (ndimage.binary_fill_holes(m) & ~m).sum() > 0:
            holes += 1
    assert holes >= 3
    # spread over the whole scene: every 256 px tile has something
    for r in range(0, 1000, 256):
        for c in range(0, 1200, 256):
            assert lab[r : r + 256, c : c + 256].any()


def test_scene_is_deterministic(tmp_path: Path, utm_scene: SceneFiles) -> None:
    again = make_oracle_scene(tmp_path, crs="EPSG:32633")
    np.testing.assert_array_equal(read_labels(again.label_path), read_labels(utm_scene.label_path))
    with rasterio.open(again.image_path) as a, rasterio.open(utm_scene.image_path) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    other = make_oracle_scene(tmp_path, crs="EPSG:32633", seed=1)
    assert not np.array_equal(read_labels(other.label_path), read_labels(utm_scene.label_path))


def test_small_scene_with_few_objects(tmp_path: Path) -> None:
    s = make_oracle_scene(tmp_path, width=300, height=200, n_objects=10, seed=5)
    lab = read_labels(s.label_path)
    assert lab.shape == (200, 300)
    assert check_objects(lab) == s.n_objects >= 10


def test_large_tiled_scene_is_written_in_blocks(tmp_path: Path) -> None:
    f = make_large_tiled_scene(tmp_path / "img.tif", tmp_path / "lab.tif", size=1100, block=256, seed=2)
    with rasterio.open(f.image_path) as im, rasterio.open(f.label_path) as lb:
        assert im.profile["tiled"] and im.block_shapes[0] == (256, 256)
        assert lb.block_shapes[0] == (256, 256) and lb.dtypes[0] == "uint32"
        assert (im.width, im.height, im.count) == (1100, 1100, 3)
        assert im.transform == lb.transform
        lab = lb.read(1)
    assert check_objects(lab) == f.n_objects > 100
    # some objects straddle a block boundary
    crossing = np.intersect1d(np.unique(lab[:, 255]), np.unique(lab[:, 256]))
    assert crossing[crossing > 0].size > 0


# ---------------------------------------------------------------------------
# the oracle


def test_oracle_is_a_mask_generator(utm_scene: SceneFiles) -> None:
    oracle = OracleMaskGenerator(utm_scene.label_path)
    assert isinstance(oracle, MaskGenerator)
    assert oracle.name == "oracle"


@pytest.mark.parametrize(("chip", "overlap"), [(256, 32), (384, 64)])
def test_oracle_matches_label_raster(utm_scene: SceneFiles, chip: int, overlap: int) -> None:
    oracle = OracleMaskGenerator(utm_scene.label_path)
    lab = read_labels(utm_scene.label_path)
    with Scene(utm_scene.image_path) as scene:
        i = scene.info
        specs = list(iter_chip_specs(scene.path, i.width, i.height, i.transform, i.crs_wkt, chip, overlap))
        assert len(specs) > 1
        for spec in specs:
            c = scene.read_chip(spec)
            masks, labels = oracle.generate_with_labels(c)
            window = lab[spec.window.slices()]
            expected = np.unique(window)
            expected = expected[expected > 0]
            np.testing.assert_array_equal(labels, expected)
            np.testing.assert_array_equal(oracle.last_labels, expected)
            assert masks.masks.shape == (len(expected), c.height, c.width)
            assert masks.masks.dtype == bool
            for m, k in zip(masks.masks, expected):
                np.testing.assert_array_equal(m, window == k)
            np.testing.assert_array_equal(masks.predicted_iou, np.ones(len(expected), np.float32))
            np.testing.assert_array_equal(masks.stability_score, np.ones(len(expected), np.float32))
            again = oracle.generate(c)
            np.testing.assert_array_equal(again.masks, masks.masks)


def test_oracle_geographic_scene(geo_scene: SceneFiles) -> None:
    oracle = OracleMaskGenerator(geo_scene.label_path)
    lab = read_labels(geo_scene.label_path)
    seen: set[int] = set()
    with Scene(geo_scene.image_path) as scene:
        for spec in scene.chip_specs(512, 64):
            seen.update(oracle.generate_with_labels(scene.read_chip(spec))[1].tolist())
    assert seen == set(range(1, int(lab.max()) + 1))


def test_oracle_empty_chip(tmp_path: Path) -> None:
    t = Affine(0.5, 0, 360000, 0, -0.5, 5350000)
    lab = np.zeros((300, 300), dtype=np.int32)
    lab[:50, :50] = 7
    lab_path = write_raster(tmp_path / "lab.tif", lab, t)
    img_path = write_raster(tmp_path / "img.tif", np.zeros((3, 300, 300), np.uint8), t)
    oracle = OracleMaskGenerator(lab_path)
    with Scene(img_path) as scene:
        specs = scene.chip_specs(128, 16)
        first, last = specs[0], specs[-1]
        masks = oracle.generate(scene.read_chip(last))
        assert len(masks) == 0 and masks.masks.shape == ChipMasks.empty(128, 128).masks.shape
        assert oracle.last_labels.size == 0
        masks = oracle.generate(scene.read_chip(first))
        assert oracle.last_labels.tolist() == [7] and masks.masks[0].sum() == 2500


def test_oracle_rejects_other_grid(tmp_path: Path, utm_scene: SceneFiles) -> None:
    with rasterio.open(utm_scene.label_path) as ds:
        t, lab, crs = ds.transform, ds.read(1), ds.crs
    shifted = write_raster(tmp_path / "shifted.tif", lab, t @ Affine.translation(1, 0), crs.to_string())
    smaller = write_raster(tmp_path / "smaller.tif", lab[:-10], t, crs.to_string())
    other_crs = write_raster(tmp_path / "crs.tif", lab, t, "EPSG:32632")
    with Scene(utm_scene.image_path) as scene:
        chip = scene.read_chip(scene.chip_specs(256, 32)[5])
    for bad in (shifted, smaller, other_crs):
        with pytest.raises(ConfigError) as err:
            OracleMaskGenerator(bad).generate(chip)
        assert str(bad) in str(err.value) and str(utm_scene.image_path) in str(err.value)
    # a tiny rounding difference is fine
    nudged = Affine(t.a, t.b, t.c + 1e-7, t.d, t.e, t.f)
    ok = write_raster(tmp_path / "ok.tif", lab, nudged, crs.to_string())
    assert len(OracleMaskGenerator(ok).generate(chip)) > 0


def test_oracle_rejects_bad_rasters(tmp_path: Path) -> None:
    t = Affine(0.5, 0, 360000, 0, -0.5, 5350000)
    floats = write_raster(tmp_path / "float.tif", np.zeros((20, 20), np.float32), t)
    bands = write_raster(tmp_path / "bands.tif", np.zeros((2, 20, 20), np.uint16), t)
    for bad, word in ((floats, "integer"), (bands, "band")):
        with pytest.raises(InvalidRasterError) as err:
            OracleMaskGenerator(bad)
        assert str(bad) in str(err.value) and word in str(err.value)
    with pytest.raises(InvalidRasterError):
        OracleMaskGenerator(tmp_path / "missing.tif")


def test_oracle_pickles(utm_scene: SceneFiles) -> None:
    oracle = OracleMaskGenerator(utm_scene.label_path)
    with Scene(utm_scene.image_path) as scene:
        chip = scene.read_chip(scene.chip_specs(256, 32)[7])
    before = oracle.generate(chip)  # opens a handle, which must not be pickled
    clone = pickle.loads(pickle.dumps(oracle))
    after = clone.generate(chip)
    np.testing.assert_array_equal(before.masks, after.masks)
    np.testing.assert_array_equal(clone.last_labels, oracle.last_labels)
    oracle.close()
    np.testing.assert_array_equal(oracle.generate(chip).masks, before.masks)  # reopens


def test_oracle_reads_only_the_window(utm_scene: SceneFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = OracleMaskGenerator(utm_scene.label_path)
    with Scene(utm_scene.image_path) as scene:
        spec = scene.chip_specs(128, 16)[3]
        chip = scene.read_chip(spec)
    ds = oracle._dataset()
    calls: list[dict] = []
    real_read = ds.read

    def spy(*args, **kw):
        calls.append(kw)
        return real_read(*args, **kw)

    monkeypatch.setattr(ds, "read", spy)
    oracle.generate(chip)
    assert len(calls) == 1 and calls[0]["window"] == Window(
        spec.window.col_off, spec.window.row_off, spec.window.width, spec.window.height
    )


def _count_in_worker(args: tuple[OracleMaskGenerator, object]) -> list[int]:
    oracle, chip = args
    return oracle.generate_with_labels(chip)[1].tolist()


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_oracle_in_worker_processes(utm_scene: SceneFiles) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    oracle = OracleMaskGenerator(utm_scene.label_path)
    with Scene(utm_scene.image_path) as scene:
        chips = [scene.read_chip(s) for s in scene.chip_specs(256, 32)[:4]]
    expected = [oracle.generate_with_labels(c)[1].tolist() for c in chips]  # parent holds an open handle
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        assert list(ex.map(_count_in_worker, [(oracle, c) for c in chips])) == expected
