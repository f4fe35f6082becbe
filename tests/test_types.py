"""The type gate: mypy (configured in pyproject.toml) finds no error in geosam/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert run.returncode == 0, f"mypy found problems:\n{run.stdout}{run.stderr}"
