"""The snippets of the docs pages run as written on the shipped data, like the README's (tests/test_readme.py).

Every page of ``docs/``: each ``python`` block, and each line of a ``bash`` block that starts with ``geosam ``
(continuation lines ending in ``\\`` joined). Same marks as the README: a block directly preceded by
``<!-- readme-test: needs-weights -->`` (it needs SAM weights) or ``<!-- readme-test: illustration -->`` (it names the
user's own files) is skipped. Each runs in a temporary folder holding ``data/`` (the shipped scenes) and an empty
``out/``; every ``out/...`` file it names must exist afterwards. All are marked ``docs`` (``make test-docs``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_readme import FENCE, MARKS

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
#: pages whose snippets take > 10 s (LiteMedSAM on the 43 solaris buildings)
SLOW = {"docs/prompt-mode.md"}


def page_blocks(page: str, lang: str = "python") -> list[tuple[str, str]]:
    """(``page:line``, source) of every unmarked ``lang`` block of ``page``."""
    text = (ROOT / page).read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if m.group(1) == lang and before.strip() not in MARKS:
            out.append((f"{page}:{text[: m.start()].count(chr(10)) + 1}", m.group(2)))
    return out


def page_cli_lines(page: str) -> list[tuple[str, str]]:
    """(``page:line``, command) of every ``geosam`` line of the unmarked ``bash`` blocks of ``page``."""
    out = []
    for where, body in page_blocks(page, "bash"):
        for cmd in body.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd.startswith("geosam "):
                out.append((where, cmd))
    return out


def params(kind: str) -> list[object]:
    found = page_blocks if kind == "python" else page_cli_lines
    return [
        pytest.param(*b, marks=(pytest.mark.docs, *((pytest.mark.slow,) if page in SLOW else ())), id=b[0])
        for page in PAGES for b in found(page)
    ]


BLOCKS = params("python")
CLI_LINES = params("bash")


def test_vegetation_page_uses_the_shipped_sentinel2_sample() -> None:
    text = (ROOT / "docs" / "vegetation.md").read_text()
    assert "s2.tif" not in text and "data/ftw_sentinel2_rgbn_2dates.tif" in text
    assert any(where.startswith("docs/vegetation.md") for where, _ in page_blocks("docs/vegetation.md"))


@pytest.fixture
def in_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("where", "source"), BLOCKS)
def test_docs_snippet(where: str, source: str, in_copy: Path) -> None:
    exec(compile(source, where, "exec"), {"__name__": "__main__"})  # noqa: S102 - the snippet is the test
    for name in re.findall(r"[\"'](out/[^\"']+)[\"']", source):  # every output it names was written
        assert (in_copy / name).exists(), f"{where}: {name} not written"


@pytest.mark.parametrize(("where", "cmd"), CLI_LINES)
def test_docs_cli_snippet(where: str, cmd: str, in_copy: Path) -> None:
    from click.testing import CliRunner

    from geosam.cli.main import cli

    res = CliRunner().invoke(cli, shlex.split(cmd)[1:], catch_exceptions=False)
    assert res.exit_code == 0, f"{where}: {cmd}\n{res.output}"
    for token in shlex.split(cmd):
        if token.startswith("out/"):
            assert (in_copy / token).exists(), f"{where}: {token} not written"
