"""Segment everything in a chip with SAM: a point grid, filtered and de-duplicated.

`SamMaskGenerator` follows segment-anything's ``SamAutomaticMaskGenerator``
(``_process_batch`` -> ``_process_crop`` -> crop NMS -> ``postprocess_small_regions``),
with its parameter names, filters (predicted IoU ``>``, stability ``>=``), NMS
thresholds and mask order; ``tests/test_segment_sam_diff.py`` checks the kept
masks, scores and order against that sequence built from SAM's own helpers.
geosam's choices on top:

* grid points on invalid chip pixels (``chip.valid`` False) are not decoded,
  and masks are cut to the valid pixels (before their boxes and NMS);
* empty masks are dropped (SAM keeps them, with a NaN stability score, when
  ``stability_score_thresh`` is 0): they have no pixel, no polygon, and a zero
  box that never suppresses nor is suppressed, so the other masks are SAM's;
* last, masks smaller than ``max(1, min_mask_region_area)`` chip pixels are dropped;
* where a crop is the model's input size and wholly valid, chip-resolution
  scores and boxes come from the low-res logits (`geosam.segment.lowres`,
  after a proven stability bound) and only NMS survivors are upsampled;
* several chips (and crops) are encoded in one batch (`SamMaskGenerator.generate_batch`);
* out of device memory, the image batch or ``points_per_batch`` is halved (kept for later
  chips) and the step retried; at one, `DeviceMemoryError` says what to change.

Frames: grid points and returned masks are in the **chip frame** (chip pixels,
x = column, y = row); `geosam.models.to_model_frame` converts prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geosam.config import DEFAULT_MODEL, AmgConfig
from geosam.config.parts import int_at_least
from geosam.errors import ConfigError
from geosam.models import SamBundle, compile_bundle, encode, load_model, preprocess, require
from geosam.models.embeddings import MultiEmbeddings
from geosam.segment.base import BaseMaskGenerator, ChipMasks, GeneratorCapabilities
from geosam.segment.crop import CropFrame, FilterParams, StageTimer, process_crop
from geosam.segment.memory import free_device_memory, is_out_of_memory, out_of_memory_error
from geosam.segment.sam_utils import (
    MaskData,
    batched_mask_to_box,
    build_point_grid,
    generate_crop_boxes,
    grid_pixel_indices,
    nms,
    remove_small_regions,
)

if TYPE_CHECKING:
    from geosam.read.scene import Chip

log = logging.getLogger(__name__)

#: Stages timed in `SamMaskGenerator.timings_s` (seconds, accumulated).
TIMED_STAGES = ("encode", "decode", "filter", "upsample", "nms", "postprocess")


@dataclass
class ChipStats:
    """Counts of one chip's run (`SamMaskGenerator.last_stats` holds them as a dict)."""

    points_total: int = 0
    points_decoded: int = 0
    masks_decoded: int = 0
    masks_after_filter: int = 0
    masks_after_nms: int = 0
    masks_kept: int = 0


@dataclass
class _ChipState:
    """One chip in `SamMaskGenerator.generate_batch`: size, valid pixels, crops, per-crop results."""

    height: int
    width: int
    valid: np.ndarray
    crop_boxes: list[list[int]]
    stats: ChipStats = field(default_factory=ChipStats)
    parts: list[MaskData] = field(default_factory=list)  # per crop, chip frame


@dataclass(frozen=True)
class _CropJob:
    """One crop to encode and decode: its chip, XYXY exclusive chip-frame box and crop-frame grid points."""

    chip: int
    box: list[int]
    points: np.ndarray


class SamMaskGenerator(BaseMaskGenerator):
    """Segment everything in a chip with a SAM model (a `MaskGenerator`).

    model: a hub id or local directory (loaded with `geosam.models.load_model`
        on ``device`` / ``dtype``; ``dtype="auto"`` picks mixed precision where the
        hardware has it, see `geosam.models.resolve_dtype`), or an already
        loaded `SamBundle` (then ``device`` and ``dtype`` are
        ignored). ``name`` is the id/path.

    The other parameters keep segment-anything's names and meanings:

    points_per_side: the grid has ``points_per_side ** 2`` points over the chip.
    points_per_batch: point prompts decoded together (memory vs. speed).
    pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables).
    stability_score_thresh: keep masks whose stability score is >= this (0 disables).
    stability_score_offset: logit offset used for the stability score.
    mask_threshold: logit threshold binarising masks.
    box_nms_thresh: box IoU above which the lower-scoring mask is dropped (within a crop).
    crop_n_layers: if > 0, also segment ``(2 ** i) ** 2`` overlapping crops of the chip in
        layer i = 1..n (finds small objects); masks near an inner crop edge are dropped.
    crop_overlap_ratio: overlap of the layer-1 crops as a fraction of the chip's short side.
    crop_n_points_downscale_factor: layer i uses ``points_per_side / factor ** i`` points per side.
    crop_nms_thresh: box IoU for the NMS between crops (smaller crops win).
    min_mask_region_area: if > 0, remove islands and fill holes smaller than this many chip
        pixels (then NMS at ``max(box_nms_thresh, crop_nms_thresh)`` preferring unchanged
        masks, as SAM), and drop masks smaller than it.
    compile: ``torch.compile`` the encoder and decoder paths (`geosam.models.compile_bundle`).
    encoder_batch_size: images (chips and crops) encoded together by `generate_batch`.

    Masks come in SAM's order (NMS order: predicted IoU within a crop, smaller crops
    first between crops, unchanged masks first after the small-region clean-up).
    After each `generate`, ``last_stats`` holds the counts of `ChipStats`.
    ``timings_s`` accumulates seconds per stage (`TIMED_STAGES`) over every call;
    `reset_timings` clears it.
    """

    def __init__(
        self,
        model: str | SamBundle = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        compile: bool = False,
        encoder_batch_size: int = 4,
        config: AmgConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        known = {f.name for f in fields(AmgConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown segment-everything setting(s) {unknown}; known: {sorted(known)}")
        cfg = replace(config or AmgConfig(), **settings)  # validated once, by AmgConfig
        self.config = cfg
        self.points_per_side = int(cfg.points_per_side)
        self.points_per_batch = int(cfg.points_per_batch)
        self.pred_iou_thresh = float(cfg.pred_iou_thresh)
        self.stability_score_thresh = float(cfg.stability_score_thresh)
        self.stability_score_offset = float(cfg.stability_score_offset)
        self.mask_threshold = float(cfg.mask_threshold)
        self.box_nms_thresh = float(cfg.box_nms_thresh)
        self.crop_n_layers = int(cfg.crop_n_layers)
        self.crop_overlap_ratio = float(cfg.crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(cfg.crop_n_points_downscale_factor)
        self.crop_nms_thresh = float(cfg.crop_nms_thresh)
        self.min_mask_region_area = int(cfg.min_mask_region_area)
        self.compile = bool(compile)
        self.encoder_batch_size = int_at_least("encoder_batch_size", encoder_batch_size, 1)
        self.capabilities = GeneratorCapabilities(batch_size=self.encoder_batch_size, points_per_side=self.points_per_side)
        self._load_args: tuple[str, str, str] | None = None
        self._bundle: SamBundle | None
        if isinstance(model, SamBundle):
            self._bundle, self.name = model, model.name
        else:
            self._bundle, self.name = load_model(str(model), device=device, dtype=dtype), str(model)
            # the dtype as resolved here: a worker that unpickles this generator loads the same precision
            self._load_args = (str(model), device, str(self._bundle.dtype).removeprefix("torch."))
        require(self._bundle, "segment_everything")  # before any chip work: a box-only model cannot
        if self.compile:
            compile_bundle(self._bundle)
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
            self._bundle = load_model(name, device=device, dtype=dtype)
            if self.compile:
                compile_bundle(self._bundle)
        return self._bundle

    @property
    def filter_params(self) -> FilterParams:
        """The per-crop parameters (`geosam.segment.crop.FilterParams`)."""
        return FilterParams(self.points_per_batch, self.pred_iou_thresh, self.stability_score_thresh,
                            self.stability_score_offset, self.mask_threshold, self.box_nms_thresh)

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

    # -- main entry
    def generate(self, chip: Chip) -> ChipMasks:
        """Instance masks (chip frame) for every object SAM finds in ``chip``."""
        return self.generate_batch([chip])[0]

    def generate_batch(self, chips: Sequence[Chip]) -> list[ChipMasks]:
        """`generate` for several chips, their images (and crops) encoded in batches.

        Results equal per-chip `generate` up to the encoder's batch-size
        numerics; ``last_stats`` then holds the counts of the last chip.
        """
        states: list[_ChipState] = []
        jobs: list[_CropJob] = []
        for ci, chip in enumerate(chips):
            state, chip_jobs = self._plan_chip(ci, chip)
            states.append(state)
            jobs.extend(chip_jobs)
        for start in range(0, len(jobs), self.encoder_batch_size):
            self._run_jobs(chips, jobs[start : start + self.encoder_batch_size], states)
        results = []
        for state in states:
            result = self._finish_chip(state)
            state.stats.masks_kept = len(result)
            self.last_stats = asdict(state.stats)
            results.append(result)
            log.debug("chip: %s", self.last_stats)
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
        rows, cols = grid_pixel_indices(pts, height, width)
        return pts[valid[rows, cols]]

    def _plan_chip(self, index: int, chip: Chip) -> tuple[_ChipState, list[_CropJob]]:
        """The chip's crops (SAM's crop boxes) and the grid points of each that lie on prompt-region pixels."""
        h, w = int(chip.image.shape[0]), int(chip.image.shape[1])
        valid = np.asarray(chip.valid, dtype=bool)
        if valid.shape != (h, w):
            raise ValueError(f"chip.valid has shape {valid.shape}, expected {(h, w)}")
        boxes, layers = generate_crop_boxes(h, w, self.crop_n_layers, self.crop_overlap_ratio)
        state = _ChipState(h, w, valid, boxes)
        if not valid.any():
            state.stats.points_total = self.points_per_side**2
            return state, []
        region = chip.prompt_region()
        jobs = []
        for box, layer in zip(boxes, layers):
            x0, y0, x1, y1 = box
            n_side = max(1, int(self.points_per_side / (self.crop_n_points_downscale_factor**layer)))
            state.stats.points_total += n_side**2
            crop_region = region[y0:y1, x0:x1]
            pts = self._points(n_side, crop_region.shape[0], crop_region.shape[1], crop_region)
            state.stats.points_decoded += int(pts.shape[0])
            if pts.shape[0]:
                jobs.append(_CropJob(index, box, pts))
        return state, jobs

    def _run_jobs(self, chips: Sequence[Chip], jobs: list[_CropJob], states: list[_ChipState]) -> None:
        """Encode the crops of ``jobs`` in one batch, then decode and filter each (results into ``states``)."""
        timer = StageTimer(self.timings_s, self.bundle.device)
        try:
            with timer("encode"):
                images = [chips[j.chip].image[j.box[1] : j.box[3], j.box[0] : j.box[2]] for j in jobs]
                pixel_values, _, resized = preprocess(self.bundle, images)
                embeddings = encode(self.bundle, pixel_values)
        except (RuntimeError, MemoryError) as exc:  # out of device memory: halve the image batch, retry
            if not is_out_of_memory(exc):
                raise
            free_device_memory(self.bundle.device)
            if len(jobs) == 1:
                raise out_of_memory_error(self.bundle.device, "encoding an image", exc) from exc
            self.encoder_batch_size = max(1, len(jobs) // 2)
            log.warning("out of memory encoding %d images; retrying %d at a time", len(jobs), self.encoder_batch_size)
            for start in range(0, len(jobs), self.encoder_batch_size):
                self._run_jobs(chips, jobs[start : start + self.encoder_batch_size], states)
            return
        for k, job in enumerate(jobs):
            st = states[job.chip]
            x0, y0, x1, y1 = job.box
            frame = CropFrame.make(self.bundle, st.valid[y0:y1, x0:x1], resized[k])
            data, n_decoded, n_filtered = self._decode_crop(embeddings[k : k + 1], frame, job, st, timer)
            st.stats.masks_decoded += n_decoded
            st.stats.masks_after_filter += n_filtered
            st.stats.masks_after_nms += len(data)
            if len(data):
                st.parts.append(_to_chip_frame(data, job.box, (st.height, st.width)))

    def _decode_crop(self, embedding: torch.Tensor | MultiEmbeddings, frame: CropFrame, job: _CropJob, st: _ChipState,
                     timer: StageTimer) -> tuple[MaskData, int, int]:
        """`process_crop`, halving ``points_per_batch`` and retrying when the device runs out of memory."""
        while True:
            try:
                return process_crop(self.bundle, self.filter_params, embedding, frame, job.points, job.box,
                                    (st.height, st.width), timer)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                free_device_memory(self.bundle.device)
                if self.points_per_batch == 1:
                    raise out_of_memory_error(self.bundle.device, "decoding point prompts", exc) from exc
                self.points_per_batch = max(1, self.points_per_batch // 2)
                log.warning("out of memory decoding point prompts; retrying with points_per_batch=%d",
                            self.points_per_batch)

    def _finish_chip(self, st: _ChipState) -> ChipMasks:
        """NMS between crops, small-region clean-up, valid cut (SAM's ``_generate_masks`` and ``generate``)."""
        if not st.parts:
            return ChipMasks.empty(st.height, st.width)
        timer = StageTimer(self.timings_s, self.bundle.device)
        with timer("nms"):
            data = MaskData.cat(st.parts)
            if len(st.crop_boxes) > 1:  # between crops, prefer masks from smaller crops; SAM keeps NMS order
                assert data.crop_area is not None
                data = data.filter(nms(data.boxes, 1.0 / data.crop_area, self.crop_nms_thresh))
        with timer("postprocess"):
            if self.min_mask_region_area > 0:
                data = self._postprocess_small_regions(data)
            assert data.masks is not None
            masks = data.masks.numpy()
            if not st.valid.all():  # else the cut copies every mask for nothing
                masks = masks & st.valid[None]
            ok = np.count_nonzero(masks.reshape(len(masks), st.height * st.width), axis=1) >= max(1, self.min_mask_region_area)
            if ok.all():
                return ChipMasks(masks, data.iou_preds.numpy(), data.stability_score.numpy())
            return ChipMasks(masks[ok], data.iou_preds.numpy()[ok], data.stability_score.numpy()[ok])

    def _postprocess_small_regions(self, data: MaskData) -> MaskData:
        """SAM's ``postprocess_small_regions``: fill small holes, drop small islands, then box NMS at
        ``max(box_nms_thresh, crop_nms_thresh)`` scoring unchanged masks 1 and changed ones 0 (NMS order kept)."""
        assert data.masks is not None
        cleaned = np.empty(tuple(data.masks.shape), dtype=bool)
        scores = np.empty(len(data), dtype=np.float32)
        for i, mask in enumerate(data.masks.numpy()):
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, "holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned[i] = mask
            scores[i] = float(unchanged and not changed)
        masks = torch.from_numpy(cleaned)
        boxes = batched_mask_to_box(masks)
        keep = nms(boxes, torch.from_numpy(scores), max(self.box_nms_thresh, self.crop_nms_thresh))
        return data.with_(masks=masks, boxes=boxes).filter(keep)


def _to_chip_frame(data: MaskData, box: list[int], chip_hw: tuple[int, int]) -> MaskData:
    """A crop's masks and boxes moved to the chip frame, tagged with the crop's area (chip pixels)."""
    x0, y0, x1, y1 = box
    h, w = chip_hw
    assert data.masks is not None
    masks = data.masks
    if list(box) != [0, 0, w, h]:
        masks = torch.zeros((len(data), h, w), dtype=torch.bool)
        masks[:, y0:y1, x0:x1] = data.masks
    boxes = data.boxes + torch.tensor([x0, y0, x0, y0], dtype=data.boxes.dtype)
    return data.with_(masks=masks, boxes=boxes, crop_area=torch.full((len(data),), float((x1 - x0) * (y1 - y0))))


__all__ = ["TIMED_STAGES", "ChipStats", "SamMaskGenerator"]
