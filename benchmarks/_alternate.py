"""Variants timed side by side in one process: any setting (`alternate`) or one module attribute
(`alternate_patched`); imported by the scripts beside it (``from _alternate import alternate``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def alternate(setups: dict[str, Callable[[], None]], run: Callable[[], T],
              rounds: int) -> tuple[dict[str, list[float]], dict[str, T]]:  # fmt: skip
    """Each of ``setups`` called in turn and ``run()`` timed after it, every variant once per round after a warm-up
    round (so that the host's drift falls on all of them alike): the seconds of each timed round (to 0.1 ms)
    and each variant's last output. The caller puts back what the setups changed."""
    seconds: dict[str, list[float]] = {v: [] for v in setups}
    outputs: dict[str, T] = {}
    for r in range(rounds + 1):  # round 0: warm-up
        for v, setup in setups.items():
            setup()
            t = time.perf_counter()
            outputs[v] = run()
            if r:
                seconds[v].append(round(time.perf_counter() - t, 4))
    return seconds, outputs


def alternate_patched(module: Any, name: str, variants: dict[str, Any], run: Callable[[], T],
                      rounds: int) -> tuple[dict[str, list[float]], dict[str, T]]:  # fmt: skip
    """`alternate` with ``module.name`` set to each of ``variants`` in turn; ``module.name`` put back afterwards."""
    original = getattr(module, name)
    try:
        setups = {v: (lambda value=value: setattr(module, name, value)) for v, value in variants.items()}
        return alternate(setups, run, rounds)
    finally:
        setattr(module, name, original)
