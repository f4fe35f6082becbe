"""Out-of-memory on the accelerator: recognise it, free the cache, say what to change.

`geosam.segment.SamMaskGenerator` halves its point batch (decoder) or its
image batch (encoder) and retries when the device runs out of memory; at a batch
of one it raises `DeviceMemoryError`.
"""

from __future__ import annotations

import torch

from geosam.errors import DeviceMemoryError


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's ``OutOfMemoryError`` and other backends' ``RuntimeError: ... out of memory``."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory_error(device: torch.device, what: str, exc: BaseException) -> DeviceMemoryError:
    """The error raised when even a batch of one does not fit."""
    return DeviceMemoryError(
        f"out of memory on {device} {what}, even with one point prompt and one image per batch ({exc}); "
        "use a smaller model, a lower-precision --dtype (bfloat16 or float16), a smaller --chip-size, "
        "close other programs using the device, or run on the CPU with --device cpu "
        "(--points-per-batch and --chips-per-batch set the starting batch sizes)"
    )


__all__ = ["free_device_memory", "is_out_of_memory", "out_of_memory_error"]
