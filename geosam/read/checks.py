"""Scenes geosam would otherwise misread without a word, refused at open with what to do.

* `check_georeferencing` -- a raster placed by ground control points only (no geotransform):
  it *has* a CRS, that of its GCPs; say so and how to warp it, not "no CRS".
* `check_pixel_type` -- complex data (the model would see the real part only) and palette
  bands (colour indices fed to the model as brightness) unless the bands were chosen explicitly.
* `check_fill_value` -- a fill value the data type cannot hold (``300`` on uint8) matches no pixel.

Each raises a `geosam.errors.GeosamError` naming the file; nothing here reads pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geosam.errors import BandError, ConfigError, InvalidRasterError, NoCRSError


def check_georeferencing(ds: Any) -> None:
    """NoCRSError naming the GCPs' CRS and ``gdalwarp`` when ``ds`` has ground control points but no CRS / geotransform."""
    gcps, gcp_crs = getattr(ds, "gcps", ((), None))
    if ds.crs is not None or not gcps:
        return
    where = f"in {gcp_crs.to_string()}" if gcp_crs is not None else "without a CRS"
    target = gcp_crs.to_string() if gcp_crs is not None else "EPSG:XXXX"
    raise NoCRSError(
        f"{ds.name}: the raster is placed by {len(gcps)} ground control points {where}, not by a geotransform; "
        f"warp it to a north-up grid first: gdalwarp -t_srs {target} {ds.name} warped.tif"
    )


def check_pixel_type(ds: Any, path: str, bands: Sequence[int] | None) -> None:
    """Refuse complex data, and palette bands unless ``bands`` (the user's own choice) is given."""
    dtype = str(ds.dtypes[0])
    if dtype.startswith("c"):  # complex64, complex128, complex_int16
        raise InvalidRasterError(
            f"{path}: complex data ({dtype}); geosam reads real values. Make an amplitude raster first, e.g. "
            f"gdal_calc.py -A {path} --calc='abs(A)' --type Float32 --outfile amplitude.tif"
        )
    if bands:
        return
    interp = [getattr(c, "name", str(c)).lower() for c in ds.colorinterp]
    if "palette" in interp:
        b = interp.index("palette") + 1
        raise BandError(
            f"{path}: band {b} is a palette (colour table) band: its values are colour indices, not brightness; "
            f"expand it to RGB first (gdal_translate -expand rgb {path} rgb.tif), or pass --bands {b} "
            "(bands=...) to use the indices as grey anyway"
        )


def check_fill_value(path: str, dtype: str, fill_value: Sequence[float] | None, tolerance: float) -> None:
    """ConfigError when a fill value lies outside what ``dtype`` holds (it would match no pixel)."""
    if fill_value is None or not np.issubdtype(np.dtype(dtype), np.integer):
        return
    info = np.iinfo(np.dtype(dtype))
    for v in fill_value:
        if not (info.min - tolerance <= v <= info.max + tolerance):
            raise ConfigError(
                f"{path}: fill_value {v:g} cannot occur in {dtype} data ({info.min}..{info.max}), so it would mark "
                "nothing invalid; give the value the fill pixels hold (see `geosam info`)"
            )


__all__ = ["check_fill_value", "check_georeferencing", "check_pixel_type"]
