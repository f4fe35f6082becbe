"""What fraction of the CPU's measured matmul peak geosam's encoder and decoder reach, per dtype, in one run.

Interleaved, ``--rounds`` times: the GEMM throughput (``benchmarks/roofline.py``: float32 through ``torch.mm``
(MKL) and through oneDNN, bf16), then one 1024 px chip of ``data/banepa_predict.tif`` encoded by geosam's float32
and bf16 paths and by the stock float32 forward, then ``--prompts`` point prompts (a grid) decoded by geosam's
decoder on that embedding (full work: no ``iou_floor``); the GEMM throughput once more at the end. FLOPs are
counted once per path (``count_flops``). The peak per dtype is the median of the measurements, float32's the better
of MKL and oneDNN. Fractions: counted FLOPs / seconds / peak (``*_model_flops``: the stock forward's FLOPs; for
the decoder, transformers' ``SamMaskDecoder`` on the same prompts, counted, over geosam's decoder seconds: it stays
comparable when geosam's decoder removes work, which lowers ``decoder_fraction_of_peak`` while it gets faster).

    .venv/bin/python benchmarks/bench_roofline.py [--threads 1] [--rounds 1] [--merge-into benchmarks/results/latest.json]

``--merge-into`` copies the fractions into ``bench_amg.py``'s results file (as ``encoder_fraction_of_peak`` /
``decoder_fraction_of_peak``, bench_amg's own figures (its encoders and decode stages timed within the generator
runs) kept under ``..._in_bench_amg``) and
this run's figures under ``roofline``. Results: ``benchmarks/results/roofline.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from _machine import cpu_name
from bench_amg import build_sane_random_sam, load_chips
from roofline import count_flops, cpu_has_native_bf16, matmul_flops_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=64, help="point prompts decoded per round (a square grid)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "roofline.json"))
    ap.add_argument("--note", default="shared machine: other jobs running; peak and stages measured side by side",
                    help="what the results file says about the machine's load")
    ap.add_argument("--merge-into", default="")
    ap.add_argument("--from-file", default="", help="merge this earlier result file instead of measuring")
    args = ap.parse_args()
    if args.from_file:
        merge(json.loads(Path(args.from_file).read_text()), Path(args.merge_into), args.from_file)
        return

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from geosam.models import decode_points, encode, load_model, preprocess

    torch.set_grad_enabled(False)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    chip = load_chips(1, 1024)[0]
    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp)
        bundle = load_model(tmp, device="cpu", dtype="float32")
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])
    bundles = {d: dataclasses.replace(bundle, dtype=getattr(torch, d)) for d in dtypes}
    stock32 = dataclasses.replace(bundle, fast_encoder=False)
    pv = preprocess(bundle, [chip.image])[0]
    side = max(1, round(args.prompts**0.5))
    g = (np.arange(side) + 0.5) / side * 1024
    points = torch.tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), dtype=torch.float32)

    enc_flops = {d: count_flops(lambda d=d: encode(bundles[d], pv)) for d in dtypes}
    model_flops = count_flops(lambda: encode(stock32, pv))
    emb = encode(bundle, pv)
    dec_flops = count_flops(lambda: decode_points(bundle, emb, points))
    # the model's own decoder work: transformers' SamMaskDecoder on the same prompts (counted, not timed)
    dec_model_flops = count_flops(lambda: decode_points(dataclasses.replace(bundle, fast_decoder=False), emb, points))
    encoders = {f"encoder_{d}": (lambda b=bundles[d]: encode(b, pv)) for d in dtypes}
    encoders["encoder_stock_float32"] = lambda: encode(stock32, pv)
    decoder = lambda: decode_points(bundle, emb, points)
    for fn in (*encoders.values(), decoder):  # warm-up
        fn()

    gemm_paths = {"float32_torch_mm": (torch.float32, "torch"), "float32_onednn": (torch.float32, "onednn")}
    if "bfloat16" in dtypes:
        gemm_paths["bfloat16"] = (torch.bfloat16, "torch")
    peaks: dict[str, list[float]] = {k: [] for k in gemm_paths}
    secs: dict[str, list[float]] = {k: [] for k in (*encoders, "decoder")}

    def measure_peaks() -> None:
        for k, (dt, path) in gemm_paths.items():
            peaks[k].append(matmul_flops_per_s(dt, path=path)["flops_per_s"])

    for _ in range(args.rounds):
        measure_peaks()
        for name, fn in (*encoders.items(), ("decoder", decoder)):
            t0 = time.perf_counter()
            fn()
            secs[name].append(time.perf_counter() - t0)
    measure_peaks()

    med = {k: float(np.median(v)) for k, v in peaks.items()}
    peak = {"float32": max(med["float32_torch_mm"], med["float32_onednn"])}
    if "bfloat16" in dtypes:
        peak["bfloat16"] = med["bfloat16"]
    sec = {k: float(np.median(v)) for k, v in secs.items()}
    result = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "note": args.note,
        "gemm_gflop_per_s_median": {k: round(v / 1e9, 1) for k, v in med.items()},
        "gemm_gflop_per_s_measurements": {k: [round(x / 1e9, 1) for x in v] for k, v in peaks.items()},
        "peak_gflop_per_s": {d: round(v / 1e9, 1) for d, v in peak.items()},
        "encoder_gflop": {**{d: round(v / 1e9, 1) for d, v in enc_flops.items()}, "stock_model": round(model_flops / 1e9, 1)},
        "decoder_gflop_per_prompt": round(dec_flops / len(points) / 1e9, 3),
        "decoder_stock_gflop_per_prompt": round(dec_model_flops / len(points) / 1e9, 3),
        "seconds": {k: round(v, 3) for k, v in sec.items()},
        "encoder_fraction_of_peak": {d: round(enc_flops[d] / sec[f"encoder_{d}"] / peak[d], 3) for d in dtypes},
        "encoder_fraction_of_peak_model_flops": {d: round(model_flops / sec[f"encoder_{d}"] / peak[d], 3) for d in dtypes},
        "encoder_stock_float32_fraction_of_peak": round(model_flops / sec["encoder_stock_float32"] / peak["float32"], 3),
        # geosam's decoder runs in float32 under both dtypes
        "decoder_fraction_of_peak": {d: round(dec_flops / sec["decoder"] / peak["float32"], 3) for d in dtypes},
        # the stock decoder's FLOPs over geosam's decoder seconds: comparable across rounds that remove work
        "decoder_fraction_of_peak_model_flops": {
            d: round(dec_model_flops / sec["decoder"] / peak["float32"], 3) for d in dtypes
        },
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    if args.merge_into:
        merge(result, Path(args.merge_into), str(out))


def merge(result: dict, target: Path, source: str) -> None:
    """Copy the fractions of ``result`` into ``bench_amg.py``'s results file ``target`` (see the module docstring)."""
    data = json.loads(target.read_text())
    for key in ("encoder_fraction_of_peak", "decoder_fraction_of_peak", "encoder_fraction_of_peak_model_flops",
                "encoder_stock_float32_fraction_of_peak", "decoder_fraction_of_peak_model_flops"):
        if key not in result:  # a results file from before the key existed
            continue
        if key in data:
            data[f"{key}_in_bench_amg"] = data[key]
        data[key] = result[key]
    data["roofline"] = {**result, "source": f"benchmarks/bench_roofline.py ({source})"}
    target.write_text(json.dumps(data, indent=2) + "\n")
    print(f"merged into {target}")


if __name__ == "__main__":
    main()
