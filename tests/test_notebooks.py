"""Every notebook in notebooks/ runs top to bottom in a Jupyter kernel (nbclient), its own asserts included.

Each runs on a temporary copy laid out like the repository (``notebooks/`` beside ``data/``), so the committed
notebooks and their stored outputs are never rewritten by the tests (``make notebooks`` re-renders those).
Running them is marked ``docs`` (``make test-docs``; ``.ci/run`` runs it after ``make test``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "prompt_mode", "vegetation", "seams", "scale_out", "stac",
                                          "monitoring"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_stored_outputs_and_no_path_hacks(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    source = "\n".join("".join(c["source"]) for c in code)
    assert "sys.path" not in source and "tests.data" not in source
    assert "assert " in source
    # executed in order, with pictures stored (they show on the repository page)
    assert all(c.get("execution_count") for c in code), "run `make notebooks` to store the outputs"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    from scripts.run_notebooks import execute

    (tmp_path / "notebooks").mkdir()
    shutil.copy(path, tmp_path / "notebooks" / path.name)
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    # the kernel imports this checkout's geosam, whichever copy is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        execute(tmp_path / "notebooks" / path.name, tmp_path / "notebooks")
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: {exc}")
