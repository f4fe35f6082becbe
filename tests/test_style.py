"""The code passes ruff (pinned in the test extras, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean() -> None:
    paths = [str(ROOT / p) for p in ("geosam", "tests", "benchmarks", "scripts")]
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, f"ruff found problems:\n{run.stdout}{run.stderr}"
