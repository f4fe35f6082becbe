"""SAM's mask decoder on AVX2 CPUs (float32): token -> image attention weights and their products, in C.

Three of the decoder's token -> image attentions end alike: scores (N, h, T, P) -> softmax over the P image
positions -> per-position scalings -> products of the weights with matrices of P rows, each prompt's own
(`geosam.models.fast_factored`'s and `geosam.models.fast_final`'s first-layer weights transposed, (N, P, R)) or
each head's for every prompt (an image side projected per head, (h, P, d)), and row sums. torch runs a softmax, a
multiply per scaling, a copy to stack the prompts' rows of each head and one product per matrix, the products of
inner size P at 46-67 GFLOP/s (AMD EPYC Zen 4, one thread). `softmax_products` writes each row's exponentials
once, in place of its scores, multiplies them while a prompt's rows are in L2, and applies the softmax's
normalisation to the results (all linear in the weights). Decoding 256 prompts on one chip (alternating in one
process, AMD EPYC Zen 4): 3.59 vs 3.76 s with one thread, 1.89 vs 1.95 s with two.

The same function as torch's ops up to float rounding (ATen's exponential, sums associated differently): the
library is used only after it agrees with `softmax_products_reference` in this process, built and cached by
`geosam.models.cpu_build` (where torch runs AVX2 or AVX-512 kernels; not with ``GEOSAM_CPU_KERNELS=0``); elsewhere
the callers run torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from geosam.models.device import cpu_flags

__all__ = ["WeightProducts", "amx_available", "available", "softmax_products", "softmax_products_reference",
           "wide_available"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_weights.c")
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


class WeightProducts(NamedTuple):
    """What `softmax_products` gives, with w = softmax(s) over the positions (N, h, T, P) and w1 = w scale1,
    w2 = w1 scale2 (a scale absent: 1); each None unless asked for."""

    sum: torch.Tensor | None  # (N, h T): sum_p w1
    y: torch.Tensor | None  # (N, h T): sum_p w1 y
    x1: torch.Tensor | None  # (N, h T, R1): w1 @ x1
    x2: torch.Tensor | None  # (N, h T, R2): w2 @ x2
    v: torch.Tensor | None  # (N, h, T, d): w2[:, h] @ v[h]


def softmax_products_reference(
    s: torch.Tensor,
    scale1: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    want_sum: bool = False,
    x1: torch.Tensor | None = None,
    scale2: torch.Tensor | None = None,
    x2: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    bf16: bool = False,
) -> WeightProducts:
    """torch's ops for what `softmax_products` computes; ``bf16``: what it computes with ``bf16=True`` on AMX tiles
    (no ``y``): the exponentials e = exp(s - max) and w1 = e scale1, w2 = w1 scale2 in float32, w1, w2, x1, x2 and v
    rounded to bf16, the products and sums in float64, normalised by sum_p e; returned as float32."""
    if bf16:
        return _bf16_reference(s, scale1, want_sum, x1, scale2, x2, v)
    n, nh, nt, p = s.shape
    w = torch.softmax(s, dim=-1)
    if scale1 is not None:
        w = w * scale1[:, None, None, :]
    wf = w.reshape(n, nh * nt, p)
    total = wf.sum(dim=-1) if want_sum else None
    ydot = torch.bmm(wf, y[:, :, None])[..., 0] if y is not None else None
    p1 = torch.bmm(wf, x1) if x1 is not None else None
    if scale2 is not None:
        w = w * scale2[:, None, None, :]
    p2 = torch.bmm(w.reshape(n, nh * nt, p), x2) if x2 is not None else None
    pv = torch.einsum("nhtp,hpd->nhtd", w, v) if v is not None else None
    return WeightProducts(total, ydot, p1, p2, pv)


def _bf16_reference(s: torch.Tensor, scale1: torch.Tensor | None, want_sum: bool, x1: torch.Tensor | None,
                    scale2: torch.Tensor | None, x2: torch.Tensor | None, v: torch.Tensor | None) -> WeightProducts:
    """`softmax_products_reference` with ``bf16``."""
    n, nh, nt, p = s.shape

    def r64(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16).double()

    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    w1 = e if scale1 is None else e * scale1[:, None, None, :]
    w2 = w1 if scale2 is None else w1 * scale2[:, None, None, :]
    z = e.double().sum(dim=-1).view(n, nh * nt)
    total = (w1.double().sum(dim=-1).view(n, nh * nt) / z).float() if want_sum else None
    p1 = (torch.bmm(r64(w1).view(n, nh * nt, p), r64(x1)) / z[..., None]).float() if x1 is not None else None
    p2 = (torch.bmm(r64(w2).view(n, nh * nt, p), r64(x2)) / z[..., None]).float() if x2 is not None else None
    pv = None
    if v is not None:
        pv = (torch.einsum("nhtp,hpd->nhtd", r64(w2), r64(v)) / z.view(n, nh, nt, 1)).float()
    return WeightProducts(total, None, p1, p2, pv)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return _P(None if t is None else t.data_ptr())


def _width(t: torch.Tensor | None) -> ctypes.c_int64:
    return _I64(0 if t is None else t.shape[-1])


def _call(lib: ctypes.CDLL, s: torch.Tensor, scale1: torch.Tensor | None, y: torch.Tensor | None, want_sum: bool,
          x1: torch.Tensor | None, scale2: torch.Tensor | None, x2: torch.Tensor | None,
          v: torch.Tensor | None, wide: bool = False, amx: bool = False) -> WeightProducts | None:
    """The kernel's outputs, or None where it did not run; ``amx``: geosam_softmax_products_amx (no ``y``; ``s`` only
    read), else geosam_softmax_products (``s`` overwritten)."""
    n, nh, nt, p = s.shape
    total = s.new_empty((n, nh * nt)) if want_sum else None
    ydot = s.new_empty((n, nh * nt)) if y is not None else None
    p1 = s.new_empty((n, nh * nt, x1.shape[-1])) if x1 is not None else None
    p2 = s.new_empty((n, nh * nt, x2.shape[-1])) if x2 is not None else None
    pv = s.new_empty((n, nh, nt, v.shape[-1])) if v is not None else None
    threads = ctypes.c_int(torch.get_num_threads())
    if amx:
        assert y is None
        rc = lib.geosam_softmax_products_amx(
            _ptr(s), _I64(n), _I64(nh), _I64(nt), _I64(p), _ptr(scale1), _ptr(total), _ptr(x1), _width(x1), _ptr(p1),
            _ptr(scale2), _ptr(x2), _width(x2), _ptr(p2), _ptr(v), _width(v), _ptr(pv), threads,
        )  # fmt: skip
        rc = {0: 0, 2: -2}.get(rc, -1)
    else:
        rc = lib.geosam_softmax_products(
            _ptr(s), _I64(n), _I64(nh), _I64(nt), _I64(p), _ptr(scale1), _ptr(y), _ptr(total), _ptr(ydot), _ptr(x1),
            _width(x1), _ptr(p1), _ptr(scale2), _ptr(x2), _width(x2), _ptr(p2), _ptr(v), _width(v), _ptr(pv), threads,
            ctypes.c_int(int(wide)),
        )  # fmt: skip
    if rc == -2:
        raise MemoryError("cpu_weights: out of memory for the products' buffers")
    return WeightProducts(total, ydot, p1, p2, pv) if rc == 0 else None


#: the AMX products' load checks' cases (n, nh, nt, r, d, p): SAM's final attention's shapes (4 used tokens: 4 heads
#: a row tile; x1 and x2 of 56 columns, 3.5 tiles), 7 tokens (2 heads), heads of 32 numbers, 6 heads (3 a tile), a
#: chunk of positions and a part of one (288), columns past a group of four tiles (r 72)
_AMX_CASES = ((2, 8, 4, 56, 16, 4096), (2, 8, 7, 56, 16, 64), (1, 2, 4, 24, 32, 96), (3, 6, 4, 72, 16, 288))


def _amx_agrees(lib: ctypes.CDLL) -> bool:
    """The AMX kernel against `softmax_products_reference` with ``bf16`` (within 1e-4 of each output's largest), with
    every input the final attention gives it and with none but v."""
    lib.geosam_softmax_products_amx.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(2)
    for n, nh, nt, r, d, p in _AMX_CASES:
        s = torch.randn((n, nh, nt, p), generator=gen) * 8.0
        sc1, sc2 = torch.rand((n, p), generator=gen) + 0.5, torch.rand((n, p), generator=gen) + 0.5
        x1, x2 = torch.randn((n, p, r), generator=gen), torch.randn((n, p, r), generator=gen)
        v = torch.randn((nh, p, d), generator=gen)
        for sc1_, total, x1_, sc2_, x2_ in ((sc1, True, x1, sc2, x2), (None, False, None, None, None)):
            want = softmax_products_reference(s, sc1_, None, total, x1_, sc2_, x2_, v, bf16=True)
            got = _call(lib, s, sc1_, None, total, x1_, sc2_, x2_, v, amx=True)
            if got is None:
                return False
            for a, b in zip(got, want, strict=True):
                if (a is None) != (b is None):
                    return False
                if a is not None and b is not None and not torch.allclose(a, b, rtol=0,
                                                                          atol=1e-4 * float(b.abs().max())):
                    return False
    return True


#: the load checks' cases (n, nh, nt, r, d, p): partial register tiles (rows and 8-wide columns), several blocks of
#: positions (SAM: 8 heads x 7 tokens, r 56, d 16, p 4096)
_CASES = ((2, 2, 7, 56, 16, 528), (3, 1, 4, 8, 8, 16), (1, 3, 5, 24, 16, 264))


def _cases(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, tuple[Any, Any, bool, Any, Any, Any, Any]]]:
    """scores (large) and every combination of the other inputs the decoder asks for, for each of `_CASES`"""
    for n, nh, nt, r, d, p in _CASES:
        s = torch.randn((n, nh, nt, p), generator=gen) * 8.0
        sc1, sc2 = torch.rand((n, p), generator=gen) + 0.5, torch.rand((n, p), generator=gen) + 0.5
        y = torch.randn((n, p), generator=gen)
        x1, x2 = torch.randn((n, p, r), generator=gen), torch.randn((n, p, r), generator=gen)
        v = torch.randn((nh, p, d), generator=gen)
        yield s, (sc1, y, False, x1, None, None, v)
        yield s, (sc2, None, True, x1, sc1, x2, v)
        yield s, (None, None, False, None, None, None, v)


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    """`softmax_products` against `softmax_products_reference` here on `_cases`."""
    lib.geosam_softmax_products.restype = ctypes.c_int
    for s, args in _cases(torch.Generator().manual_seed(0)):
        want = softmax_products_reference(s, *args)
        got = _call(lib, s.clone(), *args)
        if got is None:
            return False
        for a, b in zip(got, want, strict=True):
            if a is None or b is None:
                if (a is None) != (b is None):
                    return False
            elif not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    return load(_SOURCE, _agrees_with_torch, "softmax and products", AVX2_AND_WIDER)  # torch's to rounding


def available() -> bool:
    """Whether the compiled kernel is in use in this process."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def wide_available() -> bool:
    """Whether the products run their 16-column panels in AVX-512 registers (12 rows a tile, two panels at a time)
    and the exponentials 16 positions a step: the kernel in use, a CPU with AVX-512, and every output bit for bit the
    AVX2 path's here (each the same chain of operations) on `_cases`."""
    lib = _library()
    if lib is None or "avx512f" not in cpu_flags():
        return False
    for s, args in _cases(torch.Generator().manual_seed(1)):
        narrow, wide = _call(lib, s.clone(), *args), _call(lib, s.clone(), *args, wide=True)
        if narrow is None or wide is None or not all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(narrow, wide, strict=True)
        ):
            log.warning("cpu_weights.c: the AVX-512 products differ from the AVX2 ones here; AVX2 is used")
            return False
    return True


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether `softmax_products` with ``bf16=True`` runs on AMX tiles here (Intel Xeon): the kernel in use, a CPU
    with AMX bf16 and AVX-512 BF16, the tiles granted to this process, and the products
    `softmax_products_reference`'s with ``bf16`` on `_AMX_CASES` (`_amx_agrees`)."""
    from geosam.models.cpu_build import amx_checked

    return amx_checked(_library(), "cpu_weights.c", "products", _amx_agrees)


def softmax_products(
    s: torch.Tensor,
    scale1: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    want_sum: bool = False,
    x1: torch.Tensor | None = None,
    scale2: torch.Tensor | None = None,
    x2: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    bf16: bool = False,
) -> WeightProducts | None:
    """The softmax of the scores ``s`` (N, h, T, P) over the positions and its products (`WeightProducts`) in one
    call, ``s`` used as scratch (overwritten); or None where the kernel does not run (then
    `softmax_products_reference`'s ops apply, ``s`` untouched). scale1, scale2, y: (N, P); x1, x2 (N, P, R); v
    (h, P, d); P, R and d multiples of 8; ``s`` contiguous. ``bf16`` (the bf16 dtype; SAM's final attention): on AMX
    tiles where `amx_available`, no ``y``, P a multiple of 32, at most 16 tokens and d a multiple of 16, the weights
    and the matrices rounded to bf16 (`softmax_products_reference` with ``bf16``; free in masks:
    benchmarks/check_final_scores_bf16.py), ``s`` left as it is; else as without."""
    given = [t for t in (scale1, y, x1, scale2, x2, v) if t is not None]
    if s.dim() != 4 or not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (s, *given)):
        return None
    n, nh, _, p = s.shape
    shapes = (all(t is None or t.shape == (n, p) for t in (scale1, y, scale2))
              and all(t is None or (t.dim() == 3 and t.shape[:2] == (n, p) and t.shape[2] % 8 == 0) for t in (x1, x2))
              and (v is None or (v.dim() == 3 and v.shape[:2] == (nh, p) and v.shape[2] % 8 == 0)))  # fmt: skip
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (s, *given))
    if not shapes or p % 8 or not s.is_contiguous() or grad:
        return None
    lib = _library()
    if lib is None:
        return None
    scale1, y, x1, scale2, x2, v = (None if t is None else t.contiguous() for t in (scale1, y, x1, scale2, x2, v))
    if bf16 and y is None and p % 32 == 0 and s.shape[2] <= 16 and (v is None or v.shape[2] % 16 == 0):
        got = _call(lib, s, scale1, None, want_sum, x1, scale2, x2, v, amx=True) if amx_available() else None
        if got is not None:
            return got
    return _call(lib, s, scale1, y, want_sum, x1, scale2, x2, v, wide_available())
