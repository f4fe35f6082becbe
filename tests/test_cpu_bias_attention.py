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


def _rowcol_inputs(seed: int, nb: int, nq: int, nh: int, d: int, hh: int, ww: int, zero_rows: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = ((torch.randn((nb, n, nh, d), generator=gen) * 2).to(torch.bfloat16) for n in (nq, hh * ww, hh * ww))
    rh, rw = ((torch.randn((nb, nh, nq - zero_rows, n), generator=gen) * 3).to(torch.bfloat16) for n in (hh, ww))
    return q, k, v, rh, rw


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 201, 8, 32, 24, 24, 1), (1, 40, 2, 64, 7, 33, 0), (3, 3, 1, 32, 2, 16, 3),
                                   (1, 17, 3, 96, 5, 5, 2)])  # fmt: skip
def test_rowcol_matches_the_reference_and_torch_on_the_matrix(threads: int, shape: tuple[int, ...]) -> None:
    """SAM 3's decoder shapes (201 queries, the first with no bias, heads of 32) and maps whose rows are not whole
    vectors, queries past whole tiles, every query unbiased, heads of 64 and 96: within bf16's rounding of a float64
    reference on the matrix the stock decoder builds (the terms' bf16 sum), and about as close to it as torch's bf16
    attention on that matrix."""
    nb, nq, nh, d, _, _, zero_rows = shape
    q, k, v, rh, rw = _rowcol_inputs(sum(shape), *shape)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cba.rowcol_attention(q, k, v, rh.float(), rw.float(), zero_rows, d**-0.5)
    finally:
        torch.set_num_threads(old)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == (nb, nq, nh * d)
    want = cba.rowcol_reference(q, k, v, rh.float(), rw.float(), zero_rows, d**-0.5).reshape(nb, nq, nh * d)
    err = float((got.double() - want).abs().max() / want.abs().max())
    matrix = (rh[..., :, None] + rw[..., None, :]).flatten(-2)  # bf16, as the decoder adds the terms
    matrix = F.pad(matrix, (0, 0, zero_rows, 0))
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=matrix, scale=d**-0.5)
    err_torch = float((sdpa.transpose(1, 2).reshape(nb, nq, -1).double() - want).abs().max() / want.abs().max())
    assert err < cba.TOLERANCE and err < 1.5 * err_torch + 1e-3


@needs_kernel
def test_rowcol_bias_is_the_terms_sum_rounded_or_not() -> None:
    """With ``round_bias`` the bias is the terms' sum rounded to bf16 (the matrix a bf16 add makes), without it their
    float32 sum: terms whose sum rounds far from itself tell the two apart, each against its own reference."""
    q, k, v, rh, rw = _rowcol_inputs(7, 1, 16, 2, 32, 4, 16, 0)
    q = torch.zeros_like(q)  # the scores are the bias alone
    rh = rh.float() * 64 + 0.37
    rw = rw.float() / 64
    for rounded in (True, False):
        got = cba.rowcol_attention(q, k, v, rh, rw, 0, 0.125, round_bias=rounded)
        assert got is not None
        errs = [float((got.double() - w).abs().max() / w.abs().max())
                for w in (cba.rowcol_reference(q, k, v, rh, rw, 0, 0.125, r).reshape(got.shape) for r in (rounded, not rounded))]  # fmt: skip
        assert errs[0] < cba.TOLERANCE / 2 < errs[1]


def test_rowcol_other_inputs_go_to_torch() -> None:
    q, k, v, rh, rw = _rowcol_inputs(0, 1, 5, 2, 32, 3, 4, 1)
    rh, rw = rh.float(), rw.float()
    assert cba.rowcol_attention(q.float(), k, v, rh, rw, 1, 0.2) is None  # float32 operands: torch's attention
    assert cba.rowcol_attention(q, k, v, rh.to(torch.bfloat16), rw, 1, 0.2) is None  # the terms in float32
    assert cba.rowcol_attention(q, k, v, rh, rw, 0, 0.2) is None  # terms for every query but the zero rows
    assert cba.rowcol_attention(q, k[:, :11].contiguous(), v[:, :11].contiguous(), rh, rw, 1, 0.2) is None  # keys != hh ww
    assert cba.rowcol_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, rh, rw, 1, 0.2) is None  # strided
    q16, k16, v16, rh16, rw16 = _rowcol_inputs(0, 1, 5, 2, 16, 3, 4, 1)
    assert cba.rowcol_attention(q16, k16, v16, rh16.float(), rw16.float(), 1, 0.2) is None  # heads of 16
