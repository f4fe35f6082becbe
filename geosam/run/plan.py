"""The run's plan before it starts, and an estimate once the first chips are done.

Both go to the ``geosam.plan`` logger at INFO: the CLI shows them without ``-v`` (a long run says
what it will do, and roughly how long it will take, before the user has waited for nothing); a
library caller sees them only when it enables that logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("geosam.plan")

T = TypeVar("T")

#: Chips timed before the estimate is logged (fewer when the run has fewer).
ESTIMATE_AFTER_CHIPS = 3


def prompts_per_chip(points_per_side: int, crop_n_layers: int = 0, downscale: int = 1) -> int:
    """Point prompts decoded per chip: the grid on the whole chip plus, per crop layer i, ``4**i`` crops with a
    ``points_per_side // downscale**i`` grid each (segment-anything's crop layers)."""
    total = 0
    for i in range(crop_n_layers + 1):
        side = max(1, points_per_side // (downscale**i))
        total += (4**i) * side * side
    return total


def log_plan(path: str, n_chips: int, chip_side_px: int, points_per_side: int | None, crop_n_layers: int = 0,
             downscale: int = 1) -> None:
    """One line: chips and prompts to decode (``points_per_side`` None: a generator without a point grid)."""
    if points_per_side is None:
        log.info("%s: %d chips of up to %d px", path, n_chips, chip_side_px)
        return
    per_chip = prompts_per_chip(points_per_side, crop_n_layers, downscale)
    crops = sum(4**i for i in range(crop_n_layers + 1))
    log.info("%s: %d chips of up to %d px, %d image encoding(s) and %d point prompts per chip (%d prompts to decode)",
             path, n_chips, chip_side_px, crops, per_chip, per_chip * n_chips)


def with_estimate(items: Iterable[T], total: int, after: int = ESTIMATE_AFTER_CHIPS) -> Iterator[T]:
    """Yield ``items``; once ``after`` of ``total`` are through, log the time they took and an estimate of the rest."""
    t0 = time.perf_counter()
    for n, item in enumerate(items, start=1):
        yield item
        if n == min(after, total) and total > n:
            took = time.perf_counter() - t0
            log.info("first %d of %d chips took %.1f s: about %.0f s more for the other %d", n, total, took,
                     took / n * (total - n), total - n)


__all__ = ["ESTIMATE_AFTER_CHIPS", "log_plan", "prompts_per_chip", "with_estimate"]
