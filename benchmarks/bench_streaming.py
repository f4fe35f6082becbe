"""Streaming benchmark: a generated 20000 x 20000 scene through the whole pipeline.

Uses the oracle mask generator (exact masks from a label raster), so it measures
reading, tiling, stitching and export at scale, independent of any model. The
scene is written block by block as a tiled GeoTIFF; the pipeline reads it chip by
chip. Reports wall time and peak RSS (must stay below 2 GiB) to
``benchmarks/results/streaming.json``.

    .venv/bin/python benchmarks/bench_streaming.py [--size 20000] [--chip 1024] [--overlap 128]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="scene side (px)")
    ap.add_argument("--chip", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--workdir", default=None, help="where to write the scene (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "streaming.json"))
    args = ap.parse_args()

    from geosam.export import write_vector
    from geosam.pipeline import segment_scene
    from geosam.testing import OracleMaskGenerator
    from tests.data.make_scenes import make_large_tiled_scene

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        img, lab = Path(tmp) / "scene.tif", Path(tmp) / "labels.tif"
        t0 = time.perf_counter()
        # the scene is made in a child process so that peak RSS below is the pipeline's alone
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            made = ex.submit(make_large_tiled_scene, str(img), str(lab), size=args.size, block=512, seed=0).result()
        n_objects = made.n_objects
        t_make = time.perf_counter() - t0
        rss_after_make = peak_rss_mib()

        t0 = time.perf_counter()
        gdf = segment_scene(str(img), OracleMaskGenerator(str(lab)), chip_size_px=args.chip,
                            overlap_px=args.overlap, progress=False)
        t_seg = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_vector(gdf, Path(tmp) / "out.gpkg")
        t_write = time.perf_counter() - t0
        stats = gdf.attrs["geosam"]

    peak = peak_rss_mib()
    res = {
        "scene_px": [args.size, args.size],
        "chip_size_px": args.chip,
        "overlap_px": args.overlap,
        "objects_true": n_objects,
        "objects_out": len(gdf),
        "chips": stats["chips_total"],
        "make_scene_s": round(t_make, 2),
        "segment_s": round(t_seg, 2),
        "write_gpkg_s": round(t_write, 2),
        "timings_s": {k: round(v, 2) for k, v in stats["timings_s"].items()},
        "peak_rss_mib_after_make": round(rss_after_make, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_below_2gib": peak < 2048,
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
