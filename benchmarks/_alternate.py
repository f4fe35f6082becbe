"""Variants timed side by side in one process: any setting (`alternate`) or one module attribute
(`alternate_patched`), and the command line and process set-up those scripts share (`parse_and_set_up`); imported by
the scripts beside it (``from _alternate import alternate``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"


def parse_and_set_up(ap: argparse.ArgumentParser, out: str) -> argparse.Namespace:
    """``ap``'s arguments with the ones every alternating benchmark takes (``--threads`` 2, ``--rounds`` 3, ``--out``
    ``benchmarks/results/<out>``, ``--note``), parsed; then the process set up as a real run has it: huge pages for
    torch's large blocks (as `geosam.models.load_model` asks for SAM's models, before this process's first tensor),
    that many threads, no autograd."""
    import torch

    from geosam.models.cpu_memory import huge_pages_for_tensors

    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / out))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    huge_pages_for_tensors()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    return args


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
