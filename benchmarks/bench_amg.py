"""Segment-everything benchmark: geosam's SamMaskGenerator vs the transformers mask-generation pipeline.

One run, the same chips, the same weights, the same point grid and thresholds:

(a) ``geosam``: :class:`geosam.amg.SamMaskGenerator` end to end per chip (``dtype="auto"``: bf16 autocast
    on CPUs with AMX and on CUDA; ``--dtype float32`` for full precision);
(b) ``pipeline``: ``transformers.pipeline("mask-generation", model=..., image_processor=SamImageProcessorPil(),
    points_per_batch=64)`` looped over the same chips with ``points_per_crop`` = the same grid;
(c) ``encoder only``: preprocessing + image encoder per chip (the floor of segment-everything).

Chips are cut from the shipped scene ``data/banepa_predict.tif`` (2048 x 2048 RGB uint8) on a 1024 px grid.

Weights. No real SAM checkpoint is reachable offline, so the model is a random-weight ViT-B ``SamConfig``
(``SamVisionConfig()`` defaults: 12 layers, 768 wide; SAM's decoder) built with ``torch.manual_seed(0)``.
Random SAM masks are speckle with near-zero logits, so the weights are changed as follows to keep masks
sane (smooth, prompt-dependent blobs following image colour, ~20 connected components per low-res mask
instead of ~3500; ~50 % pass the stability filter, ~35 % the IoU filter):

* vision ``initializer_range=0.02`` (the default 1e-10 makes every embedding alike);
* the patch embedding kernel is averaged over its 16 x 16 footprint (each patch is seen by its mean colour);
* the neck's 3 x 3 conv kernel is averaged over its footprint (a box smoothing of the embedding);
* both transposed-conv upscaling kernels are averaged over their 2 x 2 footprint (no checkerboard);
* the output-hypernetwork MLPs' last layer is scaled by 20000 (logits of +-40, so stability scores mean
  something);
* the IoU head's last layer weight is doubled and its bias set to 0.88 (predicted IoU spreads around the
  default ``pred_iou_thresh``).

NMS. The pipeline's post-processing imports ``torchvision.ops.batched_nms``; torchvision is not installed in
geosam's venv (torch 2.13 CPU has no matching build), so the reference run patches that one function with
geosam's plain-torch :func:`geosam.amg.batched_nms` (same greedy algorithm). Everything else in the
pipeline is untouched. If torchvision is importable, it is used as is.

Metrics (``benchmarks/results/latest.json``): ``speedup_vs_pipeline`` = pipeline_s / geosam_s;
``mask_agreement`` = min of (fraction of pipeline masks matched by a geosam mask at IoU >= 0.9) and
the reverse; ``overhead_ratio`` = geosam_s / (geosam's encode + decode stage time); ``peak_rss_mib``
is the process's peak after the geosam run (model + geosam), ``peak_rss_mib_after_pipeline`` after both.

    .venv/bin/python benchmarks/bench_amg.py [--chips 2] [--points-per-side 16] [--dtype auto]

Defaults are sized to finish in about 10 minutes on a 2-core CPU (the pipeline dominates).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build_sane_random_sam(encoder_layers: int = 12, seed: int = 0):
    """A random-weight SAM (ViT-B by default) with the mask-sanity changes listed in the module docstring."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    kw = {"initializer_range": 0.02}
    if encoder_layers != 12:
        kw.update(num_hidden_layers=encoder_layers, global_attn_indexes=[encoder_layers - 1])
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SamModel(SamConfig(vision_config=SamVisionConfig(**kw))).eval()
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():
        pe = model.vision_encoder.patch_embed.projection
        pe.weight[:] = pe.weight.mean(dim=(2, 3), keepdim=True)
        nc = model.vision_encoder.neck.conv2
        nc.weight[:] = nc.weight.mean(dim=(2, 3), keepdim=True)
        dec = model.mask_decoder
        for conv in (dec.upscale_conv1, dec.upscale_conv2):
            conv.weight[:] = conv.weight.mean(dim=(2, 3), keepdim=True)
        for mlp in dec.output_hypernetworks_mlps:
            mlp.proj_out.weight *= 20000.0
            mlp.proj_out.bias *= 20000.0
        head = dec.iou_prediction_head.proj_out
        head.weight *= 2.0
        head.bias[:] = 0.88
    return model


def load_chips(n: int, size: int):
    from geosam.io import Scene

    with Scene(str(ROOT / "data" / "banepa_predict.tif")) as sc:
        specs = sc.chip_specs(size, 0)
        chips = [sc.read_chip(s) for s in specs if s.window.width == size and s.window.height == size][:n]
    return chips


def _nms_patch() -> str:
    """Make the pipeline's post-processing work without torchvision; say what was done."""
    try:
        import torchvision  # noqa: F401

        return "torchvision.ops.batched_nms"
    except Exception as exc:  # noqa: BLE001 - missing or broken build
        print(f"torchvision unusable ({type(exc).__name__}); patching the pipeline's NMS")
    import transformers.models.sam.image_processing_pil_sam as ipm

    from geosam.amg import batched_nms

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
        keep = batched_nms(all_boxes.float(), all_scores, torch.zeros(all_boxes.shape[0]), crops_nms_thresh)
        rle = [all_masks[i] for i in keep]
        return [ipm._rle_to_mask(r) for r in rle], all_scores[keep], rle, all_boxes[keep]

    ipm.SamImageProcessorPil.post_process_for_mask_generation = post_process_for_mask_generation
    return "geosam.amg.batched_nms patched in (torchvision not installed)"


def agreement(a: np.ndarray, b: np.ndarray, thresh: float = 0.9) -> tuple[int, int]:
    """(masks of a matched in b, masks of b matched in a) at mask IoU >= thresh."""
    if len(a) == 0 or len(b) == 0:
        return 0, 0
    fa = torch.from_numpy(a.reshape(len(a), -1)).float()
    fb = torch.from_numpy(b.reshape(len(b), -1)).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    iou = inter / union.clamp(min=1)
    return int((iou.max(dim=1).values >= thresh).sum()), int((iou.max(dim=0).values >= thresh).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=2, help="number of 1024 px chips (max 4)")
    ap.add_argument("--chip-size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64, help="geosam's decoder batch")
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--dtype", default="auto", help="geosam's dtype (auto, float32, bfloat16, float16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--encoder-layers", type=int, default=12, help="12 = ViT-B")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    args = ap.parse_args()

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.amg import SamMaskGenerator
    from geosam.model import encode, load_sam, preprocess

    torch.set_grad_enabled(False)
    chips = load_chips(args.chips, args.chip_size)
    model = build_sane_random_sam(args.encoder_layers)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp)
        bundle = load_sam(tmp, device=args.device, dtype=args.dtype)
    device = bundle.device
    settings = {
        "scene": "data/banepa_predict.tif",
        "chips": len(chips),
        "chip_size_px": args.chip_size,
        "points_per_side": args.points_per_side,
        "points_per_batch_geosam": args.points_per_batch,
        "points_per_batch_pipeline": 64,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "geosam_dtype": str(bundle.dtype).replace("torch.", ""),
        "pipeline_dtype": "float32",
        "model": f"random ViT-B SamConfig (encoder layers {args.encoder_layers}), sanity settings in bench_amg.py",
        "threads": torch.get_num_threads(),
    }
    print(f"{len(chips)} chips of {args.chip_size} px, grid {args.points_per_side}^2, geosam dtype {settings['geosam_dtype']}, device {device}")

    # (c) encoder only, geosam's precision (warm-up on the first chip excluded)
    encode(bundle, preprocess(bundle, [chips[0].image[:64, :64]])[0])
    t0 = time.perf_counter()
    for chip in chips:
        encode(bundle, preprocess(bundle, [chip.image])[0])
    encoder_only_s = time.perf_counter() - t0
    print(f"encoder only: {encoder_only_s:.1f} s")

    # (a) geosam end to end
    gen = SamMaskGenerator(
        bundle,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
    )
    t0 = time.perf_counter()
    geo_masks = [gen.generate(chip).masks for chip in chips]
    geosam_s = time.perf_counter() - t0
    rss_geosam = peak_rss_mib()
    timings = dict(gen.timings_s)
    print(f"geosam: {geosam_s:.1f} s, {sum(len(m) for m in geo_masks)} masks, stages {({k: round(v, 2) for k, v in timings.items()})}")

    result: dict = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "settings": settings,
        "geosam_s": round(geosam_s, 3),
        "encoder_only_s": round(encoder_only_s, 3),
        "encode_s": round(timings.get("encode", 0.0), 3),
        "decoder_s": round(timings.get("decode", 0.0), 3),
        "overhead_ratio": round(geosam_s / max(1e-9, timings.get("encode", 0.0) + timings.get("decode", 0.0)), 3),
        "geosam_stage_s": {k: round(v, 3) for k, v in timings.items()},
        "geosam_masks": [len(m) for m in geo_masks],
        "peak_rss_mib": round(rss_geosam, 1),
    }

    # (b) the transformers pipeline, float32 (its default)
    if not args.skip_pipeline:
        from PIL import Image
        from transformers import pipeline

        result["pipeline_nms"] = _nms_patch()
        ref_model = bundle.model
        pipe = pipeline("mask-generation", model=ref_model, image_processor=SamImageProcessorPil(), device=device)
        t0 = time.perf_counter()
        pipe_masks = []
        for chip in chips:
            out = pipe(
                Image.fromarray(chip.image),
                points_per_batch=64,
                points_per_crop=args.points_per_side,
                pred_iou_thresh=args.pred_iou_thresh,
                stability_score_thresh=args.stability_score_thresh,
                crops_nms_thresh=args.box_nms_thresh,
            )
            masks = out["masks"]
            pipe_masks.append(np.stack(masks).astype(bool) if len(masks) else np.zeros((0, *chip.valid.shape), bool))
        pipeline_s = time.perf_counter() - t0
        print(f"pipeline: {pipeline_s:.1f} s, {sum(len(m) for m in pipe_masks)} masks")
        g_in_p = p_in_g = n_g = n_p = 0
        for g, p in zip(geo_masks, pipe_masks):
            a, b = agreement(g, p)
            g_in_p, p_in_g, n_g, n_p = g_in_p + a, p_in_g + b, n_g + len(g), n_p + len(p)
        pipe_matched = p_in_g / n_p if n_p else 1.0
        geo_matched = g_in_p / n_g if n_g else 1.0
        result.update(
            {
                "pipeline_s": round(pipeline_s, 3),
                "speedup_vs_pipeline": round(pipeline_s / geosam_s, 3),
                "pipeline_masks": [len(m) for m in pipe_masks],
                "pipeline_masks_matched_by_geosam": round(pipe_matched, 4),
                "geosam_masks_matched_by_pipeline": round(geo_matched, 4),
                "mask_agreement": round(min(pipe_matched, geo_matched), 4),
                "peak_rss_mib_after_pipeline": round(peak_rss_mib(), 1),
            }
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("geosam end to end (s)", result["geosam_s"]),
        ("  encode / decode (s)", f"{result['encode_s']} / {result['decoder_s']}"),
        ("encoder only (s)", result["encoder_only_s"]),
        ("pipeline (s)", result.get("pipeline_s", "-")),
        ("speedup vs pipeline", result.get("speedup_vs_pipeline", "-")),
        ("mask agreement (min)", result.get("mask_agreement", "-")),
        ("  pipeline masks matched", result.get("pipeline_masks_matched_by_geosam", "-")),
        ("  geosam masks matched", result.get("geosam_masks_matched_by_pipeline", "-")),
        ("overhead ratio", result["overhead_ratio"]),
        ("peak RSS (MiB)", result["peak_rss_mib"]),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
