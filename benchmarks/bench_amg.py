"""Segment-everything benchmark: geosam vs the transformers pipeline and segment-anything's own generator.

One run, the same chips, the same weights, the same point grids and thresholds, every variant interleaved chip
by chip (every variant on chip 1, then on chip 2, ...) after a warm-up, so that the drifting speed of a shared
CPU hits all of them alike and their ratios hold:

(a) ``geosam_float32`` / ``geosam_bfloat16``: `geosam.segment.SamMaskGenerator` end to end per chip, in
    float32 and in bf16 autocast (the latter where the CPU has native bf16 - AMX or AVX-512 BF16 - or CUDA);
(b) ``pipeline``: ``transformers.pipeline("mask-generation", model=..., image_processor=SamImageProcessorPil(),
    points_per_batch=64)`` with ``points_per_crop`` = the grid, float32, stock modules;
(c) ``sam_amg``: segment-anything 1.0's ``SamAutomaticMaskGenerator`` (``points_per_batch=64``, float32) on the
    same weights converted to its layout (``benchmarks/sam_anchor.py``; ``tests/test_sam_anchor.py`` shows both
    libraries give the same embedding and masks); before timing, both models' embeddings of the first chip are
    compared here too (``sam_amg_embedding_max_rel_diff``);
(d) ``encoder``: preprocessing + image encoder per chip, geosam's float32 and bf16 paths and the stock float32
    forward, each with the measured matmul throughput (float32: the better of ``torch.mm`` (MKL) and oneDNN; bf16
    where native) timed beside it, and the
    FLOPs counted (``benchmarks/roofline.py``): ``encoder_fraction_of_peak`` per dtype = counted FLOPs of geosam's
    path / seconds / the measured matmul FLOP/s in that dtype (``..._model_flops``: the stock forward's FLOPs,
    the model's own work, instead of the FLOPs geosam's path executes); ``encoder_fraction_of_sustained_peak``
    against the same loops' products over their whole time (``matmul_sustained_gflop_per_s``: where the CPU runs a
    burst's first products faster than it keeps up, as AMX here, the rate a seconds-long encode can reach).
    ``decoder_fraction_of_peak`` likewise for the decode stage (geosam's fast decoder runs in float32 in both
    dtypes, so its peak is the float32 one): the FLOPs of the whole generator counted in the agreement run
    minus the encoder's, over the timed run's decode seconds.

Each grid (``--grids``, default 16 and 32 points per side) runs twice: with the given thresholds (SAM's
defaults: only a handful of masks survive NMS with these weights), timed; then with NMS switched off
(``box_nms_thresh`` = ``crops_nms_thresh`` = 1.0), which compares every mask that passes the predicted-IoU and
stability filters (hundreds per chip): the strong check that geosam's decoding, filtering and upsampling give
the references' masks.

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

NMS. The pipeline's post-processing imports ``torchvision.ops.batched_nms`` and segment-anything imports
torchvision too; torchvision is not installed in geosam's venv (torch 2.13 CPU has no matching build), so the
pipeline's one function is patched with geosam's plain-torch `geosam.segment.sam_utils.batched_nms` (same
greedy algorithm) and segment-anything is imported with stand-ins (``benchmarks/sam_anchor.py``). Everything
else is untouched. If torchvision is importable, it is used as is.

Metrics (``benchmarks/results/latest.json``), per grid under ``grids``, and collected at the top level:
``speedup_vs_pipeline_<dtype>`` = pipeline_s / geosam_s, ``speedup_vs_sam_amg_<dtype>`` = sam_amg_s / geosam_s;
``mask_agreement`` = min of (fraction of reference masks matched by a geosam mask at IoU >= 0.9) and the
reverse, pooled over the default and the NMS-free runs; ``overhead_ratio`` = geosam_s / (geosam's encode +
decode stage time); ``dtype_auto``: what ``dtype="auto"`` resolves to here and the measured figures it rests on.
``mask_agreement_bfloat16_vs_float32_over_chips``: bf16 against float32 geosam (equal to the pipeline's masks, as
the same run shows) on ``--agreement-chips`` chips (default: all 4 of the scene; the timed ones and the rest,
untimed), per chip and pooled: one chip's ~200 masks at 16 x 16 put the figure within +-0.01 only.
With ``--rounds R`` (odd) every grid's timed pass runs R times, interleaved as above: the seconds are each
variant's median round, the stage times those of geosam's median round, and each round's own times and ratios are
kept (``seconds_per_round``, ``speedup_vs_<ref>_per_round``): on a noisy host one round's ratio moves by 20 %.

    .venv/bin/python benchmarks/bench_amg.py [--chips 1] [--grids 16 32] [--rounds 1]

On a GPU machine use ``benchmarks/bench_cuda.py``: it synchronises the device around every timed call and
measures the GPU's own matmul peaks (this script's encoder timings and peaks are the CPU's).

With 1 chip and both grids this takes ~10 minutes on a quiet 2-core CPU (the references dominate).
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
from _machine import cpu_name
from roofline import count_flops, cpu_has_native_bf16, flop_counter, matmul_flops_per_s
from sam_anchor import build_segment_anything, import_segment_anything

from geosam.models.cpu_decoder import amx_available as cpu_decoder_amx
from geosam.models.cpu_decoder import bf16_products as cpu_decoder_bf16


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build_sane_random_sam(encoder_layers: int = 12, seed: int = 0, encoder_width: int = 768):
    """A random-weight SAM (ViT-B by default) with the mask-sanity changes listed in the module docstring.

    ``encoder_layers`` / ``encoder_width`` (hidden size, 12 heads, MLP 4x) other than ViT-B's make a cheaper encoder
    for runs that only exercise a script (its figures then mean nothing)."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    kw = {"initializer_range": 0.02}
    if encoder_layers != 12:
        kw.update(num_hidden_layers=encoder_layers, global_attn_indexes=[encoder_layers - 1])
    if encoder_width != 768:
        kw.update(hidden_size=encoder_width, mlp_dim=4 * encoder_width)
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


def geosam_runner(bundle, args, grid: int, box_nms_thresh: float):
    """(generate(chip) -> masks, the generator) for geosam at ``bundle``'s dtype."""
    from geosam.segment import SamMaskGenerator

    gen = SamMaskGenerator(
        bundle,
        points_per_side=grid,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )
    return (lambda chip: gen.generate(chip).masks), gen


def pipeline_runner(pipe, args, grid: int, box_nms_thresh: float):
    from PIL import Image

    def run(chip) -> np.ndarray:
        out = pipe(
            Image.fromarray(chip.image),
            points_per_batch=64,
            points_per_crop=grid,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            crops_nms_thresh=box_nms_thresh,
        )
        m = out["masks"]
        return np.stack(m).astype(bool) if len(m) else np.zeros((0, *chip.valid.shape), bool)

    return run


def interleaved(runners: dict, chips, rounds: int = 1, on_round=None) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Run every runner on chip 1, then every runner on chip 2, ..., ``rounds`` times over: per runner the seconds of
    each round (all chips) and the first round's results.

    Interleaving puts all variants under the same machine conditions (a shared CPU's speed drifts
    by tens of percent over minutes), so their ratios hold even when absolute times move; more rounds show how
    far a single round's ratio moves with the machine. ``on_round(i)``: called before round i (e.g. to reset the
    generators' stage timers).
    """
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    results: dict[str, list] = {name: [] for name in runners}
    for r in range(rounds):
        if on_round is not None:
            on_round(r)
        for name in runners:
            seconds[name].append(0.0)
        for chip in chips:
            for name, run in runners.items():
                t0 = time.perf_counter()
                res = run(chip)
                seconds[name][-1] += time.perf_counter() - t0
                if r == 0:
                    results[name].append(res)
    return seconds, results


def compare(geo: list[np.ndarray], ref: list[np.ndarray]) -> dict:
    """Agreement of two runs' masks, chip by chip (``pipeline_*`` names: the second run, the reference)."""
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


#: the counts `summarise` takes, which agreements pool by adding
COUNTS = ("geosam_matched", "pipeline_matched", "geosam_masks", "pipeline_masks")


def pooled(parts) -> dict:
    """Agreements (`compare` / `summarise` results) pooled into one: their counts added, the fractions of the sums."""
    parts = list(parts)
    return summarise(*(sum(p[k] for p in parts) for k in COUNTS))


def encoder_runner(bundle):
    from geosam.models import encode, preprocess

    return lambda chip: encode(bundle, preprocess(bundle, [chip.image])[0])


def sam_amg_runner(sam, args, grid: int, box_nms_thresh: float):
    """segment-anything's ``SamAutomaticMaskGenerator`` on ``sam`` (chip -> bool masks)."""
    sa, _ = import_segment_anything()
    gen = sa.SamAutomaticMaskGenerator(
        sam,
        points_per_side=grid,
        points_per_batch=64,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )

    def run(chip) -> np.ndarray:
        out = gen.generate(chip.image)
        return np.stack([o["segmentation"] for o in out]).astype(bool) if out else np.zeros((0, *chip.valid.shape), bool)

    return run


def gemm_peak(dtype: str) -> tuple[float, float]:
    """The measured GEMM FLOP/s in ``dtype``, the fastest single product and the sustained rate
    (`roofline.matmul_flops_per_s`): for float32 the better of torch.mm (MKL) and oneDNN (geosam's path)."""
    dt = getattr(torch, dtype)
    paths = ("torch", "onednn") if dt == torch.float32 else ("torch",)
    got = [matmul_flops_per_s(dt, path=p) for p in paths]
    return max(g["flops_per_s"] for g in got), max(g["sustained_flops_per_s"] for g in got)


def counted(run, sink: list):
    """``run`` with the FLOPs of each call appended to ``sink`` (untimed runs only: counting costs time)."""

    def f(chip):
        with flop_counter() as counter:
            out = run(chip)
        sink.append(int(counter.get_total_flops()))
        return out

    return f


def agreement_parts(geo_default, ref_default, geo_all, ref_all, single: bool = False) -> dict:
    """Agreement with the given thresholds, without NMS, and pooled (``single``: the NMS-free pass only;
    ``ref_all`` None: the reference was not in the NMS-free pass, see ``--nms-free-refs``)."""
    parts = {} if ref_all is None else {"without_nms": compare(geo_all, ref_all)}
    if not single:
        parts["default_thresholds"] = compare(geo_default, ref_default)
    parts["pooled"] = pooled(parts.values())
    return parts


def agreement_over_chips(runs: dict, more_chips, masks: dict, masks_all: dict, single: bool) -> dict:
    """bf16 vs float32 geosam masks chip by chip over the timed chips (their masks from the timed and NMS-free
    passes, ``masks`` / ``masks_all``) and ``more_chips`` (run here: ``runs`` maps each dtype to its (timed,
    NMS-free) generate functions), each chip's agreement and all of them pooled as `agreement_parts` pools.

    geosam's float32 masks stand in for the pipeline's (the same run measures them equal: ``agreement_vs_pipeline``
    1.0 in float32), so the bf16 figure rests on every chip of the scene without running the references on them:
    one chip's figure moves by +-0.01 with rounding-level changes (16 x 16, chip to chip 0.968-0.983)."""
    chips, per_chip = [], []
    n_timed = len(masks_all["geosam_float32"])
    for i in range(n_timed + len(more_chips)):
        if i < n_timed:
            got = {d: (masks[f"geosam_{d}"][i], masks_all[f"geosam_{d}"][i]) for d in runs}
        else:
            chip = more_chips[i - n_timed]
            got = {d: (None if single else timed(chip), free(chip)) for d, (timed, free) in runs.items()}
        (b_def, b_all), (f_def, f_all) = got["bfloat16"], got["float32"]
        chips.append(agreement_parts([b_def], [f_def], [b_all], [f_all], single)["pooled"])
        per_chip.append(chips[-1]["mask_agreement"])
    return {"chips": len(per_chip), "per_chip": per_chip, "pooled": pooled(chips)}


#: the speedup over the pipeline that issue 24 asks for, for `add_peak_bounds`
TARGET_SPEEDUP = 5.0


def add_peak_bounds(result: dict, target: float = TARGET_SPEEDUP) -> None:
    """Add, per dtype and grid, what geosam's counted FLOPs allow at the measured matmul peak (in place).

    ``model_s_at_peak`` = encoder FLOPs / that dtype's peak + decoder FLOPs / the float32 peak (the fast decoder
    runs float32); ``other_s`` = geosam's seconds outside the encode and decode stages (filters, NMS, upsampling,
    overhead), kept as measured. ``speedup_at_peak`` = pipeline seconds / (``model_s_at_peak`` + ``other_s``):
    the most these FLOPs can give on this CPU; ``model_fraction_of_peak`` = ``model_s_at_peak`` / (encode +
    decode seconds): where geosam stands; ``model_fraction_of_peak_for_<target>x``: what encoder and decoder
    together would need to reach for ``target`` times the pipeline (None: not even at the peak).
    """
    peak = result.get("matmul_peak_gflop_per_s", {})
    enc = result.get("encoder_gflop_per_chip", {})
    chips = result.get("settings", {}).get("chips", 1)
    for d in result.get("settings", {}).get("dtypes", []):
        bounds = {}
        for name, g in result.get("grids", {}).items():
            if d not in g or "pipeline" not in g.get("seconds", {}) or d not in peak or "float32" not in peak:
                continue
            st = g[d]["stage_s"]
            model_s = st.get("encode", 0.0) + st.get("decode", 0.0)
            at_peak = enc[d] * chips / peak[d] + g[d]["decoder_gflop"] / peak["float32"]
            other = g[d]["geosam_s"] - model_s
            budget = g["seconds"]["pipeline"] / target - other
            bounds[name] = {
                "model_s_at_peak": round(at_peak, 2),
                "other_s": round(other, 2),
                "speedup_at_peak": round(g["seconds"]["pipeline"] / (at_peak + other), 2),
                "model_fraction_of_peak": round(at_peak / model_s, 3),
                f"model_fraction_of_peak_for_{target:g}x": round(at_peak / budget, 3) if budget > at_peak else None,
            }
        if bounds:
            result.setdefault("peak_bounds", {})[d] = bounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=1, help="number of 1024 px chips (max 4)")
    ap.add_argument("--chip-size", type=int, default=1024)
    ap.add_argument("--grids", type=int, nargs="+", default=[16, 32], help="points per side, one run each")
    ap.add_argument("--points-per-batch", type=int, default=64, help="geosam's decoder batch")
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--dtype", default="auto", help="what geosam's headline dtype resolves from (auto, float32, ...)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fast-paths", choices=["auto", "on", "off"], default="auto",
                    help="geosam's fast encoder/decoder: auto = geosam's defaults (on the CPU), on = also on CUDA, "
                    "off = the stock modules")
    ap.add_argument("--encoder-layers", type=int, default=12, help="12 = ViT-B")
    ap.add_argument("--skip-references", action="store_true", help="no pipeline / segment-anything runs")
    ap.add_argument("--single-pass", type=int, nargs="*", default=[],
                    help="grids run once, timed without NMS (every variant alike), instead of a timed pass with the "
                    "given thresholds and an NMS-free pass: halves the references' time on a loaded machine")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a machine "
                    "shared with other jobs, where OpenMP barriers wait on descheduled threads")
    ap.add_argument("--nms-free-refs", nargs="*", default=["pipeline", "sam_amg"],
                    help="references also run in the NMS-free agreement pass (default both; segment-anything at "
                    "32 x 32 is the longest run of all)")
    ap.add_argument("--agreement-chips", type=int, default=4,
                    help="chips (max 4) over which bf16 is compared with float32 geosam (which equals the pipeline): "
                         "the timed chips and more, untimed")
    ap.add_argument("--rounds", type=int, default=1,
                    help="timed rounds per grid, each every variant on every chip, interleaved; the speedups are the "
                    "ratios of the median rounds, the rounds' own ratios are kept beside them")
    ap.add_argument("--note", default="shared machine: 2 cores, other jobs running; absolute times inflated and noisy, "
                    "ratios of the interleaved variants hold", help="what the results file says about the machine's load")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    args = ap.parse_args()

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.models import encode, load_model, preprocess, resolve_dtype
    from geosam.models.cpu_memory import huge_pages_for_tensors

    torch.set_grad_enabled(False)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    # what load_model asks for SAM's models (torch's large blocks in huge pages), before the random model's weights are
    # made here: torch decides at its first tensor; the references in this process get it too, as they get
    # keep_freed_memory's setting (their speedups are the more conservative for it)
    huge_pages_for_tensors()
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
    headline = str(bundle.dtype).replace("torch.", "")
    dtypes = ["float32"]
    if device.type == "cuda" or cpu_has_native_bf16() or bundle.dtype == torch.bfloat16:
        dtypes.append("bfloat16")
    bundles = {d: dataclasses.replace(bundle, dtype=getattr(torch, d)) for d in dtypes}
    stock32 = dataclasses.replace(bundle, dtype=torch.float32, fast_encoder=False)
    print(f"{len(chips)} chips of {args.chip_size} px, grids {args.grids}, dtypes {dtypes} (auto: {headline}), {cpu_name()}")

    # FLOPs of one encode per path, and segment-anything's embedding beside geosam's stock one
    pv = preprocess(bundle, [chips[0].image])[0]
    enc_flops = {d: count_flops(lambda d=d: encode(bundles[d], pv)) for d in dtypes}
    # what a counter sees of an encode with geosam's C attention kernels on (the counted pipeline runs use them)
    enc_flops_seen = {d: count_flops(lambda d=d: encode(bundles[d], pv), kernels=True) for d in dtypes}
    enc_flops_model = count_flops(lambda: encode(stock32, pv))
    refs = not args.skip_references
    if refs:
        _, sa_note = import_segment_anything()
        sam = build_segment_anything(model)
        with torch.inference_mode():
            emb_sa = sam.image_encoder(pv)
        emb_hf = encode(stock32, pv)
        emb_diff = float((emb_sa - emb_hf).abs().max() / emb_hf.abs().max())

    # warm-up: each path once (one-time costs out of the timings)
    enc_runners = {f"encoder_{d}": encoder_runner(bundles[d]) for d in dtypes}
    enc_runners["encoder_stock_float32"] = encoder_runner(stock32)
    for run in enc_runners.values():
        run(chips[0])
    for d in dtypes:
        geosam_runner(bundles[d], args, 4, args.box_nms_thresh)[0](chips[0])
    rss_geosam = peak_rss_mib()
    if refs:
        from transformers import pipeline

        nms_note = _nms_patch()
        pipe = pipeline("mask-generation", model=bundle.model, image_processor=SamImageProcessorPil(), device=device)
        pipeline_runner(pipe, args, 2, args.box_nms_thresh)(chips[0])
        sam_amg_runner(sam, args, 2, args.box_nms_thresh)(chips[0])

    # (d) encoders, each chip after a matmul-throughput measurement in every dtype
    peaks: dict[str, list[float]] = {d: [] for d in dtypes}
    sustained: dict[str, list[float]] = {d: [] for d in dtypes}
    enc_s = {name: 0.0 for name in enc_runners}

    def measure_peaks() -> None:
        for d in dtypes:
            best, kept_up = gemm_peak(d)
            peaks[d].append(best)
            sustained[d].append(kept_up)

    for chip in chips:
        measure_peaks()
        for name, run in enc_runners.items():
            t0 = time.perf_counter()
            run(chip)
            enc_s[name] += time.perf_counter() - t0
    measure_peaks()  # and once more after them
    peak = {d: float(np.median(v)) for d, v in peaks.items()}
    peak_sustained = {d: float(np.median(v)) for d, v in sustained.items()}
    print("encoders:", {k: round(v, 2) for k, v in enc_s.items()}, "matmul GFLOP/s:", {d: round(v / 1e9) for d, v in peak.items()})

    # (a)-(c) per grid: timed with the given thresholds, then without NMS (agreement, FLOPs)
    # the chips past the timed ones for bf16's agreement over the scene (read once for every grid)
    more_chips = load_chips(args.agreement_chips, args.chip_size)[len(chips):] if "bfloat16" in dtypes else []
    grids: dict[str, dict] = {}
    for grid in args.grids:
        single = grid in args.single_pass  # one pass, timed without NMS (see --single-pass)
        nms_timed = 1.0 if single else args.box_nms_thresh
        runners: dict = {}
        gens = {}
        for d in dtypes:
            runners[f"geosam_{d}"], gens[d] = geosam_runner(bundles[d], args, grid, nms_timed)
        if refs:
            runners["pipeline"] = pipeline_runner(pipe, args, grid, nms_timed)
            runners["sam_amg"] = sam_amg_runner(sam, args, grid, nms_timed)
        stage_rounds: dict[str, list[dict[str, float]]] = {d: [] for d in dtypes}

        def next_round(r: int, stage_rounds=stage_rounds, gens=gens) -> None:
            for d in dtypes:  # each round's stage times on their own
                if r > 0:
                    stage_rounds[d].append(dict(gens[d].timings_s))
                gens[d].timings_s.clear()

        rounds_s, masks = interleaved(runners, chips, max(1, args.rounds), next_round)
        next_round(max(1, args.rounds))
        seconds = {k: float(np.median(v)) for k, v in rounds_s.items()}
        print(f"grid {grid}:", {k: [round(x, 1) for x in v] for k, v in rounds_s.items()},
              {d: [{k: round(v, 2) for k, v in st.items()} for st in stage_rounds[d]] for d in dtypes}, flush=True)
        flops: dict[str, list[int]] = {d: [] for d in dtypes}
        all_runners = {f"geosam_{d}": counted(geosam_runner(bundles[d], args, grid, 1.0)[0], flops[d]) for d in dtypes}
        if refs and not single:
            if "pipeline" in args.nms_free_refs:
                all_runners["pipeline"] = pipeline_runner(pipe, args, grid, 1.0)
            if "sam_amg" in args.nms_free_refs:
                all_runners["sam_amg"] = sam_amg_runner(sam, args, grid, 1.0)
        _, masks_all = interleaved(all_runners, chips)
        if single:  # the timed pass was the NMS-free one
            masks_all = {**masks_all, **masks}
        # the decoder's FLOPs as torch's ops compute them (the C kernels' products are invisible to the counter)
        model_flops = {d: sum(count_flops(lambda d=d, c=c, g=grid: geosam_runner(bundles[d], args, g, 1.0)[0](c))
                              for c in chips) for d in dtypes}

        g: dict = {"seconds": {k: round(v, 3) for k, v in seconds.items()},
                   "timed_box_nms_thresh": nms_timed, "rounds": max(1, args.rounds)}
        if args.rounds > 1:
            g["seconds_per_round"] = {k: [round(x, 3) for x in v] for k, v in rounds_s.items()}
        for d in dtypes:
            # the stage times of the round whose geosam time is the median (the one `seconds` reports)
            times = rounds_s[f"geosam_{d}"]
            mid = int(np.argsort(times)[(len(times) - 1) // 2])  # with an even count, the faster of the middle two
            st = stage_rounds[d][mid]
            dec_flops = model_flops[d] - enc_flops[d] * len(chips)
            dec_flops_seen = sum(flops[d]) - enc_flops_seen[d] * len(chips)
            g[d] = {
                "geosam_s": round(seconds[f"geosam_{d}"], 3),
                "stage_s": {k: round(v, 3) for k, v in st.items()},
                # that round's own time (`seconds` is the mean of the middle two rounds with an even count)
                "overhead_ratio": round(times[mid] / max(1e-9, st.get("encode", 0.0) + st.get("decode", 0.0)), 3),
                "decoder_gflop": round(dec_flops / 1e9, 2),
                "decoder_gflop_counted_with_c_kernels": round(dec_flops_seen / 1e9, 2),
                "decoder_fraction_of_peak": round(dec_flops / max(1e-9, st.get("decode", 0.0)) / peak["float32"], 3),
                "masks": [len(m) for m in masks[f"geosam_{d}"]],
                "masks_without_nms": [len(m) for m in masks_all[f"geosam_{d}"]],
            }
            if refs:
                g[d]["speedup_vs_pipeline"] = round(seconds["pipeline"] / seconds[f"geosam_{d}"], 3)
                g[d]["speedup_vs_sam_amg"] = round(seconds["sam_amg"] / seconds[f"geosam_{d}"], 3)
                if args.rounds > 1:  # each round's own ratios: how far one round moves with the machine
                    for ref in ("pipeline", "sam_amg"):
                        g[d][f"speedup_vs_{ref}_per_round"] = [
                            round(a / b, 3) for a, b in zip(rounds_s[ref], rounds_s[f"geosam_{d}"])]
                for ref in ("pipeline", "sam_amg"):
                    g[d][f"agreement_vs_{ref}"] = agreement_parts(
                        masks[f"geosam_{d}"], masks[ref], masks_all[f"geosam_{d}"], masks_all.get(ref), single
                    )
        if refs:
            both = "sam_amg" in masks_all and "pipeline" in masks_all
            g["sam_amg_vs_pipeline"] = agreement_parts(masks["sam_amg"], masks["pipeline"], masks_all.get("sam_amg"),
                                                       masks_all["pipeline"] if both else None, single)
            g["reference_masks"] = {r: [len(m) for m in masks[r]] for r in ("pipeline", "sam_amg")}
            g["reference_masks_without_nms"] = {r: [len(m) for m in masks_all[r]] for r in ("pipeline", "sam_amg")
                                                if r in masks_all}
        if "bfloat16" in dtypes:  # bf16 vs float32 over more chips than the timed ones (untimed, geosam only)
            runs = {d: (geosam_runner(bundles[d], args, grid, nms_timed)[0], geosam_runner(bundles[d], args, grid, 1.0)[0])
                    for d in dtypes}
            g["bfloat16"]["agreement_vs_float32_over_chips"] = agreement_over_chips(
                runs, more_chips, masks, masks_all, single)
        grids[f"{grid}x{grid}"] = g
        partial = Path(args.out).with_suffix(".partial.json")  # what is known so far, should a later step fail
        partial.write_text(json.dumps({"encoder_s": enc_s, "peaks": peaks, "sustained": sustained,
                                       "enc_flops": enc_flops, "grids": grids}, indent=1, default=str) + "\n")

    def per(key: str, d: str) -> dict:
        return {name: g[d][key] for name, g in grids.items() if key in g[d]}

    def agree(d: str, ref: str) -> dict:
        return {name: g[d][f"agreement_vs_{ref}"]["pooled"]["mask_agreement"] for name, g in grids.items()
                if f"agreement_vs_{ref}" in g[d]}

    result: dict = {
        "cpu": cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "note": args.note,
        "settings": {
            "scene": "data/banepa_predict.tif", "chips": len(chips), "chip_size_px": args.chip_size,
            "grids": args.grids, "points_per_batch_geosam": args.points_per_batch, "points_per_batch_references": 64,
            "pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh,
            "box_nms_thresh": args.box_nms_thresh, "agreement_run_box_nms_thresh": 1.0, "dtypes": dtypes,
            "single_pass_grids_timed_without_nms": args.single_pass, "fast_paths": args.fast_paths,
            "nms_free_pass_references": args.nms_free_refs,
            "decoder_peak_basis": "the float32 matmul peak in every dtype: the fast decoder runs in float32, but for "
                                  "its upscaling's two products in bf16 where decoder_bf16_upscaling (bf16 dtype)",
            "decoder_bf16_upscaling": device.type == "cpu" and cpu_decoder_bf16(),
            "decoder_bf16_upscaling_on_amx_tiles": device.type == "cpu" and cpu_decoder_bf16() and cpu_decoder_amx(),
            "model": f"random ViT-B SamConfig (encoder layers {args.encoder_layers}), sanity settings in bench_amg.py",
        },
        "dtype_auto": {"resolves_to": str(resolve_dtype("auto", device)).replace("torch.", ""),
                       "cpu_native_bf16": cpu_has_native_bf16()},
        "matmul_peak_gflop_per_s": {d: round(v / 1e9, 1) for d, v in peak.items()},
        "matmul_measurements_gflop_per_s": {d: [round(x / 1e9, 1) for x in v] for d, v in peaks.items()},
        # the same loops' products over their whole time: what a seconds-long encode can keep up at best
        "matmul_sustained_gflop_per_s": {d: round(v / 1e9, 1) for d, v in peak_sustained.items()},
        "matmul_sustained_measurements_gflop_per_s": {d: [round(x / 1e9, 1) for x in v] for d, v in sustained.items()},
        "encoder_gflop_per_chip": {**{d: round(v / 1e9, 1) for d, v in enc_flops.items()},
                                   "stock_model": round(enc_flops_model / 1e9, 1)},
        # the part of an encode a FLOP counter sees with geosam's C attention kernels on (the rest runs in C)
        "encoder_gflop_per_chip_counted_with_c_kernels": {d: round(v / 1e9, 1) for d, v in enc_flops_seen.items()},
        "encoder_s": {k: round(v, 3) for k, v in enc_s.items()},
        "encoder_fraction_of_peak": {
            d: round(enc_flops[d] * len(chips) / enc_s[f"encoder_{d}"] / peak[d], 3) for d in dtypes},
        "encoder_fraction_of_sustained_peak": {
            d: round(enc_flops[d] * len(chips) / enc_s[f"encoder_{d}"] / peak_sustained[d], 3) for d in dtypes},
        "encoder_fraction_of_peak_model_flops": {
            d: round(enc_flops_model * len(chips) / enc_s[f"encoder_{d}"] / peak[d], 3) for d in dtypes},
        "encoder_stock_float32_fraction_of_peak": round(
            enc_flops_model * len(chips) / enc_s["encoder_stock_float32"] / peak["float32"], 3),
        "encoder_speedup_vs_stock_float32": {d: round(enc_s["encoder_stock_float32"] / enc_s[f"encoder_{d}"], 3)
                                             for d in dtypes},
        "decoder_fraction_of_peak": {d: per("decoder_fraction_of_peak", d) for d in dtypes},
        "overhead_ratio": {d: per("overhead_ratio", d) for d in dtypes},
        "peak_rss_mib": round(rss_geosam, 1),
        "grids": grids,
    }
    if refs:
        for d in dtypes:
            result[f"speedup_vs_pipeline_{d}"] = per("speedup_vs_pipeline", d)
            result[f"speedup_vs_sam_amg_{d}"] = per("speedup_vs_sam_amg", d)
            result[f"mask_agreement_{d}"] = {"vs_pipeline": agree(d, "pipeline"), "vs_sam_amg": agree(d, "sam_amg")}
        result["speedup_vs_pipeline"] = result[f"speedup_vs_pipeline_{headline}"]
        result["sam_amg_agreement_vs_pipeline"] = {n: g["sam_amg_vs_pipeline"]["pooled"]["mask_agreement"]
                                                   for n, g in grids.items()}
        result["sam_amg_embedding_max_rel_diff"] = emb_diff
        result["pipeline_nms"] = nms_note
        result["sam_amg_torchvision"] = sa_note
        result["peak_rss_mib_after_references"] = round(peak_rss_mib(), 1)
        if "bfloat16" in dtypes:
            result["dtype_auto"]["bf16_mask_agreement_min"] = min(
                min(agree("bfloat16", "pipeline").values()), min(agree("bfloat16", "sam_amg").values()))
    if "bfloat16" in dtypes:
        result["mask_agreement_bfloat16_vs_float32_over_chips"] = {
            n: g["bfloat16"]["agreement_vs_float32_over_chips"]["pooled"]["mask_agreement"] for n, g in grids.items()}
        result["dtype_auto"]["bf16_mask_agreement_over_chips_min"] = min(
            result["mask_agreement_bfloat16_vs_float32_over_chips"].values())
        result["dtype_auto"]["bf16_speedup_vs_float32"] = {
            n: round(g["float32"]["geosam_s"] / g["bfloat16"]["geosam_s"], 3) for n, g in grids.items()}
    add_peak_bounds(result)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    for key in ("matmul_peak_gflop_per_s", "matmul_sustained_gflop_per_s", "encoder_s", "encoder_fraction_of_peak",
                "encoder_fraction_of_sustained_peak", "encoder_fraction_of_peak_model_flops",
                "decoder_fraction_of_peak", "overhead_ratio", "speedup_vs_pipeline_float32", "speedup_vs_sam_amg_float32",
                "speedup_vs_pipeline_bfloat16", "speedup_vs_sam_amg_bfloat16", "mask_agreement_float32",
                "mask_agreement_bfloat16", "mask_agreement_bfloat16_vs_float32_over_chips", "sam_amg_agreement_vs_pipeline",
                "dtype_auto", "peak_bounds"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
