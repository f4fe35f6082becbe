"""How far geosam's fast decoder moves segment-everything's masks when its final attention's factored scores take
bf16 inputs (one check, not a speed race): what computing them as bf16 products on AMX tiles would cost in mask
agreement, before anyone writes that kernel.

`check_decoder_bf16.py` asked the same of transformers' own decoder (its final attention in bf16: no mask moved).
geosam's decoder does not form that attention's keys: `geosam.models.fast_final.factored_final_attention` computes its
scores from factors (`geosam.models.cpu_heads.final_scores`: the prompts' rows f0, f1 against the image -> token
weights p0, p1, and the queries q against two image sides kx, kp, with per-position scales), so bf16 products would
round other numbers. The variant rounds every factor of those products (f0, f1, p0, p1, q, kx, kp) to bf16 and keeps
the sums, scales and everything else in float32, as AMX's products would; both behind geosam's float32 encoder and its
bf16 one (``dtype="bfloat16"``). A full-size random ViT-B with smooth, prompt-dependent masks
(`bench_amg.build_sane_random_sam`), ``--grid`` x ``--grid`` points, SAM's thresholds, NMS off (box_nms_thresh 1.0,
as bench_amg's agreement pass), on ``--chips`` chips of ``data/banepa_predict.tif``; agreement as bench_amg measures
it (`bench_amg.compare`, pooled by `bench_amg.pooled`) against the all-float32 masks, and the bf16 variant against
plain bf16. Writes ``--out``.

    python benchmarks/check_final_scores_bf16.py --threads 2 --out benchmarks/results/final_scores_bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def main() -> None:
    from _alternate import parse_and_set_up
    from _machine import machine
    from bench_amg import build_sane_random_sam, compare, load_chips
    from bench_amg import pooled as pool

    import geosam.models.fast_final as ff
    from geosam.models import load_model
    from geosam.segment import SamMaskGenerator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--chips", type=int, default=4, help="chips of the scene (max 4)")
    args = parse_and_set_up(ap, "final_scores_bf16.json")
    real = ff.final_scores
    calls = [0]

    def rounded(f, probs, q, keys, c, scales):
        """`final_scores` on its factors rounded to bf16 (sums, scales and c float32)."""
        calls[0] += 1
        return real(tuple(_bf16(x) for x in f), tuple(_bf16(x) for x in probs), _bf16(q).contiguous(),
                    tuple(_bf16(x) for x in keys), c, scales)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        bundles = {dtype: load_model(tmp, device="cpu", dtype=dtype) for dtype in ("float32", "bfloat16")}
    gens = {dtype: SamMaskGenerator(b, points_per_side=args.grid, points_per_batch=64, pred_iou_thresh=0.88,
                                    stability_score_thresh=0.95, box_nms_thresh=1.0)
            for dtype, b in bundles.items()}  # fmt: skip
    names = ("float32_final_scores_bf16", "bfloat16", "bfloat16_final_scores_bf16")
    per_chip: dict[str, list[dict]] = {n: [] for n in (*names, "bfloat16_final_scores_bf16_vs_bfloat16")}
    try:
        for i, chip in enumerate(load_chips(args.chips, 1024)):
            ff.final_scores = real
            ref, plain16 = gens["float32"].generate(chip).masks, gens["bfloat16"].generate(chip).masks
            ff.final_scores = rounded
            got32, got16 = gens["float32"].generate(chip).masks, gens["bfloat16"].generate(chip).masks
            ff.final_scores = real
            for name, masks in zip(names, (got32, plain16, got16), strict=True):
                per_chip[name].append(compare([masks], [ref]))
            per_chip["bfloat16_final_scores_bf16_vs_bfloat16"].append(compare([got16], [plain16]))
            print(f"chip {i}: " + json.dumps({n: v[-1]["mask_agreement"] for n, v in per_chip.items()}), flush=True)
    finally:
        ff.final_scores = real
    assert calls[0] > 0, "the fast decoder's final scores were never called: nothing was checked"
    pooled = {v: pool(chips) for v, chips in per_chip.items()}  # as bench_amg pools them
    out = {**machine(args.threads, args.note), "grid": args.grid, "final_scores_calls": calls[0], "chips": per_chip,
           "pooled": pooled, "mask_agreement": {v: p["mask_agreement"] for v, p in pooled.items()}}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["mask_agreement"]))


if __name__ == "__main__":
    main()
