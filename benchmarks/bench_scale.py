"""Scale-out and resume benchmark: chips per second in-process, with a journal, and on 1 and 2 Dask workers.

Each mode runs in its own subprocess on the same generated oracle scene (exact masks from a label
raster, so it measures reading, the run loop, result transport, journaling and stitching, not a
model); ``--tiny-sam`` adds a tiny random-weight SAM (``SamConfig``, saved with ``save_pretrained``) on a
small scene, in-process and on 1 and 2 Dask workers (torch uses every core in-process, one thread per
Dask worker process, as Dask sets it). Reports chips/s, wall seconds and the client process's peak RSS
(MiB; Dask workers are other processes) to ``benchmarks/results/scale.json``.

    .venv/bin/python benchmarks/bench_scale.py [--size 2000] [--chip 256] [--tiny-sam]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("in-process", "in-process+journal", "dask-1-worker", "dask-2-workers")
TINY_SAM_MODES = ("in-process", "dask-1-worker", "dask-2-workers")


def one_run(args: argparse.Namespace) -> dict[str, float]:
    """Run one mode in this process; return its figures."""
    os.environ.setdefault("GEOSAM_CPU_AMX", "0")
    from geosam.modes.everything import segment_scene
    from geosam.testing import OracleMaskGenerator

    kw: dict = {"chip_size_px": args.chip, "overlap_px": args.overlap, "progress": False}
    if args.model:
        gen = None
        kw.update(model=args.model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, device="cpu")
    else:
        gen = OracleMaskGenerator(args.labels)
    if args.mode == "in-process+journal":
        kw["journal"] = os.path.join(tempfile.mkdtemp(), "bench.geosam-journal")
    startup = 0.0
    with ExitStack() as stack:
        if args.mode.startswith("dask"):  # the cluster's start-up is timed apart from the run
            from geosam.run.cluster import connect

            t0 = time.perf_counter()
            kw["scheduler"] = connect(stack, "local", 1 if args.mode == "dask-1-worker" else 2)
            startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        gdf = segment_scene(args.scene, gen, **kw)
        wall = time.perf_counter() - t0
    import torch

    chips = gdf.attrs["geosam"]["chips_total"]
    return {"wall_s": round(wall, 2), "cluster_startup_s": round(startup, 2), "chips": chips,
            "torch_threads_per_process": 1 if args.mode.startswith("dask") else torch.get_num_threads(),
            "chips_per_s": round(chips / wall, 2), "objects": len(gdf),
            "client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def run_mode(mode: str, scene: str, labels: str, model: str | None, chip: int, overlap: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", mode, "--scene", scene, "--labels", labels, "--chip", str(chip),
           "--overlap", str(overlap)] + (["--model", model] if model else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2000, help="oracle scene side (px)")
    ap.add_argument("--chip", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--tiny-sam", action="store_true", help="also run a tiny random SAM on a 640 x 480 scene")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.mode = args.one
        print(json.dumps(one_run(args)))
        return
    from tests.data.make_scenes import make_oracle_scene

    work = tempfile.mkdtemp(prefix="geosam-bench-scale-")
    n_obj = max(50, args.size * args.size // 8000)
    scene = make_oracle_scene(work, width=args.size, height=args.size, n_objects=n_obj, seed=5)
    results: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "scene_px": [args.size, args.size],
                     "chip_size_px": args.chip, "overlap_px": args.overlap, "oracle": {}}
    for mode in MODES:
        results["oracle"][mode] = r = run_mode(mode, str(scene.image_path), str(scene.label_path), None,
                                               args.chip, args.overlap)
        print(f"oracle {mode:20s} {r}", flush=True)
    base, jr = results["oracle"]["in-process"], results["oracle"]["in-process+journal"]
    results["journal_overhead_pct"] = round(100 * (jr["wall_s"] / base["wall_s"] - 1), 1)
    if args.tiny_sam:
        from tests._tiny_sam import build_tiny_sam

        model = str(build_tiny_sam(Path(work) / "tiny_sam"))
        small = make_oracle_scene(work, width=640, height=480, n_objects=20, seed=6, name="small")
        results["tiny_sam"] = {"scene_px": [640, 480], "chip_size_px": 192, "points_per_side": 4}
        for mode in TINY_SAM_MODES:
            results["tiny_sam"][mode] = r = run_mode(mode, str(small.image_path), str(small.label_path), model,
                                                     192, 32)
            print(f"tiny SAM {mode:20s} {r}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
