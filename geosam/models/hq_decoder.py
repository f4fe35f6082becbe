"""SAM-HQ's mask decoder as its authors run it, for many prompts on one image.

transformers' ``SamHQMaskDecoder`` (the same code in 4.54.0, 5.17.0 and 5.25.0) upscales the wrong image side: it
discards the image embedding that its two-way transformer returns and upscales the decoder's *input* embedding (plus the dense prompt),
reshaped after ``transpose(2, 3)`` as if it were the transformer's (N, h*w, C) output, so the upscaling reads the
embedding with height and width swapped. SAM-HQ's own decoder (SysCV ``MaskDecoderHQ.predict_masks``) upscales the
transformer's output, as SAM does; with a real checkpoint the stock forward's masks are those of a transposed, never
updated image side. `hq_decode` computes SysCV's function with the loaded model's weights (the module names are
transformers'), and what it returns follows SysCV's ``MaskDecoderHQ.forward``:

* ``multimask``: the SAM mask token (of the three) with the highest predicted IoU, plus the HQ mask, one mask per
  prompt with that IoU (transformers returns all three, each plus the HQ mask); else the single-mask token's mask plus
  the HQ mask; ``hq_token_only``: the HQ mask alone;
* the HQ features (``embedding_encoder(image) + compress_vit_feat(vit)``) depend on the image only: computed once
  per image (kept in ``cache``), where the stock forward recomputes them on every call (0.13 of 1.06 s per call of 4
  prompts, full-size SAM-HQ, one CPU thread);
* the two-way transformer runs as SAM's fast decoder runs it (`geosam.models.fast_transformer`: the image positions
  never projected, the first layer's projections shared by all prompts); on the CPU in float32 no prompt's image side
  is written: the upscaling starts from its first product, made from the shared image side and the prompt's attention
  records (`geosam.models.fast_transformer.TwoWay.conv1`; full-size random SAM-HQ, one 1024 px chip, 16 x 16 points,
  2 threads, Intel Xeon with AMX: decoding 2.6 -> 1.15 s with no prompt upscaled, 7.1 -> 5.8 s with every one);
* only the returned mask tokens are upscaled and multiplied out, and with ``iou_floor`` only the prompts whose IoU is
  above it (the others' logits are ``-inf``: segment-everything drops them anyway); on the CPU one prompt at a time
  (the HQ branch's 3 x 3 convolution to 64 channels at 4h x 4w is 2.4 GFLOP and 16 MiB of activations per prompt);
* the upscaling runs channels last (the image side is (N, h*w, C) already), and the HQ branch's last convolution is
  contracted with the prompt's HQ vector before it runs (``hq . conv2(z)`` as one output channel: 32 times fewer
  FLOPs than the 64 -> 32 convolution the stock forward runs before its product).

Float32 (geosam's decoders decode in float32 under every dtype: half-precision products lose the masks), but for the
HQ branch's 3 x 3 convolution under the bf16 dtype on the CPU, which runs in bf16 through oneDNN (its inputs rounded
once, sums in float32: as SAM's and SAM 2's upscaling products do under that dtype).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.bundle import SamBundle
from geosam.models.compile import FAMILY_DECODER_CPU_CHUNK
from geosam.models.cpu_fused import conv2d, ops_work, weights_of
from geosam.models.cpu_gemm import exact_gelu, pointwise_linear
from geosam.models.decoder_side import decode_in_chunks, float32_inputs, start_decode, two_way
from geosam.models.embeddings import MultiEmbeddings
from geosam.models.fast_twoway import cached
from geosam.models.fast_upscale import _as_linear, per_pixel

__all__ = ["HQ_UPSCALE_CPU_CHUNK", "decode_prompts", "hq_decode", "hq_features"]

#: Prompts upscaled together on the CPU: one keeps each step's activations (8-16 MiB) under glibc's mmap threshold
#: (`geosam.models.cpu_memory`), so they are reused rather than faulted in again.
HQ_UPSCALE_CPU_CHUNK = 1

#: Prompts upscaled together elsewhere (a GPU): 48 MiB of float32 activations per prompt at SAM's 256 x 256.
HQ_UPSCALE_DEVICE_CHUNK = 64


def _hq_conv1(dec: Any, up: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``dec.mask_conv1(up)``, on the CPU with ``bf16`` through oneDNN in bf16 (its inputs rounded once, float32 sums;
    Intel Xeon with AMX, 2 threads, one prompt at 256 x 256: 6.3 -> 1.0 ms): bf16 out then, else float32."""
    if not (bf16 and up.device.type == "cpu" and up.dtype == torch.float32 and ops_work(torch.bfloat16)):
        return dec.mask_conv1(up)
    x = up.to(torch.bfloat16, memory_format=torch.channels_last)
    return conv2d(x, dec.mask_conv1, weights_of(dec.mask_conv1, torch.bfloat16))


def _hq_hidden(dec: Any, up: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The HQ branch's ``act(mask_norm(mask_conv1(up)))`` as channels-last rows (n, H, W, C/4) float32: the norm and
    the exact GELU in one C pass over the convolution's output where `geosam.models.cpu_hq.norm_gelu` runs (AVX-512
    CPUs; the widening to float32, the norm and the GELU were three torch passes, ~7.5 -> 2.2-2.6 ms a prompt at 256 x
    256, Intel Xeon with AMX, 2 threads; on the bf16 convolution's output its FAST_GELU), else torch's ops."""
    from geosam.models.cpu_hq import norm_gelu

    conv = _hq_conv1(dec, up, bf16)  # (n, C/4, H, W)
    norm = dec.mask_norm
    if exact_gelu(dec.activation) and getattr(norm, "data_format", "") == "channels_first":
        # the bf16 convolution's outputs: the cheaper GELU (within 6e-5 of the exact one, below their rounding)
        z = norm_gelu(conv.permute(0, 2, 3, 1), norm, fast=conv.dtype == torch.bfloat16)
        if z is not None:
            return z
    return dec.activation(norm(conv.float())).permute(0, 2, 3, 1)


def hq_features(dec: Any, image_embeddings: torch.Tensor, vit_features: torch.Tensor | None) -> torch.Tensor:
    """SAM-HQ's image-only features (1, C/8, 4h, 4w): the embedding encoder's upscaling of ``image_embeddings``
    (1, C, h, w) plus the compressed early ViT features ``vit_features`` (1, h, w, C_vit), when given."""
    act = dec.activation
    out = dec.encoder_conv2(act(dec.encoder_norm(dec.encoder_conv1(image_embeddings))))
    if vit_features is not None:
        vit = vit_features.permute(0, 3, 1, 2)
        out = out + dec.compress_vit_conv2(act(dec.compress_vit_norm(dec.compress_vit_conv1(vit))))
    return out


def _conv3x3_contracted(z: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3 x 3, stride 1, padding 1 convolution with one output channel per prompt: z (n, H, W, D) channels last,
    kernel (n, D, 3, 3), bias (n,) -> (n, H, W). As one product (n, H*W, D) @ (n, D, 9) and the sum of its nine
    shifted maps, which keeps the channels-last layout (a grouped convolution over the prompts was slower on the CPU)."""
    n, hh, ww, d = z.shape
    taps = torch.bmm(z.reshape(n, hh * ww, d), kernel.reshape(n, d, 9)).reshape(n, hh, ww, 3, 3)
    out = bias[:, None, None].expand(n, hh, ww).clone()
    for i in range(3):
        for j in range(3):  # out[y, x] += taps[y + i - 1, x + j - 1, i, j] where inside the map
            y0, y1, x0, x1 = max(0, 1 - i), hh - max(0, i - 1), max(0, 1 - j), ww - max(0, j - 1)
            out[:, y0:y1, x0:x1] += taps[:, y0 + i - 1 : y1 + i - 1, x0 + j - 1 : x1 + j - 1, i, j]
    return out


def _upscaled_from_first(dec: Any, first: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The upscaled features (n, C/8, 4h, 4w) (channels-last memory) from ``upscale_conv1``'s output ``first``
    (n, h*w, 4 C/4), columns (i, j, channel) for pixel (2y + i, 2x + j): the norm on its rows as they are (a norm per
    pixel does not care for their order), then where the activation is the exact GELU ``upscale_conv2`` as a per-pixel
    product with the GELU fused (oneDNN, `geosam.models.cpu_gemm.pointwise_linear`; torch's transposed convolution
    and its GELU were two more passes, 1.2 ms a prompt), and one shuffle of the pixels into place."""
    n, (hh, ww) = first.shape[0], hw
    c4 = first.shape[-1] // 4
    ln, act, conv2 = dec.upscale_layer_norm, dec.activation, dec.upscale_conv2
    y = act(F.layer_norm(first.reshape(-1, c4), (c4,), ln.weight, ln.bias, ln.eps))  # rows (p, i, j)
    if first.device.type == "cpu" and per_pixel(conv2) and exact_gelu(act) and first.dtype == torch.float32:
        w2, b2 = _as_linear(conv2)  # rows (i2, j2, out)
        z = pointwise_linear(y, w2, b2, True)  # (n h w 4, 4 C/8): rows (p, i, j), columns (i2, j2, out)
        c8 = conv2.out_channels
        pixels = z.view(n, hh, ww, 2, 2, 2, 2, c8).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(n, 4 * hh, 4 * ww, c8)
        return pixels.permute(0, 3, 1, 2)
    up1 = y.view(n, hh, ww, 2, 2, c4).transpose(2, 3).reshape(n, 2 * hh, 2 * ww, c4).permute(0, 3, 1, 2)
    return act(conv2(up1))


def _mask_rows(dec: Any, side: torch.Tensor, hw: tuple[int, int], hyper: torch.Tensor | None, hq: torch.Tensor | None,
               feats: torch.Tensor, first: torch.Tensor | None = None, bf16: bool = False) -> torch.Tensor:  # fmt: skip
    """Low-res logits (n, 1, 4h, 4w) of n prompts: their image sides (n, h*w, C) upscaled, times ``hyper`` (n, C/8)
    (the SAM token's, or None with only the HQ mask), plus the HQ token's ``hq`` (n, C/8) times the HQ branch.

    Channels last throughout (the image side is (n, h*w, C) already; the convolutions and the channels-first layer
    norms then need no layout copies), and the HQ branch's last convolution (64 -> C/8 channels, 3 x 3) is contracted
    with each prompt's HQ vector first: ``hq . conv2(z) = conv2_hq(z)``, one output channel instead of C/8.
    ``first``: ``upscale_conv1`` of the sides made already, (n, h*w, 4 C/4) with columns (i, j, channel) for output
    pixel (2y + i, 2x + j) (`geosam.models.fast_transformer.TwoWay.conv1`; then ``side`` is not read). ``bf16``: the HQ
    branch's 3 x 3 convolution to C/4 channels (most of the branch's FLOPs: 2.4 GFLOP a prompt at SAM's size) in bf16
    through oneDNN on the CPU where it has bf16 kernels (`_hq_conv1`)."""
    n, _, c = side.shape
    act = dec.activation
    if first is None:
        src = side.reshape(n, *hw, c).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory: no copy
        up = act(dec.upscale_conv2(act(dec.upscale_layer_norm(dec.upscale_conv1(src)))))
    else:
        up = _upscaled_from_first(dec, first, hw)
    h4, w4 = up.shape[2], up.shape[3]
    up_last = up.permute(0, 2, 3, 1).reshape(n, h4 * w4, -1)  # (n, H*W, C/8)
    out = None if hyper is None else torch.bmm(up_last, hyper[:, :, None])  # (n, H*W, 1)
    if hq is not None:
        z = _hq_hidden(dec, up, bf16)  # (n, H, W, 64) rows
        conv2 = dec.mask_conv2
        simple = (tuple(conv2.kernel_size) == (3, 3) and tuple(conv2.stride) == (1, 1)
                  and tuple(conv2.padding) == (1, 1) and tuple(conv2.dilation) == (1, 1) and conv2.groups == 1)  # fmt: skip
        if simple:
            kernel = torch.einsum("nc,cdij->ndij", hq, conv2.weight)  # (n, 64, 3, 3)
            bias = hq @ conv2.bias if conv2.bias is not None else hq.new_zeros(n)
            hq_part = _conv3x3_contracted(z, kernel, bias).reshape(n, h4 * w4, 1)
        else:
            hq_part = torch.bmm(conv2(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(n, h4 * w4, -1), hq[:, :, None])
        feats_last = feats[0].permute(1, 2, 0).reshape(h4 * w4, -1)  # (H*W, C/8)
        hq_part = hq_part + (feats_last @ hq.T).T[:, :, None]
        out = hq_part if out is None else out + hq_part
    assert out is not None
    return out.reshape(n, 1, h4, w4)


def hq_decode(
    model: Any,
    image_embeddings: torch.Tensor,
    vit_features: torch.Tensor | None,
    sparse_embeddings: torch.Tensor | None,
    dense_embeddings: torch.Tensor,
    multimask: bool,
    image_pe: torch.Tensor | None = None,
    iou_floor: float | None = None,
    hq_token_only: bool = False,
    cache: dict[Any, Any] | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ's decoder (SysCV's) for N prompts on one image: ``(low_res_masks (N, 1, 4h, 4w), iou (N, 1))``.

    image_embeddings: (1, C, h, w); vit_features: (1, h, w, C_vit), the first global-attention layer's output (the
    stock forward's ``intermediate_embeddings[0]``; None: the HQ features from the embedding alone);
    sparse_embeddings: (N, T, C) from ``model.prompt_encoder`` (None: no sparse prompt, N = 1); dense_embeddings:
    (1 or N, C, h, w); image_pe: (1, C, h, w) (from the model when None). With ``iou_floor``, the masks of prompts
    whose returned IoU is at or below it are ``-inf`` (not computed). ``cache``: a dict passed to every call on the
    same image (the HQ features, the image side's projections). ``bf16``: the HQ branch's 3 x 3 convolution in bf16 on
    the CPU (`_hq_conv1`; the bf16 dtype).
    """
    dec, tokens, n, image_pe, key = start_decode(
        model, image_embeddings, sparse_embeddings, dense_embeddings, image_pe, cache,
        ("iou_token", "mask_tokens", "hq_token"), () if vit_features is None else (vit_features,),
    )  # fmt: skip
    hh, ww = image_embeddings.shape[2:]
    feats = cached(cache, key, "hq_features", lambda: hq_features(dec, image_embeddings, vit_features))
    used = list(range(1 + int(dec.num_mask_tokens)))  # the IoU token, SAM's mask tokens, the HQ token
    # on the CPU in float32 no image side is written: the upscaling starts from its first product (`TwoWay.conv1`)
    tw = two_way(dec, tokens, image_embeddings, dense_embeddings, image_pe, cache, key, used,
                 unroll=per_pixel(dec.upscale_conv1))  # fmt: skip
    queries, side = tw.queries, tw.keys

    n_sam = int(dec.num_mask_tokens) - 1  # transformers counts the HQ token among the mask tokens
    iou_all = dec.iou_prediction_head(queries[:, 0, :])  # (N, n_sam)
    if multimask:
        iou, best = iou_all[:, 1:n_sam].max(dim=1)
        sam_token = best + 1
    else:
        iou = iou_all[:, 0]
        sam_token = torch.zeros(n, dtype=torch.long, device=queries.device)
    rows = torch.arange(n, device=queries.device)
    mlps = dec.output_hypernetworks_mlps
    hq_mlp = dec.hq_mask_mlp if hasattr(dec, "hq_mask_mlp") else dec.hf_mlp  # (named hf_mlp in SysCV's code)
    hq = hq_mlp(queries[:, 1 + n_sam, :])  # (N, C/8)
    hyper = None
    if not hq_token_only:  # each prompt's chosen SAM token through its own hypernetwork MLP
        every = torch.stack([mlps[j](queries[:, 1 + j, :]) for j in range(n_sam)], dim=1)  # (N, n_sam, C/8)
        hyper = every[rows, sam_token]

    h4, w4 = 4 * hh, 4 * ww
    masks = torch.full((n, 1, h4, w4), float("-inf"), dtype=torch.float32, device=queries.device)
    todo = rows if iou_floor is None else (iou > iou_floor).nonzero()[:, 0]
    conv1 = tw.conv1
    step = 1 if conv1 is not None else HQ_UPSCALE_CPU_CHUNK if queries.device.type == "cpu" else HQ_UPSCALE_DEVICE_CHUNK
    for s in range(0, todo.numel(), step):
        idx = todo[s : s + step]
        part_hyper = None if hyper is None else hyper[idx]
        first = None if conv1 is None else tw.first_product(int(idx[0]))  # (1, h*w, 4 C/4)
        masks[idx] = _mask_rows(dec, side[idx], (hh, ww), part_hyper, hq[idx], feats, first, bf16).float()
    return masks, iou[:, None].float()


def decode_prompts(
    bundle: SamBundle,
    embeddings: MultiEmbeddings,
    multimask: bool,
    iou_floor: float | None,
    n: int,
    prompts: dict[str, torch.Tensor],
    cache: dict[Any, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`hq_decode` on prompts shaped for ``SamHQModel.forward`` (``input_points`` / ``input_labels`` /
    ``input_boxes``, batch of one image; what `geosam.models.runtime.decode` runs for SAM-HQ, never transformers'
    decoder forward): ``(masks (N, 1, h, w), iou (N, 1))``, one mask per prompt (with
    ``multimask`` the best of SAM's three plus the HQ mask), in float32; on the CPU `geosam.models.compile.FAMILY_DECODER_CPU_CHUNK` prompts
    per transformer call, the chunks sharing the image's HQ features and projections (with ``cache``, a dict
    kept by the caller, the calls on the same image too)."""
    bf16 = bundle.dtype == torch.bfloat16  # the HQ branch's convolution in bf16 where the CPU has it
    inputs, image_cache = float32_inputs((embeddings.main, *embeddings.extras[:1]), bundle.device, cache)
    image, vit = inputs[0], (inputs[1] if len(inputs) > 1 else None)
    return decode_in_chunks(
        bundle, prompts, n,
        lambda part, dense, pe, shared: hq_decode(bundle.model, image, vit, part, dense, multimask, pe,
                                                 iou_floor=iou_floor, cache=shared, bf16=bf16),
        image_cache, cpu_chunk=FAMILY_DECODER_CPU_CHUNK,
    )  # fmt: skip
