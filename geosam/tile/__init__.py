"""Tiling: the chip grid (cores that partition the scene) and the windows planned around prompts."""
