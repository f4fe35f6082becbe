"""The float32 encoder attention's two paths for whole maps, alternating in one process: keys in chunks with a running
softmax (``attend_head_flash``, the default where the map's width is a multiple of 32) against every key's score kept
for a block of queries (``geosam_attention512_flash(0)``).

A ViT-B global layer (12 heads of 64 on a 64 x 64 map, 4096 keys) from a random qkv projection, and a windowed layer
(windows of 14, the same path either way: the control), ``--rounds`` times each after a warm-up; with ``--encoder``
also whole float32 encodes of the benchmark's random ViT-B on a Banepa chip (`bench_amg.build_sane_random_sam`).
The chunked path's gain depends on the L2 (a block's scores over all keys beside a head's keys and values: 2.8 MiB
for a ViT-B) and on what else runs beside it (``--busy``: a second process on another core running the same kernel,
as the benchmark's side-by-side runs do). Writes ``benchmarks/results/attention.json`` (CPU, threads, medians per
path, ratios, largest difference of the outputs relative to their scale).

Usage: ``python benchmarks/bench_attention.py [--threads N] [--rounds R] [--encoder] [--busy] [--out PATH]``
(AVX-512 CPUs only: elsewhere the kernel is not in use and the script says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name

OUT = ROOT / "benchmarks" / "results" / "attention.json"


def layer_inputs(seed: int = 0) -> dict:
    """A ViT-B layer's qkv projection of a 64 x 64 map, relative tables for the map and for windows of 14."""
    gen = torch.Generator().manual_seed(seed)
    nh, d = 12, 64
    return {
        "qkv": torch.randn((64, 64, 3 * nh * d), generator=gen) * 1.5,
        "tables": (torch.randn((64, d, 64), generator=gen) * 0.3, torch.randn((64, d, 64), generator=gen) * 0.3),
        "wtables": (torch.randn((14, d, 14), generator=gen) * 0.3, torch.randn((14, d, 14), generator=gen) * 0.3),
        "bias": torch.randn((3 * nh * d,), generator=gen),
        "nh": nh,
        "scale": d**-0.5,
    }


def run_layer(inp: dict, window: bool, out: torch.Tensor) -> torch.Tensor:
    from geosam.models import cpu_attention

    if window:
        ok = cpu_attention.attention(inp["qkv"], inp["nh"], inp["scale"], inp["wtables"], out, 14, inp["bias"])
    else:
        ok = cpu_attention.attention(inp["qkv"], inp["nh"], inp["scale"], inp["tables"], out)
    if not ok:
        raise RuntimeError("cpu_attention did not take the layer")
    return out


def alternate(runs: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Each of ``runs`` (name -> (switch value, fn)) once per round after a warm-up: seconds per call, last outputs."""
    from geosam.models import cpu_attention

    lib = cpu_attention._library()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, torch.Tensor] = {}
    try:
        for r in range(rounds + 1):
            for name, (flash, fn) in runs.items():
                lib.geosam_attention512_flash(flash)
                t0 = time.perf_counter()
                outs[name] = fn()
                if r > 0:
                    seconds[name].append(time.perf_counter() - t0)
    finally:
        lib.geosam_attention512_flash(1)
    return seconds, outs


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def encoder_runs() -> dict:
    import tempfile

    import bench_amg
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.models import encode, load_model, preprocess

    with tempfile.TemporaryDirectory() as tmp:
        bench_amg.build_sane_random_sam(12).save_pretrained(tmp)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp)
        bundle = load_model(tmp, device="cpu", dtype="float32")
    pv = preprocess(bundle, [bench_amg.load_chips(1, 1024)[0].image])[0]
    return {"encoder_chunked": (1, lambda: encode(bundle, pv)), "encoder_kept": (0, lambda: encode(bundle, pv))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--encoder", action="store_true", help="also whole float32 encodes (a ViT-B, ~5-7 s each)")
    ap.add_argument("--busy", action="store_true", help="the same kernel running in a second process meanwhile")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from geosam.models import cpu_attention

    if not cpu_attention.available():
        sys.exit("the AVX-512 attention kernel is not in use on this machine: nothing to compare")
    busy = None
    if args.busy:  # the other core: this script's layers without --busy, until this one ends
        busy = subprocess.Popen([sys.executable, __file__, "--rounds", "100000", "--out", "/dev/null"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(5)
    try:
        inp = layer_inputs()
        bufs = {k: torch.empty((64, 64, 768)) for k in ("g1", "g0", "w1", "w0")}
        runs = {
            "global_chunked": (1, lambda: run_layer(inp, False, bufs["g1"])),
            "global_kept": (0, lambda: run_layer(inp, False, bufs["g0"])),
            "window_chunked": (1, lambda: run_layer(inp, True, bufs["w1"])),
            "window_kept": (0, lambda: run_layer(inp, True, bufs["w0"])),
        }
        if args.encoder:
            runs.update(encoder_runs())
        seconds, outs = alternate(runs, args.rounds)
    finally:
        if busy is not None:
            busy.kill()
    med = {k: round(statistics.median(v), 5) for k, v in seconds.items()}
    pairs = [p for p in ("global", "window", "encoder") if f"{p}_kept" in med]
    result = {
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "busy_neighbour": args.busy,
        "note": args.note,
        "median_s": med,
        "seconds": {k: [round(x, 5) for x in v] for k, v in seconds.items()},
        "speedup_chunked_vs_kept": {p: round(med[f"{p}_kept"] / med[f"{p}_chunked"], 4) for p in pairs},
        "max_rel_diff_chunked_vs_kept": {p: rel_diff(outs[f"{p}_chunked"], outs[f"{p}_kept"]) for p in pairs},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out != "/dev/null":
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
