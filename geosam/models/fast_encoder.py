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
modules. With low precision on CPUs with AMX (bf16 autocast, ``dtype="auto"``
there) this is ~1.3x faster per chip than the stock forward (`_layer`). The
widened q and k triple the attention's products, though: where the attention
kernel runs its products on AMX tiles (bf16, heads of a multiple of 16
numbers: `geosam.models.cpu_attention.amx_available`) `_layer_mixed` runs
instead (Intel Xeon with AMX, one thread, ViT-B: 1.90-1.97 vs 2.20-2.37 s;
ViT-H, heads of 80: 5.9-6.4 vs 9.3-10.0 s). On
CPUs without AMX torch's bf16 flash attention runs far below the peak (AMD EPYC
Zen 4, one thread: 7.3 of the stock bf16 encoder's 11.6 s), so there
`_layer_mixed` runs the projections and the MLP in bf16 (the GELU fused into
the first product) and the attention through
`geosam.models.encoder_attention`'s kernels on the bf16 q, k, v (with bf16
products on AVX-512 BF16 CPUs, the probabilities rounded): the ViT-B encoder
5.5-5.7 s vs 11.8-12.5 s (stock path) and 9.9-10.1 s (float32), as close to
float32 as the stock bf16 forward.

In float32 on the CPU the wider products cost more than the mask saves, and
torch's fused attention and float32 GEMM run far below the CPU's peak: there
the attention runs explicitly (`geosam.models.encoder_attention`), the qkv /
output projections and the MLP (GELU fused) through
`geosam.models.cpu_gemm.linear`, the windowed layers' projections on the real
tokens only (`_windowed_attention_f32`: no padded token is projected), the
qkv projection in a buffer kept for the whole forward (`_buffer`) and the MLP by
blocks of rows (`_add_mlp_f32`), so that no layer takes fresh pages for them. AMD
EPYC Zen 4, one thread: the ViT-B encoder 9.9 vs 10.7-11.0 s before the fused
CPU attention kernels (see docs/performance.md).

Float32 results equal the stock forward to rounding (~1e-6 relative).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_attention import amx_available as attention_on_amx
from geosam.models.cpu_convert import add_bf16_, add_norm_low, norm_low
from geosam.models.cpu_fused import kept_linear_low, linear_params
from geosam.models.cpu_gemm import exact_gelu, linear, linear_gelu_low, row_blocks
from geosam.models.device import cpu_bf16_kind
from geosam.models.encoder_attention import attend, attend_bf16_tokens, attend_windows

__all__ = ["fast_encoder_supported", "fast_image_embeddings"]

try:  # the neck whose forward `_neck_f32` reproduces (transformers' SAM / SAM-HQ ViT)
    from transformers.models.sam.modeling_sam import SamVisionNeck

    _STOCK_NECK_FORWARD: Any = SamVisionNeck.forward
except ImportError:  # pragma: no cover - transformers without SAM
    _STOCK_NECK_FORWARD = None


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


def _attention_f32(attn: Any, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``attn(x)`` (a ``SamVisionAttention``) in float32 with explicit scores; x (B, H, W, C) -> (B, H, W, C)."""
    qkv = linear(x, attn.qkv.weight, attn.qkv.bias, out=_buffer(buffers, "qkv", (*x.shape[:-1], 3 * x.shape[-1]), x))
    return linear(attend(attn, qkv), attn.proj.weight, attn.proj.bias)


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
    attention runs one window at a time (`attend` on the window, all heads
    batched, the relative-position tables built once: a window's scores, 12 x
    196 x 196 for SAM's ViT, stay in cache from the product through the
    softmax to the values), each window's output goes straight to
    its place in the (B, H, W, C) map, and the output projection runs on the
    real tokens only. AMD EPYC Zen 3, one thread, ViT-B at 1024 px: a windowed
    layer's attention alone (scores to values) 0.15 s -> 0.08 s, the whole
    float32 encoder bit-identical to the batched windows.
    """
    attn = layer.attn
    b, hh, ww, c = h.shape
    qkv = linear(h, attn.qkv.weight, attn.qkv.bias, out=_buffer(buffers, "qkv", (b, hh, ww, 3 * c), h))  # real tokens
    return linear(attend_windows(layer, qkv, attn.qkv.bias), attn.proj.weight, attn.proj.bias)


def _add_mlp_f32(mlp: Any, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x += mlp(h)`` (a ``SamMLPBlock``: lin1, act, lin2) with oneDNN products, GELU fused where it is exact, by
    blocks of rows whose hidden activations stay below `geosam.models.cpu_gemm.ROW_BLOCK_BYTES` (heap memory used
    again rather than a fresh 50 MB block every layer for a ViT-B at 1024 px); x contiguous, updated in place."""
    if not all(hasattr(mlp, a) for a in ("lin1", "lin2", "act")):
        return x.add_(mlp(h))
    w1, b1, w2, b2 = mlp.lin1.weight, mlp.lin1.bias, mlp.lin2.weight, mlp.lin2.bias
    hr, xr = h.reshape(-1, h.shape[-1]), x.view(-1, x.shape[-1])
    for r0, r1 in row_blocks(hr.shape[0], w1.shape[0], h.element_size()):
        hidden = linear(hr[r0:r1], w1, b1, gelu=True) if exact_gelu(mlp.act) else mlp.act(linear(hr[r0:r1], w1, b1))
        xr[r0:r1].add_(linear(hidden, w2, b2))
    return x


def _layer_f32(layer: Any, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``SamVisionLayer.forward`` in float32 with `_attention_f32` and `_add_mlp_f32`; x updated in place.

    ``buffers``: the large intermediates' buffers, shared by the layers of one forward (`_buffer`).
    """
    h = layer.layer_norm1(x)
    h = _windowed_attention_f32(layer, h, buffers) if layer.window_size > 0 else _attention_f32(layer.attn, h, buffers)
    x.add_(h)
    return _add_mlp_f32(layer.mlp, layer.layer_norm2(x), x)


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
    add_bf16_(x, h)
    return _add_mlp_low(layer, x, dtype)


def _low(module: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``module(x)`` under autocast to ``dtype``: `geosam.models.cpu_gemm.linear_low` for a plain ``nn.Linear``, on its
    weight and bias rounded to ``dtype`` once and kept (`geosam.models.cpu_fused.linear_params`)."""
    return kept_linear_low(module, x, dtype) if type(module) is torch.nn.Linear else module(x)


def _zeros_projected(linear_module: Any, dtype: torch.dtype) -> torch.Tensor:
    """``linear_module(zeros)[0]`` under autocast to ``dtype``: for a plain ``nn.Linear`` its bias rounded to
    ``dtype`` (+ 0: a signed zero's sum is +0), without casting its weight for a product of one row of zeros; any
    other module runs on that row."""
    device = linear_module.weight.device
    if type(linear_module) is not torch.nn.Linear:
        return linear_module(torch.zeros((1, linear_module.in_features), device=device))[0]
    if linear_module.bias is None:
        return torch.zeros(linear_module.out_features, dtype=dtype, device=device)
    return linear_module.bias.to(dtype) + 0


def _layer_mixed(
    layer: Any, x: torch.Tensor, dtype: torch.dtype, buffers: dict[str, torch.Tensor] | None = None,
    next_norm: Any = None,
) -> torch.Tensor:
    """``SamVisionLayer.forward`` under CPU autocast with the attention outside torch's; ``x`` updated in place.

    The projections and the MLP run in the autocast dtype (oneDNN's bf16 products, ~2x float32's on AVX-512 BF16;
    the MLP's exact GELU fused into its first product, `geosam.models.cpu_gemm.linear_gelu_low`), the scores,
    softmax and values through `attend` / `attend_windows` on the low-precision qkv widened to float32 (in bf16:
    the AVX-512 kernel's bf16 products where the CPU has them, which lose only the probabilities' rounding since
    q, k, v are bf16 numbers already). torch's CPU flash attention in bf16 runs far below the peak without AMX
    (AMD EPYC Zen 4, one thread, ViT-B at 1024 px: 7.3 of the stock bf16 encoder's 11.6 s); the float32 kernels
    take 2.7 s, with bf16 products ~1.75 s. In bf16 the projections run outside autocast's ``addmm``
    (`geosam.models.cpu_gemm.linear_low`), their inputs rounded and their outputs added into the float32 stream in
    one pass each (`geosam.models.cpu_convert`), a padded token's q, k, v are the rounded bias: autocast's bits, and
    on an Intel Xeon with AMX (one thread, ViT-B at 1024 px) 1.53-1.70 vs 1.72-1.94 s an encode. Each residual add
    and the norm after it in one pass over the stream (`_add_mlp_low`; ``next_norm``: the next layer's first norm,
    its output left in ``buffers`` for that layer).
    """
    attn = layer.attn
    normed = buffers.pop("normed", None) if buffers is not None else None  # the previous layer's fused add and norm
    qkv_low = _low(attn.qkv, normed if normed is not None else norm_low(layer.layer_norm1, x, dtype), dtype)
    bf16 = qkv_low.dtype == torch.bfloat16  # q, k, v bf16 numbers: the AVX-512 BF16 kernel's products lose nothing
    # windows: a padded token's q, k, v are zeros through the same (low-precision) projection: its bias rounded
    pad_low = _zeros_projected(attn.qkv, qkv_low.dtype) if layer.window_size > 0 else None
    out = attend_bf16_tokens(layer, qkv_low, pad_low) if bf16 and attention_on_amx() else None  # AMX: bf16 read as is
    if out is None:
        qkv = _buffer(buffers, "qkv", qkv_low.shape, x)  # widened into the forward's buffer (38 MB for a ViT-B)
        qkv = qkv_low.float() if qkv is None else qkv.copy_(qkv_low)
        pad_qkv = pad_low.float() if pad_low is not None else None
        with torch.autocast(device_type=x.device.type, enabled=False):  # torch's products in the fallbacks: float32
            out = attend(attn, qkv, bf16=bf16) if pad_qkv is None else attend_windows(layer, qkv, pad_qkv, bf16)
    return _add_mlp_low(layer, x, qkv_low.dtype, _low(attn.proj, out, dtype), buffers, next_norm)


def _add_mlp_low(layer: Any, x: torch.Tensor, dtype: torch.dtype, pending: torch.Tensor | None = None,
                 buffers: dict[str, torch.Tensor] | None = None, next_norm: Any = None) -> torch.Tensor:  # fmt: skip
    """``x += pending`` (the attention's output, if given), then ``x += layer.mlp(layer.layer_norm2(x))`` under
    autocast to ``dtype``, the exact GELU fused into the first product (`geosam.models.cpu_gemm.linear_gelu_low`: on
    the float32 sums, and no second pass over the 4096 x 3072 hidden activations: Intel Xeon with AMX, one thread,
    ViT-B at 1024 px, torch's bf16 GELU 145 of the encoder's 2500 ms). Each add and the norm after it in one pass
    (`geosam.models.cpu_convert.add_norm_low`); with ``next_norm`` and ``buffers``, ``buffers["normed"]`` is
    ``next_norm(x)`` so made."""
    mlp = layer.mlp
    if not (all(hasattr(mlp, a) for a in ("lin1", "lin2", "act")) and exact_gelu(mlp.act)) or x.device.type != "cpu":
        if pending is not None:
            add_bf16_(x, pending)
        return x.add_(mlp(layer.layer_norm2(x)))
    normed = norm_low(layer.layer_norm2, x, dtype) if pending is None else add_norm_low(x, pending, layer.layer_norm2, dtype)
    out = _low(mlp.lin2, linear_gelu_low(normed, linear_params(mlp.lin1, dtype)[0], mlp.lin1.bias, dtype), dtype)
    if next_norm is not None and buffers is not None and dtype == torch.bfloat16:
        buffers["normed"] = add_norm_low(x, out, next_norm, dtype)
        return x
    return add_bf16_(x, out)


def _neck_f32(neck: Any, x: torch.Tensor) -> torch.Tensor:
    """``SamVisionNeck(x)`` in float32 on the CPU with its convolutions as `geosam.models.cpu_gemm.linear` products;
    x (B, H, W, C) -> (B, C', H, W).

    oneDNN's float32 convolutions sum in an order that depends on the thread count (AMD EPYC Zen 4: the ViT-B's
    embeddings 1 vs 2 threads up to 3.8e-6 apart, every layer before the neck equal), so Dask workers with other
    thread counts would not give the same objects; the 1 x 1 convolution is a product over the channels, the 3 x 3
    one a product over the 9 shifted copies of the map (im2col, 9 C columns), both through oneDNN where it works
    (``invariant``: MKL's AVX-512 GEMM, Intel's float32 path, splits the 9 C = 2304 sums between 2 threads but not
    between 1 or 3), thread-invariant. The layer
    norms are SamLayerNorm's own computation (channels last). Other necks run as they are.
    """
    parts: list[Any] = [getattr(neck, a, None) for a in ("conv1", "conv2", "layer_norm1", "layer_norm2")]
    c1, c2, n1, n2 = parts
    convs_fit = (
        isinstance(c1, torch.nn.Conv2d) and isinstance(c2, torch.nn.Conv2d) and c1.kernel_size == (1, 1)
        and c2.kernel_size == (3, 3) and c2.padding == (1, 1) and all(
            c.stride == (1, 1) and c.dilation == (1, 1) and c.groups == 1 and c.padding_mode == "zeros" for c in (c1, c2)
        )
    )  # fmt: skip
    norms_fit = all(isinstance(n, torch.nn.LayerNorm) and getattr(n, "data_format", "") == "channels_first" for n in (n1, n2))
    if not (convs_fit and norms_fit and x.device.type == "cpu" and type(neck).forward is _STOCK_NECK_FORWARD):
        return neck(x)
    hh, ww = x.shape[1], x.shape[2]
    h = F.layer_norm(linear(x, c1.weight.flatten(1), c1.bias, invariant=True), n1.normalized_shape, n1.weight, n1.bias, n1.eps)
    c = h.shape[-1]
    padded = F.pad(h, (0, 0, 1, 1, 1, 1))  # (B, H + 2, W + 2, C)
    cols = torch.cat([padded[:, ky : ky + hh, kx : kx + ww] for ky in range(3) for kx in range(3)], dim=-1)
    h = linear(cols, c2.weight.permute(0, 2, 3, 1).reshape(c2.out_channels, 9 * c), c2.bias, invariant=True)
    h = F.layer_norm(h, n2.normalized_shape, n2.weight, n2.bias, n2.eps)
    return h.permute(0, 3, 1, 2)


def _mixed_attention(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether `_layer_mixed` runs: a low precision on a CPU without AMX, or bf16 on a CPU with AMX where the
    attention kernel's products run on AMX tiles (`geosam.models.cpu_attention.amx_available`, head sizes that are
    a multiple of 16): Intel Xeon with AMX, one thread, ViT-B at 1024 px, a global layer's attention 0.145 s vs
    ~0.21 s in torch's bf16 flash attention on the widened q, k, v (which triple its products' size), the bf16
    encoder 1.90-1.97 s vs 2.20-2.37 s (alternating); ViT-H (heads of 80, padded to the tiles' 32) 5.9-6.4 vs
    9.3-10.0 s, as far from the float32 embeddings as before (8.1e-3 relative). Elsewhere torch's flash attention
    (`_layer`)."""
    if dtype == torch.float32 or device.type != "cpu":
        return False
    if cpu_bf16_kind() != "amx":
        return True
    return dtype == torch.bfloat16 and head_dim % 16 == 0 and attention_on_amx()


def fast_image_embeddings(
    model: Any,
    pixel_values: torch.Tensor,
    dtype: torch.dtype | None = None,
    intermediates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``model.get_image_embeddings(pixel_values)`` (B, C, h, w) with mask-free relative-position attention.

    dtype: compute dtype; other than float32 the forward runs under autocast
    (as `geosam.models.encode` does), the attention in that dtype on CUDA and
    on CPUs with AMX (in the AMX attention kernel where it runs), in float32
    (or with AVX-512 BF16 products) on other CPUs (`_layer_mixed`). Default: the
    autocast dtype if autocast is on, else float32. Float32 runs the explicit
    attention of `geosam.models.encoder_attention` (see the module docstring).

    intermediates: a list to which the output (B, H, W, C) of every global-attention layer (``window_size`` 0) is
    appended, as SAM-HQ's vision encoder returns them (its ``intermediate_embeddings``).
    """
    device_type = pixel_values.device.type
    if dtype is None:
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    enc = _unwrap(model.vision_encoder)
    ctx = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device_type, dtype=dtype)
    with torch.inference_mode(), ctx:
        # the residual stream, updated in place: contiguous (the patch embedding is a permuted view of the convolution's
        # output, and elementwise results keep that layout), else every layer norm copies it and every residual add
        # walks it by strides (AMD EPYC Zen 3, 1 thread: 0.5-0.7 s of a ViT-B encoder at 1024 px). One copy into it,
        # then the position embedding added in place: the same numbers as adding to the permuted view and copying
        # that (Intel Xeon with AMX, one thread, bf16: 44 vs 69 ms with the convolution)
        # in a low precision on the CPU the pixels channels-last: oneDNN's convolution then writes the patches in the
        # residual stream's layout, and the copy below is a plain widening instead of a transposing one (Intel Xeon
        # with AMX, one thread, bf16, 1024 px: 43-51 -> 16-21 ms; the same bits as the stock layout there, at 1, 2 and
        # 3 threads). Float32 keeps the stock layout, whose bits the pipeline's masks are compared with.
        low_cpu = dtype != torch.float32 and device_type == "cpu"
        patches = enc.patch_embed(pixel_values.contiguous(memory_format=torch.channels_last) if low_cpu else pixel_values)
        x = torch.empty(patches.shape, dtype=torch.float32, device=patches.device).copy_(patches)
        pos = enc.pos_embed
        if pos is not None:
            x = x.add_(pos) if x.shape == torch.broadcast_shapes(x.shape, pos.shape) else x + pos
        buffers: dict[str, torch.Tensor] = {}
        attn = enc.layers[0].attn if len(enc.layers) else None
        head_dim = int(attn.qkv.in_features // attn.num_attention_heads) if attn is not None else 0
        mixed = _mixed_attention(pixel_values.device, dtype, head_dim)
        layers = list(enc.layers)
        for i, layer in enumerate(layers):
            keep = intermediates is not None and layer.window_size == 0  # x itself after this layer
            nxt = layers[i + 1].layer_norm1 if i + 1 < len(layers) and not keep else None
            if dtype == torch.float32:
                x = _layer_f32(layer, x, buffers)
            else:
                x = _layer_mixed(layer, x, dtype, buffers, nxt) if mixed else _layer(layer, x, dtype)
            if intermediates is not None and layer.window_size == 0:
                intermediates.append(x.clone())  # x is the residual stream, updated in place by the next layers
        return _neck_f32(enc.neck, x) if dtype == torch.float32 else enc.neck(x)
