"""What machine a benchmark ran on (imported by the scripts beside it: ``from _machine import cpu_name``)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(threads: int, note: str = "") -> dict[str, object]:
    """The fields a results file opens with: CPU, threads, torch's version, platform and the run's note."""
    import torch

    return {"cpu": cpu_name(), "threads": threads, "torch_version": torch.__version__, "platform": platform.platform(),
            "note": note}
