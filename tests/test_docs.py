"""The documentation: the CLI reference matches ``--help``, and the mkdocs site builds in strict mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_up_to_date() -> None:
    from scripts.cli_reference import TARGET, render

    assert TARGET.read_text() == render(), "run: python scripts/cli_reference.py"


def test_mkdocs_strict_build(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "segment_prompts" in api and "add_scalebar" in api  # the API pages come from the docstrings
    assert "geosam prompt" in (tmp_path / "site" / "cli" / "index.html").read_text()
