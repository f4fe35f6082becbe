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

__all__ = ["TOLERANCE", "attention", "available", "reference", "rowcol_attention", "rowcol_reference", "rowcol_takes"]

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


def rowcol_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor,
                     zero_rows: int, scale: float, round_bias: bool = True) -> torch.Tensor:  # fmt: skip
    """`rowcol_attention` in float64 from its operands: q (B, Q, H, d), k and v (B, hh ww, H, d), rh (B, H, Q -
    zero_rows, hh), rw (B, H, Q - zero_rows, ww); returns (B, Q, H, d) float64. The bias is the matrix the stock
    decoder builds: the terms' sum (rounded to bf16 with ``round_bias``), zero rows first."""
    b, _, nh, _ = q.shape
    bias = rh.float()[..., :, None] + rw.float()[..., None, :]
    if round_bias:
        bias = bias.to(torch.bfloat16)
    bias = torch.cat([bias.new_zeros((b, nh, zero_rows) + bias.shape[-2:]), bias], dim=2).flatten(-2).double()
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
    p = torch.softmax(qd @ kd.transpose(-1, -2) * scale + bias, dim=-1)
    return (p @ vd).transpose(1, 2)


def _call_rowcol(lib: ctypes.CDLL, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rh: torch.Tensor,
                 rw: torch.Tensor, zero_rows: int, scale: float, round_bias: bool, out: torch.Tensor) -> int:  # fmt: skip
    nb, nq, nh, d = q.shape
    return int(lib.geosam_rowcol_attention(
        _P(q.data_ptr()), _P(k.data_ptr()), _P(v.data_ptr()), _I64(nb), _I64(nq), _I64(nh), _I64(d),
        _I64(rh.shape[-1]), _I64(rw.shape[-1]), _I64(zero_rows), ctypes.c_float(scale), _P(rh.data_ptr()),
        _P(rw.data_ptr()), _INT(int(round_bias)), _P(out.data_ptr()), _INT(torch.get_num_threads()),
    ))  # fmt: skip


def _rowcol_matches_reference(lib: ctypes.CDLL) -> bool:
    """Maps whose rows are not whole vectors (72 x 72 as SAM 3's, 5 x 23, 3 x 16), query blocks past whole tiles,
    zero rows or none, heads of 32 and 64, large terms, one and two threads."""
    lib.geosam_rowcol_attention.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(1)
    with alternating_threads() as use:
        for i, (nb, nq, nh, d, hh, ww, zero_rows, round_bias) in enumerate((
                (2, 201, 3, 32, 72, 72, 1, True), (1, 17, 2, 64, 5, 23, 0, True), (3, 5, 1, 32, 3, 16, 2, False),
                (1, 33, 4, 32, 9, 40, 0, False))):  # fmt: skip
            use(i)
            q, k, v = (torch.randn((nb, n, nh, d), generator=gen).to(torch.bfloat16) for n in (nq, hh * ww, hh * ww))
            rh = (torch.randn((nb, nh, nq - zero_rows, hh), generator=gen) * 3).to(torch.bfloat16).float()
            rw = (torch.randn((nb, nh, nq - zero_rows, ww), generator=gen) * 3).to(torch.bfloat16).float()
            want = rowcol_reference(q, k, v, rh, rw, zero_rows, d**-0.5, round_bias)
            out = torch.empty((nb, nq, nh, d), dtype=torch.bfloat16)
            if _call_rowcol(lib, q, k, v, rh, rw, zero_rows, d**-0.5, round_bias, out) != 0:
                return False
            if float((out.double() - want).abs().max() / want.abs().max()) > TOLERANCE:
                log.warning("cpu_bias_attention.c: the AMX row and column attention does not match the reference; "
                            "not used")
                return False
    return True


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
    return _rowcol_matches_reference(lib)


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


def rowcol_takes(head_dim: int) -> bool:
    """Whether `rowcol_attention` takes heads of ``head_dim`` numbers (a multiple of 32 up to 128) and is in use here:
    callers check it before making the operands."""
    return head_dim % 32 == 0 and 32 <= head_dim <= 128 and available()


def rowcol_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor,
                     zero_rows: int, scale: float, round_bias: bool = True) -> torch.Tensor | None:  # fmt: skip
    """``softmax(scale q k^T + bias) v`` of every batch and head where the bias of query i and key ``r ww + c`` is
    ``rh[i, r] + rw[i, c]`` (rounded to bf16 with ``round_bias``, as a bf16 add of the terms gives the matrix), 0 for
    the first ``zero_rows`` queries, without writing that matrix: SAM 3's DETR decoder's vision cross-attention with its
    box relative-position bias. q (B, Q, H, d), k and v (B, hh ww, H, d): contiguous bf16 on the CPU, d a multiple of
    32 up to 128; rh (B, H, Q - zero_rows, hh) and rw (B, H, Q - zero_rows, ww) float32. Returns (B, Q, H * d) bf16,
    or None where the kernel is not in use or the operands do not fit it (the caller runs torch's attention)."""
    if q.ndim != 4 or k.ndim != 4 or rh.ndim != 4 or rw.ndim != 4:
        return None
    nb, nq, nh, d = q.shape
    hh, ww = rh.shape[-1], rw.shape[-1]
    tensors = (q, k, v, rh, rw)
    fits = (all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and all(t.dtype == torch.bfloat16 for t in (q, k, v)) and rh.dtype == rw.dtype == torch.float32
            and k.shape == v.shape == (nb, hh * ww, nh, d) and 0 <= zero_rows <= nq
            and rh.shape[:3] == rw.shape[:3] == (nb, nh, nq - zero_rows) and rowcol_takes(d)
            and 1 <= hh * ww <= 1 << 20 and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))  # fmt: skip
    lib = _library() if fits else None
    if lib is None:
        return None
    out = torch.empty((nb, nq, nh * d), dtype=torch.bfloat16)
    err = _call_rowcol(lib, q, k, v, rh, rw, zero_rows, scale, round_bias, out)
    if err == 2:
        raise MemoryError("cpu_bias_attention: no memory for the kernel's buffers")
    return out if err == 0 else None
