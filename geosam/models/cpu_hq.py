"""SAM-HQ's HQ branch norm and GELU in one C pass on AVX-512 CPUs: `norm_gelu`.

Per prompt SAM-HQ's decoder runs ``mask_conv1`` (3 x 3 to 64 channels on the 256 x 256 upscaled map), then
``mask_norm`` (a layer norm over the channels) and the exact GELU before ``mask_conv2``. After oneDNN's convolution
(bf16 under the bf16 dtype, `geosam.models.hq_decoder`) torch made three passes over the (256 x 256, 64) map - the
widening to float32, the norm, the GELU - ~7.5 ms a prompt together on an Intel Xeon with AMX (2 threads), about a
third of a prompt's decoding with every prompt upscaled. ``cpu_hq.c`` loads each pixel's channels into registers once
and writes GELU(norm(x)) as float32.

The same function as torch's ops to float rounding (the variance from centred values rather than Welford's steps, the
GELU's erf Eigen's rational polynomial): used only after it is as close to float64's results as they are in this process (`_agrees_with_torch`;
built and cached by `geosam.models.cpu_build`, where torch runs its AVX-512 kernels; not with
``GEOSAM_CPU_KERNELS=0``); elsewhere, and for shapes it does not take, the caller runs torch's ops.

``fast=True`` takes ``cpu_gelu.h``'s FAST_GELU (`geosam.models.cpu_decoder_reference.fast_gelu_reference`: within
6e-5 of the exact GELU, no division) where the inputs come from the bf16 convolution: rounded to bf16 (a relative
spacing of 2^-8) already, they carry far more error than the polynomial adds.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_build import alternating_threads, load
from geosam.models.cpu_decoder_reference import fast_gelu_reference

__all__ = ["available", "norm_gelu", "norm_gelu_reference"]

_SOURCE = Path(__file__).with_name("cpu_hq.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
#: the load check: the kernel within twice torch's own distance from float64's results, plus this share of their scale
TOLERANCE = 2e-6


def norm_gelu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        fast: bool = False) -> torch.Tensor:  # fmt: skip
    """torch's ``gelu(layer_norm(x))`` over the last axis in float32 (float64 for float64 x); ``fast``:
    `fast_gelu_reference` for the GELU."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.layer_norm(x.to(dt), (x.shape[-1],), weight.to(dt), bias.to(dt), eps)
    return fast_gelu_reference(y) if fast else F.gelu(y)


def _call(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
          out: torch.Tensor, fast: bool = False) -> int:  # fmt: skip
    d = x.shape[-1]
    rows = x.numel() // d
    return int(lib.geosam_norm_gelu(_P(x.data_ptr()), _INT(int(x.dtype == torch.bfloat16)), _I64(d), _I64(rows),
                                    _I64(d), _P(weight.data_ptr()), _P(bias.data_ptr()), ctypes.c_float(eps),
                                    _P(out.data_ptr()), _INT(torch.get_num_threads()), _INT(int(fast))))  # fmt: skip


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    """The kernel as close to float64's results as torch's ops (`norm_gelu_reference`) are, within `TOLERANCE`:
    rows of 16 to 256 channels, bf16 and float32, offset and scaled rows (where a norm cancels: every float32 way of
    taking the mean errs there, each its own way), large and small values, one and two threads; with the exact GELU
    and with ``fast`` (against the same polynomial in float64)."""
    lib.geosam_norm_gelu.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(5)
    with alternating_threads() as use:
        for i, (rows, d) in enumerate(((300, 64), (17, 16), (1000, 256), (4100, 32))):
            use(i)
            x = torch.randn((rows, d), generator=gen) * torch.exp2(torch.randint(-8, 8, (rows, 1), generator=gen))
            x = x + torch.randn((rows, 1), generator=gen) * 4
            w, b = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
            for dtype in (torch.float32, torch.bfloat16):
                xs = x.to(dtype)
                for fast in (False, True):
                    got = torch.empty((rows, d))
                    if _call(lib, xs, w, b, 1e-6, got, fast) != 0:
                        return False
                    torch_ = norm_gelu_reference(xs, w, b, 1e-6, fast)
                    exact = norm_gelu_reference(xs.double(), w, b, 1e-6, fast)
                    scale = float(exact.abs().max())
                    if float((got - exact).abs().max()) > 2 * float((torch_ - exact).abs().max()) + TOLERANCE * scale:
                        return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return load(_SOURCE, _agrees_with_torch, "HQ norm and GELU (AVX-512)", ("AVX512",))


def available() -> bool:
    """Whether `norm_gelu` runs the kernel here."""
    return _library() is not None


def norm_gelu(x: torch.Tensor, norm: Any, fast: bool = False) -> torch.Tensor | None:
    """GELU(``norm``(x)) over the last axis of x (..., d), float32 or bf16, contiguous, on the CPU, with ``norm`` a
    layer norm over those d channels (its weight and bias float32; d a multiple of 16, at most 256): a new float32
    tensor of x's shape, or None where the kernel does not run here or does not take these. ``fast``: the GELU as
    `geosam.models.cpu_decoder_reference.fast_gelu_reference` (for bf16 inputs; see the module docstring)."""
    lib = _library()
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if lib is None or weight is None or bias is None or x.device.type != "cpu" or not x.is_contiguous():
        return None
    d = x.shape[-1]
    if (x.dtype not in (torch.float32, torch.bfloat16) or d % 16 or not 16 <= d <= 256
            or tuple(norm.normalized_shape) != (d,) or weight.dtype != torch.float32 or bias.dtype != torch.float32
            or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):  # fmt: skip
        return None
    out = torch.empty(x.shape, dtype=torch.float32)
    w, b = weight.detach().contiguous(), bias.detach().contiguous()
    return out if _call(lib, x, w, b, float(norm.eps), out, fast) == 0 else None
