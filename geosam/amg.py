"""Segment everything in a chip with SAM: a point grid, filtered and de-duplicated.

This follows segment-anything's ``SamAutomaticMaskGenerator`` (including its
``crop_n_layers`` multi-scale crops) and keeps its parameter names, with these
geosam choices:

* grid points that fall on invalid chip pixels (``chip.valid`` False) are not
  decoded at all, and every mask is cut to the valid pixels;
* predicted-IoU and stability-score filters run on the decoder's
  **low-resolution logits**; only the surviving masks are upsampled to the
  chip, in small chunks, so memory stays bounded (their stability score is
  then confirmed at chip resolution, so the result is SAM's);
* several chips (and crops) are encoded in one encoder batch
  (:meth:`SamMaskGenerator.generate_batch`); per-stage wall times accumulate
  in ``SamMaskGenerator.timings_s``;
* non-maximum suppression is plain torch (no torchvision).

Frames: the grid and every returned mask are in the **chip frame** (chip
pixels, x = column, y = row); prompts are converted to the model frame by
:func:`geosam.models.to_model_frame`. Boxes are XYXY in pixel indices with the
right/bottom edge *inclusive* (SAM's convention: a one-pixel mask at (x, y)
has the box (x, y, x, y)).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from geosam.config import DEFAULT_MODEL
from geosam.errors import ConfigError
from geosam.masks import ChipMasks
from geosam.models import (
    SamBundle,
    compile_bundle,
    decode_points,
    encode,
    load_sam,
    preprocess,
    require,
    to_model_frame,
    upsample_logits,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from geosam.io import Chip

log = logging.getLogger(__name__)

#: Masks upsampled to the chip at once (bounds memory: chunk x input_size^2 float32).
UPSAMPLE_CHUNK = 16

#: Count and box masks from their low-res logits and upsample only those that survive NMS, where the
#: chip is the model's input size and wholly valid (:func:`upsampled_x4_stats`); False: upsample every
#: mask that passes the low-res filters (same results, more time and memory).
LAZY_UPSAMPLE = True

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------
# pure helpers (SAM's names)


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) points evenly spaced in [0, 1] x [0, 1], x varying fastest.

    Point ``k = j * n + i`` is ``((i + 0.5) / n, (j + 0.5) / n)``; multiply by
    (width, height) to get chip-frame coordinates.
    """
    if n_per_side < 1:
        raise ConfigError(f"points_per_side must be >= 1, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """Number of True pixels per boolean mask (..., H, W) -> int64 (...).

    On the CPU this is numpy's popcount-based ``count_nonzero`` (several times
    faster than a torch ``sum`` over booleans, which widens every pixel first).
    """
    lead = masks.shape[:-2]
    if masks.device.type == "cpu" and masks.dtype == torch.bool and masks.numel() > 0:
        flat = masks.detach().reshape(-1, masks.shape[-2] * masks.shape[-1]).numpy()
        return torch.from_numpy(np.count_nonzero(flat, axis=1).astype(np.int64)).reshape(lead)
    return masks.sum(dim=(-1, -2), dtype=torch.int64)


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and last True along the last axis (..., L); L and -1 where there is none."""
    n = flags.shape[-1]
    ar = torch.arange(n, device=flags.device)
    return torch.where(flags, ar, n).amin(dim=-1), torch.where(flags, ar, -1).amax(dim=-1)


_BITS4 = torch.tensor([1, 2, 4, 8], dtype=torch.int64)
_FIRST4 = torch.tensor([4] + [(c & -c).bit_length() - 1 for c in range(1, 16)], dtype=torch.int64)
_LAST4 = torch.tensor([-1] + [c.bit_length() - 1 for c in range(1, 16)], dtype=torch.int64)


def _first_last4(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_first_last` for rows of exactly 4 flags (M, 4), by table lookup (reductions over 4 are slow)."""
    code = (flags.to(torch.int64) * _BITS4.to(flags.device)).sum(dim=1)
    return _FIRST4.to(flags.device)[code], _LAST4.to(flags.device)[code]


def upsampled_x4_stats(
    low: torch.Tensor, thresholds: Sequence[float], box_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts and boxes of SAM's chip-resolution masks, from the low-res logits alone.

    For ``up`` = ``low`` (N, h, w) upsampled 4x bilinearly with
    ``align_corners=False`` (SAM's 256 px low-res logits -> a 1024 px chip),
    returns ``counts`` (N, T) int64: ``(up > t).sum()`` per mask for each of
    ``thresholds``, and ``boxes`` (N, 4) int64: the XYXY box (inclusive,
    :func:`batched_mask_to_box`) of ``up > box_threshold``, without building ``up``.

    Every interior pixel of ``up`` is a convex combination of the corners of
    one 2 x 2 cell of ``low``: a cell whose corners all lie above every
    threshold (by a rounding margin) has all its 16 pixels above, one whose
    corners all lie at or below every threshold has none; only the other cells
    (the mask outlines) are interpolated, from their four corners with the
    kernel's weights (values equal ``up``'s to float rounding, ~1 ulp, so a
    pixel within an ulp of a threshold may count differently). The 2 px border
    strips are the 1-D interpolation of the border rows / columns.
    """
    n, h, w = low.shape
    if h < 2 or w < 2:
        raise ValueError(f"low-res logits must be at least 2 x 2, got {tuple(low.shape)}")
    hh, ww = 4 * h, 4 * w
    lo = low.to(torch.float32)
    t_all = [float(t) for t in thresholds] + [float(box_threshold)]
    t_lo, t_hi = min(t_all), max(t_all)
    margin = (1e-5 * (1.0 + lo.abs().flatten(1).amax(dim=1)))[:, None, None]  # > float rounding of the weights
    c00, c01, c10, c11 = lo[:, :-1, :-1], lo[:, :-1, 1:], lo[:, 1:, :-1], lo[:, 1:, 1:]
    cmin = torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11))  # (N, h-1, w-1)
    cmax = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
    solid = cmin > t_hi + margin  # all 16 pixels above every threshold
    mixed = (cmax > t_lo - margin) & ~solid  # the rest is below every threshold
    ni, ri, ci = mixed.nonzero(as_tuple=True)
    if ni.numel():
        # the kernel's weights for 4x: pixel k of a cell sits at (2k + 1) / 8 between two corners
        l1 = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float32, device=low.device)
        l0 = 1.0 - l1
        top_row = lo[ni, ri, ci, None] * l0 + lo[ni, ri, ci + 1, None] * l1  # (M, 4): columns
        bottom_row = lo[ni, ri + 1, ci, None] * l0 + lo[ni, ri + 1, ci + 1, None] * l1
        vals = top_row[:, None, :] * l0[:, None] + bottom_row[:, None, :] * l1[:, None]  # (M, 4 rows, 4 columns)
    else:
        vals = lo.new_zeros((0, 4, 4))
    # border strips: rows 0-1 and hh-2..hh-1 (full width), columns 0-1 and ww-2..ww-1 (rows 2..hh-3)
    top = F.interpolate(lo[:, None, :1, :], size=(1, ww), mode="bilinear", align_corners=False)[:, 0, 0]  # (N, ww)
    bottom = F.interpolate(lo[:, None, -1:, :], size=(1, ww), mode="bilinear", align_corners=False)[:, 0, 0]
    left = F.interpolate(lo[:, None, :, :1], size=(hh, 1), mode="bilinear", align_corners=False)[:, 0, 2:-2, 0]
    right = F.interpolate(lo[:, None, :, -1:], size=(hh, 1), mode="bilinear", align_corners=False)[:, 0, 2:-2, 0]

    n_solid = solid.flatten(1).sum(dim=1)
    counts = torch.zeros((n, len(thresholds)), dtype=torch.int64, device=low.device)
    for k, t in enumerate(thresholds):
        c = n_solid * 16 + 2 * ((top > t).sum(dim=1) + (bottom > t).sum(dim=1) + (left > t).sum(dim=1) + (right > t).sum(dim=1))
        if ni.numel():
            c.index_add_(0, ni, (vals > t).flatten(1).sum(dim=1))
        counts[:, k] = c
    # boxes of up > box_threshold
    tb = float(box_threshold)
    big = max(hh, ww)
    y0 = torch.full((n,), big, dtype=torch.int64, device=low.device)
    x0 = torch.full((n,), big, dtype=torch.int64, device=low.device)
    y1 = torch.full((n,), -1, dtype=torch.int64, device=low.device)
    x1 = torch.full((n,), -1, dtype=torch.int64, device=low.device)

    def extend(lo_: torch.Tensor, hi_: torch.Tensor, first: torch.Tensor, last: torch.Tensor, hit: torch.Tensor):
        return torch.where(hit, torch.minimum(lo_, first), lo_), torch.where(hit, torch.maximum(hi_, last), hi_)

    # solid cells: whole 4 x 4 blocks at rows 4r + 2 .. 4r + 5, columns 4c + 2 .. 4c + 5
    r_first, r_last = _first_last(solid.any(dim=2))
    c_first, c_last = _first_last(solid.any(dim=1))
    has = r_last >= 0
    y0, y1 = extend(y0, y1, 4 * r_first + 2, 4 * r_last + 5, has)
    x0, x1 = extend(x0, x1, 4 * c_first + 2, 4 * c_last + 5, has)
    # outline cells
    if ni.numel():
        vb = vals > tb
        fr, lr_ = _first_last4(vb.any(dim=2))
        fc, lc = _first_last4(vb.any(dim=1))
        any_cell = lr_ >= 0
        m_i = ni[any_cell]
        y0.scatter_reduce_(0, m_i, (4 * ri + 2 + fr)[any_cell], reduce="amin")
        y1.scatter_reduce_(0, m_i, (4 * ri + 2 + lr_)[any_cell], reduce="amax")
        x0.scatter_reduce_(0, m_i, (4 * ci + 2 + fc)[any_cell], reduce="amin")
        x1.scatter_reduce_(0, m_i, (4 * ci + 2 + lc)[any_cell], reduce="amax")
    # border strips: each is a band of 2 identical lines; (first, last) hit along the band,
    # the band's 2 lines across it
    for strip, lines, offset, horizontal in (
        (top, (0, 1), 0, True),
        (bottom, (hh - 2, hh - 1), 0, True),
        (left, (0, 1), 2, False),
        (right, (ww - 2, ww - 1), 2, False),
    ):
        first, last = _first_last(strip > tb)
        hit = last >= 0
        across = (torch.full_like(first, lines[0]), torch.full_like(first, lines[1]))
        along = (first + offset, last + offset)
        if horizontal:  # rows `lines`, columns along the strip
            y0, y1 = extend(y0, y1, *across, hit)
            x0, x1 = extend(x0, x1, *along, hit)
        else:  # columns `lines`, rows along the strip (which starts at row 2)
            x0, x1 = extend(x0, x1, *across, hit)
            y0, y1 = extend(y0, y1, *along, hit)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = y1 < 0
    return counts, torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``mask_threshold +/- threshold_offset``.

    masks: logits (..., H, W). Returns float32 (...); 0 where even the loose
    mask is empty.
    """
    high = count_true(masks > (mask_threshold + threshold_offset))
    low = count_true(masks > (mask_threshold - threshold_offset))
    return stability_from_counts(high, low)


def stability_from_counts(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Stability score from the pixel counts of the strict (``high``) and loose (``low``) masks; 0 where ``low`` is 0."""
    score = high.to(torch.float32) / low.clamp(min=1).to(torch.float32)
    return torch.where(low > 0, score, torch.zeros_like(score))


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (..., 4) of boolean masks (..., H, W); inclusive pixel indices.

    An empty mask gets the box (0, 0, 0, 0).
    """
    if masks.numel() == 0:
        return torch.zeros((*masks.shape[:-2], 4), dtype=torch.int64, device=masks.device)
    masks = masks.to(torch.bool)
    top, bottom = _first_last(masks.any(dim=-1))  # rows (..., H)
    left, right = _first_last(masks.any(dim=-2))  # columns (..., W)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = bottom < 0
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of XYXY boxes (N, 4) and (M, 4), areas as (x1 - x0) * (y1 - y0).

    Pairs whose union is zero (degenerate boxes) have IoU 0.
    """
    b1 = boxes1.to(torch.float32)
    b2 = boxes2.to(torch.float32)
    area1 = (b1[:, 2] - b1[:, 0]).clamp(min=0) * (b1[:, 3] - b1[:, 1]).clamp(min=0)
    area2 = (b2[:, 2] - b2[:, 0]).clamp(min=0) * (b2[:, 3] - b2[:, 1]).clamp(min=0)
    lt = torch.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = torch.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy non-maximum suppression, like ``torchvision.ops.nms``.

    Visits boxes by decreasing score (ties: input order) and drops every later
    box whose IoU with a kept box is greater than ``iou_thresh``. Returns the
    kept indices (int64) in decreasing score order.
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
    """NMS run independently per category ``idxs`` (boxes of different categories never suppress each other)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    b = boxes.to(torch.float32)
    offsets = idxs.to(torch.float32) * (b.max() + 1)
    return nms(b + offsets[:, None], scores, iou_thresh)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Remove small islands (``mode="islands"``) or fill small holes (``mode="holes"``).

    Regions are 8-connected; ``area_thresh`` is in chip pixels. If every island
    is small, the largest one is kept. Returns ``(mask, changed)``.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = np.logical_xor(correct_holes, np.asarray(mask, dtype=bool))
    regions, n_labels = ndimage.label(working, structure=_EIGHT_CONNECTED)
    if n_labels == 0:
        return np.asarray(mask, dtype=bool), False
    sizes = np.bincount(regions.ravel(), minlength=n_labels + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return np.asarray(mask, dtype=bool), False
    fill_labels = [0, *small]
    if not correct_holes:
        fill_labels = [i for i in range(n_labels + 1) if i not in fill_labels]
        if not fill_labels:  # every island is small: keep the largest
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True



def generate_crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crop boxes: the whole chip, then ``(2 ** (i + 1)) ** 2`` overlapping crops in layer i + 1.

    Boxes are XYXY chip-frame pixels with exclusive right/bottom edges. Returns
    ``(boxes, layer index per box)``.
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
    """(N,) True where a chip-frame XYXY box lies within ``atol`` px of an edge of
    ``crop_box`` that is not also an edge of ``orig_box`` (the chip): such masks
    are probably cut by the crop and are dropped, as in SAM.
    """
    crop_t = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    b = boxes.to(torch.float32)
    near_crop = torch.isclose(b, crop_t[None, :], atol=atol, rtol=0)
    near_orig = torch.isclose(b, orig_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_orig, dim=1)


# ---------------------------------------------------------------------------
# the generator

#: Low-resolution stability scores this far below ``stability_score_thresh`` still reach
#: the exact (chip-resolution) check; lower scores are dropped before upsampling.
STABILITY_PREFILTER_MARGIN = 0.05

#: Stages timed in :attr:`SamMaskGenerator.timings_s` (seconds, accumulated).
TIMED_STAGES = ("encode", "decode", "filter", "upsample", "nms", "postprocess")


def _check_unit(name: str, value: float, *, low_open: bool = False) -> float:
    v = float(value)
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok or math.isnan(v):
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {rng}, got {value}")
    return v


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Adds the wall time of a ``with`` block to ``timings[stage]`` (device synchronised)."""

    def __init__(self, timings: dict[str, float], stage: str, device: torch.device) -> None:
        self.timings, self.stage, self.device = timings, stage, device

    def __enter__(self) -> Self:
        _sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t0


@dataclass
class _Candidates:
    """Masks of one crop that passed the filters: chip-resolution masks, or their low-res logits
    (upsampled on demand by :meth:`masks`), with predicted IoU, stability score and box (crop frame)."""

    iou: torch.Tensor
    stab: torch.Tensor
    boxes: torch.Tensor
    full: torch.Tensor | None  # (M, h, w) bool, or None when lazy
    lows: torch.Tensor | None  # (M, lr, lr) low-res logits when lazy
    upsample: Callable[[torch.Tensor], torch.Tensor]  # low-res logits -> bool masks (crop frame)
    hw: tuple[int, int]

    @property
    def n(self) -> int:
        return int(self.iou.shape[0])

    def masks(self, index: torch.Tensor) -> torch.Tensor:
        """Bool masks (len(index), h, w) on the CPU of the candidates at ``index``."""
        if self.full is not None:
            return self.full[index]
        assert self.lows is not None
        sel = self.lows[index.to(self.lows.device)]
        parts = [self.upsample(sel[c : c + UPSAMPLE_CHUNK]).cpu() for c in range(0, sel.shape[0], UPSAMPLE_CHUNK)]
        return torch.cat(parts) if parts else torch.zeros((0, *self.hw), dtype=torch.bool)


class SamMaskGenerator:
    """Segment everything in a chip with a SAM model (a :class:`~geosam.masks.MaskGenerator`).

    model: a hub id or local directory (loaded with :func:`geosam.models.load_sam`
        on ``device`` / ``dtype``; ``dtype="auto"`` picks mixed precision where the
        hardware has it, see :func:`geosam.models.resolve_dtype`), or an already
        loaded :class:`~geosam.models.SamBundle` (then ``device`` and ``dtype`` are
        ignored). ``name`` is the id/path.

    The other parameters keep segment-anything's names and meanings:

    points_per_side: the grid has ``points_per_side ** 2`` points over the chip.
    points_per_batch: point prompts decoded together (memory vs. speed).
    pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables).
    stability_score_thresh: keep masks whose stability score is > this (0 disables).
    stability_score_offset: logit offset used for the stability score.
    mask_threshold: logit threshold binarising masks.
    box_nms_thresh: box IoU above which the lower-scoring mask is dropped (within a crop).
    crop_n_layers: if > 0, also segment ``(2 ** i) ** 2`` overlapping crops of the chip in
        layer i = 1..n (finds small objects); masks touching an inner crop edge are dropped.
    crop_overlap_ratio: overlap of the layer-1 crops as a fraction of the chip's short side.
    crop_n_points_downscale_factor: layer i uses ``points_per_side / factor ** i`` points per side.
    crop_nms_thresh: box IoU for the NMS between crops (smaller crops win).
    min_mask_region_area: if > 0, remove islands and fill holes smaller than
        this many chip pixels, then drop masks smaller than it.
    compile: ``torch.compile`` the encoder and decoder paths (:func:`geosam.models.compile_bundle`; the first
        chip is slow, later ones ~10 % faster on a CPU).
    encoder_batch_size: images (chips and crops) encoded together by :meth:`generate_batch`.

    The stability filter runs on the decoder's low-resolution logits with a
    margin (:data:`STABILITY_PREFILTER_MARGIN`); the survivors are upsampled and
    their score is recomputed on the chip-resolution logits, as SAM does, so the
    kept masks are the reference's. After each :meth:`generate`, ``last_stats``
    holds counts: ``points_total``, ``points_decoded``, ``masks_decoded``,
    ``masks_after_filter``, ``masks_after_nms``, ``masks_kept``. ``timings_s``
    accumulates seconds per stage (:data:`TIMED_STAGES`) over every call;
    :meth:`reset_timings` clears it.
    """

    def __init__(
        self,
        model: str | SamBundle = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        crop_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
        compile: bool = False,
        encoder_batch_size: int = 4,
    ) -> None:
        if int(points_per_side) != points_per_side or points_per_side < 1:
            raise ConfigError(f"points_per_side must be an integer >= 1, got {points_per_side}")
        if int(points_per_batch) != points_per_batch or points_per_batch < 1:
            raise ConfigError(f"points_per_batch must be an integer >= 1, got {points_per_batch}")
        if not float(stability_score_offset) > 0 or not math.isfinite(float(stability_score_offset)):
            raise ConfigError(f"stability_score_offset must be a positive number, got {stability_score_offset}")
        if not math.isfinite(float(mask_threshold)):
            raise ConfigError(f"mask_threshold must be a finite number, got {mask_threshold}")
        if int(min_mask_region_area) != min_mask_region_area or min_mask_region_area < 0:
            raise ConfigError(f"min_mask_region_area must be an integer >= 0 (chip pixels), got {min_mask_region_area}")
        if int(crop_n_layers) != crop_n_layers or crop_n_layers < 0:
            raise ConfigError(f"crop_n_layers must be an integer >= 0, got {crop_n_layers}")
        if int(crop_n_points_downscale_factor) != crop_n_points_downscale_factor or crop_n_points_downscale_factor < 1:
            raise ConfigError(f"crop_n_points_downscale_factor must be an integer >= 1, got {crop_n_points_downscale_factor}")
        if int(encoder_batch_size) != encoder_batch_size or encoder_batch_size < 1:
            raise ConfigError(f"encoder_batch_size must be an integer >= 1, got {encoder_batch_size}")
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = _check_unit("pred_iou_thresh", pred_iou_thresh)
        self.stability_score_thresh = _check_unit("stability_score_thresh", stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.mask_threshold = float(mask_threshold)
        self.box_nms_thresh = _check_unit("box_nms_thresh", box_nms_thresh, low_open=True)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_overlap_ratio = _check_unit("crop_overlap_ratio", crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.crop_nms_thresh = _check_unit("crop_nms_thresh", crop_nms_thresh, low_open=True)
        self.min_mask_region_area = int(min_mask_region_area)
        self.compile = bool(compile)
        self.encoder_batch_size = int(encoder_batch_size)

        self._load_args: tuple[str, str, str] | None
        if isinstance(model, SamBundle):
            self._bundle: SamBundle | None = model
            self._load_args = None
            self.name: str = model.name
        else:
            self._load_args = (str(model), device, dtype)
            self._bundle = load_sam(str(model), device=device, dtype=dtype)
            self.name = str(model)
        require(self._bundle, "segment_everything")  # before any chip work: a box-only model cannot
        if self.compile and self._bundle is not None:
            compile_bundle(self._bundle)
        self.last_stats: dict[str, int] = {}
        self.timings_s: dict[str, float] = {}

    # -- pickling: a generator built from a name reloads its model where it is unpickled
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._load_args is not None:
            state["_bundle"] = None
        return state

    @property
    def bundle(self) -> SamBundle:
        """The loaded model."""
        if self._bundle is None:
            assert self._load_args is not None
            name, device, dtype = self._load_args
            self._bundle = load_sam(name, device=device, dtype=dtype)
            if self.compile:
                compile_bundle(self._bundle)
        return self._bundle

    def __repr__(self) -> str:
        return (
            f"SamMaskGenerator({self.name!r}, points_per_side={self.points_per_side}, "
            f"pred_iou_thresh={self.pred_iou_thresh}, stability_score_thresh={self.stability_score_thresh}, "
            f"box_nms_thresh={self.box_nms_thresh}, crop_n_layers={self.crop_n_layers}, "
            f"min_mask_region_area={self.min_mask_region_area})"
        )

    def reset_timings(self) -> None:
        """Forget the accumulated per-stage timings."""
        self.timings_s = {}

    def _time(self, stage: str) -> _Timer:
        return _Timer(self.timings_s, stage, self.bundle.device)

    # -- main entry
    def generate(self, chip: Chip) -> ChipMasks:
        """Instance masks (chip frame) for every object SAM finds in ``chip``."""
        return self.generate_batch([chip])[0]

    def generate_batch(self, chips: Sequence[Chip]) -> list[ChipMasks]:
        """:meth:`generate` for several chips, their images (and crops) encoded in batches.

        Results equal per-chip :meth:`generate` up to the encoder's batch-size
        numerics; ``last_stats`` then holds the counts of the last chip.
        """
        jobs: list[tuple[int, list[int], int, np.ndarray]] = []  # chip index, crop box, layer, points
        per_chip: list[dict[str, Any]] = []
        for ci, chip in enumerate(chips):
            h, w = int(chip.image.shape[0]), int(chip.image.shape[1])
            valid = np.asarray(chip.valid, dtype=bool)
            if valid.shape != (h, w):
                raise ValueError(f"chip.valid has shape {valid.shape}, expected {(h, w)}")
            region = chip.prompt_region()
            boxes, layers = generate_crop_boxes(h, w, self.crop_n_layers, self.crop_overlap_ratio)
            stats = {
                "points_total": 0,
                "points_decoded": 0,
                "masks_decoded": 0,
                "masks_after_filter": 0,
                "masks_after_nms": 0,
                "masks_kept": 0,
            }
            per_chip.append({"h": h, "w": w, "valid": valid, "stats": stats, "boxes": boxes, "parts": []})
            if not valid.any():
                stats["points_total"] = self.points_per_side**2
                continue
            for box, layer in zip(boxes, layers):
                x0, y0, x1, y1 = box
                n_side = max(1, int(self.points_per_side / (self.crop_n_points_downscale_factor**layer)))
                stats["points_total"] += n_side**2
                pts = self._crop_points(n_side, region[y0:y1, x0:x1])
                stats["points_decoded"] += int(pts.shape[0])
                if pts.shape[0]:
                    jobs.append((ci, box, layer, pts))

        for start in range(0, len(jobs), self.encoder_batch_size):
            group = jobs[start : start + self.encoder_batch_size]
            with self._time("encode"):
                images = [chips[ci].image[b[1] : b[3], b[0] : b[2]] for ci, b, _, _ in group]
                pixel_values, _, resized = preprocess(self.bundle, images)
                embeddings = encode(self.bundle, pixel_values)
            for k, (ci, box, _layer, pts) in enumerate(group):
                info = per_chip[ci]
                x0, y0, x1, y1 = box
                part = self._process_crop(
                    embeddings[k : k + 1], resized[k], info["valid"][y0:y1, x0:x1], pts, box, (info["h"], info["w"]), info["stats"]
                )
                if part is not None:
                    info["parts"].append((box, *part))
            del embeddings

        results = []
        for info in per_chip:
            result = self._finish_chip(info)
            info["stats"]["masks_kept"] = len(result)
            self.last_stats = info["stats"]
            results.append(result)
            log.debug("chip: %s", info["stats"])
        return results

    # -- steps
    def grid_points(self, height: int, width: int, valid: np.ndarray | None = None) -> np.ndarray:
        """Chip-frame (x, y) grid points (float64, (N, 2)); those on invalid pixels dropped."""
        return self._points(self.points_per_side, height, width, valid)

    @staticmethod
    def _points(n_side: int, height: int, width: int, valid: np.ndarray | None) -> np.ndarray:
        pts = build_point_grid(n_side) * np.array([width, height], dtype=np.float64)
        if valid is None:
            return pts
        cols = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, width - 1)
        rows = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, height - 1)
        return pts[valid[rows, cols]]

    def _crop_points(self, n_side: int, region: np.ndarray) -> np.ndarray:
        return self._points(n_side, region.shape[0], region.shape[1], region)

    def _process_crop(
        self,
        embedding: torch.Tensor,
        resized: tuple[int, int],
        valid: np.ndarray,
        points: np.ndarray,
        crop_box: list[int],
        chip_hw: tuple[int, int],
        stats: dict[str, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Decode one crop's points, filter, drop crop-edge masks, NMS, upsample the survivors.

        Returns crop-frame bool masks (M, h, w) on the CPU with predicted IoU and
        stability score, or None when nothing survives.
        """
        cands = self._decode_and_filter(embedding, resized, valid, points, stats)
        if cands.n == 0:
            return None
        with self._time("nms"):
            x0, y0 = crop_box[0], crop_box[1]
            boxes = cands.boxes
            full = [0, 0, chip_hw[1], chip_hw[0]]
            keep = torch.arange(cands.n)
            if list(crop_box) != full:
                offset = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
                keep = keep[~is_box_near_crop_edge(boxes + offset, crop_box, full)]
            keep = keep[nms(boxes[keep], cands.iou[keep], self.box_nms_thresh)]
        stats["masks_after_nms"] += int(keep.numel())
        if keep.numel() == 0:
            return None
        with self._time("upsample"):
            masks = cands.masks(keep)
        return masks, cands.iou[keep], cands.stab[keep]

    def _decode_and_filter(
        self, embedding: torch.Tensor, resized: tuple[int, int], valid: np.ndarray, points: np.ndarray, stats: dict[str, int]
    ) -> _Candidates:
        """Decode the points in batches, filter on low-res logits, confirm stability at chip resolution.

        ``valid`` is the crop's valid mask (h, w); ``resized`` the crop's size in the
        model frame. Returns the masks that pass (none empty, cut to valid pixels)
        with their predicted IoU, stability score and box, as :class:`_Candidates`.

        When the crop is the model's input size and wholly valid (the common case),
        chip-resolution pixel counts and boxes come from the low-res logits
        (:func:`upsampled_x4_stats`) and only the masks that later survive NMS are
        upsampled; otherwise every survivor of the low-res filter is upsampled here.
        """
        b = self.bundle
        h, w = valid.shape
        rh, rw = resized
        # the part of the low-res logits that covers the image (not the padding)
        lr = b.low_res_size
        lr_h = min(lr, math.ceil(rh * lr / b.input_size))
        lr_w = min(lr, math.ceil(rw * lr / b.input_size))
        model_points = to_model_frame(points, (h, w), (rh, rw))
        valid_t = torch.from_numpy(valid).to(b.device)
        all_valid = bool(valid.all())
        # the common case (a valid chip of the model's input size): chip logits = low-res logits upsampled 4x
        lazy = LAZY_UPSAMPLE and all_valid and (rh, rw) == (h, w) == (b.input_size, b.input_size) and b.input_size == 4 * lr
        pre_thresh = self.stability_score_thresh - STABILITY_PREFILTER_MARGIN
        t, off = self.mask_threshold, self.stability_score_offset

        def upsample(low: torch.Tensor) -> torch.Tensor:
            return upsample_logits(low, b.input_size, (rh, rw), (h, w))

        out: dict[str, list[torch.Tensor]] = {"masks": [], "lows": [], "iou": [], "stab": [], "boxes": []}
        for start in range(0, model_points.shape[0], self.points_per_batch):
            batch = model_points[start : start + self.points_per_batch]
            with self._time("decode"):
                logits, iou = decode_points(b, embedding, batch, multimask=True)
            with self._time("filter"):
                logits = logits.flatten(0, 1)  # (n * 3, lr, lr)
                iou = iou.flatten()
                stats["masks_decoded"] += int(logits.shape[0])
                keep = torch.ones_like(iou, dtype=torch.bool)
                if self.pred_iou_thresh > 0.0:
                    keep &= iou > self.pred_iou_thresh
                if self.stability_score_thresh > 0.0 and bool(keep.any()):
                    idx = keep.nonzero()[:, 0]
                    stab_lr = calculate_stability_score(logits[idx, :lr_h, :lr_w], t, off)
                    keep[idx] = stab_lr > pre_thresh
                any_left = bool(keep.any())
                if any_left:
                    logits, iou = logits[keep], iou[keep]
            if not any_left:
                continue
            with self._time("upsample"):
                for c in range(0, logits.shape[0], UPSAMPLE_CHUNK):
                    low = logits[c : c + UPSAMPLE_CHUNK]
                    if lazy:  # chip-resolution counts and boxes without upsampling
                        counts, boxes = upsampled_x4_stats(low, (t + off, t - off, t), t)
                        high, loose, inside = counts.unbind(1)
                        stab = stability_from_counts(high, loose)
                        nonempty = inside > 0
                    else:
                        up = upsample(low)
                        stab = calculate_stability_score(up, t, off)
                        m = up > t
                        if not all_valid:
                            m &= valid_t
                        nonempty = count_true(m) > 0
                    ok = stab > self.stability_score_thresh if self.stability_score_thresh > 0.0 else torch.ones_like(stab, dtype=torch.bool)
                    ok &= nonempty
                    stats["masks_after_filter"] += int(ok.sum())
                    if lazy:
                        out["lows"].append(low[ok])
                        out["boxes"].append(boxes[ok].cpu())
                    else:
                        m = m[ok].cpu()
                        out["masks"].append(m)
                        out["boxes"].append(batched_mask_to_box(m))
                    out["iou"].append(iou[c : c + UPSAMPLE_CHUNK][ok].cpu())
                    out["stab"].append(stab[ok].cpu())
        cat = {k: torch.cat(v) if v else None for k, v in out.items()}
        empty = torch.zeros(0, dtype=torch.float32)
        return _Candidates(
            iou=cat["iou"] if cat["iou"] is not None else empty,
            stab=cat["stab"] if cat["stab"] is not None else empty,
            boxes=cat["boxes"] if cat["boxes"] is not None else torch.zeros((0, 4), dtype=torch.int64),
            full=cat["masks"],
            lows=cat["lows"],
            upsample=lambda low: upsample(low) > t,
            hw=(h, w),
        )

    def _finish_chip(self, info: dict[str, Any]) -> ChipMasks:
        """Crop masks -> chip frame, NMS between crops, small-region clean-up, valid cut."""
        h, w, valid = info["h"], info["w"], info["valid"]
        parts = info["parts"]
        if not parts:
            return ChipMasks.empty(h, w)
        with self._time("nms"):
            masks_l, iou_l, stab_l, crop_l = [], [], [], []
            for box, m, iou, stab in parts:
                x0, y0, x1, y1 = box
                if (x0, y0, x1, y1) == (0, 0, w, h):
                    full = m
                else:
                    full = torch.zeros((m.shape[0], h, w), dtype=torch.bool)
                    full[:, y0:y1, x0:x1] = m
                masks_l.append(full)
                iou_l.append(iou)
                stab_l.append(stab)
                crop_l.append(torch.full((m.shape[0],), float((x1 - x0) * (y1 - y0))))
            masks, iou, stab = torch.cat(masks_l), torch.cat(iou_l), torch.cat(stab_l)
            if len(parts) > 1:
                # between crops, prefer masks from smaller crops (SAM's rule)
                keep = nms(batched_mask_to_box(masks), 1.0 / torch.cat(crop_l), self.crop_nms_thresh)
                keep = torch.sort(keep).values
                masks, iou, stab = masks[keep], iou[keep], stab[keep]
        with self._time("postprocess"):
            masks_np = masks.numpy()
            if self.min_mask_region_area > 0:
                masks_np, sel = self._postprocess_small_regions(masks_np)
                iou, stab = iou[sel], stab[sel]
            masks_np &= valid[None]
            area = masks_np.sum(axis=(1, 2))
            ok = area >= max(1, self.min_mask_region_area)
            return ChipMasks(masks_np[ok], iou.numpy()[ok], stab.numpy()[ok])

    def _postprocess_small_regions(self, masks: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """SAM's small-region clean-up: fill holes, drop islands, re-run NMS preferring unchanged masks.

        Returns the cleaned masks that survive and their indices into ``masks``.
        """
        cleaned = np.empty_like(masks)
        scores = np.empty(masks.shape[0], dtype=np.float32)
        for i, mask in enumerate(masks):
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, "holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned[i] = mask
            scores[i] = float(unchanged and not changed)
        t = torch.from_numpy(cleaned)
        keep = nms(batched_mask_to_box(t), torch.from_numpy(scores), self.box_nms_thresh)
        keep = torch.sort(keep).values  # keep the predicted-IoU order of the first NMS
        return cleaned[keep.numpy()], keep
