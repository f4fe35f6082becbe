"""geosam.models.cpu_gemm: F.linear's / bmm's results (to rounding) through oneDNN, torch's own products elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosam.models import cpu_gemm
from geosam.models.cpu_gemm import bmm, linear, onednn_linear_available


@pytest.mark.parametrize("gelu", [False, True])
def test_linear_equals_torch(monkeypatch, gelu: bool) -> None:
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "1")  # oneDNN on any CPU (by default only where MKL is slow)
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


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_linear_into_a_buffer(monkeypatch, onednn: str) -> None:
    """``out=``: torch's product writes into the buffer, F.linear's numbers exactly; oneDNN's fills it too (its op
    makes its own outputs: by blocks of rows, copied), F.linear's numbers to rounding and the whole product's."""
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", onednn)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((3, 4, 16), generator=gen)
    w, b = torch.randn((24, 16), generator=gen), torch.randn(24, generator=gen)
    for bias, gelu in ((b, False), (None, False), (b, True)):
        ref = F.linear(x, w, bias)
        ref = F.gelu(ref) if gelu else ref
        buf = torch.full((3, 4, 24), float("nan"))
        out = linear(x, w, bias, gelu=gelu, out=buf)
        assert out.data_ptr() == buf.data_ptr()
        if onednn == "0" or not onednn_linear_available():
            assert torch.equal(out, ref)
        else:
            assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
            whole = linear(x, w, bias, gelu=gelu)
            torch.testing.assert_close(out, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max()))
    if onednn == "1" and onednn_linear_available():  # at most 5 rows a block (24 floats a row): 12 rows in 3 of 4
        whole = linear(x, w, b, gelu=True)
        monkeypatch.setattr(cpu_gemm, "ROW_BLOCK_BYTES", 5 * 24 * 4)
        made: list[int] = []
        real = cpu_gemm.pointwise_linear
        monkeypatch.setattr(cpu_gemm, "pointwise_linear", lambda *a: made.append(a[0].shape[0]) or real(*a))
        blocks = linear(x, w, b, gelu=True, out=torch.full((3, 4, 24), float("nan")))
        assert made == [4, 4, 4]
        torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max()))
        monkeypatch.setattr(cpu_gemm, "pointwise_linear", real)
    # a buffer of the wrong shape is not used
    wrong = torch.empty((2, 24))
    out = linear(x, w, b, out=wrong)
    assert out.shape == (3, 4, 24) and out.data_ptr() != wrong.data_ptr()


def test_row_blocks_are_as_equal_as_they_go(monkeypatch) -> None:
    """Blocks of at most ROW_BLOCK_BYTES, none of a few rows (oneDNN sums a one-row product in another order: a ViT-B
    MLP's 4096 rows in blocks of 1365 left a last block of one row, whose GELU(x W1^T) differed in the last bits)."""
    assert cpu_gemm.row_blocks(4096, 3072, 4) == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096)]
    assert cpu_gemm.row_blocks(4096, 2304, 4) == [(0, 1365), (1365, 2730), (2730, 4096)]
    assert cpu_gemm.row_blocks(100, 768, 4) == [(0, 100)]
    assert cpu_gemm.row_blocks(0, 768, 4) == []
    monkeypatch.setattr(cpu_gemm, "ROW_BLOCK_BYTES", 10)  # rows wider than a block: one row each
    assert cpu_gemm.row_blocks(3, 8, 4) == [(0, 1), (1, 2), (2, 3)]
    for rows, width in ((4097, 3072), (1366, 3072), (9999, 100)):
        monkeypatch.setattr(cpu_gemm, "ROW_BLOCK_BYTES", 16 * 1024 * 1024)
        blocks = cpu_gemm.row_blocks(rows, width, 4)
        sizes = [b - a for a, b in blocks]
        assert blocks[0][0] == 0 and blocks[-1][1] == rows and all(blocks[i][1] == blocks[i + 1][0] for i in range(len(blocks) - 1))
        assert max(sizes) - min(sizes) <= 1 and max(sizes) * width * 4 <= cpu_gemm.ROW_BLOCK_BYTES


@pytest.mark.parametrize("onednn", [True, False])
def test_bmm_equals_torch(monkeypatch, onednn: bool) -> None:
    """add + a @ b, per batch entry or with one shared b, into a new tensor or accumulated in place."""
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "1" if onednn else "0")
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


@pytest.mark.parametrize(
    ("cpuinfo", "onednn"),
    [
        ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n", True),  # Zen 4 / 5: MKL at half speed
        ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2\n", False),  # Zen 2 / 3: MKL's AVX2 kernels are faster
        ("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f amx_bf16\n", False),  # MKL's own CPUs
        ("", False),
    ],
)
def test_backend_rule_by_cpu(monkeypatch, cpuinfo: str, onednn: bool) -> None:
    """oneDNN by default only where MKL's float32 GEMM is known slow (AMD with AVX-512); the switch overrides both ways."""
    import io

    from geosam.models import device

    real_open = open

    def fake_open(path, *args, **kwargs):
        return io.StringIO(cpuinfo) if path == "/proc/cpuinfo" else real_open(path, *args, **kwargs)

    device._cpuinfo_field.cache_clear()
    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.delenv("GEOSAM_ONEDNN_LINEAR", raising=False)
    try:
        assert onednn_linear_available() is onednn
        monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "1")
        assert onednn_linear_available()
        monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "0")
        assert not onednn_linear_available()
    finally:
        monkeypatch.undo()
        device._cpuinfo_field.cache_clear()


@pytest.mark.parametrize("fused", [True, False])
def test_linear_gelu_low_rounds_once_after_the_gelu(monkeypatch, fused: bool) -> None:
    """The bf16 first MLP product with its GELU: on bf16 inputs, the GELU of the float32 sums rounded to bf16 once
    (oneDNN's op with the GELU fused), or autocast's product then GELU where the op does not take bf16."""
    from geosam.models import cpu_gemm

    gen = torch.Generator().manual_seed(3)
    x = torch.randn((3, 37, 64), generator=gen)
    w, b = torch.randn((96, 64), generator=gen) * 0.2, torch.randn(96, generator=gen)
    if not fused:
        monkeypatch.setattr(cpu_gemm, "op_works_in", lambda dtype: False)
    got = cpu_gemm.linear_gelu_low(x, w, b, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 37, 96)
    exact = F.gelu(F.linear(x.bfloat16().double(), w.bfloat16().double(), b.double()))
    if fused and cpu_gemm.op_works_in(torch.bfloat16):
        # one rounding: within half a bf16 ulp (2^-9 relative) of the exact value, up to the float32 sums' order
        assert bool(((got.double() - exact).abs() <= exact.abs() * 2.0**-8 + 1e-6).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = F.gelu(F.linear(x, w, b))
    if not fused:
        assert torch.equal(got, stock)
    else:  # as close to the exact values as the stock path, or closer
        assert float((got.double() - exact).norm()) <= float((stock.double() - exact).norm()) * 1.01


@pytest.mark.parametrize("shape", [(4096, 768, 2304), (70, 3072, 40), (1, 5, 9, 64, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_low_is_autocasts_linear_bit_for_bit(shape: tuple[int, ...], with_bias: bool) -> None:
    """The bf16 projections outside autocast's ``addmm`` (the bias added as the product is written, the operands
    rounded in one pass each): autocast's bits, on float32 or bf16 inputs, at SAM's qkv size and odd ones."""
    gen = torch.Generator().manual_seed(sum(shape))
    *lead, k, n = shape
    x = torch.randn((*lead, k), generator=gen) * 3
    w, b = torch.randn((n, k), generator=gen) * 0.05, torch.randn(n, generator=gen) if with_bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.linear(x, w, b)
    for inp in (x, x.bfloat16()):
        got = cpu_gemm.linear_low(inp, w, b, torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    # float16: autocast's own op
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(cpu_gemm.linear_low(x, w, b, torch.float16), F.linear(x, w, b))


def test_linear_low_check_agrees_with_sams_products() -> None:
    """`_low_linear_agrees`'s verdict (small shapes) is what oneDNN's pointwise op does at the ViT-B's own sizes here:
    where it says yes, the four projections of a layer give autocast's bits (and the fast path is taken)."""
    if not cpu_gemm.op_works_in(torch.bfloat16):
        assert not cpu_gemm._low_linear_agrees()
        return
    gen = torch.Generator().manual_seed(9)
    same = True
    for k, n in ((768, 2304), (768, 768), (3072, 768)):
        x, w, b = torch.randn((512, k), generator=gen), torch.randn((n, k), generator=gen) * 0.05, torch.randn(n, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = F.linear(x, w, b)
        xb, wb, bb = (t.to(torch.bfloat16) for t in (x, w, b))
        same &= torch.equal(cpu_gemm.pointwise_linear(xb, wb, bb, False), want)
    assert cpu_gemm._low_linear_agrees() == same
