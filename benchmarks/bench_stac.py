"""STAC benchmark: reading chips of a served STAC item vs the same pixels as a local GeoTIFF, and the choice
of the STAC-to-pixels library (odc-stac, stackstac, rasterio's WarpedVRT).

Catalog: ``tests/data/make_stac.py`` with the shipped Sentinel-2 scene mirrored ``--tiles`` x ``--tiles``
times (default 4: 2312 x 1516 px at 10 m; red, green, blue at 10 m and nir at 20 m as 128 px-block
deflate COGs with overviews), served on 127.0.0.1 by `geosam.stac.local.LocalCatalog` (byte
ranges; loopback, so the times are CPU and request overheads, not network latency). Every chip of
``--chip`` px (no overlap) is read, all four bands, in row order. Each way of reading gets its own
server (a new port, so GDAL's in-process cache never serves one reader from another's reads):

* ``geosam (odc-stac, N threads)``: `geosam.read.scene.Scene` on the item URL (``Scene.read_bands`` per
  chip), the assets of a chip read by N threads (``RemoteEnv.asset_threads``);
* ``odc-stac``, ``stackstac``, ``WarpedVRT``: each library on its own, per chip, onto the same grid;
* ``local GeoTIFF``: ``Scene`` on the 10 m R, G, B, NIR stack of the same pixels (a local file: bytes = its size).

Reported: chips/s, bytes fetched in all and per chip, the largest share of any one asset fetched, and
whether the pixels equal the local stack's. Every reader runs twice: on loopback, and with ``--latency-ms``
(default 20) added to every file response (a distant object store; per-request cost then dominates).
Results go to ``benchmarks/results/stac.json``.

    .venv/bin/python benchmarks/bench_stac.py [--tiles 4] [--chip 256] [--latency-ms 20]

Needs the ``stac`` extra and, for the comparison only, ``pip install stackstac`` (not a geosam dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name

from geosam.stac.local import LocalCatalog
from tests.data.make_stac import make_catalog

BANDS = ["red", "green", "blue", "nir"]


def windows(width: int, height: int, chip: int) -> list[tuple[int, int, int, int]]:
    return [(c, r, min(chip, width - c), min(chip, height - r)) for r in range(0, height, chip)
            for c in range(0, width, chip)]


def reader_geosam(url: str, threads: int) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    from geosam.config import ReadConfig
    from geosam.read.scene import Scene
    from geosam.stac import RemoteEnv, stac_scene
    from geosam.windows import PixelWindow

    sc = Scene(stac_scene(url, env=RemoteEnv(asset_threads=threads)), ReadConfig(overview_max_px=256))
    return lambda w: sc.read_bands((1, 2, 3, 4), PixelWindow(*w))[0]


def reader_odc(item: Any, grid: Any) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    import odc.stac
    import rasterio
    from affine import Affine
    from odc.geo.geobox import GeoBox

    def read(w: tuple[int, int, int, int]) -> np.ndarray:
        c, r, ww, hh = w
        gb = GeoBox((hh, ww), grid["transform"] * Affine.translation(c, r), grid["crs"])
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            ds = odc.stac.load([item], BANDS, geobox=gb, resampling="nearest", chunks=None)
        return np.stack([ds[b].values[0] for b in BANDS])

    return read


def reader_stackstac(item: Any, grid: Any) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    import rasterio
    import stackstac

    t, h, w = grid["transform"], grid["height"], grid["width"]
    # stackstac 0.5.1 with numpy 2: a Python int fill value fails its dtype check; a numpy scalar passes
    stack = stackstac.stack([item], assets=BANDS, resolution=abs(t.a), epsg=grid["epsg"], chunksize=256,
                            resampling=rasterio.enums.Resampling.nearest, bounds=(t.c, t.f + t.e * h, t.c + t.a * w,
                                                                                 t.f),
                            dtype="uint16", fill_value=np.uint16(0), rescale=False,
                            gdal_env=stackstac.DEFAULT_GDAL_ENV.updated({"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}))
    first = stack.isel(time=0)
    return lambda win: first.isel(y=slice(win[1], win[1] + win[3]), x=slice(win[0], win[0] + win[2])).compute(
        scheduler="synchronous").values


def reader_vrt(item: Any, grid: Any) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    env = rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
    vrts: dict[str, Any] = {}

    def read(w: tuple[int, int, int, int]) -> np.ndarray:
        with env:
            if not vrts:
                for b in BANDS:
                    src = rasterio.open(item.assets[b].href)
                    vrts[b] = WarpedVRT(src, crs=grid["crs"], transform=grid["transform"], width=grid["width"],
                                        height=grid["height"], resampling=Resampling.nearest)
            return np.stack([vrts[b].read(1, window=Window(*w)) for b in BANDS])

    return read


def measure(name: str, make: Callable[[LocalCatalog], Callable[..., np.ndarray]], folder: Path,
            wins: list[tuple[int, int, int, int]], local: Any, sizes: dict[str, int], latency_s: float) -> dict[str, Any]:
    with LocalCatalog(folder, latency_s=latency_s) as srv:
        t0 = time.perf_counter()
        read = make(srv)
        setup_bytes = srv.bytes_sent
        t1 = time.perf_counter()
        same = True
        per_chip = []
        for w in wins:
            before = srv.bytes_sent
            data = read(w)
            per_chip.append(srv.bytes_sent - before)
            same &= bool(np.array_equal(data, local(w)))
        t2 = time.perf_counter()
        by_path = srv.bytes_by_path
    share = max((n / sizes[p] for p, n in by_path.items() if p in sizes), default=0.0)
    row = {"reader": name, "latency_ms": latency_s * 1e3, "chips": len(wins), "chips_per_s": len(wins) / (t2 - t1), "open_s": t1 - t0,
           "bytes_open": setup_bytes, "bytes_chips": sum(per_chip), "bytes_per_chip_mean": float(np.mean(per_chip)),
           "bytes_per_chip_max": int(max(per_chip)), "largest_asset_share": share, "pixels_equal_local": same}
    print(f"{name:22s} {latency_s * 1e3:3.0f} ms {row['chips_per_s']:7.1f} chips/s  {row['bytes_chips'] / 1e6:6.2f} MB "
          f"({row['bytes_per_chip_mean'] / 1e3:6.1f} kB/chip, max asset share {share:.2f})  equal: {same}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--chip", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="simulated store latency of the second round")
    args = ap.parse_args()

    import pystac

    from geosam.read.scene import Scene
    from geosam.windows import PixelWindow

    with tempfile.TemporaryDirectory() as tmp:
        files = make_catalog(Path(tmp) / "www", tiles=args.tiles)
        item_dir = files.items[0].parent
        sizes = {f"/{item_dir.name}/{p.name}": p.stat().st_size for p in item_dir.glob("*.tif")}
        rel = f"{item_dir.name}/{files.items[0].name}"
        stack = Scene(files.stacks[0])
        info = stack.info
        grid = {"transform": info.transform, "width": info.width, "height": info.height, "crs": info.crs_wkt,
                "epsg": 32633}
        wins = windows(info.width, info.height, args.chip)
        local = lambda w: stack.read_bands((1, 2, 3, 4), PixelWindow(*w))[0]

        def item_of(srv: LocalCatalog) -> Any:
            item = pystac.Item.from_file(f"{srv.url}/{rel}")
            item.make_asset_hrefs_absolute()
            return item

        print(f"{info.width} x {info.height} px, {len(wins)} chips of {args.chip} px; assets "
              + ", ".join(f"{Path(p).name} {n / 1e6:.2f} MB" for p, n in sorted(sizes.items())))
        readers: list[tuple[str, Callable[[LocalCatalog], Any]]] = [
            ("geosam (odc-stac, 4 threads)", lambda srv: reader_geosam(f"{srv.url}/{rel}", 4)),
            ("geosam (odc-stac, 1 thread)", lambda srv: reader_geosam(f"{srv.url}/{rel}", 1)),
            ("odc-stac", lambda srv: reader_odc(item_of(srv), grid)),
            ("stackstac", lambda srv: reader_stackstac(item_of(srv), grid)),
            ("WarpedVRT", lambda srv: reader_vrt(item_of(srv), grid)),
        ]
        rows = [measure(name, make, files.root, wins, local, sizes, lat)
                for lat in (0.0, args.latency_ms / 1e3) for name, make in readers]
        t0 = time.perf_counter()
        for w in wins:
            local(w)
        dt = time.perf_counter() - t0
        rows.append({"reader": "local GeoTIFF", "chips": len(wins), "chips_per_s": len(wins) / dt,
                     "bytes_file": files.stacks[0].stat().st_size, "pixels_equal_local": True})
        print(f"{'local GeoTIFF':18s} {len(wins) / dt:7.1f} chips/s  (file {files.stacks[0].stat().st_size / 1e6:.2f} MB)")
        out = {"benchmark": "stac", "cpu": cpu_name(), "note": "served on 127.0.0.1 (no network latency); "
               "machine shared with other jobs", "scene_px": [info.width, info.height], "chip_px": args.chip,
               "asset_bytes": sizes, "rows": rows}
    path = ROOT / "benchmarks" / "results" / "stac.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
