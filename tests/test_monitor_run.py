"""Monitoring through the run machinery: chip tasks, the journal (resume, refusal), Dask, the on-disk store and
the streamed tables (equal to the in-memory ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT / "data" / "ftw_sentinel2_rgbn_2dates.tif"
STACK = {"2021-06-01": "red=1,green=2,blue=3,nir=4", "2021-09-01": "red=5,green=6,blue=7,nir=8"}


def _fields(n: int = 50, seed: int = 3):
    """Rotated rectangles and discs inside the S2 sample (some overlapping, some larger than a 16 px chip)."""
    import geopandas as gpd
    import rasterio
    from shapely import affinity
    from shapely.geometry import Point, box

    rng = np.random.default_rng(seed)
    with rasterio.open(S2) as d:
        b, crs = d.bounds, d.crs
    geoms = []
    for k in range(n):
        x, y = rng.uniform(b.left + 300, b.right - 300), rng.uniform(b.bottom + 300, b.top - 300)
        g = Point(x, y).buffer(rng.uniform(15, 90)) if k % 3 == 0 else affinity.rotate(
            box(x, y, x + rng.uniform(20, 250), y + rng.uniform(20, 150)), rng.uniform(0, 90))
        geoms.append(g)
    return gpd.GeoDataFrame({"field": [f"f{k}" for k in range(n)]}, geometry=geoms, crs=crs).to_crs("EPSG:4326")


def _same(a, b):
    """Two tables equal: same columns, rows and values (NaN == NaN; geometries by WKB)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        if c == "geometry":
            assert a.geometry.to_wkb().tolist() == b.geometry.to_wkb().tolist()
        else:
            pd.testing.assert_series_equal(a[c].reset_index(drop=True), b[c].reset_index(drop=True), check_names=False)


def _run(objs, **kw):
    from geosam.monitor.series import monitor_objects

    kw.setdefault("chip_size_px", 16)  # most objects are cut by chip edges: pieces combined exactly
    kw.setdefault("stack", STACK)
    return monitor_objects(str(S2), objs, **kw)


def test_streamed_files_equal_the_in_memory_tables(tmp_path, monkeypatch):
    import geopandas as gpd

    from geosam.monitor import stream
    from geosam.write.vector import read_vector

    objs = _fields()
    settings = {"rank_by": "ndvi_delta", "ascending": True, "loss": ["ndvi:-0.1"], "min_valid": 0.3}
    ref = _run(objs, output=tmp_path / "a.gpkg", long_output=tmp_path / "a.csv", **settings)
    monkeypatch.setattr(stream, "TABLE_BATCH", 7)  # many batches: the tables are never whole
    got = _run(objs, output=tmp_path / "b.gpkg", long_output=tmp_path / "b.csv", keep_tables=False, **settings)
    assert got.wide is None and got.long is None and got.n_rows == len(objs)
    _same(read_vector(tmp_path / "a.gpkg"), read_vector(tmp_path / "b.gpkg"))
    _same(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    _run(objs, long_output=tmp_path / "b.parquet", keep_tables=False, **settings)
    _run(objs, long_output=tmp_path / "b.geoparquet", keep_tables=False, **settings)
    _same(pd.read_parquet(tmp_path / "b.parquet"), ref.long.drop(columns="geometry"))
    _same(gpd.read_parquet(tmp_path / "b.geoparquet"), ref.long)


def test_results_go_to_the_store_and_tables_are_built_in_batches(tmp_path, monkeypatch):
    """Behaviour, not time: every per-object per-date result is a row of the on-disk store, the run asks it for
    at most one batch of objects at a time, and the writer receives batches, never the whole table."""
    from geosam.monitor import stream
    from geosam.monitor.store import StatsStore
    from geosam.write import vector

    objs = _fields(n=40)
    monkeypatch.setattr(stream, "TABLE_BATCH", 6)
    asked: list[int] = []
    rows: list[int] = []
    real_stats, real_close = StatsStore.date_stats, StatsStore.close

    def date_stats(self, date, ids):
        asked.append(len(ids))
        return real_stats(self, date, ids)

    def close(self):
        rows.append(int(self.conn.execute("SELECT COUNT(*) FROM stats").fetchone()[0]))
        real_close(self)

    monkeypatch.setattr(StatsStore, "date_stats", date_stats)
    monkeypatch.setattr(StatsStore, "close", close)
    sizes: list[int] = []
    real_write = vector.write_frames

    def write_frames(frames, path, **kw):
        def spy():
            for f in frames:
                sizes.append(len(f))
                yield f
        return real_write(spy(), path, **kw)

    monkeypatch.setattr(vector, "write_frames", write_frames)
    r = _run(objs, output=tmp_path / "w.gpkg", keep_tables=False, rank_by="ndvi_delta")
    assert r.wide is None and r.n_rows == 40
    assert max(asked) <= 6 and sum(sizes) == 40 and max(sizes) <= 6
    assert rows == [2 * 40]  # the store held every object x date (all inside the raster) when the tables were written


def test_killed_run_resumes_from_its_journal(tmp_path, monkeypatch):
    from geosam.monitor import measure
    from geosam.monitor.chips import chip_stats

    objs = _fields()
    ref = _run(objs)
    journal = tmp_path / "run.geosam-journal"
    calls = {"n": 0}

    def dies(job, tasks):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # killed mid-way
        return chip_stats(job, tasks)

    monkeypatch.setattr(measure, "chip_stats", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(objs, journal=journal)
    monkeypatch.setattr(measure, "chip_stats", chip_stats)
    again = _run(objs, journal=journal)
    assert again.tasks["replayed"] == 5 * measure.BATCH_TASKS
    assert again.tasks["computed"] == again.tasks["total"] - again.tasks["replayed"] > 0
    _same(again.wide, ref.wide)
    _same(again.long, ref.long)
    ranked = _run(objs, journal=journal, rank_by="ndvi_delta", min_valid=0.2)  # applied after the chips: same run
    assert ranked.tasks["computed"] == 0 and ranked.wide["rank"].tolist() == list(range(1, len(objs) + 1))


_KILLED_RUN = """
import os, signal, sys
import geopandas as gpd
from geosam.monitor import measure
from geosam.monitor.chips import chip_stats
from geosam.monitor.series import monitor_objects

calls = [0]

def dies(job, tasks):
    calls[0] += 1
    if calls[0] > 3:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-run: no cleanup at all
    return chip_stats(job, tasks)

measure.chip_stats = dies
stack = {"2021-06-01": "red=1,green=2,blue=3,nir=4", "2021-09-01": "red=5,green=6,blue=7,nir=8"}
monitor_objects(sys.argv[1], gpd.read_file(sys.argv[2]), stack=stack, chip_size_px=16, journal=sys.argv[3])
"""


def test_run_killed_with_sigkill_resumes_identically(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import geopandas as gpd

    objs = _fields()
    src = tmp_path / "objs.gpkg"
    objs.to_file(src)
    objs = gpd.read_file(src)  # the same geometries the killed process read
    journal = tmp_path / "run.geosam-journal"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(S2), str(src), str(journal)], env=env, check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    again = _run(objs, journal=journal)
    from geosam.monitor.measure import BATCH_TASKS

    assert again.tasks["replayed"] == 3 * BATCH_TASKS and again.tasks["computed"] > 0  # 3 batches were committed
    ref = _run(objs)
    _same(again.wide, ref.wide)
    _same(again.long, ref.long)


def test_journal_of_other_objects_or_settings_is_refused(tmp_path):
    from geosam.errors import ConfigError

    objs = _fields()
    journal = tmp_path / "run.geosam-journal"
    _run(objs, journal=journal)
    with pytest.raises(ConfigError, match="another run.*objects"):
        _run(objs.iloc[:-1], journal=journal)
    with pytest.raises(ConfigError, match="another run.*chip_size_px"):
        _run(objs, journal=journal, chip_size_px=32)
    with pytest.raises(ConfigError, match="another run.*dates"):
        _run(objs, journal=journal, stack={"2021-06-01": STACK["2021-06-01"], "2021-10-01": STACK["2021-09-01"]})


def test_cli_resume_and_scheduler_checked(tmp_path):
    from click.testing import CliRunner

    from geosam.cli.main import cli

    p = tmp_path / "f.gpkg"
    _fields(n=10).to_file(p)
    args = ["monitor", str(S2), "--stack", "2021-06-01:red=1,green=2,blue=3,nir=4", "--stack",
            "2021-09-01:red=5,green=6,blue=7,nir=8", "--objects", str(p), "-o", str(tmp_path / "w.gpkg")]
    r = CliRunner().invoke(cli, [*args, "--resume", "--keep-journal"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w.gpkg.geosam-journal").exists()
    r = CliRunner().invoke(cli, [*args, "--resume", "--overwrite"])  # the output exists now
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "w.gpkg.geosam-journal").exists()
    r = CliRunner().invoke(cli, [*args, "--workers", "2", "--overwrite"])
    assert r.exit_code == 1 and "n_workers needs scheduler" in r.output


def test_local_dask_cluster_gives_the_in_process_result():
    objs = _fields(n=30)
    ref = _run(objs)
    got = _run(objs, scheduler="local", n_workers=1)
    assert got.tasks["computed"] == ref.tasks["computed"] > 0
    _same(got.wide, ref.wide)
    _same(got.long, ref.long)


@pytest.mark.parametrize("suffix", [".gpkg", ".geoparquet"])
def test_objects_file_is_read_in_batches_never_whole(tmp_path, monkeypatch, suffix):
    """A file of objects is read a batch at a time (spied readers: no call reads more than the batch), its rows
    come back from the store for the tables, and the files equal those of the run given the GeoDataFrame."""
    import geopandas as gpd
    import pyarrow.parquet as pq
    import pyogrio

    from geosam.monitor import objects as objects_mod
    from geosam.monitor import stream
    from geosam.write import vector
    from geosam.write.vector import read_vector, write_vector

    objs = _fields(40)
    objs["area_ha"] = objs.to_crs(objs.estimate_utm_crs()).area / 1e4
    objs["n"] = np.arange(40, dtype=np.int64) * 3
    objs["note"] = [None if k % 5 == 0 else f"n{k}" for k in range(40)]
    src = tmp_path / f"fields{suffix}"
    write_vector(objs, src)
    settings = {"rank_by": "ndvi_delta", "loss": ["ndvi:-0.1"], "chip_size_px": 32}
    _run(read_vector(src), output=tmp_path / "a.gpkg", long_output=tmp_path / "a.geoparquet", keep_tables=False,
         **settings)

    batch = 6
    monkeypatch.setattr(objects_mod, "OBJECT_BATCH", batch)
    monkeypatch.setattr(stream, "TABLE_BATCH", 9)
    sizes: list[int] = []
    ogr_read, pq_batches = pyogrio.read_dataframe, pq.ParquetFile.iter_batches

    def spy_ogr(path, *a, **kw):
        assert kw.get("max_features") is not None and kw["max_features"] <= batch, kw
        out = ogr_read(path, *a, **kw)
        sizes.append(len(out))
        return out

    def spy_pq(self, *a, **kw):
        assert kw.get("batch_size") is not None and kw["batch_size"] <= batch, kw
        for b in pq_batches(self, *a, **kw):
            sizes.append(b.num_rows)
            yield b

    def whole(*a, **kw):
        raise AssertionError("the objects file was read whole")

    monkeypatch.setattr(pyogrio, "read_dataframe", spy_ogr)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy_pq)
    monkeypatch.setattr(vector, "read_vector", whole)
    monkeypatch.setattr(gpd, "read_parquet", whole)
    monkeypatch.setattr(gpd, "read_file", whole)
    got = _run(str(src), output=tmp_path / "b.gpkg", long_output=tmp_path / "b.geoparquet", keep_tables=False,
               **settings)
    monkeypatch.undo()
    assert got.n_rows == 40
    assert sizes and max(sizes) <= batch and sum(sizes) == 40  # one pass over the file, batch by batch
    _same(read_vector(tmp_path / "a.gpkg"), read_vector(tmp_path / "b.gpkg"))
    _same(read_vector(tmp_path / "a.geoparquet"), read_vector(tmp_path / "b.geoparquet"))
