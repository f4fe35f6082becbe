"""LiteMedSAM's TinyViT encoder: the fused CPU path against the module, in float32 and bf16, with FLOPs and the peak.

Variants, on the same 256 x 256 input from the shipped solaris scene (one crop, as the offline demo's windows), under
inference mode with glibc's thresholds raised as `geosam.models.encode` runs them
(`geosam.models.cpu_memory.keep_freed_memory`), alternating ``--rounds`` times after one warm-up call each:

* ``fused_float32`` / ``fused_bf16``: `geosam.models.fast_tinyvit.fast_tinyvit_embeddings` (what ``encode`` runs on
  the CPU: oneDNN's products with the GELU or the residual fused, the window attention fused, bands of rows in the
  first stage);
* ``module_float32`` / ``module_bf16``: the encoder as loaded (BatchNorms folded, channels-last) through its own
  forward, bf16 under autocast (what ``encode`` ran before);
* ``unfolded_float32``: the checkpoint's layout (BatchNorms kept, NCHW), the module's forward.

Each variant's embedding is compared with ``module_float32`` (max and mean relative difference). FLOPs are counted
once (`roofline.flop_counter`, the module in float32) and the matmul peak measured in each dtype before and after
(`roofline.matmul_flops_per_s`), so the results say what fraction of the peak each variant reaches. Writes
``benchmarks/results/tinyvit.json``.

Usage: ``python benchmarks/bench_tinyvit.py [--threads N] [--rounds R] [--note TEXT]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

SCENE = ROOT / "data" / "solaris_pan_uint16.tif"
OUT = ROOT / "benchmarks" / "results" / "tinyvit.json"


def _input(bundle) -> torch.Tensor:
    import rasterio

    from geosam.models import preprocess
    from geosam.read.stretch import stretch_to_uint8

    with rasterio.open(SCENE) as ds:
        band = ds.read(1, window=((200, 456), (200, 456)))
    lo, hi = np.percentile(band, [2, 98])
    img = stretch_to_uint8(band[None], np.ones(band.shape, dtype=bool), np.array([[lo, hi]]))
    return preprocess(bundle, [img])[0]


def _unfolded_encoder() -> torch.nn.Module:
    """The checkpoint's encoder weights in a TinyViTEncoder, BatchNorms kept, NCHW (the layout before the change)."""
    from geosam.models.litemedsam import build_model

    return build_model(inference_layout=False).vision_encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import dataclasses

    from roofline import flop_counter, matmul_flops_per_s

    from geosam.models import encode, load_model
    from geosam.models.cpu_memory import keep_freed_memory
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

    keep_freed_memory()

    bundle = load_model("litemedsam", device="cpu", dtype="float32")
    pv = _input(bundle)
    unfolded = _unfolded_encoder()
    module = dataclasses.replace(bundle, fast_encoder=False)
    module_bf16 = dataclasses.replace(module, dtype=torch.bfloat16)
    variants = {
        "fused_float32": lambda: fast_tinyvit_embeddings(bundle.model, pv, torch.float32),
        "fused_bf16": lambda: fast_tinyvit_embeddings(bundle.model, pv, torch.bfloat16),
        "module_float32": lambda: encode(module, pv),
        "module_bf16": lambda: encode(module_bf16, pv),
        "unfolded_float32": lambda: unfolded(pv)[0],
    }
    peak_before = {str(dt): matmul_flops_per_s(dt)["flops_per_s"] for dt in (torch.float32, torch.bfloat16)}
    with torch.inference_mode():
        out = {name: fn().float() for name, fn in variants.items()}  # warm-up, and the embeddings compared
        with flop_counter() as fc:
            encode(module, pv)
        flops = fc.get_total_flops()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(round(time.perf_counter() - t0, 4))
    peak_after = {str(dt): matmul_flops_per_s(dt)["flops_per_s"] for dt in (torch.float32, torch.bfloat16)}
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ref = out["module_float32"]
    diff = {name: {"max_rel": float((o - ref).abs().max() / ref.abs().max()),
                   "mean_rel": float((o - ref).abs().mean() / ref.abs().mean())} for name, o in out.items()}
    dtype_of = {name: "torch.bfloat16" if name.endswith("bf16") else "torch.float32" for name in variants}
    result = {
        **machine(args.threads, args.note),
        "input": f"{SCENE.name} rows/cols 200-456, 2-98 % stretch, as LiteMedSAM's 256 x 256 input",
        "gflop_per_encode": round(flops / 1e9, 2),
        "matmul_peak_gflop_per_s": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "seconds_per_encode": times,
        "median_s": med,
        "gflop_per_s": {name: round(flops / m / 1e9, 1) for name, m in med.items()},
        "fraction_of_peak": {name: round(flops / m / peak[dtype_of[name]], 3) for name, m in med.items()},
        "speedup_fused_vs_module": {
            "float32": round(med["module_float32"] / med["fused_float32"], 3),
            "bf16": round(med["module_bf16"] / med["fused_bf16"], 3),
        },
        "speedup_fused_bf16_vs_module_float32": round(med["module_float32"] / med["fused_bf16"], 3),
        "speedup_module_vs_unfolded_float32": round(med["unfolded_float32"] / med["module_float32"], 3),
        "difference_vs_module_float32": diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "threads", "median_s", "fraction_of_peak", "speedup_fused_vs_module",
                                             "difference_vs_module_float32")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
