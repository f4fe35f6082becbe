"""Variants of one module attribute timed side by side in one process (imported by the scripts beside it:
``from _alternate import alternate_patched``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def alternate_patched(module: Any, name: str, variants: dict[str, Any], run: Callable[[], T],
                      rounds: int) -> tuple[dict[str, list[float]], dict[str, T]]:  # fmt: skip
    """``module.name`` set to each of ``variants`` in turn and ``run()`` timed, every variant once per round after a
    warm-up round (so that the host's drift falls on all of them alike): the seconds of each timed round (to the
    millisecond) and each variant's last output; ``module.name`` put back afterwards."""
    original = getattr(module, name)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    outputs: dict[str, T] = {}
    try:
        for r in range(rounds + 1):  # round 0: warm-up
            for v, value in variants.items():
                setattr(module, name, value)
                t = time.perf_counter()
                outputs[v] = run()
                if r:
                    seconds[v].append(round(time.perf_counter() - t, 3))
    finally:
        setattr(module, name, original)
    return seconds, outputs
