"""Which torch device and compute dtype a model runs on.

``"auto"`` choices depend on the machine: CUDA, then MPS, then the CPU; float16
on CUDA, bfloat16 on a CPU with AMX bf16 units, float32 elsewhere.
"""

from __future__ import annotations

import functools
import os

import torch

from geosam.errors import ConfigError

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``.

    ``"auto"`` picks CUDA if available, else MPS if available, else the CPU.
    Asking for an accelerator that is not there raises `ConfigError`.
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
    (`cpu_has_amx`) and float32 elsewhere. Weights stay float32; a lower
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


__all__ = ["cpu_has_amx", "resolve_device", "resolve_dtype"]
