"""Outline options (``geosam.outline``) on the shipped footprints and fields: IoU vs the surveyed outlines.

* buildings: ``data/solaris_pan_uint16.tif`` (0.5 m pixels) and its 43 footprints; raw outlines from
  the built-in LiteMedSAM on box prompts (each footprint's bounding box grown 10 % per side, as
  ``bench_litemedsam_boxes.py`` runs it); then each option, and ``buildingregulariser`` (when installed)
  for reference;
* fields: ``data/solaris_albers_fields.geojson`` (19 fields; the file has no ``crs`` member, its
  coordinates are the scene's Albers metres) rasterised on the grid of ``data/solaris_albers.tif``
  (30 m pixels) as the raw masks, traced by a real run (``segment_scene`` with the oracle generator).

For each option: mean IoU against the surveyed outlines before -> after, vertices per object before ->
after, the share of corners within 5 degrees of a multiple of 90 (and of 45) degrees, whether the
outputs are valid (and, for fields, still a coverage), GeoJSON size, and seconds per 1000 objects (best
of ``--repeat`` runs over the set). Note that a raw pixel staircase has only right-angle corners: the
corner shares matter together with the vertex counts. Writes ``benchmarks/results/outlines.json``.

Usage: ``python benchmarks/bench_outlines.py [--raw-buildings FILE]`` (a saved raw run to reuse).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "outlines.json"
BUILDING_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("simplify 0.25 m (half a pixel)", {"simplify_m": 0.25}),
    ("simplify 0.5 m (one pixel)", {"simplify_m": 0.5}),
    ("regularize", {"regularize": True}),
    ("regularize 45", {"regularize": True, "regularize_45": True}),
    ("regularize + simplify 0.25 m", {"regularize": True, "simplify_m": 0.25}),
    ("fill holes 4 m2", {"fill_holes_m2": 4.0}),
    ("smooth", {"smooth": True}),
]
FIELD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("simplify 15 m (half a pixel)", {"simplify_m": 15.0}),
    ("simplify 30 m (one pixel)", {"simplify_m": 30.0}),
    ("smooth", {"smooth": True}),
    ("smooth + simplify 15 m", {"smooth": True, "simplify_m": 15.0}),
    ("fill holes 4 m2", {"fill_holes_m2": 4.0}),
]


def ious(pred: Any, truth: Any) -> np.ndarray:
    return np.array([0.0 if p is None or p.is_empty else p.intersection(t).area / p.union(t).area
                     for p, t in zip(pred, truth)])


def describe(gdf: Any, truth: Any, coverage: bool) -> dict[str, Any]:
    import shapely

    from geosam.outline import regular_share

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    out = {
        "mean_iou": round(float(ious(geoms, truth).mean()), 4),
        "vertices_per_object": round(float(shapely.get_num_coordinates(geoms).mean()), 1),
        "corners_at_90": round(regular_share(list(geoms)), 3),
        "corners_at_45": round(regular_share(list(geoms), step_deg=45.0), 3),
        "all_valid": bool(shapely.is_valid(geoms).all()),
        "geojson_bytes": len(gdf.geometry.to_json()),
    }
    if coverage:
        out["coverage_valid"] = bool(shapely.coverage_is_valid(geoms))
    return out


def timed(fn: Any, n_objects: int, repeat: int) -> tuple[Any, float]:
    best, res = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return res, round(best / n_objects * 1000, 2)


def compare(raw: Any, truth: Any, options: list[tuple[str, dict[str, Any]]], repeat: int, coverage: bool) -> list[dict[str, Any]]:
    from geosam.outline import refine_outlines

    before = describe(raw, truth, coverage)
    rows = []
    for name, kw in options:
        gdf, per_k = timed(lambda kw=kw: refine_outlines(raw, **kw), len(raw), repeat)
        after = describe(gdf, truth, coverage)
        after["objects_changed"] = gdf.attrs["geosam_outline"]["changed"]
        rows.append({"option": name, "settings": kw, "before": before, "after": after, "seconds_per_1000": per_k})
        print(f"{name:32s} IoU {before['mean_iou']:.4f} -> {after['mean_iou']:.4f}  vertices "
              f"{before['vertices_per_object']} -> {after['vertices_per_object']}  90: {after['corners_at_90']} "
              f"45: {after['corners_at_45']}  valid {after['all_valid']}  changed {after['objects_changed']}  {per_k} s/1000",
              flush=True)
    return rows


def raw_buildings(saved: str | None) -> tuple[Any, Any, float | None]:
    import geopandas as gpd

    from geosam.modes.everything import segment_prompts

    fp = gpd.read_file(ROOT / "data" / "solaris_pan_buildings.geojson")
    if saved:
        return gpd.read_file(saved).to_crs(fp.crs), fp, None
    boxes = gpd.GeoDataFrame({"id": np.arange(len(fp))}, geometry=fp.geometry, crs=fp.crs)
    t0 = time.perf_counter()
    gdf = segment_prompts(ROOT / "data" / "solaris_pan_uint16.tif", boxes, model="litemedsam", device="cpu",
                          dtype="float32", box_grow=0.1, context=2.5, min_window_px=64, chip_size_px=0)
    return gdf, fp, time.perf_counter() - t0


def reference_regulariser(raw: Any, truth: Any, repeat: int) -> list[dict[str, Any]]:
    try:
        from buildingregulariser import __version__ as version
        from buildingregulariser import regularize_geodataframe
    except ImportError:
        return []
    rows = []
    before = describe(raw, truth, False)
    for allow_45 in (True, False):
        def run(allow_45: bool = allow_45) -> Any:
            import geopandas as gpd
            import shapely

            # one row per polygon part comes back: dissolved by the input row
            ex = raw[["geometry"]].explode(index_parts=False)
            reg = regularize_geodataframe(ex, allow_45_degree=allow_45)
            reg.index = ex.index  # its rows come back in order, renumbered
            merged = reg.geometry.groupby(level=0).agg(lambda s: shapely.union_all(s.values))
            return gpd.GeoDataFrame(geometry=gpd.GeoSeries(merged.reindex(raw.index).values, crs=raw.crs))

        gdf, per_k = timed(run, len(raw), repeat)
        after = describe(gdf, truth, False)
        name = f"buildingregulariser {version}" + ("" if allow_45 else " (no 45)")
        rows.append({"option": name, "settings": {"allow_45_degree": allow_45}, "before": before, "after": after,
                     "seconds_per_1000": per_k})
        print(f"{name:32s} IoU {before['mean_iou']:.4f} -> {after['mean_iou']:.4f}  vertices "
              f"{before['vertices_per_object']} -> {after['vertices_per_object']}  90: {after['corners_at_90']} "
              f"45: {after['corners_at_45']}  {per_k} s/1000", flush=True)
    return rows


def raw_fields(tmp: Path) -> tuple[Any, Any]:
    import geopandas as gpd
    import rasterio
    from rasterio import features

    from geosam.modes.everything import segment_scene
    from geosam.testing import OracleMaskGenerator

    scene = ROOT / "data" / "solaris_albers.tif"
    with rasterio.open(scene) as ds:
        crs, tr, shape = ds.crs, ds.transform, ds.shape
    fields = gpd.read_file(ROOT / "data" / "solaris_albers_fields.geojson").set_crs(crs.to_wkt(), allow_override=True)
    lab = features.rasterize([(g, i + 1) for i, g in enumerate(fields.geometry)], out_shape=shape, transform=tr,
                             dtype="int32")
    path = tmp / "fields_labels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="int32", crs=crs,
                       transform=tr) as dst:
        dst.write(lab, 1)
    raw = segment_scene(scene, OracleMaskGenerator(path), chip_size_px=256, overlap_px=32, progress=False)
    # each traced object against the field it was rasterised from (the one it overlaps most)
    truth = [max(fields.geometry, key=lambda f, g=g: f.intersection(g).area) for g in raw.geometry]
    return raw, gpd.GeoSeries(truth, crs=fields.crs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw-buildings", help="a saved raw LiteMedSAM run (one row per footprint, in order)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    raw, fp, run_s = raw_buildings(args.raw_buildings)
    truth = list(fp.geometry)
    print(f"buildings: {len(raw)} raw outlines" + (f" ({run_s:.0f} s model run)" if run_s else ""), flush=True)
    buildings = compare(raw, truth, BUILDING_OPTIONS, args.repeat, False)
    buildings += reference_regulariser(raw, truth, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        fraw, ftruth = raw_fields(Path(tmp))
    print(f"fields: {len(fraw)} raw outlines", flush=True)
    fields = compare(fraw, list(ftruth), FIELD_OPTIONS, args.repeat, True)
    res = {
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "note": "seconds on a shared 2-core machine (other jobs running); IoU and vertices do not depend on it",
        "buildings": {"scene": "data/solaris_pan_uint16.tif", "labels": "data/solaris_pan_buildings.geojson",
                      "pixel_m": 0.5, "raw": "litemedsam box prompts (box_grow 0.1, context 2.5, one window each)",
                      "model_seconds": None if run_s is None else round(run_s, 1),
                      "raw_saved": args.raw_buildings, "n": len(raw), "options": buildings},
        "fields": {"scene": "data/solaris_albers.tif", "labels": "data/solaris_albers_fields.geojson", "pixel_m": 30.0,
                   "raw": "the fields rasterised on the scene grid, traced by segment_scene with the oracle",
                   "n": len(fraw), "options": fields},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
