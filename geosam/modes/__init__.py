"""Modes: the entry points (segment everything, prompts, text, many scenes).

Each mode is data, a `geosam.modes.runner.ModePlan` (chip plan, generator, assembler, table), run by
the one runner `geosam.modes.runner.run_mode` with the same run options for every mode.
"""
