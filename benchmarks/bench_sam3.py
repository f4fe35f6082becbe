"""SAM 3 text mode on the CPU: a full-size random-weight SAM 3 per chip in float32 and in bf16 (autocast).

Until session 38 geosam ran SAM 3's backbone and detector in float32 whatever ``dtype`` said (the other families ran
their encoder under autocast). This script times what a text-mode chip costs in each dtype and how far bf16 moves
the outputs, on transformers' default ``Sam3Config()`` (seed 0: 840 M parameters, a 32-layer ViT at 1008 px) saved
with a small CLIP tokenizer, on 1008 px chips of the shipped Banepa scene, two phrases:

* ``backbone_s``: `geosam.models.sam3.vision_features` (the ViT and its FPN);
* ``detector_s``: `geosam.models.sam3.detect` (DETR encoder and decoder, mask decoder) for the two phrases;
* with ``--module-vit`` also ``<dtype>_module_vit``: the ViT as transformers' module (``fast_encoder=False``), as
  geosam ran it before session 39 (`geosam.models.fast_sam3_vit` since);
* with ``--torch-attention`` also ``<dtype>_torch_attention``: the ViT's and the DETR encoder's self-attention as
  torch's fused attention (before session 40; geosam's attention kernel since: the ViT's in float32 on AVX-512 CPUs
  and in bf16 on AMX ones, `geosam.models.fast_sam3_vit`; the DETR encoder's in bf16 on AMX,
  `geosam.models.sam3_attention`) and the DETR decoder's vision cross-attention as torch's on the box bias's matrix
  (before session 44; in bf16 on AMX `geosam.models.cpu_bias_attention.rowcol_attention` on its terms since),
  bf16's with its own agreement to float32; ``vit_attention_s``: the backbone's
  seconds in the ViT's attention (the kernel with its in-place rotations, or the rotations and torch's attention);
* with ``--stock-detector`` also ``<dtype>_stock_detector``: the detector's modules with transformers' own forwards
  (before session 41; `geosam.models.sam3_detector` since: the box bias, fused MLPs, encoder layers), its outputs
  compared bit for bit with the replacements' (``stock_detector_equal``: the replacements' outputs from one more,
  untimed run with the decoder's vision cross-attention as torch's, the one replacement that is not the same bits).

Variants alternate chip by chip for ``--rounds`` rounds. Random weights: the detector's scores mean nothing, so the
agreement is numerical: the bf16 backbone's features and the detector's logits against float32's (max relative
difference), and each query's mask (``pred_masks`` > 0, the model's 288 px masks) against float32's (IoU; agreement:
the share at IoU >= 0.9, `bench_amg`'s count). No real SAM 3 weights are reachable here, so how bf16 changes real
detections is not measured. Writes ``benchmarks/results/sam3.json``.

Usage: ``python benchmarks/bench_sam3.py [--threads N] [--rounds R] [--chips C] [--out PATH]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

OUT = ROOT / "benchmarks" / "results" / "sam3.json"
PHRASES = ["building", "tree"]


def _save_model(out: str) -> None:
    from transformers import Sam3Config, Sam3Model

    from geosam.models.sam3 import write_clip_tokenizer

    torch.manual_seed(0)
    Sam3Model(Sam3Config()).eval().save_pretrained(out)
    write_clip_tokenizer(out, merges=["b u", "i l", "d i", "n g", "t r", "e e"])
    size = 1008
    (Path(out) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam3ImageProcessorFast", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "rescale_factor": 1 / 255, "size": {"height": size, "width": size}}))


def _mask_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Per query mask IoU of ``a > 0`` and ``b > 0`` (P, Q, h, w): (mean IoU, share at IoU >= 0.9)."""
    x, y = (a > 0).flatten(2), (b > 0).flatten(2)
    inter, union = (x & y).sum(-1).float(), (x | y).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean()), float((iou >= 0.9).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chips", type=int, default=1)
    ap.add_argument("--note", default="")
    ap.add_argument("--module-vit", action="store_true",
                    help="also each dtype with the ViT as transformers' module (fast_encoder=False)")
    ap.add_argument("--torch-attention", action="store_true",
                    help="also bf16 with the ViT's and the DETR encoder's attention as torch's (before session 40)")
    ap.add_argument("--stock-detector", action="store_true",
                    help="also each dtype with the detector's modules as transformers runs them (before session 41)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bench_amg import load_chips

    import geosam.models.fast_sam3_vit as fs
    import geosam.models.sam3_attention as sa
    import geosam.models.sam3_detector as sd
    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import detect, encode_text, vision_features

    chips = load_chips(args.chips, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        _save_model(tmp)
        b32 = load_model(tmp, device="cpu", dtype="float32")
    bundles = {"float32": b32, "bfloat16": dataclasses.replace(b32, dtype=torch.bfloat16)}
    if args.module_vit:  # the ViT as transformers' module runs it (before session 39), in the same rounds
        bundles["float32_module_vit"] = dataclasses.replace(b32, fast_encoder=False)
        bundles["bfloat16_module_vit"] = dataclasses.replace(b32, dtype=torch.bfloat16, fast_encoder=False)
    if args.torch_attention:  # a copy of the bundle that geosam's attention kernel turns down (the same model)
        bundles["float32_torch_attention"] = dataclasses.replace(b32)
        bundles["bfloat16_torch_attention"] = dataclasses.replace(b32, dtype=torch.bfloat16)
    if args.stock_detector:  # the same model, detected with transformers' forwards (the attention kernel as above)
        bundles["float32_stock_detector"] = dataclasses.replace(b32)
        bundles["bfloat16_stock_detector"] = dataclasses.replace(b32, dtype=torch.bfloat16)
    kernel_detr, kernel_vit, faster = sa.use_fast_detr_attention, fs._kernel_attention, sd.faster_detector
    rowcol = sd.use_rowcol_attention
    torch_attention = [bundles[k] for k in bundles if k.endswith("_torch_attention")]
    stock_detector = [bundles[k] for k in bundles if k.endswith("_stock_detector")]

    vit_attention = [0.0]  # seconds in the ViT's attention (the kernel with its rotations, or rotations + torch's)

    def timed(fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            out = fn(*a, **k)
            vit_attention[0] += time.perf_counter() - t
            return out
        return run

    timed_kernel = timed(kernel_vit)
    fs._rope = timed(fs._rope)
    fs.F = types.SimpleNamespace(**{**vars(fs.F), "scaled_dot_product_attention": timed(
        torch.nn.functional.scaled_dot_product_attention)})  # the ViT's module only

    def kernels_for(b: object) -> None:
        on = not any(b is t for t in torch_attention)
        sa.use_fast_detr_attention = kernel_detr if on else (lambda _: False)
        fs._kernel_attention = timed_kernel if on else (lambda *_: None)
        sd.use_rowcol_attention = rowcol if on else (lambda _: False)
        sd.faster_detector = sa.detr_encoder_attention if any(b is t for t in stock_detector) else faster

    text = encode_text(b32, PHRASES)
    pvs = [preprocess(b32, [c.image])[0] for c in chips]
    parts = ("backbone_s", "detector_s", "vit_attention_s")
    times: dict[str, dict[str, list[float]]] = {k: {part: [] for part in parts} for k in bundles}
    outs: dict[str, list] = {k: [] for k in bundles}
    same_bits: dict[str, list] = {k: [] for k in bundles}  # the replacements without the cross-attention's kernel
    for name, b in bundles.items():  # warm-up
        kernels_for(b)
        detect(b, vision_features(b, pvs[0]), text)
    for r in range(args.rounds):
        for i, pv in enumerate(pvs):
            for name, b in bundles.items():
                kernels_for(b)
                vit_attention[0] = 0.0
                t0 = time.perf_counter()
                vision = vision_features(b, pv)
                t1 = time.perf_counter()
                out = detect(b, vision, text)
                t2 = time.perf_counter()
                times[name]["backbone_s"].append(round(t1 - t0, 3))
                times[name]["detector_s"].append(round(t2 - t1, 3))
                times[name]["vit_attention_s"].append(round(vit_attention[0], 3))
                if r == 0:
                    outs[name].append((vision.fpn_hidden_states[-1].float(), out.pred_logits.float(),
                                       out.pred_masks.float()))
                if r == 0 and any(b is t for t in stock_detector):
                    sd.faster_detector, sd.use_rowcol_attention = faster, (lambda _: False)
                    exact = detect(b, vision, text)
                    same_bits[name].append((None, exact.pred_logits.float(), exact.pred_masks.float()))
    med = {k: {part: statistics.median(v) for part, v in t.items()} for k, t in times.items()}
    def agreement(low: str) -> list[dict[str, float]]:
        rows = []
        for (f32, l32, m32), (f16, l16, m16) in zip(outs["float32"], outs[low]):
            mean_iou, share = _mask_agreement(m16, m32)
            rows.append({
                "backbone_features_max_rel": float((f16 - f32).abs().max() / f32.abs().max()),
                "pred_logits_max_rel": float((l16 - l32).abs().max() / l32.abs().max()),
                "pred_masks_max_rel": float((m16 - m32).abs().max() / m32.abs().max()),
                "query_mask_mean_iou": round(mean_iou, 4),
                "query_mask_agreement_iou_ge_0_9": round(share, 4),
            })
        return rows

    agree = agreement("bfloat16")
    total = {k: v["backbone_s"] + v["detector_s"] for k, v in med.items()}
    result = {
        **machine(args.threads, args.note),
        "model": "transformers Sam3Config() defaults, random weights (seed 0), "
                 f"{sum(p.numel() for p in b32.model.parameters()) / 1e6:.0f} M parameters",
        "chips": f"{len(chips)} chip(s) of 1024 px from data/banepa_predict.tif, resized to 1008 px; "
                 f"phrases {PHRASES}",
        "seconds": times,
        "median_s": med,
        "chip_s": {k: round(v, 3) for k, v in total.items()},
        "speedup_bf16_vs_float32": {
            "backbone": round(med["float32"]["backbone_s"] / med["bfloat16"]["backbone_s"], 3),
            "detector": round(med["float32"]["detector_s"] / med["bfloat16"]["detector_s"], 3),
            "chip": round(total["float32"] / total["bfloat16"], 3),
        },
        "bf16_vs_float32": agree,
        **({"bf16_torch_attention_vs_float32": agreement("bfloat16_torch_attention"),
            "speedup_vs_torch_attention": {dt: {
                part: round(med[f"{dt}_torch_attention"][part] / med[dt][part], 3)
                for part in parts} for dt in ("float32", "bfloat16")}}
           if args.torch_attention else {}),
        **({"speedup_vs_stock_detector": {dt: round(med[f"{dt}_stock_detector"]["detector_s"] / med[dt]["detector_s"], 3)
                                          for dt in ("float32", "bfloat16")},
            "stock_detector_equal": {dt: all(torch.equal(a[i], c[i]) for a, c in zip(same_bits[f"{dt}_stock_detector"],
                                                                                      outs[f"{dt}_stock_detector"])
                                             for i in (1, 2)) for dt in ("float32", "bfloat16")}}
           if args.stock_detector else {}),
        "peak_rss_mib": round(_peak_rss_mib(), 0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "threads", "median_s", "speedup_bf16_vs_float32",
                                             "bf16_vs_float32")}))
    return 0


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    raise SystemExit(main())
