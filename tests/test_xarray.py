"""xarray DataArrays are scenes too, read window by window in place: same objects as from the file."""

from __future__ import annotations

import os
import pickle
import tempfile
from functools import partial

import numpy as np
import pytest
import rasterio
import xarray as xr

import geosam
from geosam.errors import ConfigError
from geosam.read.scene import Scene
from geosam.testing import OracleMaskGenerator
from geosam.windows import PixelWindow
from tests.data.make_scenes import make_oracle_scene
from tests.test_journal import assert_same

KW = {"chip_size_px": 256, "overlap_px": 32, "progress": False}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_oracle_scene(tmp_path_factory.mktemp("xr"), seed=11, width=700, height=500, n_objects=100)


def _coords(tr, h, w):
    return {"x": tr.c + tr.a * (np.arange(w) + 0.5), "y": tr.f + tr.e * (np.arange(h) + 0.5)}


def _read_block(path, block_info=None):
    (b0, b1), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    with rasterio.open(path) as src:
        return src.read(list(range(b0 + 1, b1 + 1)), window=((r0, r1), (c0, c1)))


def _split(n, size):
    return (size,) * (n // size) + ((n % size,) if n % size else ())


def dataarray(path, georef="coords", backing="numpy"):
    """The raster at ``path`` as a (band, y, x) DataArray: in memory, ``.chunk()``ed, or read lazily
    from the file chunk by chunk (``backing="lazy"``, like ``rioxarray.open_rasterio(chunks=...)``)."""
    with rasterio.open(path) as ds:
        tr, crs, count, h, w, dtype, nodata = ds.transform, ds.crs, ds.count, ds.height, ds.width, ds.dtypes[0], ds.nodata
        arr = None if backing == "lazy" else ds.read()
    if backing == "lazy":
        import dask.array

        arr = dask.array.map_blocks(partial(_read_block, str(path)), chunks=((count,), _split(h, 200), _split(w, 256)), dtype=dtype,
                                    meta=np.zeros((0, 0, 0), dtype))
    coords = {"band": list(range(1, count + 1))}
    attrs = {"crs": crs.to_wkt()}
    if nodata is not None:
        attrs["nodata"] = nodata
    if georef == "coords":
        coords.update(_coords(tr, h, w))
    else:
        attrs["transform"] = tuple(tr)[:6]
    da = xr.DataArray(arr, dims=("band", "y", "x"), coords=coords, attrs=attrs, name="scene")
    return da.chunk({"y": 128, "x": 300}) if backing == "chunked" else da


@pytest.mark.parametrize(("georef", "backing"), [("coords", "numpy"), ("attrs", "numpy"), ("coords", "chunked"),
                                                 ("attrs", "lazy")])
def test_dataarray_gives_the_same_objects_as_the_file(scene, georef, backing):
    from_file = geosam.segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    da = dataarray(scene.image_path, georef, backing)
    from_da = geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), **KW)
    assert len(from_file) >= 100
    assert_same(from_da, from_file)
    assert from_da.attrs["geosam"]["scene"] == "DataArray 'scene'"


def test_no_temporary_copy_is_written(scene, tmp_path, monkeypatch):
    """Reading a DataArray writes no GeoTIFF (rasterio's writer refuses) and no temporary file."""
    real_open = rasterio.open

    def no_writes(fp, mode="r", *args, **kwargs):
        if mode != "r":
            raise AssertionError(f"a raster was written: {fp}")
        return real_open(fp, mode, *args, **kwargs)

    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setattr(rasterio, "open", no_writes)
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    from_file = geosam.segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    for backing in ("numpy", "lazy"):
        da = dataarray(scene.image_path, backing=backing)
        assert_same(geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), prefetch_chips=2, **KW),
                    from_file)
    assert os.listdir(empty) == []


@pytest.fixture(scope="module")
def float_scene(tmp_path_factory):
    """A float32 3-band scene with a nodata value, NaNs and a stretch to estimate."""
    rng = np.random.default_rng(4)
    arr = rng.gamma(2.0, 300.0, (3, 300, 410)).astype(np.float32)
    arr[:, :40, :50] = -9999.0
    arr[1, 100:110, 200:230] = np.nan
    path = tmp_path_factory.mktemp("xrf") / "float.tif"
    profile = {"driver": "GTiff", "width": 410, "height": 300, "count": 3, "dtype": "float32", "crs": "EPSG:32633",
               "transform": rasterio.Affine(0.5, 0, 500000, 0, -0.5, 4100000), "nodata": -9999.0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return path


@pytest.mark.parametrize("overview_max_px", [1024, 97])
@pytest.mark.parametrize("backing", ["numpy", "lazy"])
def test_float_dataarray_reads_like_the_file(float_scene, overview_max_px, backing):
    """Same stretch (the decimated read picks GDAL's pixels), same chips, same nodata / NaN masks."""
    read = geosam.SegmentConfig().with_overrides(overview_max_px=overview_max_px).read
    with Scene(float_scene, read) as f, Scene(dataarray(float_scene, backing=backing), read) as d:
        assert d.info.width == f.info.width and d.info.height == f.info.height and d.info.transform == f.info.transform
        assert d.info.nodata == f.info.nodata and d.info.bounds == f.info.bounds and d.info.res == f.info.res
        np.testing.assert_array_equal(d.stretch, f.stretch)
        for spec in d.chip_specs(128, 16)[:6]:
            cd, cf = d.read_chip(spec), f.read_chip(spec)
            np.testing.assert_array_equal(cd.image, cf.image)
            np.testing.assert_array_equal(cd.valid, cf.valid)
        assert not d.read_window(PixelWindow(0, 0, 50, 40))[1].any()
        assert not d.read_window(PixelWindow(200, 100, 30, 10))[1].any()  # NaN in band 2


def test_dataarray_journal_resumes_and_refuses_other_pixels(scene, tmp_path):
    journal = tmp_path / "run.geosam-journal"
    da = dataarray(scene.image_path)
    first = geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), journal=journal, **KW)
    again = geosam.segment_scene(dataarray(scene.image_path), OracleMaskGenerator(scene.label_path),
                                 journal=journal, **KW)
    assert again.attrs["geosam"]["chips_replayed"] == again.attrs["geosam"]["chips_total"] > 0
    assert_same(again, first)
    changed = da.copy(deep=True)
    changed[0, 10, 10] = changed[0, 10, 10] + 1
    with pytest.raises(ConfigError, match="written for another run.*dataarray"):
        geosam.segment_scene(changed, OracleMaskGenerator(scene.label_path), journal=journal, **KW)


def test_lazy_dataarray_pickles_small(scene):
    """A dask-backed DataArray read from a file is a graph: what goes to a worker holds no pixels."""
    from geosam.config import EngineConfig
    from geosam.run.dask import make_job

    with Scene(dataarray(scene.image_path, backing="lazy")) as sc:
        job = make_job(sc, EngineConfig(), OracleMaskGenerator(scene.label_path))
    assert len(pickle.dumps(job)) < 700 * 500 * 3 // 20


def test_dataarray_without_crs_is_a_clear_error(scene):
    da = dataarray(scene.image_path)
    da.attrs.pop("crs")
    with pytest.raises(geosam.NoCRSError, match="DataArray 'scene': no CRS"):
        geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), progress=False)


def test_dataarray_without_georeferencing_is_a_clear_error():
    da = xr.DataArray(np.zeros((3, 20, 20), np.uint8), dims=("band", "y", "x"), attrs={"crs": "EPSG:32633"})
    with pytest.raises(geosam.InvalidRasterError, match="no georeferencing"):
        geosam.Scene(da)


# -- label raster as a DataArray ---------------------------------------------------


@pytest.mark.parametrize("backing", ["numpy", "lazy"])
def test_label_dataarray_aligns_with_a_dataarray_input(scene, backing):
    da = dataarray(scene.image_path, backing=backing)
    gdf = geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), **KW)
    labels = geosam.label_dataarray(gdf, like=da)
    assert labels.dims == ("y", "x") and labels.dtype == np.uint32
    xr.align(labels, da, join="exact")  # raises unless x / y are the same
    assert (labels.chunks is not None) == (backing == "lazy")
    with rasterio.open(scene.label_path) as src:
        truth = src.read(1)
    ours = labels.values
    # the oracle's objects are the label raster's instances: each id covers one true instance
    assert set(np.unique(ours)) == {0, *gdf["id"].tolist()}
    for oid in gdf["id"].tolist()[:20]:
        under = truth[ours == oid]
        assert (under == np.bincount(under).argmax()).mean() > 0.95
    assert labels.attrs["nodata"] == 0 and "32633" in labels.attrs["crs"]


def test_label_dataarray_of_a_path_matches_the_label_geotiff(scene, tmp_path):
    gdf = geosam.segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **KW)
    labels = geosam.label_dataarray(gdf, like=scene.image_path, block_px=128)
    tif = geosam.write_label_raster(gdf, tmp_path / "labels.tif", like_path=scene.image_path)
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(labels.values, src.read(1))
        tr, h, w = src.transform, src.height, src.width
    expected = _coords(tr, h, w)
    np.testing.assert_allclose(labels.x.values, expected["x"])
    np.testing.assert_allclose(labels.y.values, expected["y"])
    # on the DataArray of the same pixels the coordinates are identical
    xr.align(labels, dataarray(scene.image_path), join="exact")


def test_index_raster_of_a_dataarray_equals_the_files(scene, tmp_path):
    """Band roles, reflectance scaling and the block-by-block index raster work on a DataArray scene too."""
    from_file = geosam.write_index_raster(scene.image_path, tmp_path / "f.tif", ["exg"], block_px=128,
                                          band_roles="rgb")
    named = dataarray(scene.image_path, backing="lazy").assign_coords(band=["red", "green", "blue"])
    from_da = geosam.write_index_raster(named, tmp_path / "d.tif", ["exg"], block_px=128)  # roles from band names
    with rasterio.open(from_file) as a, rasterio.open(from_da) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs
