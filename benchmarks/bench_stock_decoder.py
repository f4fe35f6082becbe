"""A model's own (stock) mask decoder on the CPU: `STOCK_DECODER_CPU_CHUNK` prompts per call against all of a batch.

SAM 2 with ``fast_decoder=False`` (and SAM with it) decodes through the model's own forward (until session 20 SAM 2
and SAM-HQ always did; SAM-HQ now decodes through `geosam.models.hq_decoder` only, so ``--families sam_hq`` measures
that decoder under both variants and the chunk does not apply; the committed results file is session 19's). That forward repeats the image side once per prompt, so a call on a whole batch of
64 point prompts allocates blocks of hundreds of MiB; glibc serves blocks of 32 MiB and more with fresh ``mmap``
pages and unmaps them on free, so the kernel faults in and zeroes every page again at every step.
`geosam.models.runtime` therefore calls the stock decoder on `STOCK_DECODER_CPU_CHUNK` prompts at a time on the CPU.

Both variants run segment-everything (``SamMaskGenerator``, 16 x 16 points, ``points_per_batch`` 64) on one
1024 px chip of the shipped Banepa scene with full-size random-weight models (transformers' default ``Sam2Config()``
and ``SamHQConfig()``; masks are not meaningful, the work is the real models'):

* ``chunked``: the code as it is (`STOCK_DECODER_CPU_CHUNK` prompts per decoder call);
* ``one_call``: the whole batch of 64 in one call (the code before this change), by setting the chunk to 64.

Every (family, variant, round) runs in a fresh process (the peak RSS is that process's), alternating the variants
round by round, after one warm-up chip in each process. Recorded: wall seconds of the timed chip, user and system
CPU seconds, peak RSS, the stage times, and whether both variants' masks are identical (and how many mask pixels differ at most, -1 if the
mask counts differ), and, since few random-weight masks pass the filters, the decoder's
low-res logits and IoUs for 64 point prompts on the chip (largest difference, pixels whose sign differs); where geosam's encoder runs the model (SAM-HQ),
that encoder against the stock one on the chip (best of 2 alternating, ``encoder_s_best_of_2``). Writes
``benchmarks/results/stock_decoder.json``.

Usage: ``python benchmarks/bench_stock_decoder.py [--families sam2 sam_hq] [--rounds 3] [--threads 1] [--note TEXT]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name

OUT = ROOT / "benchmarks" / "results" / "stock_decoder.json"
VARIANTS = {"chunked": None, "one_call": 64}


def build(family: str, path: str) -> None:
    """A full-size random-weight checkpoint of ``family`` (seed 0) with its preprocessor config, at ``path``."""
    if family == "sam2":
        from transformers import Sam2Config, Sam2Model

        torch.manual_seed(0)
        model = Sam2Model(Sam2Config()).eval()
        pp = {"image_processor_type": "Sam2ImageProcessorFast", "size": {"height": 1024, "width": 1024}}
    elif family == "sam_hq":
        from transformers import SamHQConfig, SamHQModel

        torch.manual_seed(0)
        model = SamHQModel(SamHQConfig()).eval()
        pp = {"image_processor_type": "SamImageProcessor", "size": {"longest_edge": 1024}}
    else:
        raise SystemExit(f"unknown family {family!r}: sam2 or sam_hq")
    model.save_pretrained(path)
    pp.update(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255)
    Path(path, "preprocessor_config.json").write_text(json.dumps(pp))


def worker(args: argparse.Namespace) -> None:
    """One process: load, warm up on the chip, time it once, save its masks; print a JSON line."""
    from bench_amg import load_chips

    import geosam.models.runtime as rt
    from geosam.models import decode_points, encode, load_model, preprocess
    from geosam.models.compile import use_fast_encoder
    from geosam.segment import SamMaskGenerator

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    chunk = VARIANTS[args.variant]
    if chunk is not None:
        rt.STOCK_DECODER_CPU_CHUNK = chunk
    chip = load_chips(1, 1024)[0]
    bundle = dataclasses.replace(load_model(args.model_dir, device="cpu", dtype="float32"), fast_decoder=False)
    gen = SamMaskGenerator(bundle, points_per_side=16, points_per_batch=64)
    gen.generate(chip)
    gen.reset_timings()
    c0, t0 = os.times(), time.perf_counter()
    masks = gen.generate(chip).masks
    wall, c1 = time.perf_counter() - t0, os.times()
    # random weights: few masks survive the filters, so the decoder's own output is compared too (64 point prompts)
    emb = encode(bundle, preprocess(bundle, [chip.image])[0])
    side = (torch.arange(8, dtype=torch.float32) + 0.5) * (1024 / 8)
    pts = torch.stack(torch.meshgrid(side, side, indexing="xy"), dim=-1).reshape(-1, 2)
    logits, iou = decode_points(bundle, emb, pts)
    encoder_s = {}
    if use_fast_encoder(bundle):  # SAM-HQ: geosam's encoder against the stock one on the same chip, alternating
        stock = dataclasses.replace(bundle, fast_encoder=False)
        pv = preprocess(bundle, [chip.image])[0]
        times: dict[str, list[float]] = {"geosam": [], "stock": []}
        for _ in range(2):
            for name, b in (("geosam", bundle), ("stock", stock)):
                t = time.perf_counter()
                encode(b, pv)
                times[name].append(time.perf_counter() - t)
        encoder_s = {k: round(min(v), 2) for k, v in times.items()}
    np.savez(args.masks_out, masks=np.packbits(np.asarray(masks, dtype=bool)), logits=logits.numpy(), iou=iou.numpy())
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "user_s": round(c1.user - c0.user, 2),
                "sys_s": round(c1.system - c0.system, 2),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "stage_s": {k: round(v, 2) for k, v in gen.timings_s.items() if v >= 0.01},
                "masks": len(masks),
                "decoder_calls_chunk": rt.STOCK_DECODER_CPU_CHUNK,
                "encoder_s_best_of_2": encoder_s,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["sam2"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--masks-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    t_start = time.perf_counter()
    result: dict = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "note": args.note,
        "settings": {
            "grid": "16x16",
            "points_per_batch": 64,
            "chip_px": 1024,
            "rounds": args.rounds,
            "variants": {k: v or "STOCK_DECODER_CPU_CHUNK" for k, v in VARIANTS.items()},
        },
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            model_dir = os.path.join(tmp, family)
            build(family, model_dir)
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            same, differing, logit_diff, sign_flips, iou_diff = True, 0, 0.0, 0, 0.0
            for r in range(args.rounds):
                order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                saved = {}
                for v in order:
                    mpath = os.path.join(tmp, f"{family}_{v}.npz")
                    cmd = [
                        sys.executable,
                        __file__,
                        "--worker",
                        "--variant",
                        v,
                        "--model-dir",
                        model_dir,
                        "--masks-out",
                        mpath,
                        "--threads",
                        str(args.threads),
                    ]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    runs[v].append(json.loads(out.strip().splitlines()[-1]))
                    saved[v] = dict(np.load(mpath))
                    print(family, r, v, runs[v][-1], flush=True)
                a, b = saved["chunked"]["masks"], saved["one_call"]["masks"]
                same = same and bool(np.array_equal(a, b))
                differing = max(differing, int(np.unpackbits(a ^ b).sum()) if a.shape == b.shape else -1)
                la, lb = saved["chunked"]["logits"], saved["one_call"]["logits"]
                logit_diff = max(logit_diff, float(np.abs(la - lb).max()))
                sign_flips = max(sign_flips, int(((la > 0) != (lb > 0)).sum()))
                iou_diff = max(iou_diff, float(np.abs(saved["chunked"]["iou"] - saved["one_call"]["iou"]).max()))
            med = {v: statistics.median(x["wall_s"] for x in runs[v]) for v in VARIANTS}
            result["families"][family] = {
                "wall_s_median": med,
                "speedup_chunked_vs_one_call": round(med["one_call"] / med["chunked"], 3),
                "sys_s_median": {v: statistics.median(x["sys_s"] for x in runs[v]) for v in VARIANTS},
                "peak_rss_mib_median": {v: statistics.median(x["peak_rss_mib"] for x in runs[v]) for v in VARIANTS},
                "masks_identical": same,
                "max_differing_mask_pixels": differing,
                "decoder_64_prompts": {
                    "max_abs_logit_diff": logit_diff,
                    "max_logit_sign_flips": sign_flips,
                    "max_abs_iou_diff": iou_diff,
                },
                "runs": runs,
            }
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(str(args.out) + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({f: {k: v for k, v in d.items() if k != "runs"} for f, d in result["families"].items()}, indent=1))


if __name__ == "__main__":
    main()
