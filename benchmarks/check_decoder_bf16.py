"""How far SAM's mask decoder with its attentions in bf16 moves segment-everything's masks from float32's (one check,
not a speed race): what moving the decoder's score and softmax kernels onto bf16 products (AMX tiles) would cost in
mask agreement, before anyone writes them.

transformers' own decoder (geosam's fast decoder off) behind geosam's float32 encoder, a full-size random ViT-B with
smooth, prompt-dependent masks (`bench_amg.build_sane_random_sam`), ``--grid`` x ``--grid`` points, SAM's thresholds,
NMS off (box_nms_thresh 1.0, as bench_amg's agreement pass), on ``--chips`` chips of ``data/banepa_predict.tif``. The
variant replaces every `SamAttention`'s attention (the two-way transformer's and the final one) by the same attention
on bf16 inputs with float32 sums, as bf16 products on AMX tiles run it: q, k and v rounded to bf16, the softmax's
numerators exp(s - max) rounded to bf16, their sum and the normalisation in float32. Agreement as bench_amg measures
it (`bench_amg.agreement` and `summarise`: masks matched at IoU >= 0.9 each way, pooled over the chips, the
smaller of the two fractions). Writes ``--out``.

    python benchmarks/check_decoder_bf16.py --threads 2 --out benchmarks/results/decoder_bf16_attention.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def bf16_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager SAM attention with bf16 inputs and float32 sums (see the module docstring)."""
    s = torch.matmul(_bf16(query), _bf16(key).transpose(2, 3)) * scaling
    if attention_mask is not None:
        s = s + attention_mask
    e = torch.exp(s - s.amax(-1, keepdim=True))
    weights = _bf16(e) / e.sum(-1, keepdim=True)
    return torch.matmul(weights, _bf16(value)).transpose(1, 2).contiguous(), weights


def main() -> None:
    import transformers.models.sam.modeling_sam as ms
    from _alternate import parse_and_set_up
    from _machine import machine
    from bench_amg import agreement, build_sane_random_sam, load_chips, summarise

    from geosam.models import load_model
    from geosam.segment import SamMaskGenerator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--chips", type=int, default=4, help="chips of the scene (max 4)")
    args = parse_and_set_up(ap, "decoder_bf16_attention.json")
    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        bundle = dataclasses.replace(load_model(tmp, device="cpu", dtype="float32"), fast_decoder=False)
    gen = SamMaskGenerator(bundle, points_per_side=args.grid, points_per_batch=64, pred_iou_thresh=0.88,
                           stability_score_thresh=0.95, box_nms_thresh=1.0)  # fmt: skip
    interface = ms.ALL_ATTENTION_FUNCTIONS
    real = interface.get_interface
    per_chip = []
    try:
        for i, chip in enumerate(load_chips(args.chips, 1024)):
            t = time.perf_counter()
            interface.get_interface = real
            a = gen.generate(chip).masks
            interface.get_interface = lambda impl, default: bf16_attention
            b = gen.generate(chip).masks
            matched_a, matched_b = agreement(a, b)
            per_chip.append({"float32_masks": len(a), "bf16_masks": len(b), "float32_matched": matched_a,
                             "bf16_matched": matched_b, "seconds": round(time.perf_counter() - t, 1)})  # fmt: skip
            print(f"chip {i}: {json.dumps(per_chip[-1])}", flush=True)
    finally:
        interface.get_interface = real
    # bench_amg's measure, the bf16 variant in the place of geosam's masks and float32 in the pipeline's
    pooled = summarise(
        *(sum(c[k] for c in per_chip) for k in ("bf16_matched", "float32_matched", "bf16_masks", "float32_masks"))
    )
    out = {**machine(args.threads, args.note), "grid": args.grid, "chips": per_chip, "pooled": pooled,
           "mask_agreement": pooled["mask_agreement"]}  # fmt: skip
    print(json.dumps(pooled))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
