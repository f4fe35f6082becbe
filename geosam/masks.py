"""The small interface between mask generators and the rest of geosam.

A mask generator takes a :class:`geosam.io.Chip` and returns
:class:`ChipMasks`: boolean instance masks in the chip's pixel frame (same
height and width as ``chip.image``) with one score pair per mask. SAM
(:class:`geosam.amg.SamMaskGenerator`) and the test oracle
(:class:`geosam.testing.OracleMaskGenerator`) both implement it, and anything
else with the same two members can replace them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from geosam.io import Chip


@dataclass
class ChipMasks:
    """Instance masks of one chip.

    masks: bool array (N, H, W) in the chip pixel frame.
    predicted_iou, stability_score: float32 arrays (N,).
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {self.masks.shape}")
        n = self.masks.shape[0]
        self.predicted_iou = np.asarray(self.predicted_iou, dtype=np.float32).reshape(n)
        self.stability_score = np.asarray(self.stability_score, dtype=np.float32).reshape(n)

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
        return ChipMasks(self.masks[keep], self.predicted_iou[keep], self.stability_score[keep])


@runtime_checkable
class MaskGenerator(Protocol):
    """Anything that turns a chip into instance masks."""

    name: str

    def generate(self, chip: Chip) -> ChipMasks: ...
