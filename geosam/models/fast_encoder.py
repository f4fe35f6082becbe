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
modules. With low precision (bf16 autocast, the CPU-with-AMX default) this is
~1.3x faster per chip than the stock forward; in float32 the wider products
cost more than the mask saves, so `geosam.models.encode` uses it only
under autocast. Results equal the stock forward to rounding.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

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


def fast_image_embeddings(model: Any, pixel_values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``model.get_image_embeddings(pixel_values)`` (B, C, h, w) with mask-free relative-position attention.

    dtype: compute dtype; other than float32 the forward runs under autocast
    (as `geosam.models.encode` does) and attention in that dtype. Default:
    the autocast dtype if autocast is on, else float32.
    """
    device_type = pixel_values.device.type
    if dtype is None:
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    enc = _unwrap(model.vision_encoder)
    ctx = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device_type, dtype=dtype)
    with torch.inference_mode(), ctx:
        x = enc.patch_embed(pixel_values).to(torch.float32)  # a fresh tensor: the residual stream, updated in place
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for layer in enc.layers:
            x = _layer(layer, x, dtype)
        return enc.neck(x)
