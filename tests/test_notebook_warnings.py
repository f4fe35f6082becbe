"""In a Jupyter kernel without ipywidgets, loading geosam's models prints no "IProgress not found" TqdmWarning.

transformers imports ``tqdm.auto``, which warns in a kernel without ipywidgets; geosam imports it first, quietly
(geosam.models.registry), so the notebooks' stored outputs show no such warning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_in_kernel(code: str, cwd: Path) -> list[dict[str, object]]:
    """The outputs of one code cell run in a fresh python3 kernel that imports this checkout's geosam."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return list(nb.cells[0].outputs)


def text_of(outputs: list[dict[str, object]]) -> str:
    return "".join(str(o.get("text", "")) + json.dumps(o.get("data", {})) for o in outputs)


def test_loading_a_model_in_a_kernel_prints_no_tqdm_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    code = (
        "import socket, warnings\n"
        "warnings.simplefilter('always')\n"
        "attempts = []\n"
        "_connect = socket.socket.connect\n"
        "socket.socket.connect = lambda s, a: attempts.append(a) or _connect(s, a)  # count network attempts\n"
        "import sys, geosam.models\n"
        "import transformers.utils.logging  # imports tqdm.auto\n"
        "print(geosam.models.__file__, 'ipywidgets' in sys.modules, type(transformers.utils.logging.tqdm).__name__)\n"
        "print('connection attempts:', len(attempts))\n"
    )
    outputs = run_in_kernel(code, tmp_path)
    text = text_of(outputs)
    assert str(ROOT / "geosam") in text, text  # this checkout's geosam ran in the kernel
    assert "IProgress" not in text and "TqdmWarning" not in text, text
    assert "connection attempts: 0" in text, text  # importing never waits on the network (nbclient times out hangs)


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_stored_notebook_outputs_show_no_tqdm_warning(name: str) -> None:
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    text = "".join(text_of(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
    assert "TqdmWarning" not in text and "IProgress not found" not in text
