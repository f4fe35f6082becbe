"""geosam.models.cpu_memory: glibc's thresholds raised once per CPU process, from encode and decode (and SAM 3's vision
features and detector), and switchable off."""

from __future__ import annotations

import ctypes
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
