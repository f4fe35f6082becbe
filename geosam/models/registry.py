"""Loading models by name through a registry of model families.

A family is a name, a test that says whether a model belongs to it and a
loader that builds its `SamBundle`. A new model
family is one `register_family` call. `load_model` asks the
families in two passes:

1. by name alone (``matches(name, None)``), e.g. the built-in "litemedsam";
2. by the checkpoint's ``config.json`` (``matches(name, config)``), e.g. "sam"
   for ``model_type == "sam"`` (hub id or local directory); built in: "sam"
   (SAM, SlimSAM), "sam_hq", "sam2" (SAM 2 / 2.1), "sam3" (text and exemplars),
   see `geosam.models.families`.

A checkpoint no family takes gives a `ModelLoadError` naming the model
and its ``model_type``. Bundles are cached by (model, device, dtype).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from geosam.config import DEFAULT_MODEL
from geosam.models.bundle import SamBundle
from geosam.models.cpu_memory import huge_pages_for_tensors
from geosam.models.device import resolve_device, resolve_dtype
from geosam.models.families import load_sam2, load_sam_hq
from geosam.models.hf_sam import is_local_path, load_error, load_hf_sam, read_config
from geosam.models.litemedsam import NAME as LITEMEDSAM
from geosam.models.litemedsam import load_litemedsam
from geosam.models.sam3 import load_sam3
from geosam.progress import tqdm_auto

tqdm_auto()  # before transformers imports tqdm.auto: no "IProgress not found" warning in notebooks

#: ``matches(name, config)``: config is None in the by-name pass, else the checkpoint's config.json as a dict.
Matcher = Callable[[str, "dict[str, Any] | None"], bool]
#: ``loader(name, device, dtype)`` -> the loaded bundle (device and dtype already resolved).
Loader = Callable[[str, torch.device, torch.dtype], SamBundle]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFamily:
    """One registry entry: ``name``, the ``matches`` test and the ``loader``."""

    name: str
    matches: Matcher
    loader: Loader


_FAMILIES: dict[str, ModelFamily] = {}
_CACHE: dict[tuple[str, str, str], SamBundle] = {}
_CACHE_LOCK = threading.Lock()


def _model_type_matcher(model_types: Sequence[str]) -> Matcher:
    types = frozenset(model_types)

    def matches(name: str, config: dict[str, Any] | None) -> bool:
        return config is not None and config.get("model_type") in types

    return matches


def register_family(name: str, *, matches: Matcher | str | Sequence[str], loader: Loader) -> None:
    """Add (or replace) model family ``name``.

    matches: ``matches(name, config) -> bool`` (config is None when only the
        model name is known, else the checkpoint's ``config.json`` as a dict), or
        one or more ``model_type`` strings of ``config.json``.
    loader: ``loader(name, device, dtype) -> SamBundle``; it declares the
        bundle's `ModelCapabilities`.

    Families registered later are asked first, so a new family can take models
    from a built-in one. Bundles already cached are not reloaded.
    """
    if isinstance(matches, str):
        matches = _model_type_matcher([matches])
    elif not callable(matches):
        matches = _model_type_matcher(list(matches))
    _FAMILIES.pop(name, None)
    _FAMILIES[name] = ModelFamily(name=name, matches=matches, loader=loader)


def unregister_family(name: str) -> None:
    """Remove model family ``name`` (nothing happens if there is none)."""
    _FAMILIES.pop(name, None)


def families() -> list[str]:
    """Names of the registered families, in the order they are asked."""
    return list(reversed(_FAMILIES))


def clear_model_cache() -> None:
    """Forget every bundle cached by `load_model`."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_model(
    model: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> SamBundle:
    """Load a model by name: a built-in name ("litemedsam"), a Hugging Face hub id or a local directory.

    Bundles are cached by (model, device, dtype), so repeated calls are cheap and return
    the same object. A hub id is read from the local Hugging Face cache only (no network,
    no retries) with `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`), when it is already
    cached, or when one short probe finds the hub unreachable (see `geosam.models.hub`).

    Args:
        model: `litemedsam`, a hub id (`Zigeng/SlimSAM-uniform-50`) or a checkpoint folder.
        device: `auto`, `cpu`, `cuda`, `mps` or a `torch.device`.
        dtype: `auto` (bf16 on CPUs with AMX, fp16 on CUDA - bf16 for SAM 3 where the GPU has it -, else
            float32), `float32`, `bfloat16`, `float16` or a `torch.dtype`.

    Returns:
        The model bundle: model, preprocessing and its declared `ModelCapabilities`.

    Raises:
        ModelLoadError: The model cannot be found, downloaded or read, or no family takes
            it (the message names it and what to do).
        ConfigError: A bad device or dtype.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = os.fspath(model)
    key_name = os.path.abspath(os.path.expanduser(name)) if is_local_path(name) else name
    dt = auto_dtype_for_family(lambda: _family_for(name).name, dtype, dev, dt)  # SAM 3 on CUDA: bf16 where it can
    key = (key_name, str(dev), str(dt))
    with _CACHE_LOCK:
        bundle = _CACHE.get(key)
        if bundle is None:
            family = _family_for(name)
            if family.name in HUGE_PAGE_FAMILIES:  # before its weights: torch reads it at its first tensor
                huge_pages_for_tensors()
            bundle = family.loader(name, dev, dt)
            _CACHE[key] = bundle
    return bundle


def auto_dtype_for_family(family: Callable[[], str], asked: str | torch.dtype, device: torch.device,
                          resolved: torch.dtype) -> torch.dtype:
    """``dtype="auto"`` for SAM 3 on CUDA: bfloat16 where the GPU has it, not float16 (SAM 3's reference code runs
    bf16 autocast on GPUs, and its float16 outputs are not validated: an overflow there would give empty results,
    not an error). Any other family, device or explicit dtype: ``resolved`` as it is. The choice is logged.
    ``family()`` gives the model's family name; it is asked only for ``auto`` resolved to float16 on CUDA (it may read
    the checkpoint's config)."""
    if not (isinstance(asked, str) and asked.strip().lower() == "auto" and device.type == "cuda"
            and resolved == torch.float16):
        return resolved
    if family() != "sam3" or not torch.cuda.is_bf16_supported():
        return resolved
    log.info('dtype="auto" for SAM 3 on CUDA: bfloat16 (its reference code runs bf16; float16 is not validated)')
    return torch.bfloat16


def _family_for(name: str) -> ModelFamily:
    order = list(reversed(_FAMILIES.values()))
    for family in order:
        if family.matches(name, None):
            return family
    config = read_config(name)
    for family in order:
        if family.matches(name, config):
            return family
    model_type = config.get("model_type")
    known = sorted({f.name for f in order})
    raise load_error(
        name,
        f"its config.json describes a {model_type!r} model, not a SAM-family model "
        f"(model families geosam knows: {', '.join(known)})",
    )


#: The families whose loading asks torch's CPU allocator for transparent huge pages
#: (`cpu_memory.huge_pages_for_tensors`), measured on an Intel Xeon with AMX (THP ``madvise``, bf16, one thread, two
#: processes at once): SAM's decoder, whose kernels read a chunk of prompts' records row by row, 2-6 % faster, its
#: encoder unchanged; SAM 2's decoder 1-10 % faster (4 pairs), its encoder unchanged. Not SAM 3 (backbone and detector
#: 7-16 % slower: its 49 MB blocks faulted in as huge pages each chip, system time 0.24 -> 0.88 s a chip) nor SAM-HQ
#: (decode -3 %, encode +3 %: no clear gain). torch decides once a process, at its first tensor of any size: the
#: first model loaded decides for the process.
HUGE_PAGE_FAMILIES = ("sam", "sam2", LITEMEDSAM)


def _load_litemedsam(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    return load_litemedsam(device, dtype, name=LITEMEDSAM)


register_family("sam", matches="sam", loader=load_hf_sam)
register_family("sam_hq", matches="sam_hq", loader=load_sam_hq)
register_family("sam2", matches="sam2", loader=load_sam2)
register_family("sam3", matches="sam3", loader=load_sam3)
register_family(
    LITEMEDSAM,
    matches=lambda name, config: name.strip().lower() == LITEMEDSAM,
    loader=_load_litemedsam,
)


__all__ = [
    "HUGE_PAGE_FAMILIES",
    "ModelFamily",
    "clear_model_cache",
    "families",
    "load_model",
    "register_family",
    "unregister_family",
]
