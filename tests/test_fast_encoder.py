"""geosam.models.fast_encoder: the same image embeddings as transformers' stock SAM ViT, without the bias matrix."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from geosam import models as gm
from geosam.models.compile import use_fast_decoder, use_fast_encoder
from geosam.models.fast_encoder import fast_encoder_supported, fast_image_embeddings
from tests._tiny_sam import seeded_sam_model


def _vit(use_rel_pos: bool = True, seed: int = 5, window_size: int = 6, heads: int = 4, hidden: int = 64):
    """A small SAM ViT: 256 px input (16 x 16 tokens), windows of 6 (padded to 18), one global layer; heads of
    ``hidden`` / ``heads`` numbers."""
    from transformers import SamConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=3,
        num_attention_heads=heads,
        mlp_dim=128,
        output_channels=32,
        image_size=256,
        window_size=window_size,
        global_attn_indexes=[1],
        use_rel_pos=use_rel_pos,
        initializer_range=0.05,
    )
    model = seeded_sam_model(SamConfig(vision_config=vision), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # rel-pos tables start at zero: give them weight so the test sees them
        for layer in model.vision_encoder.layers:
            # a padded window token's q, k, v are the qkv bias: give it weight (it starts at zero)
            layer.attn.qkv.bias.copy_(torch.randn(layer.attn.qkv.bias.shape, generator=gen))
            if layer.attn.use_rel_pos:
                layer.attn.rel_pos_h.copy_(torch.randn(layer.attn.rel_pos_h.shape, generator=gen))
                layer.attn.rel_pos_w.copy_(torch.randn(layer.attn.rel_pos_w.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def vit_and_pixels():
    model = _vit()
    pixels = torch.randn((2, 3, 256, 256), generator=torch.Generator().manual_seed(6))
    return model, pixels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_float32_equals_stock(vit_and_pixels) -> None:
    model, pixels = vit_and_pixels
    assert fast_encoder_supported(model)
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    fast = fast_image_embeddings(model, pixels, torch.float32)
    assert fast.shape == stock.shape == (2, 32, 16, 16)
    assert _rel(fast, stock) < 1e-5
    # the rel-pos tables matter here (the test would not see a mistake in them otherwise)
    no_rel = _vit(use_rel_pos=False)
    with torch.no_grad():
        assert _rel(no_rel.get_image_embeddings(pixels), stock) > 1e-2


def test_float32_one_head_at_a_time_equals_stock(vit_and_pixels, monkeypatch) -> None:
    """The global layers' path (one head, a block of queries at a time), forced on every layer of the small ViT,
    with blocks that do not divide the token count (torch's ops: the AVX-512 kernel switched off)."""
    from geosam.models import cpu_attention, encoder_attention

    model, pixels = vit_and_pixels
    monkeypatch.setattr(cpu_attention, "_library", lambda: None)
    monkeypatch.setattr(encoder_attention, "PER_HEAD_MIN_TOKENS", 0)
    monkeypatch.setattr(encoder_attention, "QUERY_CHUNK", 100)
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    assert _rel(fast_image_embeddings(model, pixels, torch.float32), stock) < 1e-5


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_float32_through_either_backend_equals_stock(vit_and_pixels, monkeypatch, onednn: str) -> None:
    """oneDNN's products (the default on AMD CPUs with AVX-512) and torch's (MKL: the default elsewhere)."""
    model, pixels = vit_and_pixels
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", onednn)
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    assert _rel(fast_image_embeddings(model, pixels, torch.float32), stock) < 1e-5


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_float32_large_intermediates_by_blocks_of_rows(vit_and_pixels, monkeypatch, onednn: str) -> None:
    """The qkv projection into the forward's buffer and the MLP by blocks of rows whose outputs stay below
    `cpu_gemm.ROW_BLOCK_BYTES` (a ViT-B's 38 and 50 MB would be fresh pages every layer): forced on the small ViT
    (rows of 192 and 128 floats, blocks of 1 KiB), the embeddings equal the whole products' to rounding and the
    stock forward's."""
    from geosam.models import cpu_gemm

    model, pixels = vit_and_pixels
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", onednn)
    whole = fast_image_embeddings(model, pixels, torch.float32)
    widths: dict[int, list[int]] = {}
    real_linear = cpu_gemm.pointwise_linear if onednn == "1" and cpu_gemm.onednn_linear_available() else None
    if real_linear is not None:  # oneDNN's op: the outputs it makes
        def spy(x, w, b, gelu):
            widths.setdefault(w.shape[0], []).append(x.shape[0])
            return real_linear(x, w, b, gelu)

        monkeypatch.setattr(cpu_gemm, "pointwise_linear", spy)
    monkeypatch.setattr(cpu_gemm, "ROW_BLOCK_BYTES", 1024)
    blocks = fast_image_embeddings(model, pixels, torch.float32)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()))
    with torch.no_grad():
        assert _rel(blocks, model.get_image_embeddings(pixels)) < 1e-5
    if real_linear is not None:
        assert max(widths[192]) == 1 and max(widths[128]) == 2  # qkv (3 x 64) and MLP hidden (128): rows a block
        assert sum(widths[192]) == 3 * 2 * 16 * 16  # every token's qkv of the 3 layers, 2 images


@pytest.mark.parametrize("window_size", [4, 5, 16, 20])
def test_window_sizes_equal_stock(window_size: int) -> None:
    """Windows that tile the 16 x 16 map exactly (4, 16), leave a padded strip (5: 15 + 1) or cover more than the
    map (20): the padded tokens' q, k, v are the qkv bias in every window."""
    model = _vit(seed=11, window_size=window_size)
    pixels = torch.randn((2, 3, 256, 256), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    assert _rel(fast_image_embeddings(model, pixels, torch.float32), stock) < 1e-5


def test_without_relative_positions_equals_stock() -> None:
    model = _vit(use_rel_pos=False, seed=7)
    pixels = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        stock = model.get_image_embeddings(pixels)
    assert _rel(fast_image_embeddings(model, pixels, torch.float32), stock) < 1e-5


@pytest.mark.parametrize("bf16_kind", ["avx512_bf16", "none", "amx"])
def test_bf16_is_as_close_to_float32_as_stock_bf16(vit_and_pixels, monkeypatch, bf16_kind: str) -> None:
    """On CPUs without AMX the attention runs in float32 (bf16 products around it), on AMX CPUs in bf16 on the
    tiles (heads of 16 numbers padded to their 32) or, where the process has none, through torch's fused attention;
    either is as close to float32 as the stock bf16 forward (windows padded: 16 tokens in windows of 6)."""
    from geosam.models import cpu_attention

    model, pixels = vit_and_pixels
    with torch.no_grad():
        ref = model.get_image_embeddings(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock_bf16 = model.get_image_embeddings(pixels)
    monkeypatch.setenv("GEOSAM_CPU_BF16", bf16_kind)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    fast_bf16 = fast_image_embeddings(model, pixels, torch.bfloat16)
    assert _rel(fast_bf16, ref) < max(2 * _rel(stock_bf16, ref), 1e-2)
    assert _rel(fast_bf16, stock_bf16) < 3e-2
    # torch's attention: one call per layer (the windows batched)
    assert len(calls) == (0 if bf16_kind != "amx" or cpu_attention.amx_available() else 3)


@pytest.mark.parametrize(("hidden", "heads"), [(64, 2), (160, 2)])
def test_bf16_on_amx_runs_the_attention_kernel_on_its_tiles_where_they_are(monkeypatch, hidden: int, heads: int) -> None:
    """On a CPU with AMX a bf16 encoder runs its attention in the AVX-512 kernel with the products on AMX tiles
    (`cpu_attention.amx_available`; no torch attention call; the bf16 projection read as it is), heads of 32 numbers
    and of 80 (ViT-H's: padded to the tiles' 96), elsewhere in torch's flash attention: as close to float32 as the
    stock bf16 forward either way."""
    from geosam.models import cpu_attention
    from geosam.models import fast_encoder as fe

    model = _vit(seed=13, heads=heads, hidden=hidden)
    pixels = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        ref = model.get_image_embeddings(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock_bf16 = model.get_image_embeddings(pixels)
    monkeypatch.setenv("GEOSAM_CPU_BF16", "amx")
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    fast_bf16 = fast_image_embeddings(model, pixels, torch.bfloat16)
    assert len(calls) == (0 if cpu_attention.amx_available() else 3)
    assert _rel(fast_bf16, ref) < max(2 * _rel(stock_bf16, ref), 1e-2)
    assert _rel(fast_bf16, stock_bf16) < 3e-2
    # the kernel reads the bf16 projection in place of a float32 copy of it: the same embeddings bit for bit
    monkeypatch.setattr(fe, "attend_bf16_tokens", lambda *a: None)
    assert torch.equal(fast_image_embeddings(model, pixels, torch.bfloat16), fast_bf16)


def test_bf16_rounds_the_weights_once_and_again_when_they_change(monkeypatch) -> None:
    """The bf16 projections' weights are rounded once and kept (no rounding of a parameter in a second encode), and
    rounded again when a parameter changes, in place (its version) or by ``p.data = ...`` (its storage): the
    embeddings then equal a fresh copy's of the changed model, bit for bit."""
    import copy

    from geosam.models import cpu_gemm

    model = _vit(seed=21)
    pixels = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        first = fast_image_embeddings(model, pixels, torch.bfloat16)
        params = {id(p) for p in model.parameters()}
        rounded = []
        to_bf16 = cpu_gemm.to_bf16
        monkeypatch.setattr(cpu_gemm, "to_bf16", lambda t: rounded.append(id(t)) or to_bf16(t))
        assert torch.equal(fast_image_embeddings(model, pixels, torch.bfloat16), first)
        assert not params & set(rounded)
        layer = model.vision_encoder.layers[1]
        layer.mlp.lin2.weight.mul_(1.5)  # in place: a new version
        layer.attn.qkv.weight.data = layer.attn.qkv.weight.data * 0.5  # the same parameter on new storage
        changed = fast_image_embeddings(model, pixels, torch.bfloat16)
        assert not torch.equal(changed, first)
        assert torch.equal(changed, fast_image_embeddings(copy.deepcopy(model), pixels, torch.bfloat16))


@pytest.mark.parametrize("kernel", ["bf16", "float32", "torch"])
def test_bf16_attention_without_amx_is_float32_attention_of_the_bf16_products(vit_and_pixels, monkeypatch, kernel) -> None:
    """Without AMX, a bf16 layer is: the qkv projection under autocast, the float32 attention of those q, k, v (the
    padded tokens' q, k, v the bias as the bf16 projection rounds it), the output projection under autocast; with
    the AVX-512 attention kernel, with torch's products (kept out of autocast), and with the kernel's bf16 products
    (AVX-512 BF16), which lose only the probabilities' rounding; the MLP's GELU on the first product's float32 sums,
    then rounded (fused into oneDNN's bf16 product)."""
    from geosam.models import cpu_attention
    from geosam.models import encoder_attention as fe
    from geosam.models.fast_encoder import _layer_mixed

    model, pixels = vit_and_pixels
    monkeypatch.setenv("GEOSAM_CPU_BF16", "avx512_bf16")
    rounded = kernel == "bf16" and cpu_attention.bf16_available()
    if kernel == "float32":
        monkeypatch.setattr(cpu_attention, "bf16_available", lambda: False)
    if kernel == "torch":
        monkeypatch.setattr(cpu_attention, "_library", lambda: None)
    enc = model.vision_encoder
    with torch.no_grad():
        x = enc.patch_embed(pixels) + enc.pos_embed
        layer = enc.layers[0]  # windowed: 16 x 16 tokens in windows of 6, padded to 18
        want = x.clone()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = layer.layer_norm1(want)
            padded, pad = layer.window_partition(h, layer.window_size)
            qkv = layer.attn.qkv(padded).float()  # (windows, 6, 6, 3C)
        q, k, v = qkv.reshape(qkv.shape[0], 36, 3, 4, 16).permute(2, 0, 3, 1, 4).unbind(0)  # float32 from here
        rel_h, rel_w = fe.rel_position_terms(layer.attn, q, 6, 6)
        scores = (q * layer.attn.scale) @ k.transpose(-1, -2)
        scores = (scores.reshape(-1, 36, 6, 6) + rel_h + rel_w).reshape(q.shape[0], 4, 36, 36)
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, 6, 6, 64)
        att = layer.window_unpartition(att, layer.window_size, pad, (16, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want.add_(layer.attn.proj(att))
            h2 = layer.layer_norm2(want)
        # the MLP's first product of bf16 numbers summed in float32, its GELU before the rounding to bf16
        mlp = layer.mlp
        hidden = F.gelu(F.linear(h2.bfloat16().float(), mlp.lin1.weight.bfloat16().float(), mlp.lin1.bias)).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want.add_(mlp.lin2(hidden))
            got = _layer_mixed(layer, x.clone().contiguous(), torch.bfloat16)
    assert 1e-6 < _rel(got, want) < 1e-3 if rounded else _rel(got, want) < 1e-5


def test_encode_dispatch(vit_and_pixels) -> None:
    model, pixels = vit_and_pixels
    bundle = gm.SamBundle(model=model, processor=None, device=torch.device("cpu"), dtype=torch.float32, name="vit")
    assert bundle.fast_encoder is None
    assert use_fast_encoder(bundle)  # on the CPU in float32 too (explicit attention, oneDNN products)
    assert not use_fast_encoder(dataclasses.replace(bundle, device=torch.device("meta")))  # off elsewhere by default
    # on CUDA in float16 / bfloat16 only: in float32 the stock encoder's fused attention is faster there
    cuda = dataclasses.replace(bundle, device=torch.device("cuda"))
    assert not use_fast_encoder(cuda)
    assert use_fast_encoder(dataclasses.replace(cuda, dtype=torch.float16))
    assert use_fast_encoder(dataclasses.replace(cuda, dtype=torch.bfloat16))
    assert use_fast_encoder(dataclasses.replace(cuda, fast_encoder=True))
    assert not use_fast_encoder(dataclasses.replace(cuda, dtype=torch.float16, fast_encoder=False))
    bf16 = dataclasses.replace(bundle, dtype=torch.bfloat16)
    assert use_fast_encoder(bf16)
    assert not use_fast_encoder(dataclasses.replace(bf16, fast_encoder=False))
    assert use_fast_encoder(dataclasses.replace(bundle, fast_encoder=True))
    assert not fast_encoder_supported(torch.nn.Linear(2, 2))
    assert not use_fast_encoder(dataclasses.replace(bf16, model=torch.nn.Linear(2, 2)))
    # encode() takes the fast path under bf16 and gives its result
    assert torch.equal(gm.encode(bf16, pixels), fast_image_embeddings(model, pixels, torch.bfloat16))
    fast32 = gm.encode(bundle, pixels)
    assert torch.equal(fast32, fast_image_embeddings(model, pixels, torch.float32))
    assert _rel(fast32, gm.encode(dataclasses.replace(bundle, fast_encoder=False), pixels)) < 1e-5


def test_fast_encoder_does_not_modify_the_model(vit_and_pixels) -> None:
    model, pixels = vit_and_pixels
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = pixels.clone()
    fast_image_embeddings(model, x, torch.bfloat16)
    assert torch.equal(x, pixels)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compile_bundle_compiles_the_paths_in_use(monkeypatch) -> None:
    """compile_bundle wraps what encode()/decode run: the fast encoder under bf16 on a CPU (the fast decoder
    stays eager there), the stock modules otherwise; once per model. torch.compile itself is faked (slow)."""
    compiled: list[object] = []

    def fake_compile(fn, *args, **kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    pixels = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(12))
    model = _vit(seed=9)
    bf16 = gm.SamBundle(model=model, processor=None, device=torch.device("cpu"), dtype=torch.bfloat16, name="vit")
    before = gm.encode(bf16, pixels)
    assert gm.compile_bundle(bf16) is bf16
    assert len(compiled) == 1 and compiled[0] is not model.vision_encoder  # the fast-encoder function
    assert callable(model._geosam_fast_encoder)
    assert use_fast_encoder(bf16) and use_fast_decoder(bf16)  # fast paths stay on
    assert torch.equal(gm.encode(bf16, pixels), before)
    gm.compile_bundle(bf16)
    assert len(compiled) == 1  # once per model

    stock_model = _vit(seed=10)
    stock = gm.SamBundle(
        model=stock_model, processor=None, device=torch.device("cpu"), dtype=torch.float32, name="vit", fast_decoder=False,
        fast_encoder=False,
    )
    vision, decoder = stock_model.vision_encoder, stock_model.mask_decoder
    gm.compile_bundle(stock)
    assert compiled[1:] == [vision, decoder]  # fast paths off: the stock encoder and decoder


def test_segment_config_compile_reaches_the_generator(monkeypatch, tiny_sam_dir: str) -> None:
    from geosam.config import SegmentConfig
    from geosam.modes.everything import make_mask_generator

    calls: list[object] = []
    monkeypatch.setattr(gm, "compile_bundle", lambda b: calls.append(b) or b)
    from geosam.segment import everything

    monkeypatch.setattr(everything, "compile_bundle", lambda b: calls.append(b) or b)
    gen = make_mask_generator(SegmentConfig.from_settings(model=tiny_sam_dir, device="cpu", compile=True))
    assert gen.compile and len(calls) == 1
    assert not make_mask_generator(SegmentConfig.from_settings(model=tiny_sam_dir, device="cpu")).compile


def test_float32_neck_is_the_stock_neck_at_any_thread_count() -> None:
    """The neck's convolutions as thread-invariant products (oneDNN's float32 convolutions sum in a thread-dependent
    order, and so does MKL's AVX-512 GEMM, Intel's float32 path, for the 3 x 3 convolution's 2304-long sums into
    256 channels: 2 threads differ from 1 and 3): a ViT-B-sized neck gives the same bits at 1, 2 and 3 threads, within float rounding of the stock neck;
    a neck with its own forward runs as it is."""
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionNeck

    from geosam.models.fast_encoder import _neck_f32

    torch.manual_seed(0)
    neck = SamVisionNeck(SamVisionConfig(hidden_size=768, output_channels=256)).eval()
    with torch.no_grad():
        for norm in (neck.layer_norm1, neck.layer_norm2):  # not the identity they start as
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn((1, 40, 48, 768), generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(_neck_f32(neck, x))
            with torch.no_grad():
                stock = neck(x)
    finally:
        torch.set_num_threads(before)
    assert outs[0].shape == stock.shape == (1, 256, 40, 48)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert _rel(outs[0], stock) < 1e-5

    class OwnNeck(SamVisionNeck):
        def forward(self, hidden_states):
            return super().forward(hidden_states) * 2

    own = OwnNeck(SamVisionConfig(hidden_size=768, output_channels=256)).eval()
    with torch.no_grad():
        assert torch.equal(_neck_f32(own, x), own(x))  # not reproduced: its own forward
