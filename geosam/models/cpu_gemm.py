"""Float32 matrix products through oneDNN on the CPU.

torch's float32 ``linear`` / ``addmm`` / ``bmm`` call the BLAS it was built
with (MKL in the PyPI wheels). MKL takes its AVX-512 kernels on Intel CPUs
only: on an AMD EPYC (Zen 5, AVX-512) its float32 GEMM runs at about half of
what the same CPU does through oneDNN (measured on the encoder's MLP shape,
one thread: 89 vs 175 GFLOP/s; ``benchmarks/results/latest.json`` has this
machine's figures). oneDNN, which torch also ships and uses for bf16,
vectorises for whatever the CPU has. `linear` sends a float32 CPU
``x @ weight.T + bias`` (optionally with an exact GELU fused in) there, and
falls back to ``torch.nn.functional.linear`` elsewhere (other devices and
dtypes, torch builds without oneDNN). Results equal ``F.linear``'s to float
rounding (~1e-6 relative): the summation order differs.

Set ``GEOSAM_ONEDNN_LINEAR=0`` to keep torch's own path.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["linear", "onednn_linear_available"]


@functools.lru_cache(maxsize=1)
def _op_works() -> bool:
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones((2, 3))
        out = op(x, torch.ones((4, 3)), torch.zeros(4), "none", [], "")
        return bool(out.shape == (2, 4) and float(out[0, 0]) == 3.0)
    except (RuntimeError, TypeError):  # an op without a CPU float32 kernel in this build
        return False


def onednn_linear_available() -> bool:
    """Whether `linear` runs float32 CPU products through oneDNN here (``GEOSAM_ONEDNN_LINEAR=0``: never)."""
    if os.environ.get("GEOSAM_ONEDNN_LINEAR", "").strip().lower() in ("0", "false", "no"):
        return False
    return _op_works()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """``x @ weight.T + bias`` (then exact GELU if ``gelu``), x (..., K), weight (N, K): (..., N).

    Float32 CPU tensors go through oneDNN (`onednn_linear_available`); the
    rest through ``F.linear`` (and ``F.gelu``).
    """
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and onednn_linear_available()
    ):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        return out.view(*lead, weight.shape[0])
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out
