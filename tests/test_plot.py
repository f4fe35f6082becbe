"""geosam.plot: pictures on real shipped scenes (figure, legend, colour bar, scale bar in metres, folium map)."""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pyproj import Geod

from geosam import plot

DATA = Path(__file__).resolve().parents[1] / "data"
PAN = DATA / "solaris_pan_uint16.tif"  # EPSG:32616, 0.5 m, 900 x 900
BANEPA = DATA / "banepa_predict.tif"  # EPSG:4326, ~0.13 m, 2048 x 2048


@pytest.fixture
def footprints() -> gpd.GeoDataFrame:
    gdf = gpd.read_file(DATA / "solaris_pan_buildings.geojson")
    gdf["kind"] = np.where(np.arange(len(gdf)) % 3 == 0, "large", np.where(np.arange(len(gdf)) % 3 == 1, "small", "x"))
    gdf["area"] = gdf.geometry.area
    return gdf


def _scalebar(ax: plt.Axes) -> tuple[np.ndarray, np.ndarray, str]:
    lines = [ln for ln in ax.get_lines() if ln.get_gid() == plot.SCALEBAR_GID]
    assert len(lines) == 1
    label = [t.get_text() for t in ax.texts if t.get_text().endswith("m")]
    assert len(label) == 1
    return np.asarray(lines[0].get_xdata(), float), np.asarray(lines[0].get_ydata(), float), label[0]


def _metres(label: str) -> float:
    value, unit = label.split()
    return float(value) * (1000.0 if unit == "km" else 1.0)


def test_show_categorical_legend_and_extent(footprints: gpd.GeoDataFrame) -> None:
    ax = plot.show(PAN, footprints.to_crs("EPSG:4326"), column="kind", max_side_px=300)
    try:
        assert ax.figure is not None and ax.images
        img = ax.images[0].get_array()
        assert img.shape == (300, 300, 3)  # decimated read, longest side max_side_px
        # extent: the scene's bounds in its own CRS (UTM metres), whatever the gdf's CRS was
        left, right, bottom, top = ax.images[0].get_extent()
        import rasterio

        with rasterio.open(PAN) as ds:
            assert np.allclose((left, bottom, right, top), tuple(ds.bounds))
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["large", "small", "x"]
        assert legend.get_title().get_text() == "kind"
        # every footprint drawn (one path each, reprojected back to UTM: inside the scene)
        paths = ax.collections[0].get_paths()
        assert len(paths) == len(footprints)
        xy = np.concatenate([p.vertices for p in paths])
        assert (xy[:, 0] >= left - 1e-3).all() and (xy[:, 0] <= right + 1e-3).all()  # footprints are clipped to it
    finally:
        plt.close(ax.figure)


def test_show_continuous_colourbar_and_missing(footprints: gpd.GeoDataFrame) -> None:
    footprints.loc[0, "area"] = np.nan
    fig, ax = plt.subplots()
    out = plot.show(PAN, footprints, column="area", ax=ax, max_side_px=200, cmap="magma")
    try:
        assert out is ax and ax.get_legend() is None
        assert len(fig.axes) == 2  # the image axes and its colour bar
        assert fig.axes[1].get_ylabel() == "area"
        face = ax.collections[0].get_facecolors()
        assert len(face) == len(footprints)
        assert len({tuple(np.round(c, 3)) for c in face}) > 10  # a continuous ramp, not one colour
    finally:
        plt.close(fig)


def test_scalebar_projected_metres(footprints: gpd.GeoDataFrame) -> None:
    ax = plot.show(PAN, footprints, max_side_px=200)
    try:
        xs, ys, label = _scalebar(ax)
        # 450 m wide scene, bar at most a quarter of it: 100 m; in UTM metres the bar's length is that
        assert label == "100 m"
        assert xs[1] - xs[0] == pytest.approx(100.0)
        assert ys[0] == ys[1]
    finally:
        plt.close(ax.figure)


def test_scalebar_geographic_is_geodesic() -> None:
    ax = plot.show(BANEPA, max_side_px=256, fill_value=255)
    try:
        xs, ys, label = _scalebar(ax)
        metres = _metres(label)
        assert metres in (1, 2, 5, 10, 20, 50, 100, 200, 500)
        dist = Geod(ellps="WGS84").inv(xs[0], ys[0], xs[1], ys[1])[2]
        assert dist == pytest.approx(metres, rel=1e-6)
        # and the bar is at most a quarter of the (geodesic) width of the view
        x0, x1 = ax.get_xlim()
        assert dist <= 0.25 * Geod(ellps="WGS84").inv(x0, ys[0], x1, ys[0])[2] * (1 + 1e-9)
        assert ax.get_aspect() == pytest.approx(1 / np.cos(np.radians(np.mean(ax.get_ylim()))))
    finally:
        plt.close(ax.figure)


def test_nice_length() -> None:
    assert [plot.nice_length_m(v) for v in (0.7, 1, 3, 9.99, 12, 450, 4999)] == [0.5, 1, 2, 5, 10, 200, 2000]
    with pytest.raises(ValueError):
        plot.nice_length_m(0)


def test_show_points_lines_and_empty(footprints: gpd.GeoDataFrame) -> None:
    mixed = gpd.GeoDataFrame(
        {"kind": ["p", "l", "e"]},
        geometry=[footprints.geometry[0].centroid, footprints.geometry[1].exterior, footprints.geometry[2].buffer(-99)],
        crs=footprints.crs,
    )
    ax = plot.show(PAN, mixed, column="kind", max_side_px=100, scalebar=False, legend=False)
    try:
        assert ax.get_legend() is None
        assert not [ln for ln in ax.get_lines() if ln.get_gid() == plot.SCALEBAR_GID]
        assert len(ax.collections) == 2  # the line and the point; the empty polygon is skipped
    finally:
        plt.close(ax.figure)


def test_show_style_object_matches_keywords(footprints: gpd.GeoDataFrame) -> None:
    """A PlotStyle draws what the same keyword arguments draw; keywords override its fields; typos are errors."""
    style = plot.PlotStyle(cmap="magma", alpha=0.6, linewidth=2.0, legend=False, title="t")
    a = plot.show(PAN, footprints, column="area", max_side_px=100, style=style)
    b = plot.show(PAN, footprints, column="area", max_side_px=100, cmap="magma", alpha=0.6, linewidth=2.0,
                  legend=False, title="t")
    c = plot.show(PAN, footprints, column="area", max_side_px=100, style=style, title="override", scalebar=False)
    try:
        fa, fb = a.collections[0].get_facecolors(), b.collections[0].get_facecolors()
        np.testing.assert_allclose(fa, fb)
        assert fa[:, 3] == pytest.approx(0.6)
        assert a.collections[0].get_linewidths()[0] == b.collections[0].get_linewidths()[0] == 2.0
        assert a.get_title() == b.get_title() == "t" and len(a.figure.axes) == 1  # no colour bar
        assert c.get_title() == "override" and style.title == "t"  # the frozen style is not changed
        assert not [ln for ln in c.get_lines() if ln.get_gid() == plot.SCALEBAR_GID]
        with pytest.raises(TypeError, match="'colour'"):
            plot.show(PAN, footprints, max_side_px=50, colour="red")
    finally:
        for ax in (a, b, c):
            plt.close(ax.figure)


def test_explore(footprints: gpd.GeoDataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("folium")
    m = plot.explore(footprints, column="kind", tiles=None)
    assert type(m).__name__ == "Map"
    html = m.get_root().render()
    assert "large" in html
    monkeypatch.setitem(sys.modules, "folium", None)
    with pytest.raises(ImportError, match=r"geosam-scenes\[maps\]"):
        plot.explore(footprints)
