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
        (32, 32, 3, 64, 0, True),  # a global layer: 1024 keys, whole panels, 43 blocks of 24 queries
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


@needs_kernel
def test_same_bits_at_any_thread_count() -> None:
    """Each head's block of queries is computed the same way whichever thread takes it: the embeddings of a run do
    not depend on its thread count (Dask workers with other counts give the same objects)."""
    qkv, _, tables = _case(40, 40, 4, 64, 0, seed=9)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.empty((40, 40, 256))
            assert cpu_attention.attention(qkv, 4, 0.125, transposed_tables(*tables), out)
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


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
    calls = count_calls(cpu_attention, "_call")
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    fast = fast_encoder.fast_image_embeddings(model, pixels, torch.float32)
    assert len(calls) == 3 * 2  # 3 layers (2 windowed, 1 global) x 2 images
    assert float((fast - stock).norm() / stock.norm()) < 1e-5
