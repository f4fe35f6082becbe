"""LiteMedSAM prompt mode on real imagery: mean IoU of output polygons vs footprints.

Scene ``data/solaris_pan_uint16.tif`` (900 x 900, 0.5 m, uint16 panchromatic,
2-98 % stretch) and its 43 footprints ``data/solaris_pan_buildings.geojson``.

* boxes: each footprint's bounding box grown by 10 % of its width / height on
  each side (``box_grow=0.1``), one window per prompt of side 2.5 x the grown
  box (at least 64 px), resized to 256;
* points: each footprint's representative point (a point inside it), one
  positive point per prompt, prompts grouped on 256-px chips (32 px overlap);
* boxes_bf16: the boxes in bf16 (what ``dtype="auto"`` runs on CPUs with native bf16), each polygon also compared
  with the float32 one (IoU; agreement: the share at IoU >= 0.9, as ``bench_amg.py`` counts it);
* baselines: the bare bounding box and the grown box as the "mask".

IoU is per footprint (its output polygon vs the footprint; an empty output
counts 0). Writes ``benchmarks/results/litemedsam_boxes.json``.

Usage: ``python benchmarks/bench_litemedsam_boxes.py [--only boxes|boxes_bf16|points]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "solaris_pan_uint16.tif"
LABELS = ROOT / "data" / "solaris_pan_buildings.geojson"
OUT = ROOT / "benchmarks" / "results" / "litemedsam_boxes.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name


def ious(pred, truth) -> np.ndarray:
    return np.array([0.0 if p is None or p.is_empty else p.intersection(t).area / p.union(t).area
                     for p, t in zip(pred, truth)])


def run(name: str, prompts, settings: dict, dtype: str = "float32", against=None) -> tuple[dict, object]:
    """One variant: its results, and its GeoDataFrame. ``against``: the float32 variant's GeoDataFrame, whose
    polygons this one's are compared with prompt by prompt (IoU; agreement: the share at IoU >= 0.9, bench_amg's)."""
    import geopandas as gpd

    from geosam.modes.prompted import segment_prompts

    truth = gpd.read_file(LABELS).geometry
    t0 = time.perf_counter()
    gdf = segment_prompts(SCENE, prompts, model="litemedsam", device="cpu", dtype=dtype, **settings)
    sec = time.perf_counter() - t0
    v = ious(list(gdf.geometry), list(truth))
    res = {
        "variant": name,
        "settings": {"model": "litemedsam", "device": "cpu", "dtype": dtype, **settings},
        "n_prompts": len(gdf),
        "windows": gdf.attrs["geosam"]["windows"],
        "mean_iou": round(float(v.mean()), 4),
        "median_iou": round(float(np.median(v)), 4),
        "frac_iou_ge_0_5": round(float((v >= 0.5).mean()), 4),
        "mean_predicted_iou": round(float(np.nanmean(gdf["predicted_iou"])), 4),
        "seconds": round(sec, 1),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "per_prompt_iou": [round(float(x), 4) for x in v],
    }
    if against is not None:
        same = ious(list(gdf.geometry), list(against.geometry))
        res["vs_float32"] = {"mean_iou": round(float(same.mean()), 4), "min_iou": round(float(same.min()), 4),
                             "agreement_iou_ge_0_9": round(float((same >= 0.9).mean()), 4)}
    print(f"{name}: mean IoU {res['mean_iou']} (median {res['median_iou']}, >=0.5: {res['frac_iou_ge_0_5']}) "
          f"in {sec:.0f} s, {res['windows']} windows", flush=True)
    return res, gdf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["boxes", "boxes_bf16", "points"],
                    help="run one variant (boxes_bf16 runs boxes too), keep the others' stored results")
    args = ap.parse_args()
    import geopandas as gpd

    from geosam.prompts.parse import grow_box

    fp = gpd.read_file(LABELS)
    truth = list(fp.geometry)
    boxes = gpd.GeoDataFrame({"id": np.arange(len(fp))}, geometry=fp.geometry, crs=fp.crs)
    results = {
        "scene": str(SCENE.relative_to(ROOT)),
        "labels": str(LABELS.relative_to(ROOT)),
        "n_footprints": len(fp),
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "platform": platform.platform()},
        "note": "seconds: wall time on the variant's CPU (a variant not rerun keeps its own); IoU does not depend on it",
        "baselines": {
            "bbox_mean_iou": round(float(ious([gpd.GeoSeries([g]).envelope.iloc[0] for g in truth], truth).mean()), 4),
            "bbox_grown_10pct_mean_iou": round(float(ious(
                [__import__("shapely.geometry", fromlist=["box"]).box(*grow_box(g.bounds, 0.1)) for g in truth],
                truth).mean()), 4),
        },
        "variants": [],
    }
    old = {v["variant"]: v for v in json.loads(OUT.read_text())["variants"]} if OUT.exists() else {}
    box_settings = {"box_grow": 0.1, "context": 2.5, "min_window_px": 64, "chip_size_px": 0}
    if args.only in (None, "boxes", "boxes_bf16"):
        old["boxes"], f32 = run("boxes", boxes, box_settings)
        if args.only in (None, "boxes_bf16"):  # what dtype="auto" runs where the CPU has native bf16
            old["boxes_bf16"], _ = run("boxes_bf16", boxes, box_settings, dtype="bfloat16", against=f32)
    if args.only in (None, "points"):
        pts = gpd.GeoDataFrame({"id": np.arange(len(fp))}, geometry=fp.geometry.representative_point(), crs=fp.crs)
        old["points"], _ = run("points", pts, {"chip_size_px": 256, "overlap_px": 32})
    results["variants"] = [old[k] for k in ("boxes", "boxes_bf16", "points") if k in old]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
