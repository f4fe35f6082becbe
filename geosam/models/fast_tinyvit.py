"""LiteMedSAM's TinyViT on the CPU through oneDNN's fused operators: the same network in fewer passes.

`geosam.models.tinyvit.TinyViTEncoder` runs module by module: every convolution writes its map, then a GELU
reads and writes it again (LiteMedSAM's first stage keeps 256 x 256 maps of 256 channels, 64 MiB in float32),
the window attention's scores (25 windows x 5 heads x 196 x 196 in the third stage) are written, biased,
soft-maxed and read back, and under bf16 autocast each product's operands are converted again on every call.
Here the encoder's weights are converted once to the compute dtype (kept beside the module, weak-keyed, per
parameter version), every map stays channels-last as a (pixels, channels) matrix, and:

* 1 x 1 convolutions are oneDNN products with the exact GELU fused into their output (``_linear_pointwise``),
  the residual added as they write (its binary post-op), depthwise 3 x 3 ones oneDNN convolutions with the GELU
  fused (``_convolution_pointwise``);
* the window attention is torch's fused attention (``scaled_dot_product_attention``) with the learned per-head
  biases as its additive mask (no score tensor in memory), or in bf16 on CPUs with AMX geosam's kernel
  (`geosam.models.cpu_bias_attention`: AMX tiles, about half torch's time for these windows);
* the first stage's 256 x 256 maps run by bands of rows below glibc's mmap threshold (`BAND_BYTES`);
* bf16 runs bf16 end to end (oneDNN sums in float32 and rounds once, where autocast rounds each product and then
  computes the GELU or the residual from the rounded value); layer norms are torch's (float32 statistics).

The same function as the module to float rounding: float32 within ~1e-5 of the module's embedding (oneDNN's
GELU and the fused attention sum in other orders), bf16 as close to float32 as autocast's bf16 is
(``tests/test_tinyvit.py``). Intel Xeon with AMX, one 256 px encode, 1 / 2 threads: float32 0.98 -> 0.67 s / 0.47 ->
0.36 s, bf16 0.47 -> 0.24 s / 0.23 -> 0.13 s (``benchmarks/bench_tinyvit.py``). Used by `geosam.models.encode` for LiteMedSAM on the CPU (`use_fast_tinyvit`)
where oneDNN's operators run; the module's forward everywhere else.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosam.models.cpu_fused import Kept as _Kept
from geosam.models.cpu_fused import Weights as _Weights
from geosam.models.cpu_fused import conv2d as _conv2d
from geosam.models.cpu_fused import layer_norm as _layer_norm
from geosam.models.cpu_fused import linear as _linear
from geosam.models.cpu_fused import ops_work as _ops_work
from geosam.models.cpu_fused import product as _product
from geosam.models.cpu_fused import weights_of as _weights
from geosam.models.tinyvit import ConvBN, PatchMerging, TinyViTBlock, TinyViTEncoder

__all__ = ["fast_tinyvit_embeddings", "fast_tinyvit_supported"]


def fast_tinyvit_supported(model: Any, dtype: torch.dtype) -> bool:
    """Whether ``model`` (a ``SamModel``) has a TinyViT encoder with its BatchNorms folded (LiteMedSAM as loaded,
    `geosam.models.tinyvit.fold_batch_norms`) and oneDNN's fused operators run ``dtype`` here."""
    enc = getattr(model, "vision_encoder", None)
    if not isinstance(enc, TinyViTEncoder) or dtype not in (torch.float32, torch.bfloat16):
        return False
    if any(isinstance(m, nn.BatchNorm2d) for m in enc.modules()):
        return False
    return _ops_work(dtype)


#: Bias masks per block and dtype: beside the modules, not in them (`geosam.models.cpu_fused`'s weights likewise).
_MASKS: weakref.WeakKeyDictionary[nn.Module, _Kept] = weakref.WeakKeyDictionary()


def _conv(cb: ConvBN) -> nn.Conv2d:
    conv = cb[0]
    assert isinstance(conv, nn.Conv2d)
    return conv


def _map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens (h*w, C) as a channels-last (1, C, h, w) map: a view."""
    return t.view(1, h, w, t.shape[-1]).permute(0, 3, 1, 2)


def _tokens(m: torch.Tensor) -> torch.Tensor:
    """A channels-last (1, C, h, w) map as tokens (h*w, C): a view (a copy if the map is not channels-last)."""
    return m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])


def _pointwise(t: torch.Tensor, cb: ConvBN, wt: _Weights, gelu: bool, add: torch.Tensor | None = None) -> torch.Tensor:
    """A 1 x 1 conv-BN (folded) on tokens (n, Cin) -> (n, Cout): GELU fused, or ``add`` (n, Cout) added."""
    conv = _conv(cb)
    return _product(t, wt(conv.weight, "1x1"), wt.get(conv.bias), gelu, add)


def _depthwise(m: torch.Tensor, cb: ConvBN, wt: _Weights, gelu: bool) -> torch.Tensor:
    """A 3 x 3 depthwise conv-BN (folded) on a channels-last map, GELU fused if ``gelu``."""
    return _conv2d(m, _conv(cb), wt, gelu)


#: Bytes of a band's widest map in the first stage (`_bands`): far below glibc's 32 MiB mmap threshold, so that the
#: bands' maps are heap memory used again rather than fresh pages from the kernel (a whole 256 x 256 x 256 map is
#: 32 MiB in bf16: oneDNN's 1 x 1 product into it took 17 ms against 2.9 ms for the same product in 4 bands of rows,
#: Intel Xeon with AMX, one thread).
BAND_BYTES = 4 * 1024 * 1024


def _bands(t: torch.Tensor, h: int, w: int, expand: ConvBN, dw: ConvBN, wt: _Weights,
           ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """A 1 x 1 conv-BN + GELU then a 3 x 3 depthwise conv-BN + GELU (stride 1 or 2, padding 1) on tokens of an
    (h, w) grid, by bands of output rows: yields (first row, end row, the band's tokens). Each band is computed from
    its input rows and the rows around it (zero padding only at the grid's edges), so the bands are the whole map's
    rows: the same products per pixel, only in pieces that stay below the mmap threshold (`BAND_BYTES`)."""
    s = _conv(dw).stride[0]
    ho = (h - 1) // s + 1
    width = max(_conv(expand).out_channels, 1) * w * t.element_size()
    rows = max(1, BAND_BYTES // width // s)
    for o0 in range(0, ho, rows):
        o1 = min(ho, o0 + rows)
        a = max(0, s * (o0 - 1))  # the band's first input row: the row above its first output's centre
        b = min(h, s * (o1 - 1) + 2)  # one past the row below its last output's centre
        y = _pointwise(t[a * w : b * w], expand, wt, gelu=True)
        m = _depthwise(_map(y, b - a, w), dw, wt, gelu=True)  # outputs centred on rows a, a + s, ...
        first = o0 - a // s
        yield o0, o1, _tokens(m[:, :, first : first + o1 - o0])


def _merge(t: torch.Tensor, h: int, w: int, pm: PatchMerging, wt: _Weights) -> tuple[torch.Tensor, int, int]:
    """`PatchMerging` on tokens of an (h, w) grid: tokens of the merged grid, its height and width."""
    s = _conv(pm.conv2).stride[0]
    hh, ww = (h - 1) // s + 1, (w - 1) // s + 1
    out = t.new_empty((hh * ww, _conv(pm.conv3).out_channels))
    for o0, o1, mid in _bands(t, h, w, pm.conv1, pm.conv2, wt):
        out[o0 * ww : o1 * ww] = _pointwise(mid, pm.conv3, wt, gelu=False)
    return out, hh, ww


def _mbconv(t: torch.Tensor, h: int, w: int, blk: Any, wt: _Weights) -> torch.Tensor:
    """`MBConv`: 1 x 1 expand + GELU, depthwise + GELU, 1 x 1 project + residual, GELU."""
    out = torch.empty_like(t)
    for o0, o1, mid in _bands(t, h, w, blk.conv1, blk.conv2, wt):
        rows = slice(o0 * w, o1 * w)
        out[rows] = torch.ops.aten.gelu_(_pointwise(mid, blk.conv3, wt, gelu=False, add=t[rows]))
    return out


def _bias_mask(blk: TinyViTBlock, dtype: torch.dtype) -> torch.Tensor:
    """The block's learned attention biases as an additive mask (1, heads, N, N) in ``dtype`` (kept)."""
    attn = blk.attn
    idx: torch.Tensor = attn.attention_bias_idxs  # type: ignore[assignment]  # a registered buffer

    def make() -> torch.Tensor:
        return attn.attention_biases.detach()[:, idx].to(dtype).unsqueeze(0).contiguous()

    return _MASKS.setdefault(blk, _Kept())(dtype, (attn.attention_biases, idx), make)


def _window_attention(qkv: torch.Tensor, blk: TinyViTBlock, wt: _Weights) -> torch.Tensor:
    """The windows' attention with the block's biases: qkv (windows, N, heads, 3, d) -> (windows, N, heads * d).
    bf16 on AMX tiles where `geosam.models.cpu_bias_attention` runs (Intel Xeon with AMX, one thread: 49-token
    windows 9.4 -> 5.1 ms a layer, 196-token 6.3 -> 3.3 ms), else torch's fused attention with the biases as mask."""
    attn = blk.attn
    if wt.dtype == torch.bfloat16:
        from geosam.models.cpu_bias_attention import attention

        out = attention(qkv, _bias_mask(blk, torch.float32)[0], attn.scale)
        if out is not None:
            return out
    q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=_bias_mask(blk, wt.dtype), scale=attn.scale)
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _block(t: torch.Tensor, h: int, w: int, blk: TinyViTBlock, wt: _Weights) -> torch.Tensor:
    """`TinyViTBlock` on tokens (h*w, C): window attention (zero padding to whole windows, as the module), local
    depthwise conv, MLP; residuals added by the products that end each part."""
    c = t.shape[-1]
    ws, attn = blk.window, blk.attn
    heads, kd = attn.num_heads, attn.key_dim
    pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
    y = t.view(h, w, c)
    if pad_b or pad_r:
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = h + pad_b, w + pad_r
    nh, nw = ph // ws, pw // ws
    n = ws * ws
    win = y.view(nh, ws, nw, ws, c).transpose(1, 2).reshape(nh * nw * n, c)
    qkv = _linear(_layer_norm(win, attn.norm, wt), attn.qkv, wt).view(nh * nw, n, heads, 3, kd)
    o = _window_attention(qkv, blk, wt).view(nh, nw, ws, ws, c).transpose(1, 2).reshape(ph, pw, c)
    if pad_b or pad_r:
        o = o[:h, :w]
    t = _linear(o.reshape(h * w, c), attn.proj, wt, add=t)  # x + proj(attention): the residual added as written
    t = _tokens(_depthwise(_map(t, h, w), blk.local_conv, wt, gelu=False))
    mlp = blk.mlp
    hid = _linear(_layer_norm(t, mlp.norm, wt), mlp.fc1, wt, gelu=True)
    return _linear(hid, mlp.fc2, wt, add=t)


def _neck(t: torch.Tensor, h: int, w: int, neck: Any, wt: _Weights) -> torch.Tensor:
    """1 x 1 conv, LayerNorm2d (over the channels: a layer norm of each token), 3 x 3 conv, LayerNorm2d."""
    c1, n1, c2, n2 = neck
    assert isinstance(c1, nn.Conv2d) and isinstance(c2, nn.Conv2d)
    y = _product(t, wt(c1.weight, "1x1"), wt.get(c1.bias))
    y = F.layer_norm(y, (y.shape[-1],), wt.get(n1.weight), wt.get(n1.bias), n1.eps)
    y = _tokens(_conv2d(_map(y, h, w), c2, wt, gelu=False))
    return F.layer_norm(y, (y.shape[-1],), wt.get(n2.weight), wt.get(n2.bias), n2.eps)


def _one_image(enc: TinyViTEncoder, x: torch.Tensor, wt: _Weights) -> torch.Tensor:
    """One image (3, S, S) float32 -> its embedding (256, 64, 64) float32."""
    s = enc.img_size
    t = x.permute(1, 2, 0).reshape(s * s, x.shape[0]).to(wt.dtype)
    pe: Any = enc.patch_embed.seq
    t = _pointwise(_pointwise(t, pe[0], wt, gelu=True), pe[2], wt, gelu=False)
    h = w = s
    layers: list[Any] = list(enc.layers)
    first = layers[0]
    for blk in first.blocks:
        t = _mbconv(t, h, w, blk, wt)
    t, h, w = _merge(t, h, w, first.downsample, wt)
    for stage in layers[1:]:
        for blk in stage.blocks:
            t = _block(t, h, w, blk, wt)
        if stage.downsample is not None:
            t, h, w = _merge(t, h, w, stage.downsample, wt)
    t = _neck(t, h, w, enc.neck, wt)
    return t.view(h, w, -1).permute(2, 0, 1).float().contiguous()


def fast_tinyvit_embeddings(model: Any, pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Image embeddings (B, 256, 64, 64) float32 of ``pixel_values`` (B, 3, 256, 256) through LiteMedSAM's TinyViT
    (``model.vision_encoder``, BatchNorms folded) computed in ``dtype`` (float32 or bfloat16) with oneDNN's fused
    operators (`fast_tinyvit_supported`)."""
    enc = model.vision_encoder
    s = enc.img_size
    if pixel_values.shape[-3:] != (3, s, s):
        raise ValueError(f"TinyViT needs {s} x {s} input, got {tuple(pixel_values.shape)}")
    wt = _weights(enc, dtype)
    with torch.inference_mode():
        return torch.stack([_one_image(enc, x, wt) for x in pixel_values.float()])
