"""The composite of ``geosam monitor --segment composite``: block by block vs whole scenes in memory.

Data (generated, deterministic): ``--dates`` rasters (default 4) of S x S px for each ``--sizes`` S (default 1000,
3000 and 6000; 10 m, UTM 33N, 4 x uint16, tiled 256, uncompressed), one of them on a grid shifted by half a pixel
(so it is read through a warped window), each with a nodata corner.

Ways, each in a fresh process (time, peak RSS ``ru_maxrss`` and the RSS after its imports):

* ``geosam``: `geosam.monitor.composite.composite_path` (1024 px blocks, median of the valid dates, first date's
  grid, written to a GeoTIFF);
* ``whole``: every date read whole (the shifted one warped whole onto the first grid with ``WarpedVRT``), stacked
  as float32 with NaN for invalid pixels and ``np.nanmedian`` over dates, written the same way.

Both outputs are compared pixel by pixel (they must be equal); ``whole`` runs only up to ``--whole-max-px``
(6000 px would need several GiB). The peak above the after-import RSS is what the composite costs: geosam's is
one block of every date plus GDAL's block cache, which geosam caps at 256 MiB (`geosam.read.gdal`), so it levels
off as scenes grow instead of following them.

    .venv/bin/python benchmarks/bench_composite.py [--sizes 1000,3000] [--dates 4] [--workdir DIR]
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
from pathlib import Path

import numpy as np
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "composite.json"
CRS = "EPSG:32633"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_dates(folder: Path, size: int, n_dates: int) -> list[Path]:
    """``n_dates`` 4-band uint16 rasters written in 512-row strips (the last on a half-pixel-shifted grid)."""
    import rasterio
    from affine import Affine

    paths = []
    for k in range(n_dates):
        shift = 5.0 if k == n_dates - 1 else 0.0
        prof = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": CRS,
                "transform": Affine(10.0, 0, 300000.0 + shift, 0, -10.0, 5400000.0 - shift), "nodata": 0,
                "tiled": True, "blockxsize": 256, "blockysize": 256}
        path = folder / f"d{k}_2024-0{k + 1}-01.tif"
        rng = np.random.default_rng(k)
        with rasterio.open(path, "w", **prof) as dst:
            for row in range(0, size, 512):
                h = min(512, size - row)
                block = rng.integers(1, 4000, size=(4, h, size), dtype=np.uint16)
                if row == 0:
                    block[:, :100, :100 * (k + 1)] = 0  # a nodata corner, wider each date
                dst.write(block, window=rasterio.windows.Window(0, row, size, h))
        paths.append(path)
    return paths


def _geosam(paths: list[str], out: str) -> None:
    from geosam.monitor.composite import composite_path
    from geosam.monitor.dates import date_scenes

    scenes = date_scenes(paths)
    composite_path(scenes, [(1, 2, 3)] * len(scenes), out, statistic="median", chip_px=1024)


def _whole(paths: list[str], out: str) -> None:
    import warnings

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(paths[0]) as ref:
        prof, grid = ref.profile, (ref.crs, ref.transform, ref.width, ref.height)
    layers = []
    for p in paths:
        with rasterio.open(p) as src, WarpedVRT(src, crs=grid[0], transform=grid[1], width=grid[2], height=grid[3],
                                                resampling=Resampling.nearest) as vrt:
            data = vrt.read([1, 2, 3]).astype(np.float32)
            data[:, vrt.dataset_mask() == 0] = np.nan
        layers.append(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.stack(layers), axis=0)
    valid = np.isfinite(med).all(axis=0)
    med[:, ~valid] = 0
    prof.update(count=3, nodata=None, compress="deflate")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **prof) as dst:
        dst.write(np.rint(med).astype(np.uint16))
        dst.write_mask(valid.astype(np.uint8) * 255)


def _child(way: str, paths: list[str], out: str, queue: multiprocessing.Queue) -> None:
    import rasterio
    import rasterio.vrt  # noqa: F401

    import geosam.monitor.composite
    import geosam.monitor.dates
    import geosam.read.scene  # noqa: F401

    base = _rss_mib()
    t0 = time.perf_counter()
    (_geosam if way == "geosam" else _whole)(paths, out)
    queue.put({"seconds": time.perf_counter() - t0, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
               / 1024.0, "rss_after_imports_mib": base})


def run_way(way: str, paths: list[Path], out: Path) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(way, [str(p) for p in paths], str(out), queue))
    proc.start()
    res = queue.get()
    proc.join()
    res["peak_above_imports_mib"] = res["peak_rss_mib"] - res["rss_after_imports_mib"]
    return res


def main() -> None:
    import rasterio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,3000,6000")
    ap.add_argument("--whole-max-px", type=int, default=3000, help="the whole-scene way only up to this size")
    ap.add_argument("--dates", type=int, default=4)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            folder = Path(tmp) / str(size)
            folder.mkdir()
            paths = make_dates(folder, size, args.dates)
            ways = ("geosam", "whole") if size <= args.whole_max_px else ("geosam",)
            got = {w: run_way(w, paths, folder / f"{w}.tif") for w in ways}
            equal = None
            if "whole" in got:
                with rasterio.open(folder / "geosam.tif") as a, rasterio.open(folder / "whole.tif") as b:
                    equal = bool(np.array_equal(a.read(), b.read()) and np.array_equal(a.read_masks(1),
                                                                                         b.read_masks(1)))
            input_mib = args.dates * 4 * size * size * 2 / 2**20
            for way, res in got.items():
                rows.append({"size_px": size, "dates": args.dates, "way": way, "inputs_mib": round(input_mib, 1),
                             **{k: round(v, 2) for k, v in res.items()}, "outputs_equal": equal})
                print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"cpu": cpu_name(), "python": platform.python_version(),
                               "note": "2 CPU threads shared with other jobs: times are indicative", "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
