"""The parts a run's settings are composed of: reading, tiling, model, segment-everything, engine, output.

Each part owns its fields, defaults and validation (see `geosam.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geosam.errors import ConfigError

DEFAULT_MODEL = "Zigeng/SlimSAM-uniform-50"
#: model used by prompt mode unless another is given: the built-in, offline LiteMedSAM (box prompts)
DEFAULT_PROMPT_MODEL = "litemedsam"

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def int_at_least(name: str, value: Any, low: int) -> int:
    try:
        ok = int(value) == value and int(value) >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _unit(name: str, value: Any, *, low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok:
        raise ConfigError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return v


def _put(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


def _numbers(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class ReadConfig:
    """How pixels become the 3-channel uint8 image a model sees.

    bands: 1-based band numbers for the model image (1 or 3 of them); None picks
        red/green/blue by colour interpretation, else bands 1-3, else band 1.
    fill_value: a pixel whose selected bands all equal this value (one number, or
        one per selected band) is invalid, within ``fill_tolerance``.
    stretch_percentiles: per-band (low, high) percentiles for non-uint8 data.
    overview_max_px: longest side of the decimated read used for statistics.
    remote: skip GDAL's directory listing on open (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``;
        sidecar ``.msk`` / ``.aux.xml`` / ``.ovr`` files are then ignored); None: only for
        remote paths (``/vsicurl/``, URLs), see `geosam.read.gdal.gdal_env`.
    """

    bands: tuple[int, ...] | None = None
    fill_value: tuple[float, ...] | None = None
    fill_tolerance: float = 0.0
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    overview_max_px: int = 1024
    remote: bool | None = None

    def __post_init__(self) -> None:
        bands = _numbers(self.bands)
        if bands is not None:
            if len(bands) not in (1, 3):
                raise ConfigError(f"bands must name 1 or 3 bands for the model image, got {bands}")
            for b in bands:
                int_at_least("a band number (1-based)", b, 1)
            bands = tuple(int(b) for b in bands)
        _put(self, "bands", bands)
        fv = _numbers(self.fill_value)
        _put(self, "fill_value", None if fv is None else tuple(float(v) for v in fv))
        if not self.fill_tolerance >= 0:
            raise ConfigError(f"fill_tolerance must be >= 0, got {self.fill_tolerance}")
        lo, hi = (float(v) for v in self.stretch_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"stretch_percentiles must be (low, high) with 0 <= low < high <= 100, got {(lo, hi)}")
        _put(self, "stretch_percentiles", (lo, hi))
        int_at_least("overview_max_px", self.overview_max_px, 16)


@dataclass(frozen=True)
class TilingConfig:
    """The chip grid: square chips of ``chip_size_px`` overlapping by ``overlap_px`` (scene pixels)."""

    chip_size_px: int = 1024
    overlap_px: int = 128

    def __post_init__(self) -> None:
        int_at_least("chip_size_px", self.chip_size_px, 16)
        int_at_least("overlap_px", self.overlap_px, 0)
        if self.overlap_px * 2 >= self.chip_size_px:
            raise ConfigError(
                f"overlap_px must be less than half of chip_size_px ({self.chip_size_px}), got {self.overlap_px}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Which model runs where: a checkpoint id or local directory, or a built-in name (``litemedsam``).

    device: auto | cpu | cuda | cuda:N | mps. dtype: auto (fp16 on CUDA; bf16 on CPUs
    with native bf16 where measured faster with the same masks; else float32) | float32 | bfloat16 | float16. compile: ``torch.compile``.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ConfigError("model must name a checkpoint id, a local directory or 'litemedsam'")
        dev = str(self.device).strip().lower()
        if dev.split(":", 1)[0] not in _DEVICES or (dev.startswith("cuda:") and not dev[5:].isdigit()):
            raise ConfigError(f"unknown device {self.device!r}: use one of auto, cpu, cuda, cuda:N, mps")
        if str(self.dtype).strip().lower() not in _DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: use one of {', '.join(_DTYPES)}")


#: Most crop layers segment-everything accepts (layer i adds 4**i crops, each a full image encoding).
MAX_CROP_N_LAYERS = 3


@dataclass(frozen=True)
class AmgConfig:
    """Segment everything, with segment-anything's parameter names and meanings.

    points_per_side: the grid has ``points_per_side ** 2`` points per chip.
    points_per_batch: point prompts decoded together (memory vs. speed).
    pred_iou_thresh, stability_score_thresh: keep masks above these (0 disables).
    stability_score_offset: logit offset of the stability score.
    mask_threshold: logit threshold binarising masks.
    box_nms_thresh: box IoU above which the lower-scoring mask is dropped.
    crop_n_layers: also segment ``(2 ** i) ** 2`` overlapping crops in layer i = 1..n.
    crop_overlap_ratio: overlap of the layer-1 crops as a fraction of the chip's short side.
    crop_n_points_downscale_factor: layer i uses ``points_per_side / factor ** i`` points per side.
    crop_nms_thresh: box IoU for the NMS between crops (smaller crops win).
    min_mask_region_area: remove islands and fill holes smaller than this (chip pixels).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    crop_nms_thresh: float = 0.7
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        int_at_least("points_per_side", self.points_per_side, 1)
        int_at_least("points_per_batch", self.points_per_batch, 1)
        _unit("pred_iou_thresh", self.pred_iou_thresh)
        _unit("stability_score_thresh", self.stability_score_thresh)
        if not (float(self.stability_score_offset) > 0 and math.isfinite(float(self.stability_score_offset))):
            raise ConfigError(f"stability_score_offset must be a positive number, got {self.stability_score_offset}")
        if not math.isfinite(float(self.mask_threshold)):
            raise ConfigError(f"mask_threshold must be a finite number, got {self.mask_threshold}")
        _unit("box_nms_thresh", self.box_nms_thresh, low_open=True)
        int_at_least("crop_n_layers", self.crop_n_layers, 0)
        if self.crop_n_layers > MAX_CROP_N_LAYERS:
            n_crops = sum(4**i for i in range(self.crop_n_layers + 1))
            raise ConfigError(
                f"crop_n_layers={self.crop_n_layers} means {n_crops} image encodings per chip; use at most "
                f"{MAX_CROP_N_LAYERS} (1 is usual: 5 encodings), or smaller chips for small objects"
            )
        _unit("crop_overlap_ratio", self.crop_overlap_ratio)
        int_at_least("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1)
        _unit("crop_nms_thresh", self.crop_nms_thresh, low_open=True)
        int_at_least("min_mask_region_area (chip pixels)", self.min_mask_region_area, 0)


@dataclass(frozen=True)
class EngineConfig:
    """How the run loop works (not what it computes).

    prefetch_chips: chips read ahead by a reader thread (0: read in the calling thread).
    chips_per_batch: chips handed to the generator at once (one encoder batch).
    skip_bad_chips: a chip whose pixels cannot be read is skipped and listed in the
        run statistics (``chips_failed``) instead of ending the run.
    progress: a progress bar over chips.
    """

    prefetch_chips: int = 2
    chips_per_batch: int = 1
    skip_bad_chips: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        int_at_least("prefetch_chips", self.prefetch_chips, 0)
        int_at_least("chips_per_batch", self.chips_per_batch, 1)


@dataclass(frozen=True)
class OutputConfig:
    """Stitching and the output table.

    match_iou: IoU inside a shared chip overlap at or above which two masks are one object.
    seam_tolerance_px: width of the band (scene pixels) along an object's outline in which two chips' masks of
        it may disagree and still be joined (0: IoU only); see docs/seams.md.
    min_area_m2: drop smaller objects. to_crs: output CRS (None: the scene's); checked here.
    """

    match_iou: float = 0.5
    seam_tolerance_px: int = 6
    min_area_m2: float = 0.0
    to_crs: str | None = None

    def __post_init__(self) -> None:
        _unit("match_iou", self.match_iou, low_open=True)
        int_at_least("seam_tolerance_px", self.seam_tolerance_px, 0)
        if not self.min_area_m2 >= 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}")
        if self.to_crs is not None:
            check_crs(self.to_crs, "to_crs")


def check_crs(value: Any, what: str) -> Any:
    """A pyproj CRS for ``value`` (EPSG:4326, WKT, PROJ, ...); `ConfigError` naming ``what`` otherwise."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except (CRSError, TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {value!r} is not a coordinate reference system ({exc}); "
                          "use e.g. EPSG:4326 or a WKT string") from None


@dataclass(frozen=True)
class PromptWindowConfig:
    """Prompt mode's windows and decoding.

    Each prompt needs a square *context window* centred on it, of side ``context`` x
    the prompt box's longest side (px), at least ``min_window_px``; point prompts use
    ``point_window_px``. ``box_grow``: fraction of a box's width / height added on each
    side. ``multimask``: None = 3 candidate masks for single-point prompts (the best by
    predicted IoU is kept), one mask otherwise. ``mask_threshold``: logit threshold.
    """

    context: float = 2.5
    min_window_px: int = 64
    point_window_px: int = 256
    box_grow: float = 0.0
    multimask: bool | None = None
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not self.context >= 1.0:
            raise ConfigError(f"context must be >= 1 (window side / box side), got {self.context}")
        int_at_least("min_window_px", self.min_window_px, 1)
        int_at_least("point_window_px", self.point_window_px, 1)
        if not -0.5 < self.box_grow <= 5.0:
            raise ConfigError(f"box_grow must be in (-0.5, 5] (fraction of the box side per side), got {self.box_grow}")
        if not math.isfinite(float(self.mask_threshold)):
            raise ConfigError(f"mask_threshold must be a finite number, got {self.mask_threshold}")


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT_MODEL",
    "AmgConfig",
    "EngineConfig",
    "ModelConfig",
    "OutputConfig",
    "PromptWindowConfig",
    "ReadConfig",
    "TilingConfig",
    "check_crs",
]
