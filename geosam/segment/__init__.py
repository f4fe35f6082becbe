"""Segment everything: SAM's automatic mask generator for chips.

:mod:`~geosam.segment.sam_utils` holds segment-anything's pure helpers,
:mod:`~geosam.segment.lowres` the low-resolution statistics kernel,
:mod:`~geosam.segment.crop` one crop's decode / filter / NMS,
:mod:`~geosam.segment.prompted` prompt mode's decoding (:class:`PromptMaskGenerator`), and
:mod:`~geosam.segment.everything` :class:`SamMaskGenerator` (loaded on first
use, so that the pure helpers import without the model stack).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "SamMaskGenerator":
        from geosam.segment.everything import SamMaskGenerator

        return SamMaskGenerator
    if name == "PromptMaskGenerator":
        from geosam.segment.prompted import PromptMaskGenerator

        return PromptMaskGenerator
    raise AttributeError(f"module 'geosam.segment' has no attribute {name!r}")


__all__ = ["PromptMaskGenerator", "SamMaskGenerator"]
