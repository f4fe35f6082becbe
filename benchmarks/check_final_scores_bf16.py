"""How far geosam's fast decoder moves segment-everything's masks when parts of its factored second layer take bf16
products: the final attention's scores and weights' products (on AMX tiles as ``dtype="bfloat16"`` runs them, and
emulated), and the norms' statistics of the image sides it never writes (emulated): one check, not a speed race.

`check_decoder_bf16.py` asked the same of transformers' own decoder (its final attention in bf16: no mask moved; its
two-way attentions: 0.9933). geosam's decoder computes other numbers:
`geosam.models.fast_final.factored_final_attention` forms that attention's scores from factors
(`geosam.models.cpu_heads.final_scores`: the prompts' rows f0, f1 against the image -> token weights p0, p1, the
queries q against two image sides kx, kp, with per-position scales), and
`geosam.models.fast_final.record_side` the layer norms' means and variances from quadratic forms in the weights
(`geosam.models.cpu_decoder.quad`) and projections' dot products (`geosam.models.cpu_heads.proj_dots`). Variants, each
behind geosam's float32 encoder or its bf16 one (``dtype="bfloat16"``), everything not named float32:

* ``*_emulated_scores``: every factor of the scores (f0, f1, p0, p1, q, kx, kp) rounded to bf16 (the float32 kernel on
  rounded inputs: what the AMX kernel computes, summed in another order);
* ``*_final_products_bf16`` / ``bfloat16_emulated``: the scores emulated so and the final attention's softmax products
  (`geosam.models.cpu_weights.softmax_products` there) on bf16 numbers, emulated by its reference with ``bf16``: the
  weights times their scales rounded, the matrices they multiply (the two layers' weights transposed, the first image
  side's values) rounded, the products summed in float64, the softmax's normalisation;
* ``bfloat16``: the bf16 dtype as it runs (the final attention on AMX tiles where the CPU has them);
  ``bfloat16_float32_final``: its final attention on the float32 kernels (before session 52);
* ``*_norms_bf16``: the norms' quadratic forms and projections' dot products on their inputs rounded to bf16 (the Gram
  matrices, the weights, the value rows and projected sides; sums float32), the rest as it runs.

A full-size random ViT-B with smooth, prompt-dependent masks (`bench_amg.build_sane_random_sam`), ``--grid`` x
``--grid`` points, SAM's thresholds, NMS off (box_nms_thresh 1.0, as bench_amg's agreement pass), on ``--chips`` chips
of ``data/banepa_predict.tif``; agreement as bench_amg measures it (`bench_amg.compare`, pooled by `bench_amg.pooled`)
against the all-float32 masks, and the pairs named ``a_vs_b``. Writes ``--out``.

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
    from geosam.models.cpu_heads import amx_available
    from geosam.models.cpu_weights import softmax_products_reference
    from geosam.segment import SamMaskGenerator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--chips", type=int, default=4, help="chips of the scene (max 4)")
    args = parse_and_set_up(ap, "final_scores_bf16.json")
    real, real_products, real_quad, real_dots = ff.final_scores, ff.softmax_products, ff.quad, ff.proj_dots
    calls = {"emulated": 0, "products": 0, "norms": 0}

    def emulated(f, probs, q, keys, c, scales, bf16=False):
        """`final_scores` on its factors rounded to bf16 (sums, scales and c float32), the float32 kernel."""
        calls["emulated"] += 1
        return real(tuple(_bf16(x) for x in f), tuple(_bf16(x) for x in probs), _bf16(q).contiguous(),
                    tuple(_bf16(x) for x in keys), c, scales)  # fmt: skip

    def float32_scores(*a, bf16=False):
        return real(*a[:6])

    def float32_products(*a, bf16=False, **k):
        return real_products(*a, **k)

    def products(s, scale1=None, y=None, want_sum=False, x1=None, scale2=None, x2=None, v=None, bf16=False):
        calls["products"] += 1
        return softmax_products_reference(s, scale1, y, want_sum, x1, scale2, x2, v, bf16=True)

    def quad16(gram, left, right, symmetric=False):
        calls["norms"] += 1
        return real_quad(_bf16(gram), _bf16(left), _bf16(right), symmetric)

    def dots16(v, xw, probs):
        return real_dots(_bf16(v).contiguous(), _bf16(xw), _bf16(probs))

    def patch(scores, prods, norms):
        ff.final_scores, ff.softmax_products = scores, prods
        ff.quad, ff.proj_dots = (quad16, dots16) if norms else (real_quad, real_dots)

    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        bundles = {dtype: load_model(tmp, device="cpu", dtype=dtype) for dtype in ("float32", "bfloat16")}
    gens = {dtype: SamMaskGenerator(b, points_per_side=args.grid, points_per_batch=64, pred_iou_thresh=0.88,
                                    stability_score_thresh=0.95, box_nms_thresh=1.0)
            for dtype, b in bundles.items()}  # fmt: skip
    # variant: (dtype, final_scores, the final attention's softmax_products, the norms' statistics on bf16 inputs)
    variants = {
        "float32_emulated_scores": ("float32", emulated, real_products, False),
        "float32_final_products_bf16": ("float32", emulated, products, False),
        "float32_norms_bf16": ("float32", real, real_products, True),
        "bfloat16": ("bfloat16", real, real_products, False),
        "bfloat16_float32_final": ("bfloat16", float32_scores, float32_products, False),
        "bfloat16_emulated": ("bfloat16", emulated, products, False),
        "bfloat16_norms_bf16": ("bfloat16", real, real_products, True),
    }
    pairs = (("bfloat16", "bfloat16_float32_final"), ("bfloat16", "bfloat16_emulated"),
             ("bfloat16_norms_bf16", "bfloat16"))
    per_chip: dict[str, list[dict]] = {n: [] for n in (*variants, *(f"{a}_vs_{b}" for a, b in pairs))}
    try:
        for i, chip in enumerate(load_chips(args.chips, 1024)):
            ref = gens["float32"].generate(chip).masks
            got = {}
            for name, (dtype, scores, prods, norms) in variants.items():
                patch(scores, prods, norms)
                got[name] = gens[dtype].generate(chip).masks
                patch(real, real_products, False)
                per_chip[name].append(compare([got[name]], [ref]))
            for a, b in pairs:
                per_chip[f"{a}_vs_{b}"].append(compare([got[a]], [got[b]]))
            print(f"chip {i}: " + json.dumps({n: v[-1]["mask_agreement"] for n, v in per_chip.items()}), flush=True)
    finally:
        patch(real, real_products, False)
    assert all(calls.values()), f"a patched piece was never called: nothing checked ({calls})"
    pooled = {v: pool(chips) for v, chips in per_chip.items()}  # as bench_amg pools them
    out = {**machine(args.threads, args.note), "grid": args.grid, "amx_final_scores": amx_available(),
           "calls": calls, "chips": per_chip, "pooled": pooled,
           "mask_agreement": {v: p["mask_agreement"] for v, p in pooled.items()}}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["mask_agreement"]))


if __name__ == "__main__":
    main()
