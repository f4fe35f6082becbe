"""Tiny random-weight checkpoints of SAM-HQ, SAM 2 and SAM 3 for tests (generated, deterministic).

Each builder writes a folder as ``save_pretrained`` does (``config.json``,
weights, ``preprocessor_config.json``; SAM 3 also its CLIP tokenizer files), so
``geosam.models.load_model(path)`` and ``--model PATH`` load it like a hub
checkpoint. Masks are noise: use them for plumbing, not quality.
"""

from __future__ import annotations

import json
import os

import torch

#: merges of the small CLIP tokenizer of the tiny SAM 3 ("building", "tree", "solar panel" become few tokens)
TINY_MERGES = ["b u", "i l", "bu il", "d i", "n g</w>", "di ng</w>", "buil ding</w>", "s o", "l a", "la r</w>",
               "so lar</w>", "p a", "n e", "ne l</w>", "pa nel</w>", "t r", "e e</w>", "tr ee</w>"]


def _seeded(cls: type, config: object, seed: int) -> torch.nn.Module:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return cls(config).eval()
    finally:
        torch.random.set_rng_state(state)


def _preprocessor(dirpath: str, **fields: object) -> None:
    with open(os.path.join(dirpath, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(fields, f)


def build_tiny_sam_hq(dirpath: str | os.PathLike[str], h: int = 32) -> str:
    """A tiny SAM-HQ (``h`` channels in its decoder: its HQ branch's norm over h / 4)."""
    from transformers import SamHQConfig, SamHQModel
    from transformers.models.sam_hq.configuration_sam_hq import (
        SamHQMaskDecoderConfig,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
    )

    vision = SamHQVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                               output_channels=h, global_attn_indexes=[1], num_pos_feats=h // 2, window_size=14,
                               initializer_range=0.02)
    config = SamHQConfig(vision_config=vision,
                         prompt_encoder_config=SamHQPromptEncoderConfig(hidden_size=h, mask_input_channels=4),
                         mask_decoder_config=SamHQMaskDecoderConfig(hidden_size=h, mlp_dim=64, num_attention_heads=2,
                                                                    iou_head_hidden_dim=h, vit_dim=32))
    out = os.fspath(dirpath)
    _seeded(SamHQModel, config, 1).save_pretrained(out)
    _preprocessor(out, image_processor_type="SamImageProcessor", image_mean=[0.485, 0.456, 0.406],
                  image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255, size={"longest_edge": 1024})
    return out


def build_tiny_sam2(dirpath: str | os.PathLike[str]) -> str:
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    h = 32
    backbone = Sam2HieraDetConfig(hidden_size=8, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                                  num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3],
                                  window_size_per_stage=[8, 4, 14, 7])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=h)
    config = Sam2Config(vision_config=vision,
                        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=h, mask_input_channels=4),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=h, mlp_dim=64, num_attention_heads=2,
                                                                  iou_head_hidden_dim=h))
    out = os.fspath(dirpath)
    _seeded(Sam2Model, config, 2).save_pretrained(out)
    _preprocessor(out, image_processor_type="Sam2ImageProcessorFast", image_mean=[0.485, 0.456, 0.406],
                  image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255, size={"height": 1024, "width": 1024})
    return out


def tiny_sam3_config(image_size: int = 336) -> object:
    """A tiny ``Sam3Config``: every sub-config shrunk; ``image_size`` px input (14 px patches)."""
    from transformers import Sam3Config
    from transformers.models.sam3.configuration_sam3 import (
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    h = 32
    side = image_size // 14
    vit = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        global_attn_indexes=[1], image_size=image_size, pretrain_image_size=image_size,
                        window_size=side // 2)
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=h,
                              backbone_feature_sizes=[[side * 4, side * 4], [side * 2, side * 2], [side, side]])
    text = {"vocab_size": 512 + len(TINY_MERGES) + 2, "hidden_size": 32, "intermediate_size": 64,
            "projection_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
            "hidden_act": "gelu", "bos_token_id": 512 + len(TINY_MERGES), "eos_token_id": 513 + len(TINY_MERGES)}
    return Sam3Config(
        vision_config=vision, text_config=text,
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=h, num_layers=1, num_attention_heads=2,
                                                          intermediate_size=64),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=h, num_layers=1, num_attention_heads=2,
                                                  intermediate_size=64),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=h, num_layers=1, num_queries=12, num_attention_heads=2,
                                                  intermediate_size=64),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=h, num_attention_heads=2),
    )


def build_tiny_sam3(dirpath: str | os.PathLike[str], image_size: int = 336) -> str:
    """A tiny SAM 3 with a small CLIP tokenizer and a preprocessor config (``image_size`` px input)."""
    from transformers import Sam3Model

    from geosam.models.sam3 import write_clip_tokenizer

    out = os.fspath(dirpath)
    _seeded(Sam3Model, tiny_sam3_config(image_size), 3).save_pretrained(out)
    write_clip_tokenizer(out, merges=TINY_MERGES)
    _preprocessor(out, image_processor_type="Sam3ImageProcessorFast", image_mean=[0.5, 0.5, 0.5],
                  image_std=[0.5, 0.5, 0.5], rescale_factor=1 / 255, size={"height": image_size, "width": image_size})
    return out
