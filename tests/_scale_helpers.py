"""Test-only mask generators for the resume and scale-out tests.

:class:`CountingOracle` is the oracle (exact masks from a label raster) that also
appends each generated chip id to a log file, can sleep per chip (so a run can be
killed part-way) and can make its process exit once after some chips (a worker that
dies mid-run). Running this module runs the real ``geosam`` CLI with the SAM
generator replaced by a :class:`CountingOracle` configured from environment variables
(``GEOSAM_TEST_LABELS``, ``GEOSAM_TEST_LOG``, ``GEOSAM_TEST_DELAY_S``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from geosam.read.scene import Chip
from geosam.segment.base import ChipMasks
from geosam.testing import OracleMaskGenerator


class CountingOracle(OracleMaskGenerator):
    """The oracle, logging generated chip ids to ``log_path`` (one line each, appended).

    delay_s: seconds slept per chip. die_after: with ``die_marker``, the process exits
    (``os._exit``) right after generating its ``die_after``-th chip, unless the marker file
    exists (it is created first, so exactly one process dies once).
    """

    def __init__(self, label_path: str, log_path: str | None = None, delay_s: float = 0.0,
                 die_after: int | None = None, die_marker: str | None = None) -> None:
        super().__init__(label_path)
        self.log_path, self.delay_s = log_path, delay_s
        self.die_after, self.die_marker = die_after, die_marker
        self.count = 0

    def __repr__(self) -> str:  # the journal key: the label raster only, not the test knobs
        return f"OracleMaskGenerator({self.label_path!r})"

    def generate(self, chip: Chip) -> ChipMasks:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = super().generate(chip)
        self.count += 1
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(chip.spec.chip_id + "\n")
        dies = self.die_after is not None and self.die_marker and self.count >= self.die_after
        if dies and self.die_marker and not os.path.exists(self.die_marker):
            open(self.die_marker, "w").close()
            os._exit(1)
        return out


class PhraseOracle(CountingOracle):
    """Text mode's stand-in: oracle masks labelled by object id, odd -> "building", even -> "solar panel",
    score = id / 1000 (counted and logged as `CountingOracle`)."""

    name = "scripted"

    def __repr__(self) -> str:
        return f"PhraseOracle({self.label_path!r})"

    def generate_with_labels(self, chip: Chip) -> tuple[ChipMasks, np.ndarray]:
        masks, ids = super().generate_with_labels(chip)
        labels = tuple("building" if i % 2 else "solar panel" for i in ids)
        return ChipMasks(masks.masks, np.asarray(ids) / 1000.0, np.ones(len(ids)), labels=labels), ids


def read_log(path: str) -> list[str]:
    """Chip ids logged by :class:`CountingOracle` (empty if none)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv: list[str]) -> Any:
    """The ``geosam`` CLI with the SAM generator replaced by a :class:`CountingOracle`."""
    import geosam.modes.everything
    from geosam.cli.main import cli

    gen = CountingOracle(os.environ["GEOSAM_TEST_LABELS"], os.environ.get("GEOSAM_TEST_LOG"),
                         float(os.environ.get("GEOSAM_TEST_DELAY_S", "0")))
    geosam.modes.everything.make_mask_generator = lambda cfg: gen  # type: ignore[assignment]
    return cli.main(argv, prog_name="geosam")


if __name__ == "__main__":
    main(sys.argv[1:])


class SceneOracle(OracleMaskGenerator):
    """The oracle for several scenes: ``labels`` maps each scene path to its label raster."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.by_scene = {os.path.abspath(k): OracleMaskGenerator(v) for k, v in labels.items()}
        first = next(iter(self.by_scene.values()))
        self.__dict__.update({k: v for k, v in first.__dict__.items() if k != "by_scene"})

    def __repr__(self) -> str:
        return f"SceneOracle({sorted(self.by_scene)!r})"

    def generate(self, chip: Chip) -> ChipMasks:
        return self.by_scene[os.path.abspath(chip.spec.path)].generate(chip)
