"""An exact, faster forward of SAM's mask decoder for many prompts on one image.

transformers' ``SamMaskDecoder`` repeats the (h*w, C) image embedding once per
prompt and runs every projection of the two-way transformer over all h*w
image positions of every prompt. `fast_decode` computes the same
function with the loaded model's own weights, rearranged so that fewer
multiplications touch the h*w positions:

* token -> image attention: the key projection is moved to the token side
  (``q . (W_k x + b_k) = (q W_k) . x + q . b_k``, the last term cancels in the
  softmax) and the value projection after the attention
  (``A (x W_v^T + b_v) = (A x) W_v^T + b_v``, softmax rows sum to 1), so the image
  positions are never projected: ``heads * tokens`` (~56) rows per position
  replace the ``2 * internal_dim`` (256) projections;
* image -> token attention: likewise the query projection goes to the tokens
  (``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k``) and the output projection to
  the token values per head (``out_proj(concat_h A_h V_h) = sum_h A_h (V_h W_o,h^T)
  + b_o``), and the residual is added by the same matmul; the softmax over the
  few tokens runs along a non-last axis (much faster on the CPU);
* the final token -> image attention runs only for the tokens read after it
  (the IoU token and the returned mask tokens);
* in the first layer the image side (embedding + dense prompt, positional
  encoding) is the same for every prompt when the dense embedding is shared
  (no mask input): it is used once, without ``repeat``, in single large matmuls;
  and with 3 prompts or more (or a ``cache`` shared by the calls on one image) it
  is projected once per head instead (`geosam.models.fast_twoway.shared_projections`:
  the token -> image keys and values, the image -> token queries), so each prompt
  multiplies its tokens by 16-wide heads against the positions: 7 instead of
  117 MFLOP per product and prompt (AMD EPYC Zen 3, one thread, 256 prompts:
  decoding 9.35 vs 9.96 s CPU time, medians of 5 alternating);
* on the CPU in float32 the second layer then runs against the first layer's image side in factored form
  (`geosam.models.fast_factored`: ``keys1 = r g (x0 + probs0^T vo0 - mu) + b``), per-head products against x0
  projected once plus products of inner size 56 with the first layer's attention weights, and ``keys1 + pos`` is
  never written (256 prompts, transformer only: 5.38 vs 6.15 s, medians of 7);
* on the CPU in float32 with one image side for all prompts (no mask input), the upscaling's first product is
  unrolled through the layers' norms to that shared image side (`geosam.models.fast_upscale`): one product for all
  prompts plus, per prompt, a product of inner size 116 instead of 256 (0.25 instead of 0.54 GFLOP; AMD EPYC Zen 3,
  one thread: 256 prompts 9.0 vs 9.65 s); the image -> token weights' softmax writes their transposed record too;
* with SAM's two layers no image side is written at all (`geosam.models.fast_final`):
  both layer norms' means and deviations are dot products and quadratic forms
  in the attention weights (R x R Gram matrices), and the final attention runs
  against the second image side in factored form, ~0.2 instead of ~0.37 GFLOP
  per prompt and no (h*w, C) tensor (AMD EPYC Zen 3, one thread, 256 prompts,
  transformer only: 0.89 of the time, 40 alternating pairs); IoUs within 6e-8
  of the previous path, no logit sign change against the stock decoder;
* otherwise (fewer than 3 prompts without a cache) nothing reads the last layer's image side but the final token ->
  image attention: it is attended to tile by tile as it is computed, with a running softmax
  (`_final_image_side_attention`), never written (Zen 3, 256 prompts: 11.18 vs 11.63 s, medians of 8 alternating);
* the output upscaling (two 2x2 stride-2 transposed convolutions) runs as channels-last matmuls (float32 on the CPU
  through `geosam.models.cpu_gemm.linear`, the second GELU fused), one prompt at a time on the CPU, and only the
  requested mask tokens are multiplied out (on the CPU as K output rows, ``(K, C8) @ features^T``, not a K-wide
  product); the pixel shuffle is done once on the K output masks (on the CPU band by band, a gather into the output);
* on the CPU in float32 every product with the (h*w, C) image side (scores,
  attention-weighted sums, the image -> token residual) goes through
  `geosam.models.cpu_gemm.bmm` (oneDNN where torch's float32 ``bmm``, MKL,
  runs at half speed: AMD CPUs with AVX-512), and the per-position steps (residual + layer norm +
  positional encoding after each image -> token attention; the upscaling) run
  `geosam.models.fast_twoway.CPU_TILE_POSITIONS` image positions at a time, so that their intermediates
  stay in cache;
* per-head products of all prompts against one projected image side, and their scores, in C (`geosam.models.cpu_heads`);
* with ``iou_floor`` (segment-everything's ``pred_iou_thresh``), prompts none of whose masks has a predicted IoU
  above it are not upscaled at all (the predicted IoU needs only the transformer): their logits are ``-inf``. They
  would be dropped by the IoU filter anyway, so the kept masks are the same.

Same math as the stock decoder; float32 results agree to rounding (~1e-5 relative); with ``bf16`` (the bf16 dtype, CPUs
with AVX-512 BF16) the upscaling's two products take bf16 inputs, and on CPUs with AMX the final attention's too.
``attention_similarity`` / ``target_embedding`` (PerSAM) are not supported: use the stock path for those.
"""

from __future__ import annotations

from typing import Any

import torch

from geosam.models.fast_transformer import run_two_way
from geosam.models.fast_twoway import CPU_TILE_POSITIONS
from geosam.models.fast_upscale import _upscale_and_predict, per_pixel

__all__ = ["fast_decode", "fast_decoder_supported", "image_positional_embeddings", "returned_mask_tokens"]


def _unwrap(module: Any) -> Any:
    """The original module behind a ``torch.compile`` wrapper (or the module itself)."""
    return getattr(module, "_orig_mod", module)


def fast_decoder_supported(model: Any) -> bool:
    """Whether `fast_decode` can run ``model``'s mask decoder (a transformers SAM layout)."""
    try:
        dec = _unwrap(model.mask_decoder)
        tr = dec.transformer
        layers = list(tr.layers)
        attns = [
            a
            for layer in layers
            for a in (layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token)
        ]
        attns.append(tr.final_attn_token_to_image)
        return (
            callable(getattr(model, "prompt_encoder", None))
            and callable(getattr(model, "get_image_wide_positional_embeddings", None))
            and all(int(a.internal_dim) % int(a.num_attention_heads) == 0 for a in attns)
            and all(p.bias is not None for a in attns for p in (a.q_proj, a.k_proj, a.v_proj, a.out_proj))
            and all(per_pixel(conv) for conv in (dec.upscale_conv1, dec.upscale_conv2))
            and getattr(dec.upscale_layer_norm, "data_format", "") == "channels_first"
            and all(isinstance(layer.layer_norm4, torch.nn.LayerNorm) for layer in layers)
        )
    except (AttributeError, TypeError):
        return False


def image_positional_embeddings(model: Any) -> torch.Tensor:
    """The dense positional encoding (1, C, h, w) that SamModel feeds the decoder."""
    return model.get_image_wide_positional_embeddings()


def returned_mask_tokens(dec: Any, multimask: bool) -> range:
    """The mask tokens whose masks ``dec`` (a ``SamMaskDecoder``) returns: all but the first with ``multimask``."""
    return range(1, dec.num_mask_tokens) if multimask else range(1)


def fast_decode(
    model: Any,
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor | None,
    dense_embeddings: torch.Tensor,
    multimask: bool,
    image_pe: torch.Tensor | None = None,
    iou_floor: float | None = None,
    cache: dict[Any, Any] | None = None,
    out: torch.Tensor | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's mask decoder for N prompts on one image, same results as ``model.mask_decoder``.

    image_embeddings: (1, C, h, w); sparse_embeddings: (N, T, C) point/box
    embeddings from ``model.prompt_encoder`` (None for no sparse prompt, N = 1);
    dense_embeddings: (1 or N, C, h, w); image_pe: (1, C, h, w) positional
    encoding (computed from the model when None).

    Returns ``(low_res_masks (N, K, 4h, 4w), iou (N, K))``, K = 3 with
    ``multimask`` else 1 (``num_multimask_outputs`` in general). With ``iou_floor``, the masks of prompts whose
    every returned IoU is at or below it are ``-inf`` (not computed). ``cache``: a dict the caller passes to every
    call on the same ``image_embeddings`` and ``dense_embeddings`` (the chunks and batches of prompts of one image),
    for what all of them share (it holds those tensors while they are its key: `cache_key`). ``out``: a contiguous
    (N, K, 4h, 4w) tensor to write the masks into (returned), e.g. a chunk's slice of the batch's masks. ``bf16``:
    the upscaling's products in bf16 where the CPU has AVX-512 BF16 (`geosam.models.cpu_decoder.upscale_prompt`), the
    final attention's products where it has AMX (`geosam.models.fast_final.factored_final_attention`).
    """
    dec = _unwrap(model.mask_decoder)
    if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
        raise ValueError(f"image_embeddings must be (1, C, h, w), got {tuple(image_embeddings.shape)}")
    _, c, hh, ww = image_embeddings.shape
    if image_pe is None:
        image_pe = image_positional_embeddings(model)

    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)  # (1 + M, C)
    if sparse_embeddings is not None:
        n = sparse_embeddings.shape[0]
        tokens = torch.cat(
            (output_tokens[None].expand(n, -1, -1).to(sparse_embeddings.dtype), sparse_embeddings), dim=1
        )
    else:
        n = max(1, dense_embeddings.shape[0])
        tokens = output_tokens[None].expand(n, -1, -1)
    tokens = tokens.to(dec.iou_token.weight.dtype)

    # the final attention only for the tokens read after it (each query row attends on its own): the IoU token and
    # the returned mask tokens, not the unused mask token nor the prompt tokens (4 of 7 rows for one point, multimask)
    sel = returned_mask_tokens(dec, multimask)
    tw = run_two_way(dec, dec.transformer, tokens, image_embeddings, dense_embeddings, image_pe, cache,
                     [0, *(1 + j for j in sel)], bf16=bf16)  # fmt: skip
    queries, keys = tw.queries, tw.keys
    iou_token_out = queries[:, 0, :]
    hyper = torch.stack([dec.output_hypernetworks_mlps[j](queries[:, 1 + i, :]) for i, j in enumerate(sel)], dim=1)

    iou = dec.iou_prediction_head(iou_token_out)
    iou = iou[:, 1:] if multimask else iou[:, 0:1]
    rows = None if iou_floor is None else (iou > iou_floor).any(dim=1).nonzero()[:, 0].tolist()
    conv1 = tw.conv1 if rows is None or rows else None
    masks = _upscale_and_predict(
        dec, keys.reshape(n, hh, ww, c), hyper, rows=rows, conv1=conv1, tile=CPU_TILE_POSITIONS, out=out, bf16=bf16
    )
    return masks, iou
