"""Prompts: parsing vector files and lists of points / boxes into prompts in scene pixels, and exemplars."""
