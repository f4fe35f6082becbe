"""LiteMedSAM's TinyViT for inference: BatchNorms folded into the convolutions, channels-last maps, in-place GELU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from geosam.models.tinyvit import TinyViTEncoder, fold_batch_norms


def _encoder_with_trained_norms(seed: int = 0) -> TinyViTEncoder:
    """A random TinyViT whose BatchNorms have non-trivial running statistics and affine parameters (as trained)."""
    g = torch.Generator().manual_seed(seed)
    enc = TinyViTEncoder()
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return enc.eval()


def test_folded_channels_last_encoder_equals_the_unfolded_one() -> None:
    enc = _encoder_with_trained_norms()
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = enc(x)[0]
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    fast = copy.deepcopy(enc)
    assert fold_batch_norms(fast) == n_norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    fast.to(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fast(x)[0]
    assert got.shape == want.shape == (1, 256, 64, 64) and got.is_contiguous()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    # the folding matters: the same weights without the norms' statistics give something else
    bare = copy.deepcopy(enc)
    for m in bare.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        assert float((bare(x)[0] - want).abs().max() / want.abs().max()) > 1e-2
    # with gradients recorded (training) backward still runs through the blocks that use the in-place GELU
    # (inverted residual, patch merge), on a small map (they work at any resolution; the whole encoder took 4x longer)
    block, merge = fast.layers[0].blocks[0], fast.layers[0].downsample
    xs = torch.rand((1, block.conv1[0].in_channels, 16, 16), generator=torch.Generator().manual_seed(2))
    y = merge(block(xs.requires_grad_()))
    y.sum().backward()
    assert xs.grad is not None and torch.isfinite(xs.grad).all() and float(xs.grad.abs().sum()) > 0


def test_build_model_keeps_the_checkpoint_layout_on_request() -> None:
    """LiteMedSAM as loaded has its encoder's BatchNorms folded and channels-last weights; ``inference_layout=False``
    keeps the checkpoint's (what bench_tinyvit compares against), with the same weights otherwise."""
    from geosam.models.litemedsam import build_model

    folded = build_model().vision_encoder
    kept = build_model(inference_layout=False).vision_encoder
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in kept.modules()) == fold_batch_norms(copy.deepcopy(kept)) > 0
    convs = [(a, b) for a, b in zip(folded.modules(), kept.modules()) if isinstance(a, nn.Conv2d)]
    assert convs and all(b.weight.is_contiguous() for _, b in convs)
    assert any(a.weight.is_contiguous(memory_format=torch.channels_last) and not a.weight.is_contiguous()
               for a, _ in convs)
    neck = [n for n, _ in kept.named_parameters() if n.startswith("neck.")]
    assert neck and all(torch.equal(folded.get_parameter(n), kept.get_parameter(n)) for n in neck)


# --- the fused CPU path (geosam.models.fast_tinyvit) ---------------------------------------------------------------


def _folded(seed: int = 0) -> nn.Module:
    """A SamModel-like holder of a random folded, channels-last TinyViT (what LiteMedSAM's loader makes)."""
    enc = _encoder_with_trained_norms(seed)
    fold_batch_norms(enc)
    enc.to(memory_format=torch.channels_last)
    return _Holder(enc)


class _Holder(nn.Module):
    """What LiteMedSAM's SamModel offers the encoder path: ``vision_encoder`` and ``get_image_embeddings``."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.vision_encoder = enc

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(pixel_values)[0]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max())


def _bf16_ops() -> bool:
    from geosam.models.fast_tinyvit import _ops_work

    return _ops_work(torch.bfloat16)


#: oneDNN has bf16 kernels on AVX-512 CPUs only: on AVX2-only CPUs encode() runs the module there (tested below)
needs_bf16_ops = pytest.mark.skipif(not _bf16_ops(), reason="oneDNN has no bf16 kernels on this CPU")


def _two_images() -> torch.Tensor:
    x = torch.rand((2, 3, 256, 256), generator=torch.Generator().manual_seed(3))
    x[1] = x[1] ** 2  # two different images in one batch
    return x


@pytest.fixture(scope="module")
def two_images_through_the_module() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``_folded()``, ``_two_images()`` and the module's float32 embeddings of them (seconds: computed once)."""
    model, x = _folded(), _two_images()
    with torch.no_grad():
        return model, x, model.vision_encoder(x)[0]


def test_fast_tinyvit_is_the_module_in_float32(two_images_through_the_module) -> None:
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings, fast_tinyvit_supported

    model, x, want = two_images_through_the_module
    assert fast_tinyvit_supported(model, torch.float32)
    assert fast_tinyvit_supported(model, torch.bfloat16) == _bf16_ops()
    got = fast_tinyvit_embeddings(model, x, torch.float32)
    assert got.shape == want.shape == (2, 256, 64, 64) and got.dtype == torch.float32 and got.is_contiguous()
    assert _rel(got, want) < 1e-4  # oneDNN's GELU and the fused attention sum in other orders
    assert torch.equal(fast_tinyvit_embeddings(model, x[1:], torch.float32), got[1:])  # each image on its own


@needs_bf16_ops
def test_fast_tinyvit_bf16_is_as_close_to_float32_as_autocast(two_images_through_the_module) -> None:
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

    model, x, want = two_images_through_the_module
    enc = model.vision_encoder
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = enc(x)[0].float()
    low = fast_tinyvit_embeddings(model, x, torch.bfloat16)
    assert low.dtype == torch.float32
    # bf16 end to end is as close to float32 as the module under bf16 autocast (which rounds more often)
    err, err_autocast = _rel(low, want), _rel(autocast, want)
    assert err < 1.5 * err_autocast and err < 0.1
    mean_err = float((low - want).abs().mean() / want.abs().mean())
    assert mean_err < 1.2 * float((autocast - want).abs().mean() / want.abs().mean())


def test_encode_runs_the_module_where_onednn_has_no_bf16(monkeypatch) -> None:
    """Where oneDNN's bf16 kernels do not run (AVX2-only CPUs), a bf16 LiteMedSAM bundle encodes through the module
    under autocast, float32 through the fused path."""
    import dataclasses

    import geosam.models.fast_tinyvit as ft
    from geosam.models import encode
    from geosam.models.bundle import SamBundle
    from geosam.models.compile import use_fast_tinyvit

    monkeypatch.setattr(ft, "_ops_work", lambda dtype: dtype == torch.float32)
    model = _folded(4)
    b32 = SamBundle(model=model, processor=None, device=torch.device("cpu"), dtype=torch.float32, name="t")
    b16 = dataclasses.replace(b32, dtype=torch.bfloat16)
    assert use_fast_tinyvit(b32) and not use_fast_tinyvit(b16)
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(11))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model.vision_encoder(x)[0]
    assert torch.equal(encode(b16, x), want)


def test_fast_tinyvit_bands_are_the_whole_maps(monkeypatch) -> None:
    """The first stage's maps computed by bands of rows (stride 1 and the stride-2 merge) give the same bits as
    one band, with bands of one row and with a last band shorter than the others."""
    import geosam.models.fast_tinyvit as ft

    model = _folded(1)
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(ft, "BAND_BYTES", 1 << 40)
    whole = ft.fast_tinyvit_embeddings(model, x, torch.float32)
    for band_bytes in (1, 256 * 256 * 4 * 27):  # one row per band; 27 rows (256 = 9 * 27 + 13)
        monkeypatch.setattr(ft, "BAND_BYTES", band_bytes)
        assert torch.equal(ft.fast_tinyvit_embeddings(model, x, torch.float32), whole), band_bytes


def test_fast_tinyvit_needs_the_folded_tinyvit() -> None:
    from geosam.models.fast_tinyvit import fast_tinyvit_supported

    kept = nn.Module()
    kept.vision_encoder = _encoder_with_trained_norms()  # BatchNorms not folded: the module's forward
    assert not fast_tinyvit_supported(kept, torch.float32)
    assert not fast_tinyvit_supported(_folded(), torch.float16)
    other = nn.Module()
    other.vision_encoder = nn.Linear(2, 2)
    assert not fast_tinyvit_supported(other, torch.float32)


@needs_bf16_ops
def test_fast_tinyvit_follows_weights_changed_in_place() -> None:
    """The fused path keeps the weights converted per dtype; weights loaded into the module in place afterwards
    (``load_state_dict``) are converted again, in both dtypes."""
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

    model, other = _folded(0), _folded(7)
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(8))
    for dtype in (torch.float32, torch.bfloat16):
        fast_tinyvit_embeddings(model, x, dtype)  # converts and keeps model's weights
    with torch.no_grad():
        model.vision_encoder.load_state_dict(other.vision_encoder.state_dict())
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(fast_tinyvit_embeddings(model, x, dtype), fast_tinyvit_embeddings(other, x, dtype))


@needs_bf16_ops
def test_fast_tinyvit_keeps_nothing_in_the_model() -> None:
    """The converted weights live beside the model, not in it: a model pickled after a fused encode (a bundle shipped
    to a worker) carries none, and gives the same embedding where it is unpickled."""
    import pickle

    import geosam.models.cpu_fused as cf
    import geosam.models.fast_tinyvit as ft

    model = _folded(2)
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(9))
    want = ft.fast_tinyvit_embeddings(model, x, torch.bfloat16)
    assert model.vision_encoder in cf._WEIGHTS
    copy_ = pickle.loads(pickle.dumps(model))
    assert copy_.vision_encoder not in cf._WEIGHTS
    assert not any(k.startswith("_geosam") for m in copy_.modules() for k in vars(m))
    assert torch.equal(ft.fast_tinyvit_embeddings(copy_, x, torch.bfloat16), want)


@needs_bf16_ops
def test_fast_tinyvit_bf16_with_and_without_the_amx_attention(monkeypatch, call_results) -> None:
    """bf16 windows' attention on AMX tiles (where it runs) or torch's: the same embedding to bf16 rounding."""
    import geosam.models.cpu_bias_attention as cba
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

    model = _folded(3)
    x = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = model.vision_encoder(x)[0]
    results = call_results(cba, "attention")
    kernel = fast_tinyvit_embeddings(model, x, torch.bfloat16)
    calls = [out is not None for out in results]
    assert len(calls) == 10 and all(calls) == cba.available()  # every ViT block's windows
    monkeypatch.setattr(cba, "attention", lambda *a, **k: None)
    torch_path = fast_tinyvit_embeddings(model, x, torch.bfloat16)
    assert _rel(kernel, want) < 0.1 and _rel(kernel, want) < 1.5 * _rel(torch_path, want)
    assert _rel(kernel, torch_path) < 0.05
