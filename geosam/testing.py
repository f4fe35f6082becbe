"""Test helpers: an *oracle* mask generator that reads masks from a label raster.

`OracleMaskGenerator` implements `geosam.segment.base.MaskGenerator`
with perfect answers: for a chip it returns the objects of a known
instance-label GeoTIFF inside the chip window. With it, tiling, stitching and
export can be tested exactly, independent of model quality, and streaming
benchmarks can run without a model. `PromptedOracleMaskGenerator` answers
only SAM's grid prompts inside ``chip.prompt_region()``, to test prompt
prefilters exactly. `NoisyOracleMaskGenerator` perturbs the oracle's masks
independently per chip and per object (`perturb_masks`), the way a real
model disagrees with itself across chip seams, to test the stitcher's tolerance.

Frames: the label raster must be on the scene's pixel grid (same size,
transform and CRS); chip windows are in scene pixel coordinates, masks in the
chip's pixel frame.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geosam.errors import ConfigError, InvalidRasterError
from geosam.segment.base import BaseMaskGenerator, ChipMasks, GeneratorCapabilities

if TYPE_CHECKING:
    from geosam.read.scene import Chip
    from geosam.tile.grid import ChipSpec

log = logging.getLogger(__name__)

#: Relative tolerance when comparing the label raster's transform with a chip's.
TRANSFORM_RTOL = 1e-9


def _open(path: str) -> Any:  # rasterio.DatasetReader
    from geosam.read.scene import gdal_env, open_raster

    with gdal_env():
        return open_raster(path)


def _transforms_match(a: Affine, b: Affine, rtol: float = TRANSFORM_RTOL) -> bool:
    """Coefficient-wise equality within ``rtol`` (relative to the coefficient, or the pixel size for zeros)."""
    scale = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d))
    return all(math.isclose(x, y, rel_tol=rtol, abs_tol=rtol * scale) for x, y in zip(a[:6], b[:6]))


class OracleMaskGenerator(BaseMaskGenerator):
    """Masks straight from an instance-label GeoTIFF (0 = background, k > 0 = object k).

    `generate(chip)` reads only `chip.spec.window` of the label raster and returns one
    bool mask per label present in it, sorted by label, with `predicted_iou` and
    `stability_score` of 1.0. Values <= 0 are background; `chip.valid` is ignored (the
    oracle knows the truth). The labels of the last call are in `last_labels`;
    `generate_with_labels` returns them with the masks.

    Picklable and cheap to ship to Dask workers: the pickled state is the path and grid
    metadata; each process and thread opens its own dataset handle lazily on first use.

    Args:
        label_raster_path: A single-band integer GeoTIFF on the scene's grid.

    Raises:
        InvalidRasterError: At construction, if the label raster cannot be opened, has
            more than one band or a non-integer type.
        ConfigError: In `generate`, if its grid differs from the chip's scene.
    """

    name = "oracle"

    def __init__(self, label_raster_path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.label_path = os.fspath(label_raster_path)
        ds = _open(self.label_path)
        try:
            if ds.count != 1:
                raise InvalidRasterError(
                    f"{self.label_path}: an oracle label raster needs exactly 1 band, it has {ds.count}"
                )
            dtype = np.dtype(ds.dtypes[0])
            if not np.issubdtype(dtype, np.integer):
                raise InvalidRasterError(
                    f"{self.label_path}: an oracle label raster needs an integer data type "
                    f"(0 = background, k > 0 = object k), it has {dtype.name}"
                )
            self.width: int = ds.width
            self.height: int = ds.height
            self.transform: Affine = ds.transform
            self.crs_wkt: str | None = ds.crs.to_wkt() if ds.crs is not None else None
            self.dtype: str = dtype.name
        finally:
            ds.close()
        self.last_labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self._init_runtime()

    # -- process / thread local state --------------------------------------
    def _init_runtime(self) -> None:
        self._local = threading.local()
        self._crs_ok: dict[str, bool] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        state.pop("_crs_ok", None)
        state["last_labels"] = np.zeros(0, dtype=np.int64)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _dataset(self):  # -> rasterio.DatasetReader
        """This thread's open handle, reopened after a fork."""
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed or getattr(self._local, "pid", None) != os.getpid():
            self._local.ds = _open(self.label_path)
            self._local.pid = os.getpid()
        return self._local.ds

    def close(self) -> None:
        """Close this thread's dataset handle (it is reopened on the next call)."""
        ds = getattr(self._local, "ds", None)
        if ds is not None and getattr(self._local, "pid", None) == os.getpid():
            ds.close()
        self._local.ds = None

    def __repr__(self) -> str:
        return f"OracleMaskGenerator({self.label_path!r})"

    # -- checks ----------------------------------------------------------------
    def check_grid(self, spec: ChipSpec) -> None:
        """Raise `ConfigError` unless the label raster is on ``spec``'s scene grid."""
        w = spec.window
        expected = spec.transform
        ours = self.transform @ Affine.translation(w.col_off, w.row_off)
        problems = []
        if (self.width, self.height) != (spec.scene_width, spec.scene_height):
            problems.append(
                f"size {self.width} x {self.height} px vs. {spec.scene_width} x {spec.scene_height} px"
            )
        if not _transforms_match(ours, expected):
            scene_t = expected @ Affine.translation(-w.col_off, -w.row_off)
            problems.append(f"transform {tuple(self.transform)[:6]} vs. {tuple(scene_t)[:6]}")
        if self.crs_wkt is not None and spec.crs_wkt and not self._same_crs(spec.crs_wkt):
            problems.append("different CRS")
        if problems:
            raise ConfigError(
                f"oracle label raster {self.label_path} is not on the grid of scene {spec.path}: "
                + "; ".join(problems)
                + ". Give a label raster with the scene's size, transform and CRS."
            )

    def _same_crs(self, crs_wkt: str) -> bool:
        ok = self._crs_ok.get(crs_wkt)
        if ok is None:
            from rasterio.crs import CRS

            ok = crs_wkt == self.crs_wkt or CRS.from_wkt(crs_wkt) == CRS.from_wkt(self.crs_wkt or "")
            self._crs_ok[crs_wkt] = ok
        return ok

    # -- the generator -----------------------------------------------------------
    def read_labels(self, spec: ChipSpec) -> np.ndarray:
        """The label raster inside ``spec.window`` (H, W), in its own integer type."""
        from geosam.read.scene import gdal_env

        self.check_grid(spec)
        try:
            with gdal_env():  # geosam's bounded GDAL block cache
                return self._dataset().read(1, window=spec.window.to_rasterio())
        except Exception as exc:  # rasterio raises several types for corrupt blocks
            raise InvalidRasterError(f"{self.label_path}: cannot read window {spec.window} ({exc})") from exc

    def generate_with_labels(self, chip: Chip) -> tuple[ChipMasks, np.ndarray]:
        """Masks of the objects in ``chip`` and their labels (int64, ascending)."""
        lab = self.read_labels(chip.spec)
        h, w = lab.shape
        flat = lab.ravel()
        fg = np.flatnonzero(flat > 0)
        labels, index = np.unique(flat[fg], return_inverse=True)
        labels = labels.astype(np.int64)
        self.last_labels = labels
        if labels.size == 0:
            return ChipMasks.empty(h, w), labels
        # one pass over the foreground pixels instead of one comparison per label
        masks = np.zeros((labels.size, h * w), dtype=bool)
        masks[index.ravel(), fg] = True
        masks = masks.reshape(labels.size, h, w)
        ones = np.ones(labels.size, dtype=np.float32)
        return ChipMasks(masks, ones, ones.copy()), labels

    def generate(self, chip: Chip) -> ChipMasks:
        """Masks of the objects in ``chip``, sorted by label (see `last_labels`)."""
        return self.generate_with_labels(chip)[0]


class PromptedOracleMaskGenerator(OracleMaskGenerator):
    """An oracle that, like SAM segment-everything, only answers its point prompts.

    The chip gets SAM's point grid (``points_per_side`` squared points, the same
    pixels as `geosam.segment.sam_utils.build_point_grid`); points outside
    ``chip.prompt_region()`` (invalid pixels, or outside a prefilter's
    ``prompt_mask``) are not "decoded". Every other point returns the whole
    object (inside the chip window) of the label under it; points on
    background return nothing; several points on one object give one mask.

    Counters: `prompts_received` (points decoded, all calls),
    `chips_called`, and `last_stats` per call (`points_total`,
    `points_decoded`, `masks_kept`), as `geosam.segment.SamMaskGenerator`.

    Args:
        label_raster_path: A single-band integer GeoTIFF on the scene's grid.
        points_per_side: Side of the point grid (SAM's `points_per_side`).

    Raises:
        ConfigError: `points_per_side` is not a whole number >= 1.
    """

    name = "prompted-oracle"

    def __init__(self, label_raster_path: str | os.PathLike[str], points_per_side: int = 32) -> None:
        if int(points_per_side) != points_per_side or points_per_side < 1:
            raise ConfigError(f"points_per_side must be an integer >= 1, got {points_per_side}")
        super().__init__(label_raster_path)
        self.points_per_side = int(points_per_side)
        self.capabilities = GeneratorCapabilities(points_per_side=self.points_per_side)
        self.prompts_received = 0
        self.chips_called = 0
        self.last_stats: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"PromptedOracleMaskGenerator({self.label_path!r}, points_per_side={self.points_per_side})"

    def generate_with_labels(self, chip: Chip) -> tuple[ChipMasks, np.ndarray]:
        from geosam.index.prefilter import grid_pixels

        lab = self.read_labels(chip.spec)
        h, w = lab.shape
        rows, cols = grid_pixels(h, w, self.points_per_side)
        on = np.asarray(chip.prompt_region(), dtype=bool)[rows, cols]
        hit = lab[rows[on], cols[on]]
        labels = np.unique(hit[hit > 0]).astype(np.int64)
        self.chips_called += 1
        self.prompts_received += int(on.sum())
        self.last_stats = {"points_total": int(rows.size), "points_decoded": int(on.sum()), "masks_kept": int(labels.size)}
        self.last_labels = labels
        if labels.size == 0:
            return ChipMasks.empty(h, w), labels
        masks = lab[None, :, :] == labels.astype(lab.dtype)[:, None, None]
        ones = np.ones(labels.size, dtype=np.float32)
        return ChipMasks(masks, ones, ones.copy()), labels


def _disk(radius_px: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px**2


def _grow_or_shrink(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` dilated (r > 0) or eroded (r < 0) by a disc of radius ``|r|`` px.

    The chip's edges do not erode: the object is taken to continue beyond them (edge pixels are replicated).
    """
    from scipy import ndimage

    if r == 0 or not mask.any():
        return mask
    k = abs(r)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(rows[0] - k, 0), min(rows[-1] + 1 + k, mask.shape[0])
    c0, c1 = max(cols[0] - k, 0), min(cols[-1] + 1 + k, mask.shape[1])
    sub = np.pad(mask[r0:r1, c0:c1], k, mode="edge")
    op = ndimage.binary_dilation if r > 0 else ndimage.binary_erosion
    out = np.zeros_like(mask)
    out[r0:r1, c0:c1] = op(sub, structure=_disk(k))[k:-k, k:-k]
    return out


def perturb_masks(
    masks: np.ndarray,
    rng: np.random.Generator,
    radius_px: int = 2,
    shift_px: int = 0,
    edge_cut_px: int = 0,
    cut_edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
    disjoint: bool = True,
) -> np.ndarray:
    """Per-object noise on one chip's masks (N, H, W), like a model's chip-to-chip disagreement.

    Each mask is moved out (dilation) or in (erosion) by a whole number of pixels drawn uniformly from
    ``[-radius_px, radius_px]``, then shifted by up to ``shift_px`` pixels along each axis (both drawn per object).
    With ``edge_cut_px``, each chip side flagged in ``cut_edges`` (left, top, right, bottom; sides inside the
    scene) loses the mask pixels within a depth drawn from ``[0, edge_cut_px]`` of it: a mask that stops short
    of the chip edge. With ``disjoint``, a pixel claimed by several masks stays only with the mask that had it
    before the noise (else the first), so the chip's masks do not overlap, as after SAM's box NMS.

    Returns:
        The perturbed masks (bool, same shape); a mask may come out empty.
    """
    from scipy import ndimage

    n, h, w = masks.shape
    out = np.zeros_like(masks, dtype=bool)
    for i in range(n):
        m = _grow_or_shrink(masks[i], int(rng.integers(-radius_px, radius_px + 1)))
        if shift_px:
            dy, dx = (int(v) for v in rng.integers(-shift_px, shift_px + 1, size=2))
            m = ndimage.shift(m, (dy, dx), order=0, mode="nearest")
        out[i] = m
    if edge_cut_px:
        depth = rng.integers(0, edge_cut_px + 1, size=4)
        left, top, right, bottom = (int(d) if cut else 0 for d, cut in zip(depth, cut_edges))
        out[:, :, :left] = False
        out[:, :top, :] = False
        out[:, :, w - right :] = False
        out[:, h - bottom :, :] = False
    if disjoint and n > 1:
        many = out.sum(axis=0) > 1
        if many.any():
            claim = out[:, many]
            first_orig = np.argmax(claim & masks[:, many], axis=0)
            has_orig = (claim & masks[:, many]).any(axis=0)
            winner = np.where(has_orig, first_orig, np.argmax(claim, axis=0))
            out[:, many] = claim & (np.arange(n)[:, None] == winner[None, :])
    return out


class NoisyOracleMaskGenerator(OracleMaskGenerator):
    """The oracle's masks with per-chip, per-object noise (`perturb_masks`).

    Neighbouring chips see each object with outlines that differ by a few pixels, as a real model does, so the
    stitcher's seam matching can be tested against known objects. The noise is a pure function of ``seed`` and the
    chip's (row, col): the same whatever order or process chips run in.

    Args:
        label_raster_path: instance-label GeoTIFF on the scene's grid (see `OracleMaskGenerator`).
        radius_px: masks move out or in by up to this many pixels.
        shift_px: masks shift by up to this many pixels along each axis.
        edge_cut_px: masks stop short of a chip side inside the scene by up to this many pixels.
        disjoint: a chip's masks do not overlap.
        seed: noise seed.
    """

    name = "noisy-oracle"

    def __init__(self, label_raster_path: str | os.PathLike[str], radius_px: int = 2, shift_px: int = 0,
                 edge_cut_px: int = 0, disjoint: bool = True, seed: int = 0) -> None:
        if min(radius_px, shift_px, edge_cut_px) < 0:
            raise ConfigError(f"noise sizes must be >= 0 px, got radius_px={radius_px}, shift_px={shift_px}, "
                              f"edge_cut_px={edge_cut_px}")
        super().__init__(label_raster_path)
        self.radius_px, self.shift_px, self.edge_cut_px = int(radius_px), int(shift_px), int(edge_cut_px)
        self.disjoint, self.seed = bool(disjoint), int(seed)

    def __repr__(self) -> str:
        return (f"NoisyOracleMaskGenerator({self.label_path!r}, radius_px={self.radius_px}, shift_px={self.shift_px}, "
                f"edge_cut_px={self.edge_cut_px}, seed={self.seed})")

    def generate_with_labels(self, chip: Chip) -> tuple[ChipMasks, np.ndarray]:
        masks, labels = super().generate_with_labels(chip)
        if labels.size == 0:
            return masks, labels
        rng = np.random.default_rng([self.seed, chip.spec.row, chip.spec.col])
        noisy = perturb_masks(masks.masks, rng, self.radius_px, self.shift_px, self.edge_cut_px,
                              chip.spec.edges_inside_scene(), self.disjoint)
        return ChipMasks(noisy, masks.predicted_iou, masks.stability_score), labels


__all__ = ["TRANSFORM_RTOL", "NoisyOracleMaskGenerator", "OracleMaskGenerator", "PromptedOracleMaskGenerator", "perturb_masks"]
