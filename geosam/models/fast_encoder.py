"""SAM's ViT image encoder with relative-position attention that never builds the bias matrix.

transformers' ``SamVisionSdpaAttention`` adds SAM's decomposed relative
positions (``rel_h[q, key row] + rel_w[q, key column]``) as a dense
``(heads, tokens, tokens)`` attention mask: for the global layers of a 1024 px
input that is 12 x 4096 x 4096 numbers built, copied and read per layer, which
costs more than the attention itself on a CPU. `fast_image_embeddings`
computes the same function with the model's own weights and no mask:

    q . k * scale + rel_h[q] . onehot(row(k)) + rel_w[q] . onehot(col(k))
        = [q * scale, rel_h[q], rel_w[q]] . [k, onehot(row(k)), onehot(col(k))]

so one ``scaled_dot_product_attention`` call with queries and keys widened by
``H + W`` columns (and zero-padded values of the same width, which the fused
CPU kernels need) gives the attention exactly, in flash-attention memory.

Everything else (patch embedding, windows, MLPs, neck) runs the model's own
modules. With low precision (bf16 autocast, the default on CPUs with AMX) this is
~1.3x faster per chip than the stock forward.

In float32 on the CPU the wider products cost more than the mask saves, and
the fused attention kernel and torch's float32 GEMM (MKL, which takes its
AVX-512 kernels on Intel CPUs only) run far below the CPU's peak. There
`fast_image_embeddings` runs the attention explicitly instead: for the
global layers (4096 tokens) one head and `QUERY_CHUNK` queries at a time,
so the scores stay in cache, with both products, the qkv / output projections
and the MLP (GELU fused) through `geosam.models.cpu_gemm.linear`; the
windowed layers one window at a time with all heads batched, the projections
on the real tokens only (`_windowed_attention_f32`: no padded token is
projected, no partition / unpartition copy of the map); the largest
intermediates in buffers kept for the whole forward (`_buffer`). Measured on
one core of an AMD EPYC (Zen 5): a global layer's attention 2.0 s -> 0.7 s;
on Zen 3 a windowed layer's attention 0.15 s -> 0.08 s (bit-identical). On
AVX2 CPUs `geosam.models.cpu_kernels` gives the same bits faster: a global
layer's heads fused (scores, relative positions, softmax and values for 24
queries at a time in L2: the global layer 0.72 of the time on Zen 3), the
windows' relative positions and softmax one row at a time. Where torch runs its
AVX-512 kernels (those bits do not apply there) `geosam.models.cpu_attention`
runs a whole layer fused instead, every window of a windowed layer in one call
(to float rounding, checked against a float64 reference): AMD EPYC Zen 4, one
thread, a global layer's attention 0.56 vs 0.78-0.80 s, the ViT-B encoder 9.9
vs 10.7-11.0 s.

Results equal the stock forward to rounding (~1e-6 relative).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

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

__all__ = ["fast_encoder_supported", "fast_image_embeddings"]


def _unwrap(module: Any) -> Any:
    return getattr(module, "_orig_mod", module)


def fast_encoder_supported(model: Any) -> bool:
    """Whether ``model.vision_encoder`` has transformers' SAM ViT layout (not e.g. LiteMedSAM's TinyViT)."""
    try:
        enc = _unwrap(model.vision_encoder)
        layers = list(enc.layers)
        return (
            len(layers) > 0
            and callable(enc.patch_embed)
            and callable(enc.neck)
            and all(
                hasattr(layer, "window_size")
                and callable(getattr(layer, "window_partition", None))
                and callable(getattr(layer, "window_unpartition", None))
                and hasattr(layer.attn, "qkv")
                and hasattr(layer.attn, "proj")
                and isinstance(getattr(layer.attn, "use_rel_pos", None), bool)
                and callable(layer.mlp)
                for layer in layers
            )
        )
    except (AttributeError, TypeError):
        return False


def _rel_attention(attn: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``attn(x)`` (a ``SamVisionAttention``) with the relative positions folded into q and k.

    x: (B, H, W, C). Returns (B, H, W, C) after ``attn.proj``.
    """
    b, hh, ww, _ = x.shape
    nh = int(attn.num_attention_heads)
    qkv = attn.qkv(x).reshape(b, hh * ww, 3, nh, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, HW, d)
    q, k, v = qkv.unbind(0)
    d = q.shape[-1]
    if attn.use_rel_pos:
        rh = attn.get_rel_pos(hh, hh, attn.rel_pos_h)  # (H, H, d): [query row, key row]
        rw = attn.get_rel_pos(ww, ww, attn.rel_pos_w)  # (W, W, d)
        qr = q.reshape(b, nh, hh, ww, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", qr, rh.to(qr.dtype)).reshape(b, nh, hh * ww, hh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", qr, rw.to(qr.dtype)).reshape(b, nh, hh * ww, ww)
        width = d + hh + ww
        pad = (-width) % 16  # fused kernels like a multiple of 16
        ar_h = torch.arange(hh, device=x.device).repeat_interleave(ww)  # key index -> key row
        ar_w = torch.arange(ww, device=x.device).repeat(hh)  # key index -> key column
        onehot = torch.cat(
            [F.one_hot(ar_h, hh), F.one_hot(ar_w, ww), torch.zeros(hh * ww, pad, dtype=torch.long, device=x.device)], dim=1
        ).to(dtype)
        qa = torch.cat([(q * attn.scale).to(dtype), rel_h.to(dtype), rel_w.to(dtype), q.new_zeros((b, nh, hh * ww, pad), dtype=dtype)], dim=-1)
        ka = torch.cat([k.to(dtype), onehot.expand(b, nh, -1, -1)], dim=-1)
        va = F.pad(v.to(dtype), (0, width + pad - d))
        out = F.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., :d]
    else:
        out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, hh, ww, nh * d)
    return attn.proj(out)


#: Float32 attention over more tokens than this runs one head at a time (global layers), else batched (windows).
PER_HEAD_MIN_TOKENS = 1024
#: Queries per score block in the one-head-at-a-time float32 attention (512 x 4096 float32 scores: 8 MiB).
QUERY_CHUNK = 512


def _rel_tables(attn: Any, hh: int, ww: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s relative-position tables for an H x W map: (H, H, d) [query row, key row] and (W, W, d)."""
    return attn.get_rel_pos(hh, hh, attn.rel_pos_h), attn.get_rel_pos(ww, ww, attn.rel_pos_w)


def _rel_terms(
    attn: Any, q: torch.Tensor, hh: int, ww: int, tables: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative positions for queries q (B, nh, H*W, d): (B*nh, HW, H, 1) and (B*nh, HW, 1, W).

    ``tables``: `_rel_tables` of ``attn`` for this map, if already built (~0.1 ms each time otherwise).
    """
    b, nh, _, d = q.shape
    rel_h, rel_w = rel_terms(q.reshape(b, nh, hh, ww, d), *(tables if tables is not None else _rel_tables(attn, hh, ww)))
    return rel_h.reshape(b * nh, hh * ww, hh, 1), rel_w.reshape(b * nh, hh * ww, 1, ww)


def _attention_f32(attn: Any, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``attn(x)`` (a ``SamVisionAttention``) in float32 with explicit scores; x (B, H, W, C) -> (B, H, W, C)."""
    qkv = linear(x, attn.qkv.weight, attn.qkv.bias, out=_buffer(buffers, "qkv", (*x.shape[:-1], 3 * x.shape[-1]), x))
    return linear(_attend_f32(attn, qkv), attn.proj.weight, attn.proj.bias)


def _attend_f32(
    attn: Any, qkv: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale + rel_h + rel_w) v`` of ``attn`` from its qkv projection (B, H, W, 3C): (B, H, W, C).

    As the stock module (before its output projection), the relative
    positions added in place to each score block. ``tables``: see `_rel_terms`.
    """
    b, hh, ww, _ = qkv.shape
    nh = int(attn.num_attention_heads)
    n_tok, bn = hh * ww, b * nh
    q, k, v = qkv.reshape(b, n_tok, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, HW, d)
    d = q.shape[-1]
    fused = n_tok > PER_HEAD_MIN_TOKENS and attn.use_rel_pos and qkv.device.type == "cpu"
    if fused and attention_ready(hh, ww, d, QUERY_CHUNK):  # `geosam.models.cpu_kernels`: the bits of the loop below
        out = torch.empty((b, n_tok, nh, d), dtype=qkv.dtype, device=qkv.device)
        tables_t = transposed_tables(*(tables if tables is not None else _rel_tables(attn, hh, ww)))
        q3, k3, v3 = (t.reshape(bn, n_tok, d) for t in (q, k, v))
        for i in range(bn):
            bi, hi = divmod(i, nh)
            global_attention(q3[i], float(attn.scale), k3[i], v3[i], tables_t, out[bi, :, hi], QUERY_CHUNK)
        return out.reshape(b, hh, ww, nh * d)
    if qkv.device.type == "cpu" and fused_available():  # AVX-512 CPUs: fused, to float rounding
        out = torch.empty((b, hh, ww, nh * d), dtype=qkv.dtype, device=qkv.device)
        tabs = None
        if attn.use_rel_pos:
            tabs = transposed_tables(*(tables if tables is not None else _rel_tables(attn, hh, ww)))
        if all(fused_attention(qkv[i], nh, float(attn.scale), tabs, out[i]) for i in range(b)):
            return out
    qs = (q * attn.scale).reshape(bn, n_tok, d)
    rel = _rel_terms(attn, q, hh, ww, tables) if attn.use_rel_pos else None
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


def _buffer(buffers: dict[str, torch.Tensor] | None, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """A buffer of ``shape`` kept in ``buffers`` under ``key`` for the next layer (None without ``buffers``).

    The encoder's largest intermediates (a ViT-B's qkv and MLP activations at
    1024 px: 38 and 50 MB) are above glibc's mmap threshold, so a fresh tensor
    is fresh pages from the kernel every layer (AMD EPYC Zen 3, one thread: ~25 ms
    per 50 MB); one buffer per shape for the whole forward spares that.
    """
    if buffers is None:
        return None
    buf = buffers.get(key)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def _windowed_attention_f32(layer: Any, h: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``window_partition -> attn -> window_unpartition`` of a windowed ``SamVisionLayer`` in float32; h (B, H, W, C).

    The same function with less work: the qkv projection runs on the real
    tokens only (a padded token, zero after ``layer_norm1``, has the qkv bias
    as its q, k and v, which the window buffer holds where the scene ends), the
    attention runs one window at a time (`_attend_f32` on the window, all heads
    batched, the relative-position tables built once: a window's scores, 12 x
    196 x 196 for SAM's ViT, stay in cache from the product through the
    softmax to the values), each window's output goes straight to
    its place in the (B, H, W, C) map, and the output projection runs on the
    real tokens only. AMD EPYC Zen 3, one thread, ViT-B at 1024 px: a windowed
    layer's attention alone (scores to values) 0.15 s -> 0.08 s, the whole
    float32 encoder bit-identical to the batched windows.
    """
    attn, ws = layer.attn, int(layer.window_size)
    b, hh, ww, c = h.shape
    qkv = linear(h, attn.qkv.weight, attn.qkv.bias, out=_buffer(buffers, "qkv", (b, hh, ww, 3 * c), h))  # real tokens
    tables = _rel_tables(attn, ws, ws) if attn.use_rel_pos else None  # once for all windows
    out = torch.empty((b, hh, ww, c), dtype=qkv.dtype, device=qkv.device)
    kc = _window_kc(attn, ws, tables) if tables is not None and qkv.device.type == "cpu" else None
    nh = int(attn.num_attention_heads)
    if kc is None and fused_available():  # AVX-512: every window in one call, to float rounding
        tables_t = transposed_tables(*tables) if tables is not None else None
        qkv_bias = attn.qkv.bias.to(qkv.dtype).contiguous()
        if all(fused_attention(qkv[i], nh, float(attn.scale), tables_t, out[i], ws, qkv_bias) for i in range(b)):
            return linear(out, attn.proj.weight, attn.proj.bias)
    win = torch.empty((1, ws, ws, 3 * c), dtype=qkv.dtype, device=qkv.device)
    bias = attn.qkv.bias.to(win.dtype).expand_as(win)
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
                    out[bi, y0 : y0 + ry, x0 : x0 + rx] = _attend_f32(attn, win, tables)[0, :ry, :rx]
    return linear(out, attn.proj.weight, attn.proj.bias)


_WINDOW_KC: dict[tuple[int, ...], int | None] = {}


def _window_kc(attn: Any, ws: int, tables: tuple[torch.Tensor, torch.Tensor]) -> int | None:
    """The values block in which `geosam.models.cpu_kernels.window_attention` gives `_attend_f32`'s bits on a
    window of ``attn``'s shape here (random qkv, at the current thread count), or None: then the explicit path runs.

    Checked once per shape and thread count in a process; the summation order is the GEMM's, not the weights'.
    """
    nh, c = int(attn.num_attention_heads), int(attn.qkv.weight.shape[1])
    key = (nh, c, ws, torch.get_num_threads())
    if key not in _WINDOW_KC:
        _WINDOW_KC[key] = None
        if available() and (c // nh) % 16 == 0:
            win = torch.randn((1, ws, ws, 3 * c), generator=torch.Generator().manual_seed(ws)) * 2
            want = _attend_f32(attn, win, tables)[0]
            tables_t = transposed_tables(*tables)
            n = ws * ws  # MKL also splits an inner dimension a little above its block in equal parts (196: 2 x 98)
            for kc in (*KC_CANDIDATES, *(-(-n // parts) for parts in (2, 3, 4))):
                got = torch.empty_like(want)
                window_attention(win[0], got, ws, ws, float(attn.scale), tables_t, nh, kc)
                if torch.equal(got, want):
                    _WINDOW_KC[key] = kc
                    break
    return _WINDOW_KC[key]


def _exact_gelu(act: Any) -> bool:
    """Whether ``act`` is the exact (erf) GELU: ``torch.nn.GELU()`` or transformers' ``GELUActivation``."""
    if isinstance(act, torch.nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def _mlp_f32(mlp: Any, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``mlp(x)`` (a ``SamMLPBlock``: lin1, act, lin2) with oneDNN products, GELU fused where it is exact."""
    if not all(hasattr(mlp, a) for a in ("lin1", "lin2", "act")):
        return mlp(x)
    hidden = _buffer(buffers, "mlp", (*x.shape[:-1], mlp.lin1.weight.shape[0]), x)
    if _exact_gelu(mlp.act):
        h = linear(x, mlp.lin1.weight, mlp.lin1.bias, gelu=True, out=hidden)
    else:
        h = mlp.act(linear(x, mlp.lin1.weight, mlp.lin1.bias, out=hidden))
    return linear(h, mlp.lin2.weight, mlp.lin2.bias)


def _layer_f32(layer: Any, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``SamVisionLayer.forward`` in float32 with `_attention_f32` and `_mlp_f32`; x updated in place.

    ``buffers``: the large intermediates' buffers, shared by the layers of one forward (`_buffer`).
    """
    h = layer.layer_norm1(x)
    h = _windowed_attention_f32(layer, h, buffers) if layer.window_size > 0 else _attention_f32(layer.attn, h, buffers)
    x.add_(h)
    return x.add_(_mlp_f32(layer.mlp, layer.layer_norm2(x), buffers))


def _layer(layer: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``SamVisionLayer.forward`` with `_rel_attention`; updates ``x`` (the residual stream) in place.

    In-place residual adds also avoid a slow mixed-dtype ``float32 + bf16`` under autocast.
    """
    h = layer.layer_norm1(x)
    if layer.window_size > 0:
        height, width = h.shape[1], h.shape[2]
        h, padding = layer.window_partition(h, layer.window_size)
        h = _rel_attention(layer.attn, h, dtype)
        h = layer.window_unpartition(h, layer.window_size, padding, (height, width))
    else:
        h = _rel_attention(layer.attn, h, dtype)
    x.add_(h)
    return x.add_(layer.mlp(layer.layer_norm2(x)))


def fast_image_embeddings(
    model: Any,
    pixel_values: torch.Tensor,
    dtype: torch.dtype | None = None,
    intermediates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``model.get_image_embeddings(pixel_values)`` (B, C, h, w) with mask-free relative-position attention.

    dtype: compute dtype; other than float32 the forward runs under autocast
    (as `geosam.models.encode` does) and attention in that dtype. Default:
    the autocast dtype if autocast is on, else float32. Float32 runs the
    explicit attention of `_attention_f32` (see the module docstring).

    intermediates: a list to which the output (B, H, W, C) of every global-attention layer (``window_size`` 0) is
    appended, as SAM-HQ's vision encoder returns them (its ``intermediate_embeddings``).
    """
    device_type = pixel_values.device.type
    if dtype is None:
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    enc = _unwrap(model.vision_encoder)
    ctx = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device_type, dtype=dtype)
    with torch.inference_mode(), ctx:
        x = enc.patch_embed(pixel_values).to(torch.float32)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        # the residual stream, updated in place: contiguous (the patch embedding is a permuted view of the convolution's
        # output, and elementwise results keep that layout), else every layer norm copies it and every residual add
        # walks it by strides (AMD EPYC Zen 3, 1 thread: 0.5-0.7 s of a ViT-B encoder at 1024 px)
        x = x.contiguous()
        buffers: dict[str, torch.Tensor] = {}
        for layer in enc.layers:
            x = _layer_f32(layer, x, buffers) if dtype == torch.float32 else _layer(layer, x, dtype)
            if intermediates is not None and layer.window_size == 0:
                intermediates.append(x.clone())  # x is the residual stream, updated in place by the next layers
        return enc.neck(x)
