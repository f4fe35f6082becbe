"""benchmarks/roofline.py's FLOP count: the products of geosam's C kernels are counted as the torch paths they stand
in for compute them, whichever kernels are in use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
roofline = pytest.importorskip("roofline")


def _decode():
    from geosam import models as gm
    from tests.test_fast_decoder import sam_size_decoding

    bundle, emb, pts = sam_size_decoding(seed=3)
    return lambda: gm.decode_points(bundle, emb, pts)


def test_decoder_flops_are_the_same_with_and_without_the_kernels(monkeypatch) -> None:
    """SAM's decoder (every one of its C kernels runs here where they are in use): the count with the kernels
    available in the process equals the count in a process without any; a kernel module the count did not switch
    off would hide its products and make the first smaller."""
    from geosam.models import cpu_decoder

    decode = _decode()
    decode()  # the first call computes a few numbers once (48 FLOPs of SAM's decoder): not counted below
    with_kernels = roofline.count_flops(decode)
    seen = roofline.count_flops(decode, kernels=True)
    for module in roofline.kernel_modules():
        monkeypatch.setattr(module, "_library", lambda: None)
    without = roofline.count_flops(decode)
    assert with_kernels == without > 0
    if cpu_decoder.available():  # the kernels' products are invisible to the counter
        assert seen < without


def test_kernel_modules_are_every_c_kernel() -> None:
    """Every C source next to geosam's models has its module among them (the count switches them off by module)."""
    from geosam import models

    sources = sorted(p.stem for p in Path(models.__file__).parent.glob("cpu_*.c"))
    names = {m.__name__.rsplit(".", 1)[-1] for m in roofline.kernel_modules()}
    assert sources and all(s.removesuffix("512") in names for s in sources)


def test_a_count_leaves_no_cached_answer_of_its_own() -> None:
    """A module's cached answers that depend on its library (`cpu_attention.bf16_available`, `amx_available`),
    first asked during a count (every kernel switched off), are not kept: after the count they are the same as
    before it (the bf16 encoder's AMX attention was left out of the benchmark's timed runs that way)."""
    from geosam.models import cpu_attention, cpu_decoder

    cached = (cpu_attention.bf16_available, cpu_attention.amx_available, cpu_decoder.amx_available)
    want = [f() for f in cached]
    for f in cached:
        f.cache_clear()
    roofline.count_flops(lambda: [f() for f in cached])
    assert [f() for f in cached] == want


def test_a_count_follows_the_path_the_kernels_choose(monkeypatch) -> None:
    """The functions that choose a path by the kernels there are (`roofline.PATH_CHOICES`: the bf16 encoder's
    `_layer_mixed` on AMX only where the AMX attention kernel is loaded) answer during a count as with the kernels
    on: the count is of the path the timed run takes, not of the one a process without the kernels would take
    (torch's flash attention on widened q and k: 1.5x a ViT-B's FLOPs, credited to the AMX kernel's run)."""
    from geosam.models import cpu_attention, fast_encoder

    assert ("geosam.models.fast_encoder", "_mixed_attention") in roofline.PATH_CHOICES
    real = fast_encoder._mixed_attention
    seen: list[bool] = []

    def choose(*args):
        seen.append(cpu_attention._library() is not None)
        return real(*args)

    monkeypatch.setattr(fast_encoder, "_mixed_attention", choose)
    libraries = [m._library for m in roofline.kernel_modules()]
    roofline.count_flops(lambda: fast_encoder._mixed_attention(torch.device("cpu"), torch.bfloat16, 64))
    assert seen == [cpu_attention._library() is not None]
    assert fast_encoder._mixed_attention is choose  # put back after the count
    assert [m._library for m in roofline.kernel_modules()] == libraries


def test_matmul_rates_best_and_sustained(monkeypatch) -> None:
    """The peak is the fastest single product, the sustained rate the whole loop's products over its time (a clock
    that only moves in the products: the warm-up 0 s, then 1, 3 and 2 s: best 1 s, sustained 3 products in 6 s)."""
    steps = iter([0.0, 1.0, 3.0, 2.0])
    clock = {"t": 0.0}

    def mm(a, b, out=None):
        clock["t"] += next(steps)
        return out

    monkeypatch.setattr(roofline, "GEMM_SHAPES", ((8, 4, 2),))
    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(roofline.time, "perf_counter", lambda: clock["t"])
    got = roofline.matmul_flops_per_s(torch.float32, min_seconds=0.0)
    flops = 2.0 * 8 * 4 * 2
    assert got["flops_per_s"] == got["per_shape"]["8x4x2"] == flops / 1.0
    assert got["sustained_flops_per_s"] == got["per_shape_sustained"]["8x4x2"] == 3 * flops / 6.0
