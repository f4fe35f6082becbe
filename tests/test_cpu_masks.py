"""geosam.models.cpu_masks: SAM's upsampled masks in one pass, torch's values bit for bit where torch runs AVX2."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geosam.models import cpu_masks, upsample_logits, upsample_masks
from geosam.models.device import cpu_flags


def _kernel_host() -> bool:
    """An AVX2 CPU on Linux with torch on its AVX2 or AVX-512 kernels: there the kernel must load and give torch's bits."""
    return (
        {"avx2", "fma"} <= set(cpu_flags()) and sys.platform.startswith("linux")
        and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )  # fmt: skip


def _torch(low: torch.Tensor, full: tuple[int, int], crop: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(low[:, None], size=full, mode="bilinear", align_corners=False)[:, 0, : crop[0], : crop[1]]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (the NaNs an -inf next to a zero weight gives included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    if a.dtype == torch.float64:
        return torch.equal(a.view(torch.int64), b.view(torch.int64))
    return torch.equal(a, b)


def _logits(gen: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Random logits at several scales, with SAM's special values: -inf (a prompt not upscaled), +inf, zeros."""
    low = torch.randn((n, h, w), generator=gen) * torch.logspace(-4, 2, n)[:, None, None]
    low[0, 0, :3] = float("-inf")
    low[-1, -1, -1] = float("inf")
    low[n // 2, h // 2] = 0.0
    return low


def _check(threads: int) -> None:
    gen = torch.Generator().manual_seed(7 + threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # SAM's 256 -> 1024 (whole, and cropped to a resized frame), a 2x and a 8x factor, non-square
        for (n, h, w), full, crop in (
            ((5, 256, 256), (1024, 1024), (1024, 1024)),
            ((3, 256, 256), (1024, 1024), (1024, 683)),
            ((4, 40, 24), (80, 48), (79, 45)),
            ((2, 20, 33), (160, 264), (157, 264)),
        ):
            low = _logits(gen, n, h, w)
            want = _torch(low, full, crop)
            assert _same(cpu_masks.upsampled(low, full, crop), want), (n, h, w, full, crop)
            for t in (0.0, 1.0, float(want[1].flatten()[1234 % want[1].numel()])):  # a threshold some pixel equals
                assert _same(cpu_masks.upsample_gt(low, full, crop, t), want > t), (n, h, w, t)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not _kernel_host(), reason="the kernel is AVX2 code, used where torch runs AVX2 or AVX-512 kernels")
def test_kernel_is_in_use_and_equals_torch() -> None:
    assert shutil.which("cc") or shutil.which("gcc"), "no C compiler on an AVX2 machine that runs the tests"
    assert cpu_masks.available()
    _check(1)
    _check(2)


def test_switched_off_or_elsewhere_the_results_are_torch(monkeypatch) -> None:
    monkeypatch.setattr(cpu_masks, "_library", lambda: None)
    _check(1)


def test_shapes_torch_computes_otherwise_take_torch() -> None:
    """ATen upsamples outputs of H + W <= 128 with its channels-last kernel (another order), non-power-of-two
    factors' positions round, float64 and empty batches: all run torch's op, so the results are still torch's."""
    gen = torch.Generator().manual_seed(3)
    low = _logits(gen, 3, 16, 16)
    assert _same(cpu_masks.upsampled(low, (64, 64), (64, 64)), _torch(low, (64, 64), (64, 64)))
    low = _logits(gen, 2, 30, 40)
    assert _same(cpu_masks.upsample_gt(low, (90, 120), (90, 120), 0.0), _torch(low, (90, 120), (90, 120)) > 0)
    low64 = low.double()
    assert _same(cpu_masks.upsampled(low64, (120, 160), (120, 160)), _torch(low64, (120, 160), (120, 160)))
    empty = torch.zeros((0, 16, 16))
    assert cpu_masks.upsample_gt(empty, (256, 256), (256, 256), 0.0).shape == (0, 256, 256)


def test_runtime_upsampling_is_sams() -> None:
    """`upsample_logits` / `upsample_masks`: SAM's two resizes where the chip is not the resized frame, one where
    it is; masks are the logits above the threshold."""
    gen = torch.Generator().manual_seed(11)
    low = _logits(gen, 3, 64, 64)
    x = F.interpolate(low[:, None], size=(256, 256), mode="bilinear", align_corners=False)[..., :256, :171]
    want = F.interpolate(x, size=(300, 200), mode="bilinear", align_corners=False)[:, 0]
    assert _same(upsample_logits(low, 256, (256, 171), (300, 200)), want)
    assert _same(upsample_masks(low, 256, (256, 171), (300, 200), 0.5), want > 0.5)
    same = upsample_logits(low, 256, (256, 171), (256, 171))
    assert _same(same, _torch(low, (256, 256), (256, 171)))
    got = upsample_masks(low, 256, (256, 171), (256, 171), 0.0)
    assert got.dtype == torch.bool and np.array_equal(got.numpy(), (same > 0).numpy())


def _stats_logits(gen: torch.Generator) -> torch.Tensor:
    """SAM-like masks: blobs on a strongly negative background (whole rows skipped), a mask near the thresholds
    everywhere, one all above, one empty, one with a single pixel on the last column, specials."""
    low = torch.full((7, 64, 72), -12.0)
    low[0, 20:30, 10:40] = 6.0
    low[1] = torch.randn((64, 72), generator=gen) * 0.8
    low[2] = 5.0
    low[4, 40, -1] = 3.0
    low[5] = torch.randn((64, 72), generator=gen) * 30
    low[5, 3, :4] = float("-inf")
    low[6, :, :] = 0.0  # exactly at the threshold 0
    return low


@pytest.mark.skipif(not _kernel_host(), reason="the kernel is AVX2 code, used where torch runs AVX2 or AVX-512 kernels")
@pytest.mark.parametrize("threads", [1, 2])
def test_stats_equal_torchs_upsampled_masks(threads: int) -> None:
    """Counts for several thresholds and the box of one, from every upsampled pixel: those of torch's values."""
    assert cpu_masks.available()
    gen = torch.Generator().manual_seed(5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for low, full in ((_stats_logits(gen), (256, 288)), (_logits(gen, 3, 256, 256), (1024, 1024))):
            for thresholds, tb in (((1.0, -1.0, 0.0), 0.0), ((1.0,), 1.0), ((-30.0, 2.0), 0.5)):
                got = cpu_masks.upsampled_stats(low, full, thresholds, tb)
                assert got is not None
                want = cpu_masks._torch_stats(_torch(low, full, full), thresholds, tb)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (full, thresholds, tb)
    finally:
        torch.set_num_threads(before)
    low = _stats_logits(gen)
    counts, boxes = cpu_masks.upsampled_stats(low, (256, 288), (0.0,), 0.0)  # type: ignore[misc]
    assert counts[2, 0] == 256 * 288 and counts[3, 0] == 0 and boxes[3].tolist() == [0, 0, 0, 0]
    assert boxes[4, 2] == 287  # the last column is reached
    assert counts[6, 0] == 0  # at the threshold is not above it


@pytest.mark.skipif(not _kernel_host(), reason="the kernel is AVX2 code, used where torch runs AVX2 or AVX-512 kernels")
@pytest.mark.parametrize("threads", [1, 2])
def test_stats_boxes_of_the_valid_pixels(threads: int) -> None:
    """With the grid's valid pixels (`valid_bits`) the boxes are those of the valid pixels above the box threshold
    ((-1, -1, -1, -1) where there is none), the counts still those of every pixel: torch's upsampled values cut, at
    both register widths, widths with 8-lane and scalar tails."""
    assert cpu_masks.available()
    gen = torch.Generator().manual_seed(7)
    lib = cpu_masks._library()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for low, full in ((_stats_logits(gen), (256, 288)), (_logits(gen, 3, 256, 256), (1024, 1024)),
                          (_logits(gen, 2, 24, 33), (96, 132))):
            up = _torch(low, full, full)
            yy, xx = torch.meshgrid(torch.arange(full[0]), torch.arange(full[1]), indexing="ij")
            for valid in (xx + yy > full[1] // 2, torch.rand(full, generator=gen) > 0.5, xx % 9 == 4,
                          torch.zeros(full, dtype=torch.bool), torch.ones(full, dtype=torch.bool)):
                bits = cpu_masks.valid_bits(valid)
                for thresholds, tb in (((1.0, -1.0, 0.0), 0.0), ((-30.0,), 0.5)):
                    got = cpu_masks.upsampled_stats(low, full, thresholds, tb, valid=bits)
                    assert got is not None
                    want = cpu_masks._torch_stats(up, thresholds, tb, valid)
                    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (full, thresholds, tb)
                    assert torch.equal(got[0], cpu_masks._torch_stats(up, thresholds, tb)[0])  # counts: every pixel
                    narrow = cpu_masks._stats(lib, low.contiguous(), full, thresholds, tb, bits)
                    assert torch.equal(narrow[0], got[0]) and torch.equal(narrow[1], got[1])
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="valid bits"):
        cpu_masks.upsampled_stats(_logits(gen, 1, 24, 33), (96, 132), (0.0,), 0.0, valid=np.zeros((96, 4), np.uint8))


@pytest.mark.skipif(not (_kernel_host() and "avx512f" in cpu_flags()), reason="the 16-lane rows only with AVX-512")
@pytest.mark.parametrize("width", [18, 20, 33, 256])
def test_avx512_stats_are_the_avx2_counts_and_boxes(width: int, monkeypatch) -> None:
    """On AVX-512 CPUs the statistics' rows run 16 columns at a time, then the 8-lane and scalar tails (widths 72,
    80, 132 and 1024 after 4x): the same counts and boxes as 8 at a time (-inf, values at the thresholds, empty
    masks; 1, 2, 3 and 8 thresholds, each count in its own integer lanes), and `upsampled_stats` uses them."""
    assert cpu_masks.wide_available()
    lib = cpu_masks._library()
    low = _logits(torch.Generator().manual_seed(width), 4, 24, width)
    low[1] = float("-inf")
    low[2, 5:9, 3:7] = 0.0
    full = (96, 4 * width)
    eight = tuple(float(x) for x in torch.linspace(-3.0, 3.0, 8))  # the most thresholds the kernel takes
    for thresholds, tb in (((1.0, -1.0, 0.0), 0.0), ((0.0,), 2.0), ((1.0, -1.0), 0.0), (eight, -0.5)):
        narrow = cpu_masks._stats(lib, low, full, thresholds, tb)
        wide = cpu_masks._stats(lib, low, full, thresholds, tb, wide=True)
        assert torch.equal(narrow[0], wide[0]) and torch.equal(narrow[1], wide[1])
    real, flags = cpu_masks._stats, []
    monkeypatch.setattr(cpu_masks, "_stats", lambda *a: flags.append(a[-1]) or real(*a))
    cpu_masks.upsampled_stats(low, full, (0.0,), 0.0)
    assert flags == [True]


def test_stats_elsewhere_are_left_to_the_caller(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(6)
    assert cpu_masks.upsampled_stats(_logits(gen, 2, 16, 16), (64, 64), (0.0,), 0.0) is None  # H + W <= 128
    assert cpu_masks.upsampled_stats(_logits(gen, 2, 64, 64), (256, 256), tuple(range(9)), 0.0) is None
    monkeypatch.setattr(cpu_masks, "_library", lambda: None)
    assert cpu_masks.upsampled_stats(_logits(gen, 2, 64, 64), (256, 256), (0.0,), 0.0) is None
    assert not cpu_masks.stats_apply(_logits(gen, 2, 64, 64), (256, 256))
