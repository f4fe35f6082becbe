"""The AMX micro-benchmarks' C programs (benchmarks/c/amx_tiles.c, amx_overlap.c, run by benchmarks/bench_amx_tiles.py)
build without warnings wherever there is a C compiler, and on CPUs with AMX give the numbers the script reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geosam.models.device import cpu_flags

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


def _build(source: Path, out: Path, *defines: str) -> Path:
    done = subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", *defines, str(source), "-o", str(out)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_every_overlap_case_builds_and_the_script_knows_them_all(tmp_path) -> None:
    import bench_amx_tiles

    assert sorted(bench_amx_tiles.OVERLAP_CASES.values()) == list(range(6))
    _build(BENCH / "c" / "amx_tiles.c", tmp_path / "amx_tiles")
    for case in bench_amx_tiles.OVERLAP_CASES.values():
        _build(BENCH / "c" / "amx_overlap.c", tmp_path / f"amx_overlap_{case}", f"-DTCASE={case}")


@pytest.mark.skipif("amx_bf16" not in cpu_flags(), reason="the tiles need a CPU with AMX")
def test_overlap_prints_four_timings_a_block(tmp_path) -> None:
    """Tiles alone, vector work alone, both one after the other and both spread: four positive microsecond figures
    (the script's `overlap` parses exactly these), the combined runs not faster than the slower part alone."""
    exe = _build(BENCH / "c" / "amx_overlap.c", tmp_path / "amx_overlap", "-DTCASE=3")
    runs = []
    for _ in range(3):  # another process's load inflates one part's figure alone: up to 3 runs for the lower bound
        out = subprocess.run([str(exe), "1"], capture_output=True, text=True, check=True).stdout.split()
        assert len(out) == 4
        tiles, vector, both, spread = (float(x) for x in out)
        assert min(tiles, vector, both, spread) > 0
        runs.append((tiles, vector, both, spread))
        if both > 0.8 * max(tiles, vector) and spread > 0.8 * max(tiles, vector):
            return
    raise AssertionError(f"a combined run faster than its slower part alone in every run: {runs}")
