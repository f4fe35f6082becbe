"""The index raster: indices of a scene as a float32 GeoTIFF on its grid, written block by block, atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geosam.config.bands import resolve_band_roles
from geosam.config.index_table import check_index
from geosam.errors import ConfigError, ExportError
from geosam.index.calculator import IndexCalculator
from geosam.windows import PixelWindow

log = logging.getLogger(__name__)


def write_index_raster(
    scene: Any,
    path: str | os.PathLike[str],
    indices: Sequence[str] = ("ndvi",),
    *,
    band_roles: Any = None,
    reflectance_scale: float | None = None,
    reflectance_offset: float | None = None,
    block_px: int = 1024,
) -> Path:
    """Write indices of `scene` as a float32 GeoTIFF on the scene's grid, one band per index.

    Band descriptions are the index names; NaN is nodata (invalid pixels, zero
    denominators). Computed and written `block_px` x `block_px` px at a time, so memory
    is bounded by a block. Tiled (256 px), deflate, written atomically
    (`geosam.write.paths.atomic_output`).

    Args:
        scene: A raster path, an open rasterio dataset or a DataArray.
        path: The GeoTIFF to write.
        indices: Index names (`ndvi`, `ndwi`, `savi`, `evi`, `ndmi`, `ndre`, `exg`, `vari`, `gli`).
        band_roles: A preset (`sentinel2`, `landsat8`, `naip`, `rgb`) or a role -> 1-based band
            mapping; None: from the band descriptions / colour interpretation.
        reflectance_scale: Reflectance = DN * scale + offset (e.g. 1e-4 for Sentinel-2 L2A).
        reflectance_offset: See `reflectance_scale`.
        block_px: Side of the blocks computed at a time (px).

    Returns:
        The written path.

    Raises:
        BandError: The scene lacks a band an index needs.
        ExportError: `path` is the scene itself or cannot be written.
    """
    import rasterio

    from geosam.read.scene import Scene
    from geosam.write.paths import atomic_output, check_not_input, local_input
    from geosam.write.verify import raster_verifier

    path = Path(path)
    if block_px < 16:
        raise ExportError(f"{path}: block_px must be at least 16, got {block_px}")
    names = [check_index(n) for n in indices]
    if not names:
        raise ConfigError("write_index_raster needs at least one index")
    check_not_input(path, {"scene": local_input(scene)}, "index raster")  # a DataArray or STAC scene: no file
    with Scene(scene, stretch=None) as sc:  # index values are read raw: no stretch to estimate
        roles = resolve_band_roles(sc, band_roles, reflectance_scale, reflectance_offset)
        calc = IndexCalculator(roles, names)
        i = sc.info
        profile = {
            "driver": "GTiff", "width": i.width, "height": i.height, "count": len(names), "dtype": "float32",
            "crs": sc.ds.crs, "transform": i.transform, "nodata": float("nan"), "tiled": True,
            "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 3,
            "BIGTIFF": "IF_SAFER",
        }
        try:
            verify = raster_verifier(path, i.width, i.height, len(names))
            with atomic_output(path, verify=verify) as tmp, rasterio.open(tmp, "w", **profile) as dst:
                for k, n in enumerate(names, start=1):
                    dst.set_band_description(k, n)
                for r0 in range(0, i.height, block_px):
                    for c0 in range(0, i.width, block_px):
                        win = PixelWindow(c0, r0, min(block_px, i.width - c0), min(block_px, i.height - r0))
                        idx = calc.compute(sc, win)
                        dst.write(np.stack([idx[n] for n in names]), window=win.to_rasterio())
        except rasterio.errors.RasterioIOError as exc:
            raise ExportError(f"{path}: cannot write the index raster ({exc})") from exc
    log.info("wrote %s (%s)", path, ", ".join(names))
    return path


__all__ = ["write_index_raster"]
