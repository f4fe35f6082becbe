"""Segment everything: SAM's automatic mask generator for chips.

`sam_utils` holds segment-anything's pure helpers,
`lowres` the low-resolution statistics kernel,
`crop` one crop's decode / filter / NMS,
`prompted` prompt mode's decoding (`PromptMaskGenerator`), and
`everything` `SamMaskGenerator` (loaded on first
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
