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
    "segment_scene_to_file": ("geosam.modes.everything", "segment_scene_to_file"),
    "segment_scenes": ("geosam.modes.scenes", "segment_scenes"),
    "segment_prompts": ("geosam.modes.prompted", "segment_prompts"),
    "segment_prompts_to_file": ("geosam.modes.prompted", "segment_prompts_to_file"),
    "segment_text": ("geosam.modes.text", "segment_text"),
    "segment_text_to_file": ("geosam.modes.text", "segment_text_to_file"),
    "RunSummary": ("geosam.run.summary", "RunSummary"),
    "SegmentConfig": ("geosam.config", "SegmentConfig"),
    "PromptConfig": ("geosam.config", "PromptConfig"),
    "PromptColumns": ("geosam.prompts.parse", "PromptColumns"),
    "Scene": ("geosam.read.scene", "Scene"),
    "ChipMasks": ("geosam.segment.base", "ChipMasks"),
    "MaskGenerator": ("geosam.segment.base", "MaskGenerator"),
    "BaseMaskGenerator": ("geosam.segment.base", "BaseMaskGenerator"),
    "GeneratorCapabilities": ("geosam.segment.base", "GeneratorCapabilities"),
    "SamMaskGenerator": ("geosam.segment", "SamMaskGenerator"),
    "load_model": ("geosam.models", "load_model"),
    "ModelCapabilities": ("geosam.models", "ModelCapabilities"),
    "write_vector": ("geosam.write.vector", "write_vector"),
    "write_label_raster": ("geosam.write.label_raster", "write_label_raster"),
    "write_index_raster": ("geosam.write.index_raster", "write_index_raster"),
    "label_dataarray": ("geosam.write.label_raster", "label_dataarray"),
    "INDICES": ("geosam.config.index_table", "INDICES"),
    "monitor_objects": ("geosam.monitor.series", "monitor_objects"),
}

#: submodules reachable as attributes (``geosam.plot.show(...)``), imported on first use
_SUBMODULES = ("plot", "testing")

__all__ = [  # the error classes, __version__ and every lazily loaded name (tests keep them in step)
    "INDICES",
    "BandError",
    "BaseMaskGenerator",
    "ChipMasks",
    "ConfigError",
    "ExportError",
    "GeneratorCapabilities",
    "GeosamError",
    "InvalidRasterError",
    "MaskGenerator",
    "ModelCapabilities",
    "ModelLoadError",
    "NoCRSError",
    "PromptColumns",
    "PromptConfig",
    "PromptError",
    "PromptOutsideSceneError",
    "RunSummary",
    "SamMaskGenerator",
    "Scene",
    "SegmentConfig",
    "__version__",
    "label_dataarray",
    "load_model",
    "monitor_objects",
    "plot",
    "segment_prompts",
    "segment_prompts_to_file",
    "segment_scene",
    "segment_scene_to_file",
    "segment_scenes",
    "segment_text",
    "segment_text_to_file",
    "write_index_raster",
    "write_label_raster",
    "write_vector",
]


def __getattr__(name: str) -> Any:
    """The lazily loaded public names and submodules (heavy dependencies load on first use).

    Args:
        name: The attribute asked for.

    Returns:
        The object or module.

    Raises:
        AttributeError: ``name`` is not public.
    """
    import importlib

    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"geosam.{name}")
    raise AttributeError(f"module 'geosam' has no attribute {name!r}")
