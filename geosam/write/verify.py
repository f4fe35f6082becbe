"""Check a freshly written file before it replaces its target.

GDAL does not always raise when a write fails late: on a full disk (or past a file-size limit)
libtiff prints ``_tiffWriteProc`` / seek errors while the dataset is flushed and closed, and
rasterio returns normally with a truncated file. Renaming that file over an earlier output
would destroy it. `raster_verifier` gives `geosam.write.paths.atomic_output` a check
that reopens the temporary file and reads every block (one block in memory at a time): a
truncated or unreadable file is an `geosam.errors.ExportError` and the target stays as
it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from geosam.errors import ExportError


def raster_verifier(target: str | os.PathLike[str], width: int, height: int, count: int) -> Callable[[Path], None]:
    """A check of a written raster: it opens, has ``width`` x ``height`` px and ``count`` bands, every block reads.

    Raises `ExportError` naming ``target`` (not the temporary file) and GDAL's message.
    """

    def verify(tmp: Path) -> None:
        from geosam.errors import InvalidRasterError
        from geosam.read.gdal import check_blocks, open_raster

        what = f"{os.fspath(target)}: the write failed (disk full or a file-size limit?); the earlier file, if any, is kept"
        try:
            with open_raster(tmp) as ds:
                got = (ds.width, ds.height, ds.count)
            _, bad = check_blocks(tmp, max_bad=1)
        except InvalidRasterError as exc:
            raise ExportError(f"{what} ({str(exc).replace(os.fspath(tmp), 'new file')})") from exc
        if got != (width, height, count):
            raise ExportError(f"{what} (the new file has {got[0]} x {got[1]} px, {got[2]} bands)")
        if bad:
            raise ExportError(f"{what} (the new file is cut short: {bad[0].message.split('; ')[-1][:200]})")

    return verify


__all__ = ["raster_verifier"]
