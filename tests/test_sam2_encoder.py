"""SAM 2's image encoder through oneDNN's fused operators (geosam/models/fast_hiera.py): the module's embeddings in
float32, as close to float32 as autocast in bf16, taken by ``encode`` on the CPU, its kept weights and position
embedding beside the model and made again when a parameter changes."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest
import torch

from geosam.models import encode, load_model, preprocess
from geosam.models.cpu_fused import ops_work

needs_bf16_ops = pytest.mark.skipif(not ops_work(torch.bfloat16), reason="oneDNN has no bf16 kernels on this CPU")


def _model(heads: tuple[int, ...] = (1, 1, 1, 1), windows: tuple[int, ...] = (8, 4, 14, 7), seed: int = 0,
           dims: tuple[int, ...] = (8, 16, 32, 64)) -> Any:  # fmt: skip
    """A tiny random SAM 2 (1024 px input, ``dims`` channels by stage: 8 to 64; block 3 global, the first block of each
    later stage pools its queries in its windows): transformers' windows need padding (14 and 7 on 64 and 32 px
    maps)."""
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    backbone = Sam2HieraDetConfig(hidden_size=dims[0], blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=list(dims),
                                  num_attention_heads_per_stage=list(heads), global_attention_blocks=[3],
                                  window_size_per_stage=list(windows))  # fmt: skip
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=list(dims[::-1]), fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                                                  iou_head_hidden_dim=32))  # fmt: skip
    torch.manual_seed(seed)
    model = Sam2Model(config).eval()
    with torch.no_grad():  # the position embeddings and the no-memory embedding start at zero: give them values
        for p in (model.vision_encoder.backbone.pos_embed, model.vision_encoder.backbone.pos_embed_window,
                  model.no_memory_embedding):  # fmt: skip
            p.normal_(0, 0.5)
        for m in model.vision_encoder.backbone.modules():  # layer norms that differ (as initialised: ones and zeros)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(seed))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _assert_bf16_as_close_as_autocast(model: Any, x: torch.Tensor) -> None:
    """geosam's bf16 levels each as close to the float32 module as autocast's bf16 is (1.5x margin)."""
    import geosam.models.fast_hiera as fh

    with torch.inference_mode():
        want = model.get_image_embeddings(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.get_image_embeddings(x)
    got = fh.fast_sam2_embeddings(model, x, torch.bfloat16)
    for g, a, w in zip(got, auto, want, strict=True):
        assert g.dtype == torch.float32
        assert _relative(g, w) < 1.5 * _relative(a, w) + 1e-3, (_relative(g, w), _relative(a, w))


@pytest.mark.parametrize(("heads", "windows"), [((1, 1, 1, 1), (8, 4, 14, 7)), ((1, 2, 2, 4), (16, 8, 6, 5))])
def test_fast_hiera_gives_the_modules_embeddings(heads: tuple[int, ...], windows: tuple[int, ...]) -> None:
    """Float32: every level ``get_image_embeddings`` returns, to float rounding (several heads; windows padded on
    the last stages, and where queries are pooled)."""
    from geosam.models.fast_hiera import fast_hiera_supported, fast_sam2_embeddings

    model = _model(heads, windows)
    assert fast_hiera_supported(model, torch.float32)
    x = _image()
    with torch.inference_mode():
        want = model.get_image_embeddings(x)
    got = fast_sam2_embeddings(model, x, torch.float32)
    assert [g.shape for g in got] == [w.shape for w in want] == [(1, 4, 256, 256), (1, 8, 128, 128), (1, 32, 64, 64)]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.is_contiguous()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@needs_bf16_ops
@pytest.mark.parametrize("kernel", [True, False], ids=["attention_kernel", "torch_attention"])
def test_fast_hiera_bf16_is_as_close_to_float32_as_autocast(kernel: bool, monkeypatch: pytest.MonkeyPatch,
                                                            call_results: Any) -> None:  # fmt: skip
    """bf16: every level as close to the float32 module as autocast's bf16 is (1.5x margin), with the attention in
    geosam's kernel where it runs here (heads of 16 and 32 numbers: its bf16 tokens; the blocks that pool their
    queries too), or in torch's fused attention."""
    import geosam.models.cpu_attention as ca
    import geosam.models.fast_hiera as fh

    if not kernel:
        monkeypatch.setattr(fh, "_kernel_attention", lambda *a: None)
    ran = call_results(ca, "attention")
    _assert_bf16_as_close_as_autocast(_model((1, 1, 1, 2), windows=(8, 4, 14, 7)), _image(2))  # heads of 8, 16, 32, 32
    # blocks 0 and 3 pool no queries (1, 2 and 4 do, in windows of 4, 14 and 7: padded maps); block 0's heads of 8
    # numbers are not the kernel's (not tried: no projection made twice), the others' of 16 and 32 are (AMX)
    assert ran == ([True] * 4 if kernel and ca.amx_available() else [])


@needs_bf16_ops
def test_fast_hiera_bf16_runs_heads_of_a_multiple_of_8_through_the_kernel(call_results: Any) -> None:
    """Heads of 24 numbers (8 more than 16, as Hiera-B+'s 56 and Hiera-L's 72): every block runs geosam's kernel on
    AMX tiles (bf16 tokens, no tables; those that pool their queries too), each level as close to float32 as
    autocast is."""
    import geosam.models.cpu_attention as ca

    ran = call_results(ca, "attention")
    _assert_bf16_as_close_as_autocast(_model((1, 2, 4, 8), windows=(8, 4, 14, 7), dims=(24, 48, 96, 192), seed=3),
                                      _image(3))  # fmt: skip
    assert ran == ([True] * 5 if ca.amx_available() else [])  # blocks 0 (windows of 8), 1, 2, 4 (pooled) and 3 (global)


@needs_bf16_ops
def test_bf16_residual_adds_and_norms_in_one_pass_give_the_separate_passes_bits(monkeypatch: pytest.MonkeyPatch,
                                                                              call_results: Any) -> None:  # fmt: skip
    """In bf16 each block's residual adds run with the layer norm after them as one pass over the float32 stream (the
    MLP's with the next block's first norm): every level bit for bit as torch's add, norm and rounding one after the
    other (the fused passes switched off); two a block but the last's one, run where the widths suit the kernel."""
    from geosam.models import cpu_convert
    from geosam.models.fast_hiera import fast_sam2_embeddings

    model = _model((1, 2, 2, 4), (16, 8, 6, 5), seed=5)
    x = _image(6)
    fused = call_results(cpu_convert, "add_layer_norm_bf16_")
    got = fast_sam2_embeddings(model, x, torch.bfloat16)
    blocks = len(model.vision_encoder.backbone.blocks)
    assert len(fused) == 2 * blocks - 1
    assert any(r is not None for r in fused) == cpu_convert.available()
    for name in ("_add_layer_norm_agrees", "_layer_norm_agrees"):  # torch's norm, then the rounding
        monkeypatch.setattr(cpu_convert, name, lambda: False)
    want = fast_sam2_embeddings(model, x, torch.bfloat16)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_encode_takes_the_fused_sam2_encoder_on_the_cpu(
    tiny_family_dirs: dict[str, str], count_calls: Any
) -> None:
    """``encode`` runs it for SAM 2 on the CPU (the same embeddings as the module's), ``fast_encoder=False`` the
    module."""
    import geosam.models.fast_hiera as fh

    b = load_model(tiny_family_dirs["sam2"], device="cpu", dtype="float32")
    pv = preprocess(b, [np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8)])[0]
    calls = count_calls(fh, "fast_sam2_embeddings")
    fused = encode(b, pv)
    assert len(calls) == 1
    stock = encode(dataclasses.replace(b, fast_encoder=False), pv)
    assert len(calls) == 1
    for g, w in zip((*fused.extras, fused.main), (*stock.extras, stock.main), strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)


def test_fast_hiera_keeps_nothing_in_the_model_and_follows_changed_weights() -> None:
    """Converted weights and the position embedding live beside the model (a pickled model carries none) and are made
    again when a parameter changes in place."""
    import geosam.models.cpu_fused as cf
    import geosam.models.fast_hiera as fh

    model = _model()
    x = _image(3)
    first = fh.fast_sam2_embeddings(model, x, torch.float32)
    assert model.vision_encoder in cf._WEIGHTS and model.vision_encoder.backbone in fh._POS
    copy_ = pickle.loads(pickle.dumps(model))
    assert copy_.vision_encoder not in cf._WEIGHTS and copy_.vision_encoder.backbone not in fh._POS
    backbone = model.vision_encoder.backbone
    with torch.no_grad():
        backbone.pos_embed.mul_(2.0)
        backbone.blocks[0].mlp.proj_in.weight.mul_(0.5)
    again = fh.fast_sam2_embeddings(model, x, torch.float32)
    with torch.inference_mode():
        want = model.get_image_embeddings(x)
    assert not torch.allclose(again[0], first[0])
    for g, w in zip(again, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
