"""SAM's mask decoder on AVX2 CPUs (float32): the heads' products of every prompt against one image side, in C.

The decoder's most frequent product multiplies every prompt's token rows by an image side projected per head
(inner size 16: the first layer's image -> token scores, the factored second layer's scores, the final
attention's, the layer norms' cross terms; `geosam.models.fast_twoway`, `geosam.models.fast_factored`,
`geosam.models.fast_final`), and adds further terms to the (N, h, T, P) result. torch runs one product per prompt,
reading the (h, 16, P) side each time, then one pass over the result per term. `cpu_heads.c` reads a block of the
side once for all prompts and adds every term while the block's results are in registers:

* `headdot`: ``out[n, h] (+)= a[n, h] @ x[h]`` (83 vs 46 GFLOP/s against torch's loop over prompts, SAM's sizes,
  AMD EPYC Zen 4, one thread);
* `factored_scores`: the factored second layer's scores, five torch ops in one pass;
* `final_scores`: the final attention's scores against the unwritten second image side, seven ops in one pass;
* `proj_dots`: the norms' cross terms without the (N, h, T, P) products written.

One chip, 16 x 16 points, one thread, Zen 4: decode 4.18-4.24 vs 4.52-4.56 s. On AVX-512 CPUs the kernels run in
16-lane registers (`wide_available`, the same bits): Intel Xeon with AMX, one thread, float32 decode 3.24-3.34 vs
3.44-3.57 s with the two scores kernels so; with all four and a head's 7 tokens in one tile of 8 rows, the four
kernels 2.45 -> 2.26 s of a 32 x 32 decode (docs/performance.md, twenty-ninth round). The same functions as torch's
ops up to float rounding (the sums associated differently): the library is used only after it agrees with them in
this process (`_agrees_with_torch`), built and cached by `geosam.models.cpu_build` (where torch runs AVX2 or AVX-512
kernels; not with ``GEOSAM_CPU_KERNELS=0``); elsewhere the callers run torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from geosam.models.cpu_heads_reference import factored_scores_reference, final_scores_reference, proj_dots_reference
from geosam.models.cpu_heads_reference import final_inputs as _final_inputs
from geosam.models.cpu_heads_reference import scores_inputs as _scores_inputs
from geosam.models.device import cpu_flags

__all__ = [
    "amx_available", "available", "factored_scores", "factored_scores_reference", "final_scores",
    "final_scores_reference", "headdot", "proj_dots", "proj_dots_reference", "wide_available",
]  # fmt: skip

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_heads.c")
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def _call_headdot(lib: ctypes.CDLL, a: torch.Tensor, x: torch.Tensor, out: torch.Tensor, accumulate: bool,
                  wide: bool = False) -> bool:
    n, nh, nt, dk = a.shape
    rc = lib.geosam_headdot(
        _P(a.data_ptr()), _I64(a.stride(0)), _I64(a.stride(1)), _I64(a.stride(2)), _P(x.data_ptr()),
        _P(out.data_ptr()), _I64(out.stride(0)), _I64(out.stride(1)), _I64(out.stride(2)), _I64(n), _I64(nh),
        _I64(nt), _I64(dk), _I64(x.shape[-1]), ctypes.c_int(int(accumulate)), ctypes.c_int(torch.get_num_threads()),
        ctypes.c_int(int(wide)),
    )  # fmt: skip
    return rc == 0


def _call_factored_scores(lib: ctypes.CDLL, f: torch.Tensor, probs0: torch.Tensor, rows: torch.Tensor,
                          parts: tuple[torch.Tensor, torch.Tensor], fsum: torch.Tensor, mean0: torch.Tensor,
                          rstd0: torch.Tensor, s: torch.Tensor, wide: bool = False) -> bool:
    n, nh, nt, dk = rows.shape
    rc = lib.geosam_factored_scores(
        _P(f.data_ptr()), _P(probs0.data_ptr()), _I64(probs0.shape[1]), _P(rows.data_ptr()), _I64(rows.stride(0)),
        _I64(rows.stride(1)), _I64(rows.stride(2)), _P(parts[0].data_ptr()), _P(parts[1].data_ptr()),
        _P(fsum.data_ptr()), _P(mean0.data_ptr()), _P(rstd0.data_ptr()), _P(s.data_ptr()), _I64(n), _I64(nh),
        _I64(nt), _I64(dk), _I64(s.shape[-1]), ctypes.c_int(torch.get_num_threads()), ctypes.c_int(int(wide)),
    )  # fmt: skip
    if rc == 2:
        raise MemoryError("cpu_decoder: out of memory for the scores' buffers")
    return rc == 0


def _call_final_scores(lib: ctypes.CDLL, f: tuple[torch.Tensor, torch.Tensor], probs: tuple[torch.Tensor, torch.Tensor],
                       q: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor,
                       scales: tuple[torch.Tensor, torch.Tensor], s: torch.Tensor, wide: bool = False,
                       amx: bool = False) -> bool:
    """The float32 kernel (``wide``: in AVX-512 registers) or, with ``amx``, the bf16 one on AMX tiles."""
    n, nh, nt, dk = q.shape
    args = (
        _P(f[0].data_ptr()), _P(f[1].data_ptr()), _P(probs[0].data_ptr()), _P(probs[1].data_ptr()),
        _I64(probs[0].shape[1]), _P(q.data_ptr()), _I64(q.stride(0)), _I64(q.stride(1)), _I64(q.stride(2)),
        _P(keys[0].data_ptr()), _P(keys[1].data_ptr()), _P(c.data_ptr()), _P(scales[0].data_ptr()),
        _P(scales[1].data_ptr()), _P(s.data_ptr()), _I64(n), _I64(nh), _I64(nt), _I64(dk), _I64(s.shape[-1]),
        ctypes.c_int(torch.get_num_threads()),
    )  # fmt: skip
    rc = lib.geosam_final_scores_amx(*args) if amx else lib.geosam_final_scores(*args, ctypes.c_int(int(wide)))
    if rc == 2:
        raise MemoryError("cpu_decoder: out of memory for the scores' buffers")
    return rc == 0


def _call_proj_dots(lib: ctypes.CDLL, v: torch.Tensor, xw: torch.Tensor, probs: torch.Tensor, out: torch.Tensor,
                    wide: bool = False) -> bool:
    n, nh, nt, dk = v.shape
    rc = lib.geosam_proj_dots(
        _P(v.data_ptr()), _I64(v.stride(0)), _I64(v.stride(1)), _I64(v.stride(2)), _P(xw.data_ptr()),
        _P(probs.data_ptr()), _P(out.data_ptr()), _I64(n), _I64(nh), _I64(nt), _I64(dk), _I64(xw.shape[-1]),
        ctypes.c_int(torch.get_num_threads()), ctypes.c_int(int(wide)),
    )  # fmt: skip
    return rc == 0


#: the load checks' shapes of `headdot` (n, nh, nt, dk, p): partial row tiles, odd inner sizes, position tails
_HEADDOT_SHAPES = ((3, 2, 7, 16, 40), (1, 3, 5, 9, 24), (2, 1, 4, 16, 64))


def _headdot_agrees(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`headdot` against torch's product, writing and accumulating, rows strided, tails of the position tiles."""
    lib.geosam_headdot.restype = ctypes.c_int
    for n, nh, nt, dk, p in _HEADDOT_SHAPES:
        a = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)  # rows strided as the decoder's
        x = torch.randn((nh, dk, p), generator=gen)
        base = torch.randn((n, nh, nt, p), generator=gen)
        want = base + torch.einsum("nhtk,hkp->nhtp", a, x)
        got = base.clone()
        if not _call_headdot(lib, a, x, got, True) or not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
            return False
        got = torch.full_like(base, float("nan"))
        if not _call_headdot(lib, a, x, got, False) or not torch.allclose(got, want - base, rtol=1e-5, atol=1e-5):
            return False
    return True


#: the load checks' shapes of the two scores kernels: (n, nh, nt, dk, r, p), partial row tiles, odd inner sizes,
#: positions in whole 32-position blocks and not (SAM: 8 heads x 7 tokens, dk 16, r 7, p 4096)
_SCORES_SHAPES = ((2, 2, 7, 16, 14, 48), (1, 3, 3, 5, 9, 16), (3, 1, 4, 8, 1, 32), (2, 8, 7, 16, 7, 96))


def _scores_agree(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`factored_scores` against `factored_scores_reference` (`_SCORES_SHAPES`)."""
    lib.geosam_factored_scores.restype = ctypes.c_int
    for shape in _SCORES_SHAPES:
        args = _scores_inputs(gen, *shape)
        want = factored_scores_reference(*args)
        got = torch.full_like(want, float("nan"))
        if not _call_factored_scores(lib, *args, got):
            return False
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
            return False
    return True


def _final_scores_agree(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`final_scores` against `final_scores_reference` (`_SCORES_SHAPES`)."""
    lib.geosam_final_scores.restype = ctypes.c_int
    for shape in _SCORES_SHAPES:
        args = _final_inputs(gen, *shape)
        want = final_scores_reference(*args)
        got = torch.full_like(want, float("nan"))
        if not _call_final_scores(lib, *args, got):
            return False
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
            return False
    return True


#: the AMX scores' load checks' shapes (n, nh, nt, dk, r, p): SAM's final attention (4 used tokens: 4 heads a tile;
#: 7: 2), heads that do not divide by the most that fit (6 heads of 4 tokens: 3), queries over several inner tiles
#: (8 heads of 1 token: 128), one head a tile (16 tokens), small inner sizes, a second chunk of positions (256) with
#: one block
_AMX_SHAPES = ((2, 8, 4, 16, 56, 96), (2, 8, 7, 16, 56, 64), (2, 6, 4, 16, 40, 32), (3, 8, 1, 16, 14, 64),
               (1, 2, 16, 16, 3, 32), (1, 3, 5, 8, 9, 32), (2, 8, 4, 16, 56, 288))


def _amx_scores_agree(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`final_scores` on AMX tiles against `final_scores_reference` with ``bf16`` (`_AMX_SHAPES`; the queries
    strided as the decoder's): the factors rounded to bf16 and nothing else, the sums float32 (within 1e-4)."""
    lib.geosam_final_scores_amx.restype = ctypes.c_int
    for shape in _AMX_SHAPES:
        args = _final_inputs(gen, *shape)
        want = final_scores_reference(*args, bf16=True)
        got = torch.full_like(want, float("nan"))
        if not _call_final_scores(lib, *args, got, amx=True) or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return False
    return True


#: the load checks' shapes of `proj_dots` (n, nh, nt, dk, p)
_PROJ_DOTS_SHAPES = ((2, 2, 7, 16, 48), (1, 3, 1, 5, 16), (3, 1, 4, 8, 32), (2, 2, 3, 16, 528))


def _proj_dots_agree(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`proj_dots` against `proj_dots_reference`: odd inner sizes, one token, strided rows, runs of positions
    with a 16-position tail."""
    lib.geosam_proj_dots.restype = ctypes.c_int
    for n, nh, nt, dk, p in _PROJ_DOTS_SHAPES:
        v = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
        xw = torch.randn((nh, dk, p), generator=gen)
        probs = torch.rand((n, nh, nt, p), generator=gen)
        got = torch.full((n, p), float("nan"))
        if not _call_proj_dots(lib, v, xw, probs, got):
            return False
        if not torch.allclose(got, proj_dots_reference(v, xw, probs), rtol=1e-5, atol=1e-5):
            return False
    return True


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    """Whether every kernel gives torch's ops to float rounding here (partial tiles, odd inner sizes, strided rows)."""
    gen = torch.Generator().manual_seed(0)
    return _headdot_agrees(lib, gen) and _scores_agree(lib, gen) and _final_scores_agree(lib, gen) and _proj_dots_agree(lib, gen)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    return load(_SOURCE, _agrees_with_torch, "heads' products", AVX2_AND_WIDER)  # torch's to rounding at any width


def available() -> bool:
    """Whether the compiled kernels are in use in this process."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def wide_available() -> bool:
    """Whether the kernels run in AVX-512 registers (`factored_scores` and `final_scores` 8 token rows x 32 positions a
    tile where P is a multiple of 32, `headdot` 8 rows x 32, `proj_dots` 32 positions): the kernels in use, a CPU
    with AVX-512, and the wide outputs bit for bit the AVX2 ones here (each output the same chain of operations) on
    `_SCORES_SHAPES` and the load checks' shapes. Intel Xeon with AMX, one thread, SAM's 16 prompts x 8 heads x 7
    tokens at 4096 positions: see docs/performance.md (twenty-third and twenty-ninth rounds)."""
    lib = _library()
    if lib is None or "avx512f" not in cpu_flags():
        return False
    gen = torch.Generator().manual_seed(16)
    for shape in _SCORES_SHAPES:
        sa, fa = _scores_inputs(gen, *shape), _final_inputs(gen, *shape)
        outs = [torch.full((shape[0], shape[1], shape[2], shape[5]), float("nan")) for _ in range(4)]
        done = (_call_factored_scores(lib, *sa, outs[0]) and _call_factored_scores(lib, *sa, outs[1], True)
                and _call_final_scores(lib, *fa, outs[2]) and _call_final_scores(lib, *fa, outs[3], True))  # fmt: skip
        if not (done and torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])):
            log.warning("cpu_heads.c: the AVX-512 scores differ from the AVX2 ones here; AVX2 is used")
            return False
    if not _products_wide_same(lib, gen):
        log.warning("cpu_heads.c: the AVX-512 head products differ from the AVX2 ones here; AVX2 is used")
        return False
    return True


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether `final_scores` with ``bf16=True`` runs on AMX tiles here (Intel Xeon): the kernels in use, a CPU with
    AMX bf16 and AVX-512 BF16, the tiles granted to this process, and the scores `final_scores_reference`'s with
    ``bf16`` on `_AMX_SHAPES` (`_amx_scores_agree`)."""
    from geosam.models.cpu_build import amx_checked

    return amx_checked(_library(), "cpu_heads.c", "final scores",
                       lambda lib: _amx_scores_agree(lib, torch.Generator().manual_seed(24)))


def _products_wide_same(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """`headdot`'s AVX-512 tiles (written and accumulated; blocks ending 8, 16, 24 positions into a tile) and
    `proj_dots` in AVX-512 registers (odd inner sizes, 16-position tails) against their AVX2 paths, bit for bit."""
    for n, nh, nt, dk, p in _HEADDOT_SHAPES + ((3, 2, 7, 16, 4096), (2, 1, 3, 5, 280), (1, 2, 9, 16, 264)):
        a = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
        x, base = torch.randn((nh, dk, p), generator=gen), torch.randn((n, nh, nt, p), generator=gen)
        for accumulate in (True, False):
            got = [base.clone(), base.clone()]
            if not (_call_headdot(lib, a, x, got[0], accumulate) and _call_headdot(lib, a, x, got[1], accumulate, True)
                    and torch.equal(got[0], got[1])):  # fmt: skip
                return False
    for n, nh, nt, dk, p in _PROJ_DOTS_SHAPES + ((3, 8, 7, 16, 4096),):
        v = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
        xw, probs = torch.randn((nh, dk, p), generator=gen), torch.rand((n, nh, nt, p), generator=gen)
        got = [torch.full((n, p), float("nan")), torch.full((n, p), float("nan"))]
        if not (_call_proj_dots(lib, v, xw, probs, got[0]) and _call_proj_dots(lib, v, xw, probs, got[1], True)
                and torch.equal(got[0], got[1])):  # fmt: skip
            return False
    return True


def headdot(a: torch.Tensor, x: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> bool:
    """``out[n, h] (+)= a[n, h] @ x[h]`` for every prompt n and head h, in one pass over x per block of positions
    (True), or nothing done where the kernel does not run (False). a (N, H, T, K) with unit stride in K, x (H, K, P)
    contiguous, out (N, H, T, P) with unit stride in P (any other strides); P a multiple of 8. The decoder's
    products of token rows against an image side projected per head (`geosam.models.fast_twoway`,
    `geosam.models.fast_factored`, `geosam.models.fast_final`): torch runs one product per prompt, reading x each
    time."""
    tensors = (a, x, out)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() in (3, 4) for t in tensors):
        return False
    if a.dim() != 4 or x.dim() != 3 or out.dim() != 4:
        return False
    n, nh, nt, dk = a.shape
    p = x.shape[-1]
    if x.shape != (nh, dk, p) or out.shape != (n, nh, nt, p) or p % 8 or a.stride(3) != 1 or out.stride(3) != 1:
        return False
    if not x.is_contiguous() or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return False
    lib = _library()
    return lib is not None and _call_headdot(lib, a, x, out, accumulate, wide_available())


def factored_scores(f: torch.Tensor, probs0: torch.Tensor, rows: torch.Tensor,
                    parts: tuple[torch.Tensor, torch.Tensor], fsum: torch.Tensor, mean0: torch.Tensor,
                    rstd0: torch.Tensor) -> torch.Tensor | None:
    """The factored second layer's scores (`geosam.models.fast_factored`) in one pass per block of positions, (N, h,
    T, P), or None where the kernel does not run (then `factored_scores_reference`'s ops apply)::

        ((f[n, h T + t] . probs0[n, :, p] + rows[n, h, t] . parts[0][h, :, p]) - fsum[n, h, t] mean0[n, p])
            rstd0[n, p] + rows[n, h, t] . parts[1][h, :, p]

    f (N, h T, R), probs0 (N, R, P), rows (N, h, T, K) with unit stride in K, parts (h, K, P), fsum (N, h, T),
    mean0 and rstd0 (N, P); P a multiple of 16."""
    tensors = (f, probs0, rows, *parts, fsum, mean0, rstd0)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) or rows.dim() != 4:
        return None
    n, nh, nt, dk = rows.shape
    r, p = probs0.shape[-2:]
    shapes = (f.shape == (n, nh * nt, r) and probs0.shape == (n, r, p) and fsum.shape == (n, nh, nt)
              and mean0.shape == rstd0.shape == (n, p) and all(x.shape == (nh, dk, p) for x in parts))  # fmt: skip
    if not shapes or p % 16 or rows.stride(3) != 1 or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return None
    lib = _library()
    if lib is None:
        return None
    f, probs0, fsum, mean0, rstd0 = (t.contiguous() for t in (f, probs0, fsum, mean0, rstd0))
    parts = (parts[0].contiguous(), parts[1].contiguous())
    s = torch.empty((n, nh, nt, p), dtype=torch.float32)
    return s if _call_factored_scores(lib, f, probs0, rows, parts, fsum, mean0, rstd0, s, wide_available()) else None


def final_scores(f: tuple[torch.Tensor, torch.Tensor], probs: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor,
                 keys: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor,
                 scales: tuple[torch.Tensor, torch.Tensor], bf16: bool = False) -> torch.Tensor | None:
    """The final attention's scores against the never-written second image side (`geosam.models.fast_final`) in one
    pass per block of positions, (N, h, T, P), or None where the kernel does not run (then
    `final_scores_reference`'s ops apply)::

        (((f[0][n, h T + t] . probs[0][n, :, p] + q[n, h, t] . keys[0][h, :, p]) scales[0][n, p] + c[n, h T + t])
            + f[1][n, h T + t] . probs[1][n, :, p]) scales[1][n, p] + q[n, h, t] . keys[1][h, :, p]

    f (N, h T, R) each, probs (N, R, P) each, q (N, h, T, K) with unit stride in K, keys (h, K, P) each, c (N, h T),
    scales (N, P) each; P a multiple of 16. ``bf16`` (the bf16 dtype): on AMX tiles where `amx_available` and P is a
    multiple of 32, the products on the factors rounded to bf16 (`final_scores_reference` with ``bf16``; free in
    masks: benchmarks/check_final_scores_bf16.py), else as without."""
    tensors = (*f, *probs, q, *keys, c, *scales)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) or q.dim() != 4:
        return None
    n, nh, nt, dk = q.shape
    r, p = probs[0].shape[-2:]
    shapes = (all(x.shape == (n, nh * nt, r) for x in f) and all(x.shape == (n, r, p) for x in probs)
              and all(x.shape == (nh, dk, p) for x in keys) and c.shape == (n, nh * nt)
              and all(x.shape == (n, p) for x in scales))  # fmt: skip
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not shapes or p % 16 or q.stride(3) != 1 or grad:
        return None
    lib = _library()
    if lib is None:
        return None
    f = (f[0].contiguous(), f[1].contiguous())
    probs = (probs[0].contiguous(), probs[1].contiguous())
    keys = (keys[0].contiguous(), keys[1].contiguous())
    scales = (scales[0].contiguous(), scales[1].contiguous())
    s = torch.empty((n, nh, nt, p), dtype=torch.float32)
    c = c.contiguous()
    if bf16 and p % 32 == 0 and amx_available() and _call_final_scores(lib, f, probs, q, keys, c, scales, s, amx=True):
        return s
    return s if _call_final_scores(lib, f, probs, q, keys, c, scales, s, wide_available()) else None


def proj_dots(v: torch.Tensor, xw: torch.Tensor, probs: torch.Tensor) -> torch.Tensor | None:
    """``sum_{h, t} probs[n, h, t, p] (v[n, h, t] . xw[h, :, p])`` (N, P) without the (N, h, T, P) products written
    (`geosam.models.fast_final`'s norm statistics), or None where the kernel does not run (then
    `proj_dots_reference`'s ops apply). v (N, h, T, K) with unit stride in K, xw (h, K, P), probs (N, h, T, P);
    P a multiple of 16."""
    tensors = (v, xw, probs)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) or v.dim() != 4:
        return None
    n, nh, nt, dk = v.shape
    p = xw.shape[-1]
    if xw.shape != (nh, dk, p) or probs.shape != (n, nh, nt, p) or p % 16 or v.stride(3) != 1:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    lib = _library()
    if lib is None:
        return None
    out = torch.empty((n, p), dtype=torch.float32)
    return out if _call_proj_dots(lib, v, xw.contiguous(), probs.contiguous(), out, wide_available()) else None
