"""SAM 2's mask decoder for many prompts on one image: the function of transformers' ``Sam2MaskDecoder``, faster.

The stock forward repeats the image embedding, the positional encoding and both high-resolution feature maps once
per prompt, projects every image position in every attention, and upscales all four mask tokens of every prompt
before it keeps three (or one). `sam2_decode` computes the same masks and IoUs with the model's weights:

* the two-way transformer as SAM's fast decoder runs it (`geosam.models.fast_transformer`: the image positions never
  projected, the first layer's projections shared by all prompts and, through ``cache``, by all calls on one image);
  on the CPU in float32 no prompt's image side is written at all: the second layer runs factored, the final
  attention against the sides in factored form, and the upscaling's first product comes from the shared image side
  and the prompt's attention records (`geosam.models.fast_transformer.TwoWay.conv1`), to which ``feat_s1`` is added
  (full-size random SAM 2, one 1024 px chip, 16 x 16 points, 2 threads, Intel Xeon with AMX: decoding 2.74 -> 1.08 s
  with no prompt upscaled, 4.5 -> 2.9 s with every prompt upscaled);
* the high-resolution features (``feat_s1`` added after the first transposed convolution, ``feat_s0`` after the
  second) broadcast, not repeated;
* on the CPU both transposed convolutions of the upscaling run as per-pixel products through oneDNN
  (`geosam.models.cpu_gemm.linear`; 2 x 2 at stride 2 never overlaps), the pixels left in sub-pixel order until the
  returned masks are laid out (full-size SAM 2, 16 prompts, 1 thread, Zen 4: 0.59-0.62 vs 0.63-0.67 s);
* only the returned mask tokens are upscaled and multiplied out (three with ``multimask``; without it the single-mask
  token and, where the model falls back to the best multimask token when the single mask is unstable
  (``dynamic_multimask_via_stability``), that one too), and with ``iou_floor`` only the prompts with an IoU above
  it (the others' logits are ``-inf``: segment-everything drops them anyway); on the CPU a few prompts at a time, or
  with no image side written one prompt at a time in `geosam.models.cpu_decoder.upscale_prompt`'s single pass (its
  first product made from the prompt's records, both high-resolution features added, the norm, the GELUs and the
  hypernetwork product; every prompt upscaled, bf16 dtype, same host: chip 3.2-3.6 -> 2.2-2.4 s).

Float32, as geosam's other decoders, but for the upscaling's two products in the C pass, which take bf16 inputs under
the bf16 dtype where the CPU has bf16 products (as SAM's fast decoder's do). The object-score head is not evaluated: the stock forward returns its
logits beside the masks without applying them, and geosam reads only the masks and IoUs.
"""

from __future__ import annotations

from typing import Any

import torch

from geosam.models.bundle import SamBundle
from geosam.models.compile import FAMILY_DECODER_CPU_CHUNK
from geosam.models.cpu_decoder import upscale_prompt
from geosam.models.cpu_gemm import exact_gelu, linear
from geosam.models.decoder_side import decode_in_chunks, float32_inputs, start_decode, two_way
from geosam.models.embeddings import MultiEmbeddings
from geosam.models.fast_transformer import Conv1
from geosam.models.fast_twoway import cached
from geosam.models.fast_upscale import _as_linear, per_pixel

__all__ = ["SAM2_UPSCALE_CPU_CHUNK", "decode_prompts", "sam2_decode"]

#: Prompts upscaled together on the CPU (each: 4 MiB of activations per returned mask token at 256 x 256).
SAM2_UPSCALE_CPU_CHUNK = 2

#: Prompts upscaled together elsewhere (a GPU).
SAM2_UPSCALE_DEVICE_CHUNK = 64


def _upscaled(dec: Any, side: torch.Tensor, hw: tuple[int, int], feat_s0: torch.Tensor,
              feat_s1: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The upscaled image side (n, 4h * 4w, C/8), channels last, of n prompts' image sides (n, h*w, C): the image
    side is channels last already, so the convolutions and the channels-first layer norm need no layout copies."""
    n, _, c = side.shape
    act = dec.activation
    src = side.reshape(n, *hw, c).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory: no copy
    up = act(dec.upscale_layer_norm(dec.upscale_conv1(src) + feat_s1))
    up = act(dec.upscale_conv2(up) + feat_s0)
    return up.permute(0, 2, 3, 1).reshape(n, -1, up.shape[1])


def _subpixel(feat: torch.Tensor, levels: int) -> torch.Tensor:
    """feat (1, C, 2^levels h, 2^levels w) re-laid as (h, w, [i_1, j_1, ..., i_levels, j_levels], C): the order in
    which `_upscaled_linear` computes the upscaled pixels (row 2^levels y + ... + i_levels, likewise columns)."""
    c, hh, ww = feat.shape[1], feat.shape[2] >> levels, feat.shape[3] >> levels
    x = feat[0].permute(1, 2, 0).reshape(hh, *([2] * levels), ww, *([2] * levels), c)
    rows, cols = list(range(1, 1 + levels)), list(range(2 + levels, 2 + 2 * levels))
    order = [0, 1 + levels] + [d for pair in zip(rows, cols) for d in pair] + [2 + 2 * levels]
    return x.permute(*order).contiguous()


def _upscaled_linear(dec: Any, side: torch.Tensor, hw: tuple[int, int], plan: dict[str, torch.Tensor],
                     first: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """`_upscaled` with both transposed convolutions as per-pixel products (no overlap at stride 2: each input pixel
    gives 2 x 2 output pixels) and the pixels left in sub-pixel order: (n, h*w*16, C/8), rows ordered as
    `_subpixel` says; ``plan`` holds the products' weights and the high-resolution features in that order.
    ``first``: the first product (n, h*w, 4 C/4) made already (`geosam.models.fast_transformer.TwoWay.conv1`; then
    ``side`` is not read)."""
    n = side.shape[0]
    act = dec.activation
    c1 = plan["w1"].shape[0] // 4
    ln = dec.upscale_layer_norm
    if first is None:
        first = linear(side, plan["w1"], plan["b1"])
    t = first.view(n, *hw, 2, 2, c1) + plan["f1"]
    t = act(torch.nn.functional.layer_norm(t, (c1,), ln.weight, ln.bias, ln.eps))
    c2 = plan["w2"].shape[0] // 4
    u = linear(t, plan["w2"], plan["b2"]).view(n, *hw, 2, 2, 2, 2, c2) + plan["f0"]
    return act(u).view(n, -1, c2)


def _linear_plan(dec: Any, feat_s0: torch.Tensor, feat_s1: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """What `_upscaled_linear` needs for this decoder and image, or None where its convolutions are not 2 x 2 / 2."""
    ln = dec.upscale_layer_norm
    convs = (dec.upscale_conv1, dec.upscale_conv2)
    if not all(per_pixel(conv) for conv in convs) or getattr(ln, "data_format", "") != "channels_first":
        return None
    one, two = (_as_linear(conv) for conv in convs)  # (4 C_out, C_in) rows (i, j, out), as F.linear takes
    return {"w1": one[0], "b1": one[1], "w2": two[0], "b2": two[1], "f1": _subpixel(feat_s1, 1),
            "f0": _subpixel(feat_s0, 2)}


def _c_pass(dec: Any, conv1: Conv1, i: int, plan: dict[str, torch.Tensor], hyper: torch.Tensor, hw: tuple[int, int],
            out: torch.Tensor, bf16: bool) -> bool:  # fmt: skip
    """Prompt i's masks (K, 4h, 4w) into ``out`` by `geosam.models.cpu_decoder.upscale_prompt` (its first product
    made block by block from the prompt's records, both high-resolution features added, the norm, the GELUs and the
    hypernetwork product in one pass) where the kernel runs and the decoder's activation is the exact GELU; False
    otherwise (nothing written). ``bf16``: the two products in bf16 where the kernel has them (the bf16 dtype, as
    SAM's fast decoder runs them)."""
    act, ln = dec.activation, dec.upscale_layer_norm
    c4 = plan["w1"].shape[0] // 4
    if not (exact_gelu(act) and tuple(ln.normalized_shape) == (c4,)):
        return False
    a, b, _, shared = conv1(i, True)
    p = hw[0] * hw[1]
    if "w2t" not in plan:
        plan["w2t"] = plan["w2"].t().contiguous()
    features = (plan["f1"].view(p, -1), plan["f0"].view(4 * p, -1))
    return upscale_prompt(a, b, None, shared, (ln.weight, ln.bias, ln.eps), plan["w2t"], plan["b2"],
                          hyper.contiguous(), hw, out, bf16=bf16, features=features)  # fmt: skip


def _pixels(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Logits (n, h*w*16, K) in sub-pixel order -> (n, K, 4h, 4w)."""
    n, k = logits.shape[0], logits.shape[2]
    hh, ww = hw
    x = logits.view(n, hh, ww, 2, 2, 2, 2, k)  # y, x, i1, j1, i2, j2
    return x.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(n, k, 4 * hh, 4 * ww)


def sam2_decode(
    model: Any,
    image_embeddings: torch.Tensor,
    high_resolution: tuple[torch.Tensor, torch.Tensor],
    sparse_embeddings: torch.Tensor | None,
    dense_embeddings: torch.Tensor,
    multimask: bool,
    image_pe: torch.Tensor | None = None,
    iou_floor: float | None = None,
    cache: dict[Any, Any] | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's decoder for N prompts on one image: ``(low_res_masks (N, K, 4h, 4w), iou (N, K))``, K = 3 with
    ``multimask`` else 1, as ``Sam2MaskDecoder`` returns them.

    image_embeddings: (1, C, h, w); high_resolution: ``(feat_s0 (1, C/8, 4h, 4w), feat_s1 (1, C/4, 2h, 2w))`` (the
    stock forward's ``high_resolution_features``); sparse_embeddings: (N, T, C) from ``model.prompt_encoder`` (None:
    no sparse prompt, N = 1); dense_embeddings: (1 or N, C, h, w); image_pe: (1, C, h, w) (from the model when None).
    With ``iou_floor``, the masks of prompts none of whose IoUs is above it are ``-inf`` (not computed). ``cache``:
    a dict passed to every call on the same image (it holds the image's tensors while they are its key). ``bf16``: the
    upscaling's two products in bf16 where the CPU's kernel has them (`geosam.models.cpu_decoder.upscale_prompt`).
    """
    dec, tokens, n, image_pe, key = start_decode(
        model, image_embeddings, sparse_embeddings, dense_embeddings, image_pe, cache,
        ("obj_score_token", "iou_token", "mask_tokens"), high_resolution,
    )  # fmt: skip
    hh, ww = image_embeddings.shape[2:]
    m = int(dec.num_mask_tokens)
    dynamic = not multimask and bool(dec.dynamic_multimask_via_stability)
    # the final attention only for the tokens read after it: the IoU token (1) and the mask tokens returned (2 + j;
    # every one where the single mask may fall back to the best of the others), not the object-score token nor the
    # prompts' tokens
    returned = range(1, m) if multimask else (range(m) if dynamic else range(1))
    feat_s0, feat_s1 = high_resolution
    plan = None
    if image_embeddings.device.type == "cpu":  # the convolutions as per-pixel products (oneDNN's deconvolution is slower)
        plan = cached(cache, key, "sam2_upscale", lambda: _linear_plan(dec, feat_s0, feat_s1))
    # with the per-pixel products (a plan: both convolutions `per_pixel`) the first may come from the shared image side
    # (`TwoWay.conv1`), no side written
    tw = two_way(dec, tokens, image_embeddings, dense_embeddings, image_pe, cache, key, [1, *(2 + j for j in returned)],
                 unroll=plan is not None)  # fmt: skip
    queries, side = tw.queries, tw.keys  # queries: IoU token, then the returned mask tokens

    iou_all = dec.iou_prediction_head(queries[:, 0, :])  # (N, M)
    mlps = dec.output_hypernetworks_mlps
    rows = torch.arange(n, device=queries.device)
    every = torch.stack([mlps[j](queries[:, 1 + i, :]) for i, j in enumerate(returned)], dim=1)  # (N, K', C/8)
    if multimask:
        hyper = every
        iou = iou_all[:, 1:]
    elif dynamic:  # the single-mask token, and the best multimask token where the single mask proves unstable
        best = iou_all[:, 1:].argmax(dim=1) + 1
        hyper = every[rows[:, None], torch.stack([torch.zeros_like(best), best], dim=1)]  # (N, 2, C/8)
        iou = iou_all[:, :1].clone()  # updated where the fallback is taken
    else:
        hyper = every
        iou = iou_all[:, :1]

    k = iou.shape[1]
    h4, w4 = 4 * hh, 4 * ww
    masks = torch.full((n, k, h4, w4), float("-inf"), dtype=torch.float32, device=queries.device)
    todo = rows if iou_floor is None or dynamic else (iou > iou_floor).any(dim=1).nonzero()[:, 0]
    conv1 = tw.conv1
    # no image side written (`TwoWay.conv1`): one prompt at a time from its first product
    step = 1 if conv1 is not None else SAM2_UPSCALE_CPU_CHUNK if queries.device.type == "cpu" else SAM2_UPSCALE_DEVICE_CHUNK
    for s in range(0, todo.numel(), step):
        idx = todo[s : s + step]
        if conv1 is not None and plan is not None:
            i = int(idx[0])
            logits = torch.empty((1, hyper.shape[1], h4, w4), dtype=torch.float32)
            if not _c_pass(dec, conv1, i, plan, hyper[i], (hh, ww), logits[0], bf16):
                first = tw.first_product(i)  # (1, h*w, 4 C/4): upscale_conv1 of its side
                up = _upscaled_linear(dec, side[idx], (hh, ww), plan, first)  # (1, H*W, C/8), sub-pixel order
                logits = _pixels(torch.bmm(up, hyper[idx].transpose(1, 2)), (hh, ww))
        elif plan is not None:
            up = _upscaled_linear(dec, side[idx], (hh, ww), plan)  # (n, H*W, C/8), sub-pixel order
            logits = _pixels(torch.bmm(up, hyper[idx].transpose(1, 2)), (hh, ww))
        else:
            up = _upscaled(dec, side[idx], (hh, ww), feat_s0, feat_s1)  # (n, H*W, C/8)
            logits = torch.bmm(up, hyper[idx].transpose(1, 2)).transpose(1, 2).reshape(-1, k, h4, w4)
        if dynamic:
            single, multi = logits[:, :1], logits[:, 1:]
            stable = dec._get_stability_scores(single) >= dec.dynamic_multimask_stability_thresh  # (n, 1)
            logits = torch.where(stable[..., None, None], single, multi)
            iou[idx] = torch.where(stable, iou_all[idx, :1], iou_all[idx, best[idx]][:, None])
        masks[idx] = logits.float()
    if dynamic and iou_floor is not None:
        masks[~(iou > iou_floor).any(dim=1)] = float("-inf")
    return masks, iou.float()


def decode_prompts(
    bundle: SamBundle,
    embeddings: MultiEmbeddings,
    multimask: bool,
    iou_floor: float | None,
    n: int,
    prompts: dict[str, torch.Tensor],
    cache: dict[Any, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sam2_decode` on prompts shaped for ``Sam2Model.forward`` (``input_points`` / ``input_labels`` /
    ``input_boxes``, batch of one image): ``(masks (N, K, h, w), iou (N, K))`` float32; on the CPU
    `geosam.models.compile.FAMILY_DECODER_CPU_CHUNK` prompts per transformer call, the chunks sharing the image's projections (with
    ``cache``, a dict kept by the caller, the calls on the same image too)."""
    bf16 = bundle.dtype == torch.bfloat16  # the upscaling's products in bf16 where the CPU has them, as SAM's
    (image, feat_s0, feat_s1), image_cache = float32_inputs((embeddings.main, *embeddings.extras), bundle.device, cache)
    return decode_in_chunks(
        bundle, prompts, n,
        lambda part, dense, pe, shared: sam2_decode(bundle.model, image, (feat_s0, feat_s1), part, dense, multimask,
                                                   pe, iou_floor=iou_floor, cache=shared, bf16=bf16),
        image_cache, cpu_chunk=FAMILY_DECODER_CPU_CHUNK,
    )  # fmt: skip
