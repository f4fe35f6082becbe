"""What the decoders beside SAM's (SAM-HQ's, SAM 2's) share with it: their prompts encoded (`encode_prompts`), their
tokens (`prompt_tokens`, `start_decode`), their two-way transformer (`two_way`: `geosam.models.fast_transformer`'s,
the same as SAM's fast decoder runs) and their prompts in chunks (`decode_in_chunks`).

`sam_layout` shows SAM 2's attentions (``o_proj``) under SAM's names (``out_proj``), so the same functions run them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from geosam.models.bundle import SamBundle
from geosam.models.fast_decoder import _unwrap
from geosam.models.fast_transformer import TwoWay, run_two_way
from geosam.models.fast_twoway import cache_key

__all__ = [
    "decode_in_chunks",
    "encode_prompts",
    "float32_inputs",
    "prompt_tokens",
    "sam_layout",
    "start_decode",
    "two_way",
]


class _Renamed:
    """``module`` seen with SAM's attribute names: ``out_proj`` for ``o_proj``, sub-attentions likewise."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        if name == "out_proj" and not hasattr(self._module, "out_proj"):
            return self._module.o_proj
        value = getattr(self._module, name)
        if name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token", "final_attn_token_to_image"):
            return _Renamed(value)
        if name == "layers":
            return [_Renamed(layer) for layer in value]
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)


def sam_layout(transformer: Any) -> Any:
    """``transformer`` (a two-way transformer) as `two_way` reads it: itself for SAM's and SAM-HQ's layout, a view
    with SAM's attribute names for SAM 2's (attentions with ``o_proj``)."""
    if hasattr(transformer.final_attn_token_to_image, "out_proj"):
        return transformer
    return _Renamed(transformer)


def two_way(
    dec: Any,
    tokens: torch.Tensor,
    image: torch.Tensor,
    dense: torch.Tensor,
    pe: torch.Tensor,
    cache: dict[Any, Any] | None,
    key: Any,
    used: list[int],
    unroll: bool = True,
) -> TwoWay:
    """``dec``'s two-way transformer (seen through `sam_layout`) on ``tokens`` (N, T, C) against image (1, C, h, w)
    + dense (1 or N, C, h, w) with positional encoding pe (1, C, h, w), the final attention for the token rows
    ``used``: `geosam.models.fast_transformer.run_two_way`; ``key``: `start_decode`'s."""
    return run_two_way(dec, sam_layout(dec.transformer), tokens, image, dense, pe, cache, used, unroll, key)


def encode_prompts(model: Any, prompts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.prompt_encoder`` on prompts shaped for the model's forward (``input_points`` / ``input_labels`` /
    ``input_boxes``, batch of one image, no mask input): ``(sparse (1, N, T, C), dense (1, C, h, w))``."""
    return model.prompt_encoder(
        input_points=prompts.get("input_points"),
        input_labels=prompts.get("input_labels"),
        input_boxes=prompts.get("input_boxes"),
        input_masks=None,
    )


def prompt_tokens(
    output_tokens: torch.Tensor, sparse: torch.Tensor | None, dense: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The decoder's tokens (N, T, C): its output tokens (M, C) before each prompt's sparse embeddings (N, T', C)
    (None: no sparse prompt, N from ``dense``), and N; ``dense`` (1 or N, C, h, w) is checked against N."""
    if sparse is not None:
        n = sparse.shape[0]
        tokens = torch.cat((output_tokens[None].expand(n, -1, -1).to(sparse.dtype), sparse), dim=1)
    else:
        n = max(1, dense.shape[0])
        tokens = output_tokens[None].expand(n, -1, -1)
    if dense.shape[0] not in (1, n):
        raise ValueError(f"dense_embeddings batch {dense.shape[0]} fits neither 1 nor {n} prompts")
    return tokens, n


def start_decode(
    model: Any,
    image: torch.Tensor,
    sparse: torch.Tensor | None,
    dense: torch.Tensor,
    image_pe: torch.Tensor | None,
    cache: dict[Any, Any] | None,
    token_names: tuple[str, ...],
    pinned: tuple[torch.Tensor, ...] = (),
) -> tuple[Any, torch.Tensor, int, torch.Tensor, Any]:
    """What a decoder here begins with: ``(decoder, tokens (N, T, C) in its weights' dtype, N, image_pe, key)``.

    image (1, C, h, w) is checked; ``image_pe`` is the model's when None; the output tokens are the decoder's
    embeddings named ``token_names``, in that order, before each prompt's sparse embeddings (`prompt_tokens`);
    ``key`` is the image's `cache_key` in ``cache``, from image, dense and the ``pinned`` tensors the decoder
    also reads (SAM-HQ's ViT features, SAM 2's high-resolution features)."""
    dec = _unwrap(model.mask_decoder)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image_embeddings must be (1, C, h, w), got {tuple(image.shape)}")
    _, c, hh, ww = image.shape
    if image_pe is None:
        image_pe = model.get_image_wide_positional_embeddings()
    output_tokens = torch.cat([getattr(dec, name).weight for name in token_names], dim=0)
    tokens, n = prompt_tokens(output_tokens, sparse, dense)
    key = cache_key(cache, (hh * ww, c), image, dense, *pinned)
    return dec, tokens.to(dec.iou_token.weight.dtype), n, image_pe, key


def decode_in_chunks(
    bundle: SamBundle,
    prompts: dict[str, torch.Tensor],
    n: int,
    decode: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    cache: dict[Any, Any] | None = None,
    out_shape: tuple[int, int, int] | None = None,
    *,
    cpu_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode(sparse_chunk (N', T, C), dense, image_pe, cache)`` on the n ``prompts`` (shaped for the model's
    forward, `encode_prompts`), ``cpu_chunk`` at a time on the CPU (`geosam.models.compile.FAST_DECODER_CPU_CHUNK`
    for SAM's decoder, ``FAMILY_DECODER_CPU_CHUNK`` for SAM 2's and SAM-HQ's) and all at once elsewhere, the chunks
    sharing one cache (the image's projections and features: ``cache`` if given, kept by the caller across calls on
    the same image, else a new one); their masks and IoUs concatenated (float32).

    ``out_shape`` (K, H, W): the masks per prompt and their size; the chunks then write into one (n, K, H, W)
    tensor, ``decode`` taking its chunk's rows as a fifth argument (``out``: a decoder that returns another tensor,
    e.g. in another dtype, has its masks copied there), so the batch's masks are not concatenated afterwards.
    """
    model = bundle.model
    with torch.inference_mode():
        sparse, dense = encode_prompts(model, prompts)
        pe = model.get_image_wide_positional_embeddings()
        step = cpu_chunk if bundle.device.type == "cpu" else n
        shared: dict[Any, Any] = {} if cache is None else cache
        if out_shape is None:
            parts = [decode(sparse[0][s : s + step], dense, pe, shared) for s in range(0, n, step)]
            if len(parts) == 1:
                return parts[0][0].float(), parts[0][1].float()
            return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()
        masks = torch.empty((n, *out_shape), dtype=torch.float32, device=bundle.device)
        ious = []
        for s in range(0, n, step):
            dst = masks[s : s + step]
            low, iou = decode(sparse[0][s : s + step], dense, pe, shared, dst)
            if low.data_ptr() != dst.data_ptr():
                dst.copy_(low)
            ious.append(iou)
        return masks, (ious[0] if len(ious) == 1 else torch.cat(ious)).float()


def float32_inputs(
    tensors: tuple[torch.Tensor, ...], device: torch.device, cache: dict[Any, Any] | None
) -> tuple[tuple[torch.Tensor, ...], dict[Any, Any] | None]:
    """An image's decoder inputs (its embeddings, SAM-HQ's ViT features, SAM 2's high-resolution features) in
    float32 on ``device``, and the cache for the decoder's calls on them.

    The decoders key what their calls on one image share (the image side's projections, HQ features, upscaling
    plans) by the inputs' storage (`cache_key`); a conversion made anew each call (the bf16 dtype's bf16 embeddings)
    was a new image to them, so every batch of prompts projected the image side again (Intel Xeon with AMX, one
    thread, SAM at 32 x 32 points: 15.4-15.6 vs 14.7 s). With a caller's ``cache`` the conversions are kept there
    beside the tensors they were made from (held, so that no other tensor takes their place), the decoder's own
    cache nested inside; inputs already float32 on ``device`` are used as they are, with ``cache`` as it is.
    """
    if all(t.device == device and t.dtype == torch.float32 for t in tensors):
        return tensors, cache
    if cache is None:
        return tuple(t.to(device=device, dtype=torch.float32) for t in tensors), None
    held = cache.get("float32_inputs")
    if held is None or len(held[0]) != len(tensors) or any(a is not b for a, b in zip(held[0], tensors, strict=True)):
        cache.clear()
        cache["float32_inputs"] = (tensors, tuple(t.to(device=device, dtype=torch.float32) for t in tensors))
        cache["decoder"] = {}
    return cache["float32_inputs"][1], cache["decoder"]
