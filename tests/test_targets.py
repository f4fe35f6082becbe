"""The test commands: ``make test`` runs every test but the documents, ``make test-docs`` the documents (notebooks,
README and docs snippets, marked ``docs``), and ``.ci/run`` both, so CI runs every test and neither target is empty
(pytest exits 5 when a selection is)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(target: str) -> str:
    """The target's commands, with the Makefile's own variables ($(PYTEST), $(TEST_WORKERS)) expanded."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert m, target
    variables = dict(re.findall(r"^([A-Z_]+) *[:?]?= *(.*)$", text, re.MULTILINE))
    out = m.group(1)
    for _ in range(3):
        out = re.sub(r"\$\(([A-Z_]+)\)", lambda v: variables.get(v.group(1), v.group(0)), out)
    return out


def test_the_targets_split_on_the_docs_marker() -> None:
    assert re.search(r'-m pytest -q .*-m "not docs"', recipe("test"))
    assert re.search(r'-m pytest -q .*-m "not slow and not docs"', recipe("test-fast"))
    assert re.search(r"-m pytest -q .*-m docs", recipe("test-docs"))
    assert "docs:" in (ROOT / "pyproject.toml").read_text()  # the marker is registered


def test_make_test_runs_in_worker_processes() -> None:
    """make test / test-fast in pytest-xdist workers (2 by default; conftest gives each its share of the cores)."""
    import xdist  # noqa: F401 - installed with the test extra

    assert "-n 2 --dist worksteal" in recipe("test") and "-n 2" in recipe("test-fast")
    assert "-n " not in recipe("test-docs")


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
