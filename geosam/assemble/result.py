"""The per-chip result: a small, picklable value that the run loop consumes.

A `ChipResult` is what one chip task produces. A Dask worker returns it,
a journal stores it, and the stitcher / prompt assembler consume it, in any
order. It holds no chip-sized arrays: each mask is cropped to its bounding box
and bit-packed (1 bit per pixel), with the crop's offset in **scene pixel
coordinates** (column, row of the full raster).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from geosam.segment.base import ChipMasks
from geosam.windows import PixelWindow

#: status of a chip task
OK, EMPTY, INVALID, FAILED, PREFILTERED = "ok", "empty", "invalid", "failed", "prefiltered"


@dataclass(frozen=True)
class MaskCrop:
    """One mask cropped to its bounding box: ``mask`` (bool, H x W) placed at ``bbox`` (scene pixels)."""

    bbox: PixelWindow
    mask: np.ndarray
    area_px: int
    predicted_iou: float
    stability_score: float
    prompt_index: int
    label: str | None


@dataclass(frozen=True)
class ChipResult:
    """Masks of one chip task, compact.

    task_id: the chip's id (``r3c7`` for grid chips, ``w12`` for prompt windows).
    window: the chip window (scene pixel coordinates).
    boxes: int32 (N, 4) crop boxes (col_off, row_off, width, height), scene pixels.
    bits: the crops' pixels, row-major, bit-packed one after the other; crop ``i`` starts
        at byte ``offsets[i]``.
    area_px: int64 (N,) mask pixel counts.
    predicted_iou, stability_score: float32 (N,).
    prompt_index: int64 (N,), index into the task's prompts (-1: none).
    labels: one label per mask, or None.
    status: ``ok`` (masks found), ``empty`` (no mask), ``invalid`` (no valid pixel),
        ``failed`` (unreadable; ``error`` says why), ``prefiltered`` (skipped by the index prefilter).
    stats: counts reported by the loop (e.g. prompts decoded).
    prompt_status: prompt mode: one status per prompt of the task (see `ChipMasks`).
    """

    task_id: str
    window: PixelWindow
    boxes: np.ndarray
    bits: np.ndarray
    offsets: np.ndarray
    area_px: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    prompt_index: np.ndarray
    labels: tuple[str | None, ...] | None = None
    status: str = OK
    error: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    prompt_status: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, task_id: str, window: PixelWindow, status: str = EMPTY, error: str | None = None,
              stats: dict[str, int] | None = None, prompt_status: tuple[str, ...] | None = None) -> ChipResult:
        """A result without masks (an empty, invalid, failed or prefiltered chip)."""
        return cls(task_id, window, np.zeros((0, 4), np.int32), np.zeros(0, np.uint8), np.zeros(1, np.int64),
                   np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   None, status, error, dict(stats or {}), prompt_status)

    @classmethod
    def from_masks(cls, task_id: str, window: PixelWindow, masks: ChipMasks,
                   stats: dict[str, int] | None = None) -> ChipResult:
        """Crop, pack and place the chip-frame ``masks`` of a chip at ``window``; empty masks are dropped."""
        boxes: list[tuple[int, int, int, int]] = []
        parts: list[np.ndarray] = []
        offsets = [0]
        areas: list[int] = []
        keep: list[int] = []
        m = masks.masks
        if m.shape[0] and m.shape[1:] != (window.height, window.width):
            raise ValueError(f"masks have shape {m.shape[1:]}, chip {task_id} is {(window.height, window.width)}")
        for i in range(m.shape[0]):
            rows = np.flatnonzero(m[i].any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(m[i].any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            crop = m[i, r0:r1, c0:c1]
            packed = np.packbits(crop, axis=None)
            parts.append(packed)
            offsets.append(offsets[-1] + packed.size)
            boxes.append((window.col_off + c0, window.row_off + r0, c1 - c0, r1 - r0))
            areas.append(int(np.count_nonzero(crop)))
            keep.append(i)
        if not keep:
            return cls.empty(task_id, window, EMPTY, stats=stats, prompt_status=masks.prompt_status)
        sel = np.asarray(keep, dtype=np.int64)
        assert masks.prompt_index is not None
        labels = None if masks.labels is None else tuple(masks.labels[i] for i in keep)
        return cls(
            task_id,
            window,
            np.asarray(boxes, dtype=np.int32),
            np.concatenate(parts),
            np.asarray(offsets, dtype=np.int64),
            np.asarray(areas, dtype=np.int64),
            masks.predicted_iou[sel].astype(np.float32),
            masks.stability_score[sel].astype(np.float32),
            masks.prompt_index[sel].astype(np.int64),
            labels,
            OK,
            None,
            dict(stats or {}),
            masks.prompt_status,
        )

    def crop(self, i: int) -> MaskCrop:
        """Mask ``i``, unpacked."""
        c, r, w, h = (int(v) for v in self.boxes[i])
        packed = self.bits[int(self.offsets[i]) : int(self.offsets[i + 1])]
        mask = np.unpackbits(packed, count=w * h).reshape(h, w).astype(bool)
        return MaskCrop(
            PixelWindow(c, r, w, h), mask, int(self.area_px[i]), float(self.predicted_iou[i]),
            float(self.stability_score[i]), int(self.prompt_index[i]),
            None if self.labels is None else self.labels[i],
        )

    def crops(self) -> Iterator[MaskCrop]:
        """Every mask, unpacked, in order."""
        for i in range(len(self)):
            yield self.crop(i)


__all__ = ["EMPTY", "FAILED", "INVALID", "OK", "PREFILTERED", "ChipResult", "MaskCrop"]
