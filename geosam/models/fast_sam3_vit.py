"""SAM 3's ViT backbone on the CPU through oneDNN's fused operators: `fast_vision_features`.

transformers' ``Sam3ViTModel`` under bf16 autocast converts all of its ~450 M weights again on every call, projects
queries, keys and values as three products, runs each MLP's GELU as its own pass over (5184, 4736) activations, and
recomputes every layer's rotary cosines and sines. Here the weights are converted once to the compute dtype and kept
beside the model (`geosam.models.cpu_fused`; queries, keys and values as one product), the GELU is fused into the
MLP's first product, in float32 the residuals are added by the products that end each part, the rotary embedding is
geosam's one-pass kernel (`geosam.models.cpu_convert.rope`, transformers' bits) with each layer's cosines and sines
kept, and the attention runs window by window through geosam's attention kernel (`geosam.models.cpu_attention`:
bf16 on AMX tiles, float32 on AVX-512; the queries and keys rotated in place in the projection; torch's fused
attention elsewhere; since session 40, the ViT's attention 1.29x in bf16, 1.18x in float32 on an Intel Xeon with
AMX). The residual stream stays float32 in
every dtype, as under autocast; the feature pyramid (``vision_encoder.neck``) is the module's, under the dtype's
autocast. Float32 matches the module to float rounding, bf16 is as close to float32 as autocast's bf16
(``tests/test_sam3_vit.py``).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosam.models.cpu_convert import add_bf16_, add_norm_low, norm_low
from geosam.models.cpu_fused import Kept, Weights, conv2d, ops_work, product, weights_of

__all__ = ["fast_sam3_vit_supported", "fast_vision_features"]

#: Per backbone: fused q/k/v weights, rotary tables and tiled position embeddings (beside the module, not in it).
_KEPT: weakref.WeakKeyDictionary[nn.Module, Kept] = weakref.WeakKeyDictionary()


def fast_sam3_vit_supported(model: Any, dtype: torch.dtype) -> bool:
    """Whether ``model`` is a ``Sam3Model`` whose vision backbone is transformers' ``Sam3ViTModel`` as this module
    reads it, and oneDNN's fused operators run ``dtype`` here."""
    try:
        from transformers.models.sam3.modeling_sam3 import Sam3ViTModel
    except ImportError:  # pragma: no cover - transformers without SAM 3
        return False
    vit: Any = getattr(getattr(model, "vision_encoder", None), "backbone", None)
    if not isinstance(vit, Sam3ViTModel) or dtype not in (torch.float32, torch.bfloat16):
        return False
    cfg = vit.config
    if cfg.hidden_act != "gelu" or vit.embeddings.patch_embeddings.projection.bias is not None:
        return False
    return ops_work(dtype)


def _kept(vit: nn.Module, key: tuple[Any, ...], tensors: tuple[torch.Tensor, ...], make: Any) -> Any:
    return _KEPT.setdefault(vit, Kept())(key, tensors, make)


def _qkv(vit: nn.Module, layer: Any, wt: Weights) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's query, key and value projections as one product's weight (3C, C) and bias (3C), in ``wt``'s
    dtype (made again when a projection changes; the three are not also kept apart)."""
    a = layer.attention
    projs = (a.q_proj, a.k_proj, a.v_proj)

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([p.weight.detach() for p in projs]).to(wt.dtype).contiguous(),
                torch.cat([p.bias.detach() for p in projs]).to(wt.dtype).contiguous())  # fmt: skip

    tensors = tuple(p.weight for p in projs) + tuple(p.bias for p in projs)
    return _kept(vit, ("qkv", id(layer), wt.dtype), tensors, make)


def _rotary(vit: nn.Module, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's rotary cosines and sines (N, d), float32, as its module makes them on every call (kept)."""

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = layer.rotary_emb(layer.position_ids, layer.position_ids)
        return cos.reshape(cos.shape[-2], cos.shape[-1]).contiguous(), sin.reshape(sin.shape[-2], sin.shape[-1]).contiguous()

    return _kept(vit, ("rope", id(layer)), (layer.position_ids,), make)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb_2d`` for one of x (B, heads, N, d): geosam's kernel, else its formula."""
    from geosam.models.cpu_convert import rope, rope_reference

    out = rope(x, cos[None], sin[None])
    return out if out is not None else rope_reference(x, cos[None], sin[None]).to(x.dtype)


def _kernel_attention(qkv: torch.Tensor, nwin: int, n: int, heads: int, scale: float, cos: torch.Tensor,
                      sin: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
    """The windows' attention of ``qkv`` (nwin * n, 3C) through `geosam.models.cpu_attention`'s kernel, the queries
    and keys rotated in place first (`geosam.models.cpu_convert.rope`, transformers' bits): (nwin * n, C) in qkv's
    dtype, or None where the kernel or the rotation does not run here (qkv as the product left it); torch's fused
    attention on the rotated views where the kernel turns the windows down. bf16 on AMX tiles (heads of a multiple of 8
    up to 128), float32 on AVX-512. Intel Xeon with AMX, 2 threads, SAM 3's default ViT at 1008 px, torch's fused
    attention -> the kernel: bf16 a global layer 176 -> 146 ms, a layer of nine 24 x 24 windows 26.9 -> 18.9 ms;
    float32 557 -> 513 ms and 88.9 -> 59.3 ms. bf16 windows run as one map of the windows stacked (the kernel's
    windowed tasks, which fetch the next window's rows ahead), the same bits as window by window: 42.7 -> 39.3 ms a
    layer (1 thread 67.6 -> 60.0 ms, the same process, a slower phase of the host); float32 stays window by window
    (whole maps of 32k columns run the kernel's chunked softmax: 95 vs 100 ms)."""
    from geosam.models.cpu_attention import attention, takes
    from geosam.models.cpu_convert import rope

    c = qkv.shape[1] // 3
    d = c // heads
    bf16 = qkv.dtype == torch.bfloat16
    if not takes(qkv.dtype, d):
        return None
    q, k, v = (qkv.view(nwin, n, 3, heads, d)[:, :, i].transpose(1, 2) for i in range(3))
    if rope(q, cos[None], sin[None], in_place=True) is None:
        return None  # qkv untouched
    if rope(k, cos[None], sin[None], in_place=True) is not None:
        out = torch.empty((nwin * n, c), dtype=qkv.dtype)
        side = math.isqrt(n)
        if bf16 and nwin > 1 and side * side == n:  # the windows stacked as one map of nwin * side rows, which they tile
            if attention(qkv.view(nwin * side, side, 3 * c), heads, scale, None, out.view(nwin * side, side, c), side,
                         qkv.new_zeros(3 * c), bf16=True):  # fmt: skip
                return out
        elif all(attention(qkv[w * n:(w + 1) * n].view(1, n, 3 * c), heads, scale, None,
                           out[w * n:(w + 1) * n].view(1, n, c), 0, None, bf16=bf16) for w in range(nwin)):  # fmt: skip
            return out
    else:  # pragma: no cover - the kernel rotated the queries
        k = _rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, scale=scale)  # the queries (and keys) rotated already
    return o.transpose(1, 2).reshape(nwin * n, c)


def _layer(t: torch.Tensor, h: int, w: int, vit: nn.Module, layer: Any, wt: Weights, normed: torch.Tensor | None = None,
           next_norm: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``Sam3ViTLayer`` on the float32 stream t (h*w, C), which it may update in place: (the stream after the layer,
    ``next_norm`` of it rounded to bf16 or None). In bf16 each residual add of a bf16 output and the layer norm after
    it run as one pass over the stream (`geosam.models.cpu_convert.add_norm_low`: torch's bits; the stock order was
    a mixed-dtype add making a new stream, the norm, the rounding), the MLP's add with ``next_norm`` (the next
    layer's first norm) when given; ``normed``: this layer's first norm so made by the previous layer."""
    low = wt.dtype
    c = t.shape[-1]
    x = (normed if normed is not None else norm_low(layer.layer_norm1, t, low)).to(low).view(h, w, c)
    ws = layer.window_size
    if ws > 0:
        ph, pw = (-h) % ws, (-w) % ws
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        nh, nw = (h + ph) // ws, (w + pw) // ws
        win = x.view(nh, ws, nw, ws, c).transpose(1, 2).reshape(nh * nw, ws * ws, c)
    else:
        win = x.view(1, h * w, c)
    nwin, n = win.shape[:2]
    attn = layer.attention
    heads = attn.num_attention_heads
    wq, bq = _qkv(vit, layer, wt)
    qkv = product(win.reshape(nwin * n, c), wq, bq)
    cos, sin = _rotary(vit, layer)
    o = _kernel_attention(qkv, nwin, n, heads, attn.scaling, cos, sin)
    if o is None:
        q, k, v = (qkv.view(nwin, n, 3, heads, -1)[:, :, i].transpose(1, 2) for i in range(3))  # (windows, heads, n, d)
        o = F.scaled_dot_product_attention(_rope(q, cos, sin), _rope(k, cos, sin), v, scale=attn.scaling)
        o = o.transpose(1, 2).reshape(nwin * n, c)
    o = product(o, wt(attn.o_proj.weight), wt.get(attn.o_proj.bias))
    if ws > 0:
        o = o.view(nh, nw, ws, ws, c).transpose(1, 2).reshape(nh * ws, nw * ws, c)[:h, :w].reshape(h * w, c)
    mlp = layer.mlp
    if low == torch.float32:
        t = t + o
        hid = product(layer.layer_norm2(t), wt(mlp.fc1.weight), wt.get(mlp.fc1.bias), gelu=True)
        return product(hid, wt(mlp.fc2.weight), wt.get(mlp.fc2.bias), add=t), None
    y = add_norm_low(t, o, layer.layer_norm2, low).to(low)  # the stream is float32 in every dtype, as under autocast
    out = product(product(y, wt(mlp.fc1.weight), wt.get(mlp.fc1.bias), gelu=True), wt(mlp.fc2.weight), wt.get(mlp.fc2.bias))
    if next_norm is not None:
        return t, add_norm_low(t, out, next_norm, low)
    return add_bf16_(t, out), None


def _backbone(vit: Any, x: torch.Tensor, wt: Weights) -> torch.Tensor:
    """One image (3, S, S) float32 -> the backbone's last hidden state (h*w, C) float32."""
    emb = vit.embeddings
    m = x[None].to(wt.dtype).contiguous(memory_format=torch.channels_last)
    patches = conv2d(m, emb.patch_embeddings.projection, wt)  # (1, C, h, w) channels-last
    h, w = patches.shape[2:]
    pos_p = emb.position_embeddings
    pos = _kept(vit, ("pos", h, w), (pos_p,),
                lambda: emb._tile_position_embeddings(pos_p.detach(), h, w)[0].float().contiguous())  # fmt: skip
    t = patches.permute(0, 2, 3, 1).reshape(h * w, -1).float() + pos
    ln = vit.layer_norm
    t = F.layer_norm(t, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    layers = list(vit.layers)
    normed = None
    for i, layer in enumerate(layers):
        nxt = layers[i + 1].layer_norm1 if i + 1 < len(layers) else None
        t, normed = _layer(t, h, w, vit, layer, wt, normed, nxt)
    return t


def fast_vision_features(model: Any, pixel_values: torch.Tensor, dtype: torch.dtype) -> Any:
    """``model.get_vision_features(pixel_values)`` of a ``Sam3Model`` (`fast_sam3_vit_supported`) with its ViT
    computed in ``dtype`` (float32 or bfloat16) through oneDNN's fused operators, its feature pyramid under the
    dtype's autocast: a ``Sam3VisionEncoderOutput`` (no per-layer hidden states or attentions)."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    enc = model.vision_encoder
    vit = enc.backbone
    wt = weights_of(vit, dtype)
    patch = vit.config.patch_size
    with torch.inference_mode():
        hidden = torch.stack([_backbone(vit, x, wt) for x in pixel_values.float()])  # (B, h*w, C)
        b, (hh, ww) = hidden.shape[0], (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        spatial = hidden.view(b, hh, ww, -1).permute(0, 3, 1, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            fpn, fpn_pos = enc.neck(spatial)
    return Sam3VisionEncoderOutput(last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=fpn_pos)
