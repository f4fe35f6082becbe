"""SAM 2's image encoder (Hiera and its feature pyramid) on the CPU through oneDNN's fused operators.

transformers' ``Sam2Model.get_image_embeddings`` under bf16 autocast converts every weight again on every call,
runs each GELU as its own pass over the MLP's hidden map, computes every multi-scale attention's scores a second time
and throws them away (``Sam2MultiScaleAttention`` soft-maxes ``q @ k^T`` over the heads before the real attention),
interpolates the position embedding bicubically on every call, and builds the sine position encodings of all four
pyramid levels, which ``get_image_embeddings`` never returns. Here (`fast_sam2_embeddings`):

* weights converted once to the compute dtype and kept beside the model (`geosam.models.cpu_fused`), every map a
  channels-last (pixels, channels) matrix;
* the MLP's GELU fused into its first product, and in float32 the residuals added by the products that end each
  part (their binary post-op); the attention is torch's fused attention on the windows, or in bf16 geosam's AVX-512 /
  AMX kernel (`geosam.models.cpu_attention`) on the whole map's projections, which windows them itself and pools a
  stage's first block's queries in each window; torch's query pooling (where the kernel does not run) and the skip
  connection's pooling a max over 2 x 2 views (no layout copy);
* the position embedding (bicubic background plus the tiled window embedding) made once per size and kept;
* no sine position encodings, no discarded scores.

The residual stream stays float32 in every dtype, as under autocast (a float32 residual plus a bf16 product is
float32): with ``dtype`` bf16 the products, the attention and the pyramid's convolutions run in bf16 on inputs
rounded once, as autocast's do. Float32 matches the module to float rounding (oneDNN sums in other orders), bf16 is as
close to float32 as autocast's bf16 (``tests/test_sam2_encoder.py``).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosam.models.cpu_convert import add_bf16_, add_norm_low, norm_low
from geosam.models.cpu_fused import Kept, Weights, conv2d, linear, ops_work, product, weights_of

__all__ = ["fast_hiera_supported", "fast_sam2_embeddings"]

#: Position embeddings per backbone and size (made from the parameters, kept beside the module).
_POS: weakref.WeakKeyDictionary[nn.Module, Kept] = weakref.WeakKeyDictionary()


def fast_hiera_supported(model: Any, dtype: torch.dtype) -> bool:
    """Whether ``model`` is a ``Sam2Model`` with transformers' Hiera backbone and feature pyramid as this module reads
    them, and oneDNN's fused operators run ``dtype`` here."""
    try:
        from transformers.models.sam2.modeling_sam2 import Sam2HieraDetModel, Sam2VisionNeck
    except ImportError:  # pragma: no cover - transformers without SAM 2
        return False
    enc: Any = getattr(model, "vision_encoder", None)
    backbone: Any = getattr(enc, "backbone", None)
    neck: Any = getattr(enc, "neck", None)
    if not isinstance(backbone, Sam2HieraDetModel) or not isinstance(neck, Sam2VisionNeck):
        return False
    if dtype not in (torch.float32, torch.bfloat16) or getattr(enc, "num_feature_levels", 0) != 3:
        return False
    dec: Any = getattr(model, "mask_decoder", None)
    if not all(isinstance(getattr(dec, n, None), nn.Conv2d) for n in ("conv_s0", "conv_s1")):
        return False
    convs = [*neck.convs, dec.conv_s0, dec.conv_s1]
    if any(tuple(c.kernel_size) != (1, 1) or tuple(c.stride) != (1, 1) or c.groups != 1 for c in convs):
        return False
    if len(backbone.stage_ends) != 4 or backbone.config.hidden_act != "gelu":
        return False
    blocks: list[Any] = list(backbone.blocks)
    if any(len(b.mlp.layers) or b.mlp.sigmoid_output for b in blocks):
        return False
    if any(b.query_stride and (tuple(b.query_stride) != (2, 2) or b.window_size < 2) for b in blocks):
        return False  # 2 x 2 query pooling in windows only (transformers' module cannot pool a global block either)
    return ops_work(dtype)


def _pos_embed(backbone: Any, h: int, w: int) -> torch.Tensor:
    """The backbone's position embedding at (h, w) as tokens (h*w, C) float32, whatever the compute dtype (kept per
    size while the parameters stay as they were)."""
    pe, pw = backbone.pos_embed, backbone.pos_embed_window

    def make() -> torch.Tensor:
        with torch.inference_mode():
            return backbone._get_pos_embed((h, w)).float().reshape(h * w, -1).contiguous()

    return _POS.setdefault(backbone, Kept())((h, w), (pe, pw), make)


def _pool(t: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, int, int]:
    """2 x 2 max pooling (stride 2, no padding, odd edges dropped) of tokens (h*w, C) or (..., h*w, C) as views:
    ``(pooled (h/2 * w/2, C) tokens, h/2, w/2)``."""
    c = t.shape[-1]
    ho, wo = h // 2, w // 2
    lead = t.shape[:-2]
    m = t.reshape(*lead, h, w, c)[..., : 2 * ho, : 2 * wo, :].reshape(*lead, ho, 2, wo, 2, c)
    rows = torch.maximum(m[..., 0, :, :, :], m[..., 1, :, :, :])  # (..., ho, wo, 2, c): two elementwise passes,
    return torch.maximum(rows[..., 0, :], rows[..., 1, :]).reshape(*lead, ho * wo, c), ho, wo  # 13x amax's speed


def _windows(x: torch.Tensor, h: int, w: int, ws: int) -> tuple[torch.Tensor, int, int]:
    """Tokens (h*w, C) as zero-padded windows (nh * nw, ws * ws, C): ``(windows, nh, nw)``."""
    c = x.shape[-1]
    y = x.view(h, w, c)
    ph, pw = (-h) % ws, (-w) % ws
    if ph or pw:
        y = F.pad(y, (0, 0, 0, pw, 0, ph))
    nh, nw = (h + ph) // ws, (w + pw) // ws
    return y.view(nh, ws, nw, ws, c).transpose(1, 2).reshape(nh * nw, ws * ws, c), nh, nw


def _unwindows(o: torch.Tensor, nh: int, nw: int, ws: int, h: int, w: int) -> torch.Tensor:
    """Windows (nh * nw, ws * ws, C) back to tokens (h*w, C), the padding cut."""
    c = o.shape[-1]
    y = o.view(nh, nw, ws, ws, c).transpose(1, 2).reshape(nh * ws, nw * ws, c)
    if nh * ws != h or nw * ws != w:
        y = y[:h, :w]
    return y.reshape(h * w, c)


def _kernel_attention(x: torch.Tensor, blk: Any, wt: Weights, h: int, w: int) -> torch.Tensor | None:
    """In bf16, ``blk``'s attention and output projection through `geosam.models.cpu_attention`
    (AVX-512, bf16 products on AMX tiles where the CPU has them), which takes the whole map's qkv projection and
    windows it itself (the padded tokens carry the projection's bias, as zero tokens do): tokens (h*w, dim), or None
    where the kernel does not run here or does not take these shapes, and in float32 (torch's fused attention was as
    fast: 1.31 vs 1.35 s an encode; bf16 0.44 -> 0.41 s, Intel Xeon with AMX, 2 threads, default config). A block
    that pools its queries (a stage's first) has the kernel pool them in each window (2 x 2 maxima of its tokens' q,
    `geosam.models.cpu_attention.reference_pooled`): tokens (h/2 * w/2, dim_out) then; before, the windows were copied
    out, their q pooled by torch and attended by its fused attention on windows of 4 to 49 queries."""
    from geosam.models.cpu_attention import attention, takes

    attn = blk.attn
    d = attn.dim_out // attn.num_attention_heads
    ws, pool = blk.window_size, bool(blk.query_stride)
    if wt.dtype != torch.bfloat16 or not takes(wt.dtype, d) or (pool and (ws < 2 or ws % 2 or min(h, w) < 2)):
        return None  # checked before the projection: bf16 tokens on AMX tiles, heads of a multiple of 8 up to 128
    qkv = linear(x, attn.qkv, wt).view(h, w, -1)
    c = qkv.shape[-1] // 3
    ho, wo = (h // 2, w // 2) if pool else (h, w)
    out = torch.empty((ho, wo, c), dtype=wt.dtype)
    bias = wt.get(attn.qkv.bias) if ws > 0 else None
    if not attention(qkv, attn.num_attention_heads, attn.scale, None, out, ws, bias, bf16=wt.dtype == torch.bfloat16,
                     pool_queries=pool):
        return None
    return linear(out.view(ho * wo, c), attn.proj, wt)


def _attention(x: torch.Tensor, blk: Any, wt: Weights, h: int, w: int) -> tuple[torch.Tensor, int, int]:
    """``blk``'s (pooled) multi-scale attention of normed tokens x (h*w, dim) in windows (global where the block's
    window size is 0), its output projection included: ``(tokens (h'*w', dim_out), h', w')``."""
    attn = blk.attn
    heads = attn.num_attention_heads
    stride = blk.query_stride
    ws = blk.window_size
    # geosam's attention kernel on the whole map's projections (it windows them itself, and pools the queries)
    o = _kernel_attention(x, blk, wt, h, w)
    if o is not None:
        return (o, h // 2, w // 2) if stride else (o, h, w)
    if ws > 0:
        win, nh, nw = _windows(x, h, w, ws)
    else:
        win, nh, nw = x.view(1, h * w, -1), 1, 1
    nwin, n = win.shape[:2]
    qkv = linear(win.reshape(nwin * n, -1), attn.qkv, wt).view(nwin, n, 3, heads, -1)
    q, k, v = qkv.unbind(2)  # (windows, n, heads, d)
    if stride:  # query pooling inside each window (`fast_hiera_supported`: pooling blocks have windows)
        q, _, _ = _pool(q.reshape(nwin, n, -1), ws, ws)
        q = q.view(nwin, -1, heads, k.shape[-1])
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=attn.scale)
    o = o.transpose(1, 2).reshape(nwin * o.shape[2], -1)  # (windows * n', heads * d)
    o = linear(o, attn.proj, wt)
    if not stride:
        return (_unwindows(o.view(nwin, n, -1), nh, nw, ws, h, w) if ws > 0 else o), h, w
    ho, wo = h // 2, w // 2
    return _unwindows(o.view(nwin, -1, o.shape[-1]), nh, nw, ws // 2, ho, wo), ho, wo


def _block(t: torch.Tensor, h: int, w: int, blk: Any, wt: Weights, normed: torch.Tensor | None = None,
           next_norm: Any = None) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:  # fmt: skip
    """``Sam2MultiScaleBlock`` on the float32 residual stream t (h*w, dim), which it may update in place: ``(tokens
    (h'*w', dim_out), h', w', next_norm of them rounded to bf16 or None)``. In bf16 each residual add of a bf16 output
    and the layer norm after it run as one pass over the stream (`geosam.models.cpu_convert.add_norm_low`: torch's
    bits, where torch made a new stream in its mixed-dtype add, then normed and rounded it), the MLP's add with
    ``next_norm`` (the next block's first norm) when given; ``normed``: this block's first norm so made."""
    low = wt.dtype
    x = (normed if normed is not None else norm_low(blk.layer_norm1, t, low)).to(low)
    if blk.dim != blk.dim_out:  # the skip connection: projected, pooled where the queries are
        residual = linear(x, blk.proj, wt)
        if blk.query_stride:
            residual, _, _ = _pool(residual, h, w)
        residual = residual.float()
    else:
        residual = t
    o, h, w = _attention(x, blk, wt, h, w)
    mlp = blk.mlp
    if low == torch.float32:
        t = residual + o
        hid = linear(blk.layer_norm2(t), mlp.proj_in, wt, gelu=True)
        return linear(hid, mlp.proj_out, wt, add=t), h, w, None
    y = add_norm_low(residual, o, blk.layer_norm2, low).to(low)  # the stream stays float32, as under autocast
    out = linear(linear(y, mlp.proj_in, wt, gelu=True), mlp.proj_out, wt)
    if next_norm is not None:
        return residual, h, w, add_norm_low(residual, out, next_norm, low)
    return add_bf16_(residual, out), h, w, None


def _lateral(t: torch.Tensor, conv: nn.Conv2d, wt: Weights, add: torch.Tensor | None = None) -> torch.Tensor:
    """A 1 x 1 convolution on tokens, ``add`` (same shape as the output, the compute dtype) added as it writes."""
    return product(t.to(wt.dtype), wt(conv.weight, "1x1"), wt.get(conv.bias), add=add)


def _one_image(model: Any, x: torch.Tensor, wt: Weights) -> list[torch.Tensor]:
    """One image (3, S, S) float32 -> ``get_image_embeddings``' levels for it, each (1, C, h, w) float32."""
    enc = model.vision_encoder
    backbone, neck = enc.backbone, enc.neck
    m = x[None].to(wt.dtype).contiguous(memory_format=torch.channels_last)
    emb = conv2d(m, backbone.patch_embed.projection, wt)  # (1, C, h, w) channels-last
    h, w = emb.shape[2:]
    t = emb.permute(0, 2, 3, 1).reshape(h * w, -1).float() + _pos_embed(backbone, h, w)
    stages: list[tuple[torch.Tensor, int, int]] = []
    blocks = list(backbone.blocks)
    normed = None
    for i, blk in enumerate(blocks):
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        t, h, w, normed = _block(t, h, w, blk, wt, normed, None if nxt is None else nxt.layer_norm1)
        if i in backbone.stage_ends:
            # kept for the pyramid: a copy where the next block would add into this stream in place (its skip not
            # projected; Hiera's stages begin with a projected one, so not in transformers' configurations)
            keep = nxt is not None and nxt.dim == nxt.dim_out and wt.dtype != torch.float32
            stages.append((t.clone() if keep else t, h, w))
    # the pyramid, top-down: the coarsest level only feeds the next (nearest 2x, added); the three finer returned
    n = len(stages) - 1
    levels: list[torch.Tensor] = []
    prev: torch.Tensor | None = None
    for i in range(n, -1, -1):
        s, hs, ws = stages[i]
        conv = neck.convs[n - i]
        if prev is not None and i in neck.fpn_top_down_levels:
            hp, wp = hs // 2, ws // 2
            up = prev.view(hp, 1, wp, 1, -1).expand(hp, 2, wp, 2, prev.shape[-1]).reshape(hs * ws, -1)
            prev = _lateral(s, conv, wt, add=up.contiguous())
        else:
            prev = _lateral(s, conv, wt)
        levels.append(prev)
    l2, l1, l0 = levels[1], levels[2], levels[3]
    dec = model.mask_decoder
    sizes = [(stages[j][1], stages[j][2]) for j in range(3)]
    outs = [_lateral(l0, dec.conv_s0, wt), _lateral(l1, dec.conv_s1, wt), l2.float() + model.no_memory_embedding[0, 0]]
    return [o.float().view(hh, ww, -1).permute(2, 0, 1)[None].contiguous() for o, (hh, ww) in zip(outs, sizes, strict=True)]


def fast_sam2_embeddings(model: Any, pixel_values: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """``model.get_image_embeddings(pixel_values)`` of a ``Sam2Model`` (`fast_hiera_supported`) computed in ``dtype``
    (float32 or bfloat16) with oneDNN's fused operators: the levels, finest first, each (B, C, h, w) float32."""
    wt = weights_of(model.vision_encoder, dtype)
    with torch.inference_mode():
        per_image = [_one_image(model, x, wt) for x in pixel_values.float()]
    return [torch.cat(level) for level in zip(*per_image, strict=True)]
