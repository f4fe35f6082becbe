"""Run a loaded model in three steps: preprocess, encode, decode.

The steps are split so that a batched engine can schedule them separately:

1. `preprocess` - uint8 chip images -> normalised, padded ``pixel_values``;
2. `encode` - ``pixel_values`` -> image embeddings (the expensive part);
3. `decode` - point and/or box prompts -> low-resolution mask logits and
   predicted IoU, reusing one embedding for many prompts (`decode_points`
   and `decode_boxes` are shorthands for one point or one box per object).

Frames and units:

* **chip frame** - pixels of the chip as given (x = column, y = row, origin at
  the top-left corner of the top-left pixel; a pixel centre is at ``+0.5``);
* **model frame** - pixels of the model input: the chip resized so that its
  longest side is ``longest_edge`` (normally 1024) and padded bottom/right to
  ``input_size`` x ``input_size``. Point and box prompts go to the decoder in
  this frame; `to_model_frame` converts from the chip frame;
* **low-res frame** - the decoder's ``low_res_size`` x ``low_res_size`` (256)
  logits cover the whole padded model input; `upsample_logits` maps them
  back to the chip frame.

Nothing here needs torchvision: images are resized in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geosam.models.bundle import SamBundle
from geosam.models.compile import (
    FAST_DECODER_CPU_CHUNK,
    STOCK_DECODER_CPU_CHUNK,
    use_fast_decoder,
    use_fast_encoder,
    use_fast_hiera,
    use_fast_tinyvit,
    use_sam2_decoder,
)
from geosam.models.cpu_masks import upsample_gt, upsampled
from geosam.models.cpu_memory import heap_blocks, keep_freed_memory
from geosam.models.embeddings import MULTI_EMBEDDING_FAMILIES, MultiEmbeddings, decoder_kwargs, encode_family

# ---------------------------------------------------------------------------
# frames


def resized_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """(h', w') of a ``height`` x ``width`` image resized to ``longest_edge`` (SAM's rounding)."""
    scale = longest_edge * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_model_frame(
    coords: np.ndarray | torch.Tensor, original_hw: tuple[int, int], resized_hw: tuple[int, int]
) -> torch.Tensor:
    """Chip-frame x, y coordinates -> model-frame coordinates (float32 tensor).

    ``coords`` has a last dimension of 2 (x, y points) or 4 (x0, y0, x1, y1 boxes).
    """
    t = torch.as_tensor(np.asarray(coords, dtype=np.float32) if not isinstance(coords, torch.Tensor) else coords)
    t = t.to(torch.float32)
    if t.shape[-1] not in (2, 4):
        raise ValueError(f"coordinates need a last dimension of 2 or 4, got shape {tuple(t.shape)}")
    sx = resized_hw[1] / original_hw[1]
    sy = resized_hw[0] / original_hw[0]
    scale = torch.tensor([sx, sy] * (t.shape[-1] // 2), dtype=torch.float32, device=t.device)
    return t * scale


# ---------------------------------------------------------------------------
# preprocess


def preprocess(bundle: SamBundle, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """uint8 (H, W, 3) images -> model input.

    Each image is resized (bilinear, antialiased, rounded to uint8 like the PIL
    processor) so that its longest side is ``bundle.longest_edge`` (with
    ``bundle.resize == "square"``, SAM 2 and SAM 3: to ``input_size`` x
    ``input_size``, aspect not kept, no padding), rescaled to
    0..1, normalised with the bundle's mean/std and padded bottom/right with
    zeros to ``input_size`` x ``input_size``.

    Returns ``(pixel_values (B, 3, S, S) float32 on bundle.device, original
    (H, W) per image, resized (h', w') per image)``.
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    s = bundle.input_size
    device = bundle.device
    mean = torch.tensor(bundle.image_mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(bundle.image_std, dtype=torch.float32, device=device).view(3, 1, 1)
    out = torch.zeros((len(images), 3, s, s), dtype=torch.float32, device=device)
    originals: list[tuple[int, int]] = []
    resized: list[tuple[int, int]] = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
        h, w = int(arr.shape[0]), int(arr.shape[1])
        nh, nw = (s, s) if bundle.resize == "square" else resized_size(h, w, bundle.longest_edge)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(2, 0, 1).to(torch.float32)
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
            x = x.round_().clamp_(0, 255)
        if bundle.normalize == "minmax":
            lo, hi = x.min(), x.max()
            x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        else:
            x = (x * bundle.rescale_factor - mean) / std
        out[i, :, :nh, :nw] = x
        originals.append((h, w))
        resized.append((nh, nw))
    return out, originals, resized


def encode(bundle: SamBundle, pixel_values: torch.Tensor) -> torch.Tensor | MultiEmbeddings:
    """Image embeddings (B, C, h, w) of ``pixel_values`` (B, 3, S, S) from `preprocess`.

    SAM-HQ and SAM 2 (``bundle.capabilities.family``) give a
    `MultiEmbeddings`, sliced like a tensor.
    """
    pv = pixel_values.to(device=bundle.device, dtype=torch.float32)
    if bundle.device.type != "cpu":
        return _encode(bundle, pv)
    keep_freed_memory()
    with heap_blocks():  # any block of 32 MiB and more used again layer after layer, not fresh pages each time
        return _encode(bundle, pv)


def _encode(bundle: SamBundle, pv: torch.Tensor) -> torch.Tensor | MultiEmbeddings:
    """`encode` on float32 pixels on the bundle's device."""
    family = bundle.capabilities.family
    if family == "sam_hq" and use_fast_encoder(bundle):  # SAM's ViT, and its global layers' outputs besides
        from geosam.models.fast_encoder import fast_image_embeddings

        inter: list[torch.Tensor] = []
        main = fast_image_embeddings(bundle.model, pv, bundle.dtype, intermediates=inter)
        return MultiEmbeddings(main, tuple(inter), family)
    if family == "sam2" and use_fast_hiera(bundle):  # SAM 2's Hiera, fused, on the CPU
        from geosam.models.fast_hiera import fast_sam2_embeddings

        levels = fast_sam2_embeddings(bundle.model, pv, bundle.dtype)  # finest first, the decoder's input last
        return MultiEmbeddings(levels[-1], tuple(levels[:-1]), family)
    if family in MULTI_EMBEDDING_FAMILIES:
        with torch.inference_mode(), bundle.autocast():
            return encode_family(bundle.model, family, pv)
    if use_fast_tinyvit(bundle):  # LiteMedSAM's encoder
        from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

        return fast_tinyvit_embeddings(bundle.model, pv, bundle.dtype)
    if use_fast_encoder(bundle):
        compiled = getattr(bundle.model, "_geosam_fast_encoder", None)  # set by compile_bundle
        if compiled is not None:
            return compiled(pv, bundle.dtype)
        from geosam.models.fast_encoder import fast_image_embeddings

        return fast_image_embeddings(bundle.model, pv, bundle.dtype)
    with torch.inference_mode(), bundle.autocast():
        return bundle.model.get_image_embeddings(pv)


def _run_decoder(
    bundle: SamBundle,
    image_embeddings: torch.Tensor | MultiEmbeddings,
    multimask: bool,
    iou_floor: float | None = None,
    cache: dict[Any, Any] | None = None,
    **prompts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder on model-frame prompts already shaped for ``SamModel.forward`` (batch of one image);
    ``cache``: as `decode`'s."""
    if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
        raise ValueError(f"image_embeddings must be (1, C, h, w), got {tuple(image_embeddings.shape)}")
    n = next(iter(prompts.values())).shape[1] if prompts else 0
    if bundle.device.type == "cpu":
        keep_freed_memory()
    if n > 0 and not isinstance(image_embeddings, MultiEmbeddings) and use_fast_decoder(bundle):
        from geosam.models.decoder_side import decode_in_chunks, float32_inputs
        from geosam.models.fast_decoder import _unwrap, fast_decode, returned_mask_tokens

        model = bundle.model
        (emb,), image_cache = float32_inputs((image_embeddings,), bundle.device, cache)
        bf16 = bundle.dtype == torch.bfloat16  # the upscaling's products in bf16 where the CPU has AVX-512 BF16
        k = len(returned_mask_tokens(_unwrap(model.mask_decoder), multimask))
        return decode_in_chunks(
            bundle, prompts, n,
            lambda part, dense, pe, shared, out: fast_decode(model, emb, part, dense, multimask, pe,
                                                             iou_floor=iou_floor, cache=shared, out=out, bf16=bf16),
            image_cache, (k, 4 * emb.shape[2], 4 * emb.shape[3]), cpu_chunk=FAST_DECODER_CPU_CHUNK,
        )  # fmt: skip
    if n > 0 and isinstance(image_embeddings, MultiEmbeddings):
        if image_embeddings.family == "sam_hq":  # always geosam's: transformers' upscales the wrong image side
            from geosam.models.hq_decoder import decode_prompts

            return decode_prompts(bundle, image_embeddings, multimask, iou_floor, n, prompts, cache)
        if image_embeddings.family == "sam2" and use_sam2_decoder(bundle):
            from geosam.models.sam2_decoder import decode_prompts as decode_sam2

            return decode_sam2(bundle, image_embeddings, multimask, iou_floor, n, prompts, cache)
    masks, iou = _stock_decoder(bundle, image_embeddings, multimask, n, prompts)
    if iou_floor is not None:  # as the fast decoder: prompts with no mask above the floor are -inf
        masks = torch.where((iou > iou_floor).any(dim=1)[:, None, None, None], masks, float("-inf"))
    return masks, iou


def _stock_decoder(
    bundle: SamBundle,
    image_embeddings: torch.Tensor | MultiEmbeddings,
    multimask: bool,
    n: int,
    prompts: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own forward on the decoder's side: ``(masks (N, K, h, w), iou (N, K))`` float32.

    On the CPU `STOCK_DECODER_CPU_CHUNK` prompts per call (the prompts are independent: the same masks), written
    into one tensor; elsewhere all at once.
    """
    step = STOCK_DECODER_CPU_CHUNK if bundle.device.type == "cpu" else max(n, 1)
    image_side = decoder_kwargs(image_embeddings, bundle.device)
    masks: torch.Tensor | None = None
    ious = []
    with torch.inference_mode(), bundle.autocast():
        for s in range(0, max(n, 1), step):
            part = {k: v[:, s : s + step] for k, v in prompts.items()}  # (1, N, ...): prompts on axis 1
            out = bundle.model(**image_side, multimask_output=multimask, **part)
            low = out.pred_masks[0]
            if n <= step:
                return low.float(), out.iou_scores[0].float()
            if masks is None:
                masks = torch.empty((n, *low.shape[1:]), dtype=torch.float32, device=low.device)
            masks[s : s + low.shape[0]] = low
            ious.append(out.iou_scores[0].float())
    assert masks is not None
    return masks, torch.cat(ious)


def decode(
    bundle: SamBundle,
    image_embeddings: torch.Tensor | MultiEmbeddings,
    points: np.ndarray | torch.Tensor | None = None,
    labels: np.ndarray | torch.Tensor | None = None,
    boxes: np.ndarray | torch.Tensor | None = None,
    multimask: bool = False,
    iou_floor: float | None = None,
    cache: dict[Any, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per object prompted by several points and/or a box.

    image_embeddings: (1, C, h, w) from `encode`.
    points: (N, P, 2) x, y in the model frame, P points per object; labels:
    (N, P) 1 = foreground (default), 0 = background. boxes: (N, 4) x0, y0, x1,
    y1 in the model frame (one per object, with or without points).

    iou_floor: objects none of whose K masks has a predicted IoU above this get
    ``-inf`` logits, and the fast decoder skips their upscaling (for callers
    that drop such masks anyway, as segment-everything's ``pred_iou_thresh``).

    cache: a dict that the caller passes to every call on the same
    ``image_embeddings`` (e.g. the batches of prompts of one crop; a new dict
    per image and model, whose weights must not change while it is used): what
    geosam's decoders compute from the image alone (the image side's
    projections, SAM-HQ's HQ features, ...) is then computed once, not once
    per call. It holds references to the image's tensors while it is used for
    them. Without it, the chunks of one call share such a dict.

    Returns ``(low_res_logits (N, K, 256, 256), iou_scores (N, K))`` float32 on
    ``bundle.device``, K = 3 with ``multimask`` else 1 (SAM-HQ: K = 1, with ``multimask`` the best of SAM's three
    masks plus the HQ mask, as its authors' decoder returns). Logits cover the padded
    model input (low-res frame).
    """
    prompts: dict[str, torch.Tensor] = {}
    n = None
    if points is not None:
        pts = torch.as_tensor(points, dtype=torch.float32).to(bundle.device)
        if pts.ndim != 3 or pts.shape[2] != 2:
            raise ValueError(f"points must be (N, P, 2), got {tuple(pts.shape)}")
        n = pts.shape[0]
        if labels is None:
            lab = torch.ones(pts.shape[:2], dtype=torch.long, device=bundle.device)
        else:
            lab = torch.as_tensor(labels, dtype=torch.long).to(bundle.device)
            if tuple(lab.shape) != tuple(pts.shape[:2]):
                raise ValueError(f"labels must be (N, P) = {tuple(pts.shape[:2])}, got {tuple(lab.shape)}")
        prompts["input_points"] = pts[None]
        prompts["input_labels"] = lab[None]
    if boxes is not None:
        bx = torch.as_tensor(boxes, dtype=torch.float32).to(bundle.device)
        if bx.ndim != 2 or bx.shape[1] != 4 or (n is not None and bx.shape[0] != n):
            raise ValueError(f"boxes must be (N, 4) with one box per object, got {tuple(bx.shape)}")
        prompts["input_boxes"] = bx[None]
    if not prompts:
        raise ValueError("decode needs points, boxes or both")
    return _run_decoder(bundle, image_embeddings, multimask, iou_floor, cache, **prompts)



def decode_points(
    bundle: SamBundle,
    image_embeddings: torch.Tensor | MultiEmbeddings,
    points: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | None = None,
    multimask: bool = True,
    iou_floor: float | None = None,
    cache: dict[Any, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per point prompt: `decode` with one point per object.

    points: (N, 2) x, y in the model frame; labels: (N,) 1 = foreground
    (default), 0 = background; iou_floor, cache: as `decode`. Returns as
    `decode` (multimask by default).
    """
    pts = torch.as_tensor(points, dtype=torch.float32).to(bundle.device)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got {tuple(pts.shape)}")
    lab = None
    if labels is not None:
        lab = torch.as_tensor(labels, dtype=torch.long).to(bundle.device).reshape(-1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"{lab.shape[0]} labels for {pts.shape[0]} points")
        lab = lab[:, None]
    return decode(bundle, image_embeddings, points=pts[:, None, :], labels=lab, multimask=multimask, iou_floor=iou_floor,
                  cache=cache)


def decode_boxes(
    bundle: SamBundle,
    image_embeddings: torch.Tensor | MultiEmbeddings,
    boxes: np.ndarray | torch.Tensor,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per box prompt: `decode` with boxes only.

    boxes: (N, 4) x0, y0, x1, y1 in the model frame. Returns as `decode`.
    """
    bx = torch.as_tensor(boxes, dtype=torch.float32).to(bundle.device)
    if bx.ndim != 2 or bx.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(bx.shape)}")
    return decode(bundle, image_embeddings, boxes=bx, multimask=multimask)


def upsample_logits(
    logits: torch.Tensor,
    input_size: int,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> torch.Tensor:
    """Low-res logits (N, h, w) -> chip-frame logits (N, H, W), float32.

    As SAM: bilinear to the padded ``input_size`` square, crop the padding away
    (``resized_hw``), bilinear to ``original_hw``. Where no second resize is
    needed, on the CPU through `geosam.models.cpu_masks` (the same bits).
    """
    x = logits.to(torch.float32)
    if tuple(resized_hw) == tuple(original_hw):
        return upsampled(x, (input_size, input_size), (resized_hw[0], resized_hw[1]))
    x = F.interpolate(x[:, None], size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    return F.interpolate(x, size=tuple(original_hw), mode="bilinear", align_corners=False)[:, 0]


def upsample_masks(
    logits: torch.Tensor,
    input_size: int,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
    threshold: float,
) -> torch.Tensor:
    """``upsample_logits(...) > threshold`` (N, H, W) bool; on the CPU without the float logits where it can."""
    if tuple(resized_hw) == tuple(original_hw):
        hw = (resized_hw[0], resized_hw[1])
        return upsample_gt(logits.to(torch.float32), (input_size, input_size), hw, threshold)
    return upsample_logits(logits, input_size, resized_hw, original_hw) > threshold


__all__ = [
    "decode",
    "decode_boxes",
    "decode_points",
    "encode",
    "preprocess",
    "resized_size",
    "to_model_frame",
    "upsample_logits",
    "upsample_masks",
]
