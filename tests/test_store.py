"""Streamed output: finished objects wait on disk (geosam.assemble.store) and are written in batches (geosam.write.vector)."""

from __future__ import annotations

import random

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geosam.assemble.records import Record
from geosam.assemble.store import ObjectStore
from geosam.errors import ExportError
from geosam.modes.everything import segment_scene, segment_scene_to_file
from geosam.testing import OracleMaskGenerator
from geosam.write.vector import write_frames, write_vector

KW = {"chip_size_px": 256, "overlap_px": 32, "progress": False}


@pytest.fixture(scope="module")
def scene(oracle_scene_600):
    return oracle_scene_600


def _oracle(scene):
    return OracleMaskGenerator(scene.label_path)


def _same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    assert a.crs == b.crs
    geom = a.geometry.name
    for col in a.columns:
        if col == geom:
            assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry))
        elif a[col].dtype.kind == "f":
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-12, equal_nan=True)
        else:
            assert a[col].tolist() == b[col].tolist(), col


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".shp", ".parquet"])
def test_streamed_output_equals_the_frame_written_whole(scene, tmp_path, ext) -> None:
    gdf = segment_scene(scene.image_path, _oracle(scene), **KW)
    assert len(gdf) == scene.n_objects
    whole = write_vector(gdf, tmp_path / f"whole{ext}")
    stats = segment_scene_to_file(scene.image_path, tmp_path / f"streamed{ext}", _oracle(scene), **KW)
    assert stats.objects == len(gdf) and stats.output == str(tmp_path / f"streamed{ext}")
    read = gpd.read_parquet if ext == ".parquet" else gpd.read_file
    _same(read(tmp_path / f"streamed{ext}"), read(whole))
    assert not list(tmp_path.glob(".*")), "the objects' temporary store is removed"


def test_filters_ranking_and_reprojection_stream_like_the_frame(scene, tmp_path) -> None:
    kw = {**KW, "indices": ["exg"], "min_index": {"exg": 0.0}, "rank_by": "exg_mean", "top_k": 12,
          "min_area_m2": 30.0, "to_crs": "EPSG:4326"}
    full = segment_scene(scene.image_path, _oracle(scene), **KW)
    gdf = segment_scene(scene.image_path, _oracle(scene), **kw)
    assert 0 < len(gdf) <= 12 and list(gdf["rank"]) == list(range(1, len(gdf) + 1))
    assert (gdf["exg_mean"] >= 0).all() and (gdf["area_m2"] >= 30).all()
    assert gdf["exg_mean"].is_monotonic_decreasing
    assert gdf.crs.to_epsg() == 4326
    # ids: spatial order among the objects that pass the filters (not the ranking)
    kept = segment_scene(scene.image_path, _oracle(scene), **{**kw, "rank_by": None, "top_k": None,
                                                                "to_crs": None})
    assert len(kept) < len(full)
    assert sorted(gdf["id"]) == sorted(kept.sort_values("exg_mean", ascending=False)["id"][:12])
    segment_scene_to_file(scene.image_path, tmp_path / "ranked.gpkg", _oracle(scene), **kw)
    _same(gpd.read_file(tmp_path / "ranked.gpkg"), gpd.read_file(write_vector(gdf, tmp_path / "whole.gpkg")))


def _records(n: int, seed: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.integers(0, 50, 2)
        g = shapely.box(400000 + x, 5000000 - y - 3, 400000 + x + 1 + i % 3, 5000000 - y)
        out.append(Record((float(y), float(x), g.area), g, 0.5 + i / (2 * n), 0.9, 1 + i % 2,
                          extra={"exg_mean": float(rng.normal()) if i % 7 else float("nan")}))
    return out


def test_ids_do_not_depend_on_arrival_order_or_batch_size() -> None:
    recs = _records(300, 0)  # ties in (row, col) on purpose: 50 x 50 positions
    frames = []
    for order_seed, batch in ((None, 10_000), (1, 7), (2, 64)):
        todo = list(recs)
        if order_seed is not None:
            random.Random(order_seed).shuffle(todo)
        with ObjectStore("EPSG:32633") as store:
            for k in range(0, len(todo), 13):
                store.add(todo[k:k + 13])
            parts = list(store.frames("m", batch_rows=batch))
            assert len(parts) == -(-300 // batch)
            frames.append(gpd.pd.concat(parts, ignore_index=True))
    for f in frames[1:]:
        _same(f, frames[0])
    assert list(frames[0]["id"]) == list(range(1, 301))
    keys = [(g.bounds[3], g.bounds[0]) for g in frames[0].geometry]
    assert keys == sorted(keys, key=lambda k: (-k[0], k[1]))  # top-to-bottom, left-to-right


def test_ranking_puts_nan_last_and_keeps_id_order_on_ties() -> None:
    with ObjectStore("EPSG:32633") as store:
        store.add(_records(50, 3))
        gdf = gpd.pd.concat(list(store.frames("m", rank_by="exg_mean", batch_rows=9)), ignore_index=True)
        n_nan = int(gdf["exg_mean"].isna().sum())
        assert n_nan > 0 and gdf["exg_mean"].iloc[-n_nan:].isna().all()
        assert gdf["exg_mean"].iloc[:-n_nan].is_monotonic_decreasing
        assert list(gdf["id"].iloc[-n_nan:]) == sorted(gdf["id"].iloc[-n_nan:])
        assert list(gdf["rank"]) == list(range(1, 51))
        with pytest.raises(Exception, match="cannot rank by 'nope'"):
            list(store.frames("m", rank_by="nope"))


def test_empty_store_gives_one_empty_frame_with_the_columns(tmp_path) -> None:
    with ObjectStore("EPSG:32633") as store:
        parts = list(store.frames("m", require=["ndvi_mean"]))
        assert len(parts) == 1 and len(parts[0]) == 0
        assert "ndvi_mean" in parts[0].columns
        write_frames(iter(parts), tmp_path / "empty.gpkg", geometry_types=store.geometry_types)
    back = gpd.read_file(tmp_path / "empty.gpkg")
    assert len(back) == 0 and "ndvi_mean" in back.columns and back.crs.to_epsg() == 32633


def test_a_failing_stream_leaves_the_previous_output_intact(scene, tmp_path) -> None:
    out = tmp_path / "objects.gpkg"
    segment_scene_to_file(scene.image_path, out, _oracle(scene), **KW)
    before = out.read_bytes()

    def frames():
        yield gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32633")
        raise RuntimeError("disk on fire")

    with pytest.raises(ExportError, match="disk on fire"):
        write_frames(frames(), out, geometry_types={"Polygon"})
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.gpkg"]


def test_the_run_loop_hands_records_to_the_sink_not_a_list(scene) -> None:
    from geosam.assemble.assemblers import GridAssembler
    from geosam.config import SegmentConfig
    from geosam.read.scene import Scene
    from geosam.run.loop import ChipTask, run

    cfg = SegmentConfig().with_overrides(**KW)
    got: list[Record] = []
    with Scene(scene.image_path, cfg.read) as sc:
        specs = sc.chip_specs(256, 32)
        records, _ = run(sc, [ChipTask(s) for s in specs], _oracle(scene),
                             GridAssembler(specs, cfg.output.match_iou), cfg.engine, sink=got.extend)
    assert records == [] and len(got) == scene.n_objects


def test_stores_left_by_killed_runs_are_removed_live_ones_kept(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from geosam.assemble.store import STORE_PREFIX, remove_stale_stores

    code = ("import sys, time; from geosam.assemble.store import ObjectStore; s = ObjectStore('EPSG:32633', folder=sys.argv[1]);"
            " print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    (stale,) = tmp_path.glob(STORE_PREFIX + "*")
    assert remove_stale_stores(tmp_path) == []  # its run is alive
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stale.exists()  # a killed run leaves it ...
    with ObjectStore("EPSG:32633", folder=tmp_path) as live:  # ... and the next run removes it
        assert not stale.exists()
        (mine,) = tmp_path.glob(STORE_PREFIX + "*")
        assert remove_stale_stores(tmp_path) == [] and mine.exists()  # a live store in this process is kept
        live.add([])
    assert not list(tmp_path.glob(STORE_PREFIX + "*"))


def test_a_closing_store_is_removed_under_its_lock_and_no_sweep_recreates_its_lock(tmp_path, monkeypatch) -> None:
    """A store's folder goes while its lock is held, and `remove_stale_stores` never creates a lock file: a sweep
    that saw the lock just before its owner deleted it used to recreate it ("Directory not empty" in the owner's
    close, seen with two test workers)."""
    import fcntl
    from pathlib import Path

    from geosam.assemble.store import STORE_PREFIX, remove_stale_stores

    store = ObjectStore("EPSG:32633", folder=tmp_path)
    (folder,) = tmp_path.glob(STORE_PREFIX + "*")
    cleanup = store._dir.cleanup
    held = []

    def check_then_clean() -> None:
        with open(folder / "lock", "r+") as f:  # another process's attempt
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except OSError:
                held.append(True)
        cleanup()

    monkeypatch.setattr(store._dir, "cleanup", check_then_clean)
    store.close()
    assert held == [True] and not folder.exists()

    gone = tmp_path / (STORE_PREFIX + "closing")
    gone.mkdir()
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p: True if p == gone / "lock" else real_exists(p))
    assert remove_stale_stores(tmp_path) == []  # the lock vanished between the look and the open: skipped
    assert list(gone.iterdir()) == []  # and not recreated
