"""geosam.models.cpu_memory: glibc's thresholds raised once per CPU process, from encode and decode (and SAM 3's vision
features and detector), and switchable off."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import pytest

from geosam import models as gm
from geosam.models import cpu_memory, runtime


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


def test_keep_freed_memory_is_done_once_and_can_be_switched_off(monkeypatch) -> None:
    cpu_memory.keep_freed_memory.cache_clear()
    try:
        monkeypatch.setenv("GEOSAM_MALLOC_TUNE", "0")
        assert cpu_memory.keep_freed_memory() is False
        cpu_memory.keep_freed_memory.cache_clear()
        monkeypatch.delenv("GEOSAM_MALLOC_TUNE")
        assert cpu_memory.keep_freed_memory() is _glibc()
        assert cpu_memory.keep_freed_memory.cache_info().currsize == 1
    finally:
        cpu_memory.keep_freed_memory.cache_clear()


def test_encode_and_decode_on_the_cpu_ask_for_it(tiny_sam_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("called") or True)
    bundle = gm.load_model(tiny_sam_dir, device="cpu", dtype="float32")
    pixels, _, _ = gm.preprocess(bundle, [np.zeros((64, 64, 3), np.uint8)])
    emb = gm.encode(bundle, pixels)
    assert calls == ["called"]
    gm.decode_points(bundle, emb, np.array([[10.0, 20.0]]))
    assert calls == ["called", "called"]


def test_sam3_vision_features_and_detect_on_the_cpu_ask_for_it(tiny_sam3_dir: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """SAM 3's path (`segment_text`, exemplars) does not go through ``encode``: its backbone and detector ask too."""
    from geosam.models import sam3

    calls: list[str] = []
    monkeypatch.setattr(sam3, "keep_freed_memory", lambda: calls.append("called") or True)
    bundle = gm.load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    pixels, _, _ = gm.preprocess(bundle, [np.zeros((64, 64, 3), np.uint8)])
    vision = sam3.vision_features(bundle, pixels)
    assert calls == ["called"]
    sam3.detect(bundle, vision, sam3.encode_text(bundle, ["tree"]))
    assert calls == ["called", "called"]


def _faults_to_fill(nbytes: int) -> int:
    """Minor page faults taken by allocating, writing and freeing a tensor of ``nbytes``."""
    import resource

    import torch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(nbytes // 4, dtype=torch.float32)
    t.fill_(1.0)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not _glibc(), reason="glibc's allocator only")
def test_inside_heap_blocks_a_large_block_freed_is_used_again_without_fresh_pages(monkeypatch) -> None:
    """64 MiB (above glibc's 32 MiB mmap ceiling, as SAM 3's MLP activations), made and freed again and again inside:
    after the first few (torch's 64-byte aligned blocks shift in the heap until one fits its freed place), each takes
    its pages from the heap, not ~16 thousand fresh ones from the kernel (as each did before, outside)."""
    monkeypatch.delenv("GEOSAM_MALLOC_TUNE", raising=False)
    cpu_memory.keep_freed_memory.cache_clear()
    try:
        with cpu_memory.heap_blocks() as on:
            assert on
            faults = [_faults_to_fill(64 << 20) for _ in range(6)]
        assert max(faults[-3:]) < 1000, faults
        assert cpu_memory._heap_depth == 0
    finally:
        cpu_memory.keep_freed_memory.cache_clear()


def test_heap_blocks_nest_and_switch_off(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        @staticmethod
        def mallopt(param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda _name: FakeLibc())
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: True)
    with cpu_memory.heap_blocks() as outer:
        with cpu_memory.heap_blocks() as inner:
            assert outer and inner and cpu_memory._heap_depth == 2
        assert cpu_memory._heap_depth == 1
    assert cpu_memory._heap_depth == 0
    assert calls == [(cpu_memory._M_MMAP_MAX, 0), (cpu_memory._M_MMAP_MAX, cpu_memory._DEFAULT_MMAP_MAX)]
    with pytest.raises(RuntimeError), cpu_memory.heap_blocks():  # left by an error: the default is set again
        raise RuntimeError("boom")
    assert cpu_memory._heap_depth == 0 and calls[-1] == (cpu_memory._M_MMAP_MAX, cpu_memory._DEFAULT_MMAP_MAX)
    calls.clear()
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: False)  # GEOSAM_MALLOC_TUNE=0, or not glibc
    with cpu_memory.heap_blocks() as on:
        assert not on
    assert calls == []


def test_the_encoders_run_inside_heap_blocks(tiny_sam_dir: str, tiny_sam3_dir: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``encode`` (SAM, SAM-HQ, SAM 2, LiteMedSAM) and SAM 3's vision features run their encoder inside
    `heap_blocks` on the CPU; the decoders do not (their blocks are below the ceiling, and their masks are freed)."""
    import contextlib

    from geosam.models import sam3

    depth: list[int] = []

    @contextlib.contextmanager
    def recording():
        depth.append(1)
        try:
            yield True
        finally:
            depth.append(-1)

    seen: list[int] = []
    monkeypatch.setattr(runtime, "heap_blocks", recording)
    monkeypatch.setattr(sam3, "heap_blocks", recording)
    real_encode, real_vision = runtime._encode, sam3._vision
    monkeypatch.setattr(runtime, "_encode", lambda *a: seen.append(sum(depth)) or real_encode(*a))
    monkeypatch.setattr(sam3, "_vision", lambda *a: seen.append(sum(depth)) or real_vision(*a))
    bundle = gm.load_model(tiny_sam_dir, device="cpu", dtype="float32")
    pixels, _, _ = gm.preprocess(bundle, [np.zeros((64, 64, 3), np.uint8)])
    emb = gm.encode(bundle, pixels)
    gm.decode_points(bundle, emb, np.array([[10.0, 20.0]]))
    b3 = gm.load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    p3, _, _ = gm.preprocess(b3, [np.zeros((64, 64, 3), np.uint8)])
    sam3.vision_features(b3, p3)
    assert seen == [1, 1] and sum(depth) == 0 and len(depth) == 4


def _thp_mode(monkeypatch: pytest.MonkeyPatch, tmp_path, mode: str | None) -> None:
    """cpu_memory reads the THP mode from a file of ``mode`` (None: no such file, a kernel without THP)."""
    path = tmp_path / "enabled"
    if mode is not None:
        path.write_text(mode + "\n")
    monkeypatch.setattr(cpu_memory, "THP_MODE_FILE", str(path))
    monkeypatch.delenv(cpu_memory.TORCH_THP_VARIABLE, raising=False)
    monkeypatch.delenv("GEOSAM_MALLOC_TUNE", raising=False)


@pytest.mark.parametrize(
    ("mode", "asked"),
    [("always [madvise] never", True), ("[always] madvise never", False), ("always madvise [never]", False),
     (None, False)],
)
def test_huge_pages_are_asked_for_only_where_memory_must_ask(monkeypatch, tmp_path, mode, asked: bool) -> None:
    """torch's allocator is asked for huge pages (its variable set to 1) only under THP ``madvise``: with ``always``
    its blocks get them anyway, with ``never`` or without THP they cannot."""
    _thp_mode(monkeypatch, tmp_path, mode)
    assert cpu_memory.huge_pages_for_tensors() is (asked and sys.platform.startswith("linux"))
    assert cpu_memory.os.environ.get(cpu_memory.TORCH_THP_VARIABLE) == ("1" if asked else None)


def test_huge_pages_leave_the_users_choice_and_switch_off(monkeypatch, tmp_path) -> None:
    _thp_mode(monkeypatch, tmp_path, "always [madvise] never")
    monkeypatch.setenv("GEOSAM_MALLOC_TUNE", "0")
    assert cpu_memory.huge_pages_for_tensors() is False
    assert cpu_memory.TORCH_THP_VARIABLE not in cpu_memory.os.environ
    monkeypatch.delenv("GEOSAM_MALLOC_TUNE")
    monkeypatch.setenv(cpu_memory.TORCH_THP_VARIABLE, "0")  # the user's own setting stays
    assert cpu_memory.huge_pages_for_tensors() is False
    assert cpu_memory.os.environ[cpu_memory.TORCH_THP_VARIABLE] == "0"


def test_load_model_asks_before_the_weights_are_made(tiny_sam_dir: str, tiny_sam3_dir: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """SAM's family asks before its loader runs; SAM 3's (slower with huge pages) does not."""
    from geosam.models import registry

    calls: list[str] = []
    monkeypatch.setattr(registry, "huge_pages_for_tensors", lambda: calls.append("asked") or True)
    sam = registry._FAMILIES["sam"]
    loader = sam.loader
    monkeypatch.setitem(registry._FAMILIES, "sam", registry.ModelFamily(
        name="sam", matches=sam.matches, loader=lambda *a: calls.append("loaded") or loader(*a)))
    gm.clear_model_cache()
    gm.load_model(tiny_sam_dir, device="cpu", dtype="float32")
    assert calls == ["asked", "loaded"]
    gm.load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    assert calls == ["asked", "loaded"]
    gm.clear_model_cache()


def _huge_pages_after(setup: str) -> tuple[str, int]:
    """In a new process without torch's huge-page variable: ``setup`` (Python lines), then whether geosam asks for huge
    pages (`huge_pages_for_tensors`) and by how many KiB the process's AnonHugePages grow with a 64 MiB tensor."""
    import subprocess

    code = (
        "import torch\n"
        f"{setup}"
        "from geosam.models import cpu_memory\n"
        "def huge():\n"
        "    return int(open('/proc/self/smaps_rollup').read().split('AnonHugePages:')[1].split()[0])\n"
        "asked = cpu_memory.huge_pages_for_tensors()\n"
        "before = huge()\n"
        "x = torch.ones(16 << 20)\n"
        "print(asked, huge() - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != cpu_memory.TORCH_THP_VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                         env=env)
    asked, grown_kib = out.stdout.split()[-2:]
    return asked, int(grown_kib)


def test_a_fresh_process_gets_huge_pages_for_tensors_after_load_model(tiny_sam_dir: str) -> None:
    """In a new process, after `load_model`, a large tensor torch makes lies (largely) in transparent huge pages where
    the THP mode is ``madvise`` (the process's AnonHugePages grow by most of its 64 MiB); elsewhere nothing is asked."""
    asked, grown_kib = _huge_pages_after(
        f"import geosam.models as gm\ngm.load_model({tiny_sam_dir!r}, device='cpu', dtype='float32')\n")
    assert asked == str(cpu_memory.huge_pages_for_tensors() or cpu_memory.TORCH_THP_VARIABLE in cpu_memory.os.environ)
    if asked == "True":
        assert grown_kib >= 32 * 1024


def test_importing_geosams_modules_makes_no_tensor() -> None:
    """torch's allocator reads its huge-page variable at its first tensor of any size, so no geosam module may make
    one at import: after importing the run paths (segment-everything, prompts, text, the CLI) a variable set then still
    counts (a block of 2 MiB or more is advised: it lies in huge pages where the THP mode is madvise)."""
    asked, grown_kib = _huge_pages_after(
        "import geosam.segment.everything, geosam.modes.everything, geosam.modes.prompted, geosam.modes.text\n"
        "import geosam.cli.main\n")
    if asked == "True":
        assert grown_kib >= 32 * 1024
