"""The machine's measured matmul throughput and a stage's counted FLOPs: what fraction of peak a stage reaches.

* `matmul_flops_per_s`: the best of a few timed GEMMs (the ViT-B encoder's MLP and attention-projection
  shapes and a square one) in a dtype: float32, or bfloat16 (bf16 operands, float32 accumulation, as under
  autocast), through ``torch.mm`` or oneDNN (for float32 the two differ 2x on AMD CPUs, where MKL's float32 GEMM
  skips AVX-512: the CPU's float32 peak is the better of the two). On a shared machine call it next to the
  stage it is compared with: both then see the same load.
* `count_flops`: ``torch.utils.flop_counter.FlopCounterMode`` over a call, with the CPU's fused attention
  kernel (``aten._scaled_dot_product_flash_attention_for_cpu``, which the counter does not know) counted as
  the counter counts the other fused attention kernels (``2 * b * h * (s_q * s_k * d_q + s_q * s_k * d_v)``),
  and oneDNN's linear (``mkldnn._linear_pointwise``, `geosam.models.cpu_gemm.linear`) as ``2 * m * k * n``.
  Matmuls, convolutions and attention are counted; element-wise work (layer norms, GELU, softmax) is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

#: GEMM shapes (m, k, n): ViT-B at 1024 px has 4096 tokens of width 768 (MLP 3072; qkv 2304).
GEMM_SHAPES = ((4096, 768, 3072), (4096, 3072, 768), (4096, 768, 2304), (2048, 2048, 2048))


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def _onednn_linear_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    rows = 1
    for n in x_shape[:-1]:
        rows *= int(n)
    return 2 * rows * int(x_shape[-1]) * int(w_shape[0])


def flop_counter() -> Any:
    """A ``FlopCounterMode`` (use as a context; ``get_total_flops()`` after) that also counts the CPU's fused attention."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        custom[op] = _cpu_sdpa_flops
    lin = getattr(torch.ops.mkldnn, "_linear_pointwise", None)  # geosam.models.cpu_gemm.linear
    if lin is not None:
        custom[lin] = _onednn_linear_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def kernel_modules() -> list[Any]:
    """geosam's modules of C kernels (``geosam.models.cpu_*`` with a ``_library``), every one of them: a kernel module
    left out of `count_flops`' switch would hide its products from the count."""
    import importlib
    import pkgutil

    import geosam.models

    names = sorted(m.name for m in pkgutil.iter_modules(geosam.models.__path__) if m.name.startswith("cpu_"))
    modules = [importlib.import_module(f"geosam.models.{name}") for name in names]
    return [m for m in modules if callable(getattr(m, "_library", None))]


#: geosam's functions that choose between a path with C kernels and one without (module, name): during a count with
#: the kernels switched off they answer as with the kernels on, so that the count follows the timed run's path.
#: ``fast_encoder._mixed_attention``: on a CPU with AMX the bf16 encoder runs `_layer_mixed` (its attention in the AMX
#: kernel, the same products as `attend`'s torch fallback) only where the kernel is loaded, else torch's flash
#: attention on q and k widened by the relative positions (three times the attention's products): counted that way,
#: the AMX run was credited with ~1.5x the FLOPs it computes (Intel Xeon with AMX, ViT-B: 1396 vs 942 GFLOP).
PATH_CHOICES = (("geosam.models.fast_encoder", "_mixed_attention"),)


def count_flops(fn: Callable[[], Any], kernels: bool = False) -> int:
    """Matmul, convolution and attention FLOPs (2 per multiply-add) of one ``fn()`` call.

    geosam's C kernels with products (`kernel_modules`: the encoder's attention on AVX2 and AVX-512 CPUs, the
    decoder's upscaling, quadratic forms, per-head products, softmaxes and their products), which the counter cannot
    see, are switched off for the count: the paths they stand in for run the same products through torch's ops.
    The functions of `PATH_CHOICES` still choose the path as with the kernels on.
    ``kernels=True`` leaves them on: the FLOPs a counter sees around a run that uses them (to subtract them).
    The modules' cached answers that depend on their library (``bf16_available``, ``amx_available``, ...) are
    cleared after a count without them: one first asked during the count would otherwise stay False for the rest of
    the process (the bf16 encoder's AMX attention was left out of the timed runs that way).
    """
    import importlib

    modules = kernel_modules()
    libraries = [m._library for m in modules]
    choices = [(importlib.import_module(mod), name) for mod, name in PATH_CHOICES]
    originals = [getattr(mod, name) for mod, name in choices]

    def switch(on: bool) -> None:
        for m, lib in zip(modules, libraries, strict=True):
            m._library = lib if on else (lambda: None)

    def with_kernels(choose: Callable[..., Any]) -> Callable[..., Any]:
        def chosen(*args: Any, **kwargs: Any) -> Any:
            switch(True)
            try:
                return choose(*args, **kwargs)
            finally:
                switch(False)
        return chosen

    if not kernels:
        switch(False)
        for (mod, name), choose in zip(choices, originals, strict=True):
            setattr(mod, name, with_kernels(choose))
    try:
        with torch.inference_mode(), flop_counter() as counter:
            fn()
    finally:
        switch(True)
        for (mod, name), choose in zip(choices, originals, strict=True):
            setattr(mod, name, choose)
        if not kernels:
            for m in modules:
                _clear_cached_answers(m)
    return int(counter.get_total_flops())


def _clear_cached_answers(module: Any) -> None:
    """``cache_clear()`` on the module's own cached functions but ``_library`` (the compiled library itself)."""
    for name, value in vars(module).items():
        own = getattr(value, "__module__", None) == module.__name__
        if name != "_library" and own and callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def matmul_flops_per_s(dtype: torch.dtype, min_seconds: float = 0.4, path: str = "torch") -> dict[str, Any]:
    """The best measured GEMM throughput in ``dtype`` (FLOP/s) and each shape's, over ``min_seconds`` per shape.

    ``flops_per_s``: the fastest single product (the peak); ``sustained_flops_per_s``: the products of the whole timed
    loop over its time, which an encoder that keeps the units busy for seconds can reach at best. They differ where a
    CPU runs the first products of a burst faster than it can keep up (AMX on a shared host: 2.8x, `bench_threads`).

    path: ``"torch"`` (``torch.mm``: MKL for float32 in the PyPI wheels, oneDNN for bf16) or ``"onednn"``
    (`geosam.models.cpu_gemm.linear`, what geosam's float32 encoder and decoder use on the CPU).
    """
    from geosam.models.cpu_gemm import linear

    per_shape, sustained = {}, {}
    gen = torch.Generator().manual_seed(0)
    for m, k, n in GEMM_SHAPES:
        a = torch.randn((m, k), generator=gen).to(dtype)
        if path == "onednn":
            w = torch.randn((n, k), generator=gen).to(dtype)

            def run(a: torch.Tensor = a, w: torch.Tensor = w) -> None:
                linear(a, w)
        else:
            b = torch.randn((k, n), generator=gen).to(dtype)
            out = torch.empty((m, n), dtype=dtype)

            def run(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out) -> None:
                torch.mm(a, b, out=out)
        run()  # warm-up (oneDNN picks its kernel)
        reps, t0 = 0, time.perf_counter()
        best = float("inf")
        while time.perf_counter() - t0 < min_seconds or reps < 3:
            s = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - s)
            reps += 1
        per_shape[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
        sustained[f"{m}x{k}x{n}"] = 2.0 * m * k * n * reps / (time.perf_counter() - t0)
    return {"flops_per_s": max(per_shape.values()), "per_shape": per_shape,
            "sustained_flops_per_s": max(sustained.values()), "per_shape_sustained": sustained}


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 dot-product instructions (AMX or AVX-512 BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


__all__ = ["GEMM_SHAPES", "count_flops", "cpu_has_native_bf16", "flop_counter", "matmul_flops_per_s"]
