"""Open, validate and read scenes in windows.

The whole scene is never read into memory: pixels are read one chip window at a time, and scene-wide
statistics (the percentile stretch) come from a decimated read of at most `overview_max_px` pixels per
side, which GDAL serves from an overview when the file has one. Frames: windows are in scene pixel
coordinates; a `Chip` carries its `ChipSpec` (window, affine transform, CRS) with its pixels.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geosam.config import ReadConfig
from geosam.errors import BandError, ConfigError, GeosamError, InvalidRasterError, NoCRSError
from geosam.read.checks import check_fill_value, check_georeferencing, check_pixel_type
from geosam.read.gdal import (  # noqa: F401 - re-exported: geosam.read.scene is where callers look for them
    GDAL_CACHEMAX_BYTES,
    BadBlock,
    check_blocks,
    dataset_valid,
    gdal_env,
    gdal_message,
    iter_block_windows,
    open_raster,
)
from geosam.read.stretch import stretch_to_uint8, windowed_sample
from geosam.tile.grid import ChipSpec, iter_chip_specs
from geosam.windows import PixelWindow

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

def scene_path(scene: Any) -> str:
    """The path of a scene given as a path, a ``pathlib.Path`` or an open rasterio dataset."""
    if isinstance(scene, (str, os.PathLike)):
        return os.fspath(scene)
    name = getattr(scene, "name", None)
    if isinstance(name, str) and hasattr(scene, "read"):
        return name
    raise InvalidRasterError(
        f"cannot use {type(scene).__name__!r} as a scene: give a file path, an open rasterio dataset "
        "or an xarray DataArray"
    )


@dataclass(frozen=True)
class SceneInfo:
    """What geosam knows about a scene without reading its pixels.

    Attributes:
        path: The raster's path or GDAL URL (a description for a DataArray).
        width: Width (px).
        height: Height (px).
        count: Number of bands, of pixel type `dtype` (numpy name).
        transform: Affine transform, scene pixel -> map coordinates.
        crs_wkt: The CRS as WKT.
        crs_name: A short name of the CRS (e.g. `EPSG:32616`).
        nodata: The nodata value, or None.
        descriptions: Band descriptions (None where unset).
        colorinterp: Colour interpretation per band (`red`, `green`, `gray`, ...).
        res: Pixel size (x, y) in map units.
        bounds: (left, bottom, right, top) in map coordinates.
        is_geographic: Whether the CRS is geographic (degrees).
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    transform: Affine
    crs_wkt: str
    crs_name: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    colorinterp: tuple[str, ...]
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]
    is_geographic: bool

    @classmethod
    def from_dataset(cls, ds: Any) -> SceneInfo:
        path = ds.name
        check_georeferencing(ds)
        if ds.crs is None:
            raise NoCRSError(
                f"{path}: the raster has no CRS, so its objects cannot be placed on a map; "
                "assign one first (e.g. `gdal_edit.py -a_srs EPSG:XXXX`)"
            )
        if ds.transform == Affine.identity():
            raise InvalidRasterError(f"{path}: the raster has no georeferencing (identity geotransform)")
        if ds.transform.b != 0 or ds.transform.d != 0:
            raise InvalidRasterError(
                f"{path}: rotated or sheared geotransforms are not supported; warp the scene to a north-up grid first"
            )
        crs = ds.crs
        name = crs.to_string() if crs.to_epsg() is not None else (crs.to_dict().get("proj", "custom") or "custom")
        return cls(
            path=path,
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=ds.dtypes[0],
            transform=ds.transform,
            crs_wkt=crs.to_wkt(),
            crs_name=str(name),
            nodata=ds.nodata,
            descriptions=tuple(ds.descriptions),
            colorinterp=tuple(ci.name for ci in ds.colorinterp),
            res=ds.res,
            bounds=tuple(ds.bounds),
            is_geographic=bool(crs.is_geographic),
        )


@dataclass
class Chip:
    """Pixels of one chip with the georeferencing they belong to.

    Attributes:
        spec: Window, transform and CRS of the chip.
        image: uint8 (H, W, 3), model-ready, invalid pixels set to 0.
        valid: bool (H, W), False where nodata / masked / fill colour.
        raw: The selected bands' original values (bands, H, W).
        prompt_mask: Optional bool (H, W): where prompts may go (e.g. a vegetation prefilter); None: everywhere valid.
        prompts: Prompt mode: the `Prompt` objects (scene pixel coordinates) this chip must answer.
    """

    spec: ChipSpec
    image: np.ndarray
    valid: np.ndarray
    raw: np.ndarray | None = field(default=None, repr=False)
    prompt_mask: np.ndarray | None = field(default=None, repr=False)
    prompts: tuple[Any, ...] = ()

    def prompt_region(self) -> np.ndarray:
        """Pixels where prompts may go: valid and, if set, inside ``prompt_mask``."""
        return self.valid if self.prompt_mask is None else (self.valid & self.prompt_mask)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def default_bands(info: SceneInfo) -> tuple[int, ...]:
    ci = [c.lower() for c in info.colorinterp]
    if all(c in ci for c in ("red", "green", "blue")):
        return (ci.index("red") + 1, ci.index("green") + 1, ci.index("blue") + 1)
    if info.count >= 3:
        return (1, 2, 3)
    return (1,)


def _check_band_numbers(info: SceneInfo, bands: Sequence[int]) -> tuple[int, ...]:
    """1-based band numbers as ints; BandError naming the file for one that does not exist."""
    bands = tuple(int(b) for b in bands)
    for b in bands:
        if b < 1 or b > info.count:
            raise BandError(f"{info.path}: band {b} does not exist (the raster has bands 1..{info.count})")
    return bands


def _check_bands(info: SceneInfo, bands: Sequence[int]) -> tuple[int, ...]:
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise BandError(f"{info.path}: select 1 or 3 bands for the model image, got {list(bands)}")
    return _check_band_numbers(info, bands)


#: ``Scene(stretch=...)`` default: estimate the stretch from a decimated read
_ESTIMATE = object()


class Scene:
    """An open scene: metadata, read settings and scene-wide stretch.

    Holds one open rasterio dataset; use one `Scene` per thread. GDAL environments are scoped to each
    open and read (see `geosam.read.gdal`), so scenes may be closed in any order.

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray (read
            window by window in place, see `geosam.read.dataarray`: no copy, no temporary file), or a STAC
            item (a ``pystac.Item``, an item JSON path or URL, a `geosam.stac.StacScene`: each chip's window of
            each asset read over HTTP ranges, see `geosam.stac`).
        read: Bands, fill value and stretch settings (`ReadConfig`; default: its defaults).
        stretch: Per-band (low, high) values to reuse (e.g. another handle's
            `Scene.stretch`, or None for none) instead of estimating them again.

    Raises:
        InvalidRasterError: The file cannot be opened or read (the message names it).
    """

    def __init__(self, scene: Any, read: ReadConfig | None = None, *, stretch: Any = _ESTIMATE) -> None:
        from geosam.read.dataarray import DataArrayDataset, describe, is_dataarray
        from geosam.stac import stac_dataset

        stac = stac_dataset(scene)  # a STAC item or StacScene, read window by window (geosam.stac); else None
        dataarray = stac is None and is_dataarray(scene)
        self.path = stac.name if stac is not None else describe(scene) if dataarray else scene_path(scene)
        #: what another handle opens (a reader thread, a Dask worker): the path, the DataArray or the StacScene
        self.source: Any = stac.scene if stac is not None else scene if dataarray else self.path
        self.read_config = read or ReadConfig()
        self.ds: Any = None  # the open rasterio dataset (or DataArrayDataset); None once closed
        try:
            self.ds = stac if stac is not None else DataArrayDataset(scene) if dataarray else \
                open_raster(self.path, remote=self.read_config.remote)
            self.info = self._scene_info()
            rc = self.read_config
            check_pixel_type(self.ds, self.path, rc.bands)
            self.bands = _check_bands(self.info, rc.bands) if rc.bands else default_bands(self.info)
            if rc.fill_value is not None and len(rc.fill_value) not in (1, len(self.bands)):
                raise ConfigError(
                    f"fill_value needs 1 or {len(self.bands)} numbers (one per selected band), got {list(rc.fill_value)}"
                )
            check_fill_value(self.path, self.info.dtype, rc.fill_value, rc.fill_tolerance)
            self.stretch = self._estimate_stretch() if stretch is _ESTIMATE else stretch
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "ds", None) is not None:
            self.ds.close()
            self.ds = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scene_info(self) -> SceneInfo:
        """The dataset's metadata; unreadable metadata (corrupt tags) is an InvalidRasterError."""
        try:
            with gdal_env(self.path, remote=self.read_config.remote):
                return SceneInfo.from_dataset(self.ds)
        except GeosamError:
            raise
        except Exception as exc:  # corrupt tags raise CRSError, ValueError, CPLE_* ...
            raise InvalidRasterError(f"{self.path}: unreadable raster metadata ({gdal_message(exc)})") from exc

    # -- chips -------------------------------------------------------------
    def chip_specs(self, chip_size_px: int, overlap_px: int) -> list[ChipSpec]:
        i = self.info
        return list(iter_chip_specs(self.path, i.width, i.height, i.transform, i.crs_wkt, chip_size_px, overlap_px))

    def _read(
        self, bands: Sequence[int], window: PixelWindow, out_shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bands (bands, H, W) of a window and where the pixel is valid (H, W): GDAL's dataset mask says
        so (see `dataset_valid`: not every band nodata, not masked by a mask or alpha band) and the
        bands' values are finite."""
        from rasterio.enums import Resampling

        kw: dict[str, Any] = {"window": window.to_rasterio()}
        if out_shape is not None:
            kw["out_shape"] = (len(bands), *out_shape)
            kw["resampling"] = Resampling.nearest
        try:
            with gdal_env(self.path, remote=self.read_config.remote):
                data = self.ds.read(list(bands), **kw)
                valid = dataset_valid(self.ds, window, out_shape)
        except Exception as exc:  # rasterio raises several types for corrupt blocks
            raise InvalidRasterError(
                f"{self.path}: cannot read window {window} of bands {list(bands)} ({gdal_message(exc)})"
            ) from exc
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
        return data, valid

    def read_window(self, window: PixelWindow, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read the selected bands of a window and its valid mask (fill value applied).

        Args:
            window: The window in scene pixel coordinates.
            out_shape: (height, width) to resample to (nearest neighbour); None: full resolution.

        Returns:
            The bands (bands, H, W) and the valid mask (H, W, bool).
        """
        data, valid = self._read(self.bands, window, out_shape)
        fv = self.read_config.fill_value
        if fv is not None:
            fill = np.asarray(fv, dtype=np.float64).reshape(-1, 1, 1)
            is_fill = np.all(np.abs(data.astype(np.float64) - fill) <= self.read_config.fill_tolerance, axis=0)
            valid &= ~is_fill
        return data, valid

    def read_chip(self, spec: ChipSpec, timings: dict[str, float] | None = None) -> Chip:
        """The chip's pixels; with ``timings``, seconds of ``read`` and ``stretch`` are added to it."""
        t0 = time.perf_counter()
        data, valid = self.read_window(spec.window)
        t1 = time.perf_counter()
        image = self.to_uint8(data, valid)
        if timings is not None:
            timings["read"] = timings.get("read", 0.0) + t1 - t0
            timings["stretch"] = timings.get("stretch", 0.0) + time.perf_counter() - t1
        return Chip(spec=spec, image=image, valid=valid, raw=data)

    def read_bands(self, bands: Sequence[int], window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """Any 1-based `bands` (bands, H, W) in a window, at full resolution, and their valid mask (H, W).

        Valid: GDAL's dataset mask (see `dataset_valid`) and every listed band finite; the
        model-image `fill_value` does not apply to these bands.
        """
        return self._read(_check_band_numbers(self.info, bands), window)

    # -- radiometry ----------------------------------------------------------
    def _estimate_stretch(self) -> np.ndarray | None:
        """Per-band (low, high) percentiles of a decimated sample (`stretch_sample`); None for uint8."""
        if self.info.dtype == "uint8":
            return None
        samples = self.stretch_sample()
        lo_p, hi_p = self.read_config.stretch_percentiles
        out = np.zeros((len(self.bands), 2), dtype=np.float64)
        for k, vals in enumerate(samples):
            if vals.size == 0:
                log.warning("%s: band %d has no valid pixels in the overview; stretch 0..1", self.path, self.bands[k])
                out[k] = (0.0, 1.0)
                continue
            lo, hi = np.percentile(vals.astype(np.float64), [lo_p, hi_p])
            if hi <= lo:
                hi = lo + 1.0
            out[k] = (lo, hi)
        log.debug("%s: stretch %s", self.path, out.tolist())
        return out

    def stretch_sample(self) -> list[np.ndarray]:
        """Valid values of each selected band in a decimated read (longest side ``overview_max_px``).

        One read of the whole scene (GDAL serves it from an overview when there is one). If that read
        fails (a corrupt block), the scene is sampled window by window instead -- windows of whole
        blocks, each decimated alike -- skipping unreadable windows with a warning that counts them; if
        no window is readable, `InvalidRasterError` names the file.
        """
        i = self.info
        scale = min(1.0, self.read_config.overview_max_px / max(i.width, i.height))
        shape = (max(1, round(i.height * scale)), max(1, round(i.width * scale)))
        try:
            data, valid = self.read_window(PixelWindow(0, 0, i.width, i.height), out_shape=shape)
        except InvalidRasterError as exc:
            log.debug("%s: the decimated read failed (%s); sampling window by window", self.path, exc)
        else:
            return [data[k][valid] for k in range(data.shape[0])]
        return windowed_sample(self, shape[0] / i.height, shape[1] / i.width)

    def to_uint8(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Stretch raw values (bands, H, W) to the model's image (H, W, 3), uint8, with the scene-wide stretch.

        Args:
            data: Raw values (bands, H, W), 1 or 3 bands.
            valid: Valid mask (H, W); invalid pixels become 0.
        """
        return stretch_to_uint8(data, valid, self.stretch)
