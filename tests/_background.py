"""Checks that run in a subprocess while the other tests run: started once the selection is known, awaited by their
test (tests/test_types.py). On a 2-core machine mypy (~25-40 s of one core, cold cache) then mostly overlaps the
tests, which leave a core idle much of the time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MYPY = [sys.executable, "-m", "mypy", "--no-error-summary"]
MYPY_TEST = "tests/test_types.py::test_mypy_is_clean"

_started: dict[str, subprocess.Popen[str]] = {}


def start(name: str, cmd: list[str]) -> None:
    """Start ``cmd`` (in the repository root) under ``name``, unless it is running already."""
    if name not in _started:
        _started[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(name: str, cmd: list[str]) -> tuple[int, str]:
    """Exit code and output of the run named ``name`` (started now if it was not)."""
    start(name, cmd)
    out, _ = _started[name].communicate()
    return _started[name].returncode, out


def stop_all() -> None:
    """Kill runs whose test never asked for them (e.g. the session was interrupted)."""
    for proc in _started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
