"""One crop of segment-everything: decode the grid points, filter, NMS (SAM's ``_process_batch`` / ``_process_crop``).

Order of operations per crop, as SAM: for each batch of points, decode 3
masks per point, keep predicted IoU ``> pred_iou_thresh`` (if > 0), keep
stability ``>= stability_score_thresh`` (if > 0), box the masks; then drop
masks near an inner crop edge, and run box NMS by predicted IoU
(``box_nms_thresh``). The result is in NMS order (decreasing predicted IoU).

Frames: ``points`` and the returned masks and boxes are in the **crop frame**
(crop pixels, x = column, y = row; boxes XYXY inclusive); ``crop_box`` is
XYXY exclusive in the chip frame.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from geosam.models import SamBundle, cpu_masks, decode_points, to_model_frame, upsample_logits, upsample_masks
from geosam.models.embeddings import MultiEmbeddings
from geosam.segment.lowres import (
    Cells,
    cell_bounds,
    exact_stats_apply,
    stability_upper_bound_x4,
    upsampled_x4_cut_stats,
    upsampled_x4_stats,
)
from geosam.segment.sam_utils import (
    MaskData,
    boxes_and_nonempty,
    calculate_stability_score,
    is_box_near_crop_edge,
    nms,
    stability_from_counts,
)

if TYPE_CHECKING:
    from typing_extensions import Self

#: Masks filtered and upsampled to the chip at once on the CPU (bounds memory: chunk x crop pixels float32; each
#: chunk's logits and counts stay in cache from the stability bound to the exact statistics).
UPSAMPLE_CHUNK = 16

#: The same on a GPU, where each step of a chunk is a few kernel launches and host synchronisations whatever its
#: size: 16 masks at a time took 1.6 of 2.0 s of a 32 x 32 grid on two chips (H200, float16; see
#: docs/performance.md, "CUDA").
DEVICE_CHUNK = 256


def filter_chunk(device: torch.device) -> int:
    """Masks per filter / upsampling step on ``device`` (`UPSAMPLE_CHUNK` on the CPU, `DEVICE_CHUNK` elsewhere)."""
    return UPSAMPLE_CHUNK if device.type == "cpu" else DEVICE_CHUNK

#: Score and box masks from their low-res logits and upsample only NMS survivors where the crop is
#: the model's input size and wholly valid; False: upsample every candidate (same results, slower).
LAZY_UPSAMPLE = True

#: A stability upper bound this far below the threshold drops a mask (covers float32 rounding of SAM's score).
BOUND_SLACK = 1e-6

Timer = Callable[[str], AbstractContextManager[object]]


class StageTimer:
    """``with timer(stage):`` adds the block's wall time to ``timings[stage]`` (device synchronised)."""

    def __init__(self, timings: dict[str, float], device: torch.device) -> None:
        self.timings, self.device = timings, device
        self.stage, self.t0 = "", 0.0

    def __call__(self, stage: str) -> Self:
        self.stage = stage
        return self

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Self:
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t0


@dataclass(frozen=True)
class FilterParams:
    """SAM's per-crop parameters (names and meanings as ``SamAutomaticMaskGenerator``)."""

    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    mask_threshold: float
    box_nms_thresh: float


@dataclass(frozen=True)
class CropFrame:
    """A crop's sizes (``hw`` in chip pixels, ``resized`` in the model frame), its valid pixels, and whether
    its chip-resolution logits are the low-res logits upsampled 4x (``x4``: the crop is the model's input size,
    4x the low-res logits), so stability scores come from the low-res logits, and whether the whole low-res fast
    path applies (``lazy``: ``x4``; counts and boxes from the low-res logits, only NMS survivors upsampled). With
    invalid pixels, `valid_bits` gives the boxes of the masks cut to the valid pixels from the low-res logits too
    (`geosam.segment.lowres.upsampled_x4_cut_stats`); where that kernel does not run, `invalid_in_boxes` tells the
    masks whose box holds no invalid pixel (each its own cut) from those upsampled and cut for their boxes
    (`_cut_boxes`)."""

    hw: tuple[int, int]
    resized: tuple[int, int]
    valid: torch.Tensor
    all_valid: bool
    lazy: bool
    x4: bool = False

    @classmethod
    def make(cls, bundle: SamBundle, valid: np.ndarray, resized: tuple[int, int]) -> CropFrame:
        h, w = valid.shape
        rh, rw = resized
        lr, size = bundle.low_res_size, bundle.input_size
        all_valid = bool(valid.all())
        x4 = LAZY_UPSAMPLE and (rh, rw) == (h, w) == (size, size) and size == 4 * lr
        return cls((h, w), (rh, rw), torch.from_numpy(valid).to(bundle.device), all_valid, x4, x4)

    @functools.cached_property
    def valid_bits(self) -> np.ndarray | None:
        """The valid pixels as `geosam.models.cpu_masks.valid_bits` (None where all are valid or off the CPU)."""
        return None if self.all_valid or self.valid.device.type != "cpu" else cpu_masks.valid_bits(self.valid)

    @functools.cached_property
    def _invalid_sums(self) -> torch.Tensor:
        """The summed-area table of the invalid pixels, (h + 1, w + 1) int32, zeros first."""
        h, w = self.hw
        sums = torch.zeros((h + 1, w + 1), dtype=torch.int32, device=self.valid.device)
        sums[1:, 1:] = (~self.valid).to(torch.int32).cumsum(0).cumsum(1)
        return sums

    def invalid_in_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Invalid pixels inside each XYXY inclusive box (N, 4) (zeros when all are valid)."""
        if self.all_valid:
            return torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
        s = self._invalid_sums
        b = boxes.to(s.device)
        x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2] + 1, b[:, 3] + 1
        return (s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]).to(torch.int64).to(boxes.device)


def process_crop(
    bundle: SamBundle,
    params: FilterParams,
    embedding: torch.Tensor | MultiEmbeddings,
    frame: CropFrame,
    points: np.ndarray,
    crop_box: list[int],
    chip_hw: tuple[int, int],
    timer: Timer,
) -> tuple[MaskData, int, int]:
    """Decode one crop's ``points`` (crop frame), filter, drop inner-crop-edge masks, NMS, upsample survivors.

    Returns ``(data, n_decoded, n_after_filter)``: ``data`` holds bool ``masks``
    (crop frame, on the CPU), ``iou_preds``, ``stability_score`` and ``boxes``
    in NMS order.
    """
    model_points = to_model_frame(points, frame.hw, frame.resized)
    # masks at or below pred_iou_thresh are dropped first: prompts with none above it need no logits
    iou_floor = params.pred_iou_thresh if params.pred_iou_thresh > 0.0 else None
    parts, n_decoded = [], 0
    shared: dict = {}  # what the batches share: the image side's projections, computed once per crop
    for start in range(0, model_points.shape[0], params.points_per_batch):
        with timer("decode"):
            logits, iou = decode_points(bundle, embedding, model_points[start : start + params.points_per_batch],
                                        multimask=True, iou_floor=iou_floor, cache=shared)
        n_decoded += int(logits.shape[0] * logits.shape[1])
        parts.append(_process_batch(bundle, params, frame, logits.flatten(0, 1), iou.flatten(), timer))
    data = MaskData.cat(parts)
    n_filtered = len(data)
    with timer("nms"):
        h, w = chip_hw
        if list(crop_box) != [0, 0, w, h]:
            offset = torch.tensor([crop_box[0], crop_box[1]] * 2, dtype=data.boxes.dtype)
            data = data.filter(~is_box_near_crop_edge(data.boxes + offset, crop_box, [0, 0, w, h]))
        data = data.filter(nms(data.boxes, data.iou_preds, params.box_nms_thresh))
    if data.low_res_logits is not None:
        with timer("upsample"):
            data = data.with_(masks=_upsample(bundle, frame, params, data.low_res_logits), low_res_logits=None)
    return data, n_decoded, n_filtered


def _process_batch(
    bundle: SamBundle, params: FilterParams, frame: CropFrame, logits: torch.Tensor, iou: torch.Tensor, timer: Timer
) -> MaskData:
    """SAM's ``_process_batch`` on decoded low-res logits (M, lr, lr): IoU filter, stability filter, boxes.

    Returns the survivors on the CPU: with bool masks (crop frame), or with
    their low-res logits when ``frame.lazy`` (upsampled after NMS).
    """
    if frame.x4 and params.stability_score_thresh > 0.0:
        chunks = _filter_x4_chunks(bundle, params, frame, logits, iou, timer)
    else:
        with timer("filter"):
            keep = _iou_keep(params, iou)
            logits, iou = logits[keep], iou[keep]
        chunks = []
        stage = "filter" if frame.x4 else "upsample"
        step = filter_chunk(bundle.device)
        for c in range(0, logits.shape[0], step):
            part = slice(c, c + step)
            with timer(stage):
                chunks.append(_score_chunk(bundle, params, frame, logits[part], iou[part]))
    if not chunks:
        empty = MaskData(torch.zeros(0), torch.zeros(0), torch.zeros((0, 4), dtype=torch.int64))
        if frame.lazy:
            return empty.with_(low_res_logits=torch.zeros((0, *logits.shape[1:])))
        return empty.with_(masks=torch.zeros((0, *frame.hw), dtype=torch.bool))
    return MaskData.cat(chunks)


def _iou_keep(params: FilterParams, iou: torch.Tensor) -> torch.Tensor:
    """SAM's IoU filter: the masks whose predicted IoU is above ``pred_iou_thresh`` (all if it is 0)."""
    return iou > params.pred_iou_thresh if params.pred_iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)


def _filter_x4_chunks(
    bundle: SamBundle, params: FilterParams, frame: CropFrame, logits: torch.Tensor, iou: torch.Tensor, timer: Timer
) -> list[MaskData]:
    """The IoU filter, the stability bound and `_score_chunk` on a 4x frame, `filter_chunk` masks at a time.

    Each chunk's logits, cell bounds and flags stay in cache from the bound to
    the exact statistics (all steps are per mask, so the survivors are those of
    the whole batch at once); masks whose bound proves they cannot pass are
    not counted exactly.
    """
    chunks: list[MaskData] = []
    with timer("filter"):
        idx = _iou_keep(params, iou).nonzero()[:, 0]
        step = filter_chunk(bundle.device)
        for c in range(0, idx.numel(), step):
            sub = idx[c : c + step]
            low = logits[sub]
            if exact_stats_apply(low):  # the exact statistics cost less than the bound: no bound
                chunks.append(_score_chunk(bundle, params, frame, low, iou[sub]))
                continue
            cells = cell_bounds(low)
            bound = stability_upper_bound_x4(low, params.mask_threshold, params.stability_score_offset, cells)
            passing = bound >= params.stability_score_thresh - BOUND_SLACK  # proven: the rest cannot pass
            if not bool(passing.any()):
                continue
            if not bool(passing.all()):
                low, sub = low[passing], sub[passing]
                cells = (cells[0][passing], cells[1][passing], cells[2][passing])
            chunks.append(_score_chunk(bundle, params, frame, low, iou[sub], cells))
    return chunks


def _score_chunk(
    bundle: SamBundle, params: FilterParams, frame: CropFrame, low: torch.Tensor, iou: torch.Tensor,
    cells: Cells | None = None,
) -> MaskData:
    """Stability scores and boxes of a few masks at crop resolution; keep stability ``>=`` threshold and non-empty.

    ``cells``: the `geosam.segment.lowres.cell_bounds` of ``low`` where already computed.
    """
    t, off = params.mask_threshold, params.stability_score_offset
    masks = None
    cut = None
    if frame.lazy and frame.valid_bits is not None:  # the boxes of the masks cut to the valid pixels, in the same pass
        cut = upsampled_x4_cut_stats(low, (t + off, t - off), t, frame.valid_bits)
    if cut is not None:
        counts, boxes, nonempty = cut
        stab = stability_from_counts(counts[:, 0], counts[:, 1])
    elif frame.lazy:  # chip-resolution counts and boxes without upsampling
        counts, boxes = upsampled_x4_stats(low, (t + off, t - off, t), t, cells)
        high, loose, inside = counts.unbind(1)
        stab = stability_from_counts(high, loose)
        nonempty = inside > 0
        if not frame.all_valid:
            keep = nonempty & (stab >= params.stability_score_thresh) if params.stability_score_thresh > 0.0 else nonempty
            nonempty, boxes = _cut_boxes(bundle, params, frame, low, keep, nonempty, boxes)
    else:
        up = upsample_logits(low, bundle.input_size, frame.resized, frame.hw)
        stab = calculate_stability_score(up, t, off)
        masks = up > t
        if not frame.all_valid:
            masks &= frame.valid
        boxes, nonempty = boxes_and_nonempty(masks)
    ok = nonempty
    if params.stability_score_thresh > 0.0:
        ok = ok & (stab >= params.stability_score_thresh)
    data = MaskData(iou[ok].float().cpu(), stab[ok].cpu(), boxes[ok].cpu())
    if masks is None:
        return data.with_(low_res_logits=low[ok])
    return data.with_(masks=masks[ok].cpu())


def _upsample(bundle: SamBundle, frame: CropFrame, params: FilterParams, low: torch.Tensor) -> torch.Tensor:
    """Bool crop-frame masks (N, h, w) on the CPU from low-res logits, `filter_chunk` at a time."""
    step = filter_chunk(bundle.device)
    out = []
    for c in range(0, low.shape[0], step):
        masks = upsample_masks(low[c : c + step], bundle.input_size, frame.resized, frame.hw, params.mask_threshold)
        if not frame.all_valid:
            masks &= frame.valid
        out.append(masks.cpu())
    return torch.cat(out) if out else torch.zeros((0, *frame.hw), dtype=torch.bool)


def _cut_boxes(
    bundle: SamBundle, params: FilterParams, frame: CropFrame, low: torch.Tensor, keep: torch.Tensor,
    nonempty: torch.Tensor, boxes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nonempty`` and ``boxes`` of the masks cut to the frame's valid pixels, for the ``keep`` ones (the rest are
    dropped anyway): a mask whose box holds no invalid pixel is its own cut (the box bounds every pixel of it), the
    others are upsampled and cut here, as the full path does for every mask. Returns new tensors."""
    touch = keep & (frame.invalid_in_boxes(boxes) > 0)
    if not bool(touch.any()):
        return nonempty, boxes
    idx = touch.nonzero()[:, 0]
    nonempty, boxes = nonempty.clone(), boxes.clone()
    step = filter_chunk(bundle.device)
    for c in range(0, idx.numel(), step):
        sub = idx[c : c + step]
        masks = upsample_masks(low[sub], bundle.input_size, frame.resized, frame.hw, params.mask_threshold)
        masks &= frame.valid
        cut, nonempty[sub] = boxes_and_nonempty(masks)
        boxes[sub] = cut.to(boxes.dtype)
    return nonempty, boxes


__all__ = ["DEVICE_CHUNK", "LAZY_UPSAMPLE", "UPSAMPLE_CHUNK", "CropFrame", "FilterParams", "StageTimer", "filter_chunk", "process_crop"]
