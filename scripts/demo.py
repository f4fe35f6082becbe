"""The README's demo: segment the shipped Banepa drone scene end to end.

Writes ``out/banepa.gpkg`` (one polygon per object) and ``out/banepa.png``
(the polygons over the image). The white wedge outside the survey is marked
invalid with ``fill_value=255``.

Model: the default checkpoint (Zigeng/SlimSAM-uniform-50) from the Hugging Face
cache, or the directory in ``GEOSAM_MODEL``. Without network or cache it says so
plainly and runs the built-in LiteMedSAM on box prompts instead (the footprint
boxes of ``data/solaris_pan_uint16.tif``, grown 10 %), writing
``out/solaris_pan_litemedsam.gpkg`` and ``.png`` and printing the mean IoU
against the footprints.

Offline, geosam's model loading (:mod:`geosam.models.hub`) finds the hub unreachable with one short probe (a TCP
connection, 2 s at most) and reads the local cache only: no retries, no retry warnings.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from geosam.config import DEFAULT_MODEL  # imports no hub client

    model = os.environ.get("GEOSAM_MODEL", DEFAULT_MODEL)
    from geosam.errors import ModelLoadError
    from geosam.modes.everything import segment_scene
    from geosam.plot.overlay import render_overlay
    from geosam.write.vector import write_vector

    scene = ROOT / "data" / "banepa_predict.tif"
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    try:
        gdf = segment_scene(scene, model=model, fill_value=255, chip_size_px=1024, overlap_px=128,
                            points_per_side=32, min_area_m2=0.5)
    except ModelLoadError as exc:
        print(
            f"\nThe default SAM checkpoint ({model}) is not available here (no network and not in the cache):\n"
            f"  {exc}\n"
            "To run segment-everything, point GEOSAM_MODEL at a local SAM checkpoint directory "
            "(saved with save_pretrained),\n  e.g. GEOSAM_MODEL=/path/to/slimsam make demo\n"
            "Running the built-in offline model instead: LiteMedSAM on box prompts "
            "(what it is good at; it cannot segment everything).\n",
            file=sys.stderr,
        )
        return litemedsam_boxes(out)
    gpkg = write_vector(gdf, out / "banepa.gpkg")
    png = render_overlay(scene, gdf, out / "banepa.png")
    print(f"{gpkg}: {len(gdf)} objects; overlay {png}")
    return 0


def litemedsam_boxes(out: Path) -> int:
    """Box prompts with the built-in LiteMedSAM: the solaris scene's footprint boxes, grown 10 %."""
    import geopandas as gpd
    import numpy as np

    from geosam.errors import ModelLoadError
    from geosam.modes.prompted import segment_prompts
    from geosam.plot.overlay import render_overlay
    from geosam.write.vector import write_vector

    scene = ROOT / "data" / "solaris_pan_uint16.tif"
    footprints = gpd.read_file(ROOT / "data" / "solaris_pan_buildings.geojson")
    prompts = gpd.GeoDataFrame({"id": np.arange(len(footprints))}, geometry=footprints.geometry, crs=footprints.crs)
    try:
        gdf = segment_prompts(scene, prompts, model="litemedsam", box_grow=0.1, progress=True)
    except ModelLoadError as exc:
        print(f"The built-in model cannot be loaded either:\n  {exc}", file=sys.stderr)
        return 0
    gpkg = write_vector(gdf, out / "solaris_pan_litemedsam.gpkg")
    png = render_overlay(scene, gdf[~gdf.geometry.is_empty], out / "solaris_pan_litemedsam.png")
    truth = list(footprints.geometry)
    iou = [0.0 if g.is_empty else g.intersection(t).area / g.union(t).area for g, t in zip(gdf.geometry, truth)]
    print(
        f"{gpkg}: {len(gdf)} buildings from {len(gdf)} box prompts (LiteMedSAM, footprint boxes grown 10 %); "
        f"mean IoU vs the footprints {np.mean(iou):.3f}; overlay {png}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
