"""LiteMedSAM's TinyViT for inference: BatchNorms folded into the convolutions, channels-last maps, in-place GELU."""

from __future__ import annotations

import copy

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
