"""SAM 2's bf16 Hiera encoder on CPUs with AMX, its blocks' attention through geosam's kernel or torch's fused
attention: the kernel took heads of a multiple of 16 numbers only (Hiera-tiny / small: 96), so Hiera-B+ (56) and
Hiera-L (72), SAM 2.1's two larger checkpoints, ran every block's attention in torch.

Full-size random-weight ``Sam2Model`` encoders (`bench_sam2_encoder.SIZES`, seed 0), one 1024 px input; per size the
two paths (``fast_hiera._kernel_attention`` as it is, or returning None: torch's attention on the windows)
alternate ``--rounds`` times in one process after a warm-up (medians kept), and each path's levels are compared with
the float32 module's. Writes ``--out``.

``--pooled``: the second path instead runs the kernel where no queries are pooled and torch for the blocks that pool
them (a stage's first: windows copied out, q pooled by torch, torch's fused attention), as before the kernel pooled
queries itself (session 51): what that change is worth, whole encodes and each pooling block alone
(``pooling_blocks``: short runs alternating, steadier on a noisy host).

Usage::

    python benchmarks/bench_hiera_heads.py --sizes hiera_base_plus hiera_large --threads 2 --rounds 3 \\
        --out benchmarks/results/hiera_heads.json
    python benchmarks/bench_hiera_heads.py --pooled --sizes default_config hiera_base_plus --threads 1 \\
        --out benchmarks/results/hiera_pooling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.float() - b.float()).norm() / b.float().norm()), 7)


def _pooling_blocks(fh, model, x: torch.Tensor, paths: dict, rounds: int) -> list[dict]:
    """Each query-pooling block's attention with its projections (``fast_hiera._attention`` on the block's own input,
    captured from one encode) under each path, alternating ``5 rounds + 2`` times, medians in ms: short runs, so the
    host's slow swings (a whole encode moved 1.6-3.1 s between rounds here) fall on both paths alike."""
    caps, attention = [], fh._attention

    def capture(t, blk, wt, h, w):
        if blk.query_stride:
            caps.append((t.clone(), blk, wt, h, w))
        return attention(t, blk, wt, h, w)

    fh._attention = capture
    try:
        fh.fast_sam2_embeddings(model, x, torch.bfloat16)
    finally:
        fh._attention = attention
    kernel, out = fh._kernel_attention, []
    try:
        for t, blk, wt, h, w in caps:
            times: dict[str, list[float]] = {name: [] for name in paths}
            for r in range(5 * rounds + 3):
                for name, path in paths.items():
                    fh._kernel_attention = path
                    start = time.perf_counter()
                    fh._attention(t, blk, wt, h, w)
                    if r:  # round 0: warm-up
                        times[name].append(time.perf_counter() - start)
            out.append({"map": [h, w], "window": blk.window_size, "heads": blk.attn.num_attention_heads,
                        "dim": [blk.dim, blk.dim_out],
                        **{f"{name}_ms": round(1e3 * statistics.median(v), 2) for name, v in times.items()}})  # fmt: skip
    finally:
        fh._kernel_attention = kernel
    return out


def main() -> None:
    from _alternate import alternate_patched, parse_and_set_up
    from _machine import machine
    from bench_sam2_encoder import SIZES, build

    import geosam.models.fast_hiera as fh
    from geosam.models.cpu_attention import amx_available, takes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["hiera_base_plus", "hiera_large"], choices=list(SIZES))
    ap.add_argument("--pooled", action="store_true", help="torch only for the blocks that pool their queries")
    args = parse_and_set_up(ap, "hiera_heads.json")
    x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(0))
    kernel = fh._kernel_attention
    paths = {"kernel": kernel, "torch": lambda *a: None}
    if args.pooled:
        paths = {"kernel": kernel, "torch": lambda x, blk, *a: None if blk.query_stride else kernel(x, blk, *a)}
    results: dict[str, object] = {}
    for size in args.sizes:
        model = build(size)
        with torch.inference_mode():
            want = model.get_image_embeddings(x)
        heads = sorted({b.attn.dim_out // b.attn.num_attention_heads for b in model.vision_encoder.backbone.blocks})
        seconds, outs = alternate_patched(fh, "_kernel_attention", paths,
                                          lambda model=model: fh.fast_sam2_embeddings(model, x, torch.bfloat16),
                                          args.rounds)  # fmt: skip
        med = {name: statistics.median(v) for name, v in seconds.items()}
        results[size] = {
            "head_dims": heads,
            "kernel_takes_them": [takes(torch.bfloat16, d) for d in heads],
            "seconds": seconds,
            "median_s": med,
            "kernel_over_torch": round(med["kernel"] / med["torch"], 3),
            "relative_distance_to_float32_by_level": {
                name: [_relative(o, w) for o, w in zip(out, want, strict=True)] for name, out in outs.items()
            },
        }
        if args.pooled:
            results[size]["pooling_blocks"] = _pooling_blocks(fh, model, x, paths, args.rounds)
        print(size, json.dumps(results[size]), flush=True)
        del model
    out = {**machine(args.threads, args.note), "dtype": "bfloat16", "amx": amx_available(),
           "torch_path": "the blocks that pool their queries" if args.pooled else "every block",
           "input": "random 1 x 3 x 1024 x 1024, seed 0", "rounds": args.rounds, "sizes": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
