"""segment-anything 1.0 as a benchmark anchor: the same weights as a transformers ``SamModel``, run by SAM's own code.

`segment_anything_state_dict` renames a transformers ``SamModel`` state dict into segment-anything's layout
(the inverse of transformers' ``convert_sam_to_hf.py``); `build_segment_anything` builds segment-anything's
``Sam`` with the transformers config's sizes and loads those weights (strict), so both libraries run one model.

segment-anything imports torchvision in two places: ``torchvision.ops.boxes`` (``batched_nms``, ``box_area``, in
``automatic_mask_generator.py``) and ``torchvision.transforms.functional`` (``resize``, ``to_pil_image``, in
``utils/transforms.py``). torchvision is not installed in geosam's venv, so `import_segment_anything` stands in
for them while segment-anything is imported, as ``bench_amg.py`` does for the transformers pipeline's NMS:

* ``batched_nms``: `geosam.segment.sam_utils.batched_nms` (torchvision's greedy algorithm and order);
* ``box_area``: ``(x1 - x0) * (y1 - y0)``, torchvision's formula;
* ``resize`` / ``to_pil_image`` on a uint8 image: PIL's bilinear ``Image.resize`` / ``Image.fromarray``, which is
  what torchvision calls for PIL images.

The stand-in modules are removed from ``sys.modules`` right after the import (transformers probes for
torchvision and must still see it missing); segment-anything keeps its references to the stand-in functions.
A real, working torchvision is used as is.

One known difference between the two libraries remains, and is kept: segment-anything's two-way transformer
uses ``nn.LayerNorm``'s default eps (1e-5) where transformers uses the config's ``layer_norm_eps`` (1e-6), so
decoder outputs agree to ~1e-5, not bit for bit.
"""

from __future__ import annotations

import contextlib
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

#: segment-anything's image normalisation (``build_sam._build_sam``), the same as transformers' SAM processor's.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

_RENAMES = (
    # vision encoder
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^vision_encoder\.", "image_encoder."),
    # prompt encoder
    (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    # mask decoder
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
)

#: transformers' ``SamFeedForward``: ``proj_in``, ``layers[0 .. n-3]``, ``proj_out`` = segment-anything's ``layers[0 .. n-1]``
_FEED_FORWARD = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.(\d+)|proj_out)\.(.*)$")


def segment_anything_state_dict(hf_state: dict[str, torch.Tensor], mlp_layers: int) -> dict[str, torch.Tensor]:
    """A transformers ``SamModel`` state dict renamed into segment-anything's ``Sam`` layout (tensors shared, not copied).

    Args:
        hf_state: ``SamModel.state_dict()``.
        mlp_layers: layers of the decoder's IoU-head MLP (``iou_head_depth``, 3 in SAM); the hypernetwork MLPs
            have 3 in both libraries.

    Returns:
        The state dict for ``segment_anything.modeling.Sam.load_state_dict`` (``prompt_encoder.shared_embedding``,
        a second name of ``shared_image_embedding``, is dropped).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key.startswith("prompt_encoder.shared_embedding."):
            continue
        m = _FEED_FORWARD.match(key)
        if m:
            prefix, part, hidden, rest = m.groups()
            depth = mlp_layers if prefix.endswith("iou_prediction_head") else 3
            index = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(hidden) + 1
            out[f"{prefix}.layers.{index}.{rest}"] = value
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    from geosam.segment.sam_utils import batched_nms

    return batched_nms(boxes, scores, idxs, iou_threshold)


def _to_pil_image(pic: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.asarray(pic))


def _resize(img: Any, size: Any) -> Any:
    """torchvision's ``resize`` of a PIL image to ``size`` = (h, w): PIL's bilinear resize."""
    from PIL import Image

    h, w = (int(s) for s in size)
    return img.resize((w, h), Image.BILINEAR)


def _torchvision_works() -> bool:
    try:
        from torchvision.ops.boxes import batched_nms  # noqa: F401
        from torchvision.transforms.functional import resize  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - missing or broken build
        return False


@contextlib.contextmanager
def _stand_in_modules() -> Iterator[None]:
    """Stand-in ``torchvision.ops.boxes`` and ``torchvision.transforms.functional`` in ``sys.modules``, then removed."""
    names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
             "torchvision.transforms.functional")
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    mods = {n: types.ModuleType(n) for n in names}
    mods["torchvision.ops.boxes"].batched_nms = _batched_nms  # type: ignore[attr-defined]
    mods["torchvision.ops.boxes"].box_area = _box_area  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].resize = _resize  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].to_pil_image = _to_pil_image  # type: ignore[attr-defined]
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def import_segment_anything() -> tuple[types.ModuleType, str]:
    """``segment_anything`` imported (with torchvision stand-ins where torchvision is missing), and what was done."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"], getattr(sys.modules["segment_anything"], "_geosam_note", "imported")
    if _torchvision_works():
        import segment_anything

        note = "torchvision as installed"
    else:
        import transformers  # noqa: F401 - transformers probes torchvision once; it must see it missing

        with _stand_in_modules():
            import segment_anything
        note = "torchvision stood in for: geosam.segment.sam_utils.batched_nms, PIL resize (benchmarks/sam_anchor.py)"
    segment_anything._geosam_note = note  # type: ignore[attr-defined]
    return segment_anything, note


def build_segment_anything(hf_model: Any) -> Any:
    """segment-anything's ``Sam`` with ``hf_model``'s (a transformers ``SamModel``) sizes and weights, in eval mode."""
    from functools import partial

    sa, _ = import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    cfg = hf_model.config
    v, p, d = cfg.vision_config, cfg.prompt_encoder_config, cfg.mask_decoder_config
    grid = v.image_size // v.patch_size
    sam = sa.modeling.Sam(
        image_encoder=ImageEncoderViT(
            img_size=v.image_size,
            patch_size=v.patch_size,
            in_chans=v.num_channels,
            embed_dim=v.hidden_size,
            depth=v.num_hidden_layers,
            num_heads=v.num_attention_heads,
            mlp_ratio=v.mlp_dim / v.hidden_size,
            out_chans=v.output_channels,
            qkv_bias=v.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=v.layer_norm_eps),
            use_abs_pos=v.use_abs_pos,
            use_rel_pos=v.use_rel_pos,
            window_size=v.window_size,
            global_attn_indexes=tuple(v.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=p.hidden_size,
            image_embedding_size=(grid, grid),
            input_image_size=(v.image_size, v.image_size),
            mask_in_chans=p.mask_input_channels,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=d.hidden_size,
            transformer=TwoWayTransformer(
                depth=d.num_hidden_layers,
                embedding_dim=d.hidden_size,
                num_heads=d.num_attention_heads,
                mlp_dim=d.mlp_dim,
                attention_downsample_rate=d.attention_downsample_rate,
            ),
            num_multimask_outputs=d.num_multimask_outputs,
            iou_head_depth=d.iou_head_depth,
            iou_head_hidden_dim=d.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    state = segment_anything_state_dict(hf_model.state_dict(), d.iou_head_depth)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


__all__ = ["build_segment_anything", "import_segment_anything", "segment_anything_state_dict"]
