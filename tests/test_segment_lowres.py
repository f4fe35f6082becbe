"""The low-res kernel (geosam.segment.lowres): exact chip-resolution counts and boxes, and a proven stability bound."""

from __future__ import annotations

import pytest
import torch

from geosam.models import cpu_masks
from geosam.segment.lowres import cell_bounds, stability_upper_bound_x4, upsampled_x4_stats
from geosam.segment.sam_utils import batched_mask_to_box, calculate_stability_score


def _upsample_x4(low: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(low[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]


def _brute_stats(low: torch.Tensor, thresholds, box_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    up = _upsample_x4(low)
    counts = torch.stack([(up > t).flatten(1).sum(dim=1) for t in thresholds], dim=1)
    return counts, batched_mask_to_box(up > box_threshold)


@pytest.mark.parametrize("kernel", [True, False], ids=["c-kernel-where-it-applies", "torch-ops"])
@pytest.mark.parametrize("shape", [(40, 36), (7, 9), (2, 2), (3, 50)])
def test_upsampled_x4_stats_equal_full_resolution(shape, kernel, monkeypatch) -> None:
    """Exact on both paths: geosam.models.cpu_masks (AVX2, outputs over 128 px) and the cell bounds in torch."""
    if not kernel:
        monkeypatch.setattr(cpu_masks, "_library", lambda: None)
    h, w = shape
    gen = torch.Generator().manual_seed(h * 100 + w)
    smooth = torch.nn.functional.avg_pool2d(torch.randn((3, 1, h, w), generator=gen), 3, 1, 1)[:, 0] * 40
    low = torch.cat(
        [
            smooth,
            torch.randn((1, h, w), generator=gen),  # speckle: nearly every cell is outline
            torch.zeros((1, h, w)),  # every pixel exactly at the threshold 0 (not above it)
            torch.full((1, h, w), 7.0),  # above every threshold
            torch.full((1, h, w), -7.0),  # empty
            torch.full((1, h, w), -7.0),  # one bright corner pixel: the box is in the border strips
            torch.full((1, h, w), -7.0),  # one bright low-res pixel inside
        ]
    )
    low[0, :1, :] = 1.0  # a plateau exactly at a threshold
    low[7, -1, -1] = 9.0
    low[8, h // 2, w // 2] = 9.0
    thresholds = (-1.0, 0.0, 1.0, 0.5, 20.0)
    counts, boxes = upsampled_x4_stats(low, thresholds, 0.0)
    exp_counts, exp_boxes = _brute_stats(low, thresholds, 0.0)
    assert torch.equal(counts, exp_counts)
    assert torch.equal(boxes, exp_boxes)
    n = 16 * h * w
    assert counts[4].tolist() == [n, 0, 0, 0, 0] and counts[5].tolist() == [n, n, n, n, 0]
    assert counts[6].tolist() == [0] * 5 and boxes[6].tolist() == [0, 0, 0, 0]
    assert boxes[7, 2:].tolist() == [4 * w - 1, 4 * h - 1]  # the bottom-right corner pixel is reached
    # another box threshold
    assert torch.equal(upsampled_x4_stats(low, (0.0,), 1.0)[1], _brute_stats(low, (0.0,), 1.0)[1])


def test_upsampled_x4_stats_rejects_tiny_input() -> None:
    with pytest.raises(ValueError, match="2 x 2"):
        upsampled_x4_stats(torch.zeros((1, 1, 5)), (0.0,), 0.0)


def _adversarial_logits(seed: int) -> torch.Tensor:
    """Small sharp squares and plateaus at the thresholds on a -20 background, and the brief's example:
    a 12 x 12 square of 0 whose 10 x 10 interior is +20 (stability 0.694 at low resolution, 0.994 upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.full((64, 48, 40), -20.0)
    low[0, 10:22, 10:22] = 0.0
    low[0, 11:21, 11:21] = 20.0
    for i in range(1, 64):
        y, x = (int(v) for v in torch.randint(0, 40, (2,), generator=gen))
        s = int(torch.randint(1, 9, (1,), generator=gen))
        low[i, y : y + s + 2, x : x + s + 2] = float(torch.tensor([0.0, 1.0, -1.0, 0.5])[i % 4])
        low[i, y + 1 : y + s + 1, x + 1 : x + s + 1] = 20.0 if i % 3 else float(torch.rand((), generator=gen) * 4 - 2)
    return low


@pytest.mark.parametrize("seed", range(4))
def test_stability_upper_bound_is_proven(seed: int) -> None:
    """The bound is never below the chip-resolution score (so the prefilter never drops a mask SAM keeps)."""
    gen = torch.Generator().manual_seed(100 + seed)
    smooth = torch.nn.functional.avg_pool2d(torch.randn((32, 1, 48, 40), generator=gen), 3, 1, 1)[:, 0] * 30
    low = torch.cat([_adversarial_logits(seed), smooth])
    for t, off in ((0.0, 1.0), (0.5, 1.0), (0.0, 0.25)):
        exact = calculate_stability_score(_upsample_x4(low), t, off).double()
        bound = stability_upper_bound_x4(low, t, off)
        assert (bound >= exact - 1e-6).all()  # exact is float32 (SAM's rounding): the generator allows BOUND_SLACK
    # the brief's example: kept by SAM at 0.95, and by the bound
    ex = low[:1]
    assert float(calculate_stability_score(ex, 0.0, 1.0)) < 0.7
    assert float(calculate_stability_score(_upsample_x4(ex), 0.0, 1.0)) > 0.99
    assert float(stability_upper_bound_x4(ex, 0.0, 1.0)[0]) >= 0.95
    # the bound does drop masks that cannot pass: a wide soft ramp
    ramp = torch.linspace(-30, 30, 40).repeat(1, 48, 1)
    assert float(stability_upper_bound_x4(ramp, 0.0, 10.0)[0]) < 0.95


def test_shared_cell_bounds_give_the_same_results() -> None:
    """`cell_bounds` computed once (and subset with the masks) give what each function computes on its own."""
    low = _adversarial_logits(5)
    cells = cell_bounds(low)
    assert torch.equal(stability_upper_bound_x4(low, 0.0, 1.0, cells), stability_upper_bound_x4(low, 0.0, 1.0))
    part = torch.arange(low.shape[0]) % 3 == 1
    sub = (cells[0][part], cells[1][part], cells[2][part])
    with_cells = upsampled_x4_stats(low[part], (1.0, -1.0, 0.0), 0.0, sub)
    alone = upsampled_x4_stats(low[part], (1.0, -1.0, 0.0), 0.0)
    assert torch.equal(with_cells[0], alone[0]) and torch.equal(with_cells[1], alone[1])
    assert torch.equal(with_cells[0], _brute_stats(low[part], (1.0, -1.0, 0.0), 0.0)[0])
