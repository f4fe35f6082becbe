"""geosam.models.sam3_detector and sam3_decoder: SAM 3's detector with fewer passes, the same numbers as transformers' forward."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
import torch

from geosam.models import cpu_bias_attention as cba
from geosam.models import cpu_convert, patching
from geosam.models import sam3_attention as sa
from geosam.models import sam3_decoder as sdec
from geosam.models import sam3_detector as sd


def _bundle(tiny_sam3_dir: str, dtype: torch.dtype, layers: int = 1, decoder_heads: int = 0) -> Any:
    """The tiny SAM 3 in ``dtype``; ``layers`` > 1: its DETR encoder and decoder remade with that many layers (random
    weights), so that what the detector makes once for every layer is used by several; ``decoder_heads``: the DETR
    decoder's attentions with that many heads (1: heads of 32 numbers, as SAM 3's)."""
    from geosam.models import load_model

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    if layers > 1 or decoder_heads:
        from transformers import Sam3Model

        config = b.model.config
        config.detr_encoder_config.num_layers = config.detr_decoder_config.num_layers = layers
        if decoder_heads:
            config.detr_decoder_config.num_attention_heads = decoder_heads
        torch.manual_seed(11)
        b = dataclasses.replace(b, model=Sam3Model(config).eval())
    with torch.no_grad():  # scores that move the vision cross-attention's outputs (random weights barely do)
        for layer in b.model.detr_decoder.layers:
            layer.vision_cross_attn.q_proj.weight.mul_(8)
            layer.vision_cross_attn.k_proj.weight.mul_(8)
    return dataclasses.replace(b, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rpb_matrix_is_the_stock_matrix_bit_for_bit(tiny_sam3_dir: str, dtype: torch.dtype) -> None:
    decoder = _bundle(tiny_sam3_dir, torch.float32).model.detr_decoder
    boxes = torch.rand((2, 12, 4), generator=torch.Generator().manual_seed(3))
    shape = (torch.tensor(24), torch.tensor(20))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        want = decoder._get_rpb_matrix(boxes, shape)
        got = sdec.rpb_matrix(decoder, boxes, shape)
    assert got.shape == want.shape == (2, decoder.config.num_attention_heads, 12, 24 * 20)
    assert got.dtype == want.dtype and torch.equal(got, want)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        padded = sdec.rpb_matrix(decoder, boxes, shape, zero_rows=1)  # as the decoder pads it for its presence token
    assert padded.is_contiguous() and torch.equal(padded, torch.nn.functional.pad(want, (0, 0, 1, 0)))


@pytest.mark.parametrize(("dtype", "layers"), [(torch.bfloat16, 1), (torch.float32, 1), (torch.bfloat16, 2),
                                                (torch.float32, 2)])  # fmt: skip
def test_detect_gives_the_stock_forwards_outputs_bit_for_bit(tiny_sam3_dir: str, dtype: torch.dtype, layers: int,
                                                             monkeypatch: pytest.MonkeyPatch, count_calls: Any,
                                                             call_results: Any) -> None:  # fmt: skip
    """``detect`` runs the replacements (the decoder with the box bias padded in place and its image keys made once,
    the pixel embedding; in bf16 also the fused MLPs, the encoder layers with their adds and norms in one pass and
    the first one's self-attention once for every phrase, the attentions' projections on kept weights) and gives the
    outputs of the model's own forwards, bit for bit, with one and with two layers in the DETR encoder and decoder;
    the modules are as loaded afterwards (no replacement left on them: they pickle as transformers' own). The vision
    cross-attention on the bias's terms (AMX), which is not the same bits, is off here: see the next test."""
    from geosam.models.sam3 import detect, encode_text, vision_features

    monkeypatch.setattr(sd, "use_rowcol_attention", lambda bundle: False)
    b = _bundle(tiny_sam3_dir, dtype, layers)
    text = encode_text(b, ["building", "tree"])
    vision = vision_features(b, torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5)))
    names = ("mlp_forward", "encoder_layer_forward", "embed_pixels", "decoder_forward", "attention_forward")
    calls = {name: count_calls(sd, name) for name in names}
    calls["rpb_matrix"] = count_calls(sdec, "rpb_matrix")
    calls["prepare_features"] = count_calls(sd, "prepare_features")
    attended = call_results(sd, "attention_forward")
    fused_levels = call_results(sd, "upsample2_add_bf16")
    fused_norms = call_results(cpu_convert, "add_layer_norm_bf16_")
    got = detect(b, vision, text)
    model = b.model
    assert len(model.detr_decoder.layers) == len(model.detr_encoder.layers) == layers
    assert len(calls["rpb_matrix"]) == layers and len(calls["decoder_forward"]) == 1
    low = dtype == torch.bfloat16
    mlps = sd._relu_mlps(model)
    assert len(mlps) == 2 * layers
    attentions = sd._attentions(model)
    assert len(attentions) == 5 * layers + 1  # the encoder layers' two, the decoder layers' three, the mask decoder's
    assert len(calls["mlp_forward"]) == (len(mlps) if low else 0)
    assert len(calls["attention_forward"]) == (len(attentions) if low else 0)
    assert len(calls["encoder_layer_forward"]) == (layers if low else 0)
    assert len(calls["prepare_features"]) == (1 if low else 0)
    if low:  # the first encoder layer's self-attention made once for both phrases (one image's tokens), then per phrase
        assert [out.shape[0] for out, _ in attended[:2]] == [1, 2]
    assert len(calls["embed_pixels"]) == 1
    if low:  # every FPN level's upsampling, skip sum and rounding in one pass, each encoder layer's two norms with
        # the adds before them, where the kernels run
        assert fused_levels and all((r is not None) == cpu_convert.available() for r in fused_levels)
        assert len(fused_norms) == 2 * layers
        assert all((r is not None) == cpu_convert.available() for r in fused_norms)
    else:
        assert not fused_levels and not fused_norms
    for m in [model.detr_decoder, *mlps, *attentions, *model.detr_encoder.layers, model.mask_decoder, model.detr_encoder]:
        assert not {"forward", "_get_rpb_matrix", "_embed_pixels", "_prepare_multilevel_features"} & set(vars(m))
    assert not patching._USERS
    monkeypatch.setattr(sd, "faster_detector", sa.detr_encoder_attention)
    want = detect(b, vision, text)
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits", "semantic_seg"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert pickle.loads(pickle.dumps(model)).detr_decoder._get_rpb_matrix.__func__ is type(model.detr_decoder)._get_rpb_matrix


@pytest.mark.skipif(not cba.available(), reason="the row and column kernel runs on CPUs with AMX only")
def test_bf16_vision_cross_attention_runs_on_the_bias_terms(tiny_sam3_dir: str, monkeypatch: pytest.MonkeyPatch,
                                                             count_calls: Any, call_results: Any) -> None:  # fmt: skip
    """In bf16 on a CPU with AMX each decoder layer's vision cross-attention takes the box bias as its row and column
    terms (`rowcol_attention`), the (B, heads, queries, H W) matrix never made (`rpb_matrix` not called); the outputs
    are as close to float32's as the stock forwards' bf16 outputs are."""
    from geosam.models.sam3 import detect, encode_text, vision_features

    b = _bundle(tiny_sam3_dir, torch.bfloat16, layers=2, decoder_heads=1)
    with torch.no_grad():  # outputs and a box bias that count (the random ones are ~1e-3 of the stream)
        for layer in b.model.detr_decoder.layers:
            layer.vision_cross_attn.v_proj.weight.mul_(30)
            layer.vision_cross_attn.o_proj.weight.mul_(30)
        for mlp in (b.model.detr_decoder.box_rpb_embed_x, b.model.detr_decoder.box_rpb_embed_y):
            (mlp.layer3 if mlp.layer3 is not None else mlp.layer2).weight.mul_(4000)
    assert sd.use_rowcol_attention(b) and not sd.use_rowcol_attention(dataclasses.replace(b, dtype=torch.float32))
    text = encode_text(b, ["building", "tree"])
    vision = vision_features(b, torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5)))
    matrices = count_calls(sdec, "rpb_matrix")
    kernel = call_results(cba, "rowcol_attention")
    got = detect(b, vision, text)
    assert len(kernel) == 2 and all(r is not None for r in kernel) and not matrices
    assert kernel[0].shape[:2] == (2, 13)  # two phrases, the presence token and the tiny decoder's 12 queries
    monkeypatch.setattr(sd, "faster_detector", sa.detr_encoder_attention)
    stock = detect(b, vision, text)
    b32 = dataclasses.replace(b, dtype=torch.float32)
    exact = detect(b32, vision_features(b32, torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5))),
                   encode_text(b32, ["building", "tree"]))  # fmt: skip
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        ref = getattr(exact, name).double()
        err, err_stock = (float((getattr(o, name).double() - ref).abs().max() / ref.abs().max()) for o in (got, stock))
        assert err <= 2 * err_stock + 1e-4, name


@pytest.mark.skipif(not cba.available(), reason="the row and column kernel runs on CPUs with AMX only")
def test_bf16_heads_the_kernel_cannot_take_keep_the_stock_matrix(tiny_sam3_dir: str, count_calls: Any,
                                                                   call_results: Any) -> None:  # fmt: skip
    """Heads of 16 numbers (the tiny decoder's): the layer takes the stock matrix without calling the kernel (whose
    operands would be projected for nothing)."""
    from geosam.models.sam3 import detect, encode_text, vision_features

    b = _bundle(tiny_sam3_dir, torch.bfloat16)
    assert b.model.detr_decoder.layers[0].vision_cross_attn.head_dim == 16 and sd.use_rowcol_attention(b)
    text = encode_text(b, ["tree"])
    vision = vision_features(b, torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5)))
    matrices = count_calls(sdec, "rpb_matrix")
    kernel = call_results(cba, "rowcol_attention")
    detect(b, vision, text)
    assert len(matrices) == 1 and not kernel
