"""The small interface between mask generators and the run loop.

A mask generator turns `geosam.read.scene.Chip` objects into `ChipMasks`:
boolean instance masks in the chip's pixel frame (same height and width as
``chip.image``) with one score pair per mask, and optionally the prompt each
mask answers and a label. SAM segment-everything
(`geosam.segment.everything.SamMaskGenerator`), prompt decoding and the
test oracle (`geosam.testing.OracleMaskGenerator`) all implement
`MaskGenerator`; `BaseMaskGenerator` gives the defaults, so a new
generator only writes `BaseMaskGenerator.generate`.

What a generator can do is *declared* in `GeneratorCapabilities`; the
run loop never probes for attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from geosam.read.scene import Chip


@dataclass
class ChipMasks:
    """Instance masks of one chip, in the chip pixel frame.

    Attributes:
        masks: bool array (N, H, W).
        predicted_iou: float32 array (N,).
        stability_score: float32 array (N,).
        prompt_index: int64 (N,): index of the prompt of the chip task each mask answers
            (prompt mode), -1 when the mask answers no particular prompt (segment everything).
        labels: One label per mask (text mode: the phrase), or None.
        prompt_status: Prompt mode: one status per prompt of the chip task, `ok` (decoded),
            `invalid` (on invalid pixels, not decoded) or `empty` (decoded, nothing found); None otherwise.
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    prompt_index: np.ndarray | None = None
    labels: tuple[str | None, ...] | None = None
    prompt_status: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {self.masks.shape}")
        n = self.masks.shape[0]
        self.predicted_iou = np.asarray(self.predicted_iou, dtype=np.float32).reshape(n)
        self.stability_score = np.asarray(self.stability_score, dtype=np.float32).reshape(n)
        if self.prompt_index is None:
            self.prompt_index = np.full(n, -1, dtype=np.int64)
        else:
            self.prompt_index = np.asarray(self.prompt_index, dtype=np.int64).reshape(n)
        if self.labels is not None:
            self.labels = tuple(self.labels)
            if len(self.labels) != n:
                raise ValueError(f"{len(self.labels)} labels for {n} masks")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> ChipMasks:
        return cls(
            np.zeros((0, height, width), dtype=bool),
            np.zeros(0, dtype=np.float32),
            np.zeros(0, dtype=np.float32),
        )

    def filter(self, keep: np.ndarray) -> ChipMasks:
        """The masks selected by `keep`.

        Args:
            keep: A boolean mask (N,) or an index array.

        Returns:
            A new `ChipMasks` with the selected masks and their per-mask arrays.
        """
        assert self.prompt_index is not None
        labels = None if self.labels is None else tuple(np.asarray(self.labels, dtype=object)[keep])
        return ChipMasks(self.masks[keep], self.predicted_iou[keep], self.stability_score[keep],
                         self.prompt_index[keep], labels, self.prompt_status)


@dataclass(frozen=True)
class GeneratorCapabilities:
    """What a mask generator declares about itself (the run loop reads this, never probes).

    Attributes:
        batch_size: Chips the generator wants per `MaskGenerator.generate_batch` call
            (several chips share one encoder batch).
        points_per_side: Side of its point grid in segment-everything mode (the prompt
            prefilter drops grid points); None when it has no grid.
    """

    batch_size: int = 1
    points_per_side: int | None = None


@runtime_checkable
class MaskGenerator(Protocol):
    """Anything that turns chips into instance masks.

    Attributes:
        name: Written to the output's `model` column.
        capabilities: What the generator declares about itself (`GeneratorCapabilities`).
        timings_s: Seconds per stage, accumulated over calls (may stay empty).
    """

    name: str
    capabilities: GeneratorCapabilities
    timings_s: dict[str, float]

    def generate(self, chip: Chip) -> ChipMasks: ...

    def generate_batch(self, chips: Sequence[Chip]) -> list[ChipMasks]: ...


class BaseMaskGenerator:
    """Defaults for `MaskGenerator`: one chip at a time, no grid, no timings.

    Subclasses call ``super().__init__()`` and write `generate` (and may
    override ``capabilities`` and `generate_batch`).
    """

    name: str = "generator"
    capabilities: GeneratorCapabilities = GeneratorCapabilities()

    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    def generate(self, chip: Chip) -> ChipMasks:
        raise NotImplementedError

    def generate_batch(self, chips: Sequence[Chip]) -> list[ChipMasks]:
        """`generate` for each chip."""
        return [self.generate(c) for c in chips]


__all__ = ["BaseMaskGenerator", "ChipMasks", "GeneratorCapabilities", "MaskGenerator"]
