"""SAM 2 and SAM-HQ segment-everything: geosam against the transformers ``mask-generation`` pipeline (issue 24).

`bench_amg` measures SAM (ViT-B); this script measures the other families geosam runs through the model's own
decoder, on a CPU or a CUDA GPU, with full-size random-weight models (transformers' default ``Sam2Config()`` and
``SamHQConfig()``, seed 0, as `bench_stock_decoder`). The pipeline accepts both (``sam2`` and ``sam_hq`` are in its
mask-generation mapping), so both sides run the same weights on the same 1024 px chips of the shipped Banepa scene,
with the same points per side, thresholds and NMS:

* ``geosam_<dtype>``: `geosam.segment.SamMaskGenerator` at ``dtype`` (float32; float16 / bfloat16 autocast of the
  encoder and the stock decoder where the device has them);
* ``geosam_float32_chunk_<n>`` (``--chunks``): ``geosam_float32_stock_decoder`` (below) with the model's own
  decoder on ``n`` prompts per call (`geosam.models.runtime.STOCK_DECODER_CPU_CHUNK`, which the runtime applies on
  the CPU only; here it is forced on any device, to check that choice);
* ``geosam_float32_stock_decoder`` (``--stock-decoders``): float32 with the model's own decoder forward instead of
  geosam's (`geosam.models.sam2_decoder`, `geosam.models.hq_decoder`), as before geosam decoded these families
  itself (SAM 2: ``fast_decoder=False``; SAM-HQ: transformers' forward patched back in, a speed reference only, since
  that forward's masks are not SAM-HQ's and it returns three per prompt where SAM-HQ's decoder returns one);
* ``geosam_<dtype>_previous`` (``--previous-paths``): ``geosam_<dtype>`` as it ran before session 39, for the
  ratio of its changes in one run: the two-way transformer writing every prompt's image side (SAM 2, SAM-HQ) and
  SAM 2's encoder the module under autocast (``fast_encoder=False``);
* ``pipeline``: ``transformers.pipeline("mask-generation")`` in float32 (its NMS patched to geosam's, as in
  `bench_amg`, since torchvision is optional).

All variants run interleaved chip by chip for ``--rounds`` rounds (median round per variant), the device
synchronised after each call. Random weights: the decoder's masks are noise, so few pass SAM's stability filter
and the NMS; the figures time the real models' work (encoder, decoder, upscaling and filtering every candidate), and
``masks`` records how many each side kept. The mask agreement (`bench_amg.agreement_parts`, mask IoU >= 0.9 both
ways) of each geosam variant with the pipeline is reported on those masks. Writes ``--out`` after every family.

Usage::

    python benchmarks/bench_families.py --device cuda --chips-npz CHIPS.npz --grids 16 32 --out families.json
    python benchmarks/bench_families.py --tiny --grids 4 --rounds 1     # a quick check of every path on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(family: str, path: str, tiny: bool) -> None:
    """A random-weight checkpoint of ``family`` at ``path``: full size (`bench_stock_decoder.build`), or a tiny one."""
    if not tiny:
        from bench_stock_decoder import build as build_full

        build_full(family, path)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import _tiny_families  # the tests' tiny configs

    {"sam2": _tiny_families.build_tiny_sam2, "sam_hq": _tiny_families.build_tiny_sam_hq}[family](path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["sam2", "sam_hq"], choices=["sam2", "sam_hq"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=None, help="default: float32 float16 on CUDA, float32 on the CPU")
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="*",
        default=[],
        help="float32 variants with the stock decoder forced to this many prompts per call",
    )
    ap.add_argument(
        "--stock-decoders",
        action="store_true",
        help="also geosam_float32_stock_decoder: geosam with the model's own decoder forward "
        "(the path before geosam's SAM 2 and SAM-HQ decoders)",
    )
    ap.add_argument(
        "--previous-paths",
        action="store_true",
        help="also geosam_<dtype>_previous: each dtype as geosam ran before session 39 (every prompt's image side "
        "written by the two-way transformer, SAM 2's encoder the module under autocast)",
    )
    ap.add_argument(
        "--torch-hq-norm",
        action="store_true",
        help="also geosam_<dtype>_torch_hq_norm for SAM-HQ: its HQ branch's norm and GELU as torch's passes "
        "(before session 40; geosam.models.cpu_hq's one C pass since, on AVX-512 CPUs)",
    )
    ap.add_argument("--no-pipeline", action="store_true", help="geosam's variants only")
    ap.add_argument("--grids", type=int, nargs="+", default=[16])
    ap.add_argument("--chips", type=int, default=2)
    ap.add_argument("--chips-npz", help="chips saved by bench_cuda.py --save-chips (else read with geosam.read.scene)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny models (checks the paths, times nothing real)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="no new grid started after this many seconds")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "families.json"))
    args = ap.parse_args()

    import transformers
    from _machine import cpu_name
    from bench_amg import _nms_patch, agreement_parts, geosam_runner, interleaved, pipeline_runner
    from bench_cuda import Clock, load_array_chips
    from transformers import pipeline

    import geosam.models.decoder_side as side
    import geosam.models.hq_decoder as hqd
    import geosam.models.runtime as rt
    from geosam.models import cpu_hq, load_model

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["float32", "float16"] if device.type == "cuda" else ["float32"])
    clock = Clock(device)
    t_start = time.perf_counter()
    result: dict = {
        "env": {
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"dtypes": dtypes},
        "nms": _nms_patch(),
        "families": {},
        "errors": {},
    }

    def write() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if device.type == "cuda":
            result["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        tmp = Path(args.out + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(args.out)

    print(result["env"], flush=True)
    chips = load_array_chips(args.chips_npz, args.chips, 1024)

    def geosam_run(bundle, grid: int, nms: float, patch: dict | None = None):
        """`bench_amg.geosam_runner`'s (runner, generator); ``patch``: ``{(module, attribute): value}`` replaced
        during the runner's calls."""
        generate, gen = geosam_runner(bundle, args, grid, nms)

        def run(chip):
            saved = {k: getattr(*k) for k in patch or {}}
            for (mod, name), v in (patch or {}).items():
                setattr(mod, name, v)
            try:
                return generate(chip)
            finally:
                for (mod, name), v in saved.items():
                    setattr(mod, name, v)

        return run, gen

    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            try:
                path = str(Path(tmp, family))
                build(family, path, args.tiny)
                bundles = {d: load_model(path, device=str(device), dtype=d) for d in dtypes}
                ref_model = load_model(path, device=str(device), dtype="float32").model
                pipe = None
                try:  # SAM 2's processor needs torchvision: without it, geosam's variants only
                    if not args.no_pipeline:
                        pipe = pipeline(
                            "mask-generation", model=ref_model, image_processor=_processor(path), device=device
                        )
                except ImportError as exc:
                    result["errors"][f"{family}:pipeline"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                fam: dict = {
                    "model_parameters_m": round(sum(p.numel() for p in ref_model.parameters()) / 1e6, 1),
                    "grids": {},
                }
                result["families"][family] = fam
                for grid in args.grids:
                    if time.perf_counter() - t_start > args.budget_s:
                        result["errors"][f"{family}:{grid}"] = "not started: time budget spent"
                        continue
                    runners, gens = {}, {}
                    for d, b in bundles.items():
                        runners[f"geosam_{d}"], gens[f"geosam_{d}"] = geosam_run(b, grid, args.box_nms_thresh, None)
                    if args.previous_paths:
                        written = {(side, "run_two_way"): _written_sides(side.run_two_way)}
                        for d, b in bundles.items():
                            prev = dataclasses.replace(b, fast_encoder=False) if family == "sam2" else b
                            runners[f"geosam_{d}_previous"], gens[f"geosam_{d}_previous"] = geosam_run(
                                prev, grid, args.box_nms_thresh, written
                            )
                    if args.torch_hq_norm and family == "sam_hq":
                        torch_norm = {(cpu_hq, "norm_gelu"): lambda x, norm, fast=False: None}
                        for d, b in bundles.items():
                            runners[f"geosam_{d}_torch_hq_norm"], gens[f"geosam_{d}_torch_hq_norm"] = geosam_run(
                                b, grid, args.box_nms_thresh, torch_norm
                            )
                    if "float32" in bundles:  # the model's own decoder forward: SAM 2 with fast_decoder=False,
                        # SAM-HQ with transformers' forward patched back in
                        stock = dataclasses.replace(bundles["float32"], fast_decoder=False)
                        own = {(hqd, "decode_prompts"): _transformers_hq(rt)} if family == "sam_hq" else {}
                        variants = [(f"geosam_float32_chunk_{c}", c) for c in args.chunks]
                        if args.stock_decoders:
                            variants.append(("geosam_float32_stock_decoder", None))
                        for n, c in variants:
                            forced = {} if c is None else {(rt, "_stock_decoder"): _forced_step(rt._stock_decoder, c)}
                            runners[n], gens[n] = geosam_run(stock, grid, args.box_nms_thresh, own | forced)
                    if pipe is not None:
                        runners["pipeline"] = pipeline_runner(pipe, args, grid, args.box_nms_thresh)
                    timed = {n: (lambda chip, run=run: clock(lambda: run(chip))[1]) for n, run in runners.items()}
                    for n, run in list(timed.items()):  # warm-up; a variant this device cannot run is dropped
                        try:
                            run(chips[0])
                        except Exception as exc:  # noqa: BLE001
                            result["errors"][f"{family}:{grid}:{n}"] = f"{type(exc).__name__}: {exc}"
                            del timed[n]
                    stages: dict = {n: [] for n in gens}

                    def on_round(r: int, gens=gens, stages=stages) -> None:
                        for n, g in gens.items():
                            if r > 0:
                                stages[n].append({k: round(v, 4) for k, v in g.timings_s.items()})
                            g.timings_s.clear()

                    secs, masks = interleaved(timed, chips, args.rounds, on_round)
                    on_round(args.rounds)
                    med = {n: float(np.median(v)) for n, v in secs.items()}
                    g = {
                        "seconds": {n: round(v, 4) for n, v in med.items()},
                        "seconds_per_round": {n: [round(x, 4) for x in v] for n, v in secs.items()},
                        "speedup_vs_pipeline": {
                            n: round(med["pipeline"] / v, 2)
                            for n, v in med.items()
                            if n != "pipeline" and "pipeline" in med
                        },
                        "speedup_vs_stock_decoder": {
                            n: round(med["geosam_float32_stock_decoder"] / v, 2)
                            for n, v in med.items()
                            if n.startswith("geosam") and "geosam_float32_stock_decoder" in med
                        },
                        "stage_s": {
                            n: s[int(np.argsort(secs[n])[(len(secs[n]) - 1) // 2])]
                            for n, s in stages.items()
                            if s and n in secs
                        },
                        "masks": {n: [len(m) for m in v] for n, v in masks.items()},
                    }
                    if "pipeline" in masks:
                        g["agreement_vs_pipeline"] = {
                            n: agreement_parts(masks[n], masks["pipeline"], masks[n], masks["pipeline"])["pooled"]
                            for n in masks
                            if n != "pipeline"
                        }
                    fam["grids"][f"{grid}x{grid}"] = g
                    print(
                        family,
                        grid,
                        json.dumps({k: g[k] for k in ("seconds", "speedup_vs_pipeline", "masks")}),
                        flush=True,
                    )
                    write()
            except Exception as exc:  # noqa: BLE001 - keep the other family's figures
                result["errors"][family] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            write()
    print("wrote", args.out)


def _processor(path: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path)


def _written_sides(run_two_way):
    """``run_two_way`` with every prompt's image side written (``unroll=False``), as before session 39."""

    def run(*args, **kwargs):
        if len(args) > 8:
            args = (*args[:8], False, *args[9:])
        else:
            kwargs["unroll"] = False
        return run_two_way(*args, **kwargs)

    return run


def _transformers_hq(rt):
    """`hq_decoder.decode_prompts` as SAM-HQ decoded before geosam decoded SAM-HQ itself: transformers' forward (in
    `STOCK_DECODER_CPU_CHUNK` prompts per call on the CPU), K = 3 with multimask; a speed reference only (that
    forward upscales a transposed, never updated image side: see `geosam.models.hq_decoder`)."""

    def old(bundle, embeddings, multimask, iou_floor, n, prompts, cache=None):
        masks, iou = rt._stock_decoder(bundle, embeddings, multimask, n, prompts)
        if iou_floor is not None:
            masks = torch.where((iou > iou_floor).any(dim=1)[:, None, None, None], masks, float("-inf"))
        return masks, iou

    return old


def _forced_step(real, chunk: int):
    """`runtime._stock_decoder` with ``chunk`` prompts per call on any device (the same masks: prompts are
    independent)."""

    def step(bundle, image_embeddings, multimask, n, prompts):
        masks, ious = [], []
        for s in range(0, max(n, 1), chunk):
            part = {k: v[:, s : s + chunk] for k, v in prompts.items()}
            m, i = real(bundle, image_embeddings, multimask, min(chunk, n - s), part)
            masks.append(m)
            ious.append(i)
        return torch.cat(masks), torch.cat(ious)

    return step


if __name__ == "__main__":
    main()
