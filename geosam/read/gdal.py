"""GDAL access: scoped environments, opening, error messages and a block-by-block check.

Every GDAL operation runs inside its own ``with gdal_env(path):`` (rasterio's
``Env`` is a per-thread stack, so an environment held for an object's life
breaks when two objects close out of order). Sidecar files -- external masks
(``.msk``), ``.aux.xml`` metadata (nodata, scale, offset, band descriptions)
and external overviews (``.ovr``) -- are read as plain rasterio reads them.
``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``, which saves a directory listing per
open on remote storage but hides every sidecar, is used only for remote paths
(``/vsicurl/``, ``/vsis3/``, URLs) or when asked for (``remote=True``).

Frames: windows are in the raster's pixel coordinates (column, row of the
upper-left pixel, width, height).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosam.errors import InvalidRasterError
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    import rasterio
    import rasterio.io

#: GDAL block cache used while geosam reads (bytes); bounded so that streaming stays small.
GDAL_CACHEMAX_BYTES = 256 * 1024 * 1024

#: GDAL virtual file systems of remote storage: paths on them skip the directory listing on open.
REMOTE_PREFIXES = (
    "/vsicurl",
    "/vsis3",
    "/vsigs",
    "/vsiaz",
    "/vsiadls",
    "/vsioss",
    "/vsiswift",
    "/vsihdfs",
    "/vsiwebhdfs",
)

#: rasterio's wrapper messages that only point at the exception they chain.
_GENERIC_MESSAGES = ("see previous exception", "read or write failed")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on remote storage (a URL or a remote GDAL virtual file system)."""
    p = os.fspath(path)
    return "://" in p or any(prefix in p for prefix in REMOTE_PREFIXES)


def gdal_env(path: str | os.PathLike[str] | None = None, *, remote: bool | None = None) -> rasterio.Env:
    """A ``rasterio.Env`` for one operation on ``path``: bounded block cache, sidecars read.

    remote: True skips the directory listing on open (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``,
        sidecar files are then ignored); None decides by `is_remote` (False without a path).
    Use it as ``with gdal_env(path): ...`` around the open and the reads, never across an object's life.
    """
    import rasterio

    options: dict[str, Any] = {"GDAL_CACHEMAX": GDAL_CACHEMAX_BYTES}
    if remote if remote is not None else (path is not None and is_remote(path)):
        options["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    return rasterio.Env(**options)


def gdal_message(exc: BaseException) -> str:
    """The underlying GDAL message(s) of a rasterio error, not rasterio's "See previous exception".

    rasterio chains GDAL's own error (``CPLE_*``) as ``__cause__`` or ``__context__``
    of a generic ``RasterioIOError``; the distinct messages of the chain are joined
    with "; ", generic ones dropped unless nothing else is left.
    """
    messages: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = " ".join(str(e).split())
        if text and text not in messages:
            messages.append(text)
        e = e.__cause__ or e.__context__
    specific = [m for m in messages if not any(g in m.lower() for g in _GENERIC_MESSAGES)]
    return "; ".join(specific or messages) or type(exc).__name__


def open_raster(path: str | os.PathLike[str], *, remote: bool | None = None) -> rasterio.io.DatasetReader:
    """Open a GDAL raster in its own scoped environment; failures become `InvalidRasterError`.

    remote: see `gdal_env`. The returned dataset is used (and closed) outside
    any environment; wrap reads in ``with gdal_env(path):`` for the bounded cache.
    """
    import rasterio

    p = os.fspath(path)
    if not is_remote(p) and not p.startswith("/vsi") and not Path(p).exists():
        raise InvalidRasterError(f"{p}: no such file")
    if not is_remote(p) and Path(p).is_dir():
        raise InvalidRasterError(f"{p}: is a folder, not a raster file")
    try:
        with gdal_env(p, remote=remote):
            return rasterio.open(p)
    except Exception as exc:  # GDAL raises RasterioIOError, CPLE_* and others for bad files
        raise InvalidRasterError(f"{p}: not a raster GDAL can read ({gdal_message(exc)})") from exc


def dataset_valid(ds: Any, window: PixelWindow, out_shape: tuple[int, int] | None = None) -> Any:
    """Where GDAL's dataset mask says a pixel of ``window`` is valid: bool (H, W).

    A pixel is invalid where the dataset's mask band or alpha band masks it, or, with a nodata
    value, where *every* band equals it (``GDALGetMaskBand`` of the dataset). One band equal to
    the nodata value does not make the pixel invalid (its 0 may be a real 0 of that band).
    ``out_shape``: a decimated read (nearest). Works on rasterio datasets and on
    `geosam.read.dataarray.DataArrayDataset`.
    """
    from rasterio.enums import Resampling

    kw: dict[str, Any] = {"window": window.to_rasterio()}
    if out_shape is not None:
        kw["out_shape"] = tuple(out_shape)
        kw["resampling"] = Resampling.nearest
    return ds.dataset_mask(**kw) != 0


# ----------------------------------------------------------------------------
# block-by-block check


@dataclass(frozen=True)
class BadBlock:
    """A block GDAL cannot read: its window (raster pixels) and GDAL's message."""

    window: PixelWindow
    message: str

    def __str__(self) -> str:
        w = self.window
        return f"block at col {w.col_off}, row {w.row_off} ({w.width} x {w.height} px): {self.message}"


def iter_block_windows(ds: Any) -> Iterator[PixelWindow]:
    """The internal blocks (tiles or strips) of band 1 of an open dataset, row by row."""
    bh, bw = ds.block_shapes[0]
    for r0 in range(0, ds.height, bh):
        for c0 in range(0, ds.width, bw):
            yield PixelWindow(c0, r0, min(bw, ds.width - c0), min(bh, ds.height - r0))


def check_blocks(
    path: str | os.PathLike[str], *, remote: bool | None = None, max_bad: int | None = None
) -> tuple[int, list[BadBlock]]:
    """Read every block of every band (and its mask) of ``path``; return (blocks read, unreadable blocks).

    One window per internal block of band 1 (all bands at once), so memory stays
    at one block. ``max_bad``: stop after that many unreadable blocks (None: all).
    Raises `InvalidRasterError` if the file cannot be opened at all.
    """
    p = os.fspath(path)
    bad: list[BadBlock] = []
    n = 0
    with open_raster(p, remote=remote) as ds:
        for win in iter_block_windows(ds):
            n += 1
            try:
                with gdal_env(p, remote=remote):
                    ds.read(window=win.to_rasterio())
                    ds.read_masks(window=win.to_rasterio())
            except Exception as exc:  # noqa: BLE001 - corrupt blocks raise several rasterio/GDAL types
                bad.append(BadBlock(win, gdal_message(exc)))
                if max_bad is not None and len(bad) >= max_bad:
                    break
    return n, bad


__all__ = [
    "GDAL_CACHEMAX_BYTES",
    "REMOTE_PREFIXES",
    "BadBlock",
    "check_blocks",
    "dataset_valid",
    "gdal_env",
    "gdal_message",
    "is_remote",
    "iter_block_windows",
    "open_raster",
]
