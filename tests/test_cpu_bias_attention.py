"""geosam.models.cpu_bias_attention: TinyViT's window attention with a dense bias per head on AMX tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosam.models import cpu_bias_attention as cba
from geosam.models.device import cpu_flags

needs_kernel = pytest.mark.skipif(not cba.available(), reason="the kernel runs on CPUs with AMX only")


def test_in_use_where_the_cpu_has_amx_and_the_other_kernels_run() -> None:
    """On a CPU with AMX where geosam's AVX-512 attention kernel runs, this one runs too (else bf16 TinyViT silently
    loses it); never without AMX."""
    from geosam.models import cpu_attention

    amx = {"amx_bf16", "amx_tile"} <= set(cpu_flags())
    assert cba.available() == (amx and cpu_attention.amx_available())


def _inputs(seed: int, nw: int, n: int, nh: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn((nw, n, nh, 3, d), generator=gen) * 2).to(torch.bfloat16)
    return qkv, torch.randn((nh, n, n), generator=gen) * 3


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(20, 49, 4, 32), (3, 196, 5, 32), (2, 7, 2, 64), (4, 33, 3, 32), (1, 256, 2, 64)])
def test_matches_the_reference_and_torch(threads: int, shape: tuple[int, int, int, int]) -> None:
    """Windows of TinyViT's sizes (49, 196 tokens) and past whole tiles, key chunks and the largest window; heads of
    32 and 64: within bf16's rounding of a float64 reference, and closer to it than torch's bf16 attention is."""
    nw, n, nh, d = shape
    qkv, bias = _inputs(sum(shape), *shape)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cba.attention(qkv, bias, d**-0.5)
    finally:
        torch.set_num_threads(old)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == (nw, n, nh * d)
    want = cba.reference(qkv, bias, d**-0.5).reshape(nw, n, nh * d)
    err = float((got.double() - want).abs().max() / want.abs().max())
    q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(torch.bfloat16)[None], scale=d**-0.5)
    err_torch = float((sdpa.transpose(1, 2).reshape(nw, n, -1).double() - want).abs().max() / want.abs().max())
    assert err < cba.TOLERANCE and err < 1.5 * err_torch + 1e-3


def test_other_inputs_go_to_torch() -> None:
    qkv, bias = _inputs(0, 2, 9, 2, 32)
    assert cba.attention(qkv.float(), bias, 0.2) is None  # float32: torch's attention
    assert cba.attention(qkv, bias.to(torch.bfloat16), 0.2) is None
    assert cba.attention(qkv[..., :16].contiguous(), bias, 0.2) is None  # heads of 16
    assert cba.attention(qkv, bias[:, :5, :5].contiguous(), 0.2) is None
    big, bbias = _inputs(0, 1, 257, 1, 32)
    assert cba.attention(big, bbias, 0.2) is None  # windows up to 256 tokens
