"""geosam's plain-torch roi_align against a scalar port of torchvision's CPU kernel, and its scoped use by SAM 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geosam.models.roi_align import as_rois, roi_align


def _kernel(feat: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float, sampling_ratio: int,
            aligned: bool) -> np.ndarray:
    """torchvision/csrc/ops/cpu/roi_align_kernel.cpp (+ roi_align_common.h), one scalar at a time, in float32."""
    f = np.float32
    _, c, h, w = feat.shape
    out = np.zeros((len(rois), c, ph, pw), np.float32)
    for n, r in enumerate(rois):
        b = int(r[0])
        off = f(0.5) if aligned else f(0.0)
        sw, sh = f(r[1]) * f(scale) - off, f(r[2]) * f(scale) - off
        ew, eh = f(r[3]) * f(scale) - off, f(r[4]) * f(scale) - off
        rw, rh = f(ew - sw), f(eh - sh)
        if not aligned:
            rw, rh = max(rw, f(1.0)), max(rh, f(1.0))
        bh, bw = f(rh / f(ph)), f(rw / f(pw))
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(f(rh / f(ph)))
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(f(rw / f(pw)))
        count = f(max(gh * gw, 1))
        for yb in range(ph):
            for xb in range(pw):
                acc = np.zeros(c, np.float32)
                for iy in range(gh):
                    y = f(f(sh + f(yb) * bh) + f(f(f(iy + 0.5) * bh) / f(gh)))
                    for ix in range(gw):
                        x = f(f(sw + f(xb) * bw) + f(f(f(ix + 0.5) * bw) / f(gw)))
                        if not (-1.0 <= y <= h and -1.0 <= x <= w):
                            continue
                        yy, xx = max(y, f(0)), max(x, f(0))
                        yl, xl = int(yy), int(xx)
                        if yl >= h - 1:
                            yh = yl = h - 1
                            yy = f(yl)
                        else:
                            yh = yl + 1
                        if xl >= w - 1:
                            xh = xl = w - 1
                            xx = f(xl)
                        else:
                            xh = xl + 1
                        ly, lx = f(yy - f(yl)), f(xx - f(xl))
                        hy, hx = f(f(1.0) - ly), f(f(1.0) - lx)
                        v = feat[b, :, :, :]
                        acc = acc + (f(hy * hx) * v[:, yl, xl] + f(hy * lx) * v[:, yl, xh]
                                     + f(ly * hx) * v[:, yh, xl] + f(ly * lx) * v[:, yh, xh])
                out[n, :, yb, xb] = acc / count
    return out


def _random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(2, 3, 9, 11, generator=g)
    k = 12
    xy = torch.rand(k, 2, generator=g) * 16 - 4  # boxes partly (or wholly) outside the 11 x 9 map
    wh = torch.rand(k, 2, generator=g) * 10
    wh[:2] = 0.3  # smaller than one pixel
    wh[2] = -1.0  # malformed (x2 < x1)
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy, xy + wh], dim=1)
    return feat, rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3])
def test_matches_the_kernel(aligned: bool, sampling_ratio: int, scale: float) -> None:
    feat, rois = _random_case(int(aligned) * 100 + sampling_ratio * 10 + int(scale * 10))
    for out_size in ((7, 7), (3, 5)):
        mine = roi_align(feat, rois, out_size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
        ref = _kernel(feat.numpy(), rois.numpy(), *out_size, scale, sampling_ratio, aligned)
        assert mine.shape == (len(rois), 3, *out_size)
        np.testing.assert_allclose(mine.numpy(), ref, rtol=0, atol=0)


def test_box_list_and_tensor_forms_agree() -> None:
    feat, rois = _random_case(5)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = as_rois(per_image, torch.float32)
    assert torch.equal(roi_align(feat, per_image, 4), roi_align(feat, ordered, (4, 4)))
    assert roi_align(feat, [torch.zeros(0, 4), torch.zeros(0, 4)], 7).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        roi_align(feat, rois[:, 1:], 7)


def test_float64_and_whole_map_mean() -> None:
    """A box over the whole map with one sample per pixel centre is the exact mean of each bin."""
    feat = torch.arange(2 * 8 * 8, dtype=torch.float64).reshape(1, 2, 8, 8)
    out = roi_align(feat, torch.tensor([[0, 0, 0, 8, 8]], dtype=torch.float64), 4, aligned=True)
    expect = feat.reshape(1, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out, expect)


def test_sam3_module_gets_it_only_without_torchvision() -> None:
    import importlib

    from geosam.models.roi_align import use_for_sam3

    modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")
    had = getattr(modeling_sam3, "torchvision", None)
    try:
        in_use = use_for_sam3()
        tv = modeling_sam3.torchvision
        try:
            import torchvision  # noqa: F401

            has_tv = hasattr(torch.ops.torchvision, "roi_align")
        except Exception:  # noqa: BLE001 - missing or broken torchvision
            has_tv = False
        assert in_use is not has_tv
        if in_use:
            assert tv.ops.roi_align is roi_align
            import sys

            assert sys.modules.get("torchvision") is not tv
    finally:
        if had is None and hasattr(modeling_sam3, "torchvision"):
            del modeling_sam3.torchvision
