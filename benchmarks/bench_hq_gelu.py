"""SAM-HQ's decode in bf16 with its HQ branch's GELU exact or as ``cpu_gelu.h``'s FAST_GELU (`geosam.models.cpu_hq`'s
``norm_gelu(..., fast=True)``, what the bf16 dtype runs since session 47), alternating in one process.

A full-size random-weight SAM-HQ (`bench_stock_decoder.build`, ``SamHQConfig()``, seed 0) in bf16, one 1024 px chip
of ``data/banepa_predict.tif``, a grid of point prompts decoded with every prompt upscaled (``iou_floor`` off: the
random model's IoU predictions fall below SAM's 0.88, which would leave nothing for the HQ branch to do); also the
kernel alone on one prompt's 256 x 256 x 64 bf16 map, and how many low-resolution mask pixels change side. Writes
``--out``.

Usage::

    python benchmarks/bench_hq_gelu.py --threads 2 --rounds 3 --out benchmarks/results/hq_gelu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from _alternate import alternate_patched, parse_and_set_up
    from _machine import machine
    from bench_amg import load_chips
    from bench_stock_decoder import build

    import geosam.models.cpu_hq as ch
    from geosam.models import decode_points, encode, load_model, preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=16)
    args = parse_and_set_up(ap, "hq_gelu.json")
    with tempfile.TemporaryDirectory() as tmp:
        build("sam_hq", tmp)
        bundle = load_model(tmp, device="cpu", dtype="bfloat16")
    emb = encode(bundle, preprocess(bundle, [load_chips(1, 1024)[0].image])[0])
    xs = (np.arange(args.grid) + 0.5) / args.grid * 1024
    points = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2).astype(np.float32)
    kernel = ch.norm_gelu
    sides = {"exact": lambda x, norm, fast=False: kernel(x, norm, False), "fast": kernel}

    def decode() -> torch.Tensor:
        cache: dict = {}
        out = []
        for s in range(0, len(points), 64):
            out.append(decode_points(bundle, emb, points[s : s + 64], multimask=True, iou_floor=None, cache=cache)[0])
        return torch.cat(out)

    seconds, masks = alternate_patched(ch, "norm_gelu", sides, decode, args.rounds)
    x = (torch.randn((1, 256, 256, 64), generator=torch.Generator().manual_seed(0)) * 2 + 0.3).bfloat16()
    norm = bundle.model.mask_decoder.mask_norm
    alone: dict[str, list[float]] = {"exact": [], "fast": []}
    for _ in range(15):
        for name, times in alone.items():
            t = time.perf_counter()
            z = kernel(x, norm, fast=name == "fast")
            times.append((time.perf_counter() - t) * 1e3)
            assert z is not None, "the HQ kernel does not run here"
    a, b = masks["exact"], masks["fast"]
    med = {name: statistics.median(v) for name, v in seconds.items()}
    out = {
        **machine(args.threads, args.note), "dtype": "bfloat16", "prompts": len(points), "rounds": args.rounds,
        "decode_seconds": seconds, "decode_median_s": med, "fast_over_exact": round(med["fast"] / med["exact"], 3),
        "kernel_alone_ms_one_prompt": {k: round(statistics.median(v), 3) for k, v in alone.items()},
        "mask_pixels": int(a.numel()), "mask_pixels_changed_side": int(((a > 0) ^ (b > 0)).sum()),
    }  # fmt: skip
    print(json.dumps(out, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
