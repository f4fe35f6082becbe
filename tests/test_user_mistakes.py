"""Every user mistake of issue 11, through the CLI and the Python API.

Each case asserts the exception type (``GeosamError`` subclasses) or exit code
(1 for a ``GeosamError``, 2 for click's usage errors), that the message names the
culprit (file, row, band or value), and that no file changed: a checksum of every
file in the case's folder (inputs and earlier outputs) before and after, so no
output appears either. Mistakes that need no pixels and no model must be found
before the model loads: the loaders are replaced by a spy that records any call.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner, Result
from shapely.geometry import Point, Polygon

import geosam.models
import geosam.models.registry
import geosam.segment.everything
from geosam import segment_scene
from geosam.cli.main import cli
from geosam.errors import BandError, ConfigError, GeosamError, PromptError
from geosam.models import SamBundle
from geosam.models.litemedsam import CAPABILITIES as BOX_ONLY
from geosam.modes.prompted import segment_prompts
from geosam.prompts.parse import PromptWarning
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene
from tests.test_prompts import OracleSam

CRS = "EPSG:32633"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene (GeoTIFF and GeoPackage raster), its labels, a prompts file and an earlier output."""
    d = tmp_path_factory.mktemp("mistakes")
    files = make_oracle_scene(d, crs=CRS, width=128, height=128, n_objects=6, seed=2, name="scene")
    files.image_path.rename(d / "scene.tif")
    files.label_path.rename(d / "labels.tif")
    with rasterio.open(d / "scene.tif") as src:
        prof = {**src.profile, "driver": "GPKG"}
        for k in ("tiled", "blockxsize", "blockysize", "compress", "interleave", "photometric"):
            prof.pop(k, None)
        with rasterio.open(d / "scene_raster.gpkg", "w", **prof) as dst:
            dst.write(src.read())
        t = src.transform
    centre = t * (64, 64)
    gpd.GeoDataFrame({"id": [1]}, geometry=[Point(centre)], crs=CRS).to_file(d / "prompts.gpkg")
    gpd.GeoDataFrame({"id": [1]}, geometry=[Point(centre)], crs=CRS).to_file(d / "old.gpkg")
    return d


def invoke(folder: Path, args: list[str]) -> Result:
    """Run the CLI in ``folder`` and assert that no file there changed (or appeared)."""
    before = snapshot(folder)
    res = CliRunner().invoke(cli, [a.format(d=folder) for a in args])
    assert snapshot(folder) == before, res.output
    return res


def assert_exit(res: Result, code: int, *culprits: str) -> None:
    assert isinstance(res.exception, SystemExit), res.exception  # not a traceback
    assert res.exit_code == code, res.output
    for c in culprits:
        assert c in res.output, (c, res.output)


SEG = ["segment", "{d}/scene.tif", "-o", "{d}/out.gpkg", "--no-progress"]
PROMPT = ["prompt", "{d}/scene.tif", "-o", "{d}/out.gpkg", "--no-progress"]

#: (id, args, exit code, strings the message must contain; "{d}" is the case folder)
EARLY_CLI_CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("vector-output-is-gpkg-raster-scene", ["segment", "{d}/scene_raster.gpkg", "-o", "{d}/scene_raster.gpkg"], 1,
     ["scene_raster.gpkg", "overwrite the input"]),
    ("vector-output-is-tif-scene", ["segment", "{d}/scene.tif", "-o", "{d}/scene.tif"], 1, ["scene.tif"]),
    ("label-raster-is-scene", [*SEG, "--label-raster", "{d}/scene.tif"], 1, ["--label-raster", "scene.tif"]),
    ("index-raster-is-scene", [*SEG, "--index-raster", "{d}/scene.tif"], 1, ["--index-raster", "scene.tif"]),
    ("prompt-output-is-prompts", ["prompt", "{d}/scene.tif", "-o", "{d}/prompts.gpkg", "--prompts",
                                  "{d}/prompts.gpkg"], 1, ["prompts.gpkg", "--prompts"]),
    ("chip-size-0", [*SEG, "--chip-size", "0"], 1, ["chip_size", "0"]),
    ("chip-size-negative", [*SEG, "--chip-size", "-5"], 1, ["chip_size", "-5"]),
    ("overlap-too-large", [*SEG, "--chip-size", "256", "--overlap", "256"], 1, ["overlap", "256"]),
    ("overlap-negative", [*SEG, "--overlap", "-1"], 1, ["overlap", "-1"]),
    ("band-missing", [*SEG, "--bands", "9"], 1, ["scene.tif", "9"]),
    ("band-zero", [*SEG, "--bands", "0"], 1, ["0"]),
    ("to-crs", [*SEG, "--to-crs", "FOO"], 1, ["to_crs", "FOO"]),
    ("prompt-to-crs", [*PROMPT, "--points", "1,2", "--to-crs", "FOO"], 1, ["FOO"]),
    ("prompt-crs", [*PROMPT, "--points", "1,2", "--prompt-crs", "EPSG:99999"], 1, ["--prompt-crs", "EPSG:99999"]),
    ("index-name", [*SEG, "--indices", "ndvi,foo"], 1, ["foo"]),
    ("min-index-name", [*SEG, "--min-index", "bogus=0.3"], 1, ["bogus"]),
    ("index-needs-missing-band", [*SEG, "--indices", "ndvi"], 1, ["nir"]),
    ("parent-is-a-file", ["segment", "{d}/scene.tif", "-o", "{d}/scene.tif/out.gpkg"], 1, ["scene.tif", "not a folder"]),
    ("existing-output", ["segment", "{d}/scene.tif", "-o", "{d}/old.gpkg"], 1, ["old.gpkg", "--overwrite"]),
    ("existing-prompt-output", ["prompt", "{d}/scene.tif", "-o", "{d}/old.gpkg", "--points", "1,2"], 1,
     ["old.gpkg", "--overwrite"]),
    ("missing-scene", ["segment", "{d}/nothere.tif", "-o", "{d}/out.gpkg"], 1, ["nothere.tif"]),
    ("missing-prompts-file", [*PROMPT, "--prompts", "{d}/nothere.gpkg"], 1, ["nothere.gpkg"]),
    ("chip-size-not-a-number", [*SEG, "--chip-size", "abc"], 2, ["abc"]),
    ("overlap-not-a-number", [*SEG, "--overlap", "x"], 2, ["'x'"]),
    ("point-not-a-pair", [*PROMPT, "--points", "1,2,3"], 2, ["1,2,3"]),
    ("no-prompts", PROMPT, 2, ["--points", "--prompts"]),
]


@pytest.mark.parametrize(("args", "code", "culprits"), [c[1:] for c in EARLY_CLI_CASES],
                         ids=[c[0] for c in EARLY_CLI_CASES])
def test_cli_mistakes_found_before_any_model(case: Path, model_loads: list[str], args: list[str], code: int,
                                             culprits: list[str]) -> None:
    res = invoke(case, args)
    assert_exit(res, code, *culprits)
    assert model_loads == []


def test_cli_existing_output_is_replaced_only_with_overwrite(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geosam.modes.everything

    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: OracleMaskGenerator(case / "labels.tif"))
    before = snapshot(case)
    res = CliRunner().invoke(cli, ["segment", str(case / "scene.tif"), "-o", str(case / "old.gpkg"), "--no-progress",
                                   "--chip-size", "64", "--overlap", "0", "--overwrite"])
    assert res.exit_code == 0, res.output
    after = snapshot(case)
    assert after["old.gpkg"] != before["old.gpkg"]
    assert {k: v for k, v in after.items() if k != "old.gpkg"} == {k: v for k, v in before.items() if k != "old.gpkg"}


def test_cli_box_only_model_refused_for_segment_everything(case: Path) -> None:
    res = invoke(case, [*SEG, "--model", "litemedsam"])
    assert_exit(res, 1, "litemedsam", "geosam prompt")


# ---------------------------------------------------------------------------
# prompt files


def write_geojson(path: Path, features: list[tuple[int, Any]], crs: str | None = None) -> Path:
    """A GeoJSON file of (id, geometry dict or None) features, with a ``crs`` member only if ``crs``."""
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": i}, "geometry": g} for i, g in features]}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def scene_point(folder: Path, col: float = 64, row: float = 64) -> tuple[float, float]:
    with rasterio.open(folder / "scene.tif") as ds:
        x, y = ds.transform * (col, row)
    return float(x), float(y)


def oracle_bundle() -> SamBundle:
    """The oracle SAM of tests/test_prompts.py with a box-only model's capabilities (one window per prompt)."""
    return SamBundle(model=OracleSam(), processor=None, device=torch.device("cpu"), dtype=torch.float32,
                     name="oracle", image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), longest_edge=256,
                     input_size=256, normalize="minmax", capabilities=BOX_ONLY)


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> SamBundle:
    bundle = oracle_bundle()
    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: bundle)
    return bundle


def test_cli_null_and_empty_geometries_are_skipped_with_one_warning(case: Path, oracle: SamBundle) -> None:
    x, y = scene_point(case)
    src = write_geojson(case / "p.geojson", [(7, None), (8, {"type": "Point", "coordinates": [x, y]}),
                                              (9, {"type": "Polygon", "coordinates": []})], crs="EPSG:32633")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(cli, [*[a.format(d=case) for a in PROMPT], "--prompts", str(src)])
    assert res.exit_code == 0, res.output
    skipped = [w for w in caught if issubclass(w.category, PromptWarning) and "null or empty" in str(w.message)]
    assert len(skipped) == 1
    assert "p.geojson" in str(skipped[0].message) and "7" in str(skipped[0].message)
    assert "9" in str(skipped[0].message)
    got = gpd.read_file(case / "out.gpkg")
    assert list(got["prompt_id"]) == [8]


def test_cli_only_null_geometries_is_an_error_naming_the_file(case: Path, model_loads: list[str]) -> None:
    src = write_geojson(case / "p.geojson", [(7, None), (8, None)], crs="EPSG:32633")
    res = invoke(case, [*PROMPT, "--prompts", str(src)])
    assert_exit(res, 1, "p.geojson", "null or empty", "7", "8")
    assert model_loads == []


def test_cli_projected_coordinates_without_crs(case: Path, model_loads: list[str], oracle: SamBundle) -> None:
    x, y = scene_point(case)
    src = write_geojson(case / "p.geojson", [(1, {"type": "Point", "coordinates": [x, y]})])  # no crs member
    res = invoke(case, [*PROMPT, "--prompts", str(src)])
    assert_exit(res, 1, "p.geojson", "--prompt-crs", f"{x:.10g}")
    # with --prompt-crs the same file works
    res = CliRunner().invoke(cli, [*[a.format(d=case) for a in PROMPT], "--prompts", str(src),
                                   "--prompt-crs", CRS])
    assert res.exit_code == 0, res.output
    assert gpd.read_file(case / "out.gpkg")["status"].tolist()[0] in ("ok", "empty")  # decoded: in the scene


# ---------------------------------------------------------------------------
# the Python API


def api_unchanged(folder: Path, fn: Callable[[], Any]) -> None:
    before = snapshot(folder)
    try:
        fn()
    finally:
        assert snapshot(folder) == before


@pytest.mark.parametrize(("settings", "error", "culprit"), [
    ({"chip_size_px": 0}, ConfigError, "chip_size"),
    ({"overlap_px": 1024}, ConfigError, "overlap"),
    ({"bands": (9,)}, BandError, "9"),
    ({"to_crs": "FOO"}, ConfigError, "FOO"),
    ({"indices": ("foo",)}, ConfigError, "foo"),
])
def test_api_segment_settings(case: Path, model_loads: list[str], settings: dict[str, Any],
                              error: type[GeosamError], culprit: str) -> None:
    def go() -> None:
        with pytest.raises(error, match=culprit):
            segment_scene(case / "scene.tif", progress=False, **settings)

    api_unchanged(case, go)
    assert model_loads == []


def test_api_prompt_crs_checked_before_any_work(case: Path, model_loads: list[str]) -> None:
    def go() -> None:
        with pytest.raises(ConfigError, match="EPSG:99999"):
            segment_prompts(case / "nothere.tif", [(1.0, 2.0)], prompt_crs="EPSG:99999")

    api_unchanged(case, go)
    assert model_loads == []


def test_api_null_geometries(case: Path, oracle: SamBundle) -> None:
    x, y = scene_point(case)
    gdf = gpd.GeoDataFrame({"id": ["a", "b", "c"]}, geometry=[None, Point(x, y), Polygon()], crs=CRS)
    with pytest.warns(PromptWarning, match=r"null or empty geometry: prompt ids 'a', 'c'"):
        got = segment_prompts(case / "scene.tif", gdf, progress=False)
    assert list(got["prompt_id"]) == ["b"]
    with pytest.raises(PromptError, match=r"the prompts: no prompt has a geometry.*'a', 'c'"):
        segment_prompts(case / "scene.tif", gdf.iloc[[0, 2]], progress=False)


def test_api_projected_coordinates_in_a_wgs84_frame(case: Path, oracle: SamBundle) -> None:
    x, y = scene_point(case)
    gdf = gpd.GeoDataFrame({"id": [5]}, geometry=[Point(x, y)], crs="EPSG:4326")
    with pytest.raises(PromptError, match=r"prompt_crs=.*") as info:
        segment_prompts(case / "scene.tif", gdf, progress=False)
    assert f"{x:.10g}" in str(info.value) and "row 0" in str(info.value)
    ok = segment_prompts(case / "scene.tif", gdf.set_crs(CRS, allow_override=True), progress=False)
    assert ok["status"].tolist()[0] in ("ok", "empty")  # decoded: in the scene


def test_oracle_scene_has_objects(base: Path) -> None:
    """The cases above run on a scene with objects (so a refused run would have written something)."""
    with rasterio.open(base / "labels.tif") as ds:
        assert np.unique(ds.read(1)).size > 1
