"""SAM 3's DETR encoder self-attention in bf16 through geosam's attention kernel on AMX tiles (CPU).

For every phrase the DETR encoder attends the chip's 72 x 72 image tokens to each other in each of its 6 layers
(8 heads of 32 numbers, no mask). Under bf16 autocast torch runs that as its fused flash attention, which took 0.87
of the 2.1 s the bf16 detector spends on a 1008 px chip with two phrases (full-size random SAM 3, Intel Xeon with
AMX, 2 threads): heads of 32 numbers make it as much exponentials as products. `geosam.models.cpu_attention`'s
kernel (products on AMX tiles, the numerators from a short exp2 polynomial before their rounding to bf16) takes a
phrase's layer in 44 ms where torch took 69 ms (same host, 2 threads).

`detr_encoder_attention(bundle)` is a context: inside it the DETR encoder's attentions look up
``ATTENTION_NAME`` (registered with transformers' ``AttentionInterface``), whose function sends the unmasked
self-attentions of large bf16 maps to the kernel and everything else (the text cross-attention with its mask, other
dtypes, a kernel not in use here) to transformers' own SDPA function. The model's config is set back when the last
caller leaves, so a model pickled or saved afterwards names SDPA as before. Only with the bundle's dtype bf16 on a
CPU whose attention kernel runs on AMX tiles (`use_fast_detr_attention`). The same function as torch's bf16
attention to bf16 rounding, not bit for bit: the kernel rounds the probabilities to bf16 for the values' product
(`benchmarks/bench_sam3.py --torch-attention`: every query mask at IoU >= 0.9 with float32's either way; the logits'
largest difference from float32's 0.0098 of their scale against torch's 0.0065).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from geosam.models.bundle import SamBundle
from geosam.models.patching import set_while

__all__ = ["ATTENTION_NAME", "detr_encoder_attention", "geosam_attention", "use_fast_detr_attention"]

#: The name the DETR encoder's config carries inside `detr_encoder_attention`.
ATTENTION_NAME = "geosam_cpu_attention"
#: The fewest tokens a map must have for the kernel (smaller maps stay with torch: not measured there).
MIN_TOKENS = 1024


def _kernel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float | None) -> torch.Tensor | None:  # fmt: skip
    """Unmasked self-attention of q, k, v (B, heads, N, d) bf16 through the kernel: (B, N, heads, d) bf16, or None
    where it does not take them."""
    from geosam.models.cpu_attention import attention, takes

    if mask is not None or query.device.type != "cpu" or query.dtype != torch.bfloat16:
        return None
    if not (query.shape == key.shape == value.shape) or key.dtype != query.dtype or value.dtype != query.dtype:
        return None
    b, heads, n, d = query.shape
    if n < MIN_TOKENS or not takes(torch.bfloat16, d):
        return None
    c = heads * d
    scale = float(scaling) if scaling is not None else d**-0.5
    out = torch.empty((b, n, heads, d), dtype=torch.bfloat16)
    qkv = torch.empty((n, 3, heads, d), dtype=torch.bfloat16)  # one map's tokens as the kernel reads them
    for i in range(b):
        for j, t in enumerate((query, key, value)):
            qkv[:, j].copy_(t[i].transpose(0, 1))
        if not attention(qkv.view(1, n, 3 * c), heads, scale, None, out[i].view(1, n, c), 0, None, bf16=True):
            return None
    return out


def geosam_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """transformers' attention function signature: the kernel where `_kernel_attention` takes the call, else
    transformers' ``sdpa_attention_forward``."""
    if dropout == 0.0 and not is_causal and not kwargs.get("output_attentions"):
        out = _kernel_attention(query, key, value, attention_mask, scaling)
        if out is not None:
            return out, None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)  # fmt: skip


def _register() -> None:
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, geosam_attention)


def use_fast_detr_attention(bundle: SamBundle) -> bool:
    """Whether SAM 3's DETR encoder attention runs through the kernel: on the CPU with the bundle's dtype bf16, a
    DETR encoder of transformers' layout, the kernel on AMX tiles here (not with ``GEOSAM_CPU_KERNELS=0``)."""
    from geosam.models.cpu_attention import amx_available

    enc = getattr(bundle.model, "detr_encoder", None)
    return (bundle.device.type == "cpu" and bundle.dtype == torch.bfloat16
            and hasattr(getattr(enc, "config", None), "_attn_implementation") and amx_available())  # fmt: skip


@contextlib.contextmanager
def detr_encoder_attention(bundle: SamBundle) -> Iterator[None]:
    """Inside: the bundle's DETR encoder attends through `geosam_attention` where `use_fast_detr_attention`; its
    config's attention is set back when the last of the callers sharing it leaves (threads may share a model)."""
    if not use_fast_detr_attention(bundle):
        yield
        return
    _register()
    with set_while(bundle.model.detr_encoder.config, "_attn_implementation", ATTENTION_NAME):
        yield
