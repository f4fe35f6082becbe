"""SAM 2's image encoder on the CPU: transformers' module (float32, bf16 autocast) against geosam's fused Hiera
(`geosam.models.fast_hiera`), on full-size random-weight models of two sizes: transformers' default ``Sam2Config()``
(Hiera-tiny's layout, geosam's default SAM 2 checkpoint) and Hiera-large's (SAM 2.1's largest).

Per size and dtype the variants alternate ``--rounds`` times on one 1024 px input (best round kept), and the
embeddings' relative difference from the float32 module is recorded for every level (bf16: the fused path's and
autocast's side by side). Writes ``--out``.

Usage::

    python benchmarks/bench_sam2_encoder.py --threads 2 --out benchmarks/results/sam2_encoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {
    "default_config": {},
    "hiera_base_plus": {  # SAM 2.1's base-plus: heads of 56 numbers
        "backbone": {"hidden_size": 112, "blocks_per_stage": [2, 3, 16, 3], "embed_dim_per_stage": [112, 224, 448, 896],
                     "num_attention_heads_per_stage": [2, 4, 8, 16], "global_attention_blocks": [12, 16, 20],
                     "window_size_per_stage": [8, 4, 14, 7], "window_positional_embedding_background_size": [14, 14]},
        "backbone_channel_list": [896, 448, 224, 112],
    },
    "hiera_large": {
        "backbone": {"hidden_size": 144, "blocks_per_stage": [2, 6, 36, 4], "embed_dim_per_stage": [144, 288, 576, 1152],
                     "num_attention_heads_per_stage": [2, 4, 8, 16], "global_attention_blocks": [23, 33, 43],
                     "window_size_per_stage": [8, 4, 16, 8]},
        "backbone_channel_list": [1152, 576, 288, 144],
    },
}


def build(size: str):
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    spec = SIZES[size]
    torch.manual_seed(0)
    if not spec:
        return Sam2Model(Sam2Config()).eval()
    vision = Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**spec["backbone"]),
                              backbone_channel_list=spec["backbone_channel_list"])
    return Sam2Model(Sam2Config(vision_config=vision)).eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.float() - b.float()).norm() / b.float().norm()), 7)


def main() -> None:
    from _machine import machine

    from geosam.models.fast_hiera import fast_hiera_supported, fast_sam2_embeddings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["default_config", "hiera_large"], choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sam2_encoder.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    result: dict = {"env": {**machine(torch.get_num_threads(), args.note), "python": platform.python_version()},
                    "sizes": {}}  # fmt: skip
    x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(0))
    for size in args.sizes:
        model = build(size)
        entry: dict = {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "seconds": {},
                       "relative_difference_from_float32_module": {}}  # fmt: skip
        dtypes = [torch.float32] + ([torch.bfloat16] if fast_hiera_supported(model, torch.bfloat16) else [])

        def stock(dt: torch.dtype, model=model):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
                return model.get_image_embeddings(x)

        want = stock(torch.float32)
        for dt in dtypes:
            name = str(dt).replace("torch.", "")
            runs = {"module": lambda dt=dt: stock(dt), "fused": lambda dt=dt, model=model: fast_sam2_embeddings(model, x, dt)}
            outs = {k: f() for k, f in runs.items()}  # warm-up (weights converted, kernels built)
            best = {k: float("inf") for k in runs}
            for _ in range(args.rounds):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    best[k] = min(best[k], time.perf_counter() - t0)
            entry["seconds"][name] = {k: round(v, 3) for k, v in best.items()}
            entry["seconds"][name]["speedup"] = round(best["module"] / best["fused"], 2)
            entry["relative_difference_from_float32_module"][name] = {
                k: [_relative(o, w) for o, w in zip(out, want, strict=True)] for k, out in outs.items()
            }
            print(size, name, entry["seconds"][name], entry["relative_difference_from_float32_module"][name], flush=True)
        result["sizes"][size] = entry
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
