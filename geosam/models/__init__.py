"""Model loading and running: SAM-family models behind one `SamBundle`.

* `device` - device and compute dtype ("auto" choices);
* `bundle` - `SamBundle`, `ModelCapabilities`, `require`;
* `registry` - `load_model` by name through model families
  (`register_family`); built in: "sam" (`hf_sam`,
  transformers checkpoints) and "litemedsam" (`litemedsam`);
* `runtime` - frames, `preprocess`, `encode`, `decode`;
* `compile` - fast-path switches and `compile_bundle`.

This package imports torch; ``import geosam`` loads it only on first use.
"""

from __future__ import annotations

from geosam.config import DEFAULT_MODEL
from geosam.models.bundle import ModelCapabilities, SamBundle, require
from geosam.models.compile import (
    FAMILY_DECODER_CPU_CHUNK,
    FAST_DECODER_CPU_CHUNK,
    STOCK_DECODER_CPU_CHUNK,
    compile_bundle,
)
from geosam.models.device import cpu_has_amx, resolve_device, resolve_dtype
from geosam.models.hf_sam import BUILTIN_OFFLINE_MODEL_HINT, MODEL_LOAD_HELP
from geosam.models.registry import clear_model_cache, load_model, register_family
from geosam.models.runtime import (
    decode,
    decode_boxes,
    decode_points,
    encode,
    preprocess,
    resized_size,
    to_model_frame,
    upsample_logits,
    upsample_masks,
)

__all__ = [
    "BUILTIN_OFFLINE_MODEL_HINT",
    "DEFAULT_MODEL",
    "FAMILY_DECODER_CPU_CHUNK",
    "FAST_DECODER_CPU_CHUNK",
    "MODEL_LOAD_HELP",
    "STOCK_DECODER_CPU_CHUNK",
    "ModelCapabilities",
    "SamBundle",
    "clear_model_cache",
    "compile_bundle",
    "cpu_has_amx",
    "decode",
    "decode_boxes",
    "decode_points",
    "encode",
    "load_model",
    "preprocess",
    "register_family",
    "require",
    "resized_size",
    "resolve_device",
    "resolve_dtype",
    "to_model_frame",
    "upsample_logits",
    "upsample_masks",
]
