"""geosam.models.cpu_decoder: one prompt's mask upscaling in one C pass, torch's masks to float rounding."""

from __future__ import annotations

import ctypes
import functools
import sys

import pytest
import torch
import torch.nn.functional as F

from geosam import models as gm
from geosam.models import cpu_decoder
from geosam.models.cpu_decoder_reference import fast_gelu_reference
from geosam.models.device import cpu_flags


def _in_use() -> bool:
    avx2 = {"avx2", "fma"} <= set(cpu_flags()) and sys.platform.startswith("linux")
    return avx2 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and cpu_decoder.available()


needs_kernel = pytest.mark.skipif(not _in_use(), reason="the kernel is used only where torch runs AVX2 or AVX-512 kernels")


def _inputs(gen: torch.Generator, hw: tuple[int, int], k1: int, c4: int, c8: int, nk: int):
    return cpu_decoder.upscale_inputs(gen, hw, k1, c4, c8, nk)


def _with_two_threads(run):
    """``run()`` with torch set to 2 threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        return run()
    finally:
        torch.set_num_threads(before)


def _assert_bf16_products(got: torch.Tensor, args: tuple, hw: tuple[int, int]) -> None:
    """``got``: every pixel written, torch's masks on inputs rounded to bf16 within `BF16_TOLERANCE` of their scale,
    and not float32's (the products ran in bf16)."""
    want, f32 = cpu_decoder.reference(*args, hw, bf16=True), cpu_decoder.reference(*args, hw)
    assert not bool(got.isnan().any())
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= cpu_decoder.BF16_TOLERANCE * scale
    assert float((got - f32).abs().max()) > 1e-4 * scale


@needs_kernel
@pytest.mark.parametrize(
    ("hw", "k1", "c4", "c8", "nk"),
    [((64, 64), 116, 64, 32, 3), ((7, 5), 13, 16, 8, 1), ((3, 11), 40, 8, 16, 4), ((1, 1), 1, 8, 8, 2)],
)
def test_masks_match_torch(hw, k1: int, c4: int, c8: int, nk: int) -> None:
    """SAM's shapes and odd ones (position blocks and register tiles with tails, one position, 1 to 4 masks): torch's
    masks to rounding, every pixel written, and the same bits with 1 and 2 threads."""
    args = _inputs(torch.Generator().manual_seed(k1), hw, k1, c4, c8, nk)
    want = cpu_decoder.reference(*args, hw)
    got = torch.full_like(want, float("nan"))
    assert cpu_decoder.upscale_prompt(*args, hw, got)
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5 * float(want.abs().max()))
    two = torch.full_like(want, float("nan"))
    assert _with_two_threads(lambda: cpu_decoder.upscale_prompt(*args, hw, two))
    assert torch.equal(two, got)


needs_wide = pytest.mark.skipif(
    not (_in_use() and "avx512f" in cpu_flags()), reason="the AVX-512 upscaling only on CPUs with AVX-512"
)


@needs_wide
@pytest.mark.parametrize(
    ("hw", "k1", "c4", "c8", "nk"),
    [((64, 64), 116, 64, 32, 3), ((7, 5), 13, 16, 8, 1), ((3, 11), 40, 8, 16, 4), ((1, 1), 1, 8, 8, 2),
     ((2, 9), 7, 24, 8, 3)],
)
def test_avx512_upscaling_is_the_avx2_bits(hw, k1: int, c4: int, c8: int, nk: int, monkeypatch) -> None:
    """On AVX-512 CPUs the upscaling's float32 products (6 x 64 and 6 x 32 tiles, row tails) and GELUs (a norm row of
    24 channels: a 16-lane step and an 8-lane tail) run in 16-lane registers, bit for bit the AVX2 path (each output
    the same FMA chain), in float32 and, where the CPU has AVX-512 BF16, with the bf16 products; upscale_prompt uses
    it."""
    assert cpu_decoder.wide_available()
    lib = cpu_decoder._library()
    args = _inputs(torch.Generator().manual_seed(k1 + 1), hw, k1, c4, c8, nk)
    real, calls = cpu_decoder._call, []
    monkeypatch.setattr(cpu_decoder, "_call", lambda *a: calls.append(a[-1]) or real(*a))
    for bf16 in (False, True) if cpu_decoder.bf16_available() else (False,):
        flags = cpu_decoder.BF16 if bf16 else 0
        narrow, wide = (torch.full((nk, 4 * hw[0], 4 * hw[1]), float("nan")) for _ in range(2))
        real(lib, *args, hw, narrow, flags)
        real(lib, *args, hw, wide, flags | cpu_decoder.WIDE)
        assert not bool(wide.isnan().any())
        assert torch.equal(wide, narrow)
        calls.clear()
        used = torch.full_like(wide, float("nan"))
        assert cpu_decoder.upscale_prompt(*args, hw, used, bf16=bf16)
        if bf16 and cpu_decoder.amx_available():  # the bf16 products on AMX tiles instead (test_amx_products_...)
            assert calls == [flags | cpu_decoder.WIDE | cpu_decoder.AMX]
            continue
        assert calls == [flags | cpu_decoder.WIDE]
        assert torch.equal(used, wide)


@needs_kernel
def test_strided_first_product_inputs() -> None:
    """``a`` and ``s`` as row slices of wider buffers (the plan's reused buffer): read with their strides."""
    hw, k1, c4, c8 = (4, 6), 10, 8, 8
    a, b, c, s, ln, w2t, b2, hyper = _inputs(torch.Generator().manual_seed(5), hw, k1, c4, c8, 3)
    wide_a = torch.cat([a, torch.full((a.shape[0], 3), float("nan"))], dim=1)[:, :k1]
    wide_s = torch.cat([s, torch.full((s.shape[0], 8), float("nan"))], dim=1)[:, : 4 * c4]
    got = torch.empty((3, 16, 24))
    assert cpu_decoder.upscale_prompt(wide_a, b, c, wide_s, ln, w2t, b2, hyper, hw, got)
    want = cpu_decoder.reference(a, b, c, s, ln, w2t, b2, hyper, hw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5 * float(want.abs().max()))


@needs_kernel
def test_gelu_accuracy() -> None:
    """The kernel's GELU against float64, in float32 units of max(1, |GELU|): within 2x of torch's own error for
    x >= -2; below, where 1 + erf cancels, at most 10 units (1.2e-6 absolute; torch's: 2.2)."""
    lib = cpu_decoder._library()
    x = torch.cat([torch.linspace(-12, 12, 2**20), torch.randn(2**18, generator=torch.Generator().manual_seed(1)) * 3])
    y = torch.empty_like(x)
    lib.geosam_gelu(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()), 0)
    exact = F.gelu(x.double())
    unit = torch.finfo(torch.float32).eps * exact.abs().clamp_min(1.0)
    ours, theirs = (y.double() - exact).abs() / unit, (F.gelu(x).double() - exact).abs() / unit
    right = x >= -2
    assert float(ours[right].max()) <= 2 * max(1.0, float(theirs[right].max()))
    assert float(ours.max()) <= 10


@needs_kernel
def test_fast_gelu_accuracy() -> None:
    """The bf16 dtype's GELU (cpu_gelu.h's FAST_GELU: no division, 1.9x faster) within 6e-5 of the exact GELU
    (of |GELU| where that is above 1) and within 6e-4 of |GELU| where that is above 0.1 (a bf16 number's spacing is 3.9e-3 of it), equal
    to its torch reference to float rounding, NaN for NaN, +inf for +inf, 0 for -inf (torch's: NaN)."""
    lib = cpu_decoder._library()
    x = torch.cat([torch.linspace(-30, 30, 2**20), torch.randn(2**18, generator=torch.Generator().manual_seed(1)) * 3,
                   torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 3e38])])
    x = torch.cat([x, x.new_zeros((-x.numel()) % 8)])
    y = torch.empty_like(x)
    lib.geosam_gelu(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()), 1)
    finite = x.isfinite()
    exact = F.gelu(x[finite].double())
    err = (y[finite].double() - exact).abs()
    assert float((err / exact.abs().clamp_min(1.0)).max()) <= 6e-5
    assert float((err / exact.abs().clamp_min(0.1)).max()) <= 6e-4
    # to float32 rounding: near the clamp P's terms (up to ~20) cancel to ~0.24, so FMA or not moves ~2.5e-5
    torch.testing.assert_close(y, fast_gelu_reference(x), rtol=1e-6, atol=5e-5, equal_nan=True)
    assert bool(y[~finite][0].isnan()) and y[~finite][1:].tolist() == [float("inf"), 0.0]
    # not the exact GELU's bits (so the bf16 upscaling's references take this one)
    assert float((y[finite].double() - F.gelu(x[finite]).double()).abs().max()) > 1e-6


def test_shapes_and_dtypes_it_does_not_take_are_left_to_torch() -> None:
    hw = (2, 3)
    args = _inputs(torch.Generator().manual_seed(2), hw, 5, 8, 4, 2)  # C8 = 4: not a multiple of 8
    out = torch.empty((2, 8, 12))
    assert not cpu_decoder.upscale_prompt(*args, hw, out)
    args = _inputs(torch.Generator().manual_seed(2), hw, 5, 8, 8, 2)
    as64 = [t.double() if isinstance(t, torch.Tensor) else t for t in args]
    as64[4] = tuple(t.double() if isinstance(t, torch.Tensor) else t for t in args[4])
    assert not cpu_decoder.upscale_prompt(*as64, hw, out.double())
    assert not cpu_decoder.upscale_prompt(*args, hw, torch.empty((2, 12, 8)))  # wrong output shape


@needs_kernel
def test_decoder_masks_with_and_without_the_kernel(monkeypatch) -> None:
    """SAM's decoder sizes, prompts decoded on one image: the kernel runs once per upscaled prompt, and its masks
    and IoUs are the torch path's to rounding (the sign of every logit away from zero the same)."""
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=2)
    from geosam.models import fast_upscale

    calls = []
    real = cpu_decoder.upscale_prompt

    def spy(*a, **k):
        done = real(*a, **k)
        calls.append(done)
        return done

    monkeypatch.setattr(fast_upscale, "upscale_prompt", spy)
    with_kernel = gm.decode_points(bundle, emb, pts)
    assert calls == [True] * 9
    monkeypatch.setattr(fast_upscale, "upscale_prompt", lambda *a, **k: False)
    without = gm.decode_points(bundle, emb, pts)
    (ml, il), (tl, ti) = with_kernel, without
    scale = float(tl.abs().max())
    torch.testing.assert_close(ml, tl, rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(il, ti)  # the IoUs come from the transformer alone
    clear = tl.abs() > 1e-4 * scale
    assert torch.equal((ml > 0)[clear], (tl > 0)[clear])


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True])
def test_rows_made_in_the_pass_are_the_rows_made_whole(bf16: bool, monkeypatch) -> None:
    """The decoder hands the upscaling its first product's rows as the records they are made from
    (`cpu_decoder.Factors`: made block by block in the C pass): the masks the pass writes from the rows made whole
    (`factor_rows`), bit for bit, in either dtype; where the pass refuses the records, the rows are made whole for
    torch's products (the masks to rounding)."""
    import dataclasses

    from geosam.models import fast_upscale
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=3)
    if bf16:
        bundle = dataclasses.replace(bundle, dtype=torch.bfloat16)
    kinds = []
    real = cpu_decoder.upscale_prompt

    def spy(a, *args, **kw):
        kinds.append(type(a).__name__)
        return real(a, *args, **kw)

    monkeypatch.setattr(fast_upscale, "upscale_prompt", spy)
    made = gm.decode_points(bundle, emb, pts)
    assert kinds == ["Factors"] * 9
    kinds.clear()

    def rows_first(a, b, c, *args, **kw):  # the rows made whole, then the same pass
        rows = torch.empty((a.records[0][0].shape[1], len(a.records) * (a.records[0][0].shape[2] + 2)))
        return real(rows, b, cpu_decoder.factor_rows(a.records, a.i, rows), *args, **kw)

    monkeypatch.setattr(fast_upscale, "upscale_prompt", rows_first)
    whole = gm.decode_points(bundle, emb, pts)
    assert torch.equal(made[0], whole[0]) and torch.equal(made[1], whole[1])

    def refuse(a, *args, **kw):
        kinds.append(type(a).__name__)
        return False

    monkeypatch.setattr(fast_upscale, "upscale_prompt", refuse)
    torch_path = gm.decode_points(bundle, emb, pts)
    assert kinds == ["Factors"] * 9
    scale = float(torch_path[0].abs().max())
    torch.testing.assert_close(made[0], torch_path[0], rtol=2e-2 if bf16 else 1e-5, atol=(2e-2 if bf16 else 1e-5) * scale)
    assert torch.equal(made[1], torch_path[1])


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_upscaling_from_records_is_the_upscaling_of_the_rows(threads: int) -> None:
    """`upscale_prompt` given `Factors` (a prompt's records) writes the masks it writes given the rows `factor_rows`
    makes from them, bit for bit: every path this CPU has (AVX2, AVX-512, bf16 products, AMX), blocks' tails, one
    and several layers."""
    gen = torch.Generator().manual_seed(17)
    paths = [False] + ([True] if cpu_decoder.bf16_products() else [])
    for hw, nl, r, nk in (((64, 64), 2, 56, 3), ((5, 7), 1, 11, 2), ((3, 3), 3, 2, 4)):
        p, k1 = hw[0] * hw[1], nl * (r + 2)
        _, b, _, s, ln, w2t, b2, hyper = _inputs(gen, hw, k1, 64, 32, nk)
        records = [(torch.rand((3, p, r), generator=gen), torch.empty(0), torch.randn((3, p), generator=gen),
                    torch.rand((3, p), generator=gen) + 0.5) for _ in range(nl)]  # fmt: skip
        a = torch.full((p, k1), float("nan"))
        c = cpu_decoder.factor_rows(records, 2, a)
        for bf16 in paths:
            whole, made = (torch.full((nk, 4 * hw[0], 4 * hw[1]), float("nan")) for _ in range(2))
            rest = (s, ln, w2t, b2, hyper, hw)
            run = functools.partial(_whole_and_made, (a, b, c), (cpu_decoder.Factors(records, 2), b, None), rest,
                                    (whole, made), bf16)  # fmt: skip
            assert (run() if threads == 1 else _with_two_threads(run)) == (True, True)
            assert not torch.isnan(made).any() and torch.equal(made, whole)


def _whole_and_made(rows: tuple, factors: tuple, rest: tuple, outs: tuple, bf16: bool) -> tuple[bool, bool]:
    """`upscale_prompt` on the rows made whole and on their records, into ``outs``."""
    done = [cpu_decoder.upscale_prompt(*first, *rest, out, bf16=bf16) for first, out in zip((rows, factors), outs, strict=True)]
    return done[0], done[1]


needs_bf16 = pytest.mark.skipif(
    not (_in_use() and cpu_decoder.bf16_available()), reason="bf16 products only on CPUs with AVX-512 BF16"
)


@needs_bf16
@pytest.mark.parametrize(
    ("hw", "k1", "c4", "c8", "nk"),
    [((64, 64), 116, 64, 32, 3), ((7, 5), 13, 16, 8, 1), ((3, 11), 40, 8, 16, 4), ((1, 1), 1, 8, 8, 2)],
)
def test_bf16_products_are_torchs_on_bf16_inputs(hw, k1: int, c4: int, c8: int, nk: int) -> None:
    """With ``bf16``: torch's masks with the two products' inputs rounded to bf16 (within `BF16_TOLERANCE` of their
    scale), not float32's (the products ran in bf16), every pixel written, the same bits with 1 and 2 threads."""
    args = _inputs(torch.Generator().manual_seed(k1), hw, k1, c4, c8, nk)
    got, two = (torch.full((nk, 4 * hw[0], 4 * hw[1]), float("nan")) for _ in range(2))
    assert cpu_decoder.upscale_prompt(*args, hw, got, bf16=True)
    _assert_bf16_products(got, args, hw)
    assert _with_two_threads(lambda: cpu_decoder.upscale_prompt(*args, hw, two, bf16=True))
    assert torch.equal(two, got)


needs_amx = pytest.mark.skipif(
    not (_in_use() and cpu_decoder.amx_available()), reason="AMX tiles only on CPUs with AMX (Intel Xeon)"
)


@needs_amx
@pytest.mark.parametrize(
    ("hw", "k1", "c4", "c8", "nk"),
    [((64, 64), 116, 64, 32, 3), ((7, 5), 13, 16, 8, 1), ((3, 11), 40, 8, 24, 4), ((1, 1), 1, 8, 8, 2),
     ((5, 9), 70, 40, 16, 2)],
)
def test_amx_products_are_torchs_on_bf16_inputs(hw, k1: int, c4: int, c8: int, nk: int, monkeypatch) -> None:
    """On CPUs with AMX the bf16 dtype's upscaling products run on AMX tiles (blocks of 16 positions and their
    tails, inner sizes padded to 32, 64- and 32-column tiles): torch's masks on bf16 inputs within `BF16_TOLERANCE`,
    not float32's, every pixel written, the same bits with 1 and 2 threads; upscale_prompt asks for them with
    ``bf16`` only."""
    lib = cpu_decoder._library()
    args = _inputs(torch.Generator().manual_seed(k1 + 2), hw, k1, c4, c8, nk)
    flags = cpu_decoder.BF16 | cpu_decoder.WIDE | cpu_decoder.AMX
    got, two = (torch.full((nk, 4 * hw[0], 4 * hw[1]), float("nan")) for _ in range(2))
    cpu_decoder._call(lib, *args, hw, got, flags)
    _assert_bf16_products(got, args, hw)
    _with_two_threads(lambda: cpu_decoder._call(lib, *args, hw, two, flags))
    assert torch.equal(two, got)
    real, calls = cpu_decoder._call, []
    monkeypatch.setattr(cpu_decoder, "_call", lambda *a: calls.append(a[-1]) or real(*a))
    for bf16 in (True, False):
        used = torch.full_like(got, float("nan"))
        assert cpu_decoder.upscale_prompt(*args, hw, used, bf16=bf16)
        if bf16:
            assert torch.equal(used, got)
    assert calls == [flags, cpu_decoder.WIDE]


@needs_bf16
def test_bf16_dtype_decodes_with_bf16_upscaling(monkeypatch) -> None:
    """A bf16 bundle's decoder asks for the bf16 products (a float32 one does not); its IoUs are float32's (the
    transformer runs in float32; to bf16's rounding where its final attention runs on AMX tiles:
    tests/test_cpu_heads.py) and its logits float32's to the products' rounding, the same sign where clear."""
    import dataclasses

    from geosam.models import fast_upscale
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=2)
    asked = []
    real = cpu_decoder.upscale_prompt

    def spy(*a, bf16=False, **k):
        asked.append(bf16)
        return real(*a, bf16=bf16, **k)

    monkeypatch.setattr(fast_upscale, "upscale_prompt", spy)
    ml, il = gm.decode_points(dataclasses.replace(bundle, dtype=torch.bfloat16), emb, pts)
    assert asked == [True] * 9
    asked.clear()
    tl, ti = gm.decode_points(bundle, emb, pts)
    assert asked == [False] * 9
    from geosam.models import cpu_heads, cpu_weights

    if cpu_heads.amx_available() or cpu_weights.amx_available():
        torch.testing.assert_close(il, ti, rtol=0, atol=1e-2 * float(ti.abs().max()))
    else:
        assert torch.equal(il, ti)
    scale = float(tl.abs().max())
    assert 1e-5 * scale < float((ml - tl).abs().max()) <= 2e-2 * scale
    clear = tl.abs() > 2e-2 * scale
    assert torch.equal((ml > 0)[clear], (tl > 0)[clear])


@needs_kernel
@pytest.mark.parametrize(("n", "ri", "rj", "p"), [(4, 56, 56, 4096), (2, 7, 9, 50), (1, 5, 5, 24), (3, 1, 3, 1)])
def test_quadratic_forms_match_torch(n: int, ri: int, rj: int, p: int) -> None:
    """The layer norms' quadratic forms: general (R x R') and symmetric (half visited), SAM's sizes and odd ones
    (the last position block partial or alone), 1 and 2 threads the same."""
    gen = torch.Generator().manual_seed(ri * p)
    left, right = torch.rand((n, ri, p), generator=gen), torch.rand((n, rj, p), generator=gen)
    v = torch.randn((n, ri, 16), generator=gen)
    gram = v @ torch.randn((n, rj, 16), generator=gen).transpose(1, 2)
    got = cpu_decoder.quad(gram, left, right)
    assert got is not None and got.shape == (n, p)
    want = cpu_decoder.quad_reference(gram, left, right)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))  # sums that cancel
    if ri == rj:
        sym = v @ v.transpose(1, 2)
        got = cpu_decoder.quad(sym, left, left, symmetric=True)
        assert got is not None
        want = cpu_decoder.quad_reference(sym, left, left)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
        assert torch.equal(_with_two_threads(lambda: cpu_decoder.quad(sym, left, left, symmetric=True)), got)


@needs_wide
@pytest.mark.parametrize(("n", "r", "p"), [(16, 56, 4096), (2, 7, 50), (3, 13, 47), (1, 5, 97), (2, 1, 16)])
def test_avx512_quadratic_forms_are_the_avx2_bits(n: int, r: int, p: int, monkeypatch) -> None:
    """On AVX-512 CPUs the quadratic forms run 48 positions a block in 16-lane registers (the last block partial,
    masked), each position the same FMAs in the same order as in 8 lanes: the same bits, general and symmetric;
    `quad` uses them."""
    assert cpu_decoder.wide_available()
    lib = cpu_decoder._library()
    gen = torch.Generator().manual_seed(r * p)
    left, right = torch.rand((n, r, p), generator=gen), torch.rand((n, r, p), generator=gen)
    gram = torch.randn((n, r, r), generator=gen)
    upper = cpu_decoder._upper(gram @ gram.transpose(1, 2)).contiguous()
    for args in ((lib, gram, left, right, False), (lib, upper, left, left, True)):
        narrow, wide = cpu_decoder._call_quad(*args), cpu_decoder._call_quad(*args, wide=True)
        assert not bool(wide.isnan().any()) and torch.equal(wide, narrow)
    real, flags = cpu_decoder._call_quad, []
    monkeypatch.setattr(cpu_decoder, "_call_quad", lambda *a: flags.append(a[-1]) or real(*a))
    assert torch.equal(cpu_decoder.quad(gram, left, right), cpu_decoder._call_quad(lib, gram, left, right, False))
    assert flags[0] is True


def test_quadratic_forms_left_to_torch_off_the_cpu_float32_path() -> None:
    x = torch.rand((1, 3, 10), dtype=torch.float64)
    assert cpu_decoder.quad(torch.eye(3, dtype=torch.float64)[None], x, x) is None


@needs_kernel
@pytest.mark.parametrize(("n", "nh", "nt", "p"), [(8, 8, 7, 4096), (2, 3, 1, 72), (1, 2, 8, 8), (3, 5, 4, 136)])
def test_token_softmax_is_torchs_and_transposes(n: int, nh: int, nt: int, p: int) -> None:
    """The softmax over the tokens gives torch.softmax(dim=2)'s bits where torch runs its AVX2 kernels (its AVX-512
    ones treat positions past the last 16 otherwise: there to an ulp), wide ranges, ties, -inf-free, and the
    transposed record (N, P, h*T) is exactly the weights written; positions past a block of 64 included."""
    s = torch.randn((n, nh, nt, p), generator=torch.Generator().manual_seed(nt)) * torch.logspace(-2, 2, p)
    s[..., :4] = 3.0  # ties
    before = torch.get_num_threads()
    try:  # one thread: torch's threads split the positions anywhere, and it runs a split's ends with the scalar exp
        torch.set_num_threads(1)
        want = torch.softmax(s, dim=2)
    finally:
        torch.set_num_threads(before)
    pt = torch.full((n, p, nh * nt), float("nan"))
    got = cpu_decoder.token_softmax(s.clone(), pt)
    assert got is not None
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        assert torch.equal(got, want)
    else:
        assert torch.allclose(got, want, rtol=3e-7, atol=0.0)
    assert torch.equal(pt, got.flatten(1, 2).transpose(1, 2))
    assert torch.equal(cpu_decoder.token_softmax(s.clone()), got)  # without the transposed record


@needs_kernel
@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="no AVX-512 here")
@pytest.mark.parametrize(("n", "nh", "nt", "p"), [(4, 8, 7, 4096), (2, 3, 8, 72), (1, 2, 1, 24), (3, 5, 4, 136)])
def test_token_softmax_in_16_lanes_is_the_8_lane_one_bit_for_bit(n: int, nh: int, nt: int, p: int) -> None:
    """16 positions a step where the CPU has AVX-512 (and 8-wide ends: 72, 24, 136 positions), the weights and the
    transposed record the 8-lane path's bits, NaN and infinite scores included (bits compared, NaN's too)."""
    assert cpu_decoder.wide_available()
    s = torch.randn((n, nh, nt, p), generator=torch.Generator().manual_seed(p)) * torch.logspace(-2, 2, p)
    s[0, 0, :, 5] = float("nan")
    s[-1, -1, 0, 9] = float("inf")
    s[0, -1, -1, 17] = float("-inf")
    lib = cpu_decoder._library()
    got = []
    for wide in (False, True):
        out, pt = torch.full_like(s, 7.0), torch.full((n, p, nh * nt), 7.0)
        cpu_decoder._call_token_softmax(lib, s, out, pt, wide)
        got.append((out.view(torch.int32), pt.view(torch.int32)))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


def test_token_softmax_left_to_torch_where_it_does_not_fit() -> None:
    assert cpu_decoder.token_softmax(torch.rand((1, 2, 9, 8))) is None  # more than 8 tokens
    assert cpu_decoder.token_softmax(torch.rand((1, 2, 3, 12))) is None  # positions not a multiple of 8
    assert cpu_decoder.token_softmax(torch.rand((1, 2, 3, 8), dtype=torch.float64)) is None
    assert cpu_decoder.token_softmax(torch.rand((1, 8, 2, 3)).transpose(1, 3)) is None  # not contiguous
    assert cpu_decoder.token_softmax(torch.rand((1, 2, 3, 8)), torch.empty((1, 8, 5))) is None  # wrong record


def test_decoder_weights_are_the_same_with_and_without_the_token_softmax(monkeypatch, call_results) -> None:
    """The decoder's image -> token softmax through the kernel or torch (with torch's transposes): the same masks
    and IoUs, bit for bit where the kernel runs (it reproduces torch's softmax), else the torch path both times."""
    from geosam.models import fast_twoway
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=4, prompts=gm.FAST_DECODER_CPU_CHUNK + 1)  # one more than a call takes
    results = call_results(fast_twoway, "token_softmax")
    with_kernel = gm.decode_points(bundle, emb, pts)
    calls = [got is not None for got in results]
    assert len(calls) == 4 and all(c == _in_use() for c in calls)  # 2 decoder calls x 2 layers
    monkeypatch.setattr(fast_twoway, "token_softmax", lambda *a, **k: None)
    without = gm.decode_points(bundle, emb, pts)
    assert torch.equal(with_kernel[0], without[0]) and torch.equal(with_kernel[1], without[1])


@needs_kernel
def test_factor_rows_are_torchs_bits() -> None:
    """The upscaling's factored rows A of one prompt (SAM: two layers, 8 heads x 7 tokens) in one C pass: the bits of
    the torch ops they replace, for every prompt of a chunk; float64 records take the torch ops."""
    gen = torch.Generator().manual_seed(11)
    n, p, r = 3, 4096, 56
    records = [(torch.rand((n, p, r), generator=gen), torch.empty(0), torch.randn((n, p), generator=gen),
                torch.rand((n, p), generator=gen) + 0.5) for _ in range(2)]
    for i in range(n):
        got, want = torch.full((p, 2 * (r + 2)), float("nan")), torch.zeros((p, 2 * (r + 2)))
        c = cpu_decoder.factor_rows(records, i, got)
        assert torch.equal(c, cpu_decoder.factor_rows_reference(records, i, want))
        assert torch.equal(got, want)
        assert torch.equal(c, records[1][3][i] * records[0][3][i])
        assert torch.equal(got[:, -1], torch.ones(p))
    as64 = [tuple(t.double() for t in rec) for rec in records]
    a64 = torch.zeros((p, 2 * (r + 2)), dtype=torch.float64)
    assert torch.equal(cpu_decoder.factor_rows(as64, 0, a64), as64[1][3][0] * as64[0][3][0])
