"""SAM 3's DETR encoder self-attention through geosam's attention kernel (geosam/models/sam3_attention.py): torch's
attention to bf16 rounding where the kernel takes the call, torch's own function everywhere else, ``detect``'s
route on the CPU in bf16, and the model's config set back when the last caller leaves."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import geosam.models.sam3_attention as sa
from geosam.models import patching
from geosam.models.cpu_attention import amx_available

needs_amx = pytest.mark.skipif(not amx_available(), reason="the attention kernel runs bf16 on AMX tiles only")


def _qkv(b: int, heads: int, n: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((b, heads, n, d), generator=g) * s).to(torch.bfloat16) for s in (1.5, 1.5, 1.0)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@needs_amx
@pytest.mark.parametrize("d", [32, 24])
def test_kernel_is_torchs_attention_to_bf16_rounding(d: int) -> None:
    """Heads of 32 numbers and of 24 (a multiple of 8: values padded inside the kernel)."""
    q, k, v = _qkv(2, 4, 1100, d)
    got = sa._kernel_attention(q, k, v, None, 0.2)
    assert got is not None and got.shape == (2, 1100, 4, d) and got.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.2).transpose(1, 2)
    torch_bf16 = F.scaled_dot_product_attention(q, k, v, scale=0.2).transpose(1, 2)
    assert _relative(got, want) < 1.5 * _relative(torch_bf16, want) + 1e-3, (_relative(got, want),
                                                                            _relative(torch_bf16, want))


def test_kernel_leaves_other_calls_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _qkv(1, 2, 1100, 32, seed=1)
    mask = torch.zeros((1, 1, 1100, 1100), dtype=torch.bool)
    assert sa._kernel_attention(q, k, v, mask, None) is None  # masked (the text cross-attention)
    assert sa._kernel_attention(q.float(), k.float(), v.float(), None, None) is None  # float32
    assert sa._kernel_attention(q[:, :, :500], k[:, :, :500], v[:, :, :500], None, None) is None  # a small map
    assert sa._kernel_attention(q[:, :, :50], k, v, None, None) is None  # queries other than the keys
    qs, ks, vs = _qkv(1, 2, 1100, 20)
    assert sa._kernel_attention(qs, ks, vs, None, None) is None  # heads of 20 numbers (not a multiple of 8)
    monkeypatch.setattr(sa, "_kernel_attention", lambda *a: None)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    got, _ = sa.geosam_attention(module, q, k, v, None, scaling=0.3)
    want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    assert torch.equal(got, want)


def test_off_without_amx_or_in_float32(monkeypatch: pytest.MonkeyPatch, tiny_sam3_dir: str) -> None:
    import geosam.models.cpu_attention as ca
    from geosam.models import load_model

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    assert not sa.use_fast_detr_attention(b)
    monkeypatch.setattr(ca, "amx_available", lambda: False)
    assert not sa.use_fast_detr_attention(dataclasses.replace(b, dtype=torch.bfloat16))
    with sa.detr_encoder_attention(dataclasses.replace(b, dtype=torch.bfloat16)):
        assert b.model.detr_encoder.config._attn_implementation == "sdpa"


def _bundle_with_32_number_heads(tiny_sam3_dir: str) -> Any:
    """The tiny SAM 3 with one DETR encoder head (32 numbers: the kernel's smallest), as a bf16 bundle."""
    from geosam.models import load_model

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    for layer in b.model.detr_encoder.layers:
        for attn in (layer.self_attn, layer.cross_attn):
            attn.num_attention_heads, attn.head_dim = 1, 32
            attn.scaling = 32**-0.5
    return dataclasses.replace(b, dtype=torch.bfloat16)


@needs_amx
def test_detect_runs_the_detr_self_attention_through_the_kernel(tiny_sam3_dir: str, monkeypatch: pytest.MonkeyPatch,
                                                                call_results: Any) -> None:  # fmt: skip
    """``detect`` in bf16 on the CPU: each DETR encoder layer's self-attention through the kernel (its text
    cross-attention through torch's), outputs as close to float32's as torch's bf16 attention gives, and the
    model's config as it was afterwards (it pickles and runs without geosam's name)."""
    from geosam.models.sam3 import detect, encode_text, vision_features

    monkeypatch.setattr(sa, "MIN_TOKENS", 256)  # the tiny model's 24 x 24 map
    b = _bundle_with_32_number_heads(tiny_sam3_dir)
    text = encode_text(b, ["building", "tree"])
    x = torch.randn((1, 3, 336, 336), generator=torch.Generator().manual_seed(5))
    vision = vision_features(b, x)
    results = call_results(sa, "_kernel_attention")
    got = detect(b, vision, text)
    layers = len(b.model.detr_encoder.layers)
    assert sum(r is not None for r in results) == layers and len(results) == 2 * layers
    assert b.model.detr_encoder.config._attn_implementation == "sdpa"
    monkeypatch.setattr(sa, "use_fast_detr_attention", lambda bundle: False)
    torch_bf16 = detect(b, vision, text)
    assert len(results) == 2 * layers  # not called
    want = detect(dataclasses.replace(b, dtype=torch.float32), vision, text)
    for name in ("pred_logits", "pred_masks"):
        g, t, w = (getattr(o, name).float() for o in (got, torch_bf16, want))
        assert _relative(g, w) < 1.5 * _relative(t, w) + 2e-3, (name, _relative(g, w), _relative(t, w))
    copy_ = pickle.loads(pickle.dumps(b.model))
    assert copy_.detr_encoder.config._attn_implementation == "sdpa"


def test_config_set_back_when_the_last_caller_leaves(tiny_sam3_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested callers share the switch (`geosam.models.patching.set_while`, whose own tests cover concurrent ones); the
    name is set back once, by the last, errors included."""
    from geosam.models import load_model

    b = dataclasses.replace(load_model(tiny_sam3_dir, device="cpu", dtype="float32"), dtype=torch.bfloat16)
    monkeypatch.setattr(sa, "use_fast_detr_attention", lambda bundle: True)
    config = b.model.detr_encoder.config
    with sa.detr_encoder_attention(b):
        with sa.detr_encoder_attention(b):
            assert config._attn_implementation == sa.ATTENTION_NAME
        assert config._attn_implementation == sa.ATTENTION_NAME
    assert config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="boom"), sa.detr_encoder_attention(b):
        raise RuntimeError("boom")
    assert config._attn_implementation == "sdpa" and not patching._USERS  # concurrent callers: tests/test_patching.py
