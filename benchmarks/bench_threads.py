"""What a second thread buys, per dtype: the encoder's largest product and geosam's ViT-B encoder at 1 and ``--threads``
threads, alternating in one process (issue 24: the bf16 chip barely sped up with the second core, float32 did).

Each workload alternates its thread counts round by round after a warm-up (`_alternate.alternate`), so the host's
drift falls on both alike: the product is ViT-B's QKV projection (4096 x 768 by 768 x 2304, 14.5 GFLOP), repeated
``--repeats`` times per timed run; the encoder is geosam's (`geosam.models.encode`) on one 1024 px chip of the
Banepa scene through the benchmark's random ViT-B (`bench_amg.build_sane_random_sam`). bf16 only where the CPU has
native bf16. Writes, per workload, every round's seconds, the median per thread count and
``scaling`` = median at 1 thread / median at ``--threads`` (2.0: the second core doubles it) to ``--out``.

With both workloads, the encoder's rate (its counted FLOPs, `roofline.count_flops`, over its median seconds) is also
put against two matmul rates at the same thread count: the product's ``sustained`` rate above (back to back into one
output, ``--repeats`` per run, as an encoder keeps the units busy for seconds) and ``best_of``
(`roofline.matmul_flops_per_s`: the fastest single product of bench_amg's shapes, the peak bench_amg's
``encoder_fraction_of_peak`` divides by), measured once per round in the same alternation. Where a CPU runs its
first products of a burst faster than it can keep up (AMX on a shared host), the two differ and so do the fractions.

    .venv/bin/python benchmarks/bench_threads.py --threads 2 --rounds 5 --out benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

QKV = (4096, 768, 2304)  # ViT-B's tokens at 1024 px, width, 3 x width


def main() -> None:
    from _alternate import alternate, parse_and_set_up
    from _machine import machine
    from bench_amg import build_sane_random_sam, load_chips
    from roofline import count_flops, cpu_has_native_bf16, matmul_flops_per_s

    from geosam.models import encode, load_model, preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="products per timed run")
    ap.add_argument("--workloads", nargs="+", default=["matmul", "encoder"], choices=["matmul", "encoder"])
    args = parse_and_set_up(ap, "threads.json")
    many = args.threads
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])
    g = torch.Generator().manual_seed(0)
    m, k, n = QKV
    both = "matmul" in args.workloads and "encoder" in args.workloads  # then the encoder's fractions too
    runs = {}
    best_of: dict[str, dict[str, list[float]]] = {d: {} for d in dtypes}  # dtype: threads: GFLOP/s per round
    for d in dtypes:
        if both:
            def peak(d: str = d) -> None:
                v = matmul_flops_per_s(getattr(torch, d))["flops_per_s"] / 1e9
                best_of[d].setdefault(str(torch.get_num_threads()), []).append(round(v, 1))

            runs[f"best_of_{d}"] = peak
        if "matmul" in args.workloads:
            a = torch.randn((m, k), generator=g).to(getattr(torch, d))
            b = torch.randn((k, n), generator=g).to(getattr(torch, d))
            out_ = torch.empty((m, n), dtype=a.dtype)  # one output written again (no fresh pages per product)
            runs[f"matmul_{d}"] = lambda a=a, b=b, o=out_: [torch.mm(a, b, out=o) for _ in range(args.repeats)][-1]
    if "encoder" in args.workloads:
        with tempfile.TemporaryDirectory() as tmp:
            build_sane_random_sam().save_pretrained(tmp)
            bundle = load_model(tmp, device="cpu", dtype="float32")
        pv = preprocess(bundle, [load_chips(1, 1024)[0].image])[0]
        enc_gflop = {}
        for d in dtypes:
            b_d = dataclasses.replace(bundle, dtype=getattr(torch, d))
            enc_gflop[d] = count_flops(lambda b_d=b_d: encode(b_d, pv)) / 1e9
            runs[f"encoder_{d}"] = lambda b_d=b_d: encode(b_d, pv)
    setups = {str(t): (lambda t=t: torch.set_num_threads(t)) for t in (1, many)}
    out: dict = {**machine(many, args.note), "rounds": args.rounds, "repeats": args.repeats, "workloads": {}}
    try:
        for name, run in runs.items():
            seconds, _ = alternate(setups, run, args.rounds)
            if name.startswith("best_of"):
                d = name.removeprefix("best_of_")
                kept = {t: v[1:] for t, v in best_of[d].items()}  # round 0 is alternate's warm-up
                out["workloads"][name] = {"gflop_per_s_per_round": kept,
                                          "median_gflop_per_s": {t: statistics.median(v) for t, v in kept.items()}}
                print(name, json.dumps(out["workloads"][name]["median_gflop_per_s"]), flush=True)
                continue
            med = {t: statistics.median(s) for t, s in seconds.items()}
            w = {"seconds_per_round": seconds, "median_s": med, "scaling": round(med["1"] / med[str(many)], 3)}
            if name.startswith("matmul"):
                gflop = 2 * m * k * n * args.repeats / 1e9
                w["gflop_per_s"] = {t: round(gflop / s, 1) for t, s in med.items()}
            out["workloads"][name] = w
            print(name, json.dumps({k: v for k, v in w.items() if k != "seconds_per_round"}), flush=True)
    finally:
        torch.set_num_threads(many)
    w = out["workloads"]
    if both:
        out["encoder_fraction"] = {}
        for d in dtypes:
            enc = {t: enc_gflop[d] / s for t, s in w[f"encoder_{d}"]["median_s"].items()}
            w[f"encoder_{d}"]["gflop"] = round(enc_gflop[d], 1)
            w[f"encoder_{d}"]["gflop_per_s"] = {t: round(v, 1) for t, v in enc.items()}
            def of(rates: dict[str, float], enc: dict[str, float] = enc) -> dict[str, float]:
                return {t: round(v / rates[t], 3) for t, v in enc.items()}

            out["encoder_fraction"][d] = {"of_sustained_matmul": of(w[f"matmul_{d}"]["gflop_per_s"]),
                                          "of_best_of_matmul": of(w[f"best_of_{d}"]["median_gflop_per_s"])}
        print("encoder_fraction", json.dumps(out["encoder_fraction"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
