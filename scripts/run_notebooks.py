"""Execute the notebooks in notebooks/ in place, storing their outputs (``make notebooks``).

Each notebook runs in its own folder (``notebooks/``), as on a reader's machine, in a fresh kernel of this
Python that imports this checkout's ``geosam`` (``PYTHONPATH``; processes the notebook starts, such as Dask
workers, inherit it). Pass notebook paths to run only those. The tests execute the same notebooks on a temporary copy
(``tests/test_notebooks.py``), so running the tests never rewrites them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, cwd: Path, timeout_s: int = 900) -> object:
    """Run every cell of ``path`` with ``cwd`` as working folder; return the executed notebook (nbformat)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    paths = [Path(a).resolve() for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    for path in paths:
        t0 = time.perf_counter()
        nb = execute(path, path.parent)
        nbformat.write(nb, path)
        print(f"{path.relative_to(ROOT)}: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
