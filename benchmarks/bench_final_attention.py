"""The bf16 decoder's final attention on AMX tiles against its float32 kernels, call by call inside a real
segment-everything decode (Intel Xeon with AMX; elsewhere the script says so and stops).

Whole decodes move with this host by more than the final attention's share (~13 % of a bf16 decode), so each piece
is timed on the calls the decoder really makes: `geosam.models.fast_final`'s ``final_scores`` (the factored scores,
`geosam.models.cpu_heads.final_scores` with and without ``bf16``) and ``softmax_products`` (the weights' products,
`geosam.models.cpu_weights.softmax_products`) are wrapped so that every call runs both kernels on the same inputs,
their order alternating from call to call, and the decode goes on with the bf16 result. The same run records the
largest difference of the AMX results from the references on their bf16 numbers (relative to each output's largest). A
full-size random ViT-B (`bench_amg.build_sane_random_sam`), ``dtype="bfloat16"``, one chip of
``data/banepa_predict.tif``, ``--grid`` x ``--grid`` points, SAM's thresholds; ``--rounds`` generates (every call
of each counted). Writes ``--out``.

    python benchmarks/bench_final_attention.py --threads 1 --out benchmarks/results/final_attention_1thread.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from _alternate import parse_and_set_up
    from _machine import machine
    from bench_amg import build_sane_random_sam, load_chips

    import geosam.models.fast_final as ff
    from geosam.models import cpu_heads, cpu_weights, load_model
    from geosam.segment import SamMaskGenerator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=32)
    args = parse_and_set_up(ap, "final_attention.json")
    if not (cpu_heads.amx_available() and cpu_weights.amx_available()):
        print("no AMX final attention on this machine: nothing to compare")
        return
    real, real_products = ff.final_scores, ff.softmax_products
    seconds = {"scores_amx": 0.0, "scores_float32": 0.0, "products_amx": 0.0, "products_float32": 0.0}
    calls, prompts = [0], [0]
    worst = {"scores": 0.0, "products": 0.0}

    def paired(f, probs, q, keys, c, scales, bf16=False):
        order = (True, False) if calls[0] % 2 == 0 else (False, True)
        got = {}
        for amx in order:
            t = time.perf_counter()
            got[amx] = real(f, probs, q, keys, c, scales, amx)
            seconds["scores_amx" if amx else "scores_float32"] += time.perf_counter() - t
        want = cpu_heads.final_scores_reference(f, probs, q, keys, c, scales, bf16=True)
        worst["scores"] = max(worst["scores"], float((got[True] - want).abs().max() / want.abs().max()))
        calls[0] += 1
        prompts[0] += q.shape[0]
        return got[True]

    def paired_products(s, scale1=None, y=None, want_sum=False, x1=None, scale2=None, x2=None, v=None, bf16=False):
        order = (True, False) if calls[0] % 2 == 0 else (False, True)
        got = {}
        for amx in order:
            scores = s if amx else s.clone()  # the float32 kernel writes over its scores; the AMX one only reads them
            t = time.perf_counter()
            got[amx] = real_products(scores, scale1, y, want_sum, x1, scale2, x2, v, bf16=amx)
            seconds["products_amx" if amx else "products_float32"] += time.perf_counter() - t
        want = cpu_weights.softmax_products_reference(s, scale1, y, want_sum, x1, scale2, x2, v, bf16=True)
        for a, b in zip(got[True], want, strict=True):
            if a is not None and b is not None:
                worst["products"] = max(worst["products"], float((a - b).abs().max() / b.abs().max()))
        return got[True]

    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        bundle = load_model(tmp, device="cpu", dtype="bfloat16")
    gen = SamMaskGenerator(bundle, points_per_side=args.grid)
    chip = load_chips(1, 1024)[0]
    gen.generate(chip)  # warm-up: libraries built, caches filled
    ff.final_scores, ff.softmax_products = paired, paired_products
    try:
        for _ in range(args.rounds):
            gen.generate(chip)
    finally:
        ff.final_scores, ff.softmax_products = real, real_products
    per_prompt = {k: round(v / prompts[0] * 1e3, 4) for k, v in seconds.items()}
    out = {**machine(args.threads, args.note), "grid": args.grid, "rounds": args.rounds, "calls": calls[0],
           "prompts": prompts[0], "seconds": {k: round(v, 4) for k, v in seconds.items()}, "ms_per_prompt": per_prompt,
           "ratio_scores_amx_vs_float32": round(seconds["scores_amx"] / seconds["scores_float32"], 4),
           "ratio_products_amx_vs_float32": round(seconds["products_amx"] / seconds["products_float32"], 4),
           "ratio_both_amx_vs_float32": round((seconds["scores_amx"] + seconds["products_amx"])
                                              / (seconds["scores_float32"] + seconds["products_float32"]), 4),
           "max_relative_diff_amx_vs_bf16_reference": worst}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
