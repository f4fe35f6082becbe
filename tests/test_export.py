"""Vector, label-raster and overlay export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.features import rasterize
from shapely.geometry import MultiPolygon, Polygon, box

from geosam.errors import ExportError
from geosam.plot.overlay import render_overlay
from geosam.write.label_raster import write_label_raster
from geosam.write.vector import VECTOR_FORMATS, shapefile_field_names, write_vector

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 359_600.0, 0.0, -0.5, 5_350_900.0)
X0, Y0 = TRANSFORM.c, TRANSFORM.f


def small_gdf() -> gpd.GeoDataFrame:
    """Five polygons in EPSG:32633 (a hole, a multipolygon, overlaps) with typed columns."""
    ring = box(X0 + 10, Y0 - 40, X0 + 40, Y0 - 10).difference(box(X0 + 20, Y0 - 30, X0 + 30, Y0 - 20))
    multi = MultiPolygon([box(X0 + 50, Y0 - 20, X0 + 60, Y0 - 5), box(X0 + 65, Y0 - 20, X0 + 70, Y0 - 5)])
    tri = Polygon([(X0 + 5, Y0 - 60), (X0 + 45, Y0 - 58.3), (X0 + 20, Y0 - 90.1)])
    over = box(X0 + 35, Y0 - 70, X0 + 80, Y0 - 35)  # overlaps a corner of the ring; drawn later, wins
    edge = box(X0 - 5, Y0 - 100, X0 + 12.3, Y0 - 80)  # partly outside the raster
    return gpd.GeoDataFrame(
        {
            "id": np.array([3, 1, 7, 2, 9], dtype=np.int64),
            "area_m2": [1.5, 2.25, 3.0, -4.0, 0.0],
            "label": ["ring", "multi", "tri", "über", ""],
            "predicted_iou_mean": [0.9, 0.8, 0.7, 0.6, 0.5],
            "predicted_iou_max": [1, 2, 3, 4, 5],
        },
        geometry=[ring, multi, tri, over, edge],
        crs=CRS,
    )


@pytest.fixture
def like_raster(tmp_path: Path) -> Path:
    """A 3-band uint16 scene (200 x 240 px, 0.5 m) the label raster aligns with."""
    path = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(
        path, "w", driver="GTiff", width=240, height=200, count=3, dtype="uint16", crs=CRS, transform=TRANSFORM
    ) as ds:
        ds.write(rng.integers(100, 4000, size=(3, 200, 240), dtype=np.uint16))
    return path


def assert_same(
    back: gpd.GeoDataFrame, gdf: gpd.GeoDataFrame, renames: dict[str, str] | None = None, empty_is_null: bool = False
) -> None:
    """Same rows, CRS, values and geometries; ``empty_is_null``: '' may come back as null (dBASE)."""
    renames = renames or {}
    assert len(back) == len(gdf)
    assert back.crs is not None and back.crs.equals(gdf.crs)
    for col in gdf.columns:
        if col == gdf.geometry.name:
            continue
        name = renames.get(col, col)
        assert name in back.columns, f"{name} missing from {list(back.columns)}"
        a, b = np.asarray(back[name]), np.asarray(gdf[col])
        if np.issubdtype(b.dtype, np.number):
            np.testing.assert_allclose(a.astype(float), b.astype(float))
        else:
            got = ["" if empty_is_null and not isinstance(v, str) else str(v) for v in a]
            assert got == [str(v) for v in b]
    for g1, g2 in zip(back.geometry, gdf.geometry):
        # Shapefile turns every polygon into a MultiPolygon-capable shape; compare point sets
        assert g1.equals(g2) or shapely.equals_exact(shapely.normalize(g1), shapely.normalize(g2), 1e-9)


@pytest.mark.parametrize("ext", sorted(VECTOR_FORMATS))
def test_vector_round_trip(tmp_path: Path, ext: str) -> None:
    gdf = small_gdf()
    path = write_vector(gdf, tmp_path / "sub" / "dir" / f"objects{ext}")
    assert path.exists()
    back = gpd.read_parquet(path) if ext in (".parquet", ".geoparquet") else gpd.read_file(path)
    renames = shapefile_field_names(list(gdf.columns)) if ext == ".shp" else {}
    assert_same(back, gdf, renames, empty_is_null=ext == ".shp")
    if ext == ".gpkg":
        import pyogrio

        assert [name for name, _ in pyogrio.list_layers(path)] == ["objects"]


def test_vector_overwrite(tmp_path: Path) -> None:
    gdf = small_gdf()
    path = write_vector(gdf, tmp_path / "a.gpkg")
    write_vector(gdf.iloc[:2], path)  # overwrite=True replaces the file
    assert len(gpd.read_file(path)) == 2
    with pytest.raises(ExportError, match="exists"):
        write_vector(gdf, path, overwrite=False)


@pytest.mark.parametrize("ext", sorted(VECTOR_FORMATS))
def test_empty_round_trip(tmp_path: Path, ext: str) -> None:
    gdf = small_gdf().iloc[:0]
    path = write_vector(gdf, tmp_path / f"empty{ext}")
    back = gpd.read_parquet(path) if ext in (".parquet", ".geoparquet") else gpd.read_file(path)
    assert len(back) == 0
    assert back.crs is not None and back.crs.equals(gdf.crs)
    if ext not in (".geojson", ".json"):  # GeoJSON has no schema without features
        renames = shapefile_field_names(list(gdf.columns)) if ext == ".shp" else {}
        assert {renames.get(c, c) for c in gdf.columns} <= set(back.columns)
    if ext in (".shp", ".gpkg"):
        import pyogrio

        assert pyogrio.read_info(path)["geometry_type"] == "Polygon"


def test_geojson_keeps_crs_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="geosam.write.vector"):
        path = write_vector(small_gdf(), tmp_path / "a.geojson")
    assert "RFC 7946" in caplog.text
    assert "32633" in json.loads(path.read_text())["crs"]["properties"]["name"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geosam.write.vector"):
        path = write_vector(small_gdf(), tmp_path / "b.geojson", to_crs="EPSG:4326")
    assert "RFC 7946" not in caplog.text
    back = gpd.read_file(path)
    assert back.crs.to_epsg() == 4326
    assert back.geometry.iloc[0].centroid.x == pytest.approx(13.1, abs=0.01)


def test_shapefile_field_names() -> None:
    names = ["id", "predicted_iou_mean", "predicted_iou_max", "PREDICTED_", "stability_score"]
    assert shapefile_field_names(names) == {
        "predicted_iou_mean": "predicte_1",
        "predicted_iou_max": "predicte_2",
        "stability_score": "stability_",
    }
    assert shapefile_field_names(names) == shapefile_field_names(list(names))  # deterministic


def test_shapefile_warns_about_renames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="geosam.write.vector"):
        write_vector(small_gdf(), tmp_path / "a.shp")
    assert "'predicted_iou_mean' -> 'predicted_'" in caplog.text
    assert "'predicted_iou_max' -> 'predicte_1'" in caplog.text


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        write_vector(small_gdf(), tmp_path / "a.kml")
    msg = str(err.value)
    assert "a.kml" in msg and ".gpkg" in msg and ".geojson" in msg and ".shp" in msg and ".parquet" in msg


def test_uncreatable_folder() -> None:
    target = Path("/proc/geosam-no-such-dir/a.gpkg")  # /proc refuses new folders, even for root
    with pytest.raises(ExportError, match="geosam-no-such-dir"):
        write_vector(small_gdf(), target)


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="file"):
        write_vector(small_gdf(), tmp_path / "file" / "a.gpkg")


# ---------------------------------------------------------------------------
# label raster


@pytest.mark.parametrize("block_px", [64, 100, 1024])
def test_label_raster_matches_whole_rasterize(tmp_path: Path, like_raster: Path, block_px: int) -> None:
    gdf = small_gdf()
    out = write_label_raster(gdf, tmp_path / "labels.tif", like_path=like_raster, block_px=block_px)
    expected = rasterize(
        zip(gdf.geometry, gdf["id"].tolist()), out_shape=(200, 240), transform=TRANSFORM, fill=0, dtype="uint32"
    )
    with rasterio.open(out) as ds, rasterio.open(like_raster) as like:
        assert (ds.width, ds.height, ds.transform, ds.crs) == (like.width, like.height, like.transform, like.crs)
        assert ds.dtypes[0] == "uint32" and ds.count == 1
        assert ds.profile["tiled"] and ds.compression is not None
        got = ds.read(1)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {0, 1, 2, 3, 7, 9}


def test_label_raster_reprojects(tmp_path: Path, like_raster: Path) -> None:
    gdf = small_gdf()
    out = write_label_raster(gdf.to_crs("EPSG:4326"), tmp_path / "labels.tif", like_path=like_raster, block_px=64)
    direct = write_label_raster(gdf, tmp_path / "direct.tif", like_path=like_raster)
    with rasterio.open(out) as a, rasterio.open(direct) as b:
        diff = a.read(1) != b.read(1)
    assert diff.mean() < 0.01  # only pixel centres within a rounding error of an edge may differ


def test_label_raster_ids(tmp_path: Path, like_raster: Path) -> None:
    gdf = small_gdf()
    out = write_label_raster(gdf, tmp_path / "rows.tif", like_path=like_raster, id_column=None)
    with rasterio.open(out) as ds:
        assert set(np.unique(ds.read(1))) == {0, 1, 2, 3, 4, 5}
    with pytest.raises(ExportError, match="missing_col"):
        write_label_raster(gdf, tmp_path / "x.tif", like_path=like_raster, id_column="missing_col")
    with pytest.raises(ExportError, match="whole numbers"):
        write_label_raster(gdf, tmp_path / "x.tif", like_path=like_raster, id_column="area_m2")


def test_label_raster_empty(tmp_path: Path, like_raster: Path) -> None:
    out = write_label_raster(small_gdf().iloc[:0], tmp_path / "empty.tif", like_path=like_raster)
    with rasterio.open(out) as ds:
        assert ds.read(1).max() == 0 and ds.shape == (200, 240)


# ---------------------------------------------------------------------------
# overlay


@pytest.mark.parametrize(("max_side", "shape"), [(2048, (200, 240)), (120, (100, 120))])
def test_overlay_png(tmp_path: Path, like_raster: Path, max_side: int, shape: tuple[int, int]) -> None:
    png = render_overlay(like_raster, small_gdf(), tmp_path / "q" / "overlay.png", max_side_px=max_side)
    bare = render_overlay(like_raster, small_gdf().iloc[:0], tmp_path / "bare.png", max_side_px=max_side)
    with Image.open(png) as im, Image.open(bare) as im0:
        assert im.format == "PNG" and im.mode == "RGB"
        assert (im.height, im.width) == shape
        a, b = np.asarray(im).astype(int), np.asarray(im0).astype(int)
    s = shape[1] / 240 * 2  # output px per metre
    # inside the ring (15 m right, 15 m below the top-left corner): tinted; inside its hole and far away: untouched
    assert np.any(a[int(15 * s), int(15 * s)] != b[int(15 * s), int(15 * s)])
    assert np.all(a[int(25 * s), int(25 * s)] == b[int(25 * s), int(25 * s)])
    assert np.array_equal(a[:, int(85 * s) :], b[:, int(85 * s) :])


def test_overlay_uint8_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8", crs=CRS, transform=TRANSFORM
    ) as ds:
        ds.write(np.full((3, 48, 64), 100, dtype=np.uint8))
    png = render_overlay(path, small_gdf().iloc[:0], tmp_path / "empty.png", bands=(1,))
    with Image.open(png) as im:
        assert im.size == (64, 48)
        assert np.all(np.asarray(im) == 100)
    png = render_overlay(path, small_gdf().to_crs("EPSG:4326"), tmp_path / "full.png")
    with Image.open(png) as im:
        assert (np.asarray(im) != 100).any()
