"""SAM-HQ and SAM 2 through the registry, the runtime and both entry points (tiny random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import geosam
from geosam.cli.main import cli
from geosam.errors import ModelLoadError
from geosam.models import decode_points, encode, load_model, preprocess
from geosam.models.embeddings import MultiEmbeddings
from tests._sam_hq_reference import reference_hq_decode
from tests.data.make_scenes import make_oracle_scene

FEW = {"points_per_side": 2, "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
       "device": "cpu", "dtype": "float32", "progress": False}


@pytest.fixture(scope="module")
def two_chip_scene(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("fam_scene")
    return str(make_oracle_scene(d, width=700, height=400, n_objects=8, seed=3).image_path)


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
def test_family_from_config_and_declared(tiny_family_dirs: dict[str, str], family: str) -> None:
    b = load_model(tiny_family_dirs[family], device="cpu", dtype="float32")
    assert b.capabilities.family == family
    assert b.capabilities.segment_everything and b.capabilities.point_prompts and b.capabilities.box_prompts
    assert b.resize == ("square" if family == "sam2" else "longest")
    assert b.low_res_size == 256


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
def test_runtime_matches_the_model_forward(tiny_family_dirs: dict[str, str], family: str) -> None:
    """geosam's encode + decode of one chip of a batch equals the transformers forward on that chip alone."""
    b = load_model(tiny_family_dirs[family], device="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(2)]
    pv, _, resized = preprocess(b, imgs)
    assert resized[0] == ((1024, 1024) if family == "sam2" else (768, 1024))
    emb = encode(b, pv)
    assert isinstance(emb, MultiEmbeddings)
    pts = torch.tensor([[100.0, 200.0], [600.0, 300.0]])
    logits, iou = decode_points(b, emb[1:2], pts)
    with torch.inference_mode():
        if family == "sam_hq":  # the authors' decoder (transformers' forward upscales the wrong image side)
            main, inter = b.model.get_image_embeddings(pv[1:2])
            ref_masks, ref_iou = reference_hq_decode(b.model, main, inter[0], pts[None, :, None, :],
                                                     torch.ones(1, 2, 1, dtype=torch.long), None, multimask=True)
        else:
            ref = b.model(pixel_values=pv[1:2], input_points=pts[None, :, None, :],
                          input_labels=torch.ones(1, 2, 1, dtype=torch.long), multimask_output=True)
            ref_masks, ref_iou = ref.pred_masks[0], ref.iou_scores[0]
    torch.testing.assert_close(logits, ref_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-4)


def test_sam_hq_runs_geosam_encoder_with_the_global_layers_outputs(tiny_family_dirs: dict[str, str]) -> None:
    """SAM-HQ's ViT is SAM's: on the CPU geosam's fast encoder runs it by default, and gives the stock encoder's
    embedding and its global-attention layers' outputs (the HQ decoder's ``intermediate_embeddings``)."""
    import dataclasses

    from geosam.models.compile import use_fast_encoder

    b = load_model(tiny_family_dirs["sam_hq"], device="cpu", dtype="float32")
    stock = dataclasses.replace(b, fast_encoder=False)
    assert use_fast_encoder(b) and not use_fast_encoder(stock)
    rng = np.random.default_rng(2)
    pv, _, _ = preprocess(b, [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(2)])
    fast, ref = encode(b, pv), encode(stock, pv)
    n_global = sum(int(layer.window_size) == 0 for layer in b.model.vision_encoder.layers)
    assert len(fast.extras) == len(ref.extras) == n_global >= 1
    torch.testing.assert_close(fast.main, ref.main, rtol=1e-4, atol=1e-5)
    for got, want in zip(fast.extras, ref.extras, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    pts = torch.tensor([[100.0, 200.0], [600.0, 300.0]])
    for got, want in zip(decode_points(b, fast[1:2], pts), decode_points(stock, ref[1:2], pts), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["sam2"])
def test_stock_decoder_runs_in_cpu_chunks_with_the_masks_of_one_call(tiny_family_dirs: dict[str, str],
                                                                     family: str) -> None:
    """On the CPU the model's own decoder sees `STOCK_DECODER_CPU_CHUNK` prompts per call (last chunk partial), and
    the batch's logits and IoUs are those of one forward of the model on all prompts."""
    import dataclasses

    from geosam.models import STOCK_DECODER_CPU_CHUNK

    b = dataclasses.replace(load_model(tiny_family_dirs[family], device="cpu", dtype="float32"), fast_decoder=False)
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    pv, _, _ = preprocess(b, [img])
    emb = encode(b, pv)
    n = 2 * STOCK_DECODER_CPU_CHUNK + 1
    pts = torch.rand((n, 2), generator=torch.Generator().manual_seed(3)) * 1000
    calls: list[int] = []
    hook = b.model.mask_decoder.register_forward_hook(lambda m, a, k, o: calls.append(1), with_kwargs=True)
    try:
        logits, iou = decode_points(b, emb, pts, iou_floor=0.0)
    finally:
        hook.remove()
    assert len(calls) == 3
    with torch.inference_mode():
        ref = b.model(pixel_values=pv, input_points=pts[None, :, None, :],
                      input_labels=torch.ones(1, n, 1, dtype=torch.long), multimask_output=True)
    assert logits.shape == ref.pred_masks[0].shape and iou.shape == ref.iou_scores[0].shape
    torch.testing.assert_close(iou, ref.iou_scores[0], rtol=1e-4, atol=1e-4)
    kept = (ref.iou_scores[0] > 0.0).any(dim=1)  # iou_floor: prompts with no IoU above it are -inf
    torch.testing.assert_close(logits[kept], ref.pred_masks[0][kept], rtol=1e-4, atol=1e-4)
    assert bool(torch.isneginf(logits[~kept]).all())


@pytest.mark.parametrize("multimask", [True, False])
def test_sam2_decoder_gives_the_model_decoders_masks(
    tiny_family_dirs: dict[str, str], multimask: bool, count_calls: Any
) -> None:
    """SAM 2 decodes through geosam's decoder by default: in CPU chunks (last one partial), points and boxes, the
    model's own decoder's masks and IoUs (without ``multimask``: the single mask, or the best multimask one where the
    single mask is unstable, both cases present); ``iou_floor`` makes the prompts at or below it -inf."""
    import copy
    import dataclasses

    from geosam.models import FAMILY_DECODER_CPU_CHUNK, decode

    cached = load_model(tiny_family_dirs["sam2"], device="cpu", dtype="float32")
    b = dataclasses.replace(cached, model=copy.deepcopy(cached.model))  # the cached bundle's weights stay as they are
    dec = b.model.mask_decoder
    with torch.no_grad():  # logits of about +-1 (the tiny model's are ~1e-4): stability scores spread out
        for mlp in dec.output_hypernetworks_mlps:
            mlp.proj_out.weight *= 1e4
            mlp.proj_out.bias *= 1e4
    stock = dataclasses.replace(b, fast_decoder=False)
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    emb = encode(b, preprocess(b, [img])[0])
    n = 2 * FAMILY_DECODER_CPU_CHUNK + 1
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand((n, 2), generator=gen) * 1000
    boxes = torch.sort(torch.rand((n, 2, 2), generator=gen) * 1000, dim=1).values.reshape(n, 4)
    thresh = dec.dynamic_multimask_stability_thresh
    try:
        if not multimask:  # a threshold between the single masks' stability scores: some stable, some not
            dec.dynamic_multimask_via_stability = False
            single, _ = decode_points(stock, emb, pts, multimask=False)
            dec.dynamic_multimask_via_stability = True
            dec.dynamic_multimask_stability_thresh = float(dec._get_stability_scores(single[:, 0]).median())
        calls: list[int] = []
        hook = dec.register_forward_hook(lambda m, a, k, o: calls.append(1), with_kwargs=True)
        import geosam.models.fast_transformer as ft

        plans, sides = count_calls(ft, "_Conv1FromSharedImage"), count_calls(ft, "_image_side")
        try:
            logits, iou = decode_points(b, emb, pts, multimask=multimask)
            # CPU float32: every chunk's first upscaling product from the shared image side, no image side written
            assert len(plans) == 3 and not sides
            floor = float(iou.max(dim=1).values.median())
            cut, _ = decode_points(b, emb, pts, multimask=multimask, iou_floor=floor)
            box_logits, box_iou = decode(b, emb, points=pts[:, None, :], boxes=boxes, multimask=multimask)
        finally:
            hook.remove()
        assert not calls
        ref, ref_iou = decode_points(stock, emb, pts, multimask=multimask)
        ref_box, ref_box_iou = decode(stock, emb, points=pts[:, None, :], boxes=boxes, multimask=multimask)
        if not multimask:
            dec.dynamic_multimask_via_stability = False
            plain, _ = decode_points(stock, emb, pts, multimask=False)
            fell_back = (ref - plain).abs().flatten(1).amax(dim=1) > 0
            assert 0 < int(fell_back.sum()) < n
    finally:
        dec.dynamic_multimask_via_stability = True
        dec.dynamic_multimask_stability_thresh = thresh
    assert logits.shape == ref.shape == (n, 3 if multimask else 1, 256, 256)
    for got, want in ((logits, ref), (iou, ref_iou), (box_logits, ref_box), (box_iou, ref_box_iou)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    kept = (iou > floor).any(dim=1)
    assert 0 < int(kept.sum()) < n
    torch.testing.assert_close(cut[kept], ref[kept], rtol=1e-4, atol=1e-4)
    assert bool(torch.isneginf(cut[~kept]).all())


def test_sam2_decoder_upscaling_paths_agree(tiny_family_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's upscaling (transposed convolutions as per-pixel products, pixels in sub-pixel order) and the
    convolution path other devices take give the same masks."""
    import geosam.models.sam2_decoder as s2

    b = load_model(tiny_family_dirs["sam2"], device="cpu", dtype="float32")
    emb = encode(b, preprocess(b, [np.random.default_rng(6).integers(0, 255, (256, 256, 3), dtype=np.uint8)])[0])
    pts = torch.rand((5, 2), generator=torch.Generator().manual_seed(7)) * 1000
    plans: list[object] = []
    real_plan = s2._linear_plan
    monkeypatch.setattr(s2, "_linear_plan", lambda *a: plans.append(1) or real_plan(*a))
    products = decode_points(b, emb, pts, multimask=True)
    monkeypatch.setattr(s2, "_linear_plan", lambda *a: None)
    convolutions = decode_points(b, emb, pts, multimask=True)
    assert plans
    torch.testing.assert_close(products[0], convolutions[0], rtol=1e-4, atol=1e-9)  # logits of ~1e-4 here
    torch.testing.assert_close(products[1], convolutions[1])


@pytest.mark.parametrize("multimask", [True, False])
def test_sam_hq_decodes_as_its_authors_decoder(
    tiny_family_dirs: dict[str, str], multimask: bool, count_calls: Any
) -> None:
    """SAM-HQ decodes through geosam's decoder: in CPU chunks (last one partial), points and boxes, the masks and
    IoUs of SAM-HQ's own decoder (SysCV's, transcribed in tests/_sam_hq_reference.py), one mask per prompt; with
    ``iou_floor`` the prompts at or below it are -inf; transformers' forward is never called; on the CPU in float32
    no image side is written (the upscaling from the shared image side)."""
    import geosam.models.fast_transformer as ft
    from geosam.models import FAMILY_DECODER_CPU_CHUNK, decode

    b = load_model(tiny_family_dirs["sam_hq"], device="cpu", dtype="float32")
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    pv, _, _ = preprocess(b, [img])
    emb = encode(b, pv)
    n = 2 * FAMILY_DECODER_CPU_CHUNK + 1
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand((n, 2), generator=gen) * 1000
    boxes = torch.sort(torch.rand((n, 2, 2), generator=gen) * 1000, dim=1).values.reshape(n, 4)
    calls: list[int] = []
    hook = b.model.mask_decoder.register_forward_hook(lambda m, a, k, o: calls.append(1), with_kwargs=True)
    plans, sides = count_calls(ft, "_Conv1FromSharedImage"), count_calls(ft, "_image_side")
    try:
        logits, iou = decode_points(b, emb, pts, multimask=multimask)
        assert len(plans) == 3 and not sides  # a plan per chunk
        floor = float(iou.median())
        cut, cut_iou = decode_points(b, emb, pts, multimask=multimask, iou_floor=floor)
        box_logits, box_iou = decode(b, emb, points=pts[:, None, :], boxes=boxes, multimask=multimask)
    finally:
        hook.remove()
    assert not calls
    lab = torch.ones(1, n, 1, dtype=torch.long)
    with torch.inference_mode():
        ref = reference_hq_decode(b.model, emb.main, emb.extras[0], pts[None, :, None, :], lab, None, multimask)
        ref_box = reference_hq_decode(b.model, emb.main, emb.extras[0], pts[None, :, None, :], lab, boxes[None],
                                      multimask)
    assert logits.shape == (n, 1, 256, 256) and iou.shape == (n, 1)
    for got, want in ((logits, ref[0]), (iou, ref[1]), (cut_iou, ref[1]), (box_logits, ref_box[0]),
                      (box_iou, ref_box[1])):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    kept = iou[:, 0] > floor
    assert 0 < int(kept.sum()) < n
    torch.testing.assert_close(cut[kept], ref[0][kept], rtol=1e-4, atol=1e-5)
    assert bool(torch.isneginf(cut[~kept]).all())


def test_sam_hq_token_only_and_shared_cache(tiny_family_dirs: dict[str, str]) -> None:
    """`hq_decode` with ``hq_token_only`` gives the HQ mask alone, and calls sharing a cache on one image give the
    masks of one call on all prompts (the cache holds the HQ features and the first layer's projections)."""
    from geosam.models.hq_decoder import hq_decode

    b = load_model(tiny_family_dirs["sam_hq"], device="cpu", dtype="float32")
    img = np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    emb = encode(b, preprocess(b, [img])[0])
    n = 5
    pts = torch.rand((1, n, 1, 2), generator=torch.Generator().manual_seed(5)) * 1000
    lab = torch.ones(1, n, 1, dtype=torch.long)
    with torch.inference_mode():
        sparse, dense = b.model.prompt_encoder(input_points=pts, input_labels=lab, input_boxes=None, input_masks=None)
        ref = reference_hq_decode(b.model, emb.main, emb.extras[0], pts, lab, None, True, hq_token_only=True)
        got = hq_decode(b.model, emb.main, emb.extras[0], sparse[0], dense, True, hq_token_only=True)
        cache: dict = {}
        one = hq_decode(b.model, emb.main, emb.extras[0], sparse[0], dense, False)
        parts = [hq_decode(b.model, emb.main, emb.extras[0], sparse[0][s : s + 2], dense, False, cache=cache)
                 for s in range(0, n, 2)]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)
    assert "hq_features" in cache
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), one[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
@pytest.mark.parametrize("low", [False, True], ids=["float32", "bf16_embeddings"])
def test_family_decoders_keep_a_callers_cache_across_calls(tiny_family_dirs: dict[str, str], family: str, low: bool,
                                                         count_calls) -> None:
    """`decode_points` with a ``cache`` kept across calls on one image: SAM-HQ's HQ features (SAM 2's upscaling
    plan) are made once for all calls, and the masks and IoUs are those of calls without it; also from bf16
    embeddings (the bf16 dtype's), whose float32 conversion is made once per image in the cache (made anew each
    call, it was a new image to the decoder's cache)."""
    import geosam.models.hq_decoder as hq
    import geosam.models.sam2_decoder as s2
    from geosam.models.embeddings import MultiEmbeddings

    b = load_model(tiny_family_dirs[family], device="cpu", dtype="float32")
    img = np.random.default_rng(6).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    emb = encode(b, preprocess(b, [img])[0])
    if low:
        emb = MultiEmbeddings(emb.main.bfloat16(), tuple(e.bfloat16() for e in emb.extras), emb.family)
    made = count_calls(*((hq, "hq_features") if family == "sam_hq" else (s2, "_linear_plan")))
    pts = torch.rand((12, 2), generator=torch.Generator().manual_seed(7)) * 1000
    batches = [pts[:5], pts[5:]]
    fresh = [decode_points(b, emb, p, multimask=True) for p in batches]
    assert len(made) == 2
    cache: dict = {}
    kept = [decode_points(b, emb, p, multimask=True, cache=cache) for p in batches]
    assert len(made) == 3
    for x, y in zip(fresh, kept):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
def test_segment_scene_and_prompts(tiny_family_dirs: dict[str, str], two_chip_scene: str, family: str) -> None:
    gdf = geosam.segment_scene(two_chip_scene, model=tiny_family_dirs[family], chip_size_px=400, overlap_px=32,
                               fill_value=255, **FEW)
    stats = gdf.attrs["geosam"]
    assert stats["chips_total"] == 2 and not stats["chips_failed"]
    assert set(gdf["model"]) <= {tiny_family_dirs[family]}
    from rasterio import open as ropen

    with ropen(two_chip_scene) as ds:
        x, y = ds.xy(100, 150)
        x0, y0 = ds.xy(50, 100)
        x1, y1 = ds.xy(200, 300)
    from shapely.geometry import Point, box

    prompts = [Point(x, y), box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))]
    out = geosam.segment_prompts(two_chip_scene, prompts, model=tiny_family_dirs[family], device="cpu",
                                 dtype="float32", progress=False, fill_value=255)
    assert len(out) == 2 and set(out["status"]) <= {"ok", "empty"}


def test_models_command_lists_families(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    res = CliRunner().invoke(cli, ["models"])
    assert res.exit_code == 0, res.output
    for name in ("sam", "sam_hq", "sam2", "sam3", "litemedsam", "facebook/sam3", "facebook/sam2.1-hiera-tiny"):
        assert name in res.output
    assert "cached" in res.output


def test_offline_missing_checkpoint_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"facebook/sam3.*hf download facebook/sam3"):
        load_model("facebook/sam3", device="cpu")


@pytest.mark.parametrize("multimask", [True, False])
def test_sam2_decoder_upscales_in_one_c_pass(tmp_path: Path, multimask: bool) -> None:
    """With channels the C kernel takes (C/4, C/8 multiples of 8), SAM 2's upscaling runs in
    `geosam.models.cpu_decoder.upscale_prompt`, both high-resolution features added there: the model's own decoder's
    masks and IoUs (without ``multimask`` the dynamic fallback to the best multimask token still applies)."""
    import dataclasses

    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    import geosam.models.cpu_decoder as cd
    import geosam.models.sam2_decoder as s2

    if not cd.available():
        pytest.skip("the C decoder kernels do not build here")
    h = 64
    backbone = Sam2HieraDetConfig(hidden_size=8, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                                  num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3])  # fmt: skip
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=h)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=h),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=h, mlp_dim=128, num_attention_heads=2,
                                                                  iou_head_hidden_dim=h))  # fmt: skip
    torch.manual_seed(5)
    model = Sam2Model(config).eval()
    dec = model.mask_decoder
    with torch.no_grad():  # logits of about +-1: stability scores spread out, both dynamic cases present
        for mlp in dec.output_hypernetworks_mlps:
            mlp.proj_out.weight *= 3e3
            mlp.proj_out.bias *= 3e3
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_processor_type": "Sam2ImageProcessorFast", "size": {"height": 1024, "width": 1024}}'
    )
    b = load_model(str(tmp_path), device="cpu", dtype="float32")
    b.model.mask_decoder.dynamic_multimask_stability_thresh = 0.9
    stock = dataclasses.replace(b, fast_decoder=False)
    emb = encode(b, preprocess(b, [np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)])[0])
    pts = torch.rand((9, 2), generator=torch.Generator().manual_seed(4)) * 1000
    passes: list[bool] = []
    asked: list[bool] = []
    real = s2.upscale_prompt

    def spy(*a: Any, **k: Any) -> bool:
        asked.append(k["bf16"])
        passes.append(real(*a, **k))
        return passes[-1]

    s2.upscale_prompt = spy  # type: ignore[assignment]
    try:
        logits, iou = decode_points(b, emb, pts, multimask=multimask)
        low, low_iou = decode_points(dataclasses.replace(b, dtype=torch.bfloat16), emb, pts, multimask=multimask)
    finally:
        s2.upscale_prompt = real
    assert passes and all(passes) and asked == [False] * 9 + [True] * 9
    ref, ref_iou = decode_points(stock, emb, pts, multimask=multimask)
    scale = float(ref.abs().max())
    assert scale > 0.5
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-5)
    # the bf16 dtype: the C pass's two products in bf16 where the CPU has them (float32's masks otherwise)
    torch.testing.assert_close(low_iou, ref_iou, rtol=1e-4, atol=1e-5)
    assert float((low - ref).abs().max()) < 2e-2 * scale


def test_sam_hq_bf16_runs_its_hq_convolution_in_bf16(tiny_family_dirs: dict[str, str], count_calls: Any) -> None:
    """Under the bf16 dtype on the CPU the HQ branch's 3 x 3 convolution runs through oneDNN in bf16 (where it has
    bf16 kernels): the float32 decoder's IoUs, its masks to bf16 rounding."""
    import dataclasses

    import geosam.models.hq_decoder as hqd
    from geosam.models.cpu_fused import ops_work

    b = load_model(tiny_family_dirs["sam_hq"], device="cpu", dtype="float32")
    emb = encode(b, preprocess(b, [np.random.default_rng(7).integers(0, 255, (256, 256, 3), dtype=np.uint8)])[0])
    pts = torch.rand((6, 2), generator=torch.Generator().manual_seed(8)) * 1000
    want, want_iou = decode_points(b, emb, pts, multimask=True)
    convs = count_calls(hqd, "conv2d")
    got, iou = decode_points(dataclasses.replace(b, dtype=torch.bfloat16), emb, pts, multimask=True)
    assert len(convs) == (6 if ops_work(torch.bfloat16) else 0)
    torch.testing.assert_close(iou, want_iou)
    scale = float(want.abs().max())
    assert 0 < float((got - want).abs().max()) < 2e-2 * scale or not convs
