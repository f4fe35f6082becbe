"""geosam.models.cpu_convert: the bf16 encoder's roundings to bf16 and widening adds in one pass, torch's bits."""

from __future__ import annotations

import pytest
import torch

from geosam.models import cpu_convert
from geosam.models.device import cpu_flags

needs_kernel = pytest.mark.skipif(not cpu_convert.available(), reason="the passes run on AVX-512 CPUs only")


def _software_rounding(x: torch.Tensor) -> torch.Tensor:
    """ATen's vectorised float32 -> bf16 rule in integer arithmetic: + 0x7fff + the kept part's lowest bit, NaN 0xffff."""
    u = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return torch.where(torch.isnan(x), 0xFFFF, r).to(torch.int32).to(torch.int16)


def test_in_use_on_avx512_cpus_where_the_other_kernels_are() -> None:
    """Wherever the decoder's kernels run, the CPU has AVX-512 and torch rounds to bf16 by ATen's integer rule (what
    the kernel reproduces), these passes run too (else bf16 silently loses them); nowhere else."""
    from geosam.models import cpu_decoder

    x = cpu_convert._check_values()
    torch_rule = torch.equal(x.to(torch.bfloat16).view(torch.int16), _software_rounding(x))
    assert cpu_convert.available() == (cpu_decoder.available() and "avx512f" in cpu_flags() and torch_rule)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_to_bf16_is_torchs_rounding(threads: int) -> None:
    """Ties to even both ways, overflow to infinity, NaN, subnormals, signed zeros, and 1.5 M random values (past the
    size where the pass splits across threads)."""
    gen = torch.Generator().manual_seed(3)
    special = cpu_convert._check_values()
    x = torch.cat([special, torch.randn(3 * 2**19, generator=gen) * 100]).reshape(-1, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = cpu_convert.to_bf16(x)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    assert torch.equal(got.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))


@needs_kernel
def test_add_bf16_is_torchs_mixed_add_in_place() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn((64, 64, 768), generator=gen)
    h = (torch.randn((64, 64, 768), generator=gen) * 3).to(torch.bfloat16)
    want = x.clone().add_(h)
    out = cpu_convert.add_bf16_(x, h)
    assert out is x
    assert torch.equal(x.view(torch.int32), want.view(torch.int32))


def test_other_inputs_go_to_torch() -> None:
    """Non-contiguous, sizes not a multiple of 16, other dtypes: torch's own ops, the same results."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((40, 30), generator=gen)
    assert torch.equal(cpu_convert.to_bf16(x.t()), x.t().to(torch.bfloat16))
    odd = torch.randn(17, generator=gen)
    assert torch.equal(cpu_convert.to_bf16(odd), odd.to(torch.bfloat16))
    half = torch.randn((4, 16), generator=gen).half()
    acc = torch.randn((4, 16), generator=gen)
    want = acc.clone().add_(half)
    assert torch.equal(cpu_convert.add_bf16_(acc, half), want)
    xs = torch.randn((16, 32), generator=gen)
    hs = torch.randn((32, 16), generator=gen).to(torch.bfloat16).t()  # non-contiguous
    assert torch.equal(cpu_convert.add_bf16_(xs.clone(), hs), xs.clone().add_(hs))


def test_bf16_encoder_has_the_same_bits_with_and_without_the_passes(monkeypatch) -> None:
    """The low-precision layers with these passes, the projections outside autocast (`cpu_gemm.linear_low`) and the
    padded tokens' q, k, v from the rounded bias (no product of a row of zeros) give the embeddings of autocast's
    linear, torch's casts and adds bit for bit."""
    from geosam.models import cpu_gemm
    from geosam.models import fast_encoder as fe
    from tests.test_fast_encoder import _vit

    model = _vit(seed=21, heads=2)
    pixels = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(22))
    monkeypatch.setenv("GEOSAM_CPU_BF16", "amx" if "amx_bf16" in cpu_flags() else "avx512_bf16")
    fast = fe.fast_image_embeddings(model, pixels, torch.bfloat16)
    monkeypatch.setattr(fe, "_low", lambda module, x, dtype: module(x))  # under autocast
    monkeypatch.setattr(fe, "add_bf16_", lambda a, b: a.add_(b))
    monkeypatch.setattr(fe, "norm_low", lambda norm, x, dtype: norm(x))
    monkeypatch.setattr(fe, "add_norm_low", lambda x, h, norm, dtype: norm(x.add_(h)))
    monkeypatch.setattr(fe, "_zeros_projected", lambda lin, dt: lin(torch.zeros((1, lin.in_features)))[0])
    monkeypatch.setattr(cpu_gemm, "_rounded", lambda t, dtype: t.to(dtype))
    assert torch.equal(fe.fast_image_embeddings(model, pixels, torch.bfloat16), fast)


def test_a_padded_tokens_projection_is_the_rounded_bias() -> None:
    """A window's padded token (zeros) through the bf16 qkv projection: its bias rounded, as autocast's product of a
    row of zeros gives it (a -0.0 bias included: +0 either way); a module that is not a plain ``nn.Linear`` runs."""
    from geosam.models.fast_encoder import _zeros_projected

    class Shifted(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1

    torch.manual_seed(6)
    plain, shifted, no_bias = torch.nn.Linear(8, 24), Shifted(8, 24), torch.nn.Linear(8, 24, bias=False)
    with torch.no_grad():
        plain.bias[:2] = torch.tensor([-0.0, 1.0 + 2.0**-12])  # a signed zero, a tie to even in bf16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for module in (plain, shifted, no_bias):
            want = module(torch.zeros((1, 8)))[0]
            got = _zeros_projected(module, torch.bfloat16)
            assert got.dtype == want.dtype and torch.equal(got.view(torch.int16), want.view(torch.int16))


@needs_kernel
def test_layer_norm_kernel_is_in_use_where_the_passes_are() -> None:
    """The fused norm gives torch's bits on this machine (else the bf16 encoder silently loses it): torch normalises
    with the same AVX2 kernel wherever these passes run."""
    assert cpu_convert._layer_norm_agrees()


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("shape", "eps"), [((1, 64, 64, 768), 1e-6), ((3, 5, 1280), 1e-5), ((7, 2048), 1e-6), ((4, 48), 1e-3)]
)
def test_layer_norm_bf16_is_torchs_norm_then_rounding(threads: int, shape: tuple[int, ...], eps: float) -> None:
    """``layer_norm_bf16(x, norm)`` holds ``norm(x).to(torch.bfloat16)`` bit for bit (a ViT-B encoder's map, a ViT-H's
    width, a cascade of 16 of torch's chunks, a row shorter than one), rows on large offsets, one and two threads."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * 3 + torch.randn((*shape[:-1], 1), generator=gen) * 50
    norm = torch.nn.LayerNorm(shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=gen) * 0.5 + 1)
        norm.bias.copy_(torch.randn(shape[-1], generator=gen))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            got = cpu_convert.layer_norm_bf16(x, norm)
            want = norm(x).to(torch.bfloat16)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == x.shape
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_layer_norm_bf16_leaves_what_it_does_not_take_to_the_caller() -> None:
    """None (the caller runs the module) for widths that are not a multiple of 16, norms without an affine part,
    other modules, non-contiguous or float64 inputs, and inputs that need gradients."""
    x = torch.randn(4, 32)
    assert cpu_convert.layer_norm_bf16(torch.randn(4, 40), torch.nn.LayerNorm(40)) is None
    assert cpu_convert.layer_norm_bf16(x, torch.nn.LayerNorm(32, elementwise_affine=False)) is None
    assert cpu_convert.layer_norm_bf16(x, torch.nn.RMSNorm(32)) is None
    assert cpu_convert.layer_norm_bf16(torch.randn(32, 4).t(), torch.nn.LayerNorm(32)) is None
    assert cpu_convert.layer_norm_bf16(x.double(), torch.nn.LayerNorm(32).double()) is None
    assert cpu_convert.layer_norm_bf16(x.requires_grad_(), torch.nn.LayerNorm(32)) is None


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 64, 64, 768), (3, 5, 1280), (6, 48)])
def test_add_layer_norm_bf16_is_torchs_add_then_norm_then_rounding(threads: int, shape: tuple[int, ...]) -> None:
    """``add_layer_norm_bf16_(x, h, norm)`` leaves ``x.add_(h)`` in ``x`` and returns ``norm(x).to(torch.bfloat16)``,
    bit for bit, in one pass (rows in whole and partial groups of four, one and two threads); the kernel is in use."""
    assert cpu_convert._add_layer_norm_agrees()
    gen = torch.Generator().manual_seed(len(shape) + 10)
    x = torch.randn(shape, generator=gen) * 3 + torch.randn((*shape[:-1], 1), generator=gen) * 50
    h = (torch.randn(shape, generator=gen) * 4).to(torch.bfloat16)
    norm = torch.nn.LayerNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=gen) * 0.5 + 1)
        norm.bias.copy_(torch.randn(shape[-1], generator=gen))
    want_x = x.clone().add_(h)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            got = cpu_convert.add_layer_norm_bf16_(x, h, norm)
            want = norm(want_x).to(torch.bfloat16)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == x.shape
    assert torch.equal(x.view(torch.int32), want_x.view(torch.int32))
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_add_layer_norm_bf16_leaves_what_it_does_not_take_to_the_caller() -> None:
    """None and ``x`` untouched (the caller adds and normalises) for an addend of another dtype or shape, or a norm
    `layer_norm_bf16` does not take; `add_norm_low` then gives the same results through the separate passes."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn((4, 32), generator=gen)
    h = torch.randn((4, 32), generator=gen).to(torch.bfloat16)
    before = x.clone()
    for hh, norm in ((h.float(), torch.nn.LayerNorm(32)), (h[:2], torch.nn.LayerNorm(32)), (h, torch.nn.RMSNorm(32))):
        assert cpu_convert.add_layer_norm_bf16_(x, hh, norm) is None
        assert torch.equal(x, before)
    norm = torch.nn.LayerNorm(32)
    with torch.no_grad():
        got = cpu_convert.add_norm_low(x, h, norm, torch.bfloat16)
        assert torch.equal(x, before.add(h))
        assert torch.equal(got, norm(x).to(torch.bfloat16))
        assert torch.equal(cpu_convert.add_norm_low(x, h.float(), norm, torch.float32), norm(x))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("dtype", "shared"), [(torch.bfloat16, True), (torch.float32, True), (torch.bfloat16, False)])
def test_upsample2_add_bf16_is_torchs_upsample_add_and_rounding(threads: int, dtype: torch.dtype, shared: bool) -> None:
    """``upsample2_add_bf16(prev, feat)`` holds ``(F.interpolate(prev, size=feat.shape[-2:], mode="nearest") +
    feat).to(torch.bfloat16)`` bit for bit, channels-last as torch's result (SAM 3's pixel decoder levels: a feature
    shared by the phrases' batch, or one each), one and two threads; the kernel is in use."""
    assert cpu_convert._upsample_add_agrees()
    gen = torch.Generator().manual_seed(12)
    last = torch.channels_last
    prev = (torch.randn((2, 64, 18, 18), generator=gen) * 30).to(dtype).contiguous(memory_format=last)
    feat = (torch.randn((1 if shared else 2, 64, 36, 36), generator=gen) * 3).contiguous(memory_format=last)
    feat = feat.expand(2, -1, -1, -1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = cpu_convert.upsample2_add_bf16(prev, feat)
    finally:
        torch.set_num_threads(before)
    want = (torch.nn.functional.interpolate(prev, size=(36, 36), mode="nearest") + feat).to(torch.bfloat16)
    assert got is not None and got.is_contiguous(memory_format=last) and want.is_contiguous(memory_format=last)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_upsample2_add_bf16_leaves_what_it_does_not_take_to_the_caller() -> None:
    """None for row-major (not channels-last) tensors, a float64 or bf16 feature, sizes that are not twice the level's
    and channels that are not a multiple of 16."""
    last = torch.channels_last
    prev = torch.randn((1, 16, 4, 4)).contiguous(memory_format=last)
    feat = torch.randn((1, 16, 8, 8)).contiguous(memory_format=last)
    assert cpu_convert.upsample2_add_bf16(prev.contiguous(), feat.contiguous()) is None
    assert cpu_convert.upsample2_add_bf16(prev, feat.double()) is None
    assert cpu_convert.upsample2_add_bf16(prev, feat.bfloat16()) is None
    assert cpu_convert.upsample2_add_bf16(prev, torch.randn((1, 16, 9, 8)).contiguous(memory_format=last)) is None
    assert cpu_convert.upsample2_add_bf16(torch.randn((1, 8, 4, 4)).contiguous(memory_format=last),
                                          torch.randn((1, 8, 8, 8)).contiguous(memory_format=last)) is None


# --- the rotary position embedding of SAM 3's ViT --------------------------------------------------------------------


def _rope_inputs(seed: int, nb: int, nh: int, n: int, d: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    ang = torch.rand((n, d // 2), generator=gen) * 30
    cos, sin = ang.cos().repeat_interleave(2, -1)[None], ang.sin().repeat_interleave(2, -1)[None]  # (1, n, d)
    proj = torch.randn((nb, n, nh * d), generator=gen) * 3
    return proj.to(dtype).view(nb, n, nh, d).transpose(1, 2), cos, sin  # (nb, nh, n, d), strided as in the ViT


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_transformers_formula(threads: int, dtype: torch.dtype) -> None:
    """The kernel's rotary embedding equals the module's formula bit for bit (strided rows, heads of 64 and 16, a
    window batch, and a map past the size where the pass splits across threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in ((9, 16, 576, 64), (2, 3, 7, 16), (1, 4, 300, 32)):
            x, cos, sin = _rope_inputs(sum(shape), *shape, dtype)
            got = cpu_convert.rope(x, cos, sin)
            assert got is not None and got.dtype == dtype and got.is_contiguous() and got.shape == x.shape
            want = cpu_convert.rope_reference(x, cos, sin)
            assert torch.equal(got, want), shape
    finally:
        torch.set_num_threads(old)


def test_rope_leaves_what_it_does_not_take_to_the_caller() -> None:
    x, cos, sin = _rope_inputs(0, 1, 2, 5, 24, torch.float32)  # 24: not whole vectors
    assert cpu_convert.rope(x, cos, sin) is None
    x, cos, sin = _rope_inputs(0, 1, 2, 5, 16, torch.float16)
    assert cpu_convert.rope(x, cos, sin) is None
    x, cos, sin = _rope_inputs(0, 1, 2, 5, 16, torch.float32)
    assert cpu_convert.rope(x, cos[:, :4], sin[:, :4]) is None  # tables of other tokens
    assert cpu_convert.rope(x[0], cos, sin) is None  # not (B, H, N, d)
