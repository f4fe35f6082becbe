"""What the CPU's AMX tiles do with bf16 products, beside oneDNN's bf16 GEMM in the same run (Intel CPUs with AMX).

The roofline (`benchmarks/roofline.py`, `bench_roofline.py`) takes oneDNN's best bf16 GEMM on the ViT-B's shapes as
the machine's peak. This measures the tiles themselves (`benchmarks/c/amx_tiles.c`, built here with ``cc``):
TDPBF16PS with its operands kept in tiles (the tiles' peak), with both right-hand tiles loaded every step from areas
of growing size (a head's keys or values: where they stop fitting in L2), with the tile stores and loads that
`geosam/models/cpu_attention512.c`'s AMX attention makes around its products (a 32 x 32 block of scores stored every
second step, into a small or a large area; the probabilities read back from a 512 KiB one), and a K-blocked GEMM's
inner loop (A from a 16 KiB block, B streaming, partial sums loaded and stored every 8 steps). Every case on random
bf16 operands and on zeros (session 41 measured zeros only: they run faster, up to 1.3-1.8x with B from L2). Each
case the median of ``--repeats`` runs of 20 M products; oneDNN's GEMM (`roofline.matmul_flops_per_s`) before and
after.

Then whether the tiles' work and AVX-512 vector work run side by side (`benchmarks/c/amx_overlap.c`): the attention's
QK pass of a block of 32 queries over 4096 keys (its tile instructions, with and without their loads and stores, and
in a transposed form) and its vector work on the scores (relative terms, the rows' maxima), each alone, one after the
other a step and spread between each other; ``hidden`` is the share of the smaller of the two that the combined run
did not add (1: fully side by side, 0: one after the other).

    .venv/bin/python benchmarks/bench_amx_tiles.py [--repeats 3] [--out PATH]

Writes ``benchmarks/results/amx_tiles.json`` (nothing on CPUs without AMX or without a C compiler: it says so).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from _machine import machine
from roofline import matmul_flops_per_s

from geosam.models.device import cpu_flags

SOURCE = Path(__file__).with_name("c") / "amx_tiles.c"
OVERLAP_SOURCE = SOURCE.with_name("amx_overlap.c")
OUT = ROOT / "benchmarks" / "results" / "amx_tiles.json"
KIB = 1024

#: name -> (mode, bytes of the right-hand area, bytes of the store area); see amx_tiles.c
CASES = {
    "operands_in_tiles": (0, 4 * KIB, 4 * KIB),
    "b_loaded_from_16_kib": (1, 16 * KIB, 4 * KIB),
    "b_loaded_from_512_kib": (1, 512 * KIB, 4 * KIB),
    "b_loaded_from_1_mib": (1, 1024 * KIB, 4 * KIB),
    "b_loaded_from_1_5_mib": (1, 1536 * KIB, 4 * KIB),
    "b_loaded_from_2_mib": (1, 2048 * KIB, 4 * KIB),
    "b_loaded_from_8_mib": (1, 8192 * KIB, 4 * KIB),
    "scores_stored_into_4_kib": (2, 512 * KIB, 4 * KIB),
    "scores_stored_into_64_kib": (2, 512 * KIB, 64 * KIB),
    "scores_stored_into_512_kib": (2, 512 * KIB, 512 * KIB),
    "scores_stored_and_a_read_from_512_kib": (3, 512 * KIB, 512 * KIB),
    "gemm_loop_b_from_128_kib": (4, 128 * KIB, 32 * KIB),
    "gemm_loop_b_from_512_kib": (4, 512 * KIB, 128 * KIB),
    "gemm_loop_b_from_1_mib": (4, 1024 * KIB, 128 * KIB),
}

#: name -> amx_overlap.c's TCASE
OVERLAP_CASES = {
    "products_only": 0,
    "products_and_tile_loads": 1,
    "products_and_tile_stores_to_l1": 2,
    "loads_products_stores_to_l1": 3,
    "the_kernels_qk_pass": 4,
    "transposed_qk_pass": 5,
}


def overlap(cc: str, tmp: Path, repeats: int) -> dict[str, dict[str, float]]:
    """amx_overlap.c's four timings (microseconds a block) per case, medians of ``repeats`` runs in turn."""
    exes = {}
    for name, case in OVERLAP_CASES.items():
        exes[name] = tmp / f"amx_overlap_{case}"
        subprocess.run([cc, "-O2", f"-DTCASE={case}", str(OVERLAP_SOURCE), "-o", str(exes[name])], check=True)
    runs: dict[str, list[list[float]]] = {name: [] for name in OVERLAP_CASES}
    for _ in range(repeats):
        for name, exe in exes.items():
            out = subprocess.run([str(exe), "5"], check=True, capture_output=True, text=True).stdout.split()
            runs[name].append([float(x) for x in out[:4]])
    result = {}
    for name, rs in runs.items():
        tiles, vector, both, spread = (statistics.median(r[i] for r in rs) for i in range(4))
        result[name] = {
            "tiles_us": round(tiles, 2),
            "vector_us": round(vector, 2),
            "both_us": round(both, 2),
            "both_spread_us": round(spread, 2),
            "hidden": round((tiles + vector - both) / min(tiles, vector), 3),
            "hidden_spread": round((tiles + vector - spread) / min(tiles, vector), 3),
        }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "amx_bf16" not in cpu_flags():
        print("no AMX on this CPU: nothing measured")
        return 0
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        print("no C compiler: nothing measured")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "amx_tiles"
        subprocess.run([cc, "-O2", str(SOURCE), "-o", str(exe)], check=True)
        gemm_before = matmul_flops_per_s(torch.bfloat16)
        runs: dict[str, list[float]] = {name: [] for name in CASES}
        zeros: dict[str, list[float]] = {name: [] for name in CASES}
        ns: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.repeats):  # the cases in turn, repeated: each sees the machine's moments alike
            for name, (mode, size, stores) in CASES.items():
                for data, into in ((1, runs), (0, zeros)):
                    out = subprocess.run([str(exe), str(mode), str(size), str(stores), str(data)], check=True,
                                         capture_output=True, text=True).stdout.split()  # fmt: skip
                    into[name].append(float(out[0]))
                    if data:
                        ns[name].append(float(out[1]))
        gemm_after = matmul_flops_per_s(torch.bfloat16)
        side_by_side = overlap(cc, Path(tmp), args.repeats)
    gflops = {name: round(statistics.median(v), 1) for name, v in runs.items()}
    gflops_zeros = {name: round(statistics.median(v), 1) for name, v in zeros.items()}
    peak = gflops["operands_in_tiles"]
    gemm = round(statistics.median([g["flops_per_s"] / 1e9 for g in (gemm_before, gemm_after)]), 1)
    result = {
        **machine(1, args.note),
        "products": "TDPBF16PS, 16 x 16 x 32 bf16 -> float32; 20 M a run; median of the runs",
        "gflop_per_s": gflops,
        "ns_per_product": {name: round(statistics.median(v), 3) for name, v in ns.items()},
        "runs_gflop_per_s": runs,
        "fraction_of_tile_peak": {name: round(v / peak, 3) for name, v in gflops.items()},
        "operands": "random bf16 numbers (amx_tiles.c DATA 1); the same cases on operands of zeros below, as session 41 "
        "measured them (faster: not what a model's numbers get)",
        "gflop_per_s_zero_operands": gflops_zeros,
        "runs_gflop_per_s_zero_operands": zeros,
        "fraction_of_tile_peak_zero_operands": {
            name: round(v / gflops_zeros["operands_in_tiles"], 3) for name, v in gflops_zeros.items()
        },
        "onednn_bf16_gemm_gflop_per_s": gemm,
        "onednn_bf16_gemm_per_shape_gflop_per_s": {k: round(v / 1e9, 1) for k, v in gemm_after["per_shape"].items()},
        "onednn_gemm_fraction_of_tile_peak": round(gemm / peak, 3),
        "overlap": "amx_overlap.c: microseconds a block of 32 queries x 4096 keys (heads of 64), medians; hidden: "
        "(tiles + vector - both) / min(tiles, vector)",
        "overlap_us": side_by_side,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "gflop_per_s", "onednn_bf16_gemm_gflop_per_s", "overlap_us")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
