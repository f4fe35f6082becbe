"""Float32 matrix products on the CPU through whichever of MKL and oneDNN is faster on this CPU.

torch's float32 ``linear`` / ``addmm`` / ``bmm`` call the BLAS it was built
with (MKL in the PyPI wheels). MKL takes its AVX-512 kernels on Intel CPUs
only: on an AMD CPU with AVX-512 (Zen 4, Zen 5) its float32 GEMM runs at about
half of what the same CPU does through oneDNN (AMD EPYC Zen 5, the encoder's
MLP shape, one thread: 89 vs 175 GFLOP/s), while on AMD CPUs without AVX-512
MKL's AVX2 kernels are the faster ones (AMD EPYC Zen 3: 93 vs 84 GFLOP/s, the
encoder 1.1x faster through MKL; ``benchmarks/results/`` has the figures).
oneDNN, which torch also ships and uses for bf16, vectorises for whatever the
CPU has. `linear` and `bmm` send float32 CPU products there where
`onednn_linear_available` (by default: AMD CPUs with AVX-512; a fixed rule
rather than a timing, so that every process on a machine computes the same
numbers), optionally with an exact GELU fused in, and use torch's own
products elsewhere (other CPUs, devices and dtypes, torch builds without
oneDNN). Results equal ``F.linear``'s to float rounding (~1e-6 relative): the
summation order differs.

``GEOSAM_ONEDNN_LINEAR=1`` sends float32 CPU products through oneDNN on any
CPU, ``GEOSAM_ONEDNN_LINEAR=0`` never.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_convert import to_bf16
from geosam.models.device import cpu_flags, cpu_vendor

__all__ = [
    "ROW_BLOCK_BYTES", "bmm", "exact_gelu", "linear", "linear_gelu_low", "linear_low", "mkl_float32_slow", "onednn_linear_available",
    "op_works_in", "pointwise_linear", "row_blocks",
]


@functools.lru_cache(maxsize=1)
def _op_works() -> bool:
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones((2, 3))
        out = op(x, torch.ones((4, 3)), torch.zeros(4), "none", [], "")
        return bool(out.shape == (2, 4) and float(out[0, 0]) == 3.0)
    except (RuntimeError, TypeError):  # an op without a CPU float32 kernel in this build
        return False


def mkl_float32_slow() -> bool:
    """Whether MKL's float32 GEMM is known to run below oneDNN's on this CPU: an AMD CPU with AVX-512.

    MKL dispatches its AVX-512 kernels on Intel CPUs only; on AMD CPUs with
    AVX-512 it runs AVX2 code at about half the CPU's float32 peak.
    """
    return cpu_vendor() == "AuthenticAMD" and "avx512f" in cpu_flags()


def onednn_linear_available() -> bool:
    """Whether `linear` / `bmm` run float32 CPU products through oneDNN here.

    ``GEOSAM_ONEDNN_LINEAR=0``: never; ``=1``: wherever torch's oneDNN op
    works; unset: where it works and `mkl_float32_slow`.
    """
    env = os.environ.get("GEOSAM_ONEDNN_LINEAR", "").strip().lower()
    if env in ("0", "false", "no"):
        return False
    if not _op_works():
        return False
    return env in ("1", "true", "yes") or mkl_float32_slow()


def _float32_cpu(*tensors: torch.Tensor) -> bool:
    """Whether all of these are float32 CPU tensors and no autocast is on (a product of them runs in float32)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and not torch.is_autocast_enabled("cpu")


def _onednn(*tensors: torch.Tensor) -> bool:
    """Whether a product of these tensors goes through oneDNN: all float32 on the CPU, no autocast, op available."""
    return _float32_cpu(*tensors) and onednn_linear_available()


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gelu: bool = False,
    out: torch.Tensor | None = None,
    invariant: bool = False,
) -> torch.Tensor:
    """``x @ weight.T + bias`` (then exact GELU if ``gelu``), x (..., K), weight (N, K): (..., N).

    Float32 CPU tensors go through oneDNN (`onednn_linear_available`); the
    rest through ``F.linear`` (and ``F.gelu``). ``out`` (optional, contiguous,
    (..., N)): a buffer that torch's product writes into (the same numbers as
    ``F.linear``, ``addmm``), so that a caller reusing it spares the
    allocation, which for blocks of 32 MiB and more is fresh pages from the
    kernel each time (`geosam.models.cpu_memory`); the oneDNN op allocates its
    own output, so there ``out`` is filled by blocks of rows (`row_blocks`; the
    same numbers on an AMD EPYC Zen 4: a row's sums do not depend on the other
    rows while a block is not a single row). Use the returned tensor either way.

    invariant: the same bits at any thread count: float32 CPU products go
    through oneDNN wherever its op works. MKL's AVX-512 float32 GEMM (Intel's
    path) splits a long inner dimension between threads when the output is
    narrow (Intel Xeon with AMX, 1920 x 2304 by 2304 x 256: 1 and 3 threads
    agree, 2, 4, 6 and 8 threads differ); oneDNN's linear keeps one order.
    """
    if _onednn(x, weight) or (invariant and _op_works() and _float32_cpu(x, weight)):
        if out is None or not (out.is_contiguous() and out.shape == (*x.shape[:-1], weight.shape[0])):
            return pointwise_linear(x, weight, bias, gelu)
        # oneDNN's op makes its own output: blocks of rows whose outputs come from the heap, copied into ``out``
        x2, o2 = x.reshape(-1, x.shape[-1]), out.view(-1, weight.shape[0])
        for r0, r1 in row_blocks(x2.shape[0], weight.shape[0], out.element_size()):
            o2[r0:r1].copy_(pointwise_linear(x2[r0:r1], weight, bias, gelu))
        return out
    if out is not None and out.is_contiguous() and out.shape == (*x.shape[:-1], weight.shape[0]):
        x2, o2 = x.reshape(-1, x.shape[-1]), out.view(-1, weight.shape[0])
        if bias is None:
            torch.mm(x2, weight.t(), out=o2)
        else:
            torch.addmm(bias, x2, weight.t(), out=o2)
        res = out
    else:
        res = F.linear(x, weight, bias)
    return torch.ops.aten.gelu_(res) if gelu else res


#: Largest output block (bytes) of a product run by blocks of rows (`row_blocks`): below glibc's 32 MiB mmap
#: threshold as `geosam.models.cpu_memory` sets it, so that the blocks are heap memory used again, not fresh pages.
ROW_BLOCK_BYTES = 16 * 1024 * 1024


def row_blocks(rows: int, width: int, itemsize: int) -> list[tuple[int, int]]:
    """``rows`` rows of outputs of ``width`` elements of ``itemsize`` bytes as (start, stop) blocks of at most
    `ROW_BLOCK_BYTES`, as equal as they go (no block of a few rows: oneDNN sums a one-row product in another order).

    A ViT-B's encoder at 1024 px has two float32 intermediates above glibc's mmap threshold, the qkv projection
    (4096 x 2304, 38 MB) and the MLP's hidden activations (4096 x 3072, 50 MB): made whole, each is fresh pages
    from the kernel every layer, ~9 and ~12 thousand page faults (AMD EPYC Zen 4, one thread: 17 ms for a fresh
    38 MB tensor written vs 2.5 ms for one reused), unless glibc happens to find room in its heap.
    """
    per = max(1, ROW_BLOCK_BYTES // max(1, width * itemsize))
    n = max(1, -(-rows // per))
    bounds = [rows * i // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n) if bounds[i + 1] > bounds[i]]


def exact_gelu(act: Any) -> bool:
    """Whether ``act`` is the exact (erf) GELU that the fused products compute: ``torch.nn.GELU()`` or
    transformers' ``GELUActivation``."""
    if isinstance(act, torch.nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def pointwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool,
                     relu: bool = False) -> torch.Tensor:  # fmt: skip
    """oneDNN's ``x @ weight.T + bias`` (exact GELU fused if ``gelu``, ReLU if ``relu``) on x (..., K): (..., N), in
    x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    attr, algorithm = ("gelu", "none") if gelu else ("relu", "") if relu else ("none", "")
    out = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, attr, [], algorithm)
    return out.view(*lead, weight.shape[0])


@functools.lru_cache(maxsize=4)
def op_works_in(dtype: torch.dtype) -> bool:
    """Whether oneDNN's pointwise linear takes ``dtype`` (with an exact GELU fused) in this torch build."""
    if not _op_works():
        return False
    try:
        x = torch.ones((2, 3), dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, torch.ones((4, 3), dtype=dtype), None, "gelu", [], "none")
        return bool(out.dtype == dtype and abs(float(out[0, 0]) - 3.0) < 0.05)
    except (RuntimeError, TypeError):
        return False


def linear_gelu_low(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` (exact GELU) in the low precision ``dtype`` on the CPU: oneDNN's product with the
    GELU fused, applied to the float32 sums before they are rounded (torch's autocast rounds the product, then a
    second pass computes the GELU: AMD EPYC Zen 4, one thread, the ViT-B MLP's first product 110-115 vs 129-150 ms);
    under autocast's ``linear`` then ``gelu`` where the op does not take ``dtype``. Returns ``dtype``."""
    if x.device.type == "cpu" and op_works_in(dtype):
        return pointwise_linear(_rounded(x, dtype), _rounded(weight, dtype), bias, gelu=True)
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        return F.gelu(F.linear(x, weight, bias)).to(dtype)


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, bf16 in one AVX-512 pass where `geosam.models.cpu_convert` runs (the same bits)."""
    return to_bf16(t) if dtype == torch.bfloat16 else t.to(dtype)


def linear_low(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
               relu: bool = False) -> torch.Tensor:  # fmt: skip
    """``F.linear(x, weight, bias)`` (then ``relu`` with ``relu``) under autocast to bf16 on the CPU, the same bits:
    oneDNN's product adding the bf16 bias to its float32 sums as it writes them (autocast's ``addmm`` copies the bias
    into its output first, then adds the product to it) on operands rounded in one pass each (`_rounded`). Intel Xeon
    with AMX, one thread, the ViT-B's qkv projection at 1024 px 13.2-13.5 vs 17.0-17.5 ms, the MLP's second product
    18.4-18.6 vs 20.3-21.0 ms. The ReLU fused into the product, on the float32 sums before their rounding, which gives
    the rounding's bits after it (a negative sum rounds to a number <= 0, a positive one as before), without a pass
    over the product's output (SAM 3's DETR encoder: a (2 x 5184, 2048) bf16 ReLU 35 ms a layer, same host).
    Autocast's own ops where the bits were not the same here (`_low_linear_agrees`) and for other dtypes."""
    if dtype == torch.bfloat16 and x.device.type == "cpu" and _low_linear_agrees(relu):
        b = None if bias is None else _rounded(bias, dtype)
        return pointwise_linear(_rounded(x, dtype), _rounded(weight, dtype), b, gelu=False, relu=relu)
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        out = F.linear(x, weight, bias)
        return F.relu(out) if relu else out


@functools.lru_cache(maxsize=2)
def _low_linear_agrees(relu: bool = False) -> bool:
    """Whether `linear_low`'s product (with ``relu``: and its ReLU) gives autocast's bf16 ``linear`` (then ``relu``)
    bit for bit here: inner sizes of one and of several of oneDNN's blocks, rows and columns past whole
    tiles, large and small values."""
    if not op_works_in(torch.bfloat16):
        return False
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((70, 96, 40), (33, 3072, 48), (129, 768, 80)):
        x, w = torch.randn((m, k), generator=gen) * 4, torch.randn((n, k), generator=gen) * 0.05
        b = torch.randn(n, generator=gen) * 3
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            want = F.relu(F.linear(x, w, b)) if relu else F.linear(x, w, b)
        xb, wb, bb = (_rounded(t, torch.bfloat16) for t in (x, w, b))
        got = pointwise_linear(xb, wb, bb, False, relu=relu)
        if not torch.equal(got, want):
            return False
    return True


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` through oneDNN: a (M, K), b (K, L) (any strides; b is oneDNN's weight, transposed)."""
    return torch.ops.mkldnn._linear_pointwise(a if a.is_contiguous() else a.contiguous(), b.t(), None, "none", [], "")


def bmm(
    a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``add + a @ b`` batched: a (N, M, K), b (B, K, L) with B = N, or B = 1 (one b for every batch entry).

    ``add`` (optional) broadcasts to (N, M, L); ``out`` (optional, (N, M, L),
    may be ``add`` itself for an in-place accumulation) receives the result.
    Float32 CPU tensors go through oneDNN (`onednn_linear_available`): a
    shared ``b`` as one product over all N * M rows, else one product per batch
    entry, with ``add`` added while the result is written (one pass); the rest
    through ``torch.bmm`` / ``torch.baddbmm``. Results equal torch's to float
    rounding (the summation order differs).
    """
    n, m, k = a.shape
    if b.ndim != 3 or b.shape[0] not in (1, n) or b.shape[1] != k:
        raise ValueError(f"bmm: b must be (1 or {n}, {k}, L), got {tuple(b.shape)}")
    shared = b.shape[0] == 1 and n > 1
    if not _onednn(a, b, *(t for t in (add, out) if t is not None)):
        res = (a.reshape(n * m, k) @ b[0]).view(n, m, -1) if shared else torch.bmm(a, b)
        if add is not None:
            res.add_(add)
        return res if out is None else out.copy_(res)
    if shared:
        res = _mm(a.reshape(n * m, k), b[0]).view(n, m, -1)
        if add is None:
            return res if out is None else out.copy_(res)
        return torch.add(res, add, out=out) if out is not None else res.add_(add)
    if out is None:
        out = torch.empty((n, m, b.shape[2]), dtype=a.dtype, device=a.device)
    addn = None if add is None else add.expand(n, m, b.shape[2])
    for i in range(n):
        r = _mm(a[i], b[i])
        if addn is None:
            out[i].copy_(r)
        else:
            torch.add(r, addn[i], out=out[i])
    return out
