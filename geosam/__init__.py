"""geosam: large GeoTIFF scenes to georeferenced vector objects with Segment Anything.

Heavy modules (torch, transformers, geopandas) load on first use, so
``import geosam`` stays fast.
"""

from __future__ import annotations

from typing import Any

from geosam.errors import (
    BandError,
    ConfigError,
    ExportError,
    GeosamError,
    InvalidRasterError,
    ModelLoadError,
    NoCRSError,
    PromptError,
    PromptOutsideSceneError,
)

__version__ = "0.1.0"

_LAZY = {
    "segment_scene": ("geosam.modes.everything", "segment_scene"),
    "segment_scenes": ("geosam.modes.scenes", "segment_scenes"),
    "SegmentConfig": ("geosam.config", "SegmentConfig"),
    "Scene": ("geosam.read.scene", "Scene"),
    "ChipMasks": ("geosam.segment.base", "ChipMasks"),
    "MaskGenerator": ("geosam.segment.base", "MaskGenerator"),
    "SamMaskGenerator": ("geosam.segment", "SamMaskGenerator"),
    "load_sam": ("geosam.models", "load_sam"),
    "load_model": ("geosam.models", "load_model"),
    "ModelCapabilities": ("geosam.models", "ModelCapabilities"),
    "segment_prompts": ("geosam.modes.everything", "segment_prompts"),
    "segment_text": ("geosam.modes.text", "segment_text"),
    "PromptConfig": ("geosam.config", "PromptConfig"),
    "write_vector": ("geosam.write.label_raster", "write_vector"),
    "write_label_raster": ("geosam.write.label_raster", "write_label_raster"),
    "write_index_raster": ("geosam.indices", "write_index_raster"),
    "label_dataarray": ("geosam.read.dataarray", "label_dataarray"),
    "resolve_band_roles": ("geosam.config.bands", "resolve_band_roles"),
    "INDICES": ("geosam.indices", "INDICES"),
    "monitor_objects": ("geosam.monitor.series", "monitor_objects"),
}

__all__ = [  # the error classes, __version__ and every lazily loaded name (tests keep them in step)
    "INDICES",
    "BandError",
    "ChipMasks",
    "ConfigError",
    "ExportError",
    "GeosamError",
    "InvalidRasterError",
    "MaskGenerator",
    "ModelCapabilities",
    "ModelLoadError",
    "NoCRSError",
    "PromptConfig",
    "PromptError",
    "PromptOutsideSceneError",
    "SamMaskGenerator",
    "Scene",
    "SegmentConfig",
    "__version__",
    "label_dataarray",
    "load_model",
    "load_sam",
    "monitor_objects",
    "resolve_band_roles",
    "segment_prompts",
    "segment_scene",
    "segment_scenes",
    "segment_text",
    "write_index_raster",
    "write_label_raster",
    "write_vector",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name == "testing":
        import importlib

        return importlib.import_module("geosam.testing")
    raise AttributeError(f"module 'geosam' has no attribute {name!r}")
