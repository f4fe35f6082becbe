"""SAM ViT attention in float32 with explicit scores, from a layer's qkv projection.

torch's fused CPU attention and its float32 GEMM (MKL, which takes its AVX-512
kernels on Intel CPUs only) run far below the CPU's peak in float32, and the
dense relative-position bias of the stock module costs more than the attention
itself. `attend` runs a layer's attention explicitly instead: for the global
layers (4096 tokens) one head and `QUERY_CHUNK` queries at a time, so the
scores stay in cache, both products through `geosam.models.cpu_gemm.linear`;
`attend_windows` one window at a time with all heads batched, straight from
the qkv projection of the real tokens (no partition / unpartition copy of the
map). Measured on one core of an AMD EPYC (Zen 5): a global layer's attention
2.0 s -> 0.7 s; on Zen 3 a windowed layer's attention 0.15 s -> 0.08 s
(bit-identical). On AVX2 CPUs `geosam.models.cpu_kernels` gives the same bits
faster: a global layer's heads fused (scores, relative positions, softmax and
values for 24 queries at a time in L2: the global layer 0.72 of the time on
Zen 3), the windows' relative positions and softmax one row at a time. Where
torch runs its AVX-512 kernels (those bits do not apply there)
`geosam.models.cpu_attention` runs a whole layer fused instead, every window of
a windowed layer in one call (to float rounding, checked against a float64
reference): AMD EPYC Zen 4, one thread, a global layer's attention 0.56 vs
0.78-0.80 s.

`geosam.models.fast_encoder` runs these for its float32 layers, and for its
low-precision layers on CPUs without AMX (on the bf16 q, k, v widened to
float32).
"""

from __future__ import annotations

from typing import Any

import torch

from geosam.models.cpu_attention import attention as fused_attention
from geosam.models.cpu_attention import available as fused_available
from geosam.models.cpu_gemm import linear
from geosam.models.cpu_kernels import (
    KC_CANDIDATES,
    attention_ready,
    available,
    global_attention,
    rel_softmax,
    rel_terms,
    softmax,
    transposed_tables,
    window_attention,
)

__all__ = ["PER_HEAD_MIN_TOKENS", "QUERY_CHUNK", "attend", "attend_bf16_tokens", "attend_windows", "rel_position_terms",
           "rel_tables", "window_kc"]


#: Float32 attention over more tokens than this runs one head at a time (global layers), else batched (windows).
PER_HEAD_MIN_TOKENS = 1024
#: Queries per score block in the one-head-at-a-time float32 attention (512 x 4096 float32 scores: 8 MiB).
QUERY_CHUNK = 512


def rel_tables(attn: Any, hh: int, ww: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s relative-position tables for an H x W map: (H, H, d) [query row, key row] and (W, W, d)."""
    return attn.get_rel_pos(hh, hh, attn.rel_pos_h), attn.get_rel_pos(ww, ww, attn.rel_pos_w)


def rel_position_terms(
    attn: Any, q: torch.Tensor, hh: int, ww: int, tables: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative positions for queries q (B, nh, H*W, d): (B*nh, HW, H, 1) and (B*nh, HW, 1, W).

    ``tables``: `rel_tables` of ``attn`` for this map, if already built (~0.1 ms each time otherwise).
    """
    b, nh, _, d = q.shape
    rel_h, rel_w = rel_terms(q.reshape(b, nh, hh, ww, d), *(tables if tables is not None else rel_tables(attn, hh, ww)))
    return rel_h.reshape(b * nh, hh * ww, hh, 1), rel_w.reshape(b * nh, hh * ww, 1, ww)


def attend(
    attn: Any, qkv: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None, bf16: bool = False
) -> torch.Tensor:
    """``softmax(q k^T * scale + rel_h + rel_w) v`` of ``attn`` from its qkv projection (B, H, W, 3C): (B, H, W, C).

    As the stock module (before its output projection), the relative
    positions added in place to each score block. ``tables``: see `rel_position_terms`.
    ``bf16``: the AVX-512 kernel's two products in bf16 where it has them (`geosam.models.cpu_attention`), for
    q, k, v that are bf16 numbers already (a bf16 projection's); the other paths ignore it.
    """
    b, hh, ww, _ = qkv.shape
    nh = int(attn.num_attention_heads)
    n_tok, bn = hh * ww, b * nh
    q, k, v = qkv.reshape(b, n_tok, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, HW, d)
    d = q.shape[-1]
    fused = n_tok > PER_HEAD_MIN_TOKENS and attn.use_rel_pos and qkv.device.type == "cpu"
    if fused and attention_ready(hh, ww, d, QUERY_CHUNK):  # `geosam.models.cpu_kernels`: the bits of the loop below
        out = torch.empty((b, n_tok, nh, d), dtype=qkv.dtype, device=qkv.device)
        tables_t = transposed_tables(*(tables if tables is not None else rel_tables(attn, hh, ww)))
        q3, k3, v3 = (t.reshape(bn, n_tok, d) for t in (q, k, v))
        for i in range(bn):
            bi, hi = divmod(i, nh)
            global_attention(q3[i], float(attn.scale), k3[i], v3[i], tables_t, out[bi, :, hi], QUERY_CHUNK)
        return out.reshape(b, hh, ww, nh * d)
    if qkv.device.type == "cpu" and fused_available():  # AVX-512 CPUs: fused, to float rounding
        out = torch.empty((b, hh, ww, nh * d), dtype=qkv.dtype, device=qkv.device)
        tabs = None
        if attn.use_rel_pos:
            tabs = transposed_tables(*(tables if tables is not None else rel_tables(attn, hh, ww)))
        if all(fused_attention(qkv[i], nh, float(attn.scale), tabs, out[i], bf16=bf16) for i in range(b)):
            return out
    qs = (q * attn.scale).reshape(bn, n_tok, d)
    rel = rel_position_terms(attn, q, hh, ww, tables) if attn.use_rel_pos else None
    if n_tok <= PER_HEAD_MIN_TOKENS:  # a window (or a small map): every head in two batched products
        scores = torch.bmm(qs, k.reshape(bn, n_tok, d).contiguous().transpose(1, 2))
        if rel is not None:
            probs = rel_softmax(scores.view(bn * n_tok, n_tok), rel[0], rel[1]).view(bn, n_tok, n_tok)
        else:
            probs = softmax(scores)
        out = torch.bmm(probs, v.reshape(bn, n_tok, d)).view(b, nh, n_tok, d).transpose(1, 2)
    else:  # global: one head and QUERY_CHUNK queries at a time, the scores in cache
        keys = k.reshape(bn, n_tok, d).contiguous()
        values_t = v.reshape(bn, n_tok, d).transpose(1, 2).contiguous()  # (B*nh, d, HW): a linear's weight
        out = torch.empty((b, n_tok, nh, d), dtype=qkv.dtype, device=qkv.device)
        for i in range(bn):
            bi, hi = divmod(i, nh)
            for s0 in range(0, n_tok, QUERY_CHUNK):
                s1 = min(n_tok, s0 + QUERY_CHUNK)
                scores = linear(qs[i, s0:s1], keys[i])
                probs = softmax(scores) if rel is None else rel_softmax(scores, rel[0][i, s0:s1], rel[1][i, s0:s1])
                out[bi, s0:s1, hi] = linear(probs, values_t[i])
    return out.reshape(b, hh, ww, nh * d)


def attend_windows(layer: Any, qkv: torch.Tensor, pad_qkv: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The window attention of ``layer`` (before its output projection) from the qkv projection of the real tokens
    (B, H, W, 3C): (B, H, W, C). ``pad_qkv`` (3C,): the q, k, v of a padded token (what zeros project to: the qkv
    bias, rounded as the projection rounds it). ``bf16``: as in `attend`."""
    attn, ws = layer.attn, int(layer.window_size)
    b, hh, ww, c3 = qkv.shape
    c = c3 // 3
    tables = rel_tables(attn, ws, ws) if attn.use_rel_pos else None  # once for all windows
    out = torch.empty((b, hh, ww, c), dtype=qkv.dtype, device=qkv.device)
    kc = window_kc(attn, ws, tables) if tables is not None and qkv.device.type == "cpu" else None
    nh = int(attn.num_attention_heads)
    if kc is None and fused_available():  # AVX-512: every window in one call, to float rounding
        tables_t = transposed_tables(*tables) if tables is not None else None
        qkv_bias = pad_qkv.to(qkv.dtype).contiguous()
        if all(fused_attention(qkv[i], nh, float(attn.scale), tables_t, out[i], ws, qkv_bias, bf16) for i in range(b)):
            return out
    win = torch.empty((1, ws, ws, 3 * c), dtype=qkv.dtype, device=qkv.device)
    bias = pad_qkv.to(win.dtype).expand_as(win)
    tables_t = transposed_tables(*tables) if kc is not None and tables is not None else None
    kc = kc or 0
    for bi in range(b):
        for y0 in range(0, hh, ws):
            for x0 in range(0, ww, ws):
                ry, rx = min(ws, hh - y0), min(ws, ww - x0)
                if ry < ws or rx < ws:  # the tokens past the map: the bias (what zeros project to)
                    win.copy_(bias)
                win[0, :ry, :rx].copy_(qkv[bi, y0 : y0 + ry, x0 : x0 + rx])
                if tables_t is None or not window_attention(
                    win[0], out[bi, y0:, x0:], ry, rx, float(attn.scale), tables_t, nh, kc
                ):
                    out[bi, y0 : y0 + ry, x0 : x0 + rx] = attend(attn, win, tables)[0, :ry, :rx]
    return out


def attend_bf16_tokens(layer: Any, qkv: torch.Tensor, pad_qkv: torch.Tensor | None) -> torch.Tensor | None:
    """The attention of ``layer`` (before its output projection) from its bf16 qkv projection (B, H, W, 3C) as it is:
    (B, H, W, C), in windows where the layer has them (``pad_qkv`` (3C,) bf16: a padded token's q, k, v), or None
    where the AVX-512 kernel does not take bf16 tokens here (its products on AMX tiles only:
    `geosam.models.cpu_attention.amx_available`, heads of a multiple of 16 numbers). The same numbers as `attend` /
    `attend_windows` with ``bf16=True`` on the projection widened to float32, without that 38 MB float32 copy (a
    ViT-B at 1024 px) and with half the bytes read: Intel Xeon with AMX, one thread, the bf16 encoder 1.87-1.90 vs
    2.01-2.04 s (alternating, the same embeddings bit for bit); rounded to bf16 by the kernel as
    ``.to(torch.bfloat16)`` rounds them, so that the output projection takes them as they are (no pass over a 12 MiB
    float32 output to round it)."""
    attn, ws = layer.attn, int(layer.window_size)
    b, hh, ww, c3 = qkv.shape
    if qkv.dtype != torch.bfloat16 or qkv.device.type != "cpu" or (ws > 0 and pad_qkv is None):
        return None
    side = (ws, ws) if ws > 0 else (hh, ww)
    tables_t = transposed_tables(*rel_tables(attn, *side)) if attn.use_rel_pos else None
    out = torch.empty((b, hh, ww, c3 // 3), dtype=torch.bfloat16)
    nh, scale = int(attn.num_attention_heads), float(attn.scale)
    bias = pad_qkv.to(torch.bfloat16).contiguous() if pad_qkv is not None else None
    if all(fused_attention(qkv[i], nh, scale, tables_t, out[i], ws, bias, bf16=True) for i in range(b)):
        return out
    return None


_WINDOW_KC: dict[tuple[int, ...], int | None] = {}


def window_kc(attn: Any, ws: int, tables: tuple[torch.Tensor, torch.Tensor]) -> int | None:
    """The values block in which `geosam.models.cpu_kernels.window_attention` gives `attend`'s bits on a
    window of ``attn``'s shape here (random qkv, at the current thread count), or None: then the explicit path runs.

    Checked once per shape and thread count in a process; the summation order is the GEMM's, not the weights'.
    """
    nh, c = int(attn.num_attention_heads), int(attn.qkv.weight.shape[1])
    key = (nh, c, ws, torch.get_num_threads())
    if key not in _WINDOW_KC:
        _WINDOW_KC[key] = None
        if available() and (c // nh) % 16 == 0:
            win = torch.randn((1, ws, ws, 3 * c), generator=torch.Generator().manual_seed(ws)) * 2
            want = attend(attn, win, tables)[0]
            tables_t = transposed_tables(*tables)
            n = ws * ws  # MKL also splits an inner dimension a little above its block in equal parts (196: 2 x 98)
            for kc in (*KC_CANDIDATES, *(-(-n // parts) for parts in (2, 3, 4))):
                got = torch.empty_like(want)
                window_attention(win[0], got, ws, ws, float(attn.scale), tables_t, nh, kc)
                if torch.equal(got, want):
                    _WINDOW_KC[key] = kc
                    break
    return _WINDOW_KC[key]
