"""Segment-everything benchmark: geosam's SamMaskGenerator vs the transformers mask-generation pipeline.

One run, the same chips, the same weights, the same point grid and thresholds:

(a) ``geosam``: :class:`geosam.segment.SamMaskGenerator` end to end per chip, at its headline dtype
    (``--dtype auto``: bf16 autocast on CPUs with AMX and on CUDA, fp16 on CUDA) and again in float32
    (skip with ``--no-float32``);
(b) ``pipeline``: ``transformers.pipeline("mask-generation", model=..., image_processor=SamImageProcessorPil(),
    points_per_batch=64)`` looped over the same chips with ``points_per_crop`` = the same grid, float32,
    stock modules (geosam's fast encoder/decoder are separate functions and never patch the model);
(c) ``encoder only``: preprocessing + image encoder per chip, geosam's encoder path at the headline dtype
    (the floor of segment-everything) and the stock float32 forward (the pipeline's);
(d) geosam at the headline dtype with ``torch.compile`` (:func:`geosam.models.compile_bundle`, on a copy of the
    model), after all the other runs: the compiling first chip timed apart, then interleaved with the eager
    headline run (``compiled_speedup_vs_eager``; skip with ``--no-compile``).

Timed variants run interleaved, chip by chip (every variant on chip 1, then on chip 2), after a warm-up, so
that the drifting speed of a shared CPU hits all of them alike and their ratios hold.

(a) and (b) each run twice: with the given thresholds (SAM's defaults: only a handful of masks survive NMS
with these weights, so one flipped mask moves the agreement by ~0.2), and with NMS switched off
(``box_nms_thresh`` = ``crops_nms_thresh`` = 1.0), which compares every mask that passes the predicted-IoU and
stability filters (hundreds per chip): the strong check that geosam's decoding, filtering and upsampling give
the pipeline's masks.

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
geosam's plain-torch :func:`geosam.segment.sam_utils.batched_nms` (same greedy algorithm). Everything else in the
pipeline is untouched. If torchvision is importable, it is used as is.

Metrics (``benchmarks/results/latest.json``): ``speedup_vs_pipeline`` = pipeline_s / geosam_s (given
thresholds, headline dtype; ``speedup_vs_pipeline_float32`` likewise); ``mask_agreement`` = min of (fraction of
pipeline masks matched by a geosam mask at IoU >= 0.9) and the reverse, pooled over both runs (each run's own
figures under ``agreement``); ``overhead_ratio`` = geosam_s / (geosam's encode + decode stage time);
``peak_rss_mib`` is the process's peak after the geosam runs (model + geosam), ``peak_rss_mib_after_pipeline``
after both.

    .venv/bin/python benchmarks/bench_amg.py [--chips 2] [--points-per-side 16] [--dtype auto]

On a GPU machine: ``--device cuda`` (fp16 autocast by ``--dtype auto``); geosam's fast encoder and decoder are
off on CUDA by default (not yet measured there): add ``--fast-paths on`` for a second run that measures them.

Defaults take about 6 minutes on a 2-core CPU (the two pipeline runs dominate).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from geosam.read.scene import Scene

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

    from geosam.segment.sam_utils import batched_nms

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
        keep = batched_nms(all_boxes.float(), all_scores, torch.zeros(all_boxes.shape[0]), crops_nms_thresh)
        rle = [all_masks[i] for i in keep]
        return [ipm._rle_to_mask(r) for r in rle], all_scores[keep], rle, all_boxes[keep]

    ipm.SamImageProcessorPil.post_process_for_mask_generation = post_process_for_mask_generation
    return "geosam.segment.sam_utils.batched_nms patched in (torchvision not installed)"


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


def geosam_runner(bundle, args, box_nms_thresh: float):
    """(generate(chip) -> masks, the generator) for geosam at ``bundle``'s dtype."""
    from geosam.segment import SamMaskGenerator

    gen = SamMaskGenerator(
        bundle,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )
    return (lambda chip: gen.generate(chip).masks), gen


def pipeline_runner(pipe, args, box_nms_thresh: float):
    from PIL import Image

    def run(chip) -> np.ndarray:
        out = pipe(
            Image.fromarray(chip.image),
            points_per_batch=64,
            points_per_crop=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            crops_nms_thresh=box_nms_thresh,
        )
        m = out["masks"]
        return np.stack(m).astype(bool) if len(m) else np.zeros((0, *chip.valid.shape), bool)

    return run


def interleaved(runners: dict, chips) -> tuple[dict[str, float], dict[str, list]]:
    """Run every runner on chip 1, then every runner on chip 2, ...: seconds and results per runner.

    Interleaving puts all variants under the same machine conditions (a shared CPU's speed drifts
    by tens of percent over minutes), so their ratios hold even when absolute times move.
    """
    seconds = {name: 0.0 for name in runners}
    results: dict[str, list] = {name: [] for name in runners}
    for chip in chips:
        for name, run in runners.items():
            t0 = time.perf_counter()
            results[name].append(run(chip))
            seconds[name] += time.perf_counter() - t0
    return seconds, results


def compare(geo: list[np.ndarray], ref: list[np.ndarray]) -> dict:
    g_in_p = p_in_g = n_g = n_p = 0
    for g, p in zip(geo, ref):
        a, b = agreement(g, p)
        g_in_p, p_in_g, n_g, n_p = g_in_p + a, p_in_g + b, n_g + len(g), n_p + len(p)
    return summarise(g_in_p, p_in_g, n_g, n_p)


def summarise(g_in_p: int, p_in_g: int, n_g: int, n_p: int) -> dict:
    pipe_matched = p_in_g / n_p if n_p else 1.0
    geo_matched = g_in_p / n_g if n_g else 1.0
    return {
        "geosam_matched": g_in_p,
        "pipeline_matched": p_in_g,
        "geosam_masks": n_g,
        "pipeline_masks": n_p,
        "pipeline_masks_matched_by_geosam": round(pipe_matched, 4),
        "geosam_masks_matched_by_pipeline": round(geo_matched, 4),
        "mask_agreement": round(min(pipe_matched, geo_matched), 4),
    }


def encoder_runner(bundle):
    from geosam.models import encode, preprocess

    return lambda chip: encode(bundle, preprocess(bundle, [chip.image])[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=2, help="number of 1024 px chips (max 4)")
    ap.add_argument("--chip-size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64, help="geosam's decoder batch")
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--dtype", default="auto", help="geosam's headline dtype (auto, float32, bfloat16, float16)")
    ap.add_argument("--no-float32", action="store_true", help="skip the extra float32 geosam runs")
    ap.add_argument("--no-compile", action="store_true", help="skip the extra torch.compile geosam run")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--fast-paths",
        choices=["auto", "on", "off"],
        default="auto",
        help="geosam's fast encoder/decoder: auto = geosam's defaults (on the CPU), on = also on CUDA (to measure "
        "them on a GPU), off = the stock modules",
    )
    ap.add_argument("--encoder-layers", type=int, default=12, help="12 = ViT-B")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    args = ap.parse_args()

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.models import load_model

    torch.set_grad_enabled(False)
    chips = load_chips(args.chips, args.chip_size)
    model = build_sane_random_sam(args.encoder_layers)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp)
        bundle = load_model(tmp, device=args.device, dtype=args.dtype)
    if args.fast_paths != "auto":
        on = args.fast_paths == "on"
        bundle = dataclasses.replace(bundle, fast_encoder=on, fast_decoder=on)
    device = bundle.device
    bundles = {"headline": bundle}
    if not args.no_float32 and bundle.dtype != torch.float32:
        bundles["float32"] = dataclasses.replace(bundle, dtype=torch.float32)
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
        "agreement_run_box_nms_thresh": 1.0,
        "geosam_dtype": str(bundle.dtype).replace("torch.", ""),
        "pipeline_dtype": "float32",
        "model": f"random ViT-B SamConfig (encoder layers {args.encoder_layers}), sanity settings in bench_amg.py",
        "threads": torch.get_num_threads(),
        "fast_paths": args.fast_paths,
    }
    print(f"{len(chips)} chips of {args.chip_size} px, grid {args.points_per_side}^2, geosam dtype {settings['geosam_dtype']}, device {device}")

    from geosam.models import compile_bundle

    # warm-up: each path once on a small image (one-time costs out of the timings); peak RSS of model + geosam
    stock32 = dataclasses.replace(bundle, dtype=torch.float32, fast_encoder=False)
    for b in (bundle, stock32):
        encoder_runner(b)(chips[0])
    geosam_runner(bundle, args, args.box_nms_thresh)[0](chips[0])
    rss_geosam = peak_rss_mib()

    # every timed variant, interleaved chip by chip
    runners: dict = {"encoder_only": encoder_runner(bundle), "encoder_only_stock_float32": encoder_runner(stock32)}
    gens = {}
    for name, b in bundles.items():
        runners[name], gens[name] = geosam_runner(b, args, args.box_nms_thresh)
    if not args.skip_pipeline:
        from transformers import pipeline

        nms_note = _nms_patch()
        pipe = pipeline("mask-generation", model=bundle.model, image_processor=SamImageProcessorPil(), device=device)
        runners["pipeline"] = pipeline_runner(pipe, args, args.box_nms_thresh)
        pipeline_runner(pipe, argparse.Namespace(**{**vars(args), "points_per_side": 2}), args.box_nms_thresh)(chips[0])
    seconds, masks = interleaved(runners, chips)
    for name, sec in seconds.items():
        print(f"{name}: {sec:.1f} s")

    # torch.compile, after everything else (compiling must not touch the runs above): on a copy of the model,
    # its compiling first chip timed apart, then interleaved with the eager headline run for their ratio
    compile_warm = None
    if not args.no_compile:
        import copy

        cb = compile_bundle(dataclasses.replace(bundle, model=copy.deepcopy(bundle.model)))
        run_compiled, gens["compiled"] = geosam_runner(cb, args, args.box_nms_thresh)
        t0 = time.perf_counter()
        run_compiled(chips[0])  # compiles
        compile_warm = time.perf_counter() - t0
        gens["compiled"].reset_timings()
        pair_s, pair_masks = interleaved({"eager": geosam_runner(bundle, args, args.box_nms_thresh)[0], "compiled": run_compiled}, chips)
        masks["compiled"] = pair_masks["compiled"]
        print(f"compiled: warm-up {compile_warm:.1f} s, then {pair_s['compiled']:.1f} s vs eager {pair_s['eager']:.1f} s")

    # agreement without NMS: every mask that passes the filters (hundreds), geosam vs pipeline
    all_runners = {name: geosam_runner(b, args, 1.0)[0] for name, b in bundles.items()}
    if not args.skip_pipeline:
        all_runners["pipeline"] = pipeline_runner(pipe, args, 1.0)
    _, masks_all = interleaved(all_runners, chips)

    head = gens["headline"]
    st = head.timings_s
    result: dict = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "settings": settings,
        "geosam_s": round(seconds["headline"], 3),
        "encoder_only_s": round(seconds["encoder_only"], 3),
        "encoder_only_stock_float32_s": round(seconds["encoder_only_stock_float32"], 3),
        "encode_s": round(st.get("encode", 0.0), 3),
        "decoder_s": round(st.get("decode", 0.0), 3),
        "overhead_ratio": round(seconds["headline"] / max(1e-9, st.get("encode", 0.0) + st.get("decode", 0.0)), 3),
        "geosam_stage_s": {k: round(v, 3) for k, v in st.items()},
        "geosam_masks": [len(m) for m in masks["headline"]],
        "geosam_masks_without_nms": [len(m) for m in masks_all["headline"]],
        "peak_rss_mib": round(rss_geosam, 1),
    }
    if "float32" in bundles:
        result["geosam_float32_s"] = round(seconds["float32"], 3)
        result["geosam_float32_stage_s"] = {k: round(v, 3) for k, v in gens["float32"].timings_s.items()}
    if compile_warm is not None:
        result["compile_warmup_s"] = round(compile_warm, 3)
        result["geosam_compiled_s"] = round(pair_s["compiled"], 3)
        result["geosam_eager_beside_compiled_s"] = round(pair_s["eager"], 3)
        result["compiled_speedup_vs_eager"] = round(pair_s["eager"] / pair_s["compiled"], 3)
        result["geosam_compiled_stage_s"] = {k: round(v, 3) for k, v in gens["compiled"].timings_s.items()}
        result["agreement_compiled_vs_headline"] = compare(masks["compiled"], masks["headline"])
    if not args.skip_pipeline:
        agree = {}
        for name in bundles:
            parts = {
                "default_thresholds": compare(masks[name], masks["pipeline"]),
                "without_nms": compare(masks_all[name], masks_all["pipeline"]),
            }
            keys = ("geosam_matched", "pipeline_matched", "geosam_masks", "pipeline_masks")
            parts["pooled"] = summarise(*(sum(p[k] for p in parts.values()) for k in keys))
            agree[name] = parts
        pipeline_s = seconds["pipeline"]
        result.update(
            {
                "pipeline_nms": nms_note,
                "pipeline_s": round(pipeline_s, 3),
                "speedup_vs_pipeline": round(pipeline_s / seconds["headline"], 3),
                "mask_agreement": agree["headline"]["pooled"]["mask_agreement"],
                "agreement": agree,
                "pipeline_masks": [len(m) for m in masks["pipeline"]],
                "pipeline_masks_without_nms": [len(m) for m in masks_all["pipeline"]],
                "peak_rss_mib_after_pipeline": round(peak_rss_mib(), 1),
            }
        )
        if "float32" in bundles:
            result["speedup_vs_pipeline_float32"] = round(pipeline_s / seconds["float32"], 3)
            result["mask_agreement_float32"] = agree["float32"]["pooled"]["mask_agreement"]
        if compile_warm is not None:  # the pipeline ratio carried over through the eager run timed beside it
            result["speedup_vs_pipeline_compiled"] = round(
                pipeline_s / seconds["headline"] * result["compiled_speedup_vs_eager"], 3
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        (f"geosam end to end, {settings['geosam_dtype']} (s)", result["geosam_s"]),
        ("  encode / decode (s)", f"{result['encode_s']} / {result['decoder_s']}"),
        ("geosam end to end, float32 (s)", result.get("geosam_float32_s", "-")),
        ("geosam + torch.compile (s)", f"{result.get('geosam_compiled_s', '-')} (+ {result.get('compile_warmup_s', '-')} warm-up)"),
        ("compiled vs eager (interleaved)", result.get("compiled_speedup_vs_eager", "-")),
        ("speedup vs pipeline, compiled", result.get("speedup_vs_pipeline_compiled", "-")),
        ("encoder only, geosam / stock fp32 (s)", f"{result['encoder_only_s']} / {result['encoder_only_stock_float32_s']}"),
        ("pipeline, float32 (s)", result.get("pipeline_s", "-")),
        ("speedup vs pipeline", result.get("speedup_vs_pipeline", "-")),
        ("speedup vs pipeline, float32", result.get("speedup_vs_pipeline_float32", "-")),
        ("mask agreement (pooled)", result.get("mask_agreement", "-")),
        ("  default thresholds", result.get("agreement", {}).get("headline", {}).get("default_thresholds", {}).get("mask_agreement", "-")),
        ("  without NMS", result.get("agreement", {}).get("headline", {}).get("without_nms", {}).get("mask_agreement", "-")),
        ("mask agreement, float32", result.get("mask_agreement_float32", "-")),
        ("masks geosam / pipeline", f"{sum(result['geosam_masks'])} / {sum(result.get('pipeline_masks', [0]))}"),
        ("  without NMS", f"{sum(result['geosam_masks_without_nms'])} / {sum(result.get('pipeline_masks_without_nms', [0]))}"),
        ("overhead ratio", result["overhead_ratio"]),
        ("peak RSS (MiB)", result["peak_rss_mib"]),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
