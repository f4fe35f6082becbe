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
    crop_n_layers: int = 0
    # engine: reader-thread prefetch (chips read ahead), chips per encoder batch
    prefetch_chips: int = 2
    #: a chip whose pixels cannot be read (corrupt block) is skipped with a warning
    #: and listed in ``gdf.attrs['geosam']['chips_failed']`` instead of ending the run
    skip_bad_chips: bool = False
    chips_per_batch: int = 1
    #: torch.compile the encoder / decoder (first chip slow, later ones faster; see geosam.models.compile_bundle)
    compile: bool = False
    # stitching and output
    match_iou: float = 0.5
    min_area_m2: float = 0.0
    to_crs: str | None = None
    progress: bool = True
    # spectral indices, ranking, prefilter (geosam.bands, geosam.indices)
    band_roles: str | tuple[tuple[str, int], ...] | None = None  # preset name or ((role, 1-based band), ...)
    reflectance_scale: float | None = None  # None: file metadata, preset, else 1/255 for uint8, 1 otherwise
    reflectance_offset: float | None = None
    indices: tuple[str, ...] = ()
    index_thresholds: tuple[tuple[str, float], ...] = ()  # what {index}_frac_above counts against
    min_index: tuple[tuple[str, float], ...] = ()  # keep objects with {index}_mean >= value
    rank_by: str | None = None  # a column, e.g. "ndvi_mean"; sorted descending, adds `rank`
    top_k: int | None = None
    prefilter: bool = False  # decode only prompts near pixels passing min_index
    prefilter_radius_px: int | str = 2  # prefilter neighbourhood (px); "grid": one point-grid spacing

    def __post_init__(self) -> None:
        _normalise_index_fields(self)
        if not 0.0 < self.match_iou <= 1.0:
            raise ConfigError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.min_area_m2 < 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}")
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ConfigError("points_per_side and points_per_batch must be >= 1")
        if self.prefetch_chips < 0 or self.chips_per_batch < 1 or self.crop_n_layers < 0:
            raise ConfigError("prefetch_chips and crop_n_layers must be >= 0, chips_per_batch >= 1")

    def with_overrides(self, **overrides: Any) -> SegmentConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        clean = {k: _normalise(k, v) for k, v in overrides.items() if v is not None or k == "to_crs"}
        return replace(self, **clean)


_INDEX_COLUMNS_BASE = ("area_m2", "predicted_iou", "stability_score", "n_chips")


def _pairs(key: str, value: Any, kind: type) -> tuple[tuple[str, Any], ...]:
    """{'ndvi': 0.3} / 'ndvi=0.3' / ['ndvi=0.3', ...] / (('ndvi', 0.3),) -> (('ndvi', 0.3),)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for v in value:
            if isinstance(v, str):
                name, sep, num = v.partition("=")
                if not sep:
                    raise ConfigError(f"{key} entries look like ndvi=0.3, got {v!r}")
                items.append((name, num))
            else:
                name, num = v
                items.append((name, num))
    from geosam.indices import check_index

    try:
        return tuple(sorted((check_index(n), kind(x)) for n, x in items))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} needs index=number pairs, got {value!r}") from None


def _normalise_index_fields(cfg: SegmentConfig) -> None:
    """Normalise and validate the index settings in place (the dataclass is frozen)."""
    from geosam.bands import normalise_band_roles
    from geosam.indices import STATS, check_index

    def put(name: str, value: Any) -> None:
        object.__setattr__(cfg, name, value)

    put("band_roles", normalise_band_roles(cfg.band_roles))
    idx = cfg.indices
    if isinstance(idx, str):
        idx = [t for t in idx.replace(" ", "").split(",") if t]
    put("indices", tuple(dict.fromkeys(check_index(n) for n in idx)))
    put("index_thresholds", _pairs("index_thresholds", cfg.index_thresholds, float))
    put("min_index", _pairs("min_index", cfg.min_index, float))
    if cfg.rank_by is not None:
        known = set(_INDEX_COLUMNS_BASE) | {f"{n}_{s}" for n in _all_index_names() for s in STATS}
        if cfg.rank_by not in known:
            raise ConfigError(f"rank_by must be one of {sorted(known)}, got {cfg.rank_by!r}")
    if cfg.top_k is not None and (int(cfg.top_k) != cfg.top_k or cfg.top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1, got {cfg.top_k}")
    if cfg.top_k is not None and cfg.rank_by is None:
        raise ConfigError("top_k needs rank_by (e.g. rank_by='ndvi_mean')")
    if cfg.prefilter and not cfg.min_index:
        raise ConfigError("prefilter needs min_index (e.g. min_index={'ndvi': 0.3}): it drops prompts below it")
    rad = cfg.prefilter_radius_px
    if isinstance(rad, str) and rad.strip().lower() == "grid":
        put("prefilter_radius_px", "grid")
    else:
        try:
            ok = int(rad) == float(rad) and int(rad) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"prefilter_radius_px must be an integer >= 0 or 'grid', got {rad!r}")
        put("prefilter_radius_px", int(rad))
    if cfg.reflectance_scale is not None and not cfg.reflectance_scale > 0:
        raise ConfigError(f"reflectance_scale must be > 0, got {cfg.reflectance_scale}")


def _all_index_names() -> list[str]:
    from geosam.indices import INDICES

    return list(INDICES)


def index_names(cfg: SegmentConfig) -> tuple[str, ...]:
    """Indices a run needs: ``indices``, then those named by ``min_index`` and ``rank_by``."""
    names = list(cfg.indices) + [n for n, _ in cfg.min_index]
    if cfg.rank_by is not None:
        head = cfg.rank_by.split("_", 1)[0]
        if head in _all_index_names() and cfg.rank_by not in _INDEX_COLUMNS_BASE:
            names.append(head)
    return tuple(dict.fromkeys(names))


def _normalise(key: str, value: Any) -> Any:
    if key in ("bands", "fill_value") and value is not None:
        if isinstance(value, (int, float)):
            value = (value,)
        return tuple(value)
    if key == "stretch_percentiles":
        return tuple(value)
    return value


#: model used by prompt mode unless another is given: the built-in, offline LiteMedSAM (box prompts)
DEFAULT_PROMPT_MODEL = "litemedsam"


@dataclass(frozen=True)
class PromptConfig:
    """Settings of a prompt-mode run (:func:`geosam.prompts.segment_prompts`).

    Windows: each prompt needs a square *context window* centred on it, of side
    ``context`` x the prompt box's longest side (px), at least ``min_window_px``;
    point prompts use ``point_window_px``. With ``chip_size_px`` > 0 prompts are
    grouped on a chip grid (``chip_size_px``, ``overlap_px``) and every prompt
    that fits in its chip with a margin (its context window, capped at half a
    chip) shares the chip's image embedding; a prompt near a chip edge or larger
    than a chip gets its own window centred on it. ``chip_size_px`` = 0 gives every prompt its own context window (prompts
    with the same window share it). ``None`` picks 0 for a model that takes box
    prompts only, such as LiteMedSAM (whose masks depend on the crop size), and 1024 for other models.
    ``box_grow``: fraction of a box's width / height added on each side.
    ``multimask``: None = 3 candidate masks for single-point prompts (the best
    by predicted IoU is kept), one mask otherwise.
    """

    model: str = DEFAULT_PROMPT_MODEL
    chip_size_px: int | None = None
    overlap_px: int = 128
    context: float = 2.5
    min_window_px: int = 64
    point_window_px: int = 256
    box_grow: float = 0.0
    multimask: bool | None = None
    mask_threshold: float = 0.0
    # reading
    bands: tuple[int, ...] | None = None
    fill_value: tuple[float, ...] | None = None
    fill_tolerance: float = 0.0
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    # model
    device: str = "auto"
    dtype: str = "auto"
    # output
    to_crs: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.chip_size_px is not None and self.chip_size_px < 0:
            raise ConfigError(f"chip_size_px must be >= 0 (0 = one window per prompt), got {self.chip_size_px}")
        if self.chip_size_px and self.overlap_px >= self.chip_size_px:
            raise ConfigError(f"overlap_px ({self.overlap_px}) must be smaller than chip_size_px ({self.chip_size_px})")
        if self.context < 1.0:
            raise ConfigError(f"context must be >= 1 (window side / box side), got {self.context}")
        if self.min_window_px < 1 or self.point_window_px < 1:
            raise ConfigError("min_window_px and point_window_px must be >= 1")
        if not -0.5 < self.box_grow <= 5.0:
            raise ConfigError(f"box_grow must be in (-0.5, 5] (fraction of the box side per side), got {self.box_grow}")

    def with_overrides(self, **overrides: Any) -> PromptConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        clean = {k: _normalise(k, v) for k, v in overrides.items() if v is not None or k in ("to_crs", "chip_size_px", "multimask")}
        return replace(self, **clean)
