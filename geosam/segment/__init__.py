"""Mask generators built on SAM: segment everything and prompt decoding."""

from __future__ import annotations

from geosam.amg import SamMaskGenerator
from geosam.segment.prompted import PromptMaskGenerator

__all__ = ["PromptMaskGenerator", "SamMaskGenerator"]
