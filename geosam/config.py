"""Typed, frozen settings. Every default of geosam lives here."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from geosam.errors import ConfigError

DEFAULT_MODEL = "Zigeng/SlimSAM-uniform-50"


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of a segment-everything run over a scene.

    Units are in the names: ``_px`` pixels of the scene, ``_m2`` square metres.
    SAM parameters keep SAM's own names.
    """

    # tiling
    chip_size_px: int = 1024
    overlap_px: int = 128
    # reading
    bands: tuple[int, ...] | None = None
    fill_value: tuple[float, ...] | None = None
    fill_tolerance: float = 0.0
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    # model
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    # segment everything (SAM's names)
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    # stitching and output
    match_iou: float = 0.5
    min_area_m2: float = 0.0
    to_crs: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.match_iou <= 1.0:
            raise ConfigError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.min_area_m2 < 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}")
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ConfigError("points_per_side and points_per_batch must be >= 1")

    def with_overrides(self, **overrides: Any) -> SegmentConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        clean = {k: _normalise(k, v) for k, v in overrides.items() if v is not None or k == "to_crs"}
        return replace(self, **clean)


def _normalise(key: str, value: Any) -> Any:
    if key in ("bands", "fill_value") and value is not None:
        if isinstance(value, (int, float)):
            value = (value,)
        return tuple(value)
    if key == "stretch_percentiles":
        return tuple(value)
    return value
