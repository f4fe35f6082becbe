"""Before / after a refactor: the same segment-everything run on two versions of geosam, interleaved.

Both versions run ``geosam.segment_scene`` on ``data/banepa_predict.tif`` (2048 x 2048, 9 chips of 1024 px with
128 px of overlap: the outer five reach past the scene, their padding invalid) with the same saved random-weight
ViT-B (``bench_amg.build_sane_random_sam``), 16 x 16 points (``--grid``), float32 and ``dtype="auto"``;
``--fill-value 255`` marks the scene's white wedge invalid too, as the README's demo does. Each run is a fresh subprocess whose ``PYTHONPATH`` points at one version's source tree;
runs alternate old, new, old, new, ... so that the drifting speed of a shared CPU hits both alike. The model
load is timed apart; ``segment_s`` is the wall time of ``segment_scene`` (reading, encoder, decoder, filters,
stitching, table). The output also records whether both versions give the same polygons.

    .venv/bin/python benchmarks/bench_core_change.py --old REV [--rounds 3] [--fill-value 255] [--threads 1]
        [--encode-only N]

``--encode-only N``: each run encodes one chip of the scene N times after a warm-up instead (the encoder alone, where
the scene's other work would hide a change in its noise); its medians and whether the embeddings are the same bits.

``REV`` is checked out into a temporary git worktree. Results: ``benchmarks/results/core_change.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = r"""
import json, sys, time
t0 = time.perf_counter()
import geosam
from geosam.models import load_model as load_sam
""" + r"""
bundle = load_sam(sys.argv[1], device="cpu", dtype=sys.argv[3])
t1 = time.perf_counter()
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
gdf = geosam.segment_scene(sys.argv[2], model=sys.argv[1], chip_size_px=1024, overlap_px=128, device="cpu",
                           dtype=sys.argv[3], progress=False, prefetch_chips=1, **{"points_per_side": 16, **extra})
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "segment_s": t2 - t1, "objects": len(gdf),
                  "wkb": sorted(g.wkb_hex for g in gdf.geometry), "file": geosam.__file__}))
"""


#: ``--encode-only``: one chip of the scene encoded ``extra["encodes"]`` times after a first (warm-up) encode; the
#: seconds of each, and the embedding's bytes hashed (stage-package versions only)
RUN_ENCODE = r"""
import hashlib, json, sys, time
sys.path.insert(0, "benchmarks")
import geosam
from bench_amg import load_chips
from geosam.models import load_model, preprocess
from geosam.models.runtime import encode
bundle = load_model(sys.argv[1], device="cpu", dtype=sys.argv[3])
extra = json.loads(sys.argv[4])
pv = preprocess(bundle, [load_chips(1, 1024)[0].image])[0]
emb = encode(bundle, pv)
times = []
for _ in range(extra.get("encodes", 3)):
    t = time.perf_counter()
    encode(bundle, pv)
    times.append(time.perf_counter() - t)
print(json.dumps({"encode_s": times, "hash": hashlib.sha256(emb.float().numpy().tobytes()).hexdigest(),
                  "file": geosam.__file__}))
"""


def run_in_tree(src: Path, code: str, args: list[str], threads: int) -> dict:
    """``code`` run by this Python in a fresh process that imports geosam from the source tree ``src``, with ``args``
    after it; its last line of output read as JSON, which names the geosam it imported (``file``): checked to be
    ``src``'s."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=str(src),
                         check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["file"].startswith(str(src)), f"imported {res['file']}, expected the tree at {src}"
    return res


@contextlib.contextmanager
def worktree(rev: str, path: Path) -> Iterator[Path]:
    """git revision ``rev`` checked out at ``path`` (a new detached worktree) while inside, removed afterwards."""
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False, capture_output=True)


def run_version(src: Path, model_dir: str, dtype: str, extra: dict, threads: int) -> dict:
    old_api = not (src / "geosam" / "models").is_dir()  # before the stage packages: geosam.model.load_sam
    code = RUN.replace("from geosam.models import load_model as load_sam", "from geosam.model import load_sam") if old_api else RUN
    if extra.get("encode_only"):
        code = RUN_ENCODE
    return run_in_tree(src, code, [model_dir, str(ROOT / "data" / "banepa_predict.tif"), dtype, json.dumps(extra)],
                       threads)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="git revision of the 'before' code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,auto")
    ap.add_argument("--grid", type=int, default=16, help="points per side")
    ap.add_argument("--fill-value", type=float, default=None, help="pixel value marking invalid pixels (255: the wedge)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (OMP_NUM_THREADS); 0: torch's default")
    ap.add_argument("--encode-only", type=int, default=0, metavar="N",
                    help="time N encodes of one chip per run (after a warm-up) instead of the scene")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "core_change.json"))
    args = ap.parse_args()
    extra: dict = {"points_per_side": args.grid}
    if args.fill_value is not None:
        extra["fill_value"] = args.fill_value
    if args.encode_only:
        extra = {"encode_only": True, "encodes": args.encode_only}

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from benchmarks.bench_amg import build_sane_random_sam

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        build_sane_random_sam().save_pretrained(model_dir)
        SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(model_dir)
        with worktree(args.old, Path(tmp) / "old") as old_src:
            results: dict = {}
            for dtype in args.dtypes.split(","):
                runs: dict[str, list[dict]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    runs["old"].append(run_version(old_src, model_dir, dtype, extra, args.threads))
                    runs["new"].append(run_version(ROOT, model_dir, dtype, extra, args.threads))
                if args.encode_only:  # each run's median encode, then the median of the runs
                    per_run = {k: [statistics.median(r["encode_s"]) for r in v] for k, v in runs.items()}
                    m = {k: statistics.median(v) for k, v in per_run.items()}
                    results[dtype] = {
                        "encode_s_old": [[round(t, 3) for t in r["encode_s"]] for r in runs["old"]],
                        "encode_s_new": [[round(t, 3) for t in r["encode_s"]] for r in runs["new"]],
                        "median_old_s": round(m["old"], 3), "median_new_s": round(m["new"], 3),
                        "new_over_old": round(m["new"] / m["old"], 3),
                        "same_embeddings": runs["old"][0]["hash"] == runs["new"][0]["hash"],
                    }
                    print(dtype, {k: v for k, v in results[dtype].items() if not k.startswith("encode_s_")})
                    _write(args, results)
                    continue
                med = {k: statistics.median(r["segment_s"] for r in v) for k, v in runs.items()}
                results[dtype] = {
                    "segment_s_old": [round(r["segment_s"], 2) for r in runs["old"]],
                    "segment_s_new": [round(r["segment_s"], 2) for r in runs["new"]],
                    "median_old_s": round(med["old"], 2),
                    "median_new_s": round(med["new"], 2),
                    "new_over_old": round(med["new"] / med["old"], 3),
                    "objects_old": runs["old"][0]["objects"],
                    "objects_new": runs["new"][0]["objects"],
                    "same_polygons": runs["old"][0]["wkb"] == runs["new"][0]["wkb"],
                }
                print(dtype, {k: v for k, v in results[dtype].items() if not k.startswith("segment_s_")})
                _write(args, results)  # after every dtype, so a run cut short keeps what it measured
    _write(args, results)


def _git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def _write(args: argparse.Namespace, results: dict) -> None:
    cpu = platform.processor() or ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    head = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "geosam")
    out = {"old": args.old, "new": head + (" + uncommitted changes" if dirty else ""), "rounds": args.rounds, "cpu": cpu, "cpus": os.cpu_count(), "torch_threads": args.threads or
           "default", "scene": f"data/banepa_predict.tif (9 chips of 1024 px, overlap 128, {args.grid} x {args.grid} "
           f"points, fill_value {args.fill_value})", "results": results}
    if args.encode_only:
        out["scene"] = f"one 1024 px chip of data/banepa_predict.tif encoded {args.encode_only} times a run after a warm-up"
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
