"""Fast-path switches (geosam's own encoder / decoder kernels) and ``torch.compile`` of a bundle.

`use_fast_encoder` / `use_fast_decoder` read the bundle's
``fast_encoder`` / ``fast_decoder`` settings (see `SamBundle`)
and whether the model has the layout those kernels need;
`geosam.models.runtime.encode` and ``decode`` follow them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from geosam.models.bundle import SamBundle

#: Prompts per `geosam.models.fast_decoder.fast_decode` call on the CPU: each call's (N, 56, h*w) attention
#: weights then stay in cache across the decoder's steps (measured faster for 4 than for 64 prompts per call
#: while the image sides were written; since none is, 8 was faster than 4: 256 prompts of SAM's decoder on an
#: AMD EPYC Zen 3, 7.25 vs 7.77 s with 1 thread, 4.55 vs 4.77 s with 2). With the decoder's C kernels 16 is faster
#: than 8 (the token side's products twice as tall): AMD EPYC Zen 4, 256 prompts, 3.66-3.74 vs 3.89-3.91 s with
#: 1 thread, 1.95-2.02 vs 2.29-2.33 s with 2; 32 as 16, 64 slower (2.63 s with 2); session 23, decode only,
#: alternating runs. With two threads 32 is faster than 16 (Intel Xeon with AMX, session 45, decode only, medians of
#: alternating runs in one process: 1024 prompts 5.62 -> 5.30 s in bf16, 6.45 -> 6.20 s in float32; 256 prompts
#: 1.49 -> 1.42 s in bf16; with one thread ~1 % faster; peak RSS +24 MiB); 64 slower again (1.61 s).
#: ``points_per_batch`` still sets how many prompts are decoded and filtered together.
FAST_DECODER_CPU_CHUNK = 32

#: Prompts per transformer call of geosam's SAM 2 and SAM-HQ decoders on the CPU (`geosam.models.sam2_decoder`,
#: `geosam.models.hq_decoder`): 16, as SAM's was until session 45; 32 is slower there (full-size random weights,
#: 256 prompts, float32, two threads, Intel Xeon with AMX, medians of 3 alternating: SAM 2 1.17 vs 1.44 s, SAM-HQ
#: 1.18 vs 1.20 s).
FAMILY_DECODER_CPU_CHUNK = 16

#: Prompts per call of a model's own (stock) mask decoder on the CPU (SAM or SAM 2 with the fast decoder off; SAM-HQ
#: until session 20, now always `geosam.models.hq_decoder`). It repeats the image side once per prompt (SAM 2: 4 MiB
#: per prompt and step, 8 MiB upscaled), so a call on 64 prompts allocates blocks of hundreds of MiB: glibc serves
#: each from fresh ``mmap`` pages and unmaps it on free, and the kernel faults in and zeroes every page again, step
#: after step. With 4 prompts per call the blocks stay below glibc's mmap threshold and are reused
#: (`geosam.models.cpu_memory`). Full-size random-weight models,
#: segment-everything 16 x 16 on a 1024 px chip, AMD EPYC Zen 3 VM, 1 thread (``benchmarks/bench_stock_decoder.py``,
#: medians of 3): SAM 2 40.7 vs 63.6 s with 64 per call (0.9 vs 26.7 s in the kernel), peak RSS 1273 vs 3578 MiB;
#: SAM-HQ 89.2 vs 118.6 s, 2885 vs 5222 MiB; the same logits. ``points_per_batch`` still sets how many prompts are
#: decoded and filtered together.
STOCK_DECODER_CPU_CHUNK = 4


def _fast_path(choice: bool | None, default_on: bool, supported: Callable[[], bool]) -> bool:
    """A ``SamBundle.fast_*`` switch: False never, None where ``default_on``, True always; all only if ``supported()``."""
    if choice is not None and not choice:
        return False
    if choice is None and not default_on:
        return False
    return bool(supported())


def use_fast_encoder(bundle: SamBundle) -> bool:
    """Whether ``encode`` takes `geosam.models.fast_encoder.fast_image_embeddings` (``SamBundle.fast_encoder``).

    Default (None): on the CPU, in every dtype (float32 through its explicit attention and oneDNN products); on
    CUDA in float16 / bfloat16 only (an H200: 13.2 vs 15.3 ms per 1024 px image in float16, but 100 vs 41 ms in
    float32, where the stock encoder's fused attention wins; ``benchmarks/results/cuda_h200/``).
    """
    from geosam.models.fast_encoder import fast_encoder_supported

    kind = bundle.device.type
    default_on = kind == "cpu" or (kind == "cuda" and bundle.dtype != torch.float32)
    return _fast_path(getattr(bundle, "fast_encoder", None), default_on, lambda: fast_encoder_supported(bundle.model))


def _fused_cpu_encoder(bundle: SamBundle, supported: Callable[[Any, torch.dtype], bool]) -> bool:
    """The ``SamBundle.fast_encoder`` switch for an encoder geosam runs through oneDNN's fused operators: on the CPU
    only, by default there, and where ``supported(model, dtype)`` says the model and dtype fit."""
    cpu = bundle.device.type == "cpu"
    return _fast_path(getattr(bundle, "fast_encoder", None), cpu, lambda: cpu and supported(bundle.model, bundle.dtype))


def use_fast_tinyvit(bundle: SamBundle) -> bool:
    """Whether ``encode`` takes `geosam.models.fast_tinyvit.fast_tinyvit_embeddings` (LiteMedSAM's TinyViT through
    oneDNN's fused operators; the same ``SamBundle.fast_encoder`` switch). Default (None): on the CPU, float32 and
    bf16 (Intel Xeon with AMX, one thread, one 256 px encode: float32 0.98 -> 0.67 s, bf16 0.47 -> 0.24 s)."""
    from geosam.models.fast_tinyvit import fast_tinyvit_supported

    return _fused_cpu_encoder(bundle, fast_tinyvit_supported)


def use_fast_hiera(bundle: SamBundle) -> bool:
    """Whether ``encode`` takes `geosam.models.fast_hiera.fast_sam2_embeddings` (SAM 2's Hiera and feature pyramid
    through oneDNN's fused operators; the same ``SamBundle.fast_encoder`` switch). Default (None): on the CPU, float32
    and bf16 (full-size random SAM 2 of transformers' default config, one 1024 px image, 2 threads, Intel Xeon with
    AMX: float32 1.64 -> 1.26 s, bf16 0.77 -> 0.43 s; `benchmarks/bench_sam2_encoder.py`)."""
    from geosam.models.fast_hiera import fast_hiera_supported

    return _fused_cpu_encoder(bundle, fast_hiera_supported)


def use_fast_sam3_vit(bundle: SamBundle) -> bool:
    """Whether SAM 3's vision features come from `geosam.models.fast_sam3_vit.fast_vision_features` (its ViT through
    oneDNN's fused operators; the same ``SamBundle.fast_encoder`` switch). Default (None): on the CPU, float32 and bf16
    (full-size random SAM 3, one 1008 px chip, 2 threads, Intel Xeon with AMX: bf16 5.9 -> 4.9 s, float32 22.0 ->
    20.8 s)."""
    from geosam.models.fast_sam3_vit import fast_sam3_vit_supported

    return _fused_cpu_encoder(bundle, fast_sam3_vit_supported)


def use_fast_decoder(bundle: SamBundle) -> bool:
    """Whether ``decode`` takes `geosam.models.fast_decoder.fast_decode` (``SamBundle.fast_decoder``).

    Default (None): on the CPU and on CUDA, whatever the encoder's dtype. On the CPU the exact float32 fast
    decoder beats even bf16 autocast of the stock decoder. On CUDA it decodes in float32 as fast as the stock
    decoder under float16 autocast (an H200, 32 x 32 points on two chips: 0.40 s either way, 0.67 s for the stock
    decoder in float32), and its masks are float32's: agreement with the float32 pipeline 0.993-0.997 with a
    float16 encoder, where the stock decoder under float16 autocast gave 0.56-0.60 on the benchmark's model
    (``benchmarks/results/cuda_h200/``).
    """
    from geosam.models.fast_decoder import fast_decoder_supported

    default_on = bundle.device.type in ("cpu", "cuda")
    return _fast_path(getattr(bundle, "fast_decoder", None), default_on, lambda: fast_decoder_supported(bundle.model))


def use_sam2_decoder(bundle: SamBundle) -> bool:
    """Whether ``decode`` runs SAM 2 through `geosam.models.sam2_decoder` (``SamBundle.fast_decoder``, as
    `use_fast_decoder`: by default on the CPU and on CUDA; False: the model's own decoder forward)."""
    return _fast_path(getattr(bundle, "fast_decoder", None), bundle.device.type in ("cpu", "cuda"), lambda: True)


def compile_bundle(bundle: SamBundle) -> SamBundle:
    """``torch.compile`` the bundle's encoder and decoder paths, once (in place on its model).

    What is compiled is what ``encode`` and ``decode`` run: the fast encoder
    (`geosam.models.fast_encoder.fast_image_embeddings`) where the bundle uses
    it, else the stock vision encoder; the stock mask decoder only where neither the fast
    decoder nor geosam's SAM 2 / SAM-HQ decoder is used (compiling `geosam.models.fast_decoder.fast_decode`
    was measured no faster on a CPU). The first calls are slow (tracing); for
    measured times see ``benchmarks/results/``. Returns the bundle.
    """
    model = bundle.model
    if getattr(model, "_geosam_compiled", False):
        return bundle
    if use_fast_encoder(bundle):
        from geosam.models.fast_encoder import fast_image_embeddings

        def run(pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return fast_image_embeddings(model, pixel_values, dtype)

        model._geosam_fast_encoder = torch.compile(run)
    else:
        model.vision_encoder = torch.compile(model.vision_encoder)
    family = bundle.capabilities.family
    own_decoder = family == "sam_hq" or (family == "sam2" and use_sam2_decoder(bundle))  # geosam's, not compiled
    if not use_fast_decoder(bundle) and not own_decoder:
        model.mask_decoder = torch.compile(model.mask_decoder)
    model._geosam_compiled = True
    return bundle


__all__ = [
    "FAMILY_DECODER_CPU_CHUNK",
    "FAST_DECODER_CPU_CHUNK",
    "STOCK_DECODER_CPU_CHUNK",
    "compile_bundle",
    "use_fast_decoder",
    "use_fast_encoder",
    "use_sam2_decoder",
]
