"""transformers' SAM 3 classes and functions that geosam's detector replacements reproduce, and when they apply."""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["low_autocast", "stock_parts"]


@functools.lru_cache(maxsize=1)
def stock_parts() -> dict[str, Any]:
    """transformers' classes and functions that `geosam.models.sam3_detector`'s and `geosam.models.sam3_decoder`'s
    replacements reproduce (empty without SAM 3)."""
    try:
        from transformers.models.sam3 import modeling_sam3 as m
    except ImportError:  # pragma: no cover - transformers without SAM 3
        return {}
    return {"decoder": m.Sam3DetrDecoder, "rpb": m.Sam3DetrDecoder._get_rpb_matrix, "coords": m.Sam3DetrDecoder._get_coords,
            "mlp": m.Sam3MLP, "mlp_forward": m.Sam3MLP.forward, "xyxy": m.box_cxcywh_to_xyxy,
            "encoder": m.Sam3DetrEncoder, "encoder_forward": m.Sam3DetrEncoder.forward,
            "prepare_features": m.Sam3DetrEncoder._prepare_multilevel_features,
            "encoder_layer": m.Sam3DetrEncoderLayer, "encoder_layer_forward": m.Sam3DetrEncoderLayer.forward,
            "mask_decoder": m.Sam3MaskDecoder, "mask_decoder_forward": m.Sam3MaskDecoder.forward,
            "embed_pixels": m.Sam3MaskDecoder._embed_pixels, "pixel_decoder": m.Sam3PixelDecoder,
            "pixel_decoder_forward": m.Sam3PixelDecoder.forward, "decoder_forward": m.Sam3DetrDecoder.forward,
            "decoder_layer": m.Sam3DetrDecoderLayer, "decoder_layer_forward": m.Sam3DetrDecoderLayer.forward,
            "decoder_mlp": m.Sam3DecoderMLP, "decoder_mlp_forward": m.Sam3DecoderMLP.forward,
            "bidirectional_mask": m.create_bidirectional_mask, "inverse_sigmoid": m.inverse_sigmoid,
            "decoder_output": m.Sam3DETRDecoderOutput, "attention": m.Sam3Attention,
            "attention_forward": m.Sam3Attention.forward, "attention_functions": m.ALL_ATTENTION_FUNCTIONS,
            "eager_attention": m.eager_attention_forward, "flash_requested": m.is_flash_attention_requested}


def low_autocast() -> bool:
    """Whether CPU autocast to bf16 is on (the replacements that give its bits only then)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
