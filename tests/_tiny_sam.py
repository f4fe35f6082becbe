"""A tiny random-weight SAM checkpoint for tests (generated, deterministic).

The model keeps SAM's real geometry (1024 px input, 16 px patches, 64 x 64
embedding, 256 x 256 low-res logits) so the default processor settings fit,
but has ~0.2 M parameters: encoding a 1024 x 1024 chip takes well under a
second on a CPU. Its masks are speckle noise (thousands of tiny components,
near-zero logits and predicted IoU): use it to test plumbing, not quality.
"""

from __future__ import annotations

import os

import torch


def seeded_sam_model(config, seed: int):  # -> transformers.SamModel
    """``SamModel(config)`` in eval mode, initialised from ``seed`` without touching the global RNG."""
    from transformers import SamModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return SamModel(config).eval()
    finally:
        torch.random.set_rng_state(state)


def build_tiny_sam(dirpath: str | os.PathLike[str]) -> str:
    """Write a tiny SAM model and its processor into ``dirpath``; return the directory.

    The directory loads with ``SamModel.from_pretrained`` / ``geosam.models.load_model``.
    """
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    hidden = 32  # prompt encoder / mask decoder width = vision output channels
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        output_channels=hidden,
        global_attn_indexes=[1],
        num_pos_feats=hidden // 2,
        window_size=14,
        initializer_range=0.02,  # SAM's vision default (1e-10) makes the embedding ~0 for every image
    )
    prompt = SamPromptEncoderConfig(hidden_size=hidden, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)

    model = seeded_sam_model(config, seed=0)

    out = os.fspath(dirpath)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(out)
    return out
