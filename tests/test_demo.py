"""The demo's offline path: one short probe of the hub, then the local cache only (no retries)."""

from __future__ import annotations

import socket
import time

import pytest

from scripts import demo


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_hub_means_the_cache_only(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from geosam.errors import ModelLoadError
    from geosam.models.hf_sam import read_config

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # unset for the demo; restored after the test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "")
    t0 = time.perf_counter()
    assert not demo.hub_reachable()
    demo.use_cache_only_if_offline("Zigeng/SlimSAM-uniform-50")
    assert demo.os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelLoadError, match="SlimSAM-uniform-50"):
        read_config("Zigeng/SlimSAM-uniform-50-not-cached")  # cache only: fails at once, no retries
    assert time.perf_counter() - t0 < 20


def test_a_local_model_folder_or_a_set_variable_skips_the_probe(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # unset for the demo; restored after the test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "")
    monkeypatch.setattr(demo, "hub_reachable", lambda: pytest.fail("probed"))
    demo.use_cache_only_if_offline(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    demo.use_cache_only_if_offline("Zigeng/SlimSAM-uniform-50")
    assert demo.os.environ["HF_HUB_OFFLINE"] == "0"
