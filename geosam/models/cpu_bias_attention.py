"""Window attention with a dense bias per head on AMX tiles (LiteMedSAM's TinyViT in bf16), in C.

`geosam.models.fast_tinyvit` runs its windows' attention through torch's fused attention with the learned per-head
biases as the mask. For these windows (49 or 196 tokens, heads of 32 numbers) that kernel spends most of a call on
its own blocking: Intel Xeon with AMX, one thread, 2.9 ns a score in 49-token windows, 1.4 ns in 196-token ones.
`cpu_bias_attention.c` runs one (window, head) at a time: keys and values packed as AMX's right operands, scores
16 x 16 a tile, the scale, bias, maximum, exponentials and sum in one pass per row in float32, the probabilities
rounded to bf16 for the values' product (as torch's bf16 attention does), the output divided by the row's sum and
rounded to bf16. Used only where the CPU has AMX, the process is granted the tiles, and the kernel has matched a
float64 `reference` within `TOLERANCE` on this machine (and not with ``GEOSAM_CPU_KERNELS=0``); elsewhere the
caller runs torch's attention.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from geosam.models.cpu_build import alternating_threads, load
from geosam.models.device import cpu_flags

__all__ = ["TOLERANCE", "attention", "available", "reference"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_bias_attention.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int

#: Largest difference from the float64 `reference` on bf16 inputs (relative to the largest output) accepted on load:
#: bf16 probabilities and outputs (torch's bf16 attention: ~3e-3 on the same data).
TOLERANCE = 8e-3


def reference(qkv: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale q k^T + bias) v`` of every window and head in float64: qkv (W, N, H, 3, d), bias (H, N, N);
    returns (W, N, H, d) float64."""
    x = qkv.double()
    q, k, v = (x[:, :, :, i].transpose(1, 2) for i in range(3))  # (W, H, N, d)
    p = torch.softmax(q @ k.transpose(-1, -2) * scale + bias.double(), dim=-1)
    return (p @ v).transpose(1, 2)


def _call(lib: ctypes.CDLL, qkv: torch.Tensor, bias: torch.Tensor, scale: float, out: torch.Tensor) -> int:
    nw, n, nh, _, d = qkv.shape
    return int(lib.geosam_bias_attention(
        _P(qkv.data_ptr()), _I64(nw), _I64(n), _I64(nh), _I64(d), ctypes.c_float(scale), _P(bias.data_ptr()),
        _P(out.data_ptr()), _INT(torch.get_num_threads()),
    ))  # fmt: skip


def _matches_reference(lib: ctypes.CDLL) -> bool:
    """Windows of 49 and 196 tokens and odd sizes (past whole tiles, one key chunk and several), heads of 32 and 64,
    large biases, one and two threads. False where the tiles are not granted."""
    lib.geosam_bias_attention.restype = ctypes.c_int
    lib.geosam_amx_init.restype = ctypes.c_int
    if not {"amx_bf16", "amx_tile"} <= set(cpu_flags()) or lib.geosam_amx_init() != 0:
        return False
    gen = torch.Generator().manual_seed(0)
    with alternating_threads() as use:
        for i, (nw, n, nh, d) in enumerate(((3, 49, 4, 32), (2, 196, 5, 32), (2, 13, 2, 64), (1, 37, 3, 32),
                                            (2, 250, 1, 64))):
            use(i)
            qkv = torch.randn((nw, n, nh, 3, d), generator=gen).to(torch.bfloat16)
            bias = torch.randn((nh, n, n), generator=gen) * 4
            want = reference(qkv, bias, d**-0.5)
            out = torch.empty((nw, n, nh, d), dtype=torch.bfloat16)
            if _call(lib, qkv, bias, d**-0.5, out) != 0:
                return False
            if float((out.double() - want).abs().max() / want.abs().max()) > TOLERANCE:
                log.warning("cpu_bias_attention.c: the AMX window attention does not match the reference; not used")
                return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return load(_SOURCE, _matches_reference, "window attention with a bias (AMX)", ("AVX512",))


def available() -> bool:
    """Whether the kernel is in use in this process."""
    return _library() is not None


def attention(qkv: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``softmax(scale q k^T + bias) v`` of every window and head: qkv (W, N, H, 3, d) contiguous bf16 on the CPU
    (N up to 256, d 32 or 64); bias (H, N, N) float32. Returns (W, N, H * d) bf16, or None where the kernel is not in
    use or the shapes do not fit it (the caller runs torch's attention)."""
    if qkv.ndim != 5 or bias.ndim != 3 or qkv.device.type != "cpu" or qkv.dtype != torch.bfloat16:
        return None
    nw, n, nh, three, d = qkv.shape
    fits = (three == 3 and qkv.is_contiguous() and bias.shape == (nh, n, n) and bias.dtype == torch.float32
            and bias.is_contiguous() and bias.device.type == "cpu" and d in (32, 64) and 1 <= n <= 256
            and not (torch.is_grad_enabled() and (qkv.requires_grad or bias.requires_grad)))  # fmt: skip
    lib = _library() if fits else None
    if lib is None:
        return None
    out = torch.empty((nw, n, nh * d), dtype=torch.bfloat16)
    err = _call(lib, qkv, bias, scale, out)
    if err == 2:
        raise MemoryError("cpu_bias_attention: no memory for the kernel's buffers")
    return out if err == 0 else None
