"""geosam.models.cpu_attention: SAM's encoder attention fused for AVX-512 CPUs, torch's results to float rounding."""

from __future__ import annotations

import sys

import pytest
import torch

from geosam.models import cpu_attention, fast_encoder
from geosam.models.cpu_kernels import transposed_tables
from geosam.models.device import cpu_flags
from tests._tiny_sam import seeded_sam_model


def _avx512_torch() -> bool:
    return (
        sys.platform.startswith("linux")
        and {"avx512f", "avx512dq"} <= set(cpu_flags())
        and torch.backends.cpu.get_cpu_capability() == "AVX512"
    )


needs_kernel = pytest.mark.skipif(
    not _avx512_torch(), reason="torch runs no AVX-512 kernels here: the bit-for-bit AVX2 kernels apply instead"
)


@pytest.mark.skipif(not _avx512_torch(), reason="torch runs no AVX-512 kernels here")
def test_kernel_is_in_use_where_torch_runs_avx512() -> None:
    """With a C compiler on a CPU where torch takes its AVX-512 kernels, the kernel builds and passes its check
    (else the encoder silently loses it)."""
    assert cpu_attention.available()


def _case(hh: int, ww: int, nh: int, d: int, window: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    side = window or hh, window or ww
    qkv = torch.randn((hh, ww, 3 * nh * d), generator=gen) * 1.5
    bias = torch.randn(3 * nh * d, generator=gen)
    tables = (
        torch.randn((side[0], side[0], d), generator=gen) * 0.5,
        torch.randn((side[1], side[1], d), generator=gen) * 0.5,
    )
    return qkv, bias, tables


@needs_kernel
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window", "rel"),
    [
        (32, 32, 3, 64, 0, True),  # a global layer: 1024 keys, whole panels, 4 chunks of 256 keys (the running softmax)
        (12, 64, 2, 32, 0, True),  # a ViT-B's map width: chunks of 4 map rows, 8 whole blocks of 96 queries
        (9, 32, 1, 16, 0, False),  # chunks of keys without relative positions (a last chunk of one map row)
        (13, 11, 2, 48, 0, True),  # keys end mid-panel, a last block of 23 queries
        (30, 30, 2, 32, 14, True),  # windows of 14 with padded strips (30 = 2 x 14 + 2), as SAM's 64 = 4 x 14 + 8
        (16, 16, 1, 128, 16, True),  # one window covering the map exactly
        (9, 9, 2, 80, 4, False),  # ViT-H's head size, no relative positions, padded windows
        (6, 6, 4, 16, 20, True),  # a window larger than the map
    ],
)
def test_matches_float64_reference(hh: int, ww: int, nh: int, d: int, window: int, rel: bool) -> None:
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=hh * ww + d)
    scale = d**-0.5
    want = cpu_attention.reference(qkv.double(), nh, scale, tuple(t.double() for t in tables) if rel else None,
                                   window, bias.double())  # fmt: skip
    out = torch.full((hh, ww, nh * d), float("nan"))
    assert cpu_attention.attention(qkv, nh, scale, transposed_tables(*tables) if rel else None, out, window, bias)
    err = float((out.double() - want).abs().max() / want.abs().max())
    # as close as torch's own float32 attention is (within a factor of 3), and within the load-time check's bound
    torch_err = float(
        (cpu_attention.reference(qkv, nh, scale, tables if rel else None, window, bias).double() - want).abs().max()
        / want.abs().max()
    )
    assert err < max(3 * torch_err, 1e-7) and err < cpu_attention.TOLERANCE, (err, torch_err)
    # the relative terms matter here: without them the result is far off
    if rel:
        assert (
            float((cpu_attention.reference(qkv.double(), nh, scale, None, window, bias.double()) - want).abs().max())
            > 1e-2
        )


needs_bf16 = pytest.mark.skipif(
    not (_avx512_torch() and "avx512_bf16" in cpu_flags()), reason="no AVX-512 BF16 here (or torch not on AVX-512)"
)


@needs_bf16
def test_bf16_products_are_in_use_where_the_cpu_has_avx512_bf16() -> None:
    assert cpu_attention.bf16_available()


def _rounded_probabilities_reference(qkv, nh, scale, tables, window, bias):
    """`cpu_attention.reference` in float64 with the probabilities rounded to bf16 (what the bf16 products do)."""
    real_softmax = torch.softmax

    def softmax(x, dim):
        p = (x - x.amax(dim, keepdim=True)).exp().float().bfloat16().double()
        return p / p.sum(dim, keepdim=True)

    torch.softmax = softmax
    try:
        return cpu_attention.reference(qkv, nh, scale, tables, window, bias)
    finally:
        torch.softmax = real_softmax


@needs_bf16
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window", "rel"),
    [(32, 32, 3, 64, 0, True), (13, 11, 2, 48, 0, True), (30, 30, 2, 32, 14, True), (9, 9, 2, 80, 4, False)],
)
def test_bf16_products_round_only_the_probabilities(hh: int, ww: int, nh: int, d: int, window: int, rel: bool) -> None:
    """On q, k, v that are bf16 numbers (a bf16 projection's), the bf16 products lose only the probabilities'
    rounding: far closer to the reference with rounded probabilities than to the exact one, within the load check's
    bound, and not the float32 kernel's result."""
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=hh * ww + d)
    qkv, bias = qkv.bfloat16().float(), bias.bfloat16().float()
    scale = d**-0.5
    tabs64 = tuple(t.double() for t in tables) if rel else None
    want = cpu_attention.reference(qkv.double(), nh, scale, tabs64, window, bias.double())
    rounded = _rounded_probabilities_reference(qkv.double(), nh, scale, tabs64, window, bias.double())
    tabs_t = transposed_tables(*tables) if rel else None
    out, out32 = torch.full((hh, ww, nh * d), float("nan")), torch.full((hh, ww, nh * d), float("nan"))
    assert cpu_attention.attention(qkv, nh, scale, tabs_t, out, window, bias, bf16=True)
    assert cpu_attention.attention(qkv, nh, scale, tabs_t, out32, window, bias)

    def err(a, b):
        return float((a.double() - b).abs().max() / want.abs().max())

    def rms(a, b):  # a few probabilities sit on a rounding boundary (float32 vs float64 scores): the max can't tell
        return float((a.double() - b).norm() / b.norm())

    assert 1e-4 < err(out, want) < cpu_attention.BF16_TOLERANCE
    assert rms(out, rounded) < rms(out, want) / 5, (rms(out, rounded), rms(out, want))
    assert err(out32, want) < cpu_attention.TOLERANCE


needs_amx = pytest.mark.skipif(
    not (_avx512_torch() and {"amx_bf16", "amx_tile", "avx512_bf16"} <= set(cpu_flags())),
    reason="no AMX here (or torch not on AVX-512)",
)


@needs_amx
def test_bf16_products_run_on_amx_tiles_where_the_cpu_has_them() -> None:
    assert cpu_attention.amx_available()


@needs_amx
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window", "rel"),
    [(13, 11, 2, 64, 0, True), (30, 30, 2, 64, 14, True), (20, 9, 3, 32, 0, True), (17, 17, 2, 64, 7, False),
     (13, 11, 2, 80, 0, True), (30, 30, 2, 80, 14, True), (20, 9, 2, 48, 0, True), (9, 11, 3, 16, 4, True)],
)
def test_amx_products_are_the_avx512_bf16_products_to_rounding(
    hh: int, ww: int, nh: int, d: int, window: int, rel: bool
) -> None:
    """The AMX tiles take the same bf16 numbers as AVX-512 BF16's vdpbf16ps (q, k, the rounded probabilities, v) and
    sum them in float32 in another order (the relative terms too, `rel_rows8`): the two outputs agree to float
    rounding but for the few rows where a probability lies on a bf16 rounding boundary (a score's last bit then
    moves it to the other neighbour: ~1 row in 300, by one unit of that probability at most), and are as close to
    the exact attention as each other; whole maps whose last block of 32 queries is partial, windows with padded
    strips, with and without tables; heads of 16, 48 and 80 numbers (ViT-H's) with the keys' and queries' rows
    padded to the tiles' 32 with zeros and a last 16 columns of values in one tile)."""
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=7 * hh + d)
    qkv, bias = qkv.bfloat16().float(), bias.bfloat16().float()
    scale = d**-0.5
    tabs64 = tuple(t.double() for t in tables) if rel else None
    want = cpu_attention.reference(qkv.double(), nh, scale, tabs64, window, bias.double())
    tabs_t = transposed_tables(*tables) if rel else None
    lib = cpu_attention._library()
    outs = {}
    for mode in (cpu_attention.BF16, cpu_attention.AMX):
        outs[mode] = torch.full((hh, ww, nh * d), float("nan"))
        assert cpu_attention._call(lib, qkv, nh, scale, tabs_t, outs[mode], window, bias, mode) == 0
    amx, avx = outs[cpu_attention.AMX].double(), outs[cpu_attention.BF16].double()
    assert not amx.isnan().any()
    v_max = float(qkv.reshape(-1, 3, nh, d)[:, 2].abs().max())
    row_diff = (amx - avx).abs().reshape(-1, nh, d).amax(-1)  # (query, head)
    flipped = row_diff > 1e-5 * v_max
    assert int(flipped.sum()) <= max(2, flipped.numel() // 50)
    assert float(row_diff.max()) <= 2.0**-7 * v_max
    err_amx, err_avx = (float((o - want).norm() / want.norm()) for o in (amx, avx))
    assert abs(err_amx - err_avx) < err_avx / 10
    assert float((amx - want).abs().max() / want.abs().max()) < cpu_attention.BF16_TOLERANCE


@needs_amx
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window"),
    [(13, 11, 2, 64, 0), (30, 30, 2, 64, 14), (9, 11, 3, 32, 4), (13, 11, 2, 80, 0), (30, 30, 2, 80, 14), (12, 12, 2, 48, 5)],
)
def test_amx_mode_reads_bf16_tokens_as_their_float32_values(hh: int, ww: int, nh: int, d: int, window: int) -> None:
    """The AMX mode takes the bf16 projection as it is (qkv and the padded tokens' bias bf16): the same bits as on
    the same numbers widened to float32, whole maps and windows; heads of 48 and 80 numbers, whose last 16 columns
    are read without the token's next numbers)."""
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=hh + d)
    qkv, bias = qkv.bfloat16(), bias.bfloat16()
    tabs_t = transposed_tables(*tables)
    out16, out32 = torch.full((hh, ww, nh * d), float("nan")), torch.full((hh, ww, nh * d), float("nan"))
    assert cpu_attention.attention(qkv, nh, d**-0.5, tabs_t, out16, window, bias, bf16=True)
    assert cpu_attention.attention(qkv.float(), nh, d**-0.5, tabs_t, out32, window, bias.float(), bf16=True)
    assert not out16.isnan().any() and torch.equal(out16, out32)


@needs_amx
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window"),
    [(13, 11, 2, 72, 0), (64, 64, 2, 72, 0), (30, 30, 2, 56, 14), (17, 9, 3, 24, 4), (9, 9, 1, 120, 0)],
)
def test_heads_of_a_multiple_of_8_are_their_heads_padded_with_zeros(
    hh: int, ww: int, nh: int, d: int, window: int, out_dtype: torch.dtype
) -> None:
    """Heads of 8 more than a multiple of 16 (SAM 2's Hiera-L 72, Hiera-B+ 56) on bf16 tokens without tables: the
    bits of the same heads padded with zero columns to the next 16 (the kernel's padding of keys and values done
    outside it, each head's first d outputs kept), float32 and bf16 outputs; a head's last 8 columns read and written
    without touching the next head's, and within `BF16_TOLERANCE` of float64."""
    dp = (d + 15) // 16 * 16
    g = torch.Generator().manual_seed(d + hh)
    qkv = torch.randn((hh, ww, 3 * nh * d), generator=g).bfloat16()
    bias = torch.randn(3 * nh * d, generator=g).bfloat16()

    def padded(t: torch.Tensor) -> torch.Tensor:
        lead = t.shape[:-1]
        return torch.nn.functional.pad(t.view(*lead, 3, nh, d), (0, dp - d)).reshape(*lead, 3 * nh * dp).contiguous()

    out = torch.full((hh, ww, nh * d), float("nan"), dtype=out_dtype)
    out_p = torch.full((hh, ww, nh * dp), float("nan"), dtype=out_dtype)
    assert cpu_attention.takes(torch.bfloat16, d)
    assert cpu_attention.attention(qkv, nh, d**-0.5, None, out, window, bias, bf16=True)
    assert cpu_attention.attention(padded(qkv), nh, d**-0.5, None, out_p, window, padded(bias), bf16=True)
    assert torch.equal(out, out_p.view(hh, ww, nh, dp)[..., :d].reshape(hh, ww, nh * d))
    want = cpu_attention.reference(qkv.double(), nh, d**-0.5, None, window, bias.double())
    assert float((out.double() - want).abs().max()) < cpu_attention.BF16_TOLERANCE * float(want.abs().max())


def test_heads_of_a_multiple_of_8_need_bf16_tokens_and_no_tables() -> None:
    """A head of 72 numbers: refused (False, nothing written) in float32, with bf16 products on float32 tokens, and
    with relative tables; `takes` says so for relative positions."""
    qkv, _, tables = _case(8, 8, 2, 72, 0, seed=4)
    out = torch.full((8, 8, 144), float("nan"))
    assert not cpu_attention.attention(qkv, 2, 0.2, None, out)
    assert not cpu_attention.attention(qkv, 2, 0.2, None, out, bf16=True)
    assert not cpu_attention.attention(qkv.bfloat16(), 2, 0.2, transposed_tables(*tables), out, bf16=True)
    assert out.isnan().all()
    assert not cpu_attention.takes(torch.bfloat16, 72, relative=True)
    assert not cpu_attention.takes(torch.float32, 72)


@needs_bf16
@pytest.mark.parametrize("mode", ["avx512_bf16", "amx"])
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window", "rel", "special"),
    [(32, 64, 2, 64, 0, True, "nan"), (40, 32, 2, 32, 0, False, "large"), (5, 32, 3, 64, 0, True, "inf"),
     (13, 11, 2, 64, 0, True, "large"), (30, 30, 2, 64, 14, True, "nan"), (17, 17, 2, 64, 7, False, "none"),
     (17, 17, 2, 64, 7, False, "negative"), (12, 12, 1, 32, 5, False, "negative")],
)
def test_bf16_softmax_and_amx_overlap_keep_the_bits(
    hh: int, ww: int, nh: int, d: int, window: int, rel: bool, special: str, mode: str
) -> None:
    """The bf16 modes' numerators rounded 32 at a time and summed by vdpbf16ps, and in the AMX mode the relative terms
    and row maxima taken as each 32 x 32 block of scores leaves the tiles (maps of 32k columns) and the numerators
    computed inside the first values pass, give the bits of the kernel as it ran before
    (`geosam_attention512_overlap(0)`: 16 numbers a step, the passes between the tiles' products): whole maps with
    full and partial blocks of queries, windows (without tables: every window's maxima taken as the blocks leave the
    tiles), no tables, NaN / inf / large / all far-negative scores, bf16 and float32 tokens (AMX), one and two
    threads."""
    if mode == "amx" and not cpu_attention.amx_available():
        pytest.skip("no AMX tiles here")
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=3 * hh + ww)
    if special == "nan":
        qkv[1, 2, 5] = float("nan")
    elif special == "inf":
        qkv[0, 3, nh * d + 7] = float("inf")
    elif special == "large":
        qkv *= 40
    elif special == "negative":  # every score far below zero: the keys padded past a window's tokens (zeros) must
        c = nh * d  # not count in the rows' maxima (windows without tables run the AMX mode's fused pass)
        qkv[..., :c] = qkv[..., :c].abs() * 8
        qkv[..., c:2 * c] = -qkv[..., c:2 * c].abs() * 8
        bias[:c], bias[c:2 * c] = bias[:c].abs() * 8, -bias[c:2 * c].abs() * 8
    tabs_t = transposed_tables(*tables) if rel else None
    lib = cpu_attention._library()
    threads = torch.get_num_threads()
    try:
        for tokens in (torch.bfloat16, torch.float32) if mode == "amx" else (torch.float32,):
            q, b = qkv.bfloat16().to(tokens), bias.bfloat16().to(tokens)
            for n_threads in (1, 2):
                torch.set_num_threads(n_threads)
                outs = []
                for overlap in (0, 1):
                    lib.geosam_attention512_overlap(overlap)
                    outs.append(torch.full((hh, ww, nh * d), 7.0))
                    code = cpu_attention.AMX if mode == "amx" else cpu_attention.BF16
                    assert cpu_attention._call(lib, q, nh, d**-0.5, tabs_t, outs[-1], window, b if window else None,
                                               code) == 0
                assert torch.equal(outs[0].isnan(), outs[1].isnan())
                assert torch.equal(outs[0].nan_to_num(0.0), outs[1].nan_to_num(0.0)), (tokens, n_threads)
                assert not outs[1].isnan().all()
    finally:
        lib.geosam_attention512_overlap(1)
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("mode", "hh", "ww", "nh", "d", "window"),
    [("float32", 30, 30, 2, 64, 14), ("float32", 20, 20, 1, 32, 8), ("amx", 30, 30, 2, 64, 14), ("amx", 17, 9, 3, 72, 4),
     ("amx", 20, 20, 1, 32, 8)],
)
def test_windows_fetching_the_next_tasks_rows_keep_the_bits(mode: str, hh: int, ww: int, nh: int, d: int,
                                                            window: int) -> None:  # fmt: skip
    """Each window's task fetches the next task's q, k and v rows into L2 (``geosam_attention512_prefetch``): the
    same bits as without (windows that tile the map and padded ones, the last task fetching nothing), one and two
    threads."""
    if mode == "amx" and not cpu_attention.amx_available():
        pytest.skip("no AMX tiles here")
    qkv, bias, tables = _case(hh, ww, nh, d, window, seed=hh + ww + d)
    tabs_t = transposed_tables(*tables) if d % 16 == 0 else None
    if mode == "amx":
        qkv, bias = qkv.bfloat16(), bias.bfloat16()
    lib = cpu_attention._library()
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            outs = []
            for on in (0, 1):
                lib.geosam_attention512_prefetch(on)
                outs.append(torch.full((hh, ww, nh * d), float("nan")))
                assert cpu_attention.attention(qkv, nh, d**-0.5, tabs_t, outs[-1], window, bias, bf16=mode == "amx")
            assert not outs[1].isnan().any() and torch.equal(outs[0], outs[1])
    finally:
        lib.geosam_attention512_prefetch(1)
        torch.set_num_threads(threads)


def test_bf16_tokens_are_refused_without_the_amx_products(monkeypatch) -> None:
    """bf16 tokens only in the AMX mode: without it (or without bf16 products) False, nothing written."""
    qkv, bias, tables = _case(12, 12, 2, 32, 5, seed=5)
    out = torch.full((12, 12, 64), float("nan"))
    assert not cpu_attention.attention(qkv.bfloat16(), 2, 0.2, transposed_tables(*tables), out, 5, bias.bfloat16())
    monkeypatch.setattr(cpu_attention, "amx_available", lambda: False)
    assert not cpu_attention.attention(qkv.bfloat16(), 2, 0.2, transposed_tables(*tables), out, 5, bias.bfloat16(), bf16=True)
    assert out.isnan().all()


def test_bf16_asked_where_it_is_not_available_is_float32(monkeypatch) -> None:
    qkv, bias, tables = _case(12, 12, 2, 32, 5, seed=11)
    out, out32 = torch.empty((12, 12, 64)), torch.empty((12, 12, 64))
    monkeypatch.setattr(cpu_attention, "bf16_available", lambda: False)
    done = cpu_attention.attention(qkv, 2, 0.2, transposed_tables(*tables), out, 5, bias, bf16=True)
    assert done == cpu_attention.attention(qkv, 2, 0.2, transposed_tables(*tables), out32, 5, bias)
    assert not done or torch.equal(out, out32)


@needs_kernel
def test_strided_map_and_output() -> None:
    """The qkv map and the output as views of larger tensors (token and row strides of their own)."""
    qkv, bias, tables = _case(20, 20, 2, 32, 7, seed=3)
    big = torch.zeros((22, 25, qkv.shape[-1]))
    big[1:21, 2:22] = qkv
    out_big = torch.full((20, 21, 2 * 32 + 5), float("nan"))
    out = out_big[:, :20, 3 : 3 + 64]
    assert cpu_attention.attention(big[1:21, 2:22], 2, 0.2, transposed_tables(*tables), out, 7, bias)
    want = cpu_attention.reference(qkv.double(), 2, 0.2, tuple(t.double() for t in tables), 7, bias.double())
    assert float((out.double() - want).abs().max() / want.abs().max()) < 1e-6
    assert out_big[:, 20].isnan().all() and out_big[..., :3].isnan().all() and out_big[..., 67:].isnan().all()


@needs_amx
@pytest.mark.parametrize(
    ("hh", "ww", "nh", "d", "window"),
    [(16, 16, 2, 32, 8), (32, 32, 2, 96, 8), (16, 16, 4, 96, 4), (64, 64, 2, 96, 14), (13, 11, 2, 56, 4),
     (15, 9, 1, 72, 6), (4, 6, 2, 16, 2)],
)
def test_pooled_queries_are_sam2s_query_pooling(hh: int, ww: int, nh: int, d: int, window: int) -> None:
    """SAM 2's stage-opening blocks (a query stride of 2): each window's queries the 2 x 2 maxima of its tokens' q,
    against all its keys (padded windows: tokens past the map carry the zero token's projection). The kernel's
    pooled queries equal `reference_pooled` in float64 to the bf16 products' rounding, and the path it replaced
    (windows copied out, q pooled by torch, torch's fused attention) to the same rounding; Hiera-tiny's shapes
    (heads of 96 in windows of 8, 4 and 14), odd maps, heads of 56 and 72, windows of 2 (one query each)."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(hh * ww + d)
    qkv = torch.randn((hh, ww, 3 * nh * d), generator=gen).bfloat16()
    bias = torch.randn(3 * nh * d, generator=gen).bfloat16()
    want = cpu_attention.reference_pooled(qkv.double(), nh, d**-0.5, window, bias.double())
    out = torch.full((hh // 2, ww // 2, nh * d), float("nan"), dtype=torch.bfloat16)
    assert cpu_attention.attention(qkv, nh, d**-0.5, None, out, window, bias, bf16=True, pool_queries=True)
    assert not out.isnan().any()
    scale = float(want.abs().max())
    assert float((out.double() - want).abs().max()) <= cpu_attention.BF16_TOLERANCE * scale
    # torch's path on the same bf16 numbers (fast_hiera's before the kernel took these blocks)
    wins = cpu_attention.padded_windows(qkv, window, bias)
    ny, nx, s, c = wins.shape[0], wins.shape[1], window // 2, nh * d
    wins = wins.reshape(ny * nx, window, window, 3 * c)
    q = wins[..., :c].reshape(ny * nx, s, 2, s, 2, c).amax(dim=(2, 4)).reshape(ny * nx, s * s, nh, d).transpose(1, 2)
    k, v = (wins[..., i * c: (i + 1) * c].reshape(ny * nx, window * window, nh, d).transpose(1, 2) for i in (1, 2))
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=d**-0.5).transpose(1, 2).reshape(ny, nx, s, s, c)
    sdpa = sdpa.permute(0, 2, 1, 3, 4).reshape(ny * s, nx * s, c)[: hh // 2, : ww // 2]
    assert sdpa.shape == out.shape
    assert float((out.double() - sdpa.double()).abs().max()) <= 2 * cpu_attention.BF16_TOLERANCE * scale


@needs_amx
def test_pooled_queries_need_even_windows_bf16_tokens_and_no_tables() -> None:
    """What the pooled queries do not take is refused, nothing written: odd or no windows, relative tables, float32
    tokens, an output of the unpooled map's size."""
    qkv, bias, tables = _case(16, 16, 2, 32, 8, seed=5)
    q16, b16 = qkv.bfloat16(), bias.bfloat16()
    out = torch.full((8, 8, 64), float("nan"), dtype=torch.bfloat16)
    tabs = transposed_tables(*tables)
    refused = [
        cpu_attention.attention(q16, 2, 0.2, None, out, 7, b16, bf16=True, pool_queries=True),
        cpu_attention.attention(q16, 2, 0.2, None, out, 0, None, bf16=True, pool_queries=True),
        cpu_attention.attention(q16, 2, 0.2, tabs, out, 8, b16, bf16=True, pool_queries=True),
        cpu_attention.attention(qkv, 2, 0.2, None, out.float(), 8, bias, bf16=True, pool_queries=True),
        cpu_attention.attention(q16, 2, 0.2, None, torch.empty((16, 16, 64), dtype=torch.bfloat16), 8, b16, bf16=True,
                                pool_queries=True),
    ]
    assert refused == [False] * 5 and out.isnan().all()
    assert cpu_attention.attention(q16, 2, 0.2, None, out, 8, b16, bf16=True, pool_queries=True)


@needs_amx
def test_pooled_queries_give_the_same_bits_at_any_thread_count() -> None:
    """Each (window, head) of the pooled queries is one task, computed alike whichever thread takes it."""
    gen = torch.Generator().manual_seed(12)
    qkv = torch.randn((30, 26, 3 * 4 * 48), generator=gen).bfloat16()
    bias = torch.randn(3 * 4 * 48, generator=gen).bfloat16()
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.empty((15, 13, 4 * 48), dtype=torch.bfloat16)
            assert cpu_attention.attention(qkv, 4, 48**-0.5, None, out, 8, bias, bf16=True, pool_queries=True)
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_kernel
@pytest.mark.parametrize("products", ["float32", "avx512_bf16"])
@pytest.mark.parametrize(("side", "d"), [(14, 64), (12, 32), (16, 48)])
def test_windows_are_their_maps_attention_bit_for_bit(products: str, side: int, d: int, monkeypatch) -> None:
    """A window's relative terms come from its rows' and columns' tables seven queries at a time, a whole map's three
    at a time: the same chains, so each of two windows that tile a map gives the bits of its own map's (unwindowed)
    attention (float32 and AVX-512 BF16 products; the AMX mode's whole maps sum their terms in one chain)."""
    bf16 = products == "avx512_bf16"
    if bf16 and not cpu_attention.bf16_available():
        pytest.skip("no AVX-512 BF16 products on this CPU")
    monkeypatch.setattr(cpu_attention, "amx_available", lambda: False)
    qkv, bias, tables = _case(2 * side, side, 2, d, side, seed=side + d)
    if bf16:
        qkv = qkv.bfloat16().float()
    tables_t = transposed_tables(*tables)
    windowed = torch.empty((2 * side, side, 2 * d))
    assert cpu_attention.attention(qkv, 2, d**-0.5, tables_t, windowed, side, bias, bf16=bf16)
    for half in (slice(0, side), slice(side, 2 * side)):
        whole = torch.empty((side, side, 2 * d))
        assert cpu_attention.attention(qkv[half].contiguous(), 2, d**-0.5, tables_t, whole, bf16=bf16)
        assert torch.equal(whole, windowed[half])


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(("side", "window"), [(20, 0), (30, 14)])
def test_bf16_output_is_the_float32_output_rounded_as_torch_rounds(bf16: bool, side: int, window: int) -> None:
    """A bf16 ``out`` (the bf16 encoder's next product takes it as it is) holds the float32 results rounded as
    ``Tensor.to(torch.bfloat16)`` rounds them, bit for bit, NaN included; a strided view too."""
    qkv, bias, tables = _case(side, side, 2, 64, window, seed=side)
    qkv[3, 4, 5] = float("nan")  # NaN through the scores: a head's outputs NaN
    tables_t = transposed_tables(*tables)
    want = torch.empty((side, side, 128))
    assert cpu_attention.attention(qkv, 2, 0.125, tables_t, want, window, bias, bf16=bf16)
    big = torch.full((side, side, 140), 7.0, dtype=torch.bfloat16)
    got = big[..., 6:134]
    assert cpu_attention.attention(qkv, 2, 0.125, tables_t, got, window, bias, bf16=bf16)
    assert torch.equal(got.contiguous().view(torch.int16), want.to(torch.bfloat16).view(torch.int16))
    assert want.isnan().any() and (big[..., :6] == 7).all() and (big[..., 134:] == 7).all()


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True])
def test_same_bits_at_any_thread_count(bf16: bool) -> None:
    """Each head's block of queries is computed the same way whichever thread takes it: the embeddings of a run do
    not depend on its thread count (Dask workers with other counts give the same objects); windows too, each
    (window, head) one task."""
    qkv, bias, tables = _case(40, 40, 4, 64, 0, seed=9)
    wtables = _case(40, 40, 4, 64, 14, seed=9)[2]
    wide, _, wide_tables = _case(10, 64, 4, 64, 0, seed=10)  # float32: the running softmax's chunks of keys
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.empty((40, 40, 256))
            assert cpu_attention.attention(qkv, 4, 0.125, transposed_tables(*tables), out, bf16=bf16)
            windowed = torch.empty((40, 40, 256))
            assert cpu_attention.attention(qkv, 4, 0.125, transposed_tables(*wtables), windowed, 14, bias, bf16=bf16)
            chunked = torch.empty((10, 64, 256))
            assert cpu_attention.attention(wide, 4, 0.125, transposed_tables(*wide_tables), chunked, bf16=bf16)
            outs.append(torch.cat([out.flatten(), windowed.flatten(), chunked.flatten()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_kernel
@pytest.mark.parametrize("order", ["rising", "falling", "random"])
def test_running_softmax_is_the_whole_rows_softmax_to_rounding(order: str) -> None:
    """Float32 maps whose width is a multiple of 32 run with a running softmax over chunks of keys (the partial sums
    rescaled where a row's maximum grows); the other whole maps keep every key's score first
    (`geosam_attention512_flash(0)` runs them so). Keys whose scores rise along the map make every chunk raise the
    maxima; falling ones never do. Both paths agree to rounding and with the float64 reference, and the rescaling
    matters here (without it the outputs would be off by e^(a chunk's rise))."""
    hh, ww, nh, d = 16, 32, 2, 32  # 512 keys: 2 chunks of 8 map rows
    qkv, _, tables = _case(hh, ww, nh, d, 0, seed=21)
    if order != "random":
        ramp = torch.linspace(-3.0, 3.0, hh * ww).reshape(hh, ww, 1)
        ramp = ramp if order == "rising" else -ramp
        q = qkv[..., : nh * d]
        qkv[..., nh * d : 2 * nh * d] = q.mean(dim=(0, 1), keepdim=True) * ramp * 4  # keys along the mean query
    scale = d**-0.5
    want = cpu_attention.reference(qkv.double(), nh, scale, tuple(t.double() for t in tables), 0, None)
    lib = cpu_attention._library()
    outs = []
    try:
        for flash in (1, 0):
            lib.geosam_attention512_flash(flash)
            out = torch.full((hh, ww, nh * d), float("nan"))
            assert cpu_attention.attention(qkv, nh, scale, transposed_tables(*tables), out)
            outs.append(out)
    finally:
        lib.geosam_attention512_flash(1)
    scale_ = float(want.abs().max())
    for out in outs:
        assert float((out.double() - want).abs().max()) < cpu_attention.TOLERANCE * scale_
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5 * scale_
    assert not torch.equal(outs[0], outs[1]) or order == "falling"  # rounded differently where the maxima grew


def test_shapes_it_cannot_take_are_left_to_torch() -> None:
    """A head size not in 16-wide vectors, another dtype, a window without its bias: False, nothing written."""
    qkv, bias, tables = _case(8, 8, 2, 24, 0, seed=1)
    out = torch.full((8, 8, 48), float("nan"))
    assert not cpu_attention.attention(qkv, 2, 0.2, transposed_tables(*tables), out)
    qkv, bias, tables = _case(8, 8, 2, 32, 0, seed=2)
    out = torch.full((8, 8, 64), float("nan"))
    assert not cpu_attention.attention(qkv.double(), 2, 0.2, None, out.double())
    assert not cpu_attention.attention(qkv, 2, 0.2, None, out, window=4)  # no bias for the padded tokens
    assert not cpu_attention.attention(qkv, 2, 0.2, transposed_tables(*tables), out, window=4, bias=bias)  # 8x8 tables
    assert out.isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_takes_says_what_attention_runs(dtype: torch.dtype) -> None:
    """`takes` (what the callers ask before making what only the kernel reads) agrees with `attention` itself on
    head sizes in and out of its range."""
    g = torch.Generator().manual_seed(3)
    for d in (8, 16, 24, 32, 48, 56, 64, 72, 96, 128, 136, 144):
        qkv = torch.randn((4, 8, 3 * 2 * d), generator=g).to(dtype)
        out = torch.empty((4, 8, 2 * d), dtype=dtype)
        runs = cpu_attention.attention(qkv, 2, 0.2, None, out, bf16=dtype == torch.bfloat16)
        assert cpu_attention.takes(dtype, d) == runs, d
    assert not cpu_attention.takes(torch.float16, 64)


def test_a_kernel_that_is_off_is_not_used() -> None:
    """The load-time check: a library whose results are wrong (here: none written) is refused."""

    class Wrong:
        class geosam_attention512:  # the C symbol's name
            restype = None

            def __new__(cls, *args):
                return 0

    assert not cpu_attention._matches_reference(Wrong())  # type: ignore[arg-type]


def _vit(seed: int = 4):
    """A small SAM ViT with 32-wide heads (the kernel's), windows of 6 on a 16 x 16 map (padded to 18) and a
    global layer."""
    from transformers import SamConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=2, mlp_dim=128, output_channels=32,
        image_size=256, window_size=6, global_attn_indexes=[1], initializer_range=0.05,
    )  # fmt: skip
    model = seeded_sam_model(SamConfig(vision_config=vision), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            layer.attn.qkv.bias.copy_(torch.randn(layer.attn.qkv.bias.shape, generator=gen))
            layer.attn.rel_pos_h.copy_(torch.randn(layer.attn.rel_pos_h.shape, generator=gen))
            layer.attn.rel_pos_w.copy_(torch.randn(layer.attn.rel_pos_w.shape, generator=gen))
    return model


@needs_kernel
def test_encoder_runs_every_layer_through_the_kernel_and_equals_stock(count_calls) -> None:
    model = _vit()
    pixels = torch.randn((2, 3, 256, 256), generator=torch.Generator().manual_seed(5))
    assert cpu_attention.available()  # loaded (and checked) before counting: its load check calls the kernel too
    calls = count_calls(cpu_attention, "_call")
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    fast = fast_encoder.fast_image_embeddings(model, pixels, torch.float32)
    assert len(calls) == 3 * 2  # 3 layers (2 windowed, 1 global) x 2 images
    assert float((fast - stock).norm() / stock.norm()) < 1e-5
