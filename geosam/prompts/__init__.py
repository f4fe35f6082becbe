"""Prompts: vector files and lists of points / boxes into prompts in scene pixels, their labels, and exemplars."""
