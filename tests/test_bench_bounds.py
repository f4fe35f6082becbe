"""benchmarks/bench_amg.py's peak bounds: what the counted FLOPs allow at the measured matmul peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
bench_amg = pytest.importorskip("bench_amg")


def _result(grid: str, pipeline_s: float, geosam_s: float, encode: float, decode: float, dec_gflop: float) -> dict:
    return {
        "settings": {"chips": 2, "dtypes": ["float32"], "grids": [int(grid.split("x")[0])]},
        "matmul_peak_gflop_per_s": {"float32": 100.0},
        "encoder_gflop_per_chip": {"float32": 500.0},
        "grids": {grid: {
            "seconds": {"pipeline": pipeline_s, "geosam_float32": geosam_s},
            "float32": {"geosam_s": geosam_s, "stage_s": {"encode": encode, "decode": decode, "filter": 1.0},
                        "decoder_gflop": dec_gflop},
        }},
    }


def test_peak_bounds_from_the_counted_flops():
    r = _result("16x16", pipeline_s=100.0, geosam_s=25.0, encode=14.0, decode=9.0, dec_gflop=400.0)
    bench_amg.add_peak_bounds(r)
    b = r["peak_bounds"]["float32"]["16x16"]
    # 2 chips x 500 GFLOP + 400 GFLOP at 100 GFLOP/s = 14 s; 2 s outside the model stages
    assert b["model_s_at_peak"] == 14.0 and b["other_s"] == 2.0
    assert b["speedup_at_peak"] == round(100.0 / 16.0, 2)
    assert b["model_fraction_of_peak"] == round(14.0 / 23.0, 3)
    # 5x = 20 s, 18 s of it for the model: 14 / 18 of the peak needed
    assert b["model_fraction_of_peak_for_5x"] == round(14.0 / 18.0, 3)


def test_peak_bounds_say_when_the_target_is_out_of_reach():
    r = _result("16x16", pipeline_s=60.0, geosam_s=25.0, encode=14.0, decode=9.0, dec_gflop=400.0)
    bench_amg.add_peak_bounds(r)  # 5x = 12 s < 2 s + 14 s even at the peak
    assert r["peak_bounds"]["float32"]["16x16"]["model_fraction_of_peak_for_5x"] is None
    assert r["peak_bounds"]["float32"]["16x16"]["speedup_at_peak"] == round(60.0 / 16.0, 2)


def test_merged_results_get_bounds_from_the_merged_figures(tmp_path):
    a = _result("32x32", pipeline_s=300.0, geosam_s=60.0, encode=14.0, decode=40.0, dec_gflop=2000.0)
    b = _result("16x16", pipeline_s=100.0, geosam_s=25.0, encode=14.0, decode=9.0, dec_gflop=400.0)
    b["matmul_peak_gflop_per_s"] = {"float32": 50.0}  # the added run's own peak is not the merged file's
    bench_amg.add_peak_bounds(a)
    bench_amg.add_peak_bounds(b)
    into, add = tmp_path / "into.json", tmp_path / "add.json"
    into.write_text(json.dumps(a))
    add.write_text(json.dumps(b))
    subprocess.run([sys.executable, str(BENCH / "merge_amg_results.py"), "--into", str(into), "--add", str(add)],
                   check=True, capture_output=True)
    merged = json.loads(into.read_text())["peak_bounds"]["float32"]
    assert set(merged) == {"16x16", "32x32"}
    assert merged["16x16"]["model_s_at_peak"] == 14.0  # at the merged file's 100 GFLOP/s, not 50
    assert merged["32x32"]["model_s_at_peak"] == 30.0


def test_interleaved_rounds_time_every_variant_per_round_in_turn():
    calls: list[tuple[int, str, int]] = []
    rounds_seen: list[int] = []
    state = {"round": -1}

    def on_round(r: int) -> None:
        state["round"] = r
        rounds_seen.append(r)

    def runner(name: str):
        return lambda chip: calls.append((state["round"], name, chip)) or f"{name}-{chip}-{state['round']}"

    seconds, results = bench_amg.interleaved({"a": runner("a"), "b": runner("b")}, [0, 1], rounds=3, on_round=on_round)
    assert rounds_seen == [0, 1, 2]
    # every round: chip 0 for every variant, then chip 1
    assert calls == [(r, n, c) for r in range(3) for c in (0, 1) for n in ("a", "b")]
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3}
    assert all(x >= 0.0 for v in seconds.values() for x in v)
    assert results == {"a": ["a-0-0", "a-1-0"], "b": ["b-0-0", "b-1-0"]}  # the first round's results


@pytest.mark.slow
def test_bench_cuda_runs_its_sections_on_the_cpu(tmp_path):
    """`benchmarks/bench_cuda.py` end to end on the CPU (tiny encoder, 2 x 2 points, geosam's modules): the geosam
    variant timed with its stages, and the filter-chunk A/B with the same masks at every chunk."""
    out = tmp_path / "cuda.json"
    cmd = [sys.executable, str(BENCH / "bench_cuda.py"), "--device", "cpu", "--dtypes", "float32", "--encoder-layers",
           "1", "--encoder-width", "96", "--fast-paths", "on", "--grids", "2", "--rounds", "1", "--chips", "1",
           "--chip-size", "256", "--sections", "grid",
           "--filter-chunks", "16", "256", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    r = json.loads(out.read_text())
    assert r["errors"] == {}
    g = r["grids"]["2x2"]
    names = {"geosam_float32_fast_on"}
    assert set(g["seconds"]) == names and all(s > 0 for s in g["seconds"].values())
    assert set(g["stage_s"]) == names and all("encode" in st and "decode" in st for st in g["stage_s"].values())
    assert set(g["masks_without_nms"]) == names
    fc = r["filter_chunk"]
    assert set(fc["seconds"]) == {"geosam_float32_fast_on_chunk_16", "geosam_float32_fast_on_chunk_256"}
    assert all(fc["masks_equal_to_first_chunk"].values())


def _masks(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    out = np.zeros((len(boxes), 8, 8), dtype=bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        out[i, y0:y1, x0:x1] = True
    return out


def test_bf16_agreement_over_chips_pools_the_timed_chips_and_the_others():
    """The timed chip's masks are reused, the other chips run through both dtypes' generators; each chip's figure and
    their counts pooled (default thresholds and NMS-free passes both, as `agreement_parts` pools them)."""
    a, b, c = (0, 4, 0, 4), (4, 8, 4, 8), (0, 8, 0, 2)
    masks = {"geosam_float32": [_masks(a)], "geosam_bfloat16": [_masks(a)]}
    masks_all = {"geosam_float32": [_masks(a, b)], "geosam_bfloat16": [_masks(a, b)]}
    calls: list[str] = []

    def gen(d: str, what):
        return lambda chip: calls.append(f"{d} {chip}") or what

    runs = {"float32": (gen("float32", _masks(a)), gen("float32", _masks(a, b))),
            "bfloat16": (gen("bfloat16", _masks(a)), gen("bfloat16", _masks(a, c)))}  # on the other chip: c, not b
    got = bench_amg.agreement_over_chips(runs, ["chip1"], masks, masks_all, single=False)
    assert got["chips"] == 2 and sorted(calls) == ["bfloat16 chip1"] * 2 + ["float32 chip1"] * 2
    assert got["per_chip"] == [1.0, round(2 / 3, 4)]  # chip 1: a matched in both passes, c against b not
    pooled = got["pooled"]
    assert (pooled["geosam_masks"], pooled["geosam_matched"], pooled["pipeline_masks"]) == (6, 5, 6)
    assert pooled["mask_agreement"] == round(5 / 6, 4)
    single = bench_amg.agreement_over_chips(runs, ["chip1"], masks_all, masks_all, single=True)  # NMS-free pass only
    assert single["per_chip"] == [1.0, 0.5] and single["pooled"]["mask_agreement"] == 0.75
