"""Per-object NDVI means over many fields and dates: geosam monitor vs exactextract vs rasterstats.

Data (generated, deterministic): ``--dates`` rasters (default 6) of ``--size`` x ``--size`` px (default 3000,
10 m, UTM 33N, 4 x uint16: red, green, blue, NIR, tiled 256, uncompressed) and ``--fields`` fields (default
20 000): a jittered grid of slightly rotated rectangles, like parcels, none overlapping.

Tools, each in a fresh process (time and peak RSS, ``VmHWM`` (else ``ru_maxrss``), and the RSS after its imports):

* ``geosam``: ``monitor_objects`` on the band rasters (NDVI computed per chip window, objects grouped by chip);
  pixel rule: pixel centre inside the polygon.
* ``exactextract`` (``exact_extract(..., ["mean"])``): on NDVI rasters; pixel rule: every pixel the polygon
  touches, weighted by the exact fraction of the pixel it covers.
* ``rasterstats`` (``zonal_stats(..., stats=["mean"])``, ``all_touched=False``): on NDVI rasters; pixel rule:
  pixel centre inside the polygon (each polygon rasterized in its own window).

The NDVI rasters the other two need are written once by ``geosam.write_index_raster`` and timed apart
(``ndvi_rasters_s``); a user of those tools pays that too. Agreement: the mean absolute and the largest
difference of the per-field means against geosam's, over fields and dates where both have a value.

    .venv/bin/python benchmarks/bench_monitor.py [--fields 20000] [--dates 6] [--size 3000] [--workdir DIR]

Memory scaling (``--scaling``): geosam alone, for each ``--fields`` (e.g. 2000 20000 100000) and
``--scaling-dates`` (e.g. 2 6), writing the wide table (.gpkg) and the long table (.parquet), once with the tables
streamed from the on-disk store (``keep_tables=False``, what ``geosam monitor`` does) and once built in memory;
time, peak RSS and peak above the RSS after imports, in ``benchmarks/results/monitor.json`` under ``scaling``.

    .venv/bin/python benchmarks/bench_monitor.py --scaling --fields 2000 20000 100000 --scaling-dates 2 6 \
        [--baseline /tmp/geosam-before]

With ``--baseline`` (a source tree of the code before a change, e.g. ``git archive <commit> geosam``) each
streamed case also runs on that code, side by side in the same run (``code``: ``before`` / ``after``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "monitor.json"
CRS = "EPSG:32633"
ORIGIN = (300000.0, 5400000.0)
RES_M = 10.0


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_rasters(workdir: Path, n_dates: int, size: int) -> list[Path]:
    """``n_dates`` 4-band uint16 rasters (red, green, blue, NIR) with smooth fields of vegetation that change."""
    import rasterio
    from affine import Affine
    from scipy import ndimage

    paths = []
    rng = np.random.default_rng(0)
    t = Affine(RES_M, 0, ORIGIN[0], 0, -RES_M, ORIGIN[1])
    base = ndimage.zoom(rng.random((size // 50 + 2, size // 50 + 2)), 50, order=1)[:size, :size]
    for k in range(n_dates):
        p = workdir / f"s2_{(dt.date(2024, 3, 1) + dt.timedelta(days=30 * k)).isoformat()}.tif"
        paths.append(p)
        if p.exists():
            continue
        veg = np.clip(base + 0.3 * np.sin(k + 6 * base) + rng.normal(0, 0.05, (size, size)), 0, 1)
        red = (800 + 1200 * (1 - veg) + rng.normal(0, 60, (size, size))).astype(np.uint16)
        nir = (1500 + 3000 * veg + rng.normal(0, 80, (size, size))).astype(np.uint16)
        green = (700 + 500 * veg).astype(np.uint16)
        blue = (500 + 300 * (1 - veg)).astype(np.uint16)
        prof = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": CRS,
                "transform": t, "tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(p, "w", **prof) as dst:
            dst.write(np.stack([red, green, blue, nir]))
            dst.descriptions = ("red", "green", "blue", "nir")
    return paths


def make_fields(workdir: Path, n: int, size: int) -> Path:
    """``n`` fields: a jittered grid of rotated rectangles inside the rasters (GeoParquet)."""
    import geopandas as gpd
    from shapely import affinity
    from shapely.geometry import box

    p = workdir / f"fields_{n}.parquet"
    if p.exists():
        return p
    rng = np.random.default_rng(1)
    side = int(np.ceil(np.sqrt(n)))
    cell = (size - 4) * RES_M / side
    geoms = []
    for k in range(n):
        i, j = divmod(k, side)
        x0 = ORIGIN[0] + 2 * RES_M + j * cell
        y0 = ORIGIN[1] - 2 * RES_M - (i + 1) * cell
        w, h = rng.uniform(0.55, 0.85) * cell, rng.uniform(0.55, 0.85) * cell
        cx, cy = x0 + cell / 2 + rng.uniform(-0.05, 0.05) * cell, y0 + cell / 2 + rng.uniform(-0.05, 0.05) * cell
        geoms.append(affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), rng.uniform(-8, 8)))
    gpd.GeoDataFrame({"field": np.arange(1, n + 1)}, geometry=geoms, crs=CRS).to_parquet(p)
    return p


def _peak() -> float:
    """Peak RSS of this process (MiB): ``VmHWM``, which starts afresh at exec (``ru_maxrss`` keeps the parent's
    RSS at fork when a process is started by fork + exec), else ``ru_maxrss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_geosam(rasters: list[str], fields: str, out: str, chip: int) -> dict:
    import geopandas as gpd

    from geosam.monitor.series import monitor_objects

    gdf = gpd.read_parquet(fields)
    base = _rss_mib()
    t0 = time.perf_counter()
    r = monitor_objects(rasters, gdf, indices=("ndvi",), min_valid=0.0, chip_size_px=chip)
    sec = time.perf_counter() - t0
    means = np.stack([r.wide[f"ndvi_mean_{d.isoformat()}"].to_numpy() for d in r.dates], axis=1)
    np.save(out, means)
    return {"seconds": sec, "rss_after_imports_mib": base, "peak_rss_mib": _peak()}


def run_geosam_scaling(rasters: list[str], fields: str, workdir: str, chip: int, streamed: bool) -> dict:
    """One geosam run writing the wide (.gpkg) and long (.parquet) tables; ``streamed``: ``keep_tables=False``
    (tables written from the on-disk store in batches), else the tables built in memory, then written."""
    import geopandas  # noqa: F401 - imported before the baseline RSS
    import pyarrow.parquet  # noqa: F401
    import pyogrio  # noqa: F401
    import rasterio  # noqa: F401

    import geosam.monitor.measure
    import geosam.monitor.stream  # noqa: F401
    from geosam.monitor.series import monitor_objects

    base = _rss_mib()
    t0 = time.perf_counter()
    tag = "streamed" if streamed else "in_memory"
    r = monitor_objects(rasters, fields, indices=("ndvi",), min_valid=0.0, chip_size_px=chip,
                        output=f"{workdir}/wide_{tag}.gpkg", long_output=f"{workdir}/long_{tag}.parquet",
                        keep_tables=not streamed)
    sec = time.perf_counter() - t0
    peak = _peak()
    return {"seconds": sec, "rss_after_imports_mib": base, "peak_rss_mib": peak, "peak_above_imports_mib": peak - base,
            "rows": r.n_rows, "chip_tasks": r.tasks}


def scaling(a: argparse.Namespace) -> None:
    """Peak RSS and time of geosam vs number of fields and dates, tables streamed vs built in memory."""
    out: dict = {"what": "geosam monitor: wide .gpkg + long .parquet written; peak RSS vs fields and dates",
                 "cpu": cpu_name(), "python": platform.python_version(),
                 "note": "2-core machine shared with other jobs (load ~2-4): times are indicative; each run alone in "
                         "its own fresh process; peak = VmHWM of that process (includes GDAL's block cache)",
                 "rasters": {"size_px": a.size, "pixel_m": RES_M, "bands": "4 x uint16, tiled 256"},
                 "chip_size_px": a.chip, "runs": []}
    if a.baseline is not None:
        out["baseline"] = f"{a.baseline} (the code before, run side by side: code='before'; this tree: 'after')"
    rasters = make_rasters(a.workdir, max(a.scaling_dates), a.size)
    for n in a.fields:
        fields = make_fields(a.workdir, n, a.size)
        for d in a.scaling_dates:
            runs = [(a.baseline, True, "before")] if a.baseline is not None else []
            runs += [(ROOT, True, "after"), (ROOT, False, "after")]
            for code, streamed, label in runs:
                r = _fresh_process(code, [str(p) for p in rasters[:d]], str(fields), str(a.workdir), a.chip, streamed)
                r.update(fields=n, dates=d, tables="streamed" if streamed else "in_memory", code=label)
                out["runs"].append(r)
                print(json.dumps(r), flush=True)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    old["scaling"] = out
    OUT.write_text(json.dumps(old, indent=2) + "\n")


def _fresh_process(code: Path, *args) -> dict:
    """`run_geosam_scaling` in a fresh Python process importing geosam from ``code`` (a source tree)."""
    import subprocess

    cmd = [sys.executable, __file__, "--one-scaling-run", json.dumps(list(args)), "--code", str(code)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_exactextract(ndvi: list[str], fields: str, out: str) -> dict:
    import geopandas as gpd
    from exactextract import exact_extract

    gdf = gpd.read_parquet(fields)
    base = _rss_mib()
    t0 = time.perf_counter()
    cols = []
    for p in ndvi:
        df = exact_extract(p, gdf, ["mean"], output="pandas")
        cols.append(df["mean"].to_numpy(dtype=np.float64))
    sec = time.perf_counter() - t0
    np.save(out, np.stack(cols, axis=1))
    return {"seconds": sec, "rss_after_imports_mib": base, "peak_rss_mib": _peak()}


def run_rasterstats(ndvi: list[str], fields: str, out: str, max_fields: int) -> dict:
    import geopandas as gpd
    from rasterstats import zonal_stats

    gdf = gpd.read_parquet(fields)
    geoms = list(gdf.geometry)[:max_fields]
    base = _rss_mib()
    t0 = time.perf_counter()
    cols = []
    for p in ndvi:
        st = zonal_stats(geoms, p, stats=["mean"], all_touched=False, nodata=np.nan)
        cols.append(np.array([np.nan if s["mean"] is None else s["mean"] for s in st], dtype=np.float64))
    sec = time.perf_counter() - t0
    np.save(out, np.stack(cols, axis=1))
    return {"seconds": sec, "rss_after_imports_mib": base, "peak_rss_mib": _peak(), "fields_measured": len(geoms)}


def _in_process(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _agreement(ref: np.ndarray, other: np.ndarray) -> dict:
    ref = ref[: len(other)]
    both = np.isfinite(ref) & np.isfinite(other)
    d = np.abs(ref[both] - other[both])
    return {"compared": int(both.sum()), "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
            "only_geosam": int((np.isfinite(ref) & ~np.isfinite(other)).sum()),
            "only_other": int((~np.isfinite(ref) & np.isfinite(other)).sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dates", type=int, default=6)
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--chip", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geosam_bench_monitor"))
    ap.add_argument("--tools", nargs="+", default=["geosam", "exactextract", "rasterstats"])
    ap.add_argument("--rasterstats-max", type=int, default=2000,
                    help="rasterstats runs on the first this many fields (it takes ~5-10 ms per field and date)")
    ap.add_argument("--scaling", action="store_true",
                    help="geosam alone: peak RSS vs --fields and --scaling-dates, streamed vs in-memory tables")
    ap.add_argument("--scaling-dates", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--baseline", type=Path, default=None,
                    help="with --scaling: also run the streamed case on the geosam source tree at this path (e.g. "
                         "an export of the commit before), side by side in the same run")
    ap.add_argument("--one-scaling-run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_scaling_run is not None:  # a fresh process of --scaling: geosam from --code
        sys.path.insert(0, str(a.code))
        print(json.dumps(run_geosam_scaling(*json.loads(a.one_scaling_run))))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.scaling:
        scaling(a)
        return
    rasters = make_rasters(a.workdir, a.dates, a.size)
    t0 = time.perf_counter()
    ndvi = []
    from geosam.write.index_raster import write_index_raster

    for p in rasters:
        q = p.with_name(p.stem + "_ndvi.tif")
        write_index_raster(p, q, ["ndvi"])  # written (and timed) every run
        ndvi.append(q)
    ndvi_s = time.perf_counter() - t0
    results: dict = {
        "what": "per-field NDVI mean, every field x every date",
        "cpu": cpu_name(), "python": platform.python_version(),
        "note": "2-core machine shared with other jobs: times are indicative; each tool ran once, alone in its "
                "own process",
        "rasters": {"dates": a.dates, "size_px": a.size, "pixel_m": RES_M, "bands": "4 x uint16, tiled 256"},
        "ndvi_rasters_s": ndvi_s,
        "pixel_rules": {
            "geosam": "pixel centre inside the polygon (GDAL rasterize), NDVI from the band rasters per chip window",
            "exactextract": "every touched pixel weighted by the exact fraction of it the polygon covers",
            "rasterstats": "pixel centre inside the polygon (all_touched=False), per polygon window",
        },
        "runs": [],
    }
    for n in a.fields:
        fields = make_fields(a.workdir, n, a.size)
        run: dict = {"fields": n, "tools": {}}
        arrays = {}
        for tool in a.tools:
            out = str(a.workdir / f"means_{tool}_{n}.npy")
            if tool == "geosam":
                r = _in_process(run_geosam, [str(p) for p in rasters], str(fields), out, a.chip)
            elif tool == "exactextract":
                r = _in_process(run_exactextract, [str(p) for p in ndvi], str(fields), out)
            else:
                r = _in_process(run_rasterstats, [str(p) for p in ndvi], str(fields), out, a.rasterstats_max)
                if r["fields_measured"] < n:  # measured on the first fields only: time scaled to all, and said so
                    r["seconds_measured"] = r["seconds"]
                    r["seconds"] = r["seconds"] * n / r["fields_measured"]
                    r["seconds_note"] = f"extrapolated linearly from {r['fields_measured']} fields"
            if tool != "geosam":
                r["seconds_with_ndvi_rasters"] = r["seconds"] + ndvi_s
            arrays[tool] = np.load(out)
            run["tools"][tool] = r
            print(n, tool, json.dumps(r), flush=True)
        if "geosam" in arrays:
            run["agreement_with_geosam"] = {t: _agreement(arrays["geosam"], v) for t, v in arrays.items()
                                            if t != "geosam"}
            g = run["tools"]["geosam"]["seconds"]
            run["speed_ratio_vs_geosam"] = {t: run["tools"][t]["seconds"] / g for t in arrays if t != "geosam"}
        results["runs"].append(run)
        OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
