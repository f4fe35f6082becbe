"""The README's demo: segment the shipped Banepa drone scene end to end.

Writes ``out/banepa.gpkg`` (one polygon per object) and ``out/banepa.png``
(the polygons over the image). The white wedge outside the survey is marked
invalid with ``fill_value=255``.

Model: the default checkpoint (Zigeng/SlimSAM-uniform-50) from the Hugging Face
cache, or the directory in ``GEOSAM_MODEL``. Without network or cache it says so
plainly and stops.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from geosam.config import DEFAULT_MODEL
    from geosam.errors import ModelLoadError
    from geosam.export import render_overlay, write_vector
    from geosam.pipeline import segment_scene

    scene = ROOT / "data" / "banepa_predict.tif"
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    model = os.environ.get("GEOSAM_MODEL", DEFAULT_MODEL)
    try:
        gdf = segment_scene(scene, model=model, fill_value=255, chip_size_px=1024, overlap_px=128,
                            points_per_side=32, min_area_m2=0.5)
    except ModelLoadError as exc:
        print(
            "\nThe demo needs SAM weights and none can be loaded here:\n"
            f"  {exc}\n"
            "Point GEOSAM_MODEL at a local SAM checkpoint directory (saved with save_pretrained), e.g.\n"
            "  GEOSAM_MODEL=/path/to/slimsam make demo\n"
            "A built-in offline model is planned (LiteMedSAM, box prompts).",
            file=sys.stderr,
        )
        return 0
    gpkg = write_vector(gdf, out / "banepa.gpkg")
    png = render_overlay(scene, gdf, out / "banepa.png")
    print(f"{gpkg}: {len(gdf)} objects; overlay {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
