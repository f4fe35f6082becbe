"""Float32 attention kernels on AVX2 CPUs: torch's own numbers, with the scores kept in cache.

SAM's encoder spends much of its float32 time on a CPU outside its big
products: the four global layers of a ViT at 1024 px compute 12 x 4096 x 4096
scores each, and torch makes one pass over a whole block of them for each step
(the product writes the block, each of the two relative-position adds, the
maximum, the exponentials, the sum and the scaling pass over it again, the
values product reads it), so a 512 x 4096 block (8 MiB) comes from memory
eight times. `cpu_kernels.c` does the same arithmetic in the same order:

* `softmax` / `rel_softmax`: ATen's AVX2 softmax (Sleef's ``expf8_u10``, ATen's
  reduction order, ``* (1 / sum)``), one row at a time, the relative positions
  added in the pass that finds the maximum.
* `global_attention`: one head of a global layer, 24 queries at a time per
  thread: their scores (384 KiB) stay in L2 from the product through the
  softmax to the values. The products are FMA chains in the order torch's
  float32 GEMM (MKL) sums on this machine: each output's chain from zero over
  the inner dimension, in blocks whose partial sums are added in order (192
  keys for the values product on an AMD EPYC Zen 3); the block size is found
  by comparing with torch's own products of the same shapes in this process
  (`attention_ready`), and without a match the kernel is not used.

So the results are the bits torch gives. AMD EPYC Zen 3, one thread: a 512 x
4096 block's relative positions and softmax 0.66 of torch's time; one head of a
global layer 0.45 of it (0.075 vs 0.17-0.19 s).

The kernel is plain C with AVX2 intrinsics, compiled on first use with the
machine's C compiler and cached (`geosam.models.cpu_build`). It is used only where
torch itself runs its AVX2 kernels (``torch.backends.cpu.get_cpu_capability()
== "AVX2"``: on AVX-512 CPUs torch's vectors and so its rounding differ) and
only after it has reproduced torch's results bit for bit on test data in this
process. Anywhere else, without a compiler, or with ``GEOSAM_CPU_KERNELS=0``,
the functions here run torch's ops: the outputs are the same either way.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from geosam.models.cpu_build import load
from geosam.models.cpu_gemm import linear

__all__ = [
    "KC_CANDIDATES", "attention_ready", "available", "global_attention", "rel_softmax", "rel_terms", "softmax",
    "transposed_tables", "window_attention",
]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _reproduces_torch(lib: ctypes.CDLL) -> bool:
    """Whether the loaded kernel gives torch's softmax bit for bit here (rows of several lengths, both entry points)."""
    gen = torch.Generator().manual_seed(0)
    for rows, hh, ww in ((5, 64, 64), (7, 14, 14), (3, 7, 8), (2, 1, 9)):
        x = torch.randn((rows, hh * ww), generator=gen) * 8
        x[0, 1] = -300.0  # an exponential that underflows
        rel_h, rel_w = torch.randn((rows, hh), generator=gen), torch.randn((rows, ww), generator=gen)
        want = torch.softmax(x, dim=-1)
        got = torch.empty_like(x)
        lib.geosam_softmax(_P(x.data_ptr()), _P(got.data_ptr()), _I64(rows), _I64(hh * ww), _INT(1))
        if not torch.equal(got, want):
            return False
        want = torch.softmax(x.clone().view(rows, hh, ww).add_(rel_h[:, :, None]).add_(rel_w[:, None, :]).view(rows, -1), -1)
        got = x.clone()
        lib.geosam_rel_softmax_(
            _P(got.data_ptr()), _P(rel_h.data_ptr()), _P(rel_w.data_ptr()),
            _I64(rows), _I64(hh), _I64(ww), _I64(hh), _I64(ww), _INT(2),
        )  # fmt: skip
        if not torch.equal(got, want):
            return False
    return True


def _loaded(lib: ctypes.CDLL) -> bool:
    for fn in (lib.geosam_softmax, lib.geosam_rel_softmax_, lib.geosam_qk, lib.geosam_av, lib.geosam_rel_terms):
        fn.restype = None
    lib.geosam_global_attention.restype = ctypes.c_int
    lib.geosam_window_attention.restype = ctypes.c_int
    return _reproduces_torch(lib)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return load(_SOURCE, _loaded, "softmax")


def available() -> bool:
    """Whether the compiled kernel is in use in this process (see the module docstring)."""
    return _library() is not None


def _fits(x: torch.Tensor, n: int) -> bool:
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and n >= 8
        and not (x.requires_grad and torch.is_grad_enabled())
    )  # fmt: skip


def softmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, dim=-1)``, the same bits; a new tensor."""
    n = x.shape[-1]
    lib = _library() if _fits(x, n) else None
    if lib is None:
        return torch.softmax(x, dim=-1)
    out = torch.empty_like(x)
    lib.geosam_softmax(_P(x.data_ptr()), _P(out.data_ptr()), _I64(x.numel() // n), _I64(n), _INT(torch.get_num_threads()))
    return out


def rel_softmax(scores: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """SAM's relative positions added to ``scores`` and the softmax taken over the keys; may overwrite ``scores``.

    scores: (R, H * W) over an H x W key grid (row-major); rel_h (R, H) and
    rel_w (R, W), or any shapes that reshape so. Returns the bits of
    ``torch.softmax(scores.view(R, H, W).add_(rel_h[..., None]).add_(rel_w[:, None]), -1)``:
    ``scores`` itself when the kernel ran (in place), else a new tensor.
    """
    rows = scores.shape[0]
    rh, rw = rel_h.reshape(rows, -1), rel_w.reshape(rows, -1)
    hh, ww = rh.shape[1], rw.shape[1]
    fits = _fits(scores, hh * ww) and scores.shape == (rows, hh * ww) and rh.dtype == rw.dtype == torch.float32
    lib = _library() if fits else None
    if lib is None:
        scores.view(rows, hh, ww).add_(rh[:, :, None]).add_(rw[:, None, :])
        return torch.softmax(scores, dim=-1)
    rh = rh if rh.stride(1) == 1 else rh.contiguous()
    rw = rw if rw.stride(1) == 1 else rw.contiguous()
    lib.geosam_rel_softmax_(
        _P(scores.data_ptr()), _P(rh.data_ptr()), _P(rw.data_ptr()), _I64(rows), _I64(hh), _I64(ww),
        _I64(rh.stride(0)), _I64(rw.stride(0)), _INT(torch.get_num_threads()),
    )  # fmt: skip
    return scores


#: Queries per thread at a time in `global_attention`: their scores (block x tokens floats; 384 KiB for 4096 keys)
#: stay in the L2 cache from the product through the softmax to the values.
ATTENTION_BLOCK = 24
#: Inner-dimension blocks tried for torch's values product (MKL's on this machine is found by comparison).
KC_CANDIDATES = (192, 256, 128, 384, 512, 320, 448, 96, 64, 1024)


def rel_terms(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative positions of queries q (B, nh, H, W, d) with the tables of ``get_rel_pos``
    (H, H, d) and (W, W, d): (B, nh, H, W, H) and (B, nh, H, W, W), as the stock attention computes them."""
    return torch.einsum("bnhwc,hkc->bnhwk", q, rel_h.to(q.dtype)), torch.einsum("bnhwc,wkc->bnhwk", q, rel_w.to(q.dtype))


def transposed_tables(rel_h: torch.Tensor, rel_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``get_rel_pos``'s tables (query, key, d) as `global_attention` takes them: (query, d, key), contiguous."""
    return rel_h.transpose(1, 2).contiguous(), rel_w.transpose(1, 2).contiguous()


def _check_rel_terms(lib: ctypes.CDLL, hh: int, ww: int, d: int, gen: torch.Generator) -> bool:
    """The kernel's relative terms against `rel_terms` for queries laid out as the encoder's (a view of qkv)."""
    qkv = torch.randn((1, hh * ww, 3, 2, d), generator=gen)
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # (1, 2, HW, d), rows strided as in fast_encoder
    tab_h, tab_w = torch.randn((hh, hh, d), generator=gen) * 0.3, torch.randn((ww, ww, d), generator=gen) * 0.3
    want_h, want_w = rel_terms(q.reshape(1, 2, hh, ww, d), tab_h, tab_w)
    th, tw = transposed_tables(tab_h, tab_w)
    qh = q[0, 1]
    got_h, got_w = torch.empty((hh * ww, hh)), torch.empty((hh * ww, ww))
    lib.geosam_rel_terms(
        _P(qh.data_ptr()), _I64(qh.stride(0)), _I64(hh * ww), _P(th.data_ptr()), _P(tw.data_ptr()), _I64(hh),
        _I64(ww), _I64(d), _P(got_h.data_ptr()), _P(got_w.data_ptr()),
    )  # fmt: skip
    return torch.equal(got_h, want_h[0, 1].reshape(-1, hh)) and torch.equal(got_w, want_w[0, 1].reshape(-1, ww))


@functools.lru_cache(maxsize=16)
def _attention_kc(hh: int, ww: int, d: int, rows: tuple[int, ...], threads: int) -> int | None:
    """The block of the values product in which the kernel gives torch's bits for these shapes, or None.

    torch's operations as `geosam.models.fast_encoder` runs them: `rel_terms`,
    ``linear(queries (m, d), keys (n, d))`` and ``linear(probs (m, n),
    values_t (d, n))`` for every m in ``rows`` (a query chunk and the last,
    shorter one), at the current thread count; the kernel's on the same data.
    """
    lib = _library()
    n = hh * ww
    if lib is None:
        return None
    gen = torch.Generator().manual_seed(n * 131 + d)
    if not _check_rel_terms(lib, hh, ww, d, gen):
        return None
    keys = torch.randn((n, d), generator=gen)
    values = torch.randn((n, d), generator=gen)
    values_t = values.t().contiguous()
    kcs = list(KC_CANDIDATES)
    for m in rows:
        q = torch.randn((m, d), generator=gen) * d**-0.5
        want = linear(q, keys)
        got = torch.empty((m, n))
        lib.geosam_qk(
            _P(q.data_ptr()), _I64(d), _P(keys.data_ptr()), _I64(d), _I64(m), _I64(n), _I64(d), _P(got.data_ptr())
        )
        if not torch.equal(got, want):
            return None
        probs = torch.softmax(want, dim=-1)
        want = linear(probs, values_t)
        for kc in kcs:  # the first that matches (then the only one tried for the next m)
            got = torch.empty((m, d))
            lib.geosam_av(
                _P(probs.data_ptr()), _I64(n), _P(values.data_ptr()), _I64(d), _I64(m), _I64(n), _I64(d), _I64(kc),
                _P(got.data_ptr()), _I64(d),
            )  # fmt: skip
            if torch.equal(got, want):
                kcs = [kc]
                break
        else:
            return None
    log.debug("cpu_kernels: fused global attention for %d x %d keys, heads of %d: values in blocks of %d", hh, ww, d, kcs[0])
    return kcs[0]


def _check_key(hh: int, ww: int, query_chunk: int) -> tuple[tuple[int, ...], int]:
    n = hh * ww
    rows = (query_chunk, n % query_chunk) if n % query_chunk else (query_chunk,)
    return tuple(r for r in rows if r <= n), torch.get_num_threads()


def _global_kc(hh: int, ww: int, head_dim: int, query_chunk: int) -> int | None:
    """`_attention_kc` for these shapes at the current thread count; None where the kernel cannot run them."""
    if (hh * ww) % 16 or head_dim % 16 or _library() is None:
        return None
    return _attention_kc(hh, ww, head_dim, *_check_key(hh, ww, query_chunk))


def attention_ready(hh: int, ww: int, head_dim: int, query_chunk: int) -> bool:
    """Whether `global_attention` gives here the bits of torch's explicit attention over ``query_chunk`` queries
    at a time (`geosam.models.fast_encoder`) for keys on an hh x ww grid and this head size, at the current
    thread count."""
    return _global_kc(hh, ww, head_dim, query_chunk) is not None


def global_attention(
    q: torch.Tensor, scale: float, k: torch.Tensor, v: torch.Tensor, tables_t: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor, query_chunk: int,
) -> None:
    """``out = softmax((q * scale) k^T + rel_h[:, row(key)] + rel_w[:, col(key)]) v`` for one head, into ``out``.

    q: (N, d) queries, unscaled (the relative terms are taken from them, the
    products from ``q * scale``); k, v: (N, d); ``tables_t``: the head's
    relative-position tables as `transposed_tables` returns them, (H, d, H) and
    (W, d, W), N = H * W keys (and queries) on an H x W grid; out: (N, d). q,
    k, v and out may have a row stride; rows must be contiguous. Call only where
    `attention_ready` (same H, W, d, ``query_chunk``) is true.
    """
    n, d = q.shape
    tab_h, tab_w = tables_t
    hh, ww = tab_h.shape[0], tab_w.shape[0]
    tensors = (q, k, v, out)
    fits = (
        hh * ww == n and tab_h.shape == (hh, d, hh) and tab_w.shape == (ww, d, ww)
        and all(t.dtype == torch.float32 and t.is_contiguous() for t in tables_t)
        and all(t.dtype == torch.float32 and t.shape == (n, d) and t.stride(-1) == 1 for t in tensors)
    )  # fmt: skip
    lib, kc = _library(), _global_kc(hh, ww, d, query_chunk)
    if lib is None or kc is None or not fits:
        raise RuntimeError("global_attention: the kernel cannot give torch's results here (see attention_ready)")
    err = lib.geosam_global_attention(
        _P(q.data_ptr()), _I64(q.stride(0)), ctypes.c_float(scale), _P(k.data_ptr()), _I64(k.stride(0)),
        _P(v.data_ptr()), _I64(v.stride(0)), _P(tab_h.data_ptr()), _P(tab_w.data_ptr()), _P(out.data_ptr()),
        _I64(out.stride(0)), _I64(hh), _I64(ww), _I64(d), _I64(kc), _I64(ATTENTION_BLOCK), _INT(torch.get_num_threads()),
    )  # fmt: skip
    if err != 0:
        raise MemoryError(f"global_attention: no memory for the kernel's buffers (error {err})")


def window_attention(
    win: torch.Tensor, out: torch.Tensor, ry: int, rx: int, scale: float, tables_t: tuple[torch.Tensor, torch.Tensor],
    num_heads: int, kc: int,
) -> bool:
    """One window of a windowed SAM attention layer, all heads, written into ``out``; False if the kernel is not in use.

    win: (ws, ws, 3 C) the window's qkv projection (contiguous; tokens past the
    map carry the qkv bias); out: (>= ry, >= rx, C) the output map from the
    window's top-left token (unit stride within a token, tokens adjacent), of
    which the ry x rx tokens inside the map are written; ``tables_t``: the
    layer's relative tables for the window (`transposed_tables`); ``kc``: the
    values product's inner block, which the caller has checked against torch's
    path on this machine (``geosam.models.fast_encoder``), from `KC_CANDIDATES`.
    """
    lib = _library()
    ws, c3 = win.shape[0], win.shape[-1]
    d = c3 // (3 * num_heads)
    tab_h, tab_w = tables_t
    fits = (
        lib is not None and win.dtype == out.dtype == torch.float32 and win.is_contiguous() and win.shape[:2] == (ws, ws)
        and out.stride(-1) == 1 and out.stride(-2) == num_heads * d == out.shape[-1] and d % 16 == 0
        and tab_h.shape == tab_w.shape == (ws, d, ws) and tab_h.is_contiguous() and tab_w.is_contiguous()
    )  # fmt: skip
    if lib is None or not fits:
        return False
    err = lib.geosam_window_attention(
        _P(win.data_ptr()), _P(out.data_ptr()), _I64(out.stride(0)), _I64(ry), _I64(rx), _I64(ws), _I64(num_heads),
        _I64(d), ctypes.c_float(scale), _P(tab_h.data_ptr()), _P(tab_w.data_ptr()), _I64(kc),
        _INT(torch.get_num_threads()),
    )  # fmt: skip
    if err != 0:
        raise MemoryError(f"window_attention: no memory for the kernel's buffers (error {err})")
    return True
