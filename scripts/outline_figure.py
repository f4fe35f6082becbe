"""The before / after picture of docs/outlines.md: ``docs/images/outlines.png``.

Left: solaris buildings (0.5 m pixels) with the built-in LiteMedSAM's raw outlines on box prompts, and after
``regularize``; right: the shipped fields traced from 30 m pixels (the oracle run of
``benchmarks/bench_outlines.py``), raw and after ``smooth`` + ``simplify_m=15``; surveyed outlines dashed.

Usage: ``python scripts/outline_figure.py [--raw-buildings FILE]`` (a saved raw run; else the model runs, ~3 min).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "docs" / "images" / "outlines.png"


def show(ax, scene: Path, bounds: tuple[float, float, float, float], layers: list, title: str) -> None:
    import numpy as np
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(scene) as ds:
        win = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        img = ds.read(window=win).astype(float)
        tr = ds.window_transform(win)
    img = img[:3] if img.shape[0] >= 3 else img[:1].repeat(3, 0)
    lo, hi = np.percentile(img, (2, 98))
    img = np.clip((img - lo) / (hi - lo + 1e-9), 0, 1).transpose(1, 2, 0)
    h, w = img.shape[:2]
    ax.imshow(img, extent=(tr.c, tr.c + w * tr.a, tr.f + h * tr.e, tr.f))
    for gdf, style in layers:
        gdf.boundary.plot(ax=ax, **style)
    ax.set_xlim(bounds[0], bounds[2])
    ax.set_ylim(bounds[1], bounds[3])
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw-buildings")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench_outlines import raw_buildings, raw_fields

    from geosam.outline import refine_outlines

    raw, fp, _ = raw_buildings(args.raw_buildings)
    reg = refine_outlines(raw, regularize=True)
    with tempfile.TemporaryDirectory() as tmp:
        fraw, ftruth = raw_fields(Path(tmp))
    fsm = refine_outlines(fraw, smooth=True, simplify_m=15.0)
    x0, y0, x1, y1 = fp.total_bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bb = (cx - 110, cy - 80, cx + 110, cy + 80)
    fx0, fy0 = fraw.total_bounds[:2]
    fb = (fx0 - 300, fy0 - 300, fx0 + 4500, fy0 + 3300)
    truth = {"color": "yellow", "linestyle": "--", "linewidth": 0.9}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.2))
    show(axes[0, 0], ROOT / "data" / "solaris_pan_uint16.tif", bb, [(fp, truth), (raw, {"color": "red", "linewidth": 1})],
         f"buildings, raw ({raw.geometry.count_coordinates().mean():.0f} vertices per object)")
    show(axes[0, 1], ROOT / "data" / "solaris_pan_uint16.tif", bb, [(fp, truth), (reg, {"color": "cyan", "linewidth": 1.2})],
         f"--regularize ({reg.geometry.count_coordinates().mean():.0f} vertices per object)")
    import geopandas as gpd

    ft = gpd.GeoDataFrame(geometry=ftruth)
    show(axes[1, 0], ROOT / "data" / "solaris_albers.tif", fb, [(ft, truth), (fraw, {"color": "red", "linewidth": 1})],
         f"fields, raw 30 m pixels ({fraw.geometry.count_coordinates().mean():.0f} vertices per object)")
    show(axes[1, 1], ROOT / "data" / "solaris_albers.tif", fb, [(ft, truth), (fsm, {"color": "cyan", "linewidth": 1.2})],
         f"--smooth --simplify 15 ({fsm.geometry.count_coordinates().mean():.0f} vertices per object)")
    fig.suptitle("outlines before / after (surveyed outlines dashed yellow)", fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=90)
    from PIL import Image  # a palette PNG: a quarter of the size

    Image.open(OUT).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
