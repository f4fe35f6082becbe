"""Output paths checked before any pixel or model: a typo must not cost an hours-long run."""

from __future__ import annotations

import os
from pathlib import Path

from geosam.errors import ExportError
from geosam.write.paths import check_writable_path
from geosam.write.vector import vector_format


def check_output_path(path: str | os.PathLike[str], kind: str = "vector") -> Path:
    """Fail early (before hours of segmentation) on an output path that cannot be written.

    Creates nothing (see `geosam.write.paths.check_outputs` for inputs and existing files).

    Args:
        path: The output file.
        kind: "vector" (the extension must be a supported vector format), "raster" (.tif / .tiff) or "png".

    Returns:
        The path.

    Raises:
        ExportError: A wrong extension, a folder at the path, or a folder that cannot be written.
    """
    path = Path(path)
    if kind == "vector":
        vector_format(path)
    elif kind == "raster" and path.suffix.lower() not in (".tif", ".tiff"):
        raise ExportError(f"{path}: a label or index raster must be a GeoTIFF (.tif or .tiff)")
    elif kind == "png" and path.suffix.lower() != ".png":
        raise ExportError(f"{path}: the overlay is written as PNG; use a .png file name")
    return check_writable_path(path)


__all__ = ["check_output_path"]
