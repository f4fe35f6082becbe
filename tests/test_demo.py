"""The demo offline: the library's probe finds the hub unreachable, the demo says so at once (no retries)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scripts import demo
from tests.test_hub import assert_one_short_probe, connects, online_env  # noqa: F401  (fixtures)


def test_the_offline_demo_explains_and_falls_back_at_once(
    online_env: None,  # noqa: F811
    connects: list[tuple[object, ...]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GEOSAM_MODEL", "geosam-tests/not-in-any-cache")
    fallback: list[Path] = []
    monkeypatch.setattr(demo, "litemedsam_boxes", lambda out: fallback.append(out) or 0)
    assert demo.main() == 0
    assert_one_short_probe(connects, ("127.0.0.1", port))  # one short attempt, no retries
    err = capsys.readouterr().err
    assert "geosam-tests/not-in-any-cache" in err and "cannot be reached" in err
    assert "Retry" not in err
    assert fallback == [demo.ROOT / "out"]
