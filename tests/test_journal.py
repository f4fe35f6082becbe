"""Resume: a journal replays finished chips and the output equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pytest

from geosam.errors import ConfigError
from geosam.modes.everything import segment_scene
from geosam.testing import OracleMaskGenerator
from tests._scale_helpers import CountingOracle, read_log
from tests.data.make_scenes import make_oracle_scene

KW = {"chip_size_px": 192, "overlap_px": 32, "progress": False}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(oracle_scene_600):
    return oracle_scene_600


def assert_same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """Same rows, ids, attributes and exactly the same outlines."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    cols = [c for c in a.columns if c != "geometry"]
    assert a[cols].equals(b[cols])
    assert all(ga.equals_exact(gb, 0.0) for ga, gb in zip(a.geometry, b.geometry))
    assert a.crs == b.crs


def test_replay_equals_a_fresh_run_and_generates_only_missing_chips(scene, tmp_path) -> None:
    fresh = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    n_chips = fresh.attrs["geosam"]["chips_total"]
    journal = tmp_path / "run.geosam-journal"
    log1, log2 = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    # a first run that dies after some chips: simulated by journaling only a subset
    first = segment_scene(scene.image_path, CountingOracle(scene.label_path, log1), journal=journal, **KW)
    assert_same(first, fresh)
    with sqlite3.connect(journal) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM chips ORDER BY key")]
        assert len(keys) == n_chips
        dropped = keys[::3]  # forget a third of the chips, scattered over the grid
        conn.executemany("DELETE FROM chips WHERE key = ?", [(k,) for k in dropped])
    again = segment_scene(scene.image_path, CountingOracle(scene.label_path, log2), journal=journal, **KW)
    assert_same(again, fresh)
    assert sorted(read_log(log2)) == sorted(k.split(":")[0] for k in dropped)
    assert again.attrs["geosam"]["chips_replayed"] == n_chips - len(dropped)
    # everything journaled now: nothing is generated
    log3 = str(tmp_path / "c.log")
    third = segment_scene(scene.image_path, CountingOracle(scene.label_path, log3), journal=journal, **KW)
    assert_same(third, fresh)
    assert read_log(log3) == []


def test_journal_of_other_settings_or_scene_is_refused(scene, tmp_path) -> None:
    journal = tmp_path / "j"
    segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=journal, **KW)
    with pytest.raises(ConfigError, match=r"journal .*j was written for another run.*chip_size_px: 192 .* 256 now"):
        segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=journal,
                      **{**KW, "chip_size_px": 256})
    other = make_oracle_scene(tmp_path / "other", width=600, height=500, n_objects=30, seed=12)
    with pytest.raises(ConfigError, match=r"scene: .*path"):
        segment_scene(other.image_path, OracleMaskGenerator(other.label_path), journal=journal, **KW)
    # progress / read-ahead do not matter
    segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=journal,
                  **{**KW, "prefetch_chips": 0, "progress": False})


def test_a_file_that_is_not_a_journal_is_refused(scene, tmp_path) -> None:
    bad = tmp_path / "bad.geosam-journal"
    bad.write_text("not sqlite at all " * 100)
    with pytest.raises(ConfigError, match="not a geosam journal"):
        segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=bad, **KW)


def _segment_args(scene, out: Path, *extra: str) -> list[str]:
    """The ``geosam segment`` arguments of the CLI runs below (in a child process or in this one)."""
    return ["segment", str(scene.image_path), "-o", str(out), "--chip-size", "192", "--overlap", "32",
            "--prefetch-chips", "0", *extra]


def _cli(scene, out: Path, log: str, delay_s: float, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GEOSAM_TEST_LABELS": str(scene.label_path), "GEOSAM_TEST_LOG": log,
           "GEOSAM_TEST_DELAY_S": str(delay_s), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests._scale_helpers", *_segment_args(scene, out, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _cli_here(scene, out: Path, log: str, monkeypatch, *extra: str) -> str:
    """`_cli` in this process (no interpreter and imports to start): the same CLI and generator; its output."""
    from click.testing import CliRunner

    import geosam.modes.everything
    from geosam.cli.main import cli

    gen = CountingOracle(str(scene.label_path), log)
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: gen)
    res = CliRunner().invoke(cli, _segment_args(scene, out, *extra))
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_run_killed_part_way_resumes_to_identical_output(scene, tmp_path, monkeypatch) -> None:
    """A CLI process killed part-way (SIGKILL) leaves its journal; the resumed run (in this process) generates the
    chips not journaled only and writes what an uninterrupted run writes."""
    ref_out = tmp_path / "ref.gpkg"
    _cli_here(scene, ref_out, str(tmp_path / "ref.log"), monkeypatch)
    all_chips = read_log(str(tmp_path / "ref.log"))

    out = tmp_path / "out.gpkg"
    journal = Path(str(out) + ".geosam-journal")
    log1 = str(tmp_path / "run1.log")
    proc = _cli(scene, out, log1, 0.4, "--resume")
    deadline = time.monotonic() + 120
    done = 0
    while done < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if journal.exists():
            try:
                with sqlite3.connect(journal) as conn:
                    done = conn.execute("SELECT COUNT(*) FROM chips").fetchone()[0]
            except sqlite3.OperationalError:  # tables not created yet
                done = 0
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    with sqlite3.connect(journal) as conn:
        journaled = {k.split(":")[0] for (k,) in conn.execute("SELECT key FROM chips")}
    assert 3 <= len(journaled) < len(all_chips)

    log2 = str(tmp_path / "run2.log")
    text = _cli_here(scene, out, log2, monkeypatch, "--resume")
    assert f"resumed: {len(journaled)} chips" in text
    assert sorted(read_log(log2)) == sorted(set(all_chips) - journaled)
    assert not journal.exists()  # removed after the successful write
    assert_same(gpd.read_file(out), gpd.read_file(ref_out))


def test_dtype_is_decided_once_and_a_resumed_journal_keeps_it(scene, tmp_path, monkeypatch, caplog) -> None:
    """dtype="auto" is resolved on the client before the run, recorded in the statistics and the journal's
    settings key; a resume where "auto" would now pick another dtype keeps the recorded one."""
    import json
    import logging

    import geosam.modes.everything
    from geosam.modes.runner import run_dtype

    made: list[str] = []

    def oracle_for(cfg):
        made.append(cfg.model.dtype)  # the generator is built with the resolved dtype
        return OracleMaskGenerator(scene.label_path)

    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", oracle_for)
    monkeypatch.setenv("GEOSAM_CPU_AMX", "1")
    assert run_dtype("auto", "cpu", None) == "bfloat16" and run_dtype("float32", "auto", None) == "float32"
    journal = tmp_path / "j.geosam-journal"
    first = segment_scene(scene.image_path, journal=journal, device="cpu", **KW)
    assert first.attrs["geosam"]["dtype"] == "bfloat16" and made == ["bfloat16"]
    with sqlite3.connect(journal) as conn:
        settings = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    assert settings["dtype"] == "bfloat16"
    monkeypatch.setenv("GEOSAM_CPU_AMX", "0")  # "auto" now picks float32 on this machine
    assert run_dtype("auto", "cpu", None) == "float32"
    with caplog.at_level(logging.WARNING, logger="geosam.modes.runner"):
        again = segment_scene(scene.image_path, journal=journal, device="cpu", **KW)
    assert again.attrs["geosam"]["dtype"] == "bfloat16" and made[-1] == "bfloat16"
    assert again.attrs["geosam"]["chips_replayed"] == again.attrs["geosam"]["chips_total"]
    assert "keeping bfloat16" in caplog.text and "float32" in caplog.text
    with pytest.raises(ConfigError, match="dtype"):  # an explicit other dtype is another run: refused, naming both
        segment_scene(scene.image_path, journal=journal, device="cpu", dtype="float32", **KW)


def test_a_generator_pickled_for_a_worker_keeps_the_clients_dtype(tiny_sam_dir, monkeypatch) -> None:
    """A SAM generator built with dtype="auto" pickles the dtype it resolved, not "auto": a worker whose
    CPU would choose otherwise loads the model in the client's precision."""
    import pickle

    import torch

    from geosam.segment import SamMaskGenerator

    monkeypatch.setenv("GEOSAM_CPU_AMX", "1")
    gen = SamMaskGenerator(tiny_sam_dir, device="cpu", dtype="auto", points_per_side=2)
    assert gen.bundle.dtype == torch.bfloat16
    blob = pickle.dumps(gen)
    monkeypatch.setenv("GEOSAM_CPU_AMX", "0")  # the worker's CPU
    assert pickle.loads(blob).bundle.dtype == torch.bfloat16


def test_segmentation_replays_and_commits_through_the_shared_task_loop(scene, tmp_path, monkeypatch) -> None:
    """The modes' loop is `geosam.run.tasks.run_tasks` (the one monitoring uses): it gets the journal, commits
    every computed chip and replays them on a rerun, with the same output."""
    from geosam.run import loop, tasks

    calls: list[tasks.TaskCounts] = []

    def spy(plan, execute, sink, **kw):
        assert kw["journal"] is not None and kw["unit"] == "chips"
        calls.append(tasks.run_tasks(plan, execute, sink, **kw))
        return calls[-1]

    monkeypatch.setattr(loop, "run_tasks", spy)
    journal = tmp_path / "run.geosam-journal"
    first = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=journal, **KW)
    again = segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), journal=journal, **KW)
    assert_same(first, again)
    n = first.attrs["geosam"]["chips_total"]
    assert (calls[0].total, calls[0].replayed, calls[0].computed) == (n, 0, n)
    assert (calls[1].total, calls[1].replayed, calls[1].computed) == (n, n, 0)
