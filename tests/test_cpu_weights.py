"""geosam.models.cpu_weights: the token -> image attentions' softmax over the positions and its products in C,
torch's ops to float rounding."""

from __future__ import annotations

import pytest
import torch

from geosam.models import cpu_weights
from geosam.models.device import cpu_flags
from tests.test_cpu_decoder import needs_kernel


def test_kernel_in_use_where_the_decoder_kernels_are() -> None:
    """The same CPUs and builds as `geosam.models.cpu_decoder`'s kernels (else the decoder silently loses it)."""
    from geosam.models import cpu_decoder

    assert cpu_weights.available() == cpu_decoder.available()


def _inputs(n: int, nh: int, nt: int, r: int, d: int, p: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "s": torch.randn((n, nh, nt, p), generator=gen) * 6.0,  # peaked rows, as attention scores are
        "scale1": torch.rand((n, p), generator=gen) + 0.5,
        "scale2": torch.rand((n, p), generator=gen) + 0.5,
        "y": torch.randn((n, p), generator=gen),
        "x1": torch.rand((n, p, r), generator=gen),
        "x2": torch.randn((n, p, r), generator=gen),
        "v": torch.randn((nh, p, d), generator=gen),
    }


# what the decoder asks for: its second layer (scale, dot products, one prompt's matrix, the heads' values), its
# final attention (two scales, sums, two matrices, the heads' values), its first layer (the heads' values only)
_USES = {
    "second layer": ("scale1", "y", "x1", "v"),
    "final attention": ("scale1", "sum", "x1", "scale2", "x2", "v"),
    "first layer": ("v",),
}


@needs_kernel
@pytest.mark.parametrize("use", sorted(_USES))
@pytest.mark.parametrize(
    ("n", "nh", "nt", "r", "d", "p"),
    [(16, 8, 7, 56, 16, 4096), (16, 8, 4, 56, 16, 4096), (3, 2, 5, 24, 8, 528), (1, 3, 1, 8, 24, 16)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_softmax_products_match_torch(use: str, n: int, nh: int, nt: int, r: int, d: int, p: int, threads: int) -> None:
    """SAM's sizes (16 prompts, 8 heads, 7 or 4 tokens, 4096 positions) and odd ones: register tiles cut in rows and
    columns, blocks of positions ending mid-block (528), a single token, values wider than one tile (24)."""
    t = _inputs(n, nh, nt, r, d, p, seed=n * p + nt)
    kw = {k: t[k] for k in _USES[use] if k != "sum"}
    want_sum = "sum" in _USES[use]
    want = cpu_weights.softmax_products_reference(t["s"], want_sum=want_sum, **kw)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = cpu_weights.softmax_products(t["s"].clone(), want_sum=want_sum, **kw)
    finally:
        torch.set_num_threads(before)
    assert got is not None
    for name, a, b in zip(cpu_weights.WeightProducts._fields, got, want, strict=True):
        assert (a is None) == (b is None), name
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=name)


def test_softmax_products_left_to_torch_where_they_do_not_fit() -> None:
    """Sizes outside 8-wide vectors, another dtype, shapes that do not belong together: None, and the scores (used as
    scratch by the kernel) untouched."""
    t = _inputs(2, 2, 3, 16, 16, 48, seed=1)
    s = t["s"]
    keep = s.clone()
    assert cpu_weights.softmax_products(s[..., :44].contiguous(), v=t["v"][:, :44]) is None  # 44 positions
    assert cpu_weights.softmax_products(s, x1=t["x1"][..., :12].contiguous()) is None  # 12 columns
    assert cpu_weights.softmax_products(s.double(), v=t["v"].double()) is None
    assert cpu_weights.softmax_products(s, v=t["v"][:1]) is None  # one head's values for two heads
    assert cpu_weights.softmax_products(s, scale1=t["scale1"][:1]) is None  # one prompt's scale for two
    assert cpu_weights.softmax_products(s.transpose(2, 3), v=t["v"]) is None  # not contiguous
    assert torch.equal(s, keep)


def test_decoder_is_the_same_with_and_without_the_kernel(monkeypatch) -> None:
    """SAM's decoder sizes, prompts decoded on one image (all three attentions that use the kernel run): the masks
    and IoUs with it equal the torch path's (what every CPU without it runs) to rounding, the sign of every clear
    logit the same."""
    from geosam import models as gm
    from tests.test_fast_decoder import assert_same_decoding, sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=7)
    calls = []
    real = cpu_weights.softmax_products
    monkeypatch.setattr(cpu_weights, "softmax_products", lambda *a, **k: calls.append(1) or real(*a, **k))
    from geosam.models import fast_factored, fast_final, fast_twoway

    for module in (fast_factored, fast_final, fast_twoway):
        monkeypatch.setattr(module, "softmax_products", cpu_weights.softmax_products)
    with_kernel = gm.decode_points(bundle, emb, pts)
    if cpu_weights.available():
        assert calls and len(calls) % 3 == 0  # each chunk of prompts: the three attentions
    monkeypatch.setattr(cpu_weights, "_library", lambda: None)
    without = gm.decode_points(bundle, emb, pts)
    assert_same_decoding(with_kernel, without)


needs_avx512 = pytest.mark.skipif(
    not (cpu_weights.available() and "avx512f" in cpu_flags()), reason="no AVX-512 here (or the kernel not in use)"
)


@needs_avx512
def test_wide_products_are_in_use_where_the_cpu_has_avx512() -> None:
    assert cpu_weights.wide_available()


@needs_avx512
@pytest.mark.parametrize("use", sorted(_USES))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cols", [56, 40])
def test_wide_products_are_the_avx2_products_bit_for_bit(use: str, threads: int, cols: int) -> None:
    """The products' 16-column panels in AVX-512 registers (12 rows a tile, two panels at a time) give the AVX2 tiles'
    bits (SAM's sizes: 56 columns, a tile of 32 and one of 16 + 8 masked; 40: 32, then 8 in AVX2's tiles; 16-wide
    values), at either thread count."""
    t = _inputs(20, 8, 7, cols, 16, 528, seed=threads)
    kw = {k: t[k] for k in _USES[use] if k != "sum"}
    args = (kw.get("scale1"), kw.get("y"), "sum" in _USES[use], kw.get("x1"), kw.get("scale2"), kw.get("x2"), kw.get("v"))
    lib = cpu_weights._library()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        narrow = cpu_weights._call(lib, t["s"].clone(), *args)
        wide = cpu_weights._call(lib, t["s"].clone(), *args, wide=True)
    finally:
        torch.set_num_threads(before)
    assert narrow is not None and wide is not None
    for name, a, b in zip(cpu_weights.WeightProducts._fields, narrow, wide, strict=True):
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name


needs_amx = pytest.mark.skipif(not cpu_weights.amx_available(), reason="AMX tiles only on CPUs with AMX (Intel Xeon)")


def _final_inputs(n: int, nh: int, nt: int, r: int, d: int, p: int) -> tuple:
    """scores and the final attention's other inputs (scales, both layers' weights transposed, every head's values)"""
    gen = torch.Generator().manual_seed(n * p + nt + r)
    s = torch.randn((n, nh, nt, p), generator=gen) * 8.0
    sc1, sc2 = torch.rand((n, p), generator=gen) + 0.5, torch.rand((n, p), generator=gen) + 0.5
    x1, x2 = torch.randn((n, p, r), generator=gen), torch.randn((n, p, r), generator=gen)
    return s, sc1, x1, sc2, x2, torch.randn((nh, p, d), generator=gen)


@needs_amx
@pytest.mark.parametrize(
    ("n", "nh", "nt", "r", "d", "p"), [(16, 8, 4, 56, 16, 4096), (3, 8, 7, 56, 16, 288), (2, 6, 4, 72, 32, 96)]
)
def test_amx_products_are_the_reference_on_bf16_numbers(n: int, nh: int, nt: int, r: int, d: int, p: int) -> None:
    """With ``bf16`` on AMX tiles: the reference with the weights and matrices rounded to bf16 (sums float32), the
    same bits at 1, 2 and 3 threads, the scores left as they were; the rounding is really there (float32's products
    differ by far more). SAM's final attention first (4 tokens: 4 heads a tile, 56 columns), 7 tokens, 6 heads of 32."""
    s, sc1, x1, sc2, x2, v = _final_inputs(n, nh, nt, r, d, p)
    want = cpu_weights.softmax_products_reference(s, sc1, None, True, x1, sc2, x2, v, bf16=True)
    before, kept = torch.get_num_threads(), s.clone()
    got = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got.append(cpu_weights.softmax_products(s, sc1, None, True, x1, sc2, x2, v, bf16=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(s, kept)
    float32 = cpu_weights.softmax_products_reference(s, sc1, None, True, x1, sc2, x2, v)
    for name in ("sum", "x1", "x2", "v"):
        first, ref = getattr(got[0], name), getattr(want, name)
        scale = float(ref.abs().max())
        torch.testing.assert_close(first, ref, rtol=0, atol=1e-4 * scale)
        assert all(torch.equal(getattr(g, name), first) for g in got[1:])
        if name != "sum":  # the sum of the weights is float32's: nothing rounded
            assert float((getattr(float32, name) - ref).abs().max()) > 1e-3 * scale


@needs_amx
def test_products_the_amx_kernel_does_not_take_run_in_float32(monkeypatch) -> None:
    """``bf16`` where the AMX kernel does not run gives the float32 kernel's bits: a y (the two-way layers' form),
    positions not in whole blocks of 32 (48), more than 16 tokens, heads of 8 numbers, no AMX."""
    def both(args: tuple, y: torch.Tensor | None = None) -> None:
        s, sc1, x1, sc2, x2, v = args
        a = cpu_weights.softmax_products(s.clone(), sc1, y, True, x1, sc2, x2, v, bf16=True)
        b = cpu_weights.softmax_products(s.clone(), sc1, y, True, x1, sc2, x2, v)
        assert a is not None and b is not None
        assert all((u is None and w is None) or torch.equal(u, w) for u, w in zip(a, b, strict=True))

    args = _final_inputs(2, 8, 4, 56, 16, 64)
    both(args, y=torch.randn((2, 64)))
    for shape in ((2, 8, 4, 56, 16, 48), (1, 2, 17, 16, 16, 64), (2, 8, 4, 56, 8, 64)):
        both(_final_inputs(*shape))
    monkeypatch.setattr(cpu_weights, "amx_available", lambda: False)
    both(args)
