"""The README's snippets run as written, on the shipped data, so they cannot rot.

Executed: every ```python block, and every line of a ```bash block that starts with ``geosam `` (continuation lines
ending in ``\\`` joined), in a temporary folder holding ``data/`` (the shipped scenes). Skipped: a block whose fence is
directly preceded by the line ``<!-- readme-test: needs-weights -->`` (it needs SAM weights from the hub) or
``<!-- readme-test: illustration -->`` (it names the user's own files or cluster, e.g. ``scene.tif``,
``tcp://scheduler:8786``; what it shows is tested in tests/test_journal.py, test_distributed.py, test_scenes.py).
Executing the snippets is marked ``docs``: ``make test-docs`` runs them (``make test`` does not; ``.ci/run`` runs both).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- readme-test: needs-weights -->"
MARKS = (MARK, "<!-- readme-test: illustration -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(lang: str) -> list[tuple[int, str]]:
    text = (ROOT / "README.md").read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != lang:
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() in MARKS:
            continue
        out.append((text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def cli_lines() -> list[tuple[int, str]]:
    lines = []
    for lineno, body in blocks("bash"):
        for cmd in body.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd.startswith("geosam "):
                lines.append((lineno, cmd))
    return lines


def test_readme_has_snippets() -> None:
    assert len(blocks("python")) >= 1 and len(cli_lines()) >= 2
    assert MARK in (ROOT / "README.md").read_text()


@pytest.fixture
def in_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    return tmp_path


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize(("lineno", "source"), blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_snippet(lineno: int, source: str, in_copy: Path) -> None:
    exec(compile(source, f"README.md:{lineno}", "exec"), {"__name__": "__main__"})  # noqa: S102 - the snippet is the test


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize(("lineno", "cmd"), cli_lines(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_cli_snippet(lineno: int, cmd: str, in_copy: Path) -> None:
    from click.testing import CliRunner

    from geosam.cli.main import cli

    res = CliRunner().invoke(cli, shlex.split(cmd)[1:], catch_exceptions=False)
    assert res.exit_code == 0, f"README.md:{lineno}: {cmd}\n{res.output}"
    for token in shlex.split(cmd):
        if token.startswith("out/"):
            assert (in_copy / token).exists(), token
