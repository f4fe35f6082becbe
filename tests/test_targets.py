"""The test commands: ``make test`` runs every test but the documents, ``make test-docs`` the documents (notebooks,
README and docs snippets, marked ``docs``), and ``.ci/run`` both, so CI runs every test and neither target is empty
(pytest exits 5 when a selection is)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(target: str) -> str:
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, target
    return m.group(1)


def test_the_targets_split_on_the_docs_marker() -> None:
    assert '-m pytest -q -m "not docs"' in recipe("test")
    assert "-m pytest -q -m docs" in recipe("test-docs")
    assert "docs:" in (ROOT / "pyproject.toml").read_text()  # the marker is registered


def test_ci_runs_both_targets() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in lines and "make test" in lines and "make test-docs" in lines


def marks(fn: object) -> set[str]:
    return {m.name for m in getattr(fn, "pytestmark", [])}


def test_the_documents_are_the_docs_target() -> None:
    from tests import test_docs_snippets, test_notebooks, test_readme

    assert test_notebooks.NOTEBOOKS and "docs" in marks(test_notebooks.test_notebook_runs)
    assert test_readme.blocks("python") and "docs" in marks(test_readme.test_python_snippet)
    assert test_readme.cli_lines() and "docs" in marks(test_readme.test_cli_snippet)
    snippets = [*test_docs_snippets.BLOCKS, *test_docs_snippets.CLI_LINES]
    assert test_docs_snippets.BLOCKS and test_docs_snippets.CLI_LINES
    assert all("docs" in {m.name for m in p.marks} for p in snippets)  # type: ignore[attr-defined]
