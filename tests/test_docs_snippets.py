"""The ``python`` blocks of docs pages run as written on the shipped data, like the README's (tests/test_readme.py).

Same marks as the README: a block directly preceded by ``<!-- readme-test: needs-weights -->`` (it needs SAM
weights) or ``<!-- readme-test: illustration -->`` (it names the user's own files) is skipped. Each block runs in a
temporary folder holding ``data/`` (the shipped scenes) and an empty ``out/``; every ``out/...`` file it names must
exist afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_readme import FENCE, MARKS

ROOT = Path(__file__).resolve().parents[1]
#: pages whose unmarked python blocks run, with the marks of their tests (LiteMedSAM's blocks take > 10 s); every
#: executed snippet is marked ``docs``: it runs in ``make test-docs`` (with the notebooks and the README's snippets)
PAGES = {"docs/vegetation.md": (pytest.mark.docs,), "docs/prompt-mode.md": (pytest.mark.docs, pytest.mark.slow)}


def page_blocks(page: str, lang: str = "python") -> list[tuple[str, str]]:
    """(``page:line``, source) of every unmarked ``lang`` block of ``page``."""
    text = (ROOT / page).read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if m.group(1) == lang and before.strip() not in MARKS:
            out.append((f"{page}:{text[: m.start()].count(chr(10)) + 1}", m.group(2)))
    return out


BLOCKS = [pytest.param(*b, marks=marks, id=b[0]) for page, marks in PAGES.items() for b in page_blocks(page)]


def test_vegetation_page_uses_the_shipped_sentinel2_sample() -> None:
    text = (ROOT / "docs" / "vegetation.md").read_text()
    assert "s2.tif" not in text and "data/ftw_sentinel2_rgbn_2dates.tif" in text
    assert any(where.startswith("docs/vegetation.md") for where, _ in page_blocks("docs/vegetation.md"))


@pytest.mark.parametrize(("where", "source"), BLOCKS)
def test_docs_snippet(where: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    exec(compile(source, where, "exec"), {"__name__": "__main__"})  # noqa: S102 - the snippet is the test
    for name in re.findall(r"[\"'](out/[^\"']+)[\"']", source):  # every output it names was written
        assert (tmp_path / name).exists(), f"{where}: {name} not written"
