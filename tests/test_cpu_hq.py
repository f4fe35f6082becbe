"""SAM-HQ's HQ branch norm and GELU in one C pass (geosam/models/cpu_hq.py): as close to float64's results as torch's
ops, None for what it does not take, and SAM-HQ's decoder through it with torch's masks to float rounding."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import geosam.models.cpu_hq as ch

needs_kernel = pytest.mark.skipif(not ch.available(), reason="the kernel runs on AVX-512 CPUs only")


def _norm(d: int, seed: int = 0) -> torch.nn.LayerNorm:
    g = torch.Generator().manual_seed(seed)
    ln = torch.nn.LayerNorm(d, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(d, generator=g))
        ln.bias.copy_(torch.randn(d, generator=g))
    return ln


@needs_kernel
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 64, 256])
def test_norm_gelu_is_as_close_to_float64_as_torch(dtype: torch.dtype, d: int, fast: bool) -> None:
    """The exact GELU, or (``fast``) cpu_gelu.h's polynomial one against the same polynomial in float64 and within
    its 6e-5 (of |GELU| above 1) of the exact GELU."""
    g = torch.Generator().manual_seed(d)
    x = (torch.randn((2, 33, 31, d), generator=g) * 3 + torch.randn((2, 33, 31, 1), generator=g)).to(dtype)
    ln = _norm(d)
    with torch.no_grad():
        got = ch.norm_gelu(x, ln, fast=fast)
        torch_ = F.gelu(ln(x.float())) if not fast else ch.norm_gelu_reference(x, ln.weight, ln.bias, 1e-6, fast=True)
        exact = ch.norm_gelu_reference(x.double(), ln.weight, ln.bias, 1e-6, fast=fast)
        exact_gelu = ch.norm_gelu_reference(x.double(), ln.weight, ln.bias, 1e-6)
    assert got is not None and got.dtype == torch.float32 and got.shape == x.shape
    err, torch_err = float((got - exact).abs().max()), float((torch_ - exact).abs().max())
    assert err <= 2 * torch_err + 2e-6 * float(exact.abs().max()), (err, torch_err)
    bound = 6e-5 * exact_gelu.abs().clamp(min=1.0) + 1e-6
    assert bool(((got - exact_gelu).abs() <= bound).all())
    if fast:  # not the exact GELU's numbers: the polynomial is in use
        assert float((got - exact_gelu).abs().max()) > 1e-6


def test_norm_gelu_leaves_other_inputs_to_torch() -> None:
    ln = _norm(64)
    x = torch.randn((4, 64))
    with torch.no_grad():
        assert ch.norm_gelu(x[:, :48], _norm(48)) is None  # not contiguous
        assert ch.norm_gelu(torch.randn((4, 24)), _norm(24)) is None  # 24 channels
        assert ch.norm_gelu(x.double(), ln) is None
        assert ch.norm_gelu(x, _norm(32)) is None  # the norm's shape is not the rows'
    assert ch.norm_gelu(x.requires_grad_(), ln) is None  # with autograd


def _decode(b: Any, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    from geosam.models import decode_points, encode, preprocess

    img = np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    emb = encode(b, preprocess(b, [img])[0])
    pts = torch.rand((n, 2), generator=torch.Generator().manual_seed(6)) * 1000
    return decode_points(b, emb, pts, multimask=True)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sam_hq_decodes_through_the_kernel(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, call_results: Any,
                                           dtype: torch.dtype) -> None:  # fmt: skip
    """A SAM-HQ whose HQ branch has 16 channels: each prompt's norm and GELU through the kernel, the masks and IoUs
    of torch's ops to float rounding, in float32 (the exact GELU) and under the bf16 dtype (the fast GELU on the
    bf16 convolution's outputs, against torch's ops for the same polynomial)."""
    from geosam.models import load_model
    from tests._tiny_families import build_tiny_sam_hq

    b = load_model(build_tiny_sam_hq(tmp_path, h=64), device="cpu", dtype="float32")
    b = dataclasses.replace(b, dtype=dtype)
    results = call_results(ch, "norm_gelu")
    fast_asked: list[bool] = []
    real = ch.norm_gelu
    monkeypatch.setattr(ch, "norm_gelu", lambda x, norm, fast=False: fast_asked.append(fast) or real(x, norm, fast))
    got, got_iou = _decode(b)
    assert results and all(r is not None for r in results)
    assert fast_asked and all(f == (dtype == torch.bfloat16) for f in fast_asked)
    monkeypatch.setattr(ch, "norm_gelu", lambda x, norm, fast=False: ch.norm_gelu_reference(x, norm.weight, norm.bias,
                                                                                            norm.eps, fast))  # fmt: skip
    want, want_iou = _decode(b)
    torch.testing.assert_close(got_iou, want_iou)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
