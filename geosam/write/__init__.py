"""Writing: output checks and atomic paths, vector formats, label / index rasters, overlays and the failed-chips file."""
