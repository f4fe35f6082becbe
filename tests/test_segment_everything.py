"""Segment-everything (geosam.segment.SamMaskGenerator) end to end.

Two kinds of decoder are used: the tiny random-weight SAM (plumbing: shapes,
valid pixels, stats) and a geometric fake decoder whose three masks per point
are discs of known radius around the prompt, so that filtering, NMS and the
frame conversions can be checked exactly.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from affine import Affine

from geosam.errors import ConfigError
from geosam.models import SamBundle, load_model
from geosam.read.scene import Chip
from geosam.segment import SamMaskGenerator, crop, everything
from geosam.segment.base import ChipMasks, MaskGenerator
from geosam.segment.sam_utils import batched_mask_to_box, box_iou, build_point_grid
from geosam.tile.grid import ChipSpec
from geosam.windows import PixelWindow


def count_upsampled(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[int]:
    """Spies on `crop`'s upsampling functions ``names``: the list receives the number of masks of every call."""
    calls: list[int] = []
    for name in names:
        real = getattr(crop, name)

        def spy(logits, *args, _real=real, **kwargs):
            calls.append(int(logits.shape[0]))
            return _real(logits, *args, **kwargs)

        monkeypatch.setattr(crop, name, spy)
    return calls


def scripted_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """`crop`'s decoder replaced by the scripted one (sharp small squares, soft ramps, exact-threshold masks)."""
    from tests.test_segment_sam_diff_generator import scripted_decode

    monkeypatch.setattr(
        crop,
        "decode_points",
        lambda b, emb, points, labels=None, multimask=True, iou_floor=None, cache=None: scripted_decode(points),
    )

CRS_WKT = None  # filled lazily: rasterio is only needed for the CRS text


def make_chip(height: int, width: int, valid: np.ndarray | None = None, seed: int = 0) -> Chip:
    """A random-pixel chip at the scene origin (UTM 33N, 1 m pixels)."""
    global CRS_WKT
    if CRS_WKT is None:
        from rasterio.crs import CRS

        CRS_WKT = CRS.from_epsg(32633).to_wkt()
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if valid is None:
        valid = np.ones((height, width), dtype=bool)
    image[~valid] = 0
    win = PixelWindow(0, 0, width, height)
    spec = ChipSpec(
        path="synthetic.tif",
        row=0,
        col=0,
        window=win,
        core=win,
        scene_width=width,
        scene_height=height,
        transform=Affine.translation(500000.0, 4000000.0) @ Affine.scale(1.0, -1.0),
        crs_wkt=CRS_WKT,
    )
    return Chip(spec=spec, image=image, valid=valid)


@pytest.fixture(scope="module")
def bundle(tiny_sam_dir: str) -> SamBundle:
    return load_model(tiny_sam_dir, device="cpu")



@pytest.mark.slow
def test_generate_lazy_path_equals_full_path(bundle: SamBundle, monkeypatch) -> None:
    """A valid 1024 px chip counts and boxes masks from the low-res logits and upsamples only NMS survivors;
    the results equal upsampling every filtered mask."""
    chip = make_chip(1024, 1024, seed=4)
    gen = SamMaskGenerator(bundle, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.5)
    upsampled = count_upsampled(monkeypatch, "upsample_logits", "upsample_masks")
    lazy = gen.generate(chip)
    stats = dict(gen.last_stats)
    assert stats["masks_after_filter"] > stats["masks_after_nms"] > 0
    assert sum(upsampled) == stats["masks_after_nms"]  # only NMS survivors reach chip resolution

    monkeypatch.setattr(crop, "LAZY_UPSAMPLE", False)
    upsampled.clear()
    full = gen.generate(chip)
    assert sum(upsampled) >= gen.last_stats["masks_after_filter"]
    assert gen.last_stats == stats
    assert len(lazy) == len(full) > 0
    assert np.array_equal(lazy.masks, full.masks)
    assert np.array_equal(lazy.stability_score, full.stability_score)
    assert np.array_equal(lazy.predicted_iou, full.predicted_iou)
    # and a chip with invalid pixels takes the full path (masks cut to valid pixels)
    valid = np.ones((1024, 1024), dtype=bool)
    valid[:, :100] = False
    cut = gen.generate(make_chip(1024, 1024, valid=valid, seed=4))
    assert not cut.masks[:, :, :100].any()


@pytest.mark.parametrize("stability", [0.0, 0.9])
@pytest.mark.parametrize("cut_in_kernel", [True, False])
def test_invalid_pixels_keep_the_lazy_path_and_the_full_paths_results(
    bundle: SamBundle, monkeypatch, stability: float, cut_in_kernel: bool
) -> None:
    """A 1024 px chip with invalid pixels (a wedge, as nodata at a scene's edge) counts and boxes masks from the
    low-res logits too: the boxes of the masks cut to the valid pixels come from the upsampled-statistics kernel
    (only NMS survivors upsampled), or without it only the masks whose box holds an invalid pixel are upsampled for
    their cut boxes; masks (so their boxes), scores and counts equal upsampling and cutting every filtered mask. A
    scripted decoder gives sharp small squares, soft ramps and exact-threshold masks around each point."""
    from geosam.models import cpu_masks

    scripted_decoder(monkeypatch)
    kernel = cut_in_kernel and cpu_masks.available()
    if not cut_in_kernel:
        monkeypatch.setattr(crop, "upsampled_x4_cut_stats", lambda *a, **k: None)
    yy, xx = np.mgrid[:1024, :1024]
    valid = xx + yy > 500
    chip = make_chip(1024, 1024, valid=valid, seed=4)
    gen = SamMaskGenerator(
        bundle, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=stability, box_nms_thresh=0.5
    )
    upsampled = count_upsampled(monkeypatch, "upsample_masks")
    lazy = gen.generate(chip)
    stats = dict(gen.last_stats)
    assert stats["masks_after_filter"] > stats["masks_after_nms"] > 0
    if kernel:
        assert sum(upsampled) == stats["masks_after_nms"]  # only NMS survivors reach chip resolution
    else:
        assert stats["masks_after_nms"] < sum(upsampled) < stats["masks_after_filter"]  # some boxes touch the wedge
    monkeypatch.setattr(crop, "LAZY_UPSAMPLE", False)
    full = gen.generate(chip)
    assert gen.last_stats == stats
    assert len(lazy) == len(full) > 0
    assert np.array_equal(lazy.masks, full.masks) and not lazy.masks[:, ~valid].any()
    for field in ("stability_score", "predicted_iou"):
        assert np.array_equal(getattr(lazy, field), getattr(full, field)), field


def test_invalid_pixels_score_from_low_res_like_the_full_path(bundle: SamBundle, monkeypatch) -> None:
    """A 1024 px chip with invalid pixels scores stability from the low-res logits (exact: SAM scores the
    whole upsampled logits) and upsamples only the masks that pass; the kept masks equal the full path's.
    A scripted decoder gives sharp small squares, soft ramps and exact-threshold masks."""
    scripted_decoder(monkeypatch)
    valid = np.ones((1024, 1024), dtype=bool)
    valid[:, :300] = False
    chip = make_chip(1024, 1024, valid=valid, seed=5)
    gen = SamMaskGenerator(bundle, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.9)
    upsampled = count_upsampled(monkeypatch, "upsample_logits", "upsample_masks")
    fast = gen.generate(chip)
    assert sum(upsampled) < gen.last_stats["masks_decoded"]  # only masks whose score passes are upsampled
    monkeypatch.setattr(crop, "LAZY_UPSAMPLE", False)
    full = gen.generate(chip)
    assert len(fast) == len(full) > 0
    assert np.array_equal(fast.masks, full.masks) and not fast.masks[:, :, :300].any()
    assert np.array_equal(fast.stability_score, full.stability_score)


# -- parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"points_per_side": 0},
        {"points_per_side": 2.5},
        {"points_per_batch": 0},
        {"pred_iou_thresh": 1.5},
        {"stability_score_thresh": -0.1},
        {"box_nms_thresh": 0.0},
        {"stability_score_offset": 0.0},
        {"min_mask_region_area": -1},
        {"min_mask_region_area": 2.5},
        {"mask_threshold": float("nan")},
    ],
)
def test_bad_parameters(bundle: SamBundle, kwargs) -> None:
    with pytest.raises(ConfigError):
        SamMaskGenerator(bundle, **kwargs)


def test_generator_protocol_and_name(bundle: SamBundle, tiny_sam_dir: str) -> None:
    g = SamMaskGenerator(bundle)
    assert isinstance(g, MaskGenerator)
    assert g.name == tiny_sam_dir
    g2 = SamMaskGenerator(tiny_sam_dir, device="cpu", points_per_side=4)
    assert g2.name == tiny_sam_dir and g2.bundle is bundle
    clone = pickle.loads(pickle.dumps(g2))  # the model is reloaded (from the cache), not pickled
    assert clone.bundle is bundle and clone.points_per_side == 4


# -- generate with the tiny random-weight model ------------------------------------------


@pytest.mark.parametrize("shape", [(256, 256), (400, 600)])
def test_generate_tiny_model(bundle: SamBundle, shape) -> None:
    h, w = shape
    g = SamMaskGenerator(bundle, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out = g.generate(make_chip(h, w))
    assert isinstance(out, ChipMasks)
    assert out.masks.shape[1:] == (h, w) and out.masks.dtype == bool
    assert len(out) >= 1
    assert out.predicted_iou.shape == out.stability_score.shape == (len(out),)
    assert out.masks.reshape(len(out), -1).any(axis=1).all()  # no empty masks
    st = g.last_stats
    assert st["points_total"] == st["points_decoded"] == 36
    assert st["masks_decoded"] == 108
    assert st["masks_kept"] == len(out)


def test_generate_tiny_model_respects_invalid_pixels(bundle: SamBundle) -> None:
    h, w = 400, 600
    valid = np.ones((h, w), dtype=bool)
    valid[:, 300:] = False  # right half is nodata
    valid[:50, :] = False
    g = SamMaskGenerator(bundle, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=30)
    out = g.generate(make_chip(h, w, valid))
    assert len(out) >= 1
    assert not out.masks[:, ~valid].any()
    assert (out.masks.sum(axis=(1, 2)) >= 30).all()
    # grid x = 50, 150, 250 | 350, 450, 550 and y = 33.3 (invalid), 100, ...: 3 x 5 points decoded
    assert g.last_stats["points_total"] == 36
    assert g.last_stats["points_decoded"] == 15


def test_invalid_only_chip_is_empty_without_decoding(bundle: SamBundle, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("nothing should be encoded or decoded")

    monkeypatch.setattr(everything, "encode", boom)
    monkeypatch.setattr(crop, "decode_points", boom)
    g = SamMaskGenerator(bundle, points_per_side=4)
    out = g.generate(make_chip(100, 120, np.zeros((100, 120), dtype=bool)))
    assert len(out) == 0 and out.masks.shape == (0, 100, 120)
    assert g.last_stats["points_decoded"] == 0
    # valid pixels exist but no grid point falls on them
    valid = np.zeros((100, 120), dtype=bool)
    valid[0:5, 0:5] = True
    out = g.generate(make_chip(100, 120, valid))
    assert len(out) == 0 and g.last_stats["points_total"] == 16 and g.last_stats["points_decoded"] == 0


# -- generate with a geometric fake decoder --------------------------------------------------

#: Per point: three discs of these radii (low-res pixels) with these predicted IoUs.
RADII = (10.0, 11.0, 40.0)
IOUS = (0.90, 0.95, 0.85)


def fake_decode_points(bundle, image_embeddings, points, labels=None, multimask=True, iou_floor=None, cache=None):
    """Logits = radius - distance to the prompt, in low-res pixels; a disc per radius."""
    lr, s = bundle.low_res_size, bundle.input_size
    pts = torch.as_tensor(points, dtype=torch.float32) * (lr / s)
    centres = torch.arange(lr, dtype=torch.float32) + 0.5
    dx = centres[None, None, :] - pts[:, 0, None, None]
    dy = centres[None, :, None] - pts[:, 1, None, None]
    dist = torch.sqrt(dx**2 + dy**2)  # (N, lr, lr)
    logits = torch.stack([r - dist for r in RADII], dim=1)
    iou = torch.tensor(IOUS).repeat(pts.shape[0], 1)
    return logits, iou


@pytest.fixture
def fake_decoder(monkeypatch):
    monkeypatch.setattr(crop, "decode_points", fake_decode_points)


def _centroids(masks: np.ndarray) -> np.ndarray:
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return np.array(out)


def test_fake_decoder_nms_keeps_expected_masks(bundle: SamBundle, fake_decoder) -> None:
    # 256 x 256 chip: 1 low-res px = 1 chip px; grid spacing 64 px
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7)
    out = g.generate(make_chip(256, 256))
    # per point the r=10 disc loses to the r=11 disc (box IoU 0.83 > 0.7); r=11 and r=40 survive
    assert len(out) == 32
    assert g.last_stats["masks_after_filter"] == 48 and g.last_stats["masks_after_nms"] == 32
    assert np.allclose(np.sort(out.predicted_iou), [0.85] * 16 + [0.95] * 16)
    small = out.masks[out.predicted_iou > 0.9]
    areas = small.sum(axis=(1, 2))
    assert np.allclose(areas, np.pi * 11**2, rtol=0.1)
    # the masks sit on the grid points (chip frame)
    grid = build_point_grid(4) * 256
    cents = _centroids(small)
    for c in cents:
        assert np.min(np.hypot(*(grid - c).T)) < 1.0
    # no pair left above the NMS threshold
    boxes = batched_mask_to_box(torch.from_numpy(out.masks))
    iou = box_iou(boxes, boxes) - torch.eye(len(out))
    assert float(iou.max()) <= 0.7


def test_fake_decoder_thresholds(bundle: SamBundle, fake_decoder) -> None:
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.9, stability_score_thresh=0.0)
    out = g.generate(make_chip(256, 256))
    assert len(out) == 16 and np.allclose(out.predicted_iou, 0.95)  # 0.90 is not > 0.9
    # stability of a disc with unit logit slope: ((r - 1) / (r + 1))^2 -> 0.67, 0.69, 0.90
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.8)
    out = g.generate(make_chip(256, 256))
    assert len(out) == 16 and np.allclose(out.predicted_iou, 0.85)
    # discs clipped by the chip edge are a little more stable
    assert (out.stability_score >= (39 / 41) ** 2 - 0.01).all() and (out.stability_score < 0.95).all()


def test_fake_decoder_frames_on_non_square_chip(bundle: SamBundle, fake_decoder) -> None:
    h, w = 400, 600
    g = SamMaskGenerator(bundle, points_per_side=3, pred_iou_thresh=0.9, stability_score_thresh=0.0)
    out = g.generate(make_chip(h, w))
    assert out.masks.shape == (9, h, w)
    # r = 11 low-res px = 11 * 4 * 600 / 1024 chip px
    r_chip = 11 * 4 * w / 1024
    assert np.allclose(out.masks.sum(axis=(1, 2)), np.pi * r_chip**2, rtol=0.05)
    grid = build_point_grid(3) * np.array([w, h])
    cents = _centroids(out.masks)
    for p in grid:
        assert np.min(np.hypot(*(cents - p).T)) < 1.0


def test_fake_decoder_invalid_pixels(bundle: SamBundle, fake_decoder) -> None:
    valid = np.ones((256, 256), dtype=bool)
    valid[:, 128:] = False
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out = g.generate(make_chip(256, 256, valid))
    assert g.last_stats["points_decoded"] == 8
    assert len(out) == 16  # r=11 and r=40 per decoded point
    assert not out.masks[:, ~valid].any()
    # r=40 discs around x = 96 reach past x = 128 but were cut at the valid edge
    big = out.masks[out.predicted_iou < 0.9]
    assert big[:, :, 127].any()


def test_filtering_happens_before_upsampling(bundle: SamBundle, fake_decoder, monkeypatch) -> None:
    upsampled = count_upsampled(monkeypatch, "upsample_logits")
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.99, stability_score_thresh=0.0)
    out = g.generate(make_chip(256, 256))
    assert len(out) == 0 and upsampled == []
    assert g.last_stats["masks_decoded"] == 48 and g.last_stats["masks_after_filter"] == 0

    g = SamMaskGenerator(bundle, points_per_side=4, points_per_batch=5, pred_iou_thresh=0.9, stability_score_thresh=0.0)
    g.generate(make_chip(256, 256))
    assert sum(upsampled) == 16  # only the survivors, never the 48 decoded masks
    assert max(upsampled) <= crop.UPSAMPLE_CHUNK


def test_x4_filter_in_chunks_equals_one_chunk(bundle: SamBundle, fake_decoder, monkeypatch) -> None:
    """On a 1024 px chip the IoU filter, the stability bound and the exact counts run `UPSAMPLE_CHUNK` masks at a
    time: the survivors, their scores and order equal one chunk for the whole batch."""
    scored: list[int] = []
    real = crop._score_chunk

    def spy(bundle, params, frame, low, iou, cells=None):
        scored.append(int(low.shape[0]))
        return real(bundle, params, frame, low, iou, cells)

    monkeypatch.setattr(crop, "_score_chunk", spy)
    chip = make_chip(1024, 1024)
    runs = []
    for chunk in (1000, 3):
        monkeypatch.setattr(crop, "UPSAMPLE_CHUNK", chunk)
        scored.clear()
        # the IoU filter keeps 2 of each point's 3 masks (r=10, r=11: stability 0.67, 0.69), NMS the r=11 discs
        g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.88, stability_score_thresh=0.6)
        runs.append((g.generate(chip), dict(g.last_stats), list(scored)))
    (one, stats1, scored1), (many, stats3, scored3) = runs
    assert len(one) == 16 and np.allclose(one.predicted_iou, 0.95)
    assert stats1["masks_after_filter"] == 32
    assert stats1 == stats3 and stats1["masks_decoded"] == 48
    assert np.array_equal(one.masks, many.masks)
    assert np.array_equal(one.stability_score, many.stability_score)
    assert np.array_equal(one.predicted_iou, many.predicted_iou)
    assert sum(scored1) == sum(scored3) and max(scored3) <= 3 and len(scored3) > len(scored1)


def test_filter_chunk_is_cache_sized_on_the_cpu_and_large_on_a_gpu(monkeypatch) -> None:
    """The CPU filters `UPSAMPLE_CHUNK` masks at a time (cache), a GPU `DEVICE_CHUNK` (launches and syncs per step);
    the chunk never changes the result (`test_x4_filter_in_chunks_equals_one_chunk`)."""
    assert crop.filter_chunk(torch.device("cpu")) == crop.UPSAMPLE_CHUNK
    assert crop.filter_chunk(torch.device("cuda")) == crop.DEVICE_CHUNK >= 16 * crop.UPSAMPLE_CHUNK
    monkeypatch.setattr(crop, "DEVICE_CHUNK", 5)
    assert crop.filter_chunk(torch.device("cuda", 1)) == 5
    assert crop.filter_chunk(torch.device("cpu")) == crop.UPSAMPLE_CHUNK


def test_min_mask_region_area_drops_small_masks(bundle: SamBundle, fake_decoder) -> None:
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=500)
    out = g.generate(make_chip(256, 256))
    # r=11 discs (~380 px) are islands below 500 px: with nothing else in the mask the largest
    # island is kept, so they survive the clean-up but are then dropped by area
    assert len(out) == 16
    assert (out.masks.sum(axis=(1, 2)) >= 500).all()


# -- models that cannot segment everything ------------------------------------------


@pytest.fixture
def box_only_litemedsam(monkeypatch, tiny_sam_dir: str):
    """model="litemedsam" through the registry, with a tiny SamModel instead of its weights (runs without them)."""
    from transformers import SamModel

    from geosam.models import clear_model_cache, litemedsam

    clear_model_cache()
    monkeypatch.setattr(litemedsam, "build_model", lambda path=None: SamModel.from_pretrained(tiny_sam_dir).eval())
    yield "litemedsam"
    clear_model_cache()


def test_box_only_model_is_refused_before_any_chip_work(box_only_litemedsam, monkeypatch) -> None:
    from pathlib import Path

    from geosam.modes.everything import segment_scene
    from geosam.read.scene import Scene

    def no_chip_work(*args, **kwargs):
        raise AssertionError("a chip was read although the model cannot segment everything")

    monkeypatch.setattr(Scene, "read_chip", no_chip_work)
    monkeypatch.setattr(SamMaskGenerator, "generate_batch", no_chip_work)
    with pytest.raises(ConfigError) as err:
        SamMaskGenerator(box_only_litemedsam, device="cpu")
    msg = str(err.value)
    assert "'litemedsam' takes box prompts only" in msg and "segment-everything needs point prompts" in msg
    assert "`geosam prompt` with boxes" in msg
    scene = Path(__file__).resolve().parents[1] / "data" / "solaris_pan_uint16.tif"
    with pytest.raises(ConfigError, match="'litemedsam' takes box prompts only.*geosam prompt"):
        segment_scene(scene, model=box_only_litemedsam, device="cpu")
