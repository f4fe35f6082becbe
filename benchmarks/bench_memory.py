"""Peak memory of a whole run vs scene size: objects kept in memory vs streamed to the output.

Generated scenes (``tests.data.make_scenes.make_large_tiled_scene``: one object per
~80 px cell, so the number of objects grows with the area) of 2000^2, 20000^2 and
60000^2 px go through ``segment_scene`` with the oracle mask generator (exact masks from
the label raster: no model, so the figures are the pipeline's own):

* ``frame``: the GeoDataFrame is built in memory and written with ``write_vector``
  (what a Python caller without ``output=`` gets; how the CLI worked before);
* ``streamed``: ``segment_scene_to_file(scene, "objects.gpkg")`` (what the CLI does): finished
  objects wait in a temporary SQLite file and are streamed into the GeoPackage.

Each run is a fresh process; its own peak RSS (``ru_maxrss``) is reported, and the highest RSS
seen by 10/25/50/75/100 % of the run's time (sampled every second: a budget that levels off
early is independent of the number of objects). Results go to
``benchmarks/results/memory.json`` after every run (a long run keeps what it measured).

    .venv/bin/python benchmarks/bench_memory.py [--sizes 2000 20000 60000] [--frame-max 20000]
        [--workdir /path/with/space]   # generated scenes are kept there and reused
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _make(img: str, lab: str, size: int) -> int:
    from tests.data.make_scenes import make_large_tiled_scene

    return int(make_large_tiled_scene(img, lab, size=size, block=512, seed=0).n_objects)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class _RssTrace:
    """RSS sampled every ``every_s`` seconds in a thread (does the run's memory level off?)."""

    def __init__(self, every_s: float = 1.0) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self.every_s, self.t0 = every_s, time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((time.perf_counter() - self.t0, _rss_mib()))

    def stop(self) -> dict[str, float]:
        """RSS (MiB) at 10 %, 25 %, 50 %, 75 % and 100 % of the run's time."""
        self._stop.set()
        self._thread.join()
        s = [(0.0, self.samples[0][1] if self.samples else _rss_mib()), *self.samples, (
            time.perf_counter() - self.t0, _rss_mib())]
        end = s[-1][0]
        return {f"{int(q * 100)}%": round(max(r for t, r in s if t <= q * end), 1)
                for q in (0.1, 0.25, 0.5, 0.75, 1.0)}


def _run(mode: str, img: str, lab: str, out: str, chip: int, overlap: int) -> dict:
    from geosam.modes.everything import segment_scene, segment_scene_to_file
    from geosam.testing import OracleMaskGenerator
    from geosam.write.vector import write_vector

    trace = _RssTrace()
    t0 = time.perf_counter()
    kw = {"chip_size_px": chip, "overlap_px": overlap, "progress": False}
    if mode == "frame":
        gdf = segment_scene(img, OracleMaskGenerator(lab), **kw)
        write_vector(gdf, out)
        stats = gdf.attrs["geosam"]
    else:
        stats = segment_scene_to_file(img, out, OracleMaskGenerator(lab), **kw).as_dict()
    levels = trace.stop()
    return {
        "objects_out": int(stats["objects"]),
        "chips": int(stats["chips_total"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "timings_s": {k: round(v, 1) for k, v in stats["timings_s"].items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "peak_rss_mib_by_time": levels,
        "output_mib": round(Path(out).stat().st_size / 2**20, 1),
    }


def _in_child(fn, *args):  # a one-off process runner
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 60000])
    ap.add_argument("--frame-max", type=int, default=20000, help="largest size also run in 'frame' mode")
    ap.add_argument("--modes", nargs="+", default=["streamed", "frame"], choices=["streamed", "frame"])
    ap.add_argument("--append", action="store_true", help="add these runs to the existing results file")
    ap.add_argument("--chip", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--workdir", default=str(ROOT / ".bench-scenes"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"cpu": cpu_name(), "machine": platform.platform(), "python": platform.python_version(),
                 "chip_size_px": args.chip, "overlap_px": args.overlap, "runs": []}
    out_path = Path(args.out)
    if args.append and out_path.exists():
        res["runs"] = json.loads(out_path.read_text())["runs"]
    for size in args.sizes:
        img, lab = work / f"scene_{size}.tif", work / f"labels_{size}.tif"
        meta = work / f"scene_{size}.json"
        if not meta.exists():
            t0 = time.perf_counter()
            n = _in_child(_make, str(img), str(lab), size)
            meta.write_text(json.dumps({"n_objects": n, "make_s": round(time.perf_counter() - t0, 1)}))
        made = json.loads(meta.read_text())
        for mode in args.modes:
            if mode == "frame" and size > args.frame_max:
                continue
            out = work / f"out_{size}_{mode}.gpkg"
            r = _in_child(_run, mode, str(img), str(lab), str(out), args.chip, args.overlap)
            out.unlink()
            row = {"scene_px": size, "mode": mode, "objects_true": made["n_objects"], **r}
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
