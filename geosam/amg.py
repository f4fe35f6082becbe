"""Segment everything in a chip with SAM: a point grid, filtered and de-duplicated.

This follows segment-anything's ``SamAutomaticMaskGenerator`` (one crop
layer) and keeps its parameter names, with three geosam choices:

* grid points that fall on invalid chip pixels (``chip.valid`` False) are not
  decoded at all, and every mask is cut to the valid pixels;
* predicted-IoU and stability-score filters run on the decoder's
  **low-resolution logits**; only the surviving masks are upsampled to the
  chip, in small chunks, so memory stays bounded;
* non-maximum suppression is plain torch (no torchvision).

Frames: the grid and every returned mask are in the **chip frame** (chip
pixels, x = column, y = row); prompts are converted to the model frame by
:func:`geosam.model.to_model_frame`. Boxes are XYXY in pixel indices with the
right/bottom edge *inclusive* (SAM's convention: a one-pixel mask at (x, y)
has the box (x, y, x, y)).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage

from geosam.config import DEFAULT_MODEL
from geosam.errors import ConfigError
from geosam.masks import ChipMasks
from geosam.model import (
    SamBundle,
    decode_points,
    encode,
    load_sam,
    preprocess,
    to_model_frame,
    upsample_logits,
)

if TYPE_CHECKING:
    from geosam.io import Chip

log = logging.getLogger(__name__)

#: Masks upsampled to the chip at once (bounds memory: chunk x input_size^2 float32).
UPSAMPLE_CHUNK = 16

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


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``mask_threshold +/- threshold_offset``.

    masks: logits (..., H, W). Returns float32 (...); 0 where even the loose
    mask is empty.
    """
    high = (masks > (mask_threshold + threshold_offset)).sum(dim=(-1, -2), dtype=torch.int64)
    low = (masks > (mask_threshold - threshold_offset)).sum(dim=(-1, -2), dtype=torch.int64)
    score = high.to(torch.float32) / low.clamp(min=1).to(torch.float32)
    return torch.where(low > 0, score, torch.zeros_like(score))


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (..., 4) of boolean masks (..., H, W); inclusive pixel indices.

    An empty mask gets the box (0, 0, 0, 0).
    """
    if masks.numel() == 0:
        return torch.zeros((*masks.shape[:-2], 4), dtype=torch.int64, device=masks.device)
    masks = masks.to(torch.bool)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    top = torch.where(rows, ar_h, h).amin(dim=-1)
    bottom = torch.where(rows, ar_h, -1).amax(dim=-1)
    left = torch.where(cols, ar_w, w).amin(dim=-1)
    right = torch.where(cols, ar_w, -1).amax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
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


# ---------------------------------------------------------------------------
# the generator


def _check_unit(name: str, value: float, *, low_open: bool = False) -> float:
    v = float(value)
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok or math.isnan(v):
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {rng}, got {value}")
    return v


class SamMaskGenerator:
    """Segment everything in a chip with a SAM model (a :class:`~geosam.masks.MaskGenerator`).

    model: a hub id or local directory (loaded with :func:`geosam.model.load_sam`
        on ``device`` / ``dtype``), or an already loaded :class:`~geosam.model.SamBundle`
        (then ``device`` and ``dtype`` are ignored). ``name`` is the id/path.

    The other parameters keep segment-anything's names and meanings:

    points_per_side: the grid has ``points_per_side ** 2`` points over the chip.
    points_per_batch: point prompts decoded together (memory vs. speed).
    pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables).
    stability_score_thresh: keep masks whose stability score is > this (0 disables).
    stability_score_offset: logit offset used for the stability score.
    mask_threshold: logit threshold binarising masks.
    box_nms_thresh: box IoU above which the lower-scoring mask is dropped.
    min_mask_region_area: if > 0, remove islands and fill holes smaller than
        this many chip pixels, then drop masks smaller than it.

    The model is loaded (or taken from the cache) on construction. After each
    :meth:`generate`, ``last_stats`` holds counts: ``points_total``,
    ``points_decoded``, ``masks_decoded``, ``masks_after_filter``,
    ``masks_after_nms``, ``masks_kept``.
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
        min_mask_region_area: int = 0,
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
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = _check_unit("pred_iou_thresh", pred_iou_thresh)
        self.stability_score_thresh = _check_unit("stability_score_thresh", stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.mask_threshold = float(mask_threshold)
        self.box_nms_thresh = _check_unit("box_nms_thresh", box_nms_thresh, low_open=True)
        self.min_mask_region_area = int(min_mask_region_area)

        self._load_args: tuple[str, str, str] | None
        if isinstance(model, SamBundle):
            self._bundle: SamBundle | None = model
            self._load_args = None
            self.name: str = model.name
        else:
            self._load_args = (str(model), device, dtype)
            self._bundle = load_sam(str(model), device=device, dtype=dtype)
            self.name = str(model)
        self.last_stats: dict[str, int] = {}

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
        return self._bundle

    def __repr__(self) -> str:
        return (
            f"SamMaskGenerator({self.name!r}, points_per_side={self.points_per_side}, "
            f"pred_iou_thresh={self.pred_iou_thresh}, stability_score_thresh={self.stability_score_thresh}, "
            f"box_nms_thresh={self.box_nms_thresh}, min_mask_region_area={self.min_mask_region_area})"
        )

    # -- main entry
    def generate(self, chip: Chip) -> ChipMasks:
        """Instance masks (chip frame) for every object SAM finds in ``chip``."""
        h, w = int(chip.image.shape[0]), int(chip.image.shape[1])
        valid = np.asarray(chip.valid, dtype=bool)
        if valid.shape != (h, w):
            raise ValueError(f"chip.valid has shape {valid.shape}, expected {(h, w)}")
        stats = {
            "points_total": self.points_per_side**2,
            "points_decoded": 0,
            "masks_decoded": 0,
            "masks_after_filter": 0,
            "masks_after_nms": 0,
            "masks_kept": 0,
        }
        self.last_stats = stats
        if not valid.any():
            return ChipMasks.empty(h, w)

        region = chip.prompt_region() if hasattr(chip, "prompt_region") else valid
        points = self.grid_points(h, w, region)
        stats["points_decoded"] = int(points.shape[0])
        if points.shape[0] == 0:
            return ChipMasks.empty(h, w)

        masks, iou, stab = self._decode_and_filter(chip.image, valid, points, stats)
        if masks.shape[0] == 0:
            return ChipMasks.empty(h, w)

        keep = nms(batched_mask_to_box(masks), iou, self.box_nms_thresh)
        masks, iou, stab = masks[keep], iou[keep], stab[keep]
        stats["masks_after_nms"] = int(masks.shape[0])

        masks_np = masks.numpy()
        if self.min_mask_region_area > 0:
            masks_np, sel = self._postprocess_small_regions(masks_np)
            iou, stab = iou[sel], stab[sel]
        masks_np &= valid[None]
        area = masks_np.sum(axis=(1, 2))
        ok = area >= max(1, self.min_mask_region_area)
        result = ChipMasks(masks_np[ok], iou.numpy()[ok], stab.numpy()[ok])
        stats["masks_kept"] = len(result)
        log.debug("chip %s: %s", getattr(chip.spec, "chip_id", "?"), stats)
        return result

    # -- steps
    def grid_points(self, height: int, width: int, valid: np.ndarray | None = None) -> np.ndarray:
        """Chip-frame (x, y) grid points (float64, (N, 2)); those on invalid pixels dropped."""
        pts = build_point_grid(self.points_per_side) * np.array([width, height], dtype=np.float64)
        if valid is None:
            return pts
        cols = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, width - 1)
        rows = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, height - 1)
        return pts[valid[rows, cols]]

    def _decode_and_filter(
        self, image: np.ndarray, valid: np.ndarray, points: np.ndarray, stats: dict[str, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed once, decode the points in batches, filter on low-res logits, upsample survivors.

        Returns chip-frame bool masks (M, H, W) on the CPU (cut to valid pixels,
        none empty) with their predicted IoU and stability score (float32 (M,)).
        """
        b = self.bundle
        h, w = valid.shape
        pixel_values, _, resized = preprocess(b, [image])
        rh, rw = resized[0]
        embeddings = encode(b, pixel_values)
        # the part of the low-res logits that covers the image (not the padding)
        lr = b.low_res_size
        lr_h = min(lr, math.ceil(rh * lr / b.input_size))
        lr_w = min(lr, math.ceil(rw * lr / b.input_size))
        model_points = to_model_frame(points, (h, w), (rh, rw))
        valid_t = torch.from_numpy(valid).to(b.device)

        out_masks: list[torch.Tensor] = []
        out_iou: list[torch.Tensor] = []
        out_stab: list[torch.Tensor] = []
        for start in range(0, model_points.shape[0], self.points_per_batch):
            batch = model_points[start : start + self.points_per_batch]
            logits, iou = decode_points(b, embeddings, batch, multimask=True)
            logits = logits.flatten(0, 1)  # (n * 3, lr, lr)
            iou = iou.flatten()
            stats["masks_decoded"] += int(logits.shape[0])
            keep = torch.ones_like(iou, dtype=torch.bool)
            if self.pred_iou_thresh > 0.0:
                keep &= iou > self.pred_iou_thresh
            stab = calculate_stability_score(
                logits[:, :lr_h, :lr_w], self.mask_threshold, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                keep &= stab > self.stability_score_thresh
            if not bool(keep.any()):
                continue
            logits, iou, stab = logits[keep], iou[keep], stab[keep]
            stats["masks_after_filter"] += int(logits.shape[0])
            for c in range(0, logits.shape[0], UPSAMPLE_CHUNK):
                up = upsample_logits(logits[c : c + UPSAMPLE_CHUNK], b.input_size, (rh, rw), (h, w))
                m = (up > self.mask_threshold) & valid_t
                nonempty = m.flatten(1).any(dim=1)
                out_masks.append(m[nonempty].cpu())
                out_iou.append(iou[c : c + UPSAMPLE_CHUNK][nonempty].cpu())
                out_stab.append(stab[c : c + UPSAMPLE_CHUNK][nonempty].cpu())
        if not out_masks:
            empty = torch.zeros(0, dtype=torch.float32)
            return torch.zeros((0, h, w), dtype=torch.bool), empty, empty
        return torch.cat(out_masks), torch.cat(out_iou), torch.cat(out_stab)

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
