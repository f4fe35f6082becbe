"""Segment-everything on a CUDA GPU: dtypes, fast paths on and off, chips and prompts per batch, against the
transformers ``mask-generation`` pipeline and segment-anything's ``SamAutomaticMaskGenerator`` (issue 24).

The same random-weight ViT-B as `bench_amg` (``build_sane_random_sam``) on 1024 px chips of the Banepa scene. Every
section is timed with the device synchronised (``torch.cuda.synchronize`` around each call; geosam, the pipeline and
segment-anything return host arrays, which synchronise anyway), after a warm-up of each path, and each section is
written to ``--out`` as soon as it is done, so a run cut short by its time limit keeps what it measured:

* ``env``: torch, CUDA, the GPU, transformers, whether float32 products may use TF32 (they may not by default; cuDNN's
  convolutions may, for geosam and the references alike).
* ``matmul_peak_tflop_per_s``: an 8192^3 product per dtype (float32 without TF32, TF32, float16, bfloat16), the
  median of 10 after 3 warm-ups, timed with CUDA events.
* ``encoder``: one chip's image embedding per dtype and fast-path setting (median of ``--repeats``), and images per
  batch (1, 4, 8) in the fastest of them; each against the counted FLOPs (``fraction_of_peak``).
* ``grids``: per grid, geosam in every dtype with fast paths off (the stock modules under autocast) and on, and the
  two references in float32, interleaved chip by chip for ``--rounds`` rounds (median round per variant; ratios
  ``speedup_vs_pipeline`` / ``speedup_vs_sam_amg``), geosam's stage times; then an NMS-free pass of every variant
  for the mask agreement with the pipeline (`bench_amg.compare`: mask IoU >= 0.9 both ways).
* ``batching``: all chips through ``SamMaskGenerator.generate_batch`` with 1, 2, 4 images per encoder batch, and
  64, 256, 1024 prompts per decoder batch, at the last grid, in the headline dtype.

    # here, once: the chips as arrays (the GPU machine need not have rasterio)
    .venv/bin/python benchmarks/bench_cuda.py --save-chips benchmarks/results/cuda_chips.npz --chips 4
    # there
    python3 benchmarks/bench_cuda.py --chips-npz benchmarks/results/cuda_chips.npz --out cuda.json

A CPU run (``--device cpu --dtypes float32 --encoder-layers 2 --encoder-width 96 --grids 4``) exercises every
section quickly; the figures only mean something on a GPU.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch


@dataclasses.dataclass
class ArrayChip:
    """What `geosam.segment.SamMaskGenerator` reads of a `geosam.read.scene.Chip`: its pixels and valid mask."""

    image: np.ndarray
    valid: np.ndarray
    prompt_mask: np.ndarray | None = None

    def prompt_region(self) -> np.ndarray:
        return self.valid if self.prompt_mask is None else (self.valid & self.prompt_mask)


def save_chips(path: str, n: int, size: int) -> None:
    from bench_amg import load_chips

    chips = load_chips(n, size)
    np.savez_compressed(path, images=np.stack([c.image for c in chips]), valid=np.stack([c.valid for c in chips]))
    print(f"wrote {len(chips)} chips of {size} px to {path}")


def load_array_chips(path: str | None, n: int, size: int) -> list[ArrayChip]:
    if path:
        z = np.load(path)
        return [ArrayChip(np.ascontiguousarray(i), np.ascontiguousarray(v)) for i, v in zip(z["images"], z["valid"])][:n]
    from bench_amg import load_chips

    return [ArrayChip(c.image, c.valid) for c in load_chips(n, size)]


class Clock:
    """Wall seconds of ``fn()`` with the device synchronised before and after."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


def matmul_peaks(device: torch.device, n: int) -> dict[str, float]:
    """TFLOP/s of an n^3 product per dtype (CUDA events; median of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        from roofline import matmul_flops_per_s

        return {"float32": round(matmul_flops_per_s(torch.float32)["flops_per_s"] / 1e12, 3)}
    out = {}
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dt, tf32 in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                               ("float16", torch.float16, False), ("bfloat16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(10):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                a @ b
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / 1e3)
            out[name] = round(2 * n**3 / float(np.median(times)) / 1e12, 1)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-chips", help="write --chips chips of the Banepa scene to this .npz and exit")
    ap.add_argument("--chips-npz", help="chips written by --save-chips (else read with geosam.read.scene)")
    ap.add_argument("--chips", type=int, default=2, help="chips per timed round")
    ap.add_argument("--batch-chips", type=int, default=4, help="chips of the batching section")
    ap.add_argument("--chip-size", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--fast-paths", nargs="+", choices=["off", "on"], default=["off", "on"],
                    help="geosam's own encoder and decoder: off (the stock modules), on, or both side by side")
    ap.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10, help="encoder timings per setting")
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--encoder-layers", type=int, default=12)
    ap.add_argument("--encoder-width", type=int, default=768,
                    help="the encoder's hidden size (ViT-B: 768); smaller only to exercise the script quickly")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--budget-s", type=float, default=400.0, help="sections not started after this many seconds")
    ap.add_argument("--sections", nargs="+", default=["peaks", "encoder", "references", "grid", "batching"],
                    help="which sections run (and filter_chunk with --filter-chunks)")
    ap.add_argument("--filter-chunks", type=int, nargs="*", default=[],
                    help="masks per filter step on the GPU (geosam.segment.crop.DEVICE_CHUNK) timed side by side at "
                    "the last grid, with the masks of each compared to the first")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cuda.json"))
    args = ap.parse_args()
    if args.save_chips:
        save_chips(args.save_chips, args.chips, args.chip_size)
        return

    t_start = time.perf_counter()
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "save_chips")}, "errors": {}}

    def write() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if torch.cuda.is_available() and str(args.device).startswith("cuda"):
            result["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")

    def section(name: str, fn) -> None:
        if name.split("_")[0] not in args.sections and name != "filter_chunk":
            return
        if time.perf_counter() - t_start > args.budget_s:
            result["errors"][name] = "not started: time budget spent"
            print(f"[{name}] skipped: budget", flush=True)
            write()
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - keep the other sections' figures
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
        write()

    import transformers
    from bench_amg import agreement_parts, build_sane_random_sam, interleaved, pipeline_runner
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.models import encode, load_model, preprocess
    from geosam.segment import SamMaskGenerator

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    clock = Clock(device)
    result["env"] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": platform.python_version(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
    print(result["env"], flush=True)
    all_chips = load_array_chips(args.chips_npz, max(args.chips, args.batch_chips), args.chip_size)
    chips = all_chips[: args.chips]
    model = build_sane_random_sam(args.encoder_layers, encoder_width=args.encoder_width)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp)
        base = load_model(tmp, device=str(device), dtype="float32")
    bundles = {(d, fast): dataclasses.replace(base, dtype=getattr(torch, d), fast_encoder=fast, fast_decoder=fast)
               for d in args.dtypes for fast in (f == "on" for f in args.fast_paths)}

    def name(d: str, fast: bool) -> str:
        return f"geosam_{d}_fast_{'on' if fast else 'off'}"

    def section_peaks() -> None:
        result["matmul_peak_tflop_per_s"] = matmul_peaks(device, args.matmul_n)
        print("peaks", result["matmul_peak_tflop_per_s"], flush=True)

    section("peaks", section_peaks)

    def peak_of(d: str) -> float | None:
        return result.get("matmul_peak_tflop_per_s", {}).get(d)

    def section_encoder() -> None:
        from roofline import count_flops

        pv = preprocess(base, [chips[0].image])[0]
        gflop = count_flops(lambda: encode(bundles[("float32", False)], pv)) / 1e9
        enc: dict = {"gflop_per_image": round(gflop, 1), "seconds": {}, "fraction_of_peak": {}, "errors": {}}
        for (d, fast), b in bundles.items():
            key = name(d, fast).removeprefix("geosam_")
            try:
                for _ in range(2):
                    clock(lambda b=b: encode(b, pv))
                s = float(np.median([clock(lambda b=b: encode(b, pv))[0] for _ in range(args.repeats)]))
            except Exception as exc:  # noqa: BLE001 - e.g. a dtype this device lacks
                enc["errors"][key] = f"{type(exc).__name__}: {exc}"
                continue
            enc["seconds"][key] = round(s, 5)
            if peak_of(d):
                enc["fraction_of_peak"][key] = round(gflop / 1e3 / s / peak_of(d), 3)
        best = min(enc["seconds"], key=enc["seconds"].get)
        d, fast = best.split("_fast_")[0], best.endswith("_on")
        enc["batch"] = {"setting": best, "seconds_per_image": {}}
        for n in (1, 4, 8):
            pvn = preprocess(base, [chips[i % len(chips)].image for i in range(n)])[0]
            b = bundles[(d, fast)]
            clock(lambda b=b, pvn=pvn: encode(b, pvn))
            s = float(np.median([clock(lambda b=b, pvn=pvn: encode(b, pvn))[0] for _ in range(max(3, args.repeats // 2))]))
            enc["batch"]["seconds_per_image"][str(n)] = round(s / n, 5)
        result["encoder"] = enc
        print("encoder", enc, flush=True)

    section("encoder", section_encoder)

    def runner(b, grid: int, nms: float):
        gen = SamMaskGenerator(b, points_per_side=grid, points_per_batch=args.points_per_batch,
                               pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                               box_nms_thresh=nms)
        return (lambda chip: gen.generate(chip).masks), gen

    refs: dict = {}

    def section_refs() -> None:
        from bench_amg import _nms_patch
        from sam_anchor import build_segment_anything
        from transformers import pipeline

        refs["nms"] = _nms_patch()
        refs["pipe"] = pipeline("mask-generation", model=base.model, image_processor=SamImageProcessorPil(),
                                device=device)
        refs["sam"] = build_segment_anything(model).to(device)
        result["references"] = {"nms": refs["nms"]}

    section("references", section_refs)

    def sam_runner(grid: int, nms: float):
        from bench_amg import sam_amg_runner

        return sam_amg_runner(refs["sam"], args, grid, nms)

    def timed_rounds(runners: dict, gens: dict) -> tuple[dict, dict, dict]:
        """``runners`` interleaved for ``--rounds`` rounds, each call timed with the device synchronised: the
        results' seconds (median round), per round, and the stage times of each generator in ``gens`` in its
        median round; the first round's masks; each runner's seconds per round, unrounded."""
        stages: dict = {n: [] for n in gens}

        def on_round(r: int) -> None:
            for n, g in gens.items():
                if r > 0:
                    stages[n].append(dict(g.timings_s))
                g.timings_s.clear()

        timed = {n: (lambda chip, run=run: clock(lambda: run(chip))[1]) for n, run in runners.items()}
        rounds_s, masks = interleaved(timed, chips, args.rounds, on_round)
        on_round(args.rounds)
        out: dict = {"seconds": {n: round(float(np.median(v)), 4) for n, v in rounds_s.items()},
                     "seconds_per_round": {n: [round(x, 4) for x in v] for n, v in rounds_s.items()}, "stage_s": {}}
        for n in gens:
            if n in rounds_s and stages[n]:
                st = stages[n][int(np.argsort(rounds_s[n])[(len(rounds_s[n]) - 1) // 2])]
                out["stage_s"][n] = {k: round(v, 4) for k, v in st.items()}
        return out, masks, rounds_s

    result["grids"] = {}
    for grid in args.grids:
        def section_grid(grid: int = grid) -> None:
            runners, gens = {}, {}
            for (d, fast), b in bundles.items():
                runners[name(d, fast)], gens[name(d, fast)] = runner(b, grid, args.box_nms_thresh)
            if "pipe" in refs:
                runners["pipeline"] = pipeline_runner(refs["pipe"], args, grid, args.box_nms_thresh)
            if "sam" in refs:
                runners["sam_amg"] = sam_runner(grid, args.box_nms_thresh)
            for n, run in list(runners.items()):  # warm-up, and drop a variant this device cannot run
                try:
                    run(chips[0])
                except Exception as exc:  # noqa: BLE001
                    result["errors"][f"{grid}x{grid}:{n}"] = f"{type(exc).__name__}: {exc}"
                    del runners[n]
            g, masks, rounds_s = timed_rounds(runners, gens)
            seconds = {n: float(np.median(v)) for n, v in rounds_s.items()}
            for ref in ("pipeline", "sam_amg"):
                if ref in seconds:
                    g[f"speedup_vs_{ref}"] = {n: round(seconds[ref] / seconds[n], 2) for n in seconds if n.startswith("geosam")}
            g["masks"] = {n: [len(m) for m in v] for n, v in masks.items()}
            result["grids"][f"{grid}x{grid}"] = g
            write()
            # agreement: every variant without NMS, against the pipeline (and segment-anything)
            free = {}
            for (d, fast), b in bundles.items():
                if name(d, fast) in runners:
                    free[name(d, fast)] = runner(b, grid, 1.0)[0]
            if "pipe" in refs:
                free["pipeline"] = pipeline_runner(refs["pipe"], args, grid, 1.0)
            if "sam" in refs:
                free["sam_amg"] = sam_runner(grid, 1.0)
            _, masks_all = interleaved(free, chips)
            g["masks_without_nms"] = {n: [len(m) for m in v] for n, v in masks_all.items()}
            for ref in ("pipeline", "sam_amg"):
                if ref not in masks_all:
                    continue
                g[f"agreement_vs_{ref}"] = {
                    n: agreement_parts(masks[n], masks[ref], masks_all[n], masks_all[ref])["pooled"]["mask_agreement"]
                    for n in masks_all if n != ref and n in masks}
            print(f"grid {grid}:", json.dumps({k: g[k] for k in g if k.startswith(("seconds", "speedup", "agreement"))}),
                  flush=True)

        section(f"grid_{grid}", section_grid)

    def section_batching() -> None:
        grid = args.grids[-1]
        secs = result["grids"].get(f"{grid}x{grid}", {}).get("seconds", {})
        cands = {n: s for n, s in secs.items() if n.startswith("geosam")}
        fallback = name("float16", True) if ("float16", True) in bundles else name(args.dtypes[0], False)
        best = min(cands, key=cands.get) if cands else fallback
        d, fast = best.removeprefix("geosam_").split("_fast_")[0], best.endswith("_on")
        b = bundles[(d, fast)]
        bchips = all_chips[: args.batch_chips]
        out: dict = {"setting": best, "grid": grid, "chips": len(bchips), "seconds_per_chip": {}}
        for eb, ppb in ((1, args.points_per_batch), (2, args.points_per_batch), (4, args.points_per_batch),
                        (1, 256), (1, 1024), (4, 256)):
            gen = SamMaskGenerator(b, points_per_side=grid, points_per_batch=ppb,
                                   pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                                   box_nms_thresh=args.box_nms_thresh, encoder_batch_size=eb)
            gen.generate_batch(bchips[:1])
            runs = [clock(lambda gen=gen: gen.generate_batch(bchips))[0] for _ in range(3)]
            out["seconds_per_chip"][f"images_{eb}_prompts_{ppb}"] = round(float(np.median(runs)) / len(bchips), 4)
        result["batching"] = out
        print("batching", out, flush=True)

    section("batching", section_batching)

    def section_filter_chunk() -> None:
        from geosam.segment import crop

        grid = args.grids[-1]
        runners, gens = {}, {}
        wanted = [v for v in (("float16", True), ("float32", False)) if v in bundles] or [next(iter(bundles))]
        for d, fast in wanted:
            for c in args.filter_chunks:
                run, gen = runner(bundles[(d, fast)], grid, args.box_nms_thresh)
                key = f"{name(d, fast)}_chunk_{c}"
                runners[key] = lambda chip, run=run, c=c: (setattr(crop, "DEVICE_CHUNK", c), run(chip))[1]
                gens[key] = gen
        for run in runners.values():
            run(chips[0])
        timed, masks, _ = timed_rounds(runners, gens)
        out: dict = {"grid": grid, **timed, "masks_equal_to_first_chunk": {}}
        for n in gens:
            first = n.rsplit("_chunk_", 1)[0] + f"_chunk_{args.filter_chunks[0]}"
            out["masks_equal_to_first_chunk"][n] = all(
                np.array_equal(a, b) for a, b in zip(masks[n], masks[first])) and len(masks[n]) == len(masks[first])
        result["filter_chunk"] = out
        print("filter_chunk", json.dumps(out), flush=True)

    if args.filter_chunks:
        section("filter_chunk", section_filter_chunk)
    write()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
