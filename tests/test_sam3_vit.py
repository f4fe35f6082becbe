"""SAM 3's ViT through oneDNN's fused operators (geosam/models/fast_sam3_vit.py): the module's vision features in
float32, as close to float32 as autocast in bf16, taken by ``vision_features`` on the CPU, kept tables and weights
beside the model and made again when a parameter changes (in place, through ``.data`` or replaced)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from geosam.models.cpu_fused import ops_work

needs_bf16_ops = pytest.mark.skipif(not ops_work(torch.bfloat16), reason="oneDNN has no bf16 kernels on this CPU")


def _model(seed: int = 0, head_dim: int = 16) -> Any:
    """A tiny random SAM 3 whose windows need padding (10 on a 24 x 24 grid) and whose position embeddings are tiled
    (pretrained on 12 x 12 patches); two heads of ``head_dim`` numbers (32: the attention kernel's smallest); its
    ViT's layer norms random (a norm taken for another changes the features)."""
    from transformers import Sam3Model

    from tests._tiny_families import tiny_sam3_config

    config: Any = tiny_sam3_config(336)
    vit = config.vision_config.backbone_config
    vit.window_size, vit.pretrain_image_size, vit.num_hidden_layers, vit.global_attn_indexes = 10, 168, 3, [1]
    vit.hidden_size, vit.intermediate_size = 2 * head_dim, 4 * head_dim
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    with torch.no_grad():  # layer norms that differ from each other (as initialised: all ones and zeros)
        for m in model.vision_encoder.backbone.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(seed))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _outputs(vision: Any) -> list[torch.Tensor]:
    return [vision.last_hidden_state, *vision.fpn_hidden_states, *vision.fpn_position_encoding]


def test_fast_sam3_vit_gives_the_modules_features() -> None:
    from geosam.models.fast_sam3_vit import fast_sam3_vit_supported, fast_vision_features

    model = _model()
    assert fast_sam3_vit_supported(model, torch.float32)
    x = _image()
    with torch.inference_mode():
        want = model.get_vision_features(pixel_values=x)
    got = fast_vision_features(model, x, torch.float32)
    for g, w in zip(_outputs(got), _outputs(want), strict=True):
        assert g.shape == w.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@needs_bf16_ops
def test_fast_sam3_vit_bf16_is_as_close_to_float32_as_autocast() -> None:
    from geosam.models.fast_sam3_vit import fast_vision_features

    model = _model(1)
    x = _image(2)
    with torch.inference_mode():
        want = model.get_vision_features(pixel_values=x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.get_vision_features(pixel_values=x)
    got = fast_vision_features(model, x, torch.bfloat16)
    for g, a, w in zip(_outputs(got)[:4], _outputs(auto)[:4], _outputs(want)[:4], strict=True):
        assert _relative(g, w) < 1.5 * _relative(a, w) + 1e-3, (_relative(g, w), _relative(a, w))


@needs_bf16_ops
def test_bf16_residual_adds_and_norms_in_one_pass_give_the_separate_passes_bits(monkeypatch: pytest.MonkeyPatch,
                                                                              call_results: Any) -> None:  # fmt: skip
    """In bf16 each layer's residual adds run with the layer norm after them as one pass over the float32 stream
    (the MLP's with the next layer's first norm): the same features, bit for bit, as torch's add, norm and rounding
    one after the other (the fused passes switched off); two fused passes a layer but the last's one where the
    kernel runs."""
    from geosam.models import cpu_convert
    from geosam.models import fast_sam3_vit as fv

    model = _model(3, head_dim=32)
    x = _image(4)
    fused = call_results(cpu_convert, "add_layer_norm_bf16_")
    got = fv.fast_vision_features(model, x, torch.bfloat16)
    layers = len(model.vision_encoder.backbone.layers)
    assert len(fused) == 2 * layers - 1
    assert all((r is not None) == cpu_convert.available() for r in fused)
    for name in ("_add_layer_norm_agrees", "_layer_norm_agrees"):  # torch's norm, then the rounding
        monkeypatch.setattr(cpu_convert, name, lambda: False)
    want = fv.fast_vision_features(model, x, torch.bfloat16)
    for g, w in zip(_outputs(got), _outputs(want), strict=True):
        assert torch.equal(g, w)


@needs_bf16_ops
def test_bf16_attention_through_the_kernel_is_as_close_to_float32_as_autocast(call_results: Any) -> None:
    """Heads of 32 numbers: in bf16 the windows' and the global layer's attention through geosam's kernel on AMX
    tiles where it runs (queries and keys rotated in place), as close to float32 as autocast either way; in float32
    through its AVX-512 products."""
    import geosam.models.fast_sam3_vit as fs
    from geosam.models.cpu_attention import amx_available

    model = _model(3, head_dim=32)
    x = _image(6)
    with torch.inference_mode():
        want = model.get_vision_features(pixel_values=x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.get_vision_features(pixel_values=x)
    results = call_results(fs, "_kernel_attention")
    got = fs.fast_vision_features(model, x, torch.bfloat16)
    assert len(results) == 3 and all((r is not None) == amx_available() for r in results)
    for g, a, w in zip(_outputs(got)[:4], _outputs(auto)[:4], _outputs(want)[:4], strict=True):
        assert _relative(g, w) < 1.5 * _relative(a, w) + 1e-3, (_relative(g, w), _relative(a, w))
    from geosam.models.cpu_attention import available

    fs.fast_vision_features(model, x, torch.float32)  # float32: the kernel on AVX-512 CPUs (the module's features:
    assert len(results) == 6 and all((r is not None) == available() for r in results[3:])  # the first test's check)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_attention_rotates_and_attends_window_by_window(dtype: torch.dtype) -> None:
    """`_kernel_attention` on a projection whose scores are far from uniform: torch's attention of the rotated
    queries and keys in each window (the rotation matters here) to float rounding in float32, to bf16 rounding in
    bf16; qkv's values left as they were."""
    from geosam.models.cpu_attention import amx_available, available
    from geosam.models.fast_sam3_vit import _kernel_attention, _rope

    if not (amx_available() if dtype == torch.bfloat16 else available()):
        pytest.skip("the attention kernel runs float32 on AVX-512, bf16 on AMX tiles")
    g = torch.Generator().manual_seed(4)
    nwin, n, heads, d = 3, 100, 2, 32
    qkv = (torch.randn((nwin * n, 3 * heads * d), generator=g) * 3).to(dtype)
    ang = torch.rand((n, d // 2), generator=g) * 20
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    q, k, v = (qkv.clone().view(nwin, n, 3, heads, d)[:, :, i].transpose(1, 2).float() for i in range(3))
    want = F.scaled_dot_product_attention(_rope(q, cos, sin), _rope(k, cos, sin), v, scale=0.3)
    want = want.transpose(1, 2).reshape(nwin * n, heads * d)
    unrotated = F.scaled_dot_product_attention(q, k, v, scale=0.3).transpose(1, 2).reshape(nwin * n, heads * d)
    values = qkv[:, 2 * heads * d:].clone()
    got = _kernel_attention(qkv, nwin, n, heads, 0.3, cos, sin)
    assert got is not None and got.dtype == dtype
    assert _relative(got, want) < (1e-2 if dtype == torch.bfloat16 else 1e-5) < _relative(unrotated, want)
    assert torch.equal(qkv[:, 2 * heads * d:], values)


@pytest.mark.parametrize("n", [100, 98])
def test_bf16_windows_in_one_call_are_the_window_by_window_bits(n: int) -> None:
    """In bf16 the windows run as one map of the windows stacked (the kernel's windowed tasks): the bits of each
    window attended alone (a whole map of n tokens); windows of n tokens that are not a square grid (98) run window by
    window."""
    from geosam.models.cpu_attention import amx_available
    from geosam.models.fast_sam3_vit import _kernel_attention

    if not amx_available():
        pytest.skip("the attention kernel runs bf16 on AMX tiles only")
    g = torch.Generator().manual_seed(5)
    nwin, heads, d = 4, 2, 32
    qkv = (torch.randn((nwin * n, 3 * heads * d), generator=g) * 3).bfloat16()
    ang = torch.rand((n, d // 2), generator=g) * 20
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    alone = [_kernel_attention(qkv[w * n:(w + 1) * n].clone(), 1, n, heads, 0.3, cos, sin) for w in range(nwin)]
    got = _kernel_attention(qkv.clone(), nwin, n, heads, 0.3, cos, sin)
    assert got is not None and all(a is not None for a in alone)
    assert torch.equal(got, torch.cat(alone))  # type: ignore[arg-type]


def test_vision_features_take_the_fused_vit_on_the_cpu(tiny_sam3_dir: str, count_calls: Any) -> None:
    """``vision_features`` (text and exemplar modes) runs it for SAM 3 on the CPU, ``fast_encoder=False`` the
    module: the same features."""
    import geosam.models.fast_sam3_vit as fs
    from geosam.models import load_model
    from geosam.models.sam3 import vision_features

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    calls = count_calls(fs, "fast_vision_features")
    x = _image(3)
    fused = vision_features(b, x)
    assert len(calls) == 1
    stock = vision_features(dataclasses.replace(b, fast_encoder=False), x)
    assert len(calls) == 1
    for g, w in zip(_outputs(fused), _outputs(stock), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def _follows_the_module(model: Any, x: torch.Tensor, before: Any) -> Any:
    """The fused features after a weight change: the module's, and not those from ``before`` the change."""
    import geosam.models.fast_sam3_vit as fs

    got = fs.fast_vision_features(model, x, torch.float32)
    with torch.inference_mode():
        want = model.get_vision_features(pixel_values=x)
    assert not torch.allclose(got.last_hidden_state, before.last_hidden_state)
    for g, w in zip(_outputs(got), _outputs(want), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    return got


def test_fast_sam3_vit_keeps_nothing_in_the_model_and_follows_changed_weights() -> None:
    import geosam.models.cpu_fused as cf
    import geosam.models.fast_sam3_vit as fs

    model = _model(2)
    x = _image(4)
    first = fs.fast_vision_features(model, x, torch.float32)
    vit = model.vision_encoder.backbone
    assert vit in cf._WEIGHTS and vit in fs._KEPT
    copy_ = pickle.loads(pickle.dumps(model))
    assert copy_.vision_encoder.backbone not in cf._WEIGHTS and copy_.vision_encoder.backbone not in fs._KEPT
    with torch.no_grad():
        vit.layers[0].attention.k_proj.weight.mul_(1.5)
        vit.embeddings.position_embeddings.mul_(2.0)
    again = _follows_the_module(model, x, first)
    # through .data (the same parameter object and version) and by new parameters (load_state_dict(assign=True))
    q = vit.layers[0].attention.q_proj
    q.weight.data = q.weight.detach() * 0.5
    fc1 = vit.layers[1].mlp.fc1
    fc1.load_state_dict({"weight": fc1.weight.detach() * 1.5, "bias": fc1.bias.detach()}, assign=True)
    _follows_the_module(model, x, again)
