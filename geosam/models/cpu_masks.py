"""SAM's chip-resolution masks on x86-64 CPUs in one pass: torch's bilinear upsampling and threshold, the same bits.

Segment-everything upsamples each kept mask's 256 x 256 low-res logits 4x to
the 1024 px chip (``F.interpolate(..., mode="bilinear", align_corners=False)``)
and thresholds them: torch writes 4 MiB of float32 per mask, then reads it
again for ``> threshold``. `upsample_gt` computes the same values in the same
order of operations (`cpu_masks.c`: the width pass once per input row, fused
multiply-adds where torch's build fuses them) and writes only the bool
mask. ATen's kernel here is scalar code per output, which its AVX2 and
AVX-512 builds compile alike (both contract the same products into fused
multiply-adds), so the AVX2 kernel reproduces torch's bits under either (an
AMD EPYC Zen 4, where torch runs its AVX-512 kernels: the checks and tests
pass bit for bit). The library is built and cached by `geosam.models.cpu_build` and used
only after it has reproduced torch's upsampled values bit for bit in this
process; elsewhere (other CPUs, other dtypes or devices, scale factors other
than powers of two, outputs of H + W <= 128 px, ``GEOSAM_CPU_KERNELS=0``) torch's ops run: the same masks.
`upsampled_stats` (the stability scores' counts and the boxes) runs its rows 16 columns at a time on AVX-512 CPUs
(`wide_available`, the same counts): Intel Xeon with AMX, one thread, 32 masks to 1024 x 1024, 13.7-15.1 -> 10.2-11.3
ms; with each threshold's counts in 16 integer lanes (a masked add, not a popcount), 48 masks 12.6 -> 8.9 ms.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geosam.models.device import cpu_flags

__all__ = [
    "available", "stats_apply", "upsample_gt", "upsampled", "upsampled_stats", "valid_bits", "wide_available"]

_SOURCE = Path(__file__).with_name("cpu_masks.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _torch_upsample(low: torch.Tensor, full_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(low[:, None], size=full_hw, mode="bilinear", align_corners=False)[:, 0]
    return up[:, : out_hw[0], : out_hw[1]]


def _call(lib: ctypes.CDLL, low: torch.Tensor, full_hw: tuple[int, int], out_hw: tuple[int, int], threshold: float,
          values: bool) -> torch.Tensor:
    n, h, w = low.shape
    out = torch.empty((n, *out_hw), dtype=torch.float32 if values else torch.bool)
    rc = lib.geosam_upsample_gt(
        _P(low.data_ptr()), _I64(n), _I64(h), _I64(w), _I64(full_hw[0]), _I64(full_hw[1]), _I64(out_hw[0]),
        _I64(out_hw[1]), ctypes.c_float(threshold), _P(None if values else out.data_ptr()),
        _P(out.data_ptr() if values else None), _INT(torch.get_num_threads()),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("cpu_masks: out of memory for the upsampling rows")
    return out


def valid_bits(valid: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (H, W) validity mask as the kernel's bits: each row's columns packed 8 a byte, column c bit c % 8."""
    v = valid.cpu().numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
    return np.ascontiguousarray(np.packbits(v.astype(bool), axis=1, bitorder="little"))


def _stats(lib: ctypes.CDLL, low: torch.Tensor, full_hw: tuple[int, int], thresholds: tuple[float, ...],
           box_threshold: float, bits: np.ndarray | None = None, wide: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    n, h, w = low.shape
    counts = torch.empty((n, len(thresholds)), dtype=torch.int64)
    boxes = torch.empty((n, 4), dtype=torch.int64)
    thr = torch.tensor(thresholds, dtype=torch.float32)
    if bits is not None and bits.shape != (full_hw[0], (full_hw[1] + 7) // 8):
        raise ValueError(f"cpu_masks: valid bits of shape {bits.shape} for a {full_hw} grid")
    rc = lib.geosam_upsample_stats(
        _P(low.data_ptr()), _I64(n), _I64(h), _I64(w), _I64(full_hw[0]), _I64(full_hw[1]), _P(thr.data_ptr()),
        _INT(len(thresholds)), ctypes.c_float(box_threshold), _P(counts.data_ptr()), _P(boxes.data_ptr()),
        _P(None if bits is None else bits.ctypes.data), _INT(int(wide)), _INT(torch.get_num_threads()),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("cpu_masks: out of memory for the upsampling rows")
    return counts, boxes


def _torch_stats(up: torch.Tensor, thresholds: tuple[float, ...], box_threshold: float,
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (N, T) of ``up > t`` and XYXY boxes (N, 4) of ``up > box_threshold`` from the upsampled values (of its
    ``valid`` pixels if given: then (-1, -1, -1, -1) where there is none)."""
    counts = torch.stack([(up > t).flatten(1).sum(1) for t in thresholds], dim=1)
    hit = up > box_threshold if valid is None else (up > box_threshold) & valid
    rows, cols = hit.any(2), hit.any(1)
    ar_r, ar_c = torch.arange(rows.shape[1]), torch.arange(cols.shape[1])
    y0 = torch.where(rows, ar_r, rows.shape[1]).amin(1)
    y1 = torch.where(rows, ar_r, -1).amax(1)
    x0 = torch.where(cols, ar_c, cols.shape[1]).amin(1)
    x1 = torch.where(cols, ar_c, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return counts, torch.where((y1 < 0)[:, None], torch.full_like(boxes, 0 if valid is None else -1), boxes)


def _reproduces_torch(lib: ctypes.CDLL) -> bool:
    """Whether the kernel gives torch's upsampled values and masks here (edges, crops, 2x / 4x, wide ranges)."""
    lib.geosam_upsample_gt.restype = ctypes.c_int
    lib.geosam_upsample_stats.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(0)
    for (n, h, w), scale, crop in (((3, 32, 40), 4, (128, 160)), ((2, 16, 40), 4, (61, 37)), ((2, 40, 30), 2, (79, 60))):
        low = torch.randn((n, h, w), generator=gen) * torch.logspace(-3, 2, n)[:, None, None]
        full = (h * scale, w * scale)
        want = _torch_upsample(low, full, crop)
        if not torch.equal(_call(lib, low, full, crop, 0.0, values=True), want):
            return False
        for t in (0.0, float(want.flatten()[7])):
            if not torch.equal(_call(lib, low, full, crop, t, values=False), want > t):
                return False
        thresholds = (0.0, 0.5, float(want.flatten()[11]))
        got = _stats(lib, low, full, thresholds, 0.5)
        ref = _torch_stats(_torch_upsample(low, full, full), thresholds, 0.5)
        if not (torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])):
            return False
        # boxes of the valid pixels only: a random scatter, a band, nothing valid
        for valid in (torch.rand(full, generator=gen) > 0.3, torch.arange(full[1]).expand(full) > full[1] // 3,
                      torch.zeros(full, dtype=torch.bool)):
            got = _stats(lib, low, full, thresholds, 0.5, bits=valid_bits(valid))
            ref = _torch_stats(_torch_upsample(low, full, full), thresholds, 0.5, valid)
            if not (torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])):
                return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    return load(_SOURCE, _reproduces_torch, "upsampling", AVX2_AND_WIDER)  # elementwise: the same at any width


def available() -> bool:
    """Whether the compiled kernel is in use in this process."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def wide_available() -> bool:
    """Whether `upsampled_stats` runs its rows in 16-lane registers: the kernel in use, a CPU with AVX-512, and the
    counts and boxes those of the 8-lane path here (rows of 16 columns and more, with 8-lane and scalar tails)."""
    lib = _library()
    if lib is None or "avx512f" not in cpu_flags():
        return False
    gen = torch.Generator().manual_seed(1)
    for (n, h, w), scale in (((3, 32, 40), 4), ((2, 20, 33), 4), ((2, 64, 64), 2)):
        low = torch.randn((n, h, w), generator=gen) * torch.logspace(-2, 1, n)[:, None, None]
        args = (lib, low, (h * scale, w * scale), (0.0, 0.3, -0.2), 0.1)
        bits = valid_bits(torch.rand((h * scale, w * scale), generator=gen) > 0.5)
        for b in (None, bits):
            if not all(torch.equal(x, y) for x, y in zip(_stats(*args, bits=b), _stats(*args, wide=True, bits=b), strict=True)):
                return False
    return True


def _power_of_two_up(n_in: int, n_out: int) -> bool:
    k, r = divmod(n_out, n_in)
    return r == 0 and k >= 2 and k & (k - 1) == 0


def _usable(low: torch.Tensor, full_hw: tuple[int, int], out_hw: tuple[int, int]) -> ctypes.CDLL | None:
    if not (low.device.type == "cpu" and low.dtype == torch.float32 and low.dim() == 3 and low.shape[0] > 0):
        return None
    h, w = low.shape[1:]
    if not (_power_of_two_up(h, full_hw[0]) and _power_of_two_up(w, full_hw[1])):
        return None  # ATen's source positions are exact only for these: elsewhere its rounding is not modelled
    if not (0 < out_hw[0] <= full_hw[0] and 0 < out_hw[1] <= full_hw[1]) or sum(full_hw) <= 128:
        return None  # ATen upsamples outputs of H + W <= 128 with another kernel (another order)
    return _library()


def stats_apply(low: torch.Tensor, full_hw: tuple[int, int]) -> bool:
    """Whether `upsampled_stats` computes ``low``'s statistics here (else it returns None)."""
    return _usable(low, full_hw, full_hw) is not None


def upsampled(low: torch.Tensor, full_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(low[:, None], full_hw, "bilinear")[:, 0, :out_h, :out_w]`` (float32, the same bits)."""
    lib = _usable(low, full_hw, out_hw)
    if lib is None:
        return _torch_upsample(low, full_hw, out_hw)
    return _call(lib, low.contiguous(), full_hw, out_hw, 0.0, values=True)


def upsample_gt(low: torch.Tensor, full_hw: tuple[int, int], out_hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """``upsampled(low, full_hw, out_hw) > threshold`` (N, out_h, out_w) bool, without the float values."""
    lib = _usable(low, full_hw, out_hw)
    if lib is None:
        return _torch_upsample(low, full_hw, out_hw) > threshold
    return _call(lib, low.contiguous(), full_hw, out_hw, float(threshold), values=False)


def upsampled_stats(
    low: torch.Tensor, full_hw: tuple[int, int], thresholds: tuple[float, ...], box_threshold: float,
    valid: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Of ``up = upsampled(low, full_hw, full_hw)``: ``counts`` (N, T) int64, ``(up > t).sum()`` per mask for each
    of ``thresholds`` (at most 8), and ``boxes`` (N, 4) int64, the inclusive XYXY box of ``up > box_threshold``
    ((0, 0, 0, 0) if empty), in one pass without storing ``up``. ``valid``: the grid's valid pixels as `valid_bits`;
    then the boxes are those of ``(up > box_threshold) & valid``, (-1, -1, -1, -1) where that is empty (the counts
    stay over every pixel). None where the kernel does not apply (then compute them from torch's ``up``)."""
    lib = _usable(low, full_hw, full_hw) if 1 <= len(thresholds) <= 8 else None
    if lib is None:
        return None
    return _stats(lib, low.contiguous(), full_hw, tuple(float(t) for t in thresholds), float(box_threshold), valid,
                  wide_available())
