"""Many scenes: one output per scene or merged; a failing scene is reported and the others go on."""

from __future__ import annotations

import geopandas as gpd
import pytest
from click.testing import CliRunner

import geosam.modes.everything
from geosam.cli.main import cli
from geosam.errors import ConfigError
from geosam.modes.everything import segment_scene
from geosam.modes.scenes import segment_scenes
from geosam.read.sources import expand_sources
from geosam.testing import OracleMaskGenerator
from tests._scale_helpers import SceneOracle
from tests.data.make_scenes import make_oracle_scene
from tests.test_journal import assert_same

KW = {"chip_size_px": 256, "overlap_px": 32, "progress": False}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("scenes")
    a = make_oracle_scene(d / "tiles", width=400, height=300, n_objects=15, seed=1, name="a")
    b = make_oracle_scene(d / "tiles", width=300, height=400, n_objects=12, seed=2, name="b")
    bad = d / "tiles" / "c_image.tif"
    bad.write_text("not a raster")
    return a, b, bad


def _oracle(scenes) -> SceneOracle:
    a, b, _ = scenes
    return SceneOracle({str(a.image_path): str(a.label_path), str(b.image_path): str(b.label_path)})


def test_expand_scenes_globs_lists_and_urls(scenes, tmp_path) -> None:
    a, b, _ = scenes
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{a.image_path}\n\n/vsicurl/https://example.com/x.tif\n")
    folder = a.image_path.parent
    got = expand_sources([str(folder / "[ab]_image.tif"), f"@{listing}", str(b.image_path)])
    assert got == [str(a.image_path), str(b.image_path), "/vsicurl/https://example.com/x.tif"]
    with pytest.raises(ConfigError, match="no scene matches this pattern"):
        expand_sources([str(folder / "zzz*.tif")])


def test_output_per_scene_and_a_failing_scene(scenes, tmp_path) -> None:
    a, b, bad = scenes
    res = segment_scenes([a.image_path, bad, b.image_path], _oracle(scenes), output_dir=tmp_path / "out", **KW)
    assert list(res.failed) == [str(bad)] and "c_image.tif" in res.failed[str(bad)]
    assert sorted(res.outputs) == sorted([str(a.image_path), str(b.image_path)])
    one = segment_scene(a.image_path, OracleMaskGenerator(a.label_path), **KW)
    written = gpd.read_file(tmp_path / "out" / "a_image.gpkg")
    assert len(written) == len(one) == a.n_objects
    assert (tmp_path / "out" / "b_image.gpkg").exists()


def test_merged_table_has_a_scene_column(scenes) -> None:
    a, b, _ = scenes
    res = segment_scenes([a.image_path, b.image_path], _oracle(scenes), merge=True, **KW)
    assert res.ok and res.merged is not None
    assert list(res.merged.columns[:2]) == ["scene", "id"]
    assert res.merged["scene"].value_counts().to_dict() == {str(a.image_path): a.n_objects,
                                                            str(b.image_path): b.n_objects}
    only_b = res.merged[res.merged["scene"] == str(b.image_path)].drop(columns="scene").reset_index(drop=True)
    assert_same(only_b, segment_scene(b.image_path, OracleMaskGenerator(b.label_path), **KW))


def test_cli_many_scenes(scenes, tmp_path, monkeypatch) -> None:
    a, b, _ = scenes
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: _oracle(scenes))
    folder = a.image_path.parent
    common = ["--chip-size", "256", "--overlap", "32", "--no-progress"]
    res = CliRunner().invoke(cli, ["segment", str(folder / "*_image.tif"), "--output-dir", str(tmp_path / "o"), *common])
    assert res.exit_code == 1, res.output  # the broken scene
    assert "c_image.tif: failed" in res.output and "2 of 3 scenes done, 1 failed" in res.output
    assert (tmp_path / "o" / "a_image.gpkg").exists() and (tmp_path / "o" / "b_image.gpkg").exists()
    merged = tmp_path / "all.gpkg"
    res = CliRunner().invoke(cli, ["segment", str(a.image_path), str(b.image_path), "--merge", "-o", str(merged),
                                   "--resume", *common])
    assert res.exit_code == 0, res.output
    gdf = gpd.read_file(merged)
    assert len(gdf) == a.n_objects + b.n_objects and set(gdf["scene"]) == {str(a.image_path), str(b.image_path)}
    assert not list(tmp_path.glob("*.geosam-journal*"))


def test_cli_many_scenes_shows_a_line_per_scene_and_an_overall_bar(scenes, tmp_path, monkeypatch) -> None:
    a, b, _ = scenes
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: _oracle(scenes))
    args = ["segment", str(a.image_path), str(b.image_path), "--output-dir", str(tmp_path / "o"),
            "--chip-size", "256", "--overlap", "32"]
    res = CliRunner().invoke(cli, [*args, "--progress"])
    assert res.exit_code == 0, res.output
    assert "[1/2] " in res.stdout and "[2/2] " in res.stdout and "2 of 2 scenes done" in res.stdout
    assert "scenes: 100%" in res.stderr and "2/2" in res.stderr  # the overall bar, finished
    quiet = CliRunner().invoke(cli, [*args, "--no-progress", "--overwrite"])
    assert quiet.exit_code == 0, quiet.output
    assert "[2/2] " in quiet.stdout and "scenes:" not in quiet.stderr
