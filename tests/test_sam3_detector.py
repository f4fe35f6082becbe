"""geosam.models.sam3_detector: SAM 3's detector with fewer passes, the same numbers as transformers' forward."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
import torch

from geosam.models import cpu_convert, patching
from geosam.models import sam3_attention as sa
from geosam.models import sam3_detector as sd


def _bundle(tiny_sam3_dir: str, dtype: torch.dtype) -> Any:
    from geosam.models import load_model

    return dataclasses.replace(load_model(tiny_sam3_dir, device="cpu", dtype="float32"), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rpb_matrix_is_the_stock_matrix_bit_for_bit(tiny_sam3_dir: str, dtype: torch.dtype) -> None:
    decoder = _bundle(tiny_sam3_dir, torch.float32).model.detr_decoder
    boxes = torch.rand((2, 12, 4), generator=torch.Generator().manual_seed(3))
    shape = (torch.tensor(24), torch.tensor(20))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        want = decoder._get_rpb_matrix(boxes, shape)
        got = sd.rpb_matrix(decoder, boxes, shape)
    assert got.shape == want.shape == (2, decoder.config.num_attention_heads, 12, 24 * 20)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_detect_gives_the_stock_forwards_outputs_bit_for_bit(tiny_sam3_dir: str, dtype: torch.dtype,
                                                             monkeypatch: pytest.MonkeyPatch, count_calls: Any,
                                                             call_results: Any) -> None:  # fmt: skip
    """``detect`` runs the replacements (the box bias and the pixel embedding; in bf16 also the fused MLPs and the
    encoder layers) and gives the outputs of the model's own forwards, bit for bit; the modules are as
    loaded afterwards (no replacement left on them: they pickle as transformers' own)."""
    from geosam.models.sam3 import detect, encode_text, vision_features

    b = _bundle(tiny_sam3_dir, dtype)
    text = encode_text(b, ["building", "tree"])
    vision = vision_features(b, torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5)))
    calls = {name: count_calls(sd, name) for name in ("rpb_matrix", "mlp_forward", "encoder_layer_forward", "embed_pixels")}
    fused_levels = call_results(sd, "upsample2_add_bf16")
    got = detect(b, vision, text)
    model = b.model
    assert len(calls["rpb_matrix"]) == len(model.detr_decoder.layers)
    low = dtype == torch.bfloat16
    mlps = sd._relu_mlps(model)
    assert len(mlps) == len(model.detr_encoder.layers) + len(model.detr_decoder.layers)
    assert len(calls["mlp_forward"]) == (len(mlps) if low else 0)
    assert len(calls["encoder_layer_forward"]) == (len(model.detr_encoder.layers) if low else 0)
    assert len(calls["embed_pixels"]) == 1
    if low:  # every FPN level's upsampling, skip sum and rounding in one pass where the kernel runs
        assert fused_levels and all((r is not None) == cpu_convert.available() for r in fused_levels)
    else:
        assert not fused_levels
    for m in [model.detr_decoder, *mlps, *model.detr_encoder.layers, model.mask_decoder]:
        assert not {"forward", "_get_rpb_matrix", "_embed_pixels"} & set(vars(m))
    assert not patching._USERS
    monkeypatch.setattr(sd, "faster_detector", sa.detr_encoder_attention)
    want = detect(b, vision, text)
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits", "semantic_seg"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert pickle.loads(pickle.dumps(model)).detr_decoder._get_rpb_matrix.__func__ is type(model.detr_decoder)._get_rpb_matrix
