"""Progress bars: ``tqdm.auto`` (notebook bars where ipywidgets is installed), imported without its warning.

In a Jupyter kernel without ipywidgets ``tqdm.auto`` warns "IProgress not found" and falls back to plain tqdm,
which is what geosam wants there; `tqdm_auto` imports it once with that warning silenced (transformers
imports it too, so the model registry calls this before any model import).
"""

from __future__ import annotations

import warnings
from typing import Any


def tqdm_auto() -> Any:
    """The ``tqdm.auto.tqdm`` class, imported quietly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm
    return tqdm


__all__ = ["tqdm_auto"]
