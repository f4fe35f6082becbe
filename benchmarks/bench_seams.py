"""Seams under per-chip mask noise: objects whole / split / merged, before and after a stitcher change.

Every chip sees each object of a known label array through `geosam.testing.perturb_masks`: moved out or in by up
to R px (binary dilation / erosion by a disc), independently per chip and per object, optionally shifted and cut
short of the chip edges. The chip masks are made once, by this tree's code, and handed (pickled) to two versions of
the stitcher, each in its own subprocess whose ``PYTHONPATH`` is that version's tree: ``--old REV`` (checked out into
a temporary git worktree) and this tree. Runs alternate old, new, old, new so a shared CPU's drift hits both alike;
the stitch time (wall and process CPU time) is the fastest of ``--rounds``.

Scenes (label geometry):

* ``buildings``: a generated dense built-up scene (`tests._seam_helpers.building_labels`: ~1500 buildings, 2560 px,
  1-5 px gaps, one gap in six closed), 512 px chips with 64 px overlap unless stated;
* ``solaris_pan``: the 43 buildings of ``data/solaris_pan_buildings.geojson`` burnt on ``solaris_pan_uint16.tif``
  (900 px, 0.5 m), 128 px chips, 32 px overlap, ten noise seeds summed;
* ``solaris_fields``: the 19 fields of ``data/solaris_albers_fields.geojson`` on ``solaris_albers.tif`` (512 px,
  30 m), 128 px chips, 32 px overlap, ten noise seeds summed.

    .venv/bin/python benchmarks/bench_seams.py --old REV [--rounds 2]

Results: ``benchmarks/results/seams.json`` (counts as `tests._seam_helpers.seam_counts` defines them).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the stitcher run by each version: only names both versions have (Stitcher, add, pop_finished)
RUN = r"""
import pickle, sys, time
import geosam
from geosam.assemble.stitch import Stitcher
cases = pickle.load(open(sys.argv[1], "rb"))
out = {"file": geosam.__file__, "cases": {}}
for name, specs, chips in cases:
    objs = []
    t0, c0 = time.perf_counter(), time.process_time()
    for runs in chips:
        st = Stitcher(specs)
        for s, r in zip(specs, runs):
            st.add(s, r)
            objs.extend(st.pop_finished())
        objs.extend(st.pop_finished(final=True))
        objs.append(None)  # end of one noise seed
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    keep = [None if o is None else (o.mask, (o.bbox.col_off, o.bbox.row_off, o.bbox.width, o.bbox.height),
            len(o.geom_px.geoms) if o.geom_px.geom_type == "MultiPolygon" else 1) for o in objs]
    out["cases"][name] = {"stitch_s": dt, "stitch_cpu_s": dc, "objects": keep}
pickle.dump(out, open(sys.argv[2], "wb"))
"""

BUILDINGS = [  # (row name, chip px, overlap px, noise)
    ("none", 512, 64, {"radius_px": 0}),
    ("±1 px", 512, 64, {"radius_px": 1}),
    ("±2 px", 512, 64, {"radius_px": 2}),
    ("±3 px", 512, 64, {"radius_px": 3}),
    ("±2 px, 128 px overlap", 512, 128, {"radius_px": 2}),
    ("±2 px, 256 px chips, 32 px overlap", 256, 32, {"radius_px": 2}),
    ("±2 px, shift ±1 px, edge cut ≤3 px", 512, 64, {"radius_px": 2, "shift_px": 1, "edge_cut_px": 3}),
    ("±2 px, disjoint masks", 512, 64, {"radius_px": 2, "disjoint": True}),
]
REAL = {
    "solaris_pan": ("data/solaris_pan_buildings.geojson", "data/solaris_pan_uint16.tif"),
    "solaris_fields": ("data/solaris_albers_fields.geojson", "data/solaris_albers.tif"),
}


def build_cases(n_seeds_real: int) -> tuple[list[tuple[str, Any, Any]], dict[str, Any]]:
    """(name, specs, [chip results per noise seed]) per case, and the truth labels per case."""
    from tests._seam_helpers import building_labels, noisy_chip_results, rasterised_labels, scene_specs

    cases, truth = [], {}
    lab = building_labels()
    for row, chip, overlap, noise in BUILDINGS:
        noise = {"disjoint": False, **noise}
        specs = scene_specs(lab, chip, overlap)
        name = f"buildings | {row}"
        cases.append((name, specs, [noisy_chip_results(lab, specs, seed=1, **noise)]))
        truth[name] = lab
    for scene, (vector, raster) in REAL.items():
        lab = rasterised_labels(vector, raster)
        specs = scene_specs(lab, 128, 32)
        for r in (0, 1, 2, 3):
            name = f"{scene} | ±{r} px" if r else f"{scene} | none"
            seeds = range(n_seeds_real) if r else range(1)
            cases.append((name, specs, [noisy_chip_results(lab, specs, seed=s, radius_px=r, disjoint=False)
                                        for s in seeds]))
            truth[name] = lab
    return cases, truth


def run_version(src: Path, cases_path: str, out_path: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", RUN, cases_path, out_path], env=env, cwd=str(src), check=True)
    with open(out_path, "rb") as f:
        res = pickle.load(f)
    assert res["file"].startswith(str(src)), f"imported {res['file']}, expected the tree at {src}"
    return res["cases"]


def score(objects: list[Any], lab: Any) -> dict[str, Any]:
    """`seam_counts` per noise seed (objects separated by None), summed."""
    from tests._seam_helpers import seam_counts

    total: dict[str, Any] = {}
    run: list[Any] = []
    for o in objects:
        if o is not None:
            run.append(o)
            continue
        for k, v in seam_counts(run, lab).items():
            total[k] = total.get(k, 0) + v
        run = []
    total["whole_pct"] = round(100.0 * total["whole"] / total["objects"], 2)
    return total


def same_objects(old: list[Any], new: list[Any]) -> bool:
    """Do both versions give the same objects (pixels, boxes, polygon parts), in the same order?"""
    import numpy as np

    return len(old) == len(new) and all(
        (a is None and b is None) or (a is not None and b is not None and a[1:] == b[1:] and np.array_equal(a[0], b[0]))
        for a, b in zip(old, new))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="git revision of the 'before' stitcher")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=10, help="noise seeds per real-geometry case")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seams.json"))
    args = ap.parse_args()

    from _machine import cpu_name

    cases, truth = build_cases(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        cases_path = str(Path(tmp) / "cases.pkl")
        with open(cases_path, "wb") as f:
            pickle.dump(cases, f)
        old_src = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_src), args.old], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for i in range(args.rounds):
                runs["old"].append(run_version(old_src, cases_path, str(Path(tmp) / f"old{i}.pkl")))
                runs["new"].append(run_version(ROOT, cases_path, str(Path(tmp) / f"new{i}.pkl")))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_src)], cwd=ROOT, check=False,
                           capture_output=True)
    results = {}
    for name, _, _ in cases:
        row: dict[str, Any] = {}
        for version in ("old", "new"):
            row["before" if version == "old" else "after"] = score(runs[version][0][name]["objects"], truth[name])
            row[f"stitch_s_{version}"] = round(min(r[name]["stitch_s"] for r in runs[version]), 3)
            row[f"stitch_cpu_s_{version}"] = round(min(r[name]["stitch_cpu_s"] for r in runs[version]), 3)
        row["identical_to_old"] = same_objects(runs["old"][0][name]["objects"], runs["new"][0][name]["objects"])
        row["stitch_new_over_old"] = round(row["stitch_s_new"] / row["stitch_s_old"], 3)
        row["stitch_cpu_new_over_old"] = round(row["stitch_cpu_s_new"] / row["stitch_cpu_s_old"], 3)
        results[name] = row
        b, a = row["before"], row["after"]
        print(f"{name:55s} whole {b['whole_pct']:6.2f} -> {a['whole_pct']:6.2f} %  split {b['split']:3d} -> "
              f"{a['split']:3d}  extra {b['extra_polygons']:3d} -> {a['extra_polygons']:3d}  merged {b['merged']} -> "
              f"{a['merged']}  dup {b['duplicates']} -> {a['duplicates']}  time x{row['stitch_new_over_old']} (cpu x{row['stitch_cpu_new_over_old']})")
    total = {v: sum(r[f"stitch_cpu_s_{v}"] for r in results.values()) for v in ("old", "new")}
    out = {"old": args.old, "rounds": args.rounds, "cpu": cpu_name(), "threads": os.cpu_count(),
           "note": "machine shared with other jobs; stitch_s (wall) and stitch_cpu_s (process CPU time) = fastest of "
                   "the rounds, old and new interleaved",
           "stitch_cpu_s_all_cases": {**{k: round(v, 2) for k, v in total.items()},
                                      "new_over_old": round(total["new"] / total["old"], 3)},
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
