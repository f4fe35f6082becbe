"""Differential tests: geosam.segment against segment-anything's own code (tests/_sam_reference.py).

Helpers are compared on thousands of seeded random cases; the generator is
compared with SamAutomaticMaskGenerator's filtering sequence on a scripted
decoder (adversarial small sharp masks, plateaus exactly at the thresholds,
exact-threshold scores, ties), so the kept masks, scores and order must be
equal. segment-anything is a test dependency (pyproject's ``test`` extras);
without it these tests skip. ``remove_small_regions`` is compared with SAM's
own where cv2 imports, else with an independent brute force (tests/_sam_reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosam.index.prefilter import grid_pixels
from geosam.segment import sam_utils as ours
from tests._sam_reference import brute_batched_nms, brute_nms, have_cv2, sam_amg, sam_remove_small_regions

SAM = sam_amg()
pytestmark = pytest.mark.skipif(SAM is None, reason="segment-anything is not installed (pip install -e .[test])")


def test_point_grids_and_grid_pixels() -> None:
    for n in range(1, 65):
        assert np.array_equal(ours.build_point_grid(n), SAM.build_point_grid(n))
    for n in (1, 3, 32):
        for h, w in ((1, 1), (7, 300), (1024, 1024), (513, 97)):
            rows, cols = grid_pixels(h, w, n)
            pts = SAM.build_point_grid(n) * np.array([w, h])
            assert np.array_equal(rows, np.clip(np.floor(pts[:, 1]), 0, h - 1)) and np.array_equal(cols, np.clip(np.floor(pts[:, 0]), 0, w - 1))


def test_crop_boxes_and_edges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        layers, ratio = int(rng.integers(0, 4)), float(rng.uniform(0, 1))
        assert ours.generate_crop_boxes(h, w, layers, ratio) == SAM.generate_crop_boxes((h, w), layers, ratio)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(50, 1500, 2))
        crops, _ = SAM.generate_crop_boxes((h, w), 2, float(rng.uniform(0, 0.6)))
        crop = crops[int(rng.integers(0, len(crops)))]
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        xy0 = rng.integers(0, [cw, ch], (40, 2))
        xy1 = np.minimum(xy0 + rng.integers(0, 60, (40, 2)), [cw - 1, ch - 1])
        boxes = torch.as_tensor(np.concatenate([xy0, xy1], axis=1))
        offset = torch.tensor([crop[0], crop[1], crop[0], crop[1]])
        atol = float(rng.choice([0.0, 5.0, 20.0]))
        expected = SAM.is_box_near_crop_edge(boxes, crop, [0, 0, w, h], atol)
        assert torch.equal(ours.is_box_near_crop_edge(boxes + offset, crop, [0, 0, w, h], atol), expected)


def test_stability_scores_and_boxes() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        n, h, w = (int(v) for v in torch.randint(1, 24, (3,), generator=gen))
        # integer logits in [-3, 3]: many pixels exactly at threshold +/- offset
        logits = torch.randint(-3, 4, (n, h, w), generator=gen).float() * float(torch.randint(1, 3, (1,), generator=gen))
        logits[0] = -5.0  # an empty mask (SAM's score NaN, ours 0)
        for t, off in ((0.0, 1.0), (1.0, 1.0), (0.0, 2.0), (-1.0, 0.5)):
            exp = SAM.calculate_stability_score(logits, t, off)
            got = ours.calculate_stability_score(logits, t, off)
            assert torch.equal(got[~exp.isnan()], exp[~exp.isnan()]) and (got[exp.isnan()] == 0).all()
            exact = float(exp[-1]) if n > 1 and float(exp[-1]) > 0 else 0.75  # a score exactly at the threshold
            for thresh in (0.5, exact):
                assert torch.equal(got >= thresh, exp >= thresh)  # NaN and 0 both fail


def test_mask_boxes() -> None:
    gen = torch.Generator().manual_seed(4)
    for h, w in ((1, 1), (1, 9), (24, 17), (64, 64)):  # SAM's reductions over bool are slow: few large batches
        density = torch.rand((3000, 1, 1), generator=gen) ** 4
        masks = torch.rand((3000, h, w), generator=gen) < density  # from empty to full, single pixels, ...
        assert torch.equal(ours.batched_mask_to_box(masks), SAM.batched_mask_to_box(masks))
        assert torch.equal(ours.batched_mask_to_box(masks.reshape(30, 100, h, w)), SAM.batched_mask_to_box(masks.reshape(30, 100, h, w)))


def _random_boxes(rng: np.random.Generator, n: int) -> torch.Tensor:
    xy0 = rng.integers(0, 30, (n, 2))
    return torch.as_tensor(np.concatenate([xy0, xy0 + rng.integers(0, 12, (n, 2))], axis=1)).float()


def test_nms_equals_brute_force_greedy() -> None:
    rng = np.random.default_rng(2)
    for _ in range(500):
        n = int(rng.integers(0, 25))
        boxes = _random_boxes(rng, n)
        scores = torch.as_tensor(rng.integers(0, 4, n) / 4, dtype=torch.float32)  # many ties
        thresh = float(rng.choice([0.0, 0.3, 0.5, 0.7, 1 / 3, 0.25]))  # some IoUs land exactly on these
        assert ours.nms(boxes, scores, thresh).tolist() == brute_nms(boxes, scores, thresh)
        idxs = torch.as_tensor(rng.integers(0, 3, n))
        assert ours.batched_nms(boxes, scores, idxs, thresh).tolist() == brute_batched_nms(boxes, scores, idxs, thresh).tolist()


def test_remove_small_regions_like_sam() -> None:
    reference = sam_remove_small_regions()
    rng = np.random.default_rng(3)
    for k in range(1500):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.7)
        if k % 3 == 0:  # islands of equal size, all small: the tie decides which survives
            mask[:] = False
            for _ in range(int(rng.integers(2, 5))):
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                mask[y, x] = True
        area = float(rng.integers(1, 12))
        for mode in ("holes", "islands"):
            got, changed = ours.remove_small_regions(mask, area, mode)
            exp, exp_changed = reference(mask, area, mode)
            assert changed == exp_changed and np.array_equal(got, exp), (k, mode, mask.astype(int), have_cv2())


def test_mask_data_filter_and_cat() -> None:
    a = ours.MaskData(torch.tensor([0.9, 0.8]), torch.tensor([1.0, 0.5]), torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]))
    b = ours.MaskData(torch.tensor([0.7]), torch.tensor([0.25]), torch.tensor([[4, 4, 5, 5]]))
    c = ours.MaskData.cat([a, b])
    assert len(c) == 3 and c.iou_preds.tolist() == pytest.approx([0.9, 0.8, 0.7])
    f = c.filter(torch.tensor([2, 0]))
    assert f.boxes.tolist() == [[4, 4, 5, 5], [0, 0, 1, 1]] and f.masks is None
    assert len(c.filter(c.stability_score > 0.3)) == 2
    with pytest.raises(ValueError, match="None in some parts"):
        ours.MaskData.cat([a.with_(masks=torch.zeros((2, 1, 1), dtype=torch.bool)), b])


def test_bilinear_resize_to_the_same_size_is_a_copy() -> None:
    """tests/_sam_reference.py skips SAM's second resize where the chip is the model's size: torch's bilinear resize
    to the input's own size must give the same bits (upscaled logits with plateaus, steps and extremes)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    low = torch.randn((2, 3, 256, 256), generator=g) * 20
    low[0, 0, :40, :40] = -20.0
    low[1, 2, 100:140, 60:90] = 0.0
    low[1, 1, 5, 5] = 3.4e38
    up = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
    for x in (low, up, up[..., :768, :1024]):
        assert torch.equal(F.interpolate(x, tuple(x.shape[-2:]), mode="bilinear", align_corners=False), x)
