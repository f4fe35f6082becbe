"""TinyViT as LiteMedSAM uses it: (B, 3, 256, 256) in 0..1 -> (B, 256, 64, 64) image embeddings.

Our own port of the TinyViT variant in LiteMedSAM (1 x 1 patch embedding at
full resolution, stride-1 last merge), with the original parameter names so
the checkpoint's ``image_encoder.*`` weights load with ``strict=True``.
Token tensors are (B, H*W, C) in row-major pixel order of the stage's grid.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: side of the encoder input (px)
INPUT_SIZE = 256


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (children ``c`` and ``bn``).

    `fold_batch_norms` merges the BatchNorm into the convolution for inference.
    """

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


def fold_batch_norms(module: nn.Module) -> int:
    """Merge every `ConvBN`'s BatchNorm (its running statistics: inference only) into its convolution, in place.

    ``bn(c(x)) = c(x) * g + (beta - mean * g)`` with ``g = gamma / sqrt(var + eps)`` per output channel, so the
    convolution's weights are scaled by ``g`` and given that bias, and the BatchNorm becomes an identity: one
    pass less over each feature map (LiteMedSAM's first stage: 64 MiB maps at 256 x 256 x 256). The same function
    to float rounding. Returns how many were folded.
    """
    n = 0
    for m in module.modules():
        if not isinstance(m, ConvBN):
            continue
        conv, bn = m[0], m[1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            assert bn.running_var is not None and bn.running_mean is not None
            g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            conv.weight = nn.Parameter(conv.weight.detach() * g.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter(bn.bias.detach() - bn.running_mean * g, requires_grad=False)
            m[1] = nn.Identity()  # a pass-through in place of the folded norm
            n += 1
    return n


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, in place where no gradient is recorded (inference: no second 64 MiB map)."""
    return torch.ops.aten.gelu_(x) if not torch.is_grad_enabled() else F.gelu(x)


class PatchEmbed(nn.Module):
    """Two 1 x 1 conv-BN layers with GELU: no downsampling (LiteMedSAM's change to TinyViT)."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1 x 1 expand, 3 x 3 depthwise, 1 x 1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _gelu_(self.conv1(x))
        y = _gelu_(self.conv2(y))
        y = self.conv3(y)
        return _gelu_(y.add_(x) if not torch.is_grad_enabled() else y + x)


class PatchMerging(nn.Module):
    """Conv-BN 1 x 1, depthwise 3 x 3 (stride 2, or 1 into a 320/448/576-wide stage), 1 x 1.

    Takes (B, C, H, W) or tokens (B, H*W, C) at ``resolution``; returns tokens (B, h*w, out_dim).
    """

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, ks=3, stride=stride, pad=1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = _gelu_(self.conv1(x))
        x = _gelu_(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)  # channels-last maps: a view


class ConvStage(nn.Module):
    """First stage: MBConv blocks on (B, C, H, W), then a patch merge to tokens."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Window self-attention with a learned bias per head and per (|dy|, |dx|) offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        n = len(points)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.key_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        idx: torch.Tensor = self.attention_bias_idxs  # type: ignore[assignment]  # a registered buffer
        bias = self.attention_biases[:, idx]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class TinyViTBlock(nn.Module):
    """Window attention (padded to whole windows), residual; 3 x 3 depthwise conv-BN; MLP, residual."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, ks=3, pad=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # tokens (B, H*W, C)
        h, w = self.resolution
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                y = y[:, :h, :w].contiguous()
            y = y.view(b, n, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ViTStage(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """LiteMedSAM's image encoder: (B, 3, 256, 256) in 0..1 -> (B, 256, 64, 64) embeddings.

    Called like transformers' ``SamVisionEncoder``: returns an output object
    whose ``[0]`` / ``last_hidden_state`` is the embedding.
    """

    def __init__(
        self,
        img_size: int = INPUT_SIZE,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        self.layers = nn.ModuleList()
        n = len(depths)
        for i in range(n):
            # stage resolutions 256, 128, 64, 64: the last merge keeps the resolution
            res = img_size // (2 ** (i - 1 if i == n - 1 else i))
            out_dim = embed_dims[min(i + 1, n - 1)] if i < n - 1 else None
            if i == 0:
                assert out_dim is not None  # the first stage always merges into the second
                self.layers.append(ConvStage(embed_dims[0], (res, res), depths[0], out_dim, mbconv_expand_ratio))
            else:
                self.layers.append(
                    ViTStage(embed_dims[i], (res, res), depths[i], num_heads[i], window_sizes[i], mlp_ratio, out_dim)
                )
        self.out_res = img_size // (2 ** (n - 2))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        from transformers.models.sam.modeling_sam import SamVisionEncoderOutput

        if pixel_values.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT needs {self.img_size} x {self.img_size} input, got {tuple(pixel_values.shape)}")
        # channels-last maps: oneDNN's convolutions take them without reordering, and a map's (B, H*W, C) tokens are a view
        x = self.patch_embed(pixel_values.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_res, self.out_res, c).permute(0, 3, 1, 2)
        return SamVisionEncoderOutput(last_hidden_state=self.neck(x).contiguous())


__all__ = ["INPUT_SIZE", "LayerNorm2d", "TinyViTEncoder", "fold_batch_norms"]
