"""geosam.models.cpu_heads: the decoder's per-head products and scores in C, torch's ops to float rounding."""

from __future__ import annotations

import pytest
import torch

from geosam.models import cpu_heads
from geosam.models.device import cpu_flags
from tests.test_cpu_decoder import needs_kernel


def test_kernels_in_use_where_the_decoder_kernels_are() -> None:
    """The same CPUs and builds as `geosam.models.cpu_decoder`'s kernels (else the decoder silently loses them)."""
    from geosam.models import cpu_decoder

    assert cpu_heads.available() == cpu_decoder.available()


@needs_kernel
@pytest.mark.parametrize(("n", "nh", "nt", "dk", "p"), [(8, 8, 7, 16, 4096), (3, 2, 4, 16, 40), (1, 3, 5, 9, 24)])
@pytest.mark.parametrize("threads", [1, 2])
def test_head_products_match_torch(n: int, nh: int, nt: int, dk: int, p: int, threads: int) -> None:
    """Every prompt's token rows against one image side per head: written, or added to what is there; rows strided
    as the decoder has them, positions ending mid-tile (40, 24)."""
    gen = torch.Generator().manual_seed(n * p + nt)
    a = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    x = torch.randn((nh, dk, p), generator=gen)
    base = torch.randn((n, nh, nt, p), generator=gen)
    want = torch.stack([torch.bmm(a[i], x) for i in range(n)])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = torch.full_like(base, float("nan"))
        assert cpu_heads.headdot(a, x, got)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        acc = base.clone()
        assert cpu_heads.headdot(a, x, acc, accumulate=True)
        torch.testing.assert_close(acc, base + want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_head_products_left_to_torch_where_they_do_not_fit() -> None:
    a, x = torch.randn((2, 3, 4, 16)), torch.randn((3, 16, 20))
    out = torch.zeros((2, 3, 4, 20))
    assert not cpu_heads.headdot(a, x, out)  # 20 positions: not in 8-wide vectors
    assert not cpu_heads.headdot(a.double(), x.double(), out.double())
    assert not cpu_heads.headdot(a, x[:, :8], out)  # inner sizes differ
    assert bool((out == 0).all())


@needs_kernel
@pytest.mark.parametrize(("n", "nh", "nt", "dk", "r", "p"), [(8, 8, 7, 16, 56, 4096), (2, 2, 5, 16, 14, 48), (1, 3, 3, 5, 9, 16)])
def test_factored_scores_match_torch(n: int, nh: int, nt: int, dk: int, r: int, p: int) -> None:
    """The factored second layer's scores in one pass against torch's five ops (SAM's sizes first)."""
    gen = torch.Generator().manual_seed(r * p)
    f = torch.randn((n, nh * nt, r), generator=gen)
    probs0 = torch.softmax(torch.randn((n, r, p), generator=gen), dim=1)
    rows = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    parts = torch.randn((nh, dk, p), generator=gen), torch.randn((nh, dk, p), generator=gen)
    fsum, mean0, rstd0 = torch.randn((n, nh, nt), generator=gen), torch.randn((n, p), generator=gen), torch.rand((n, p), generator=gen) + 0.5
    want = cpu_heads.factored_scores_reference(f, probs0, rows, parts, fsum, mean0, rstd0)
    got = cpu_heads.factored_scores(f, probs0, rows, parts, fsum, mean0, rstd0)
    assert got is not None and got.shape == (n, nh, nt, p)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # every term matters: without the second head product the result is far off
    parts0 = (parts[0], torch.zeros_like(parts[1]))
    assert float((cpu_heads.factored_scores_reference(f, probs0, rows, parts0, fsum, mean0, rstd0) - want).abs().max()) > 1e-2


def test_factored_scores_left_to_torch_where_they_do_not_fit() -> None:
    f, probs0 = torch.randn((1, 4, 3)), torch.rand((1, 3, 24))
    rows, parts = torch.randn((1, 2, 2, 16)), (torch.randn((2, 16, 24)), torch.randn((2, 16, 24)))
    stats = torch.randn((1, 2, 2)), torch.randn((1, 24)), torch.rand((1, 24))
    assert cpu_heads.factored_scores(f, probs0, rows, parts, *stats) is None  # 24 positions: not in 16-wide blocks


@needs_kernel
@pytest.mark.parametrize(("n", "nh", "nt", "dk", "r", "p"), [(8, 8, 4, 16, 56, 4096), (2, 2, 5, 16, 14, 48), (1, 3, 3, 5, 9, 16)])
def test_final_scores_match_torch(n: int, nh: int, nt: int, dk: int, r: int, p: int) -> None:
    """The final attention's scores in one pass against torch's ops (SAM's sizes first: 4 used tokens)."""
    gen = torch.Generator().manual_seed(r * p + 1)
    f = torch.randn((n, nh * nt, r), generator=gen), torch.randn((n, nh * nt, r), generator=gen)
    probs = tuple(torch.softmax(torch.randn((n, r, p), generator=gen), dim=1) for _ in range(2))
    q = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    keys = torch.randn((nh, dk, p), generator=gen), torch.randn((nh, dk, p), generator=gen)
    c = torch.randn((n, nh * nt), generator=gen)
    scales = torch.rand((n, p), generator=gen) + 0.5, torch.rand((n, p), generator=gen) + 0.5
    want = cpu_heads.final_scores_reference(f, probs, q, keys, c, scales)  # type: ignore[arg-type]
    got = cpu_heads.final_scores(f, probs, q, keys, c, scales)  # type: ignore[arg-type]
    assert got is not None and got.shape == (n, nh, nt, p)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    no_c = cpu_heads.final_scores_reference(f, probs, q, keys, torch.zeros_like(c), scales)  # type: ignore[arg-type]
    assert float((no_c - want).abs().max()) > 1e-2  # the constant term matters


@needs_kernel
@pytest.mark.parametrize(("n", "nh", "nt", "dk", "p"), [(8, 8, 7, 16, 4096), (2, 3, 1, 5, 32), (3, 2, 7, 16, 784)])
def test_projected_dots_match_torch(n: int, nh: int, nt: int, dk: int, p: int) -> None:
    """The norms' cross terms without the (N, h, T, P) products written, against torch's three ops (784 positions:
    three runs of 256, a 16-position tail)."""
    gen = torch.Generator().manual_seed(n + p)
    v = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    xw = torch.randn((nh, dk, p), generator=gen)
    probs = torch.softmax(torch.randn((n, nh, nt, p), generator=gen), dim=2)
    got = cpu_heads.proj_dots(v, xw, probs)
    want = cpu_heads.proj_dots_reference(v, xw, probs)
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert cpu_heads.proj_dots(v, xw[..., :24], probs[..., :24]) is None  # 24 positions: not in 16-wide blocks


def test_decoder_is_the_same_with_and_without_the_kernels(monkeypatch) -> None:
    """SAM's decoder sizes, prompts decoded on one image: the masks and IoUs with the heads' kernels equal the torch
    path's (the fallback every CPU without them runs) to rounding, the sign of every clear logit the same."""
    from geosam import models as gm
    from tests.test_fast_decoder import assert_same_decoding, sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=4)
    with_kernels = gm.decode_points(bundle, emb, pts)
    monkeypatch.setattr(cpu_heads, "_library", lambda: None)
    without = gm.decode_points(bundle, emb, pts)
    assert_same_decoding(with_kernels, without)


needs_avx512 = pytest.mark.skipif(
    not (cpu_heads.available() and "avx512f" in cpu_flags()), reason="no AVX-512 here (or the kernels not in use)"
)


@needs_avx512
def test_wide_scores_are_in_use_where_the_cpu_has_avx512() -> None:
    assert cpu_heads.wide_available()


@needs_avx512
@pytest.mark.parametrize(
    ("n", "nh", "nt", "dk", "r", "p"), [(9, 8, 7, 16, 7, 4096), (3, 2, 5, 16, 14, 96), (2, 3, 3, 5, 9, 48), (2, 2, 10, 16, 56, 64)]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_wide_scores_are_the_avx2_scores_bit_for_bit(n: int, nh: int, nt: int, dk: int, r: int, p: int, threads: int) -> None:
    """Both scores kernels in AVX-512 registers (8 token rows x 32 positions a tile) give the AVX2 tiles' bits (4 rows
    x 16), at either thread count (SAM's sizes first; 48 positions: not whole 32-position blocks, the AVX2 tiles run;
    10 tokens: a whole tile of 8 rows and one of 2)."""
    lib = cpu_heads._library()
    gen = torch.Generator().manual_seed(n * p)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for inputs, call in ((cpu_heads._scores_inputs, cpu_heads._call_factored_scores),
                             (cpu_heads._final_inputs, cpu_heads._call_final_scores)):  # fmt: skip
            args = inputs(gen, n, nh, nt, dk, r, p)
            narrow, wide = (torch.full((n, nh, nt, p), float("nan")) for _ in range(2))
            assert call(lib, *args, narrow) and call(lib, *args, wide, True)
            assert not narrow.isnan().any() and torch.equal(narrow, wide)
    finally:
        torch.set_num_threads(before)


@needs_avx512
@pytest.mark.parametrize(("n", "nh", "nt", "dk", "p"), [(16, 8, 7, 16, 4096), (3, 2, 10, 5, 280), (1, 3, 1, 9, 264)])
@pytest.mark.parametrize("threads", [1, 2])
def test_wide_head_products_are_the_avx2_ones_bit_for_bit(n: int, nh: int, nt: int, dk: int, p: int, threads: int) -> None:
    """`headdot` in AVX-512 registers (8 rows x 32 positions, masked where a block ends 8 / 16 / 24 positions into a
    tile: 280, 264), written and accumulated, and `proj_dots` (32 and 16 positions) give the AVX2 paths' bits."""
    lib = cpu_heads._library()
    gen = torch.Generator().manual_seed(n * p + nt)
    a = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    x = torch.randn((nh, dk, p), generator=gen)
    probs = torch.rand((n, nh, nt, p), generator=gen)
    base = torch.randn((n, nh, nt, p), generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for accumulate in (False, True):
            narrow, wide = base.clone(), base.clone()
            assert cpu_heads._call_headdot(lib, a, x, narrow, accumulate)
            assert cpu_heads._call_headdot(lib, a, x, wide, accumulate, True)
            assert torch.equal(narrow, wide) and not torch.equal(narrow, base)
        q = p - p % 16  # proj_dots takes whole 16-position vectors: 272 of 280 (a 16-position tail), 256 of 264
        xq, pq = x[..., :q].contiguous(), probs[..., :q].contiguous()
        dots = [torch.full((n, q), float("nan")) for _ in range(2)]
        assert cpu_heads._call_proj_dots(lib, a, xq, pq, dots[0]) and cpu_heads._call_proj_dots(lib, a, xq, pq, dots[1], True)
        assert not dots[0].isnan().any() and torch.equal(dots[0], dots[1])
        assert torch.allclose(dots[1], cpu_heads.proj_dots_reference(a, xq, pq), rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)


needs_amx = pytest.mark.skipif(not cpu_heads.amx_available(), reason="AMX tiles only on CPUs with AMX (Intel Xeon)")


@needs_amx
@pytest.mark.parametrize(
    ("n", "nh", "nt", "dk", "r", "p"), [(16, 8, 4, 16, 56, 4096), (3, 8, 7, 16, 56, 96), (2, 6, 4, 16, 40, 288)]
)
def test_amx_final_scores_are_the_reference_on_bf16_factors(n: int, nh: int, nt: int, dk: int, r: int, p: int) -> None:
    """The final scores with ``bf16`` on AMX tiles: the reference on the factors rounded to bf16 (sums float32), the
    same bits at 1, 2 and 3 threads; the rounding is really there (float32's scores differ by far more). SAM's sizes
    first (4 used tokens: 4 heads a tile), 7 tokens (2 heads a tile), 6 heads (3 a tile), a chunk of one block."""
    args = cpu_heads._final_inputs(torch.Generator().manual_seed(n * p + nt), n, nh, nt, dk, r, p)
    want = cpu_heads.final_scores_reference(*args, bf16=True)
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got.append(cpu_heads.final_scores(*args, bf16=True))
    finally:
        torch.set_num_threads(before)
    assert got[0] is not None and got[0].shape == (n, nh, nt, p)
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)
    assert all(g is not None and torch.equal(g, got[0]) for g in got[1:])
    float32 = cpu_heads.final_scores(*args)
    assert float32 is not None and float((float32 - want).abs().max()) > 1e-2


@needs_amx
def test_final_scores_the_amx_kernel_does_not_take_run_in_float32(monkeypatch) -> None:
    """``bf16`` where the AMX kernel does not run gives the float32 kernel's bits: positions not in whole blocks of 32
    (48), more than 16 tokens a head (17), no AMX."""
    gen = torch.Generator().manual_seed(7)
    for shape in ((2, 8, 4, 16, 56, 48), (1, 2, 17, 16, 9, 64)):
        args = cpu_heads._final_inputs(gen, *shape)
        got, float32 = cpu_heads.final_scores(*args, bf16=True), cpu_heads.final_scores(*args)
        assert got is not None and float32 is not None and torch.equal(got, float32)
    args = cpu_heads._final_inputs(gen, 2, 8, 4, 16, 56, 64)
    assert not torch.equal(cpu_heads.final_scores(*args, bf16=True), cpu_heads.final_scores(*args))
    monkeypatch.setattr(cpu_heads, "amx_available", lambda: False)
    assert torch.equal(cpu_heads.final_scores(*args, bf16=True), cpu_heads.final_scores(*args))


@needs_amx
def test_the_bf16_decode_takes_its_final_attention_on_amx(monkeypatch) -> None:
    """Under the bf16 dtype the fast decoder asks for its final attention's scores and weights' products in bf16
    (the float32 dtype never does), and its masks and IoUs stay float32's to that rounding."""
    import dataclasses

    from geosam import models as gm
    from geosam.models import cpu_weights, fast_final
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=5, prompts=4)
    bf16 = dataclasses.replace(bundle, dtype=torch.bfloat16)
    asked: dict[str, list[bool]] = {"final_scores": [], "softmax_products": []}

    def spying() -> None:
        pieces = (("final_scores", fast_final.final_scores), ("softmax_products", fast_final.softmax_products))
        for name, real in pieces:
            def spy(*args, _real=real, _name=name, **kwargs):
                asked[_name].append(bool(kwargs.get("bf16", args[6] if len(args) > 6 else False)))
                return _real(*args, **kwargs)

            monkeypatch.setattr(fast_final, name, spy)

    spying()
    ml, il = gm.decode_points(bundle, emb, pts)
    assert all(calls and not any(calls) for calls in asked.values())
    monkeypatch.undo()
    monkeypatch.setattr(cpu_heads, "amx_available", lambda: False)  # float32 final attention, the upscaling still bf16
    monkeypatch.setattr(cpu_weights, "amx_available", lambda: False)
    plain = gm.decode_points(bf16, emb, pts)
    monkeypatch.undo()
    asked = {name: [] for name in asked}
    spying()
    bl, bi = gm.decode_points(bf16, emb, pts)
    assert all(calls and all(calls) for calls in asked.values())
    assert not torch.equal(bi, plain[1])  # the AMX products moved the IoU token: they ran
    torch.testing.assert_close(bi, il, rtol=0, atol=1e-2 * float(il.abs().max()))
    scale = float(ml.abs().max())
    assert float((bl - ml).abs().max()) <= 2e-2 * scale
    clear = ml.abs() > 2e-2 * scale
    assert torch.equal((bl > 0)[clear], (ml > 0)[clear])
