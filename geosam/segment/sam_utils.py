"""segment-anything's pure helpers (``segment_anything/utils/amg.py``), with SAM's names and semantics.

Each function matches SAM's result on the same input (checked by
``tests/test_segment_sam_diff.py`` against SAM's own code), except where a
docstring says otherwise. Boxes are XYXY in pixel indices with the
right/bottom edge *inclusive* for mask boxes (a one-pixel mask at (x, y) has
the box (x, y, x, y)) and *exclusive* for crop boxes (SAM's conventions).
NMS is plain torch (no torchvision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from geosam.errors import ConfigError
from geosam.segment.lowres import _any, _first_last

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class MaskData:
    """Aligned per-mask data of one crop or chip (SAM's ``MaskData``, with declared fields).

    iou_preds: float32 (N,): the decoder's predicted IoU.
    stability_score: float32 (N,).
    boxes: int64 (N, 4): XYXY inclusive boxes of the masks, in the frame of ``masks``.
    masks: bool (N, H, W), or None while only the low-res logits are kept.
    low_res_logits: float (N, h, w) decoder logits (upsampled on demand), or None.
    crop_area: float32 (N,): pixel area of the crop each mask came from (crop NMS prefers small crops).

    Every field that is not None has N rows; `filter` and `cat`
    keep them aligned.
    """

    iou_preds: torch.Tensor
    stability_score: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor | None = None
    low_res_logits: torch.Tensor | None = None
    crop_area: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.iou_preds.shape[0])

    def filter(self, keep: torch.Tensor) -> MaskData:
        """The rows selected by a boolean mask or an index tensor ``keep`` (index order kept)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v[keep.to(v.device)]
        return MaskData(**out)

    def with_(self, **changes: Any) -> MaskData:
        """A copy with some fields replaced (each with N rows)."""
        return replace(self, **changes)

    @staticmethod
    def cat(parts: Sequence[MaskData]) -> MaskData:
        """Rows of ``parts`` one after the other; a field must be None in all parts or in none."""
        if not parts:
            raise ValueError("MaskData.cat needs at least one part")
        out: dict[str, Any] = {}
        for f in fields(MaskData):
            vals = [getattr(p, f.name) for p in parts]
            if all(v is None for v in vals):
                out[f.name] = None
            elif any(v is None for v in vals):
                raise ValueError(f"MaskData.cat: field {f.name} is None in some parts only")
            else:
                out[f.name] = torch.cat([v.to(vals[0].device) for v in vals])
        return MaskData(**out)


# ---------------------------------------------------------------------------
# grids and crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) float64 points evenly spaced in [0, 1] x [0, 1], x varying fastest.

    Point ``k = j * n + i`` is ``((i + 0.5) / n, (j + 0.5) / n)``; multiply by
    (width, height) to get chip-frame coordinates (pixels, x = column).
    """
    if n_per_side < 1:
        raise ConfigError(f"points_per_side must be >= 1, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def grid_pixel_indices(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int64 of the chip pixels under chip-frame (x, y) points, clipped to the chip."""
    cols = np.clip(np.floor(points[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(np.int64), 0, height - 1)
    return rows, cols


def generate_crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crop boxes: the whole chip, then ``(2 ** (i + 1)) ** 2`` overlapping crops in layer i + 1.

    Boxes are XYXY chip-frame pixels with exclusive right/bottom edges, in SAM's
    order (x0 outer, y0 inner). Returns ``(boxes, layer index per box)``.
    (SAM's signature takes ``im_size = (height, width)``.)
    """
    boxes: list[list[int]] = [[0, 0, width, height]]
    layers = [0]
    short_side = min(height, width)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)

    for i_layer in range(n_layers):
        n_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w = crop_len(width, n_side, overlap)
        crop_h = crop_len(height, n_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(i_layer + 1)
    return boxes, layers


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0) -> torch.Tensor:
    """(N,) True where a **chip-frame** XYXY box lies within ``atol`` px of an edge of
    ``crop_box`` that is not also an edge of ``orig_box`` (the chip): such masks
    are probably cut by the crop and are dropped, as in SAM.

    SAM's function takes crop-frame boxes and adds the crop offset itself; this
    one takes them already offset.
    """
    crop_t = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    b = boxes.to(torch.float32)
    near_crop = torch.isclose(b, crop_t[None, :], atol=atol, rtol=0)
    near_orig = torch.isclose(b, orig_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_orig, dim=1)


# ---------------------------------------------------------------------------
# scores and boxes


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """Number of True pixels per boolean mask (..., H, W) -> int64 (...).

    On the CPU this is numpy's popcount-based ``count_nonzero`` (faster than a
    torch ``sum`` over booleans, which widens every pixel first).
    """
    lead = masks.shape[:-2]
    if masks.device.type == "cpu" and masks.dtype == torch.bool and masks.numel() > 0:
        flat = masks.detach().reshape(-1, masks.shape[-2] * masks.shape[-1]).numpy()
        return torch.from_numpy(np.count_nonzero(flat, axis=1).astype(np.int64)).reshape(lead)
    return masks.sum(dim=(-1, -2), dtype=torch.int64)


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``mask_threshold +/- threshold_offset``.

    masks: logits (..., H, W). Returns float32 (...). Where even the loose mask
    is empty the score is 0 (SAM's is NaN, 0 / 0: both fail every threshold > 0).
    """
    high = count_true(masks > (mask_threshold + threshold_offset))
    low = count_true(masks > (mask_threshold - threshold_offset))
    return stability_from_counts(high, low)


def stability_from_counts(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Stability score from the pixel counts of the strict (``high``) and loose (``low``) masks; 0 where ``low`` is 0.

    float32 division, as SAM's int32 / int32, so scores equal SAM's bit for bit.
    """
    score = high.to(torch.float32) / low.clamp(min=1).to(torch.float32)
    return torch.where(low > 0, score, torch.zeros_like(score))


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY int64 boxes (..., 4) of boolean masks (..., H, W); inclusive pixel indices.

    An empty mask gets the box (0, 0, 0, 0).
    """
    return boxes_and_nonempty(masks)[0]


def boxes_and_nonempty(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`batched_mask_to_box`'s boxes of boolean masks (..., H, W) and whether each mask has a pixel (...), from one
    pass over the masks (no count of their pixels)."""
    if masks.numel() == 0:
        lead = masks.shape[:-2]
        return (torch.zeros((*lead, 4), dtype=torch.int64, device=masks.device),
                torch.zeros(lead, dtype=torch.bool, device=masks.device))
    masks = masks.to(torch.bool)
    # the byte maxima: torch's bool ``any`` over a 1024 px chip's rows took 44 ms for 16 masks, the maxima 0.6 ms
    top, bottom = _first_last(_any(masks, -1))  # rows (..., H)
    left, right = _first_last(_any(masks, -2))  # columns (..., W)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    nonempty = bottom >= 0
    return torch.where(nonempty[..., None], boxes, torch.zeros_like(boxes)), nonempty


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of XYXY boxes (N, 4) and (M, 4), areas as (x1 - x0) * (y1 - y0), float32.

    The arithmetic is torchvision's NMS kernel's; pairs whose union is zero
    (degenerate boxes) have IoU 0 (torchvision: NaN, which suppresses nothing either).
    """
    b1 = boxes1.to(torch.float32)
    b2 = boxes2.to(torch.float32)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = torch.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy non-maximum suppression, like ``torchvision.ops.nms``.

    Visits boxes by decreasing score (ties: input order, torchvision's stable
    sort) and drops every later box whose IoU with a kept box is greater than
    ``iou_thresh``. Returns the kept indices (int64) in decreasing score order.
    """
    n = int(boxes.shape[0])
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores.to(torch.float32), descending=True, stable=True).indices
    ordered = boxes[order]
    iou = box_iou(ordered, ordered).cpu().numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_thresh
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """NMS run independently per category ``idxs`` (boxes of different categories never suppress each other).

    Kept indices in decreasing score order, ties in input order (torchvision's
    coordinate-trick path; its path for over 1000 boxes sorts ties unstably).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    b = boxes.to(torch.float32)
    offsets = idxs.to(torch.float32) * (b.max() + 1)
    return nms(b + offsets[:, None], scores, iou_thresh)


# ---------------------------------------------------------------------------
# small regions


def _first_block_key(regions: np.ndarray, n_labels: int) -> np.ndarray:
    """Per label 1..n: the first 2 x 2 block (block-raster order) holding one of its pixels.

    OpenCV's 8-connected labelling (Spaghetti / BBDT) scans 2 x 2 blocks, so it
    numbers components in this order (all foreground pixels of a block are
    8-connected, so no block holds two components).
    """
    w = regions.shape[1]
    rows, cols = np.nonzero(regions)
    keys = (rows // 2) * ((w + 1) // 2) + cols // 2
    first = np.full(n_labels, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, regions[rows, cols] - 1, keys)
    return first


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Remove small islands (``mode="islands"``) or fill small holes (``mode="holes"``).

    As SAM's (8-connected components; a component smaller than ``area_thresh``
    pixels is small). When every island is small the largest is kept; among
    islands tied for largest SAM keeps cv2's lowest label (``np.argmax``),
    which is the island whose first 2 x 2 block comes first in block-raster
    order (`_first_block_key`): this function keeps the same one, with
    scipy instead of cv2. Returns ``(mask, changed)``.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    mask = np.asarray(mask, dtype=bool)
    working = np.logical_xor(correct_holes, mask)
    regions, n_labels = ndimage.label(working, structure=_EIGHT_CONNECTED)
    if n_labels == 0:
        return mask, False
    sizes = np.bincount(regions.ravel(), minlength=n_labels + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill_labels = [0, *small]
    if not correct_holes:
        fill_labels = [i for i in range(n_labels + 1) if i not in fill_labels]
        if not fill_labels:  # every island is small: keep the largest (cv2's first among ties)
            largest = np.flatnonzero(sizes == sizes.max())
            keys = _first_block_key(regions, n_labels)[largest]
            fill_labels = [int(largest[np.argmin(keys)]) + 1]
    return np.isin(regions, fill_labels), True


__all__ = [
    "MaskData",
    "batched_mask_to_box",
    "batched_nms",
    "box_iou",
    "boxes_and_nonempty",
    "build_point_grid",
    "calculate_stability_score",
    "count_true",
    "generate_crop_boxes",
    "grid_pixel_indices",
    "is_box_near_crop_edge",
    "nms",
    "remove_small_regions",
    "stability_from_counts",
]
