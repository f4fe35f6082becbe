"""``torchvision.ops.roi_align`` in plain torch, and its scoped use by SAM 3's geometry encoder.

SAM 3's box exemplars are pooled from the image features with ``torchvision.ops.roi_align``
(``transformers.models.sam3.modeling_sam3.Sam3GeometryEncoder._encode_boxes``); the CPU
torch wheel geosam installs has no torchvision. `roi_align` is torchvision's CPU kernel
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``) written with torch tensor operations:
the same sampling points (computed in the input dtype, in the kernel's order of operations),
the same bilinear weights and border rules (samples beyond one pixel outside the map are
empty; samples in ``[-1, 0]`` clamp to the edge), the same adaptive grid
(``sampling_ratio <= 0``: ``ceil(roi_size / output_size)`` samples per bin and axis), the
samples of a bin accumulated one after another as the kernel does, then divided by
``max(grid_h * grid_w, 1)``.

`use_for_sam3` hands it to transformers' SAM 3 module only when that module has no
working ``torchvision`` (it sets the module's own ``torchvision`` name to a namespace whose
``ops.roi_align`` is this function; nothing else, and no other module, sees it).
"""

from __future__ import annotations

import itertools
import logging
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

log = logging.getLogger(__name__)


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def as_rois(boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """Boxes as torchvision takes them -> ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in ``dtype``.

    boxes: a ``(K, 5)`` tensor, or a list with one ``(L_i, 4)`` tensor of ``x1, y1, x2, y2`` per image.
    """
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got shape {tuple(boxes.shape)}")
        return boxes.to(dtype)
    parts = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be a Tensor[L, 4], got shape {tuple(b.shape)}")
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not parts:
        return torch.zeros((0, 5), dtype=dtype)
    return torch.cat(parts).to(dtype)


def _axis(start: torch.Tensor, bin_size: torch.Tensor, n_bins: int, grid: int,
          size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample coordinates along one axis, (n_bins, grid): low / high index, low / high weight, in-range flag."""
    dt = start.dtype
    b = torch.arange(n_bins, dtype=dt, device=start.device)[:, None]
    i = torch.arange(grid, dtype=dt, device=start.device)[None, :] + 0.5
    c = (start + b * bin_size) + i * bin_size / torch.tensor(grid, dtype=dt)
    ok = (c >= -1.0) & (c <= size)  # NaN -> not ok, as the kernel's !(in range)
    c = torch.where(ok, c, torch.zeros_like(c)).clamp_min(0)
    low = c.floor().long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    high = torch.where(top, low, low + 1)
    c = torch.where(top, low.to(dt), c)
    lw = c - low.to(dt)
    return low, high, 1.0 - lw, lw, ok


def _one_roi(feat: torch.Tensor, roi: torch.Tensor, out_hw: tuple[int, int], scale: torch.Tensor,
             sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """One ROI over ``feat`` (C, H, W) -> (C, PH, PW), in ``feat``'s dtype."""
    c, h, w = feat.shape
    ph, pw = out_hw
    dt = feat.dtype
    offset = torch.tensor(0.5 if aligned else 0.0, dtype=dt, device=feat.device)
    x1, y1, x2, y2 = (roi[i] * scale - offset for i in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # malformed ROIs forced to 1 x 1
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)
    bh, bw = rh / ph, rw / pw
    gh = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(rh / ph))
    gw = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(rw / pw))
    count = torch.tensor(max(gh * gw, 1), dtype=dt)
    out = feat.new_zeros((c, ph, pw))
    if gh <= 0 or gw <= 0:
        return out
    ylo, yhi, hy, ly, oky = _axis(y1, bh, ph, gh, h)
    xlo, xhi, hx, lx, okx = _axis(x1, bw, pw, gw, w)
    # every sample's bilinear value at once, (C, PH, gh, PW, gw); an empty sample reads pixel 0 with weight 0
    ok = oky[:, :, None, None] & okx[None, None, :, :]
    ys = [torch.where(ok, v[:, :, None, None], 0) * w for v in (ylo, yhi)]
    xs = [torch.where(ok, v[None, None, :, :], 0) for v in (xlo, xhi)]
    flat = feat.reshape(c, h * w)
    val = sum((torch.where(ok, a[:, :, None, None] * b[None, None, :, :], 0) * flat.index_select(1, (y + x).flatten()).view(c, *ok.shape)
               for (a, y), (b, x) in itertools.product(((hy, ys[0]), (ly, ys[1])), ((hx, xs[0]), (lx, xs[1])))),
              start=torch.zeros((), dtype=dt))
    for iy in range(gh):  # accumulated one sample after another, as the kernel does
        for ix in range(gw):
            out += val[:, :, iy, :, ix]
    return out / count


def roi_align(input: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
              output_size: int | tuple[int, int] | list[int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (same arguments, same result) without torchvision.

    input: (N, C, H, W) features. boxes: (K, 5) ``(batch index, x1, y1, x2, y2)`` or a list of
    (L_i, 4) per image, in input pixels before ``spatial_scale``. output_size: (PH, PW) or one int.
    sampling_ratio: samples per bin and axis; <= 0: adaptive, ``ceil(roi_size / output_size)``.
    aligned: shift the box by -0.5 px (pixel centres) and do not force ROIs to at least 1 x 1.
    Returns (K, C, PH, PW) in ``input``'s dtype.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}")
    rois = as_rois(boxes, input.dtype).to(input.device)
    out_hw = _pair(output_size)
    scale = torch.tensor(spatial_scale, dtype=input.dtype, device=input.device)
    if len(rois) == 0:
        return input.new_zeros((0, input.shape[1], *out_hw))
    return torch.stack([_one_roi(input[int(r[0])], r, out_hw, scale, int(sampling_ratio), aligned) for r in rois])


def _has_torchvision_roi_align(module: ModuleType) -> bool:
    tv = getattr(module, "torchvision", None)
    if tv is None:
        return False
    try:
        return callable(tv.ops.roi_align) and hasattr(torch.ops.torchvision, "roi_align")
    except (AttributeError, RuntimeError):
        return False


def use_for_sam3() -> bool:
    """Give transformers' SAM 3 module this `roi_align` when it has no working torchvision.

    Scoped: only ``transformers.models.sam3.modeling_sam3.torchvision`` is set (a namespace whose
    ``ops.roi_align`` is `roi_align`); ``sys.modules`` and every other module are untouched,
    and a working torchvision is left in place. Returns True when the plain-torch version is in use.
    """
    import importlib

    modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")
    tv: Any = getattr(modeling_sam3, "torchvision", None)
    if getattr(tv, "geosam_roi_align", False):
        return True
    if _has_torchvision_roi_align(modeling_sam3):
        return False
    plain = SimpleNamespace(ops=SimpleNamespace(roi_align=roi_align), geosam_roi_align=True)
    modeling_sam3.torchvision = plain  # type: ignore[attr-defined]
    log.debug("SAM 3 geometry encoder: plain-torch roi_align (no working torchvision)")
    return True


__all__ = ["as_rois", "roi_align", "use_for_sam3"]
