"""SAM's pure helpers (geosam.segment.sam_utils) with exact expectations on hand-made inputs.

tests/test_segment_sam_diff.py compares the same helpers with segment-anything's own code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosam.errors import ConfigError
from geosam.segment.sam_utils import (
    batched_mask_to_box,
    batched_nms,
    box_iou,
    boxes_and_nonempty,
    build_point_grid,
    calculate_stability_score,
    nms,
    remove_small_regions,
)


def test_build_point_grid() -> None:
    g = build_point_grid(2)
    assert g.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    g4 = build_point_grid(4)
    assert g4.shape == (16, 2)
    assert g4[:4, 0].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert g4[::4, 1].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert build_point_grid(1).tolist() == [[0.5, 0.5]]
    with pytest.raises(ConfigError):
        build_point_grid(0)


def test_calculate_stability_score() -> None:
    logits = torch.full((3, 10, 10), -5.0)
    logits[0, :4, :] = 5.0  # 40 px well above threshold + offset
    logits[0, 4:6, :] = 0.5  # 20 px only above threshold - offset
    logits[1, :5, :] = 5.0  # crisp: stable
    # mask 2: all below threshold - offset -> empty loose mask -> 0
    s = calculate_stability_score(logits, 0.0, 1.0)
    assert s.tolist() == pytest.approx([40 / 60, 1.0, 0.0])
    # offset 0.25: the 0.5 band lies above both 0.25 and -0.25 -> stable
    assert calculate_stability_score(logits[:1], 0.0, 0.25).tolist() == pytest.approx([1.0])
    # threshold 0.4: the band (-0.6, 1.4) again splits 40 px (5.0) from 60 px (5.0 and 0.5)
    assert calculate_stability_score(logits[:1], 0.4, 1.0).tolist() == pytest.approx([40 / 60])


def test_batched_mask_to_box() -> None:
    masks = torch.zeros((2, 3, 8, 10), dtype=torch.bool)
    masks[0, 0, 2:5, 3:7] = True
    masks[0, 1, 7, 9] = True
    masks[1, 0, 0, 0] = True
    masks[1, 0, 6, 2] = True
    boxes = batched_mask_to_box(masks)
    assert boxes.shape == (2, 3, 4)
    assert boxes[0, 0].tolist() == [3, 2, 6, 4]
    assert boxes[0, 1].tolist() == [9, 7, 9, 7]
    assert boxes[0, 2].tolist() == [0, 0, 0, 0]  # empty
    assert boxes[1, 0].tolist() == [0, 0, 2, 6]
    assert batched_mask_to_box(torch.zeros((0, 5, 5), dtype=torch.bool)).shape == (0, 4)
    masks[1, 2, 0, 0] = True  # a one-pixel mask at the origin has the empty mask's box, but is not empty
    both, nonempty = boxes_and_nonempty(masks)
    assert torch.equal(both, batched_mask_to_box(masks)) and both[1, 2].tolist() == [0, 0, 0, 0]
    assert nonempty.tolist() == [[True, True, False], [True, False, True]]
    assert torch.equal(nonempty, masks.flatten(-2).any(-1))
    empty_boxes, empty_flags = boxes_and_nonempty(torch.zeros((0, 5, 5), dtype=torch.bool))
    assert empty_boxes.shape == (0, 4) and empty_flags.shape == (0,) and empty_flags.dtype == torch.bool


def test_box_iou() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 3.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.0])
    assert box_iou(b[3:], b[3:]).tolist() == [[0.0]]  # degenerate: no NaN


def test_nms_on_hand_made_boxes() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0
            [1.0, 0.0, 11.0, 10.0],  # 1: IoU 0.818 with 0
            [5.0, 0.0, 15.0, 10.0],  # 2: IoU 1/3 with 0, 0.4286 with 1
            [20.0, 20.0, 30.0, 30.0],  # 3: alone
            [20.0, 20.0, 30.0, 30.0],  # 4: duplicate of 3
        ]
    )
    scores = torch.tensor([0.8, 0.9, 0.7, 0.5, 0.6])
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 4]
    assert nms(boxes, scores, 0.3).tolist() == [1, 4]
    assert nms(boxes, scores, 0.85).tolist() == [1, 0, 2, 4]
    # ties keep input order
    assert nms(boxes[3:], torch.tensor([0.5, 0.5]), 0.7).tolist() == [0]
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []
    # categories never suppress each other
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0, 1]), 0.7).tolist()) == [0, 1, 2, 3, 4]
    assert batched_nms(boxes, scores, torch.zeros(5, dtype=torch.int64), 0.7).tolist() == [1, 2, 4]


def test_remove_small_regions() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # 100 px island
    mask[4, 4] = False  # 1 px hole
    mask[8:10, 8:10] = False  # 4 px hole
    mask[15:17, 15:17] = True  # 4 px island
    mask[0, 19] = True  # 1 px island

    no_islands, changed = remove_small_regions(mask, 5, "islands")
    assert changed
    assert no_islands.sum() == mask.sum() - 5
    assert not no_islands[15:17, 15:17].any() and not no_islands[0, 19]

    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed
    assert filled[2:12, 2:12].all()
    assert filled.sum() == mask.sum() + 5

    only_big_hole, changed = remove_small_regions(mask, 2, "holes")
    assert changed and only_big_hole[4, 4] and not only_big_hole[8:10, 8:10].any()

    same, changed = remove_small_regions(mask, 1, "islands")
    assert not changed and np.array_equal(same, mask)

    # every island small: the largest survives
    tiny = np.zeros((10, 10), dtype=bool)
    tiny[0:2, 0:2] = True
    tiny[8, 8] = True
    kept, changed = remove_small_regions(tiny, 50, "islands")
    assert changed and kept.sum() == 4 and kept[0:2, 0:2].all()

    # 8-connectivity: diagonal pixels form one region
    diag = np.eye(6, dtype=bool)
    kept, changed = remove_small_regions(diag, 6, "islands")
    assert not changed
    with pytest.raises(ValueError):
        remove_small_regions(mask, 5, "blobs")
