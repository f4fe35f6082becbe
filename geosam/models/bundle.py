"""A loaded model (`SamBundle`) and what it can do (`ModelCapabilities`).

Each loader declares its model's capabilities; callers ask them through
`require` (or read ``bundle.capabilities``) instead of guessing from a
preprocessing setting. This module imports nothing else from ``geosam.models``,
so any loader (``geosam.models.litemedsam``, ``geosam.models.hf_sam``) can build
a bundle without import cycles.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geosam.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: SAM preprocessing defaults, used when a checkpoint has no processor config.
SAM_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
SAM_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SAM_RESCALE_FACTOR = 1.0 / 255.0
SAM_LONGEST_EDGE = 1024

#: capability field -> how a message names it
_MODES: dict[str, str] = {
    "point_prompts": "point prompts",
    "box_prompts": "box prompts",
    "segment_everything": "segment-everything",
    "text_prompts": "text prompts",
    "exemplars": "exemplar prompts",
}


@dataclass(frozen=True, kw_only=True)
class ModelCapabilities:
    """What a loaded model can be asked, declared by its loader.

    point_prompts: foreground/background points give usable masks.
    box_prompts: boxes give usable masks.
    segment_everything: the grid-of-points generator (`geosam.segment.SamMaskGenerator`)
        works; needs ``point_prompts``.
    text_prompts: a text phrase selects objects (SAM 3 style).
    exemplars: example boxes select similar objects (SAM 3 style).
    family: the registry family that loaded the model ("sam", "litemedsam", ...).
    """

    point_prompts: bool
    box_prompts: bool
    segment_everything: bool
    text_prompts: bool = False
    exemplars: bool = False
    family: str

    def __post_init__(self) -> None:
        if self.segment_everything and not self.point_prompts:
            raise ValueError("segment_everything needs point_prompts (it prompts a grid of points)")

    def modes(self) -> list[str]:
        """The prompt modes this model takes, as message words ("point prompts", "box prompts", ...)."""
        return [label for key, label in _MODES.items() if key != "segment_everything" and getattr(self, key)]


#: Capabilities of a transformers SAM checkpoint (the default of a `SamBundle`).
SAM_CAPABILITIES = ModelCapabilities(point_prompts=True, box_prompts=True, segment_everything=True, family="sam")


@dataclass
class SamBundle:
    """A loaded SAM-style model with what is needed to feed it.

    model: ``transformers.SamModel`` (or a model with its interface) in eval mode
        on ``device`` (float32 weights).
    processor: the ``SamProcessor`` (PIL image processor) or None.
    dtype: compute dtype (autocast when not float32).
    name: the model id or path as given.
    image_mean, image_std: per-channel normalisation on the 0..1 scale.
    rescale_factor: multiplier taking uint8 values to 0..1.
    longest_edge: longest side of the resized image in the model frame (px).
    input_size: side of the square, padded model input (px), = the encoder's image size.
    normalize: preprocessing only: "sam" (rescale, then mean/std) or "minmax"
        (the resized image rescaled to 0..1 by its own min and max, no mean/std).
        Never a test of what the model can do: use ``capabilities``.
    resize: preprocessing only: "longest" (SAM, SAM-HQ: the longest side to
        ``longest_edge``, aspect kept, padded bottom/right) or "square" (SAM 2,
        SAM 3: stretched to ``input_size`` x ``input_size``, no padding).
    capabilities: what the model can be asked (declared by its loader; SAM's by default).
    fast_decoder: decode prompts with `geosam.models.fast_decoder.fast_decode` (same
        math as the stock mask decoder, faster on a CPU for many prompts per image).
        None (default): on the CPU and on CUDA, whatever the encoder's dtype (exact
        float32 decoding is faster than bf16 autocast of the stock decoder on a CPU,
        as fast as its float16 autocast on an H200, and keeps float32's masks); True:
        whenever the model has transformers' SAM decoder layout, on any device and
        dtype - the decoder then runs in float32 (no autocast), giving the float32
        stock results; False: always the stock ``SamModel.forward``.
    fast_encoder: encode images with `geosam.models.fast_encoder.fast_image_embeddings`
        (relative-position attention without the dense bias matrix, float32 products
        through oneDNN; same math, faster on the CPU in float32 and bf16). None
        (default): on the CPU, any dtype; on CUDA in float16 / bfloat16 (in float32
        the stock encoder's fused attention is faster there); True: whenever the encoder has
        transformers' SAM ViT layout (any device); False: always the stock
        ``get_image_embeddings``. The same switch takes LiteMedSAM's TinyViT through
        `geosam.models.fast_tinyvit` (oneDNN's fused operators) and SAM 2's Hiera through
        `geosam.models.fast_hiera` on the CPU.
    """

    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    name: str
    image_mean: tuple[float, float, float] = SAM_IMAGE_MEAN
    image_std: tuple[float, float, float] = SAM_IMAGE_STD
    rescale_factor: float = SAM_RESCALE_FACTOR
    longest_edge: int = SAM_LONGEST_EDGE
    input_size: int = SAM_LONGEST_EDGE
    normalize: str = "sam"
    resize: str = "longest"
    capabilities: ModelCapabilities = SAM_CAPABILITIES
    fast_decoder: bool | None = None
    fast_encoder: bool | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The compute dtype as torch's autocast on the bundle's device (nothing for float32)."""
        import torch  # at run time only: this module is imported without torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def pad_size(self) -> tuple[int, int]:
        """(height, width) of the padded model input (px)."""
        return (self.input_size, self.input_size)

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution logits (px of the low-res frame, normally 256)."""
        pe = self.model.config.prompt_encoder_config
        side = getattr(pe, "image_embedding_size", None)  # SAM, SAM-HQ
        if side is None:  # SAM 2: image_size / patch_size
            side = int(pe.image_size) // int(pe.patch_size)
        return int(side) * 4

    def require(self, what: str) -> None:
        """Raise `ConfigError` unless the model has capability ``what`` (see `require`)."""
        require(self, what)


def _what_works(caps: ModelCapabilities) -> str:
    """The advice half of a `require` message: the mode that works with this model."""
    if caps.box_prompts and caps.point_prompts:
        prompt = "`geosam prompt` with points or boxes"
    elif caps.box_prompts:
        prompt = "`geosam prompt` with boxes"
    elif caps.point_prompts:
        prompt = "`geosam prompt` with points"
    else:
        return "use a SAM checkpoint (--model)"
    return f"use {prompt}, or a SAM checkpoint (--model)"


def require(bundle: SamBundle, what: str) -> None:
    """Raise `ConfigError` unless ``bundle`` can do ``what``.

    ``what`` is a `ModelCapabilities` field name: "point_prompts",
    "box_prompts", "segment_everything", "text_prompts" or "exemplars". The
    message names the model, the modes it takes and what to use instead, e.g.
    "model 'litemedsam' takes box prompts only: segment-everything needs point
    prompts; use `geosam prompt` with boxes, or a SAM checkpoint (--model)".
    """
    if what not in _MODES:
        raise ValueError(f"unknown capability {what!r}: use one of {', '.join(_MODES)}")
    caps = bundle.capabilities
    if getattr(caps, what):
        return
    modes = caps.modes()
    takes = f"takes {' and '.join(modes)}" + (" only" if len(modes) == 1 else "") if modes else "takes no prompts"
    name = repr(bundle.name) if bundle.name == caps.family else f"{bundle.name!r} ({caps.family})"
    if what == "segment_everything":
        why = "segment-everything needs point prompts" if not caps.point_prompts else "it cannot segment everything"
    else:
        why = f"{_MODES[what]} are not supported"
    raise ConfigError(f"model {name} {takes}: {why}; {_what_works(caps)}")


__all__ = [
    "SAM_CAPABILITIES",
    "SAM_IMAGE_MEAN",
    "SAM_IMAGE_STD",
    "SAM_LONGEST_EDGE",
    "SAM_RESCALE_FACTOR",
    "ModelCapabilities",
    "SamBundle",
    "require",
]
