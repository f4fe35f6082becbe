"""LiteMedSAM's TinyViT encoder as loaded (BatchNorms folded, channels-last weights) against the same weights unfolded.

Both encoders run the current ``TinyViTEncoder.forward`` (channels-last input, GELU in place without gradients) on
the same 256 x 256 input from the shipped solaris scene, under inference mode with glibc's thresholds raised as
`geosam.models.encode` runs them (`geosam.models.cpu_memory.keep_freed_memory`); the reference keeps its BatchNorms and NCHW weights (the
layout of the checkpoint). They alternate, ``--rounds`` times each, after one warm-up call, and the embeddings are
compared. Writes ``benchmarks/results/tinyvit.json`` (CPU, threads, seconds per encode, ratio, max relative
difference).

Usage: ``python benchmarks/bench_tinyvit.py [--threads N] [--rounds R] [--note TEXT]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name

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

    from geosam.models import load_model
    from geosam.models.cpu_memory import keep_freed_memory

    keep_freed_memory()

    bundle = load_model("litemedsam", device="cpu", dtype="float32")
    pv = _input(bundle)
    encoders = {"as_loaded": bundle.model.vision_encoder, "unfolded_nchw": _unfolded_encoder()}
    with torch.inference_mode():
        out = {name: enc(pv)[0] for name, enc in encoders.items()}  # warm-up, and the embeddings compared
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.rounds):
            for name, enc in encoders.items():
                t0 = time.perf_counter()
                enc(pv)
                times[name].append(round(time.perf_counter() - t0, 4))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ref = out["unfolded_nchw"]
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "note": args.note,
        "input": f"{SCENE.name} rows/cols 200-456, 2-98 % stretch, as LiteMedSAM's 256 x 256 input",
        "seconds_per_encode": times,
        "median_s": med,
        "speedup_as_loaded_vs_unfolded": round(med["unfolded_nchw"] / med["as_loaded"], 3),
        "max_rel_diff": float((out["as_loaded"] - ref).abs().max() / ref.abs().max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "threads", "median_s", "speedup_as_loaded_vs_unfolded",
                                             "max_rel_diff")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
