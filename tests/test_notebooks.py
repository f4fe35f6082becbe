"""Every notebook in notebooks/ runs top to bottom (code cells executed in order)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    nb = json.loads(path.read_text())
    monkeypatch.chdir(path.parent)
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        try:
            exec(compile(src, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102 - running the notebook is the test
        except Exception as exc:  # noqa: BLE001 - report which cell failed
            pytest.fail(f"{path.name} cell {i} failed: {exc!r}")
