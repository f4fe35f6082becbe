"""Scale-out on Dask: a LocalCluster of two worker processes (the session's `dask_client`) gives the in-process
output."""

from __future__ import annotations

import pytest

from geosam.errors import ConfigError
from geosam.modes.everything import segment_scene
from geosam.modes.prompted import segment_prompts
from geosam.testing import OracleMaskGenerator
from tests._scale_helpers import CountingOracle, PhraseOracle, read_log
from tests.data.make_scenes import make_oracle_scene
from tests.test_journal import assert_same

distributed = pytest.importorskip("distributed")

KW = {"chip_size_px": 192, "overlap_px": 32, "progress": False}
TINY = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "device": "cpu"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    return make_oracle_scene(tmp_path_factory.mktemp("dask"), width=600, height=500, n_objects=40, seed=21)


def test_two_workers_give_the_in_process_output(dask_client, scene, tmp_path) -> None:
    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    log = str(tmp_path / "chips.log")
    dask = segment_scene(scene.image_path, CountingOracle(scene.label_path, log), scheduler=dask_client, **KW)
    assert_same(dask, local)
    assert len(dask) == scene.n_objects
    assert sorted(read_log(log)) == sorted({line for line in read_log(log)})  # every chip generated once
    assert len(read_log(log)) == local.attrs["geosam"]["chips_total"]


def test_dask_run_journals_and_resumes(dask_client, scene, tmp_path) -> None:
    import sqlite3

    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    journal = tmp_path / "j"
    first = segment_scene(scene.image_path, CountingOracle(scene.label_path), journal=journal,
                          scheduler=dask_client, **KW)
    assert_same(first, local)
    with sqlite3.connect(journal) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM chips")]
        conn.executemany("DELETE FROM chips WHERE key = ?", [(k,) for k in keys[1::2]])
    log = str(tmp_path / "chips.log")
    again = segment_scene(scene.image_path, CountingOracle(scene.label_path, log), journal=journal,
                          scheduler=dask_client, **KW)
    assert_same(again, local)
    assert sorted(read_log(log)) == sorted(k.split(":")[0] for k in keys[1::2])


def test_index_prefilter_runs_on_the_workers(dask_client, scene) -> None:
    kw = {**KW, "indices": ["exg"], "min_index": {"exg": 0.1}, "prefilter": True}
    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **kw)
    dask = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), scheduler=dask_client, **kw)
    assert "exg_mean" in dask.columns
    assert_same(dask, local)
    assert local.attrs["geosam"]["prompts_total"] > 0
    for key in ("prompts_total", "prompts_skipped_prefilter", "chips_skipped_prefilter"):
        assert dask.attrs["geosam"][key] == local.attrs["geosam"][key]


@pytest.mark.slow
def test_tiny_sam_on_two_workers_gives_the_in_process_output(dask_client, tiny_sam_dir, tmp_path) -> None:
    small = make_oracle_scene(tmp_path, width=320, height=240, n_objects=8, seed=3)
    kw = {"model": tiny_sam_dir, "chip_size_px": 192, "overlap_px": 32, "progress": False, **TINY}
    local = segment_scene(small.image_path, **kw)
    dask = segment_scene(small.image_path, scheduler=dask_client, **kw)
    assert len(local) > 0
    # dtype="auto" is decided once, on the client, and the workers compute in it whatever their CPU
    assert dask.attrs["geosam"]["dtype"] == local.attrs["geosam"]["dtype"] in ("float32", "bfloat16")
    assert_same(dask, local)


def test_text_on_two_workers_gives_the_in_process_output(dask_client, scene, tmp_path) -> None:
    """Text mode runs on Dask through the same runner as segment-everything (chips on the workers)."""
    from geosam.modes.text import segment_text

    phrases = ["building", "solar panel"]
    local = segment_text(scene.image_path, phrases, mask_generator=PhraseOracle(scene.label_path), **KW)
    log = str(tmp_path / "chips.log")
    dask = segment_text(scene.image_path, phrases, mask_generator=PhraseOracle(scene.label_path, log),
                        scheduler=dask_client, **KW)
    assert_same(dask, local)
    assert set(dask["label"]) == set(phrases)
    assert len(read_log(log)) == local.attrs["geosam"]["chips_total"]  # every chip generated on a worker


def test_a_worker_that_dies_mid_run_changes_nothing(dask_client, scene, tmp_path) -> None:
    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    marker = tmp_path / "died"
    gen = CountingOracle(scene.label_path, delay_s=0.05, die_after=3, die_marker=str(marker))
    dask = segment_scene(scene.image_path, gen, scheduler=dask_client, **KW)
    assert marker.exists()  # one worker process did exit mid-batch
    assert_same(dask, local)


def test_bad_scheduler_settings_are_refused(scene) -> None:
    with pytest.raises(ConfigError, match="unknown scheduler"):
        segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), scheduler="nowhere", **KW)
    with pytest.raises(ConfigError, match="n_workers needs scheduler"):
        segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), n_workers=2, **KW)


# -- xarray DataArrays on the cluster ---------------------------------------------------


@pytest.mark.parametrize("backing", ["lazy", "numpy"])
def test_dataarray_on_two_workers_gives_the_file_output(dask_client, scene, backing) -> None:
    """A dask-backed DataArray goes to the workers as its (small) graph and each reads its own windows;
    a numpy-backed one is scattered once. No temporary GeoTIFF either way (the workers read the array)."""
    from tests.test_xarray import dataarray

    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    da = dataarray(scene.image_path, backing=backing)
    dask = segment_scene(da, OracleMaskGenerator(scene.label_path), scheduler=dask_client, **KW)
    assert_same(dask, local)
    assert dask.attrs["geosam"]["scene"] == "DataArray 'scene'"


def test_lazy_dataarray_is_read_by_the_workers_not_the_client(dask_client, scene, monkeypatch) -> None:
    """The client never computes a window of a dask-backed DataArray: its reads are counted (none)."""
    import geosam.read.dataarray
    from tests.test_xarray import dataarray

    local = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    real_load = geosam.read.dataarray.load
    calls: list[tuple[int, ...]] = []

    def counting_load(sel):
        calls.append(tuple(sel.shape))
        return real_load(sel)

    monkeypatch.setattr(geosam.read.dataarray, "load", counting_load)
    dask = segment_scene(dataarray(scene.image_path, backing="lazy"), OracleMaskGenerator(scene.label_path),
                         scheduler=dask_client, **KW)
    assert_same(dask, local)
    assert calls == []  # uint8: no stretch sample to read; every chip window was read on a worker


# -- prompt mode on the cluster -----------------------------------------------------------


def _prompts(path):
    import rasterio
    from shapely.geometry import Point, box

    with rasterio.open(path) as ds:
        pts = [Point(*ds.xy(r, c)) for r, c in ((40, 60), (120, 250), (200, 90), (230, 300), (60, 280))]
        (x0, y0), (x1, y1) = ds.xy(20, 20), ds.xy(90, 120)
    return [*pts, box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))]


@pytest.mark.slow
def test_prompts_on_two_workers_give_the_in_process_output(dask_client, tiny_sam_dir, tmp_path) -> None:
    import torch

    small = make_oracle_scene(tmp_path, width=320, height=240, n_objects=8, seed=3)
    kw = {"model": tiny_sam_dir, "chip_size_px": 160, "overlap_px": 32, "progress": False, "device": "cpu",
          "dtype": "float32"}
    prompts = _prompts(small.image_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Dask worker (OMP_NUM_THREADS=1): float32 sums in the same order, same bits
    try:
        local = segment_prompts(small.image_path, prompts, **kw)
    finally:
        torch.set_num_threads(threads)
    dask = segment_prompts(small.image_path, prompts, scheduler=dask_client, **kw)
    assert local.attrs["geosam"]["windows"] > 1
    assert set(local["status"]) <= {"ok", "empty"} and (local["status"] == "ok").any()
    assert_same(dask, local)


def test_prompt_scheduler_settings_are_refused_before_the_model(scene) -> None:
    from click.testing import CliRunner

    from geosam.cli.main import cli

    with pytest.raises(ConfigError, match="n_workers needs scheduler"):
        segment_prompts(scene.image_path, _prompts(scene.image_path), model="no-such-model", n_workers=2)
    res = CliRunner().invoke(cli, ["prompt", str(scene.image_path), "-o", "out.gpkg", "--points", "1,2",
                                   "--workers", "2"])
    assert res.exit_code != 0 and "n_workers needs scheduler" in res.output
