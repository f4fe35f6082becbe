"""geosam.models.cpu_kernels: torch's softmax and attention bit for bit where torch runs its AVX2 kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

from geosam.models import cpu_build, cpu_kernels, encoder_attention, fast_encoder
from geosam.models.device import cpu_flags


def _avx2_cpu() -> bool:
    return {"avx2", "fma"} <= set(cpu_flags()) and sys.platform.startswith("linux")


def _reference_rel(scores: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    rows, hh, ww = scores.shape[0], rel_h.shape[-1], rel_w.shape[-1]
    return torch.softmax(scores.clone().view(rows, hh, ww).add_(rel_h[:, :, None]).add_(rel_w[:, None, :]).view(rows, -1), -1)


SHAPES = [(3, 64, 64), (40, 14, 14), (9, 7, 8), (5, 1, 9), (6, 3, 5), (4, 2, 17)]  # full vectors, tails, a 15-wide row


def _check_here() -> None:
    """The kernel against torch in this process: every shape, special values, both entry points, 1 and 2 threads."""
    gen = torch.Generator().manual_seed(3)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _check_shapes(gen)
    finally:
        torch.set_num_threads(before)


def _check_shapes(gen: torch.Generator) -> None:
    for rows, hh, ww in SHAPES:
        x = torch.randn((rows, hh * ww), generator=gen) * 12
        x[0, 0] = -1e4  # underflows to 0
        x[-1, :] = -1e30  # a row far below 0: the maximum subtracted first
        assert torch.equal(cpu_kernels.softmax(x), torch.softmax(x, -1))
        rel_h, rel_w = torch.randn((rows, hh), generator=gen), torch.randn((rows, ww), generator=gen)
        want = _reference_rel(x, rel_h, rel_w)
        got = cpu_kernels.rel_softmax(x.clone(), rel_h, rel_w)
        assert torch.equal(got, want), (rows, hh, ww)
        # rel terms as views with a row stride (a block of a larger table)
        big_h = torch.randn((rows, hh + 3), generator=gen)
        assert torch.equal(cpu_kernels.rel_softmax(x.clone(), big_h[:, :hh], rel_w), _reference_rel(x, big_h[:, :hh], rel_w))


@pytest.mark.skipif(not _avx2_cpu(), reason="the kernel is AVX2 code: this CPU cannot run it")
def test_kernel_is_in_use_where_torch_runs_avx2() -> None:
    """With a C compiler on an AVX2 CPU the kernel must build and pass its check against torch (else it is lost
    silently: the functions fall back to torch's ops)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        pytest.skip("torch runs its AVX-512 kernels here: see the subprocess test below")  # covered there
    assert shutil.which("cc") or shutil.which("gcc"), "no C compiler on an AVX2 machine that runs the tests"
    assert cpu_kernels.available()
    _check_here()


def _global_attention_layer(threads: int):
    """A SAM ViT global attention at 1024 px (64 x 64 tokens, heads of 64: ViT-B's shape, 2 heads instead of 12)
    with random relative-position tables, and a qkv projection output for it."""
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionAttention

    gen = torch.Generator().manual_seed(20 + threads)
    attn = SamVisionAttention(SamVisionConfig(hidden_size=128, num_attention_heads=2, use_rel_pos=True), window_size=0)
    with torch.no_grad():
        attn.rel_pos_h.copy_(torch.randn(attn.rel_pos_h.shape, generator=gen) * 0.5)
        attn.rel_pos_w.copy_(torch.randn(attn.rel_pos_w.shape, generator=gen) * 0.5)
    return attn, torch.randn((1, 64, 64, 3 * 128), generator=gen) * 2


@pytest.mark.parametrize("threads", [1, 2])
def test_global_attention_is_the_explicit_paths_at_the_vit_b_shape(threads: int, monkeypatch) -> None:
    """Where the kernels are in use, SAM ViT-B's global layer shape (4096 keys, heads of 64, 512 queries per block
    in the explicit path) is ready (MKL's summation order found here) and the fused heads give the explicit path's
    bits, relative terms included: q, k and v strided rows of the qkv tensor, each head written into its columns."""
    if not cpu_kernels.available():
        pytest.skip("the kernel is not in use on this machine (see test_kernel_is_in_use_where_torch_runs_avx2)")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert encoder_attention.QUERY_CHUNK == 512 and cpu_kernels.attention_ready(64, 64, 64, 512)
        attn, qkv = _global_attention_layer(threads)
        with torch.inference_mode():
            fused = encoder_attention.attend(attn, qkv)
            monkeypatch.setattr(cpu_kernels, "_library", lambda: None)
            assert not cpu_kernels.attention_ready(64, 64, 64, 512)
            explicit = encoder_attention.attend(attn, qkv)
        assert torch.equal(fused, explicit)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_window_attention_is_the_explicit_paths_at_the_vit_b_shape(threads: int, monkeypatch) -> None:
    """Windows of 14 x 14 tokens with heads of 64 (ViT-B's; 2 heads), on a 20 x 24 map: full windows and windows
    that reach past the map (their padded tokens attended to as the qkv bias, their outputs not written). Where the
    kernels are in use the window kernel runs (its block found here: MKL splits 196 keys as 98 + 98 on a Zen 3) and
    gives the explicit path's bits."""
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionLayer

    if not cpu_kernels.available():
        pytest.skip("the kernel is not in use on this machine (see test_kernel_is_in_use_where_torch_runs_avx2)")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(30 + threads)
        config = SamVisionConfig(hidden_size=128, num_attention_heads=2, use_rel_pos=True, window_size=14)
        config._attn_implementation = "eager"
        layer = SamVisionLayer(config, window_size=14)
        with torch.no_grad():
            for p in (layer.attn.rel_pos_h, layer.attn.rel_pos_w, layer.attn.qkv.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        h = torch.randn((1, 20, 24, 128), generator=gen)
        with torch.inference_mode():
            assert encoder_attention.window_kc(layer.attn, 14, encoder_attention.rel_tables(layer.attn, 14, 14)) is not None
            fused = fast_encoder._windowed_attention_f32(layer, h)
            monkeypatch.setattr(cpu_kernels, "_library", lambda: None)
            explicit = fast_encoder._windowed_attention_f32(layer, h)
        assert torch.equal(fused, explicit)
    finally:
        torch.set_num_threads(before)


def test_global_attention_refuses_what_it_cannot_reproduce() -> None:
    assert not cpu_kernels.attention_ready(63, 65, 64, 512)  # keys not in panels of 16
    assert not cpu_kernels.attention_ready(64, 64, 72, 512)  # a head size not in tiles of 16
    x = torch.zeros((100, 64))
    tables = cpu_kernels.transposed_tables(torch.zeros((10, 10, 64)), torch.zeros((10, 10, 64)))
    with pytest.raises(RuntimeError, match="attention_ready"):
        cpu_kernels.global_attention(x, 0.125, x, x, tables, x.clone(), 512)


@pytest.mark.skipif(not _avx2_cpu(), reason="the kernel is AVX2 code: this CPU cannot run it")
def test_kernel_equals_torch_with_torch_on_avx2(tmp_path) -> None:
    """On any AVX2 CPU (AVX-512 ones too: ATEN_CPU_CAPABILITY=avx2 makes torch take its AVX2 kernels), in a fresh
    process with an empty kernel cache: built, loaded, bit for bit torch's results."""
    code = textwrap.dedent(
        """
        import torch
        from geosam.models import cpu_kernels
        from tests.test_cpu_kernels import _check_here
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
        assert cpu_kernels.available()
        _check_here()
        print("ok")
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "GEOSAM_KERNEL_CACHE": str(tmp_path / "cache")}
    env.pop("GEOSAM_CPU_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("cpu_kernels-*.so"))) == 1  # renamed into place, no temporary left
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.skipif(not _avx2_cpu(), reason="the kernel is AVX2 code: this CPU cannot run it")
def test_a_cache_folder_others_may_write_is_not_used(tmp_path, monkeypatch) -> None:
    """A library loaded from the cache runs as the user: a folder (or file) someone else may write is passed over
    for a private one under the temporary directory, created 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GEOSAM_KERNEL_CACHE", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cc = cpu_build.compiler()
    assert cc is not None
    built = cpu_build.build(cpu_kernels._SOURCE, cc)
    private = tmp_path / "tmp" / f"geosam-kernels-{os.getuid()}"
    assert built is not None and built.parent == private and not list(shared.iterdir())
    assert private.stat().st_mode & 0o777 == 0o700
    assert cpu_build.build(cpu_kernels._SOURCE, cc) == built  # found again, not rebuilt
    built.chmod(0o666)  # a library others may change: never returned (another build, without OpenMP, is)
    assert cpu_build.build(cpu_kernels._SOURCE, cc) != built


def test_switched_off_the_functions_are_torch(monkeypatch) -> None:
    monkeypatch.setenv("GEOSAM_CPU_KERNELS", "0")
    cpu_kernels._library.cache_clear()
    try:
        assert not cpu_kernels.available()
        _check_here()
    finally:
        cpu_kernels._library.cache_clear()


def test_other_inputs_take_torch_ops() -> None:
    """float64, non-contiguous, rows shorter than a vector, gradients: torch's own ops, the same results."""
    gen = torch.Generator().manual_seed(4)
    x64 = torch.randn((4, 64), generator=gen, dtype=torch.float64)
    assert torch.equal(cpu_kernels.softmax(x64), torch.softmax(x64, -1))
    xt = torch.randn((64, 4), generator=gen).t()
    assert torch.equal(cpu_kernels.softmax(xt), torch.softmax(xt, -1))
    short = torch.randn((4, 6), generator=gen)
    rh, rw = torch.randn((4, 2), generator=gen), torch.randn((4, 3), generator=gen)
    assert torch.equal(cpu_kernels.rel_softmax(short.clone(), rh, rw), _reference_rel(short, rh, rw))
    g = torch.randn((3, 64), generator=gen, requires_grad=True)
    out = cpu_kernels.softmax(g)
    out[:, 0].sum().backward()
    assert g.grad is not None and torch.equal(out.detach(), torch.softmax(g.detach(), -1))


def test_encoder_attention_is_bit_identical_with_and_without_the_kernel(monkeypatch) -> None:
    """A global layer (the fused head; without the kernel one head and a block of queries at a time) and a windowed
    one: the same bits either way."""
    from tests.test_fast_encoder import _vit

    model = _vit(seed=9)
    gen = torch.Generator().manual_seed(10)
    h = torch.randn((1, 16, 16, 64), generator=gen)
    monkeypatch.setattr(encoder_attention, "PER_HEAD_MIN_TOKENS", 100)
    monkeypatch.setattr(encoder_attention, "QUERY_CHUNK", 48)

    def attend() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            layers = model.vision_encoder.layers
            glob = fast_encoder._attention_f32(layers[1].attn, h)
            win = fast_encoder._windowed_attention_f32(layers[0], h)
        return glob, win

    assert cpu_kernels.attention_ready(16, 16, 16, 48) or not cpu_kernels.available()  # the fused head is what runs
    on = attend()
    monkeypatch.setattr(cpu_kernels, "_library", lambda: None)
    off = attend()
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])


def test_load_checks_alternate_thread_counts_and_restore_the_callers() -> None:
    """`alternating_threads`: cases alternate between one and two threads; the caller's count comes back however the
    check ends (done, returned early, raised)."""
    import torch

    from geosam.models.cpu_build import alternating_threads

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = []

        def check(stop_at: int | None, fail: bool = False) -> bool:
            with alternating_threads() as use:
                for i in range(4):
                    use(i)
                    seen.append(torch.get_num_threads())
                    if fail and i == 1:
                        raise RuntimeError("a kernel failed")
                    if stop_at == i:
                        return False
            return True

        assert check(None) and seen == [1, 2, 1, 2] and torch.get_num_threads() == 3
        assert not check(2) and torch.get_num_threads() == 3
        with pytest.raises(RuntimeError):
            check(None, fail=True)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
