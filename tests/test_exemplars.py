"""SAM 3 exemplar boxes: input checks, windows, prompt tokens equal to SAM 3's own, reuse on every chip, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

import geosam
from geosam.cli.main import cli
from geosam.errors import ConfigError, PromptError, PromptOutsideSceneError
from geosam.modes.text import TEXT_COLUMNS
from geosam.prompts.exemplars import exemplar_windows, read_exemplars, window_boxes
from tests.data.make_scenes import make_oracle_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_oracle_scene(tmp_path_factory.mktemp("ex_scene"), seed=3, width=600, height=500, n_objects=30)


def _info(path: str) -> tuple[Any, Any, int, int]:
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.width, ds.height


def _boxes_frame(scene: Any, px_boxes: list[tuple[float, float, float, float]], labels: list[Any] | None = None,
                 crs: str | None = None) -> Any:
    """A GeoDataFrame of boxes given in scene pixels (x0, y0, x1, y1), in the scene CRS or reprojected to ``crs``."""
    import geopandas as gpd
    from shapely.geometry import box

    scrs, tr, _, _ = _info(scene.image_path)
    geoms = []
    for x0, y0, x1, y1 in px_boxes:
        (mx0, my1), (mx1, my0) = tr * (x0, y0), tr * (x1, y1)
        geoms.append(box(min(mx0, mx1), min(my0, my1), max(mx0, mx1), max(my0, my1)))
    data = {} if labels is None else {"label": labels}
    gdf = gpd.GeoDataFrame(data, geometry=geoms, crs=scrs)
    return gdf.to_crs(crs) if crs else gdf


# ---------------------------------------------------------------------------
# input and windows (no model)


def test_read_exemplars_any_crs_and_labels(scene: Any, tmp_path: Path) -> None:
    px = [(100.0, 80.0, 130.0, 120.0), (300.0, 200.0, 320.0, 215.0), (10.0, 400.0, 50.0, 440.0)]
    path = tmp_path / "ex.gpkg"
    _boxes_frame(scene, px, labels=["positive", "0", True], crs="EPSG:4326").to_file(path)
    scrs, tr, w, h = _info(scene.image_path)
    ex = read_exemplars(str(path), scrs, tr, w, h)
    assert [e.positive for e in ex] == [True, False, True]
    for e, want in zip(ex, px):
        np.testing.assert_allclose(e.box, want, atol=0.05)  # a reprojected rectangle's bounds: within 0.05 px
    no_label = read_exemplars(_boxes_frame(scene, px[:1]), scrs, tr, w, h)
    assert no_label[0].positive and no_label[0].box == pytest.approx(px[0])


def test_read_exemplars_refuses_bad_rows(scene: Any, tmp_path: Path) -> None:
    from shapely.geometry import Point

    scrs, tr, w, h = _info(scene.image_path)
    path = tmp_path / "outside.gpkg"
    _boxes_frame(scene, [(10, 10, 40, 40), (700, 10, 740, 40)]).to_file(path)
    with pytest.raises(PromptOutsideSceneError, match=r"outside\.gpkg, row 1: .*outside the scene"):
        read_exemplars(str(path), scrs, tr, w, h)
    with pytest.raises(PromptError, match="row 0: label 'maybe'"):
        read_exemplars(_boxes_frame(scene, [(10, 10, 40, 40)], labels=["maybe"]), scrs, tr, w, h)
    with pytest.raises(PromptError, match="every exemplar is negative"):
        read_exemplars(_boxes_frame(scene, [(10, 10, 40, 40)], labels=[0]), scrs, tr, w, h)
    pts = _boxes_frame(scene, [(10, 10, 40, 40)])
    pts.geometry = [Point(tr * (20, 20))]
    with pytest.raises(PromptError, match="got a Point"):
        read_exemplars(pts, scrs, tr, w, h)
    with pytest.raises(PromptError, match="not found"):
        read_exemplars(str(tmp_path / "missing.gpkg"), scrs, tr, w, h)
    clipped = read_exemplars(_boxes_frame(scene, [(-20, 480, 30, 520)]), scrs, tr, w, h)
    assert clipped[0].box == pytest.approx((0.0, 480.0, 30.0, 500.0))


def test_windows_are_chip_sized_and_hold_their_boxes(scene: Any) -> None:
    scrs, tr, w, h = _info(scene.image_path)
    px = [(100, 80, 130, 120), (150, 100, 170, 130), (560, 460, 600, 500), (300, 10, 330, 30)]
    ex = read_exemplars(_boxes_frame(scene, px, labels=[1, 0, 1, 1]), scrs, tr, w, h)
    wins = exemplar_windows(ex, w, h, chip_size_px=200)
    assert sorted(i for _, m in wins for i in m) == [0, 1, 2, 3]
    assert wins[0][1] == [0, 1]  # the second box lies inside the first one's window
    for win, members in wins:
        assert (win.width, win.height) == (200, 200)
        assert win.col_off >= 0 and win.row_off >= 0 and win.col_end <= w and win.row_end <= h
        boxes, labels = window_boxes(ex, members, win)
        for (cx, cy, bw, bh), i in zip(boxes, members):
            x0, y0, x1, y1 = ex[i].box
            assert cx * win.width + win.col_off == pytest.approx((x0 + x1) / 2)
            assert cy * win.height + win.row_off == pytest.approx((y0 + y1) / 2)
            assert (bw * win.width, bh * win.height) == pytest.approx((x1 - x0, y1 - y0))
            assert 0 <= cx - bw / 2 and cx + bw / 2 <= 1 and 0 <= cy - bh / 2 and cy + bh / 2 <= 1
        assert labels == [int(ex[i].positive) for i in members]
    small = exemplar_windows(ex[:1], 150, 120, chip_size_px=512)  # scene smaller than a chip: the whole scene
    assert (small[0][0].width, small[0][0].height) == (150, 120)
    with pytest.raises(ConfigError, match="larger than a chip"):
        exemplar_windows(ex[:1], w, h, chip_size_px=32)


def test_text_needs_phrases_or_exemplars(scene: Any) -> None:
    with pytest.raises(ConfigError, match="phrase or exemplar"):
        geosam.segment_text(scene.image_path)
    res = CliRunner().invoke(cli, ["text", str(scene.image_path), "-o", "x.gpkg"])
    assert res.exit_code != 0 and "--exemplars" in res.output


# ---------------------------------------------------------------------------
# the model


def test_prompt_tokens_equal_sam3_with_input_boxes(tiny_sam3_dir: str) -> None:
    """On the exemplar's own image, precomputed tokens give SAM 3's output with input_boxes (its own forward)."""
    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import detect, encode_text, vision_features
    from geosam.models.sam3_exemplars import geometry_tokens, with_exemplars

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    img = np.random.default_rng(2).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    vision = vision_features(b, preprocess(b, [img])[0])
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.7, 0.2, 0.1, 0.3], [0.5, 0.8, 0.3, 0.2]])
    labels = torch.tensor([1, 0, 1])
    ex = geometry_tokens(b.model, [(vision, boxes, labels)])
    assert ex.embeds.shape == (1, 4, 32) and ex.n_boxes == 3
    # the geometry encoder's own forward on the same boxes
    fpn, pos = vision.fpn_hidden_states[:-1], vision.fpn_position_encoding[:-1]
    with torch.inference_mode():
        ref = b.model.geometry_encoder(box_embeddings=boxes[None], box_mask=torch.ones(1, 3, dtype=torch.bool),
                                       box_labels=labels[None], img_feats=fpn, img_pos_embeds=pos)
    torch.testing.assert_close(ex.embeds, ref.last_hidden_state, rtol=0, atol=1e-6)
    for phrases in (["visual"], ["building", "tree"]):
        text = encode_text(b, phrases)
        n = len(phrases)
        native = detect(b, vision, text, input_boxes=boxes[None].expand(n, -1, -1),
                        input_boxes_labels=labels[None].expand(n, -1))
        mine = detect(b, vision, with_exemplars(text, ex))
        for k in ("pred_logits", "presence_logits", "pred_masks", "pred_boxes"):
            torch.testing.assert_close(getattr(mine, k), getattr(native, k), rtol=0, atol=1e-5)


def test_several_windows_form_one_prompt(tiny_sam3_dir: str) -> None:
    """Exemplars on several windows: one token sequence, one CLS, cross-attention over all windows' features.
    Checked exactly: the same image given as two windows (every key and value twice, so attention is unchanged)
    equals all boxes on that one image, i.e. SAM 3's own encoder."""
    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import vision_features
    from geosam.models.sam3_exemplars import geometry_tokens

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    img = np.random.default_rng(3).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    vision = vision_features(b, preprocess(b, [img])[0])
    b1, b2 = torch.tensor([[0.3, 0.4, 0.2, 0.1]]), torch.tensor([[0.7, 0.2, 0.1, 0.3], [0.5, 0.8, 0.3, 0.2]])
    l1, l2 = torch.tensor([1]), torch.tensor([0, 1])
    two = geometry_tokens(b.model, [(vision, b1, l1), (vision, b2, l2)])
    one = geometry_tokens(b.model, [(vision, torch.cat([b1, b2]), torch.cat([l1, l2]))])
    assert two.embeds.shape == one.embeds.shape == (1, 4, 32)
    torch.testing.assert_close(two.embeds, one.embeds, rtol=0, atol=1e-5)


def test_exemplar_tokens_reach_every_chip(tiny_sam3_dir: str, scene: Any) -> None:
    """The exemplars are encoded once (one geometry-encoder pass) and every chip's detector sees them."""
    from geosam.models import load_model

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    geo_calls: list[int] = []
    prompt_lengths: list[int] = []
    h1 = b.model.geometry_encoder.layers[0].register_forward_hook(lambda *a: geo_calls.append(1))
    h2 = b.model.detr_encoder.register_forward_hook(
        lambda m, args, kwargs, out: prompt_lengths.append(int(kwargs["text_features"].shape[1])), with_kwargs=True)
    try:
        ex = _boxes_frame(scene, [(100, 80, 130, 120), (420, 300, 450, 330), (440, 320, 470, 350)], labels=[1, 1, 0])
        gdf = geosam.segment_text(scene.image_path, exemplars=ex, model=b, chip_size_px=336, overlap_px=32,
                                  score_threshold=0.0, progress=False)
    finally:
        h1.remove()
        h2.remove()
    stats = gdf.attrs["geosam"]
    assert stats["exemplars"] == 3 and stats["exemplar_windows"] == 2
    assert len(geo_calls) == 1
    assert stats["chips_total"] == len(prompt_lengths) == 4
    assert set(prompt_lengths) == {32 + 3 + 1}  # 32 text tokens ("visual"), 3 boxes, 1 CLS: on every chip
    assert list(gdf.columns) == [*TEXT_COLUMNS, "geometry"]
    assert len(gdf) > 0 and set(gdf["label"]) == {"exemplar"}
    assert "exemplar_encoder" in stats["timings_s"]


def test_exemplars_with_text_through_the_cli(tiny_sam3_dir: str, scene: Any, tmp_path: Path) -> None:
    ex = tmp_path / "ex.geojson"
    _boxes_frame(scene, [(100, 80, 130, 120)], crs="EPSG:4326").to_file(ex)
    out = tmp_path / "out.gpkg"
    base = ["text", str(scene.image_path), "--model", tiny_sam3_dir, "--device", "cpu", "--dtype", "float32",
            "--chip-size", "336", "--overlap", "32", "--score-threshold", "0.0", "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "-o", str(out), "--exemplars", str(ex), "--text", "building", "--profile"])
    assert res.exit_code == 0, res.output
    assert "exemplar_encoder" in res.output
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert len(gdf) > 0 and set(gdf["label"]) == {"building"}
    bad = tmp_path / "bad.geojson"
    _boxes_frame(scene, [(900, 80, 930, 120)], crs="EPSG:4326").to_file(bad)
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "o2.gpkg"), "--exemplars", str(bad)])
    assert res.exit_code != 0
    assert "bad.geojson, row 0" in res.output and "outside the scene" in res.output
