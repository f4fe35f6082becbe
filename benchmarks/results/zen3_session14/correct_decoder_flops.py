"""Correct the decoder FLOPs of the session-14 runs made before bench_amg counted them right (run 1 at 16 x 16,
the 32 x 32 run): they subtracted the full encoder count (941.7 GFLOP) from a counted pipeline run in which the C
attention kernels hid 941.7 - 733.0 GFLOP of the encoder from the counter (733.0: run 2's
``encoder_gflop_per_chip_counted_with_c_kernels``, the same code). Adds that difference back to ``decoder_gflop``
and recomputes ``decoder_fraction_of_peak`` and the peak bounds. Run once from benchmarks/: python
results/zen3_session14/correct_decoder_flops.py FILE..."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_amg import add_peak_bounds

HIDDEN_GFLOP = 941.7 - 733.0

for name in sys.argv[1:]:
    path = Path(name)
    d = json.loads(path.read_text())
    if d.get("decoder_flops_corrected"):
        continue
    peak = d["matmul_peak_gflop_per_s"]["float32"]
    for grid, g in d["grids"].items():
        f = g["float32"]
        f["decoder_gflop"] = round(f["decoder_gflop"] + HIDDEN_GFLOP * d["settings"].get("chips", 1), 2)
        f["decoder_fraction_of_peak"] = round(f["decoder_gflop"] / f["stage_s"]["decode"] / peak, 3)
        d.setdefault("decoder_fraction_of_peak", {}).setdefault("float32", {})[grid] = f["decoder_fraction_of_peak"]
    d.pop("peak_bounds", None)
    add_peak_bounds(d)
    d["decoder_flops_corrected"] = f"+{HIDDEN_GFLOP:.1f} GFLOP per chip: see correct_decoder_flops.py"
    path.write_text(json.dumps(d, indent=1) + "\n")
    print(path, {g: v["float32"]["decoder_fraction_of_peak"] for g, v in d["grids"].items()}, d["peak_bounds"])
