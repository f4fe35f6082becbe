"""Loading a hub id without network: one short probe, then the local cache only (no retries, no retry warnings)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import geosam.models as gm
from geosam.errors import ModelLoadError
from geosam.models import hub


@pytest.fixture
def online_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No offline variable set (whatever the machine has), no probe answer remembered, no bundle cached."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.forget_hub_probe()
    gm.clear_model_cache()
    yield
    hub.forget_hub_probe()
    gm.clear_model_cache()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Every network attempt of this test, passed on to the real calls: ``("resolve", (host, port))`` for a name
    lookup (every connection starts with one, and without network the hub client's retries fail there) and
    ``("connect", address, timeout_s)`` for a TCP connection.

    Counts attempts instead of timing them: the hub client's retries (five per file, ~25 s) show as more of them.
    """
    attempts: list[tuple[object, ...]] = []
    real_connect, real_resolve = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(("connect", address, self.gettimeout()))
        return real_connect(self, address)  # type: ignore[arg-type]

    def resolve(host: object, port: object, *args: Any, **kwargs: Any) -> Any:
        attempts.append(("resolve", (host, port)))
        return real_resolve(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return attempts


def assert_one_short_probe(attempts: list[tuple[object, ...]], probe: tuple[str, int]) -> None:
    """The probe's endpoint was tried once, with the probe's short timeout, and nothing was retried.

    huggingface_hub may look up its own endpoint once per process for a registry of its own (best effort, not
    retried): one attempt per other address is allowed, a second one is a retry.
    """
    assert [a for a in attempts if a[1] == probe] == [("resolve", probe), ("connect", probe, hub.PROBE_TIMEOUT_S)]
    assert hub.PROBE_TIMEOUT_S <= 5
    others = [a[:2] for a in attempts if a[1] != probe and a[0] == "resolve"]
    assert len(others) == len(set(others)), f"retried: {others}"


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_hub_fails_fast_with_the_clear_message(
    online_env: None, closed_port: int, connects: list[tuple[object, ...]],
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    name = "geosam-tests/not-in-any-cache"
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelLoadError) as err:
        gm.load_model(name, device="cpu")
    # one short connection attempt, no retries (the hub client alone retries for ~25 s)
    assert_one_short_probe(connects, ("127.0.0.1", closed_port))
    msg = str(err.value)
    assert f"cannot load SAM model {name!r}" in msg
    assert f"127.0.0.1:{closed_port} cannot be reached" in msg
    assert f"hf download {name} --local-dir PATH" in msg
    assert "--model PATH" in msg
    out = capfd.readouterr()
    for text in (out.out, out.err, caplog.text):
        assert "Retrying" not in text and "Retry" not in text
    assert "HF_HUB_OFFLINE" not in os.environ  # the cache-only mode was this load's, not a global change


def test_the_probe_runs_once_per_process(online_env: None, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    calls: list[object] = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    for _ in range(3):
        with pytest.raises(ModelLoadError, match="cannot be reached"):
            gm.load_model("geosam-tests/not-in-any-cache", device="cpu")
    assert calls == [("127.0.0.1", closed_port)]
    hub.forget_hub_probe()
    assert not hub.hub_reachable()
    assert len(calls) == 2


def test_a_reachable_hub_is_probed_and_used(online_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable()
    assert hub.cache_only_reason("geosam-tests/not-in-any-cache") is None  # remembered: the hub may be asked


def test_a_local_folder_is_never_probed(online_env: None, tiny_sam_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("probed"))
    bundle = gm.load_model(tiny_sam_dir, device="cpu")
    assert bundle.name == tiny_sam_dir


def _hub_cache(root: Path, repo_id: str, files_from: str) -> Path:
    """A Hugging Face cache holding ``repo_id`` at revision main, with the files of directory ``files_from``."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(files_from, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def test_a_cached_checkpoint_loads_without_probe_or_network(
    online_env: None, tiny_sam_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    name = "geosam-tests/tiny-sam"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path, name, tiny_sam_dir)))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("probed"))
    connects: list[object] = []

    def no_network(self, address):  # type: ignore[no-untyped-def]
        connects.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    bundle = gm.load_model(name, device="cpu")
    assert bundle.name == name and bundle.input_size == 1024
    assert connects == []  # no connection attempted, so none retried or waited for


def test_a_partly_cached_checkpoint_is_not_taken_for_a_cached_one(
    online_env: None, tiny_sam_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(Path(tiny_sam_dir) / "config.json", partial / "config.json")  # e.g. left by an earlier read_config
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "cache", "geosam-tests/part", str(partial))))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    assert not hub.in_cache("geosam-tests/part")
    assert hub.cache_only_reason("geosam-tests/part") == f"the Hugging Face hub at {hub.hub_url()} cannot be reached"
