"""Typed, frozen settings, composed from small parts. Every default of geosam lives here.

A run's settings are composed like transformers' ``SamConfig``: each part owns
its fields, defaults and validation, and a mode's config holds the parts it uses.

================  =====================================================================
part              fields
================  =====================================================================
ReadConfig        bands, fill_value, fill_tolerance, stretch_percentiles, overview_max_px
TilingConfig      chip_size_px, overlap_px
ModelConfig       model, device, dtype, compile
AmgConfig         SAM's segment-everything parameters (points_per_side, ... crop_*)
IndexConfig       band_roles, reflectance_*, indices, index_thresholds, min_index, rank_by,
                  top_k, prefilter, prefilter_radius_px
EngineConfig      prefetch_chips, chips_per_batch, skip_bad_chips, progress
OutputConfig      match_iou, seam_tolerance_px, min_area_m2, to_crs
PromptWindowConfig  context, min_window_px, point_window_px, box_grow, multimask, mask_threshold
OutlineConfig     simplify_m, regularize, regularize_45, smooth, smooth_m, fill_holes_m2
================  =====================================================================

`SegmentConfig` and `PromptConfig` compose them. Flat keyword
settings (``chip_size_px=512, points_per_side=16``) stay the convenience of the
Python API and the CLI: `SegmentConfig.with_overrides` routes each name
to the part that owns it. Everything here is checked without pixels or a model,
so a typo fails before anything loads. Units are in the names: ``_px`` scene
pixels, ``_m2`` square metres. This package depends on nothing above
`geosam.errors`, `geosam.config.bands` and `geosam.config.index_table`.

Modules: `parts` (the parts), `index`
(`IndexConfig`), `modes` (the composed configs).
"""

from __future__ import annotations

from geosam.config.index import IndexConfig
from geosam.config.modes import PromptConfig, PromptTilingConfig, SegmentConfig
from geosam.config.outline import OutlineConfig
from geosam.config.parts import (
    DEFAULT_MODEL,
    DEFAULT_PROMPT_MODEL,
    AmgConfig,
    EngineConfig,
    ModelConfig,
    OutputConfig,
    PromptWindowConfig,
    ReadConfig,
    TilingConfig,
    check_crs,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT_MODEL",
    "AmgConfig",
    "EngineConfig",
    "IndexConfig",
    "ModelConfig",
    "OutlineConfig",
    "OutputConfig",
    "PromptConfig",
    "PromptTilingConfig",
    "PromptWindowConfig",
    "ReadConfig",
    "SegmentConfig",
    "TilingConfig",
    "check_crs",
]
