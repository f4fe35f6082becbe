"""Before / after a change to SAM 3's CPU path: one chip's backbone and detector on two versions of geosam, interleaved.

Each run is a fresh subprocess whose ``PYTHONPATH`` points at one version's source tree (``--old REV`` checked out
into a temporary git worktree, the new one this checkout); runs alternate old, new, old, new, ... so that the
drifting speed of a shared CPU hits both alike. A run loads the same saved full-size random-weight SAM 3
(`bench_sam3._save_model`), preprocesses one 1024 px chip of ``data/banepa_predict.tif``, encodes two phrases and,
after a warm-up, times ``--chips`` passes of `geosam.models.sam3.vision_features` (the backbone) and
`geosam.models.sam3.detect`, as ``segment_text`` runs them; it counts the process's minor page faults over those
passes (pages the kernel handed over fresh: what glibc's allocator settings and the size of the intermediates
decide) and the CPU time spent in user and in system (kernel) code, and records a digest of the detector's outputs, so that the results say whether both versions give the same
bits. A fresh process per run, because `geosam.models.cpu_memory.keep_freed_memory` holds for the process.

    .venv/bin/python benchmarks/bench_sam3_change.py --old REV [--rounds 3] [--chips 3] [--threads 2] [--dtype bfloat16]

Results: ``benchmarks/results/sam3_change.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from bench_core_change import _git, run_in_tree, worktree

OUT = ROOT / "benchmarks" / "results" / "sam3_change.json"

RUN = r"""
import hashlib, json, resource, sys, time
import torch
import geosam
model_dir, scene, dtype, chips, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
import numpy as np, rasterio
from rasterio.windows import Window
from geosam.models import load_model, preprocess
from geosam.models.sam3 import detect, encode_text, vision_features
with rasterio.open(scene) as src:
    image = np.moveaxis(src.read([1, 2, 3], window=Window(0, 0, 1024, 1024)), 0, -1)
bundle = load_model(model_dir, device="cpu", dtype=dtype)
pixels, _, _ = preprocess(bundle, [image])
text = encode_text(bundle, ["building", "tree"])
out = detect(bundle, vision_features(bundle, pixels), text)  # warm-up
backbone, detector = [], []
usage = resource.getrusage(resource.RUSAGE_SELF)
faults = usage.ru_minflt
for _ in range(chips):
    t0 = time.perf_counter()
    vision = vision_features(bundle, pixels)
    t1 = time.perf_counter()
    out = detect(bundle, vision, text)
    backbone.append(t1 - t0)
    detector.append(time.perf_counter() - t1)
end = resource.getrusage(resource.RUSAGE_SELF)
faults = (end.ru_minflt - faults) / chips
cpu_user, cpu_system = (end.ru_utime - usage.ru_utime) / chips, (end.ru_stime - usage.ru_stime) / chips
digest = hashlib.sha256()
for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
    digest.update(getattr(out, name).float().contiguous().numpy().tobytes())
print(json.dumps({"backbone_s": backbone, "detect_s": detector, "minor_faults_per_chip": faults,
                  "cpu_user_s_per_chip": cpu_user, "cpu_system_s_per_chip": cpu_system, "outputs_sha256": digest.hexdigest(),
                  "file": geosam.__file__}))
"""


def run_version(src: Path, model_dir: str, dtype: str, chips: int, threads: int) -> dict:
    return run_in_tree(src, RUN, [model_dir, str(ROOT / "data" / "banepa_predict.tif"), dtype, str(chips),
                                  str(threads)], threads)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision of the 'before' code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chips", type=int, default=3, help="timed passes per run, after a warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from bench_sam3 import _save_model

    runs: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "sam3")
        _save_model(model_dir)
        with worktree(args.old, Path(tmp) / "old") as old_src:
            for r in range(args.rounds):
                for name, src in (("old", old_src), ("new", ROOT)):
                    runs[name].append(run_version(src, model_dir, args.dtype, args.chips, args.threads))
                    last = runs[name][-1]
                    print(f"round {r + 1} {name}: backbone {statistics.median(last['backbone_s']):.3f} s, detect "
                          f"{statistics.median(last['detect_s']):.3f} s, {last['minor_faults_per_chip']:.0f} faults/chip, "
                          f"CPU {last['cpu_user_s_per_chip']:.2f} s user + {last['cpu_system_s_per_chip']:.2f} s system",
                          flush=True)  # fmt: skip

    def summary(rs: list[dict]) -> dict:
        return {
            "backbone_s_median_of_run_medians": round(statistics.median(statistics.median(r["backbone_s"]) for r in rs), 3),
            "detect_s_median_of_run_medians": round(statistics.median(statistics.median(r["detect_s"]) for r in rs), 3),
            "minor_faults_per_chip_median": round(statistics.median(r["minor_faults_per_chip"] for r in rs)),
            "cpu_user_s_per_chip_median": round(statistics.median(r["cpu_user_s_per_chip"] for r in rs), 3),
            "cpu_system_s_per_chip_median": round(statistics.median(r["cpu_system_s_per_chip"] for r in rs), 3),
        }

    dirty = _git("status", "--porcelain", "--", "geosam")
    result = {
        **machine(args.threads, args.note),
        "old": _git("rev-parse", "--short", args.old),
        "new": _git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else ""),
        "dtype": args.dtype,
        "chips_per_run": args.chips,
        "model": "full-size random SAM 3 (transformers' Sam3Config), 1008 px, phrases 'building' and 'tree'",
        "summary": {name: summary(rs) for name, rs in runs.items()},
        "same_outputs": len({r["outputs_sha256"] for rs in runs.values() for r in rs}) == 1,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "same_outputs")}))


if __name__ == "__main__":
    main()
