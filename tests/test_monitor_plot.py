"""geosam.plot.series / geosam.plot.change_map: a series of chosen objects and a change map, on the shipped Sentinel-2 sample."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

S2 = Path(__file__).resolve().parents[1] / "data" / "ftw_sentinel2_rgbn_2dates.tif"


def _result():
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from geosam.monitor.series import monitor_objects

    with rasterio.open(S2) as src:
        b, crs = src.bounds, src.crs
    boxes = [box(b.left + 300 * k, b.bottom + 300, b.left + 300 * k + 200, b.bottom + 500) for k in range(1, 7)]
    gdf = gpd.GeoDataFrame(geometry=boxes + [box(b.left - 900, b.bottom - 900, b.left - 800, b.bottom - 800)], crs=crs)
    return monitor_objects(str(S2), gdf, stack={"2021-06-01": "red=1,green=2,blue=3,nir=4",
                                                "2021-09-01": "red=5,green=6,blue=7,nir=8"})


def test_series_and_change_map():
    from geosam import plot

    r = _result()
    ax = plot.series(r, ids=[2, 4])
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), r.wide.loc[r.wide.object_id == 2,
                               ["ndvi_mean_2021-06-01", "ndvi_mean_2021-09-01"]].to_numpy()[0])
    ax = plot.show(S2, bands=[1, 2, 3])
    n_images = len(ax.images)
    plot.change_map(r, ax=ax, crs="EPSG:32633")
    assert len(ax.images) == n_images and len(ax.collections) >= 1  # drawn over the scene
    assert ax.get_title() == "ndvi_delta"
    plt.close("all")


def test_plot_package_layout():
    """``geosam.plot`` is a package whose names live in its modules; ``geosam.write`` draws nothing (no cycle)."""
    import ast

    import geosam
    from geosam.plot import draw, monitor, overlay, scene

    assert geosam.plot.show is scene.show and geosam.plot.series is monitor.series
    assert geosam.plot.change_map is monitor.change_map and geosam.plot.render_overlay is overlay.render_overlay
    assert geosam.plot.add_scalebar is draw.add_scalebar
    root = Path(geosam.__file__).parent
    for f in (root / "write").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("geosam.plot"), f"{f.name} imports {node.module}"
