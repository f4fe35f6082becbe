"""Float32 attention of SAM's image encoder on AVX-512 CPUs, fused in C: torch's results to float rounding.

Where torch runs its AVX-512 kernels (AMD Zen 4 / Zen 5, Intel Xeons), the bit-for-bit attention kernels of
`geosam.models.cpu_kernels` do not apply (torch's softmax rounds differently there), and
`geosam.models.fast_encoder` ran the attention as torch ops: a block of scores written by one product, then read
and written again by each of the two relative-position adds, the softmax's passes and the values product.
`cpu_attention512.c` runs a whole layer (or one window) of it, every head, 24 queries at a time: their scores
from a register-tiled product against the keys packed in 16-wide panels, the relative positions, maximum,
exponentials and sum in two passes over rows in cache, the values product in blocks of keys that stay in L2,
scaled by 1 / sum at the end. Both products run at the machine's matmul peak.

AMD EPYC Zen 4, one thread, one global layer of a ViT-B at 1024 px (12 heads, 4096 tokens): the attention from
the qkv projection to the heads' outputs 0.56 s vs 0.78-0.80 s (scores 0.23 s and values 0.22 s at ~111 GFLOP/s,
the relative positions and softmax 0.06 s); two threads 0.29 vs 0.44-0.47 s.

With ``bf16=True`` on CPUs with AVX-512 BF16 (`bf16_available`) both products take bf16 numbers two at a time
(``vdpbf16ps``, sums in float32): for the bf16 encoder, whose q, k, v are bf16 numbers already, only the
probabilities' rounding to bf16 is lost (~1e-3 of the outputs' scale at most). Zen 4, one thread: a global layer
0.345 vs 0.56 s in float32, a windowed one 0.044 vs 0.053 s.

Whole float32 maps whose width is a multiple of 32 (a ViT's 64 x 64 global layers) run 96 queries a block in chunks
of 256 keys with a running softmax instead (``attend_head_flash``: a row's partial sums and values rescaled by
e^(old - new maximum) where a chunk raises it): a block's scores over all keys (48 x 4096, 768 KiB) beside a
head's keys and values (1 + 1 MiB) overflow a 2 MiB L2, so keys and values streamed in from L3 for every block;
in chunks they stream once per 96 queries beside a 100 KiB chunk of scores. Intel Xeon with AMX, a ViT-B global
layer, alternating in one process: one thread 382 -> 365 ms on a quiet host, 352 -> 329 ms with the other core
running the same kernel (the benchmark's side-by-side runs), two threads 179 -> 171 ms; in the encoder 4 %
of the global layers' attention. The same function to rounding (the row's sums associated by chunks):
embeddings ~1e-6 of their scale from the previous path's. ``geosam_attention512_flash(0)`` runs the previous
path (the tests' reference).

On CPUs with AMX (`amx_available`) the bf16 products run on AMX tiles instead (``tdpbf16ps``: the same bf16 numbers,
sums in float32 in the tiles' order; 32 queries a block; heads of a multiple of 16 numbers, the queries' and keys'
rows padded with zeros to the tiles' 32 where they are not a multiple of 32: ViT-H's 80): Intel Xeon with AMX, one
thread, a ViT-B global layer 0.14 s (float32 0.44 s, AVX-512 BF16 products 0.58 s: ``vdpbf16ps`` runs no faster than
float32 FMAs on that CPU), a windowed one 0.032 s (0.045 / 0.056 s). bf16 tokens without relative tables may have
heads of a multiple of 8 (SAM 2's Hiera-B+ 56, Hiera-L 72): their values and outputs padded with zeros to the tiles'
16 columns inside the kernel, the tokens' next numbers never read (a bf16 Hiera-B+ encode 1.875 -> 1.656 s, Hiera-L
3.301 -> 3.118 s, the same machine, 2 threads: `benchmarks/bench_hiera_heads.py`).

The sums run in another order than torch's and ``expf`` is Cephes' polynomial, so the outputs equal torch's to
float rounding (~1e-7 of the outputs' scale), not bit for bit: the library is used only after it has matched a
float64 reference within `TOLERANCE` on test data in this process, only where torch itself runs AVX-512 kernels
(`geosam.models.cpu_build`), never with ``GEOSAM_CPU_KERNELS=0``; elsewhere the callers run torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from geosam.models.cpu_build import alternating_threads, amx_checked, load
from geosam.models.cpu_kernels import transposed_tables
from geosam.models.device import cpu_flags

__all__ = ["BF16_TOLERANCE", "TOLERANCE", "amx_available", "attention", "available", "bf16_available",
           "padded_windows", "reference", "reference_pooled", "takes"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_attention512.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int

#: ``geosam_attention512``'s modes: float32 products (0), bf16 products with AVX-512 BF16, bf16 products on AMX tiles.
BF16, AMX = 1, 2

#: Largest difference from a float64 reference the load-time check accepts, relative to the outputs' scale.
TOLERANCE = 1e-5
#: The same for the bf16 products on q, k, v that are bf16 numbers: the probabilities' rounding to bf16 (8 bits) is
#: what is left (~1e-3 measured).
BF16_TOLERANCE = 4e-3


def padded_windows(qkv: torch.Tensor, window: int, bias: torch.Tensor) -> torch.Tensor:
    """A map's qkv projection (H, W, 3C) in windows of ``window`` as ``window_partition`` makes them, the tokens past
    the map ``bias`` (the projection of a zero token): (H / window, W / window, window, window, 3C), rounded up."""
    hh, ww, c3 = qkv.shape
    py, px = -hh % window, -ww % window
    padded = torch.cat([qkv, bias.to(qkv.dtype).expand(hh, px, c3)], dim=1)
    padded = torch.cat([padded, bias.to(qkv.dtype).expand(py, ww + px, c3)], dim=0)
    return padded.view((hh + py) // window, window, (ww + px) // window, window, c3).permute(0, 2, 1, 3, 4)


def reference(
    qkv: torch.Tensor,
    num_heads: int,
    scale: float,
    tables: tuple[torch.Tensor, torch.Tensor] | None,
    window: int = 0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAM's attention (before its output projection) of a map's qkv projection (H, W, 3C) as the stock
    ``SamVisionAttention`` computes it, in qkv's dtype: (H, W, C). ``tables``: ``get_rel_pos``'s (h, h, d) and
    (w, w, d) for the attended grid, or None; ``window`` > 0: in windows of that size, the tokens past the map
    ``bias`` (the qkv projection of a zero token), as ``window_partition`` pads them."""
    hh, ww, c3 = qkv.shape
    if window > 0:
        assert bias is not None
        wins = padded_windows(qkv, window, bias)
        ny, nx = wins.shape[:2]
        outs = torch.stack([reference(w, num_heads, scale, tables) for w in wins.reshape(-1, window, window, c3)])
        outs = outs.view(ny, nx, window, window, -1).permute(0, 2, 1, 3, 4).reshape(ny * window, nx * window, -1)
        return outs[:hh, :ww]
    d = c3 // (3 * num_heads)
    q, k, v = qkv.reshape(hh * ww, 3, num_heads, d).permute(1, 2, 0, 3).unbind(0)  # (nh, N, d)
    attn = (q * scale) @ k.transpose(-2, -1)
    if tables is not None:
        qg = q.reshape(num_heads, hh, ww, d)
        rel_h = torch.einsum("nhwc,hkc->nhwk", qg, tables[0].to(q.dtype))
        rel_w = torch.einsum("nhwc,wkc->nhwk", qg, tables[1].to(q.dtype))
        attn = (attn.view(num_heads, hh, ww, hh, ww) + rel_h[..., None] + rel_w[:, :, :, None, :]).view_as(attn)
    out = torch.softmax(attn, dim=-1) @ v  # (nh, N, d)
    return out.permute(1, 0, 2).reshape(hh, ww, num_heads * d)


def reference_pooled(qkv: torch.Tensor, num_heads: int, scale: float, window: int, bias: torch.Tensor) -> torch.Tensor:
    """SAM 2's attention with pooled queries (``Sam2MultiScaleAttention`` with a query stride of 2), in qkv's dtype:
    the map's tokens in windows of ``window`` (even; those past the map ``bias``, the qkv projection of a zero token),
    each window's queries the 2 x 2 maxima of its tokens' q, attending to all its keys; (H // 2, W // 2, C)."""
    hh, ww, c3 = qkv.shape
    c, s = c3 // 3, window // 2
    d = c // num_heads
    wins = padded_windows(qkv, window, bias)  # (ny, nx, window, window, 3C)
    ny, nx = wins.shape[:2]
    q = wins[..., :c].reshape(ny, nx, s, 2, s, 2, c).amax(dim=(3, 5)).reshape(ny, nx, s * s, num_heads, d)
    k = wins[..., c: 2 * c].reshape(ny, nx, window * window, num_heads, d)
    v = wins[..., 2 * c:].reshape(ny, nx, window * window, num_heads, d)
    p = torch.softmax(torch.einsum("yxqhd,yxkhd->yxhqk", q * scale, k), dim=-1)
    out = torch.einsum("yxhqk,yxkhd->yxqhd", p, v).reshape(ny, nx, s, s, c).permute(0, 2, 1, 3, 4)
    return out.reshape(ny * s, nx * s, c)[: hh // 2, : ww // 2]


def _call(
    lib: ctypes.CDLL,
    qkv: torch.Tensor,
    num_heads: int,
    scale: float,
    tables_t: tuple[torch.Tensor, torch.Tensor] | None,
    out: torch.Tensor,
    window: int,
    bias: torch.Tensor | None,
    mode: int = 0,
    pool_queries: bool = False,
) -> int:
    hh, ww, c3 = qkv.shape
    th, tw = (None, None) if tables_t is None else (_P(tables_t[0].data_ptr()), _P(tables_t[1].data_ptr()))
    args = (
        _P(qkv.data_ptr()), _I64(qkv.stride(0)), _I64(qkv.stride(1)), _I64(hh), _I64(ww), _I64(window),
        None if bias is None else _P(bias.data_ptr()), _I64(num_heads), _I64(c3 // (3 * num_heads)),
        ctypes.c_float(scale), th, tw, _P(out.data_ptr()), _I64(out.stride(0)), _I64(out.stride(1)),
        _INT(torch.get_num_threads()), _INT(mode), _INT(int(qkv.dtype == torch.bfloat16)),
        _INT(int(out.dtype == torch.bfloat16)), _INT(int(pool_queries)),
    )  # fmt: skip
    return int(lib.geosam_attention512(*args))


def _matches_reference(lib: ctypes.CDLL, mode: int = 0, tokens_bf16: bool = False) -> bool:
    """Whether the kernel gives `reference` (in float64) within `TOLERANCE` on random maps here: a whole map whose
    keys end mid-panel, one in two chunks of keys (the float32 running softmax), windows that tile the map or leave
    padded strips, head sizes from 16 to 80 (with bf16 tokens 56 and 72 too, without tables), with and without tables,
    one and two threads. ``mode`` `BF16` or `AMX`:
    the kernel's bf16 products (with AVX-512 BF16 or on AMX tiles) on q, k, v that are bf16 numbers (as a bf16
    projection gives them), within `BF16_TOLERANCE` (the probabilities' rounding). ``tokens_bf16``: qkv (and the
    padded tokens' bias) given as bf16 tensors (`AMX` only)."""
    lib.geosam_attention512.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(512)
    cases = [
        (5, 7, 3, 32, True, 0), (14, 14, 2, 64, True, 0), (9, 11, 1, 80, False, 4), (10, 11, 2, 16, True, 4),
        (9, 11, 2, 64, True, 7), (12, 32, 2, 32, True, 0),
    ]  # fmt: skip
    if tokens_bf16:  # heads of a multiple of 8 (Hiera's), whole and windowed
        cases += [(9, 13, 2, 72, False, 0), (10, 11, 2, 56, False, 4)]
    with alternating_threads() as use:
        for i, (hh, ww, nh, d, rel, window) in enumerate(cases):
            use(i)
            side = (window or hh, window or ww)
            qkv = torch.randn((hh, ww, 3 * nh * d), generator=gen)
            bias = torch.randn(3 * nh * d, generator=gen)
            if mode:
                qkv, bias = qkv.bfloat16().float(), bias.bfloat16().float()
            tables = (
                torch.randn((side[0], side[0], d), generator=gen),
                torch.randn((side[1], side[1], d), generator=gen),
            )
            tables64 = (tables[0].double(), tables[1].double()) if rel else None
            want = reference(qkv.double(), nh, d**-0.5, tables64, window, bias.double())
            out = torch.full((hh, ww, nh * d), float("nan"))
            tables_t = transposed_tables(*tables) if rel else None
            if tokens_bf16:
                qkv, bias = qkv.bfloat16(), bias.bfloat16()
            if _call(lib, qkv, nh, d**-0.5, tables_t, out, window, bias, mode) != 0:
                return False
            tolerance = BF16_TOLERANCE if mode else TOLERANCE
            if not bool((out.double() - want).abs().max() <= tolerance * want.abs().max()):
                return False
            # bf16 outputs: the float32 results rounded as torch rounds them, bit for bit
            out16 = torch.empty(out.shape, dtype=torch.bfloat16)
            if _call(lib, qkv, nh, d**-0.5, tables_t, out16, window, bias, mode) != 0:
                return False
            if not torch.equal(out16.view(torch.int16), out.to(torch.bfloat16).view(torch.int16)):
                return False
        if tokens_bf16 and not _pooled_matches_reference(lib, gen):
            return False
    return True


def _pooled_matches_reference(lib: ctypes.CDLL, gen: torch.Generator) -> bool:
    """The AMX mode's pooled queries (`attention`'s ``pool_queries``) against `reference_pooled` in float64 within
    `BF16_TOLERANCE`: windows that tile the map, padded strips on odd and even map sizes, windows of 2 (one pooled
    query), heads of 16 and 56 numbers, one and two threads."""
    cases = ((16, 16, 2, 32, 8), (13, 11, 2, 56, 4), (30, 20, 1, 16, 14), (6, 9, 3, 16, 2))
    with alternating_threads() as use:
        for i, (hh, ww, nh, d, window) in enumerate(cases):
            use(i)
            qkv = torch.randn((hh, ww, 3 * nh * d), generator=gen).bfloat16()
            bias = torch.randn(3 * nh * d, generator=gen).bfloat16()
            want = reference_pooled(qkv.double(), nh, d**-0.5, window, bias.double())
            out = torch.full((hh // 2, ww // 2, nh * d), float("nan"))
            if _call(lib, qkv, nh, d**-0.5, None, out, window, bias, AMX, pool_queries=True) != 0:
                return False
            if not bool((out.double() - want).abs().max() <= BF16_TOLERANCE * want.abs().max()):
                return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return load(_SOURCE, _matches_reference, "attention (AVX-512)", ("AVX512",))


def available() -> bool:
    """Whether the AVX-512 attention kernel is in use in this process (see the module docstring)."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def bf16_available() -> bool:
    """Whether the kernel's bf16 products are in use here: the float32 kernel is, the CPU has AVX-512 BF16
    (``avx512_bf16`` in /proc/cpuinfo), and they match the reference on load (`_matches_reference`)."""
    lib = _library()
    return lib is not None and "avx512_bf16" in cpu_flags() and _matches_reference(lib, BF16)


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether the kernel's bf16 products run on AMX tiles here (Intel Xeon): `bf16_available`, the CPU has AMX
    bf16, the tiles are granted to this process (``geosam_amx_init``) and the products match the reference on load
    (`_matches_reference`, within `BF16_TOLERANCE`)."""
    return bf16_available() and amx_checked(  # bf16_available: the library in use and AVX-512 BF16
        _library(), "cpu_attention512.c", "attention",
        lambda lib: _matches_reference(lib, AMX) and _matches_reference(lib, AMX, tokens_bf16=True),
    )


def _head_fits(head_dim: int, bf16_tokens: bool, relative: bool) -> bool:
    """The kernel's head sizes: 16 to 128 numbers, a multiple of 16, or of 8 for bf16 tokens without relative tables
    (the AMX mode pads their values to 16 itself; ``geosam_attention512`` checks the same)."""
    step = 8 if bf16_tokens and not relative else 16
    return 16 <= head_dim <= 128 and head_dim % step == 0


def takes(dtype: torch.dtype, head_dim: int, relative: bool = False) -> bool:
    """Whether `attention` runs maps of ``dtype`` tokens with heads of ``head_dim`` numbers here: float32 on AVX-512
    (heads of 16 to 128 numbers, a multiple of 16), bf16 on AMX tiles (the same heads, or without relative tables,
    ``relative`` False, a multiple of 8: SAM 2's Hiera-B+ 56, Hiera-L 72); the callers ask before they make what only
    the kernel reads."""
    if dtype == torch.bfloat16:
        return _head_fits(head_dim, True, relative) and amx_available()
    return dtype == torch.float32 and _head_fits(head_dim, False, relative) and available()


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    scale: float,
    tables_t: tuple[torch.Tensor, torch.Tensor] | None,
    out: torch.Tensor,
    window: int = 0,
    bias: torch.Tensor | None = None,
    bf16: bool = False,
    pool_queries: bool = False,
) -> bool:
    """SAM's attention of one map's qkv projection into ``out`` (before the output projection), over the whole
    map or, with ``window`` > 0, in windows of that size; False (nothing written) where the kernel is not in use or
    the shapes do not fit it. ``bf16``: with q, k, v and the probabilities rounded to bf16 for the two products
    (sums in float32), where `bf16_available`, else as without it.

    qkv: (H, W, 3C) with unit stride within a token, float32 or (with ``bf16`` where the products run on AMX tiles,
    `amx_available`; ``bias`` bf16 too) bf16; heads of 16 to 128 numbers, a multiple of 16 or, with bf16 tokens and no
    ``tables_t``, of 8 (their keys padded to the tiles' 32, values to 16, with zeros); ``tables_t``: the layer's relative
    tables for the attended grid as `geosam.models.cpu_kernels.transposed_tables` gives them ((h, d, h) and (w, d, w)), or None without
    relative positions; ``bias``: (3C,) the qkv projection of a zero token, which the tokens past the map carry in
    a window (``window_partition`` pads with zeros); out: (H, W, C), unit stride within a token, float32 or bf16 (the
    results rounded as ``Tensor.to(torch.bfloat16)`` rounds them: the next bf16 product takes them as they are).
    ``pool_queries``: SAM 2's query pooling (`reference_pooled`): in windows (``window`` even), each window's queries
    the 2 x 2 maxima of its tokens' q, out (H // 2, W // 2, C); bf16 tokens on AMX tiles only, no tables.
    """
    lib = _library()
    if lib is None:
        return False
    hh, ww, c3 = qkv.shape
    c = c3 // 3
    d = c // num_heads if num_heads > 0 else 0
    side = (window, window) if window > 0 else (hh, ww)
    tensors = [qkv, out] + ([] if bias is None else [bias]) + ([] if tables_t is None else list(tables_t))
    tokens_bf16 = qkv.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16)
    fits = (
        all(t.device.type == "cpu" and (t.dtype == torch.float32 or (tokens_bf16 and (t is qkv or t is bias))
                                        or (t is out and t.dtype == torch.bfloat16))
            for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and c3 == 3 * num_heads * d and _head_fits(d, tokens_bf16, tables_t is not None) and qkv.stride(2) == 1
        and out.shape == ((hh // 2, ww // 2, c) if pool_queries else (hh, ww, c)) and out.stride(2) == 1
        and (window == 0 or (bias is not None and bias.shape == (c3,) and bias.is_contiguous()))
    )  # fmt: skip
    if tables_t is not None:
        th, tw = tables_t
        fits = fits and th.shape == (side[0], d, side[0]) and tw.shape == (side[1], d, side[1])
        fits = fits and th.is_contiguous() and tw.is_contiguous()
    if pool_queries:
        fits = fits and window >= 2 and window % 2 == 0 and tables_t is None and tokens_bf16 and min(hh, ww) >= 2
    if not fits:
        return False
    mode = 0 if not (bf16 and bf16_available()) else AMX if amx_available() else BF16
    if tokens_bf16 and mode != AMX:
        return False
    err = _call(lib, qkv, num_heads, scale, tables_t, out, window, bias, mode, pool_queries)
    if err == 2:
        raise MemoryError("cpu_attention: no memory for the kernel's buffers")
    return err == 0
