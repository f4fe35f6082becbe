"""geosam.models.cpu_gemm.linear: F.linear's result (to rounding) through oneDNN, and F.linear where it cannot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosam.models.cpu_gemm import bmm, linear, onednn_linear_available


@pytest.mark.parametrize("gelu", [False, True])
def test_linear_equals_torch(gelu: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 5, 7, 48), generator=gen)
    w, b = torch.randn((40, 48), generator=gen), torch.randn(40, generator=gen)
    ref = F.linear(x, w, b)
    ref = F.gelu(ref) if gelu else ref
    out = linear(x, w, b, gelu=gelu)
    assert out.shape == (2, 5, 7, 40)
    assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    # a non-contiguous input and no bias
    xt = torch.randn((48, 30), generator=gen).T
    assert torch.allclose(linear(xt, w), xt @ w.T, rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_switch_off(monkeypatch) -> None:
    x, w = torch.randn((4, 8)), torch.randn((3, 8))
    assert linear(x.double(), w.double()).dtype == torch.float64
    assert linear(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "0")
    assert not onednn_linear_available()
    assert torch.equal(linear(x, w), F.linear(x, w))


@pytest.mark.parametrize("onednn", [True, False])
def test_bmm_equals_torch(monkeypatch, onednn: bool) -> None:
    """add + a @ b, per batch entry or with one shared b, into a new tensor or accumulated in place."""
    if not onednn:
        monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "0")
    gen = torch.Generator().manual_seed(1)
    a = torch.randn((3, 6, 20), generator=gen)
    b = torch.randn((3, 20, 9), generator=gen)
    shared = torch.randn((1, 20, 9), generator=gen)
    add = torch.randn((3, 6, 9), generator=gen)
    col = torch.randn((3, 6, 1), generator=gen)

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        return x.shape == y.shape and float((x - y).abs().max()) < 1e-5 * float(y.abs().max())

    assert close(bmm(a, b), torch.bmm(a, b))
    assert close(bmm(a, shared), torch.bmm(a, shared.expand(3, -1, -1)))
    assert close(bmm(a, b.transpose(1, 2).contiguous().transpose(1, 2), add=col), torch.bmm(a, b) + col)
    assert close(bmm(a, shared, add=col), torch.bmm(a, shared.expand(3, -1, -1)) + col)
    ref = add + torch.bmm(a.transpose(1, 2).contiguous().transpose(1, 2), b)
    acc = add.clone()
    out = bmm(a, b, add=acc, out=acc)
    assert out.data_ptr() == acc.data_ptr() and close(acc, ref)
    base = torch.randn((1, 6, 9), generator=gen)
    assert close(bmm(a, b, add=base), torch.bmm(a, b) + base)
    with pytest.raises(ValueError, match="bmm"):
        bmm(a, torch.randn((2, 20, 9)))
