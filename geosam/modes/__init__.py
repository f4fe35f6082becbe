"""Modes: the entry points (segment everything, prompts, text, many scenes); each builds its plan and calls :mod:`geosam.run.loop`."""
