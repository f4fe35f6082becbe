"""Chip-resolution mask statistics from SAM's low-resolution logits, without upsampling.

SAM's decoder returns 256 x 256 logits; for a chip of the model's input size
(1024 px) the chip-resolution logits are those upsampled 4x bilinearly
(``align_corners=False``). Every interior pixel of the upsampled grid is a
convex combination of the four corners of one 2 x 2 cell of the low-res
logits, so it lies between the cell's corner minimum and maximum. That gives

* `stability_upper_bound_x4`: a proven upper bound on the chip-resolution
  stability score (used to skip masks that cannot pass the stability filter);
* `upsampled_x4_stats`: the exact pixel counts and boxes, interpolating
  only the cells a threshold crosses (the mask outlines).

Frames: ``low`` is (N, h, w) in low-res pixels; counts and boxes are in the
4x upsampled frame (chip pixels, x = column, y = row, boxes XYXY inclusive).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geosam.models import cpu_masks


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and last True along the last axis (..., L); L and -1 where there is none."""
    n = flags.shape[-1]
    ar = torch.arange(n, device=flags.device)
    return torch.where(flags, ar, n).amin(dim=-1), torch.where(flags, ar, -1).amax(dim=-1)


@functools.cache
def _tables4() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_first_last4`'s bit weights and first / last tables, made at first use: no tensor at import (torch's allocator
    reads its huge-page setting at its first tensor, `geosam.models.cpu_memory.huge_pages_for_tensors`)."""
    return (torch.tensor([1, 2, 4, 8], dtype=torch.int64),
            torch.tensor([4] + [(c & -c).bit_length() - 1 for c in range(1, 16)], dtype=torch.int64),
            torch.tensor([-1] + [c.bit_length() - 1 for c in range(1, 16)], dtype=torch.int64))


def _first_last4(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_first_last` for rows of exactly 4 flags (M, 4), by table lookup (reductions over 4 are slow)."""
    bits, first, last = _tables4()
    code = (flags.to(torch.int64) * bits.to(flags.device)).sum(dim=1)
    return first.to(flags.device)[code], last.to(flags.device)[code]


def _any(flags: torch.Tensor, dim: int) -> torch.Tensor:
    """``flags.any(dim)`` as the byte maximum (bool ``any`` is up to 4x slower over an inner axis, ~70x over the
    last: 16 masks of 1024 x 1024 px, 44 vs 0.6 ms, Intel Xeon, one thread)."""
    return flags.view(torch.uint8).amax(dim=dim) > 0


def _count(flags: torch.Tensor) -> torch.Tensor:
    """True flags per mask (N, ...) -> (N,) int64, summed in int32 (a bool sum in int64 first copies the flags)."""
    return flags.flatten(1).sum(dim=1, dtype=torch.int32).to(torch.int64)


def _check_low(low: torch.Tensor) -> torch.Tensor:
    if low.ndim != 3 or low.shape[1] < 2 or low.shape[2] < 2:
        raise ValueError(f"low-res logits must be (N, h, w) with h, w at least 2 x 2, got {tuple(low.shape)}")
    return low.to(torch.float32)


def _cells(lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corner min and max of every 2 x 2 cell (N, h-1, w-1), and a per-mask rounding margin (N, 1, 1).

    The margin exceeds the float rounding of the interpolation weights, so an
    upsampled pixel of a cell lies in ``[cmin - margin, cmax + margin]``.
    """
    flat = lo.flatten(1)  # max |lo| without an abs copy (amax and amin are each ~8x faster than aminmax here)
    margin = (1e-5 * (1.0 + torch.maximum(flat.amax(dim=1), -flat.amin(dim=1))))[:, None, None]
    # min / max of horizontal neighbours, then of vertical ones (exact: min and max do not round)
    hmin, hmax = torch.minimum(lo[:, :, :-1], lo[:, :, 1:]), torch.maximum(lo[:, :, :-1], lo[:, :, 1:])
    return torch.minimum(hmin[:, :-1], hmin[:, 1:]), torch.maximum(hmax[:, :-1], hmax[:, 1:]), margin


#: Corner minimum and maximum of every 2 x 2 cell (N, h-1, w-1) and a per-mask rounding margin (N, 1, 1).
Cells = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def exact_stats_apply(low: torch.Tensor) -> bool:
    """Whether `upsampled_x4_stats` of ``low`` runs `geosam.models.cpu_masks` (exact and cheaper than any bound)."""
    return low.ndim == 3 and cpu_masks.stats_apply(low, (4 * low.shape[1], 4 * low.shape[2]))


def cell_bounds(low: torch.Tensor) -> Cells:
    """The `Cells` of low-res logits (N, h, w): computed once, they can be passed to both functions below."""
    return _cells(_check_low(low))


def _border_strips(lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The upsampled values of the 2 px border strips, exactly (1-D interpolation of the border lines).

    Returns top (N, 4w) and bottom (N, 4w): each is both rows 0-1 (resp. the last two);
    left and right (N, 4h - 4): both columns 0-1 (resp. the last two), rows 2 .. 4h - 3.
    """
    hh, ww = 4 * lo.shape[1], 4 * lo.shape[2]
    top = F.interpolate(lo[:, None, :1, :], size=(1, ww), mode="bilinear", align_corners=False)[:, 0, 0]
    bottom = F.interpolate(lo[:, None, -1:, :], size=(1, ww), mode="bilinear", align_corners=False)[:, 0, 0]
    left = F.interpolate(lo[:, None, :, :1], size=(hh, 1), mode="bilinear", align_corners=False)[:, 0, 2:-2, 0]
    right = F.interpolate(lo[:, None, :, -1:], size=(hh, 1), mode="bilinear", align_corners=False)[:, 0, 2:-2, 0]
    return top, bottom, left, right


def _strip_count(strips: Sequence[torch.Tensor], t: float) -> torch.Tensor:
    """Upsampled pixels above ``t`` in the border strips (each strip value covers 2 pixels), int64 (N,)."""
    return 2 * sum(((s > t).sum(dim=1) for s in strips), torch.zeros((), dtype=torch.int64))


def stability_upper_bound_x4(
    low: torch.Tensor, mask_threshold: float, threshold_offset: float, cells: Cells | None = None
) -> torch.Tensor:
    """An upper bound (float64, (N,)) on SAM's stability score of ``low`` upsampled 4x.

    The score is ``count(up > t + o) / count(up > t - o)``. Interior pixels of a
    cell lie between its corner min and max (`_cells`), so
    ``count(up > t + o) <= 16 #{cmax > t + o - margin} + strips`` and
    ``count(up > t - o) >= 16 #{cmin > t - o + margin} + strips``, the border
    strips counted exactly. The bound is 1 where the lower count bound is 0
    and some pixel may lie above ``t + o``; 0 where none can (then the score is 0).
    A mask whose bound is below a threshold cannot pass it. ``cells``:
    `cell_bounds` of ``low`` if already computed.
    """
    lo = _check_low(low)
    t_hi = float(mask_threshold) + float(threshold_offset)
    t_lo = float(mask_threshold) - float(threshold_offset)
    cmin, cmax, margin = cells if cells is not None else _cells(lo)
    strips = _border_strips(lo)
    high_ub = 16 * _count(cmax > t_hi - margin) + _strip_count(strips, t_hi)
    low_lb = 16 * _count(cmin > t_lo + margin) + _strip_count(strips, t_lo)
    ratio = high_ub.to(torch.float64) / low_lb.clamp(min=1).to(torch.float64)
    bound = torch.where(low_lb > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))
    return torch.where(high_ub > 0, bound, torch.zeros_like(bound))


def _outline_values(lo: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 16 upsampled values (M, 4 rows, 4 columns) of each ``mixed`` cell, and the cells' (mask, row, column)."""
    ni, ri, ci = mixed.nonzero(as_tuple=True)
    if not ni.numel():
        return lo.new_zeros((0, 4, 4)), ni, ri, ci
    # the kernel's weights for 4x: pixel k of a cell sits at (2k + 1) / 8 between two corners
    l1 = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float32, device=lo.device)
    l0 = 1.0 - l1
    w = lo.shape[2]
    flat = lo.reshape(-1)
    at = (ni * lo.shape[1] + ri) * w + ci  # the cells' top-left corners in the flattened logits
    corners = [flat[at + d][:, None] for d in (0, 1, w, w + 1)]
    top_row = corners[0] * l0 + corners[1] * l1  # (M, 4): columns
    bottom_row = corners[2] * l0 + corners[3] * l1
    # row by row (the same products as broadcasting (M, 1, 4) by (4, 1), ~4x faster)
    vals = torch.stack([top_row * float(l0[r]) + bottom_row * float(l1[r]) for r in range(4)], dim=1)
    return vals, ni, ri, ci


def upsampled_x4_cut_stats(
    low: torch.Tensor, thresholds: Sequence[float], box_threshold: float, valid_bits: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`upsampled_x4_stats` with the boxes of the masks cut to the valid pixels (``valid_bits``:
    `geosam.models.cpu_masks.valid_bits` of the chip-resolution grid): ``(counts, boxes, nonempty)``, the counts
    over every pixel (SAM scores stability before the cut), each box that of the valid pixels of ``up >
    box_threshold`` ((0, 0, 0, 0) where there is none) and whether there is one. None where
    `geosam.models.cpu_masks.upsampled_stats` does not run (then cut upsampled masks)."""
    lo = _check_low(low)
    got = cpu_masks.upsampled_stats(lo, (4 * lo.shape[1], 4 * lo.shape[2]), tuple(thresholds), box_threshold,
                                    valid_bits)
    if got is None:
        return None
    counts, boxes = got
    nonempty = boxes[:, 3] >= 0
    return counts, torch.where(nonempty[:, None], boxes, torch.zeros_like(boxes)), nonempty


def upsampled_x4_stats(
    low: torch.Tensor, thresholds: Sequence[float], box_threshold: float, cells: Cells | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts and boxes of SAM's chip-resolution masks, from the low-res logits alone.

    For ``up`` = ``low`` (N, h, w) upsampled 4x bilinearly with
    ``align_corners=False`` (SAM's 256 px low-res logits -> a 1024 px chip),
    returns ``counts`` (N, T) int64: ``(up > t).sum()`` per mask for each of
    ``thresholds``, and ``boxes`` (N, 4) int64: the XYXY box (inclusive,
    `geosam.segment.sam_utils.batched_mask_to_box`) of ``up > box_threshold``,
    without building ``up``.

    A cell whose corners all lie above every threshold (by a rounding margin)
    has all its 16 pixels above, one whose corners all lie at or below every
    threshold has none; only the other cells (the mask outlines) are
    interpolated, from their four corners with the kernel's weights in the
    kernel's order of operations (values equal ``up``'s up to float rounding,
    ~1 ulp, so a pixel within an ulp of a threshold may count differently; the
    tests find them equal). The 2 px border strips are the 1-D interpolation
    of the border rows / columns. ``cells``: `cell_bounds` of ``low`` if
    already computed. Where `geosam.models.cpu_masks.upsampled_stats` applies
    (float32 on AVX2 CPUs), every pixel is interpolated there instead, torch's
    values bit for bit, without the cells.
    """
    lo = _check_low(low)
    exact = cpu_masks.upsampled_stats(lo, (4 * lo.shape[1], 4 * lo.shape[2]), tuple(thresholds), box_threshold)
    if exact is not None:  # every pixel interpolated as torch does, in one pass (AVX2 CPUs)
        return exact
    n = lo.shape[0]
    t_all = [float(t) for t in thresholds] + [float(box_threshold)]
    cmin, cmax, margin = cells if cells is not None else _cells(lo)
    solid = cmin > max(t_all) + margin  # all 16 pixels above every threshold
    mixed = (cmax > min(t_all) - margin) & ~solid  # the rest is below every threshold
    vals, ni, ri, ci = _outline_values(lo, mixed)
    strips = _border_strips(lo)
    n_solid = _count(solid)
    counts = torch.zeros((n, len(thresholds)), dtype=torch.int64, device=lo.device)
    for k, t in enumerate(thresholds):
        c = n_solid * 16 + _strip_count(strips, float(t))
        if ni.numel():
            # at most 16 per cell: summed as bytes (a bool sum in int64 first copies the flags to int64)
            c.index_add_(0, ni, (vals > t).flatten(1).view(torch.uint8).sum(dim=1, dtype=torch.uint8).to(torch.int64))
        counts[:, k] = c
    return counts, _x4_boxes(lo.shape, solid, vals > float(box_threshold), ni, ri, ci, strips, float(box_threshold))


def _x4_boxes(
    shape: torch.Size,
    solid: torch.Tensor,
    vb: torch.Tensor,
    ni: torch.Tensor,
    ri: torch.Tensor,
    ci: torch.Tensor,
    strips: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tb: float,
) -> torch.Tensor:
    """Boxes (N, 4) of ``up > tb`` from the solid cells, the outline cells' flags ``vb`` and the border strips."""
    n, h, w = shape
    hh, ww = 4 * h, 4 * w
    dev = solid.device
    y0 = torch.full((n,), max(hh, ww), dtype=torch.int64, device=dev)
    x0 = y0.clone()
    y1 = torch.full((n,), -1, dtype=torch.int64, device=dev)
    x1 = y1.clone()

    def extend(lo_: torch.Tensor, hi_: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
               hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(hit, torch.minimum(lo_, first), lo_), torch.where(hit, torch.maximum(hi_, last), hi_)

    # solid cells: whole 4 x 4 blocks at rows 4r + 2 .. 4r + 5, columns 4c + 2 .. 4c + 5
    r_first, r_last = _first_last(_any(solid, 2))
    c_first, c_last = _first_last(_any(solid, 1))
    has = r_last >= 0
    y0, y1 = extend(y0, y1, 4 * r_first + 2, 4 * r_last + 5, has)
    x0, x1 = extend(x0, x1, 4 * c_first + 2, 4 * c_last + 5, has)
    if ni.numel():  # outline cells
        fr, lr_ = _first_last4(_any(vb, 2))
        fc, lc = _first_last4(_any(vb, 1))
        any_cell = lr_ >= 0
        m_i = ni[any_cell]
        y0.scatter_reduce_(0, m_i, (4 * ri + 2 + fr)[any_cell], reduce="amin")
        y1.scatter_reduce_(0, m_i, (4 * ri + 2 + lr_)[any_cell], reduce="amax")
        x0.scatter_reduce_(0, m_i, (4 * ci + 2 + fc)[any_cell], reduce="amin")
        x1.scatter_reduce_(0, m_i, (4 * ci + 2 + lc)[any_cell], reduce="amax")
    # border strips: a band of 2 identical lines; (first, last) hit along the band, its 2 lines across it
    top, bottom, left, right = strips
    for strip, lines, offset, horizontal in (
        (top, (0, 1), 0, True),
        (bottom, (hh - 2, hh - 1), 0, True),
        (left, (0, 1), 2, False),
        (right, (ww - 2, ww - 1), 2, False),
    ):
        first, last = _first_last(strip > tb)
        hit = last >= 0
        across = (torch.full_like(first, lines[0]), torch.full_like(first, lines[1]))
        along = (first + offset, last + offset)
        if horizontal:  # rows `lines`, columns along the strip
            y0, y1 = extend(y0, y1, *across, hit)
            x0, x1 = extend(x0, x1, *along, hit)
        else:  # columns `lines`, rows along the strip (which starts at row 2)
            x0, x1 = extend(x0, x1, *across, hit)
            y0, y1 = extend(y0, y1, *along, hit)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where((y1 < 0)[:, None], torch.zeros_like(boxes), boxes)


__all__ = [
    "Cells", "cell_bounds", "exact_stats_apply", "stability_upper_bound_x4", "upsampled_x4_cut_stats",
    "upsampled_x4_stats"]
