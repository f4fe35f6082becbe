"""The bf16 encoder's passes between float32 and bf16 on AVX-512 CPUs, in one pass each, torch's bits.

Under autocast a low-precision ViT layer of `geosam.models.fast_encoder` keeps its residual stream in float32: it
rounds its layer norms' and its attention's outputs to bf16 for the next product (torch's AVX2 copy kernel) and adds
two bf16 results into the stream, which torch does by widening each into a new float32 tensor and then adding (three
passes over 12 MiB for a ViT-B at 1024 px). `to_bf16` rounds as ATen's vectorised conversion does and `add_bf16_`
widens and adds in one pass (`cpu_convert.c`): the same bits, used only after they have matched torch's in this
process (ties, NaN, infinities, subnormals), on CPUs with AVX-512 where torch runs its vector kernels (not with
``GEOSAM_CPU_KERNELS=0``); elsewhere the callers run torch's ops. Intel Xeon with AMX, ViT-B at 1024 px, alternating
in one process, the same embeddings: the bf16 encoder 1.71-1.75 vs 1.77-1.88 s with one thread, 0.89-0.92 vs
0.91-1.04 s with two. `layer_norm_bf16` is torch's float32 layer norm with the output rounded in the same pass
(used where it has given torch's bits on this machine: `_layer_norm_agrees`).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from geosam.models.device import cpu_flags

__all__ = ["add_bf16_", "available", "layer_norm_bf16", "to_bf16"]

_SOURCE = Path(__file__).with_name("cpu_convert.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _check_values() -> torch.Tensor:
    """float32 values for the load check: random over many scales, bf16 ties (both parities), the largest finite
    numbers (round to infinity), infinities, NaN, subnormals, signed zeros; 16 x 64 of them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, generator=gen) * torch.exp2(torch.randint(-60, 60, (1024,), generator=gen).float())
    ties = (torch.randint(0, 1 << 16, (64,), generator=gen, dtype=torch.int32) << 16) | 0x8000
    x[:64] = ties.view(torch.float32)
    special = [float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, 1.17e-38]
    x[64 : 64 + len(special)] = torch.tensor(special)
    return x


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    lib.geosam_to_bf16.restype = ctypes.c_int
    lib.geosam_add_bf16.restype = ctypes.c_int
    x = _check_values()
    got = torch.empty(x.shape, dtype=torch.bfloat16)
    if lib.geosam_to_bf16(_P(x.data_ptr()), _P(got.data_ptr()), _I64(x.numel()), _INT(1)) != 0:
        return False
    if not torch.equal(got.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)):
        return False
    base = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    want, acc = base.clone().add_(got), base.clone()
    if lib.geosam_add_bf16(_P(acc.data_ptr()), _P(got.data_ptr()), _I64(x.numel()), _INT(1)) != 0:
        return False
    return torch.equal(acc.view(torch.int32), want.view(torch.int32))


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    if "avx512f" not in cpu_flags():
        return None
    return load(_SOURCE, _agrees_with_torch, "bf16 conversions", AVX2_AND_WIDER)


def available() -> bool:
    """Whether the compiled passes are in use in this process."""
    return _library() is not None


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and t.numel() % 16 == 0


def to_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x.to(torch.bfloat16)``, in one AVX-512 pass where the kernel runs (float32, contiguous, on the CPU)."""
    lib = _library() if _fits(x, torch.float32) else None
    if lib is None or torch.is_grad_enabled() and x.requires_grad:
        return x.to(torch.bfloat16)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    lib.geosam_to_bf16(_P(x.data_ptr()), _P(out.data_ptr()), _I64(x.numel()), _INT(torch.get_num_threads()))
    return out


def add_bf16_(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x.add_(h)`` for a float32 ``x`` and a bf16 ``h`` of its shape, in one pass where the kernel runs; returns x."""
    lib = _library() if _fits(x, torch.float32) and _fits(h, torch.bfloat16) and x.shape == h.shape else None
    if lib is None or torch.is_grad_enabled() and (x.requires_grad or h.requires_grad):
        return x.add_(h)
    lib.geosam_add_bf16(_P(x.data_ptr()), _P(h.data_ptr()), _I64(x.numel()), _INT(torch.get_num_threads()))
    return x


@functools.lru_cache(maxsize=1)
def _layer_norm_agrees() -> bool:
    """Whether `geosam_layer_norm_bf16` gives ``F.layer_norm(...).to(torch.bfloat16)`` bit for bit here, and its
    statistics ``native_layer_norm``'s mean and reciprocal deviation: widths of one to 32 of torch's chunks of 128
    numbers (cascades of every depth up to 5), rows on large offsets, wide and narrow spreads, a row with a NaN and
    one with an infinity, one and two threads."""
    lib = _library()
    if lib is None:
        return False
    lib.geosam_layer_norm_bf16.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(2)
    threads = torch.get_num_threads()
    try:
        for i, n in enumerate((768, 1024, 1280, 16, 272, 2048, 4096)):
            torch.set_num_threads(1 + i % 2)
            rows = 37
            scales = torch.exp2(torch.randint(-8, 8, (rows, 1), generator=gen).float())
            x = torch.randn((rows, n), generator=gen) * scales
            x += torch.randn((rows, 1), generator=gen) * 100
            x[3, 5], x[7, 0] = float("nan"), float("inf")
            w, b = torch.randn(n, generator=gen) * 0.5 + 1, torch.randn(n, generator=gen) * 0.3
            eps = 1e-6 if i % 2 else 1e-5
            y, mean, rstd = torch.ops.aten.native_layer_norm(x, [n], w, b, eps)
            got = torch.empty((rows, n), dtype=torch.bfloat16)
            if _call_layer_norm(lib, x, w, b, eps, got) != 0:
                return False
            if not torch.equal(got.view(torch.int16), y.to(torch.bfloat16).view(torch.int16)):
                return False
            # the statistics themselves, bit for bit (the rounded output hides most of their last bits)
            got_mean, got_rstd = torch.empty(rows), torch.empty(rows)
            lib.geosam_layer_norm_moments(_P(x.data_ptr()), ctypes.c_float(eps), _I64(rows), _I64(n),
                                          _P(got_mean.data_ptr()), _P(got_rstd.data_ptr()))
            for g, t in ((got_mean, mean), (got_rstd, rstd)):
                if not torch.equal(g.view(torch.int32), t.reshape(rows).contiguous().view(torch.int32)):
                    return False
    finally:
        torch.set_num_threads(threads)
    return True


def _call_layer_norm(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                     out: torch.Tensor) -> int:
    n = x.shape[-1]
    args = (_P(x.data_ptr()), _P(w.data_ptr()), _P(b.data_ptr()), ctypes.c_float(eps), _I64(x.numel() // n), _I64(n),
            _P(out.data_ptr()), _INT(torch.get_num_threads()))  # fmt: skip
    return int(lib.geosam_layer_norm_bf16(*args))


def layer_norm_bf16(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor | None:
    """``norm(x).to(torch.bfloat16)`` for a ``torch.nn.LayerNorm`` over the last axis of a float32 ``x``, in one pass
    (no float32 output written and read again), where the kernel gives torch's bits here; None elsewhere (the caller
    runs ``norm``)."""
    if type(norm) is not torch.nn.LayerNorm or norm.weight is None or norm.bias is None:
        return None
    n = x.shape[-1] if x.ndim else 0
    w, b = norm.weight, norm.bias
    if not (
        tuple(norm.normalized_shape) == (n,) and n % 16 == 0 and _fits(x, torch.float32)
        and _fits(w, torch.float32) and _fits(b, torch.float32)
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad))
    ):  # fmt: skip
        return None
    lib = _library()
    if lib is None or not _layer_norm_agrees():
        return None
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    return out if _call_layer_norm(lib, x, w, b, float(norm.eps), out) == 0 else None
