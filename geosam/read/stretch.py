"""The scene-wide percentile stretch: a decimated sample of each band, and raw values to the model's uint8 image."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from geosam.errors import InvalidRasterError
from geosam.windows import PixelWindow

log = logging.getLogger(__name__)


def windowed_sample(sc: Any, scale_y: float, scale_x: float, max_windows_per_side: int = 32) -> list[np.ndarray]:
    """`Scene.stretch_sample` window by window, skipping unreadable windows with one warning that counts them.

    Args:
        sc: The open `geosam.read.scene.Scene` (its info, dataset, bands and `read_window`).
        scale_y: Output px per scene px, down.
        scale_x: Output px per scene px, across.
        max_windows_per_side: At most this many windows (of whole blocks) per side.

    Returns:
        The valid values of each selected band.

    Raises:
        InvalidRasterError: No window is readable (the message names the file).
    """
    i = sc.info
    bh, bw = sc.ds.block_shapes[0]
    step_r = bh * max(1, -(-i.height // (bh * max_windows_per_side)))
    step_c = bw * max(1, -(-i.width // (bw * max_windows_per_side)))
    parts: list[list[np.ndarray]] = [[] for _ in sc.bands]
    n_windows, n_failed, first_error = 0, 0, ""
    for r0 in range(0, i.height, step_r):
        for c0 in range(0, i.width, step_c):
            win = PixelWindow(c0, r0, min(step_c, i.width - c0), min(step_r, i.height - r0))
            n_windows += 1
            out_shape = (max(1, round(win.height * scale_y)), max(1, round(win.width * scale_x)))
            try:
                data, valid = sc.read_window(win, out_shape=out_shape)
            except InvalidRasterError as exc:
                n_failed += 1
                first_error = first_error or str(exc)
                continue
            for k in range(data.shape[0]):
                parts[k].append(data[k][valid])
    if n_failed == n_windows:
        raise InvalidRasterError(
            f"{sc.path}: no part of the scene is readable for the stretch sample "
            f"({n_windows} windows failed; first: {first_error})"
        )
    if n_failed:
        log.warning(
            "%s: %d of %d windows of the stretch sample are unreadable and were skipped (first: %s)",
            sc.path, n_failed, n_windows, first_error,
        )
    return [np.concatenate(p) if p else np.zeros(0) for p in parts]


def stretch_to_uint8(data: np.ndarray, valid: np.ndarray, stretch: np.ndarray | None) -> np.ndarray:
    """Raw values (bands, H, W) stretched to the model's image (H, W, 3), uint8.

    Args:
        data: Raw values (bands, H, W), 1 or 3 bands.
        valid: Valid mask (H, W); invalid pixels become 0.
        stretch: Per-band (low, high) values mapped to 0 and 255; None: the values are uint8 already.

    Returns:
        The image; a single band is repeated into three.
    """
    if stretch is None:
        img = data.astype(np.uint8, copy=False)
    else:
        lo = stretch[:, 0].reshape(-1, 1, 1)
        hi = stretch[:, 1].reshape(-1, 1, 1)
        f = (data.astype(np.float32) - lo.astype(np.float32)) / (hi - lo).astype(np.float32)
        f = np.nan_to_num(f, nan=0.0, posinf=1.0, neginf=0.0)
        img = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = np.moveaxis(img, 0, -1)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = np.ascontiguousarray(img)
    img[~valid] = 0
    return img


__all__ = ["stretch_to_uint8", "windowed_sample"]
