"""benchmarks/sam_anchor.py: a transformers SamModel and segment-anything's Sam built from its weights agree.

The benchmark's second anchor (segment-anything's own ``SamAutomaticMaskGenerator``) only means something if
both libraries run the same model: the same image embedding from the same image, the same masks for a prompt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._tiny_sam import seeded_sam_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sam_anchor = pytest.importorskip("sam_anchor")


def _tiny_model():
    """A small SAM (1024 px input like SAM, 2 ViT layers of width 32, SAM's decoder at width 32), weights seeded."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, output_channels=32,
                             global_attn_indexes=[1], num_pos_feats=16, window_size=14, initializer_range=0.02)
    config = SamConfig(
        vision_config=vision,
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    model = seeded_sam_model(config, seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # rel-pos tables start at zero and the hypernetworks near it: give them weight
        for layer in model.vision_encoder.layers:
            layer.attn.rel_pos_h.copy_(torch.randn(layer.attn.rel_pos_h.shape, generator=gen))
            layer.attn.rel_pos_w.copy_(torch.randn(layer.attn.rel_pos_w.shape, generator=gen))
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight *= 10000.0  # logits of +-2: masks with outlines
    return model


@pytest.fixture(scope="module")
def pair():
    sa, _ = sam_anchor.import_segment_anything()
    model = _tiny_model()
    sam = sam_anchor.build_segment_anything(model)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    image = np.kron(image, np.ones((8, 8, 1), np.uint8))  # 768 x 1024: blocky, and resized by neither library
    return sa, model, sam, image


def test_state_dict_is_complete_and_renamed(pair) -> None:
    _, model, sam, _ = pair
    converted = sam_anchor.segment_anything_state_dict(model.state_dict(), model.config.mask_decoder_config.iou_head_depth)
    assert set(converted) == set(sam.state_dict())
    for key, value in sam.state_dict().items():
        assert torch.equal(value, converted[key]), key


def test_same_image_embedding(pair) -> None:
    sa, model, sam, image = pair

    predictor = sa.SamPredictor(sam)
    predictor.set_image(image)
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    pv = SamImageProcessorPil()(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = model.get_image_embeddings(pv)
    theirs = predictor.features
    assert ours.shape == theirs.shape == (1, 32, 64, 64)
    assert float((ours - theirs).abs().max()) < 1e-4 * float(theirs.abs().max())


def _decoder_eps(sam, eps: float) -> None:
    for m in sam.mask_decoder.transformer.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps


def _predict_both(sa, model, sam, image):
    """(segment-anything's (masks logits, scores, low-res logits), transformers' (same)) for one point prompt."""
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    point = np.array([[300.0, 200.0]])
    predictor = sa.SamPredictor(sam)
    predictor.set_image(image)
    theirs = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True, return_logits=True)
    proc = SamProcessor(image_processor=SamImageProcessorPil())
    inputs = proc(images=image, input_points=[[[point[0].tolist()]]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    up = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)
    return theirs, (up[0][0].numpy(), out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy())


def test_same_masks_for_one_prompt(pair) -> None:
    """With the decoder's layer-norm eps made equal (transformers' 1e-6), outputs agree to float rounding."""
    sa, model, sam, image = pair
    _decoder_eps(sam, model.config.mask_decoder_config.layer_norm_eps)
    try:
        (masks, scores, low), (hf_masks, hf_scores, hf_low) = _predict_both(sa, model, sam, image)
    finally:
        _decoder_eps(sam, 1e-5)
    assert hf_low.shape == low.shape == (3, 256, 256)
    assert hf_masks.shape == masks.shape == (3, 768, 1024)
    scale = float(np.abs(low).max())
    assert scale > 0.5
    assert np.abs(hf_low - low).max() < 1e-4 * scale
    assert np.abs(hf_scores - scores).max() < 1e-5
    theirs, ours = masks > 0, hf_masks > 0
    assert 0.05 < theirs.mean() < 0.95  # the masks are not trivially empty or full
    assert (theirs != ours).mean() < 1e-4  # pixels within rounding of the threshold may differ


def test_masks_with_segment_anythings_own_eps(pair) -> None:
    """As shipped (eps 1e-5 vs 1e-6 in the two-way transformer) the masks still agree (IoU > 0.99 each)."""
    sa, model, sam, image = pair
    (masks, _, _), (hf_masks, _, _) = _predict_both(sa, model, sam, image)
    for a, b in zip(masks > 0, hf_masks > 0):
        assert (a & b).sum() / (a | b).sum() > 0.99
