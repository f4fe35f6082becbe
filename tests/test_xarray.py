"""xarray DataArrays are scenes too: same objects as from the file."""

import numpy as np
import pytest
import rasterio
import xarray as xr

import geosam
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_oracle_scene(tmp_path_factory.mktemp("xr"), seed=11, width=700, height=500, n_objects=100)


def _dataarray(path, georef="coords"):
    with rasterio.open(path) as ds:
        arr, tr, crs = ds.read(), ds.transform, ds.crs
    _, h, w = arr.shape
    coords = {"band": [1, 2, 3]}
    attrs = {"crs": crs.to_wkt()}
    if georef == "coords":
        coords["x"] = tr.c + tr.a * (np.arange(w) + 0.5)
        coords["y"] = tr.f + tr.e * (np.arange(h) + 0.5)
    else:
        attrs["transform"] = tuple(tr)[:6]
    return xr.DataArray(arr, dims=("band", "y", "x"), coords=coords, attrs=attrs, name="scene")


@pytest.mark.parametrize("georef", ["coords", "attrs"])
def test_dataarray_gives_the_same_objects_as_the_file(scene, georef):
    kw = {"chip_size_px": 256, "overlap_px": 32, "progress": False}
    from_file = geosam.segment_scene(scene.image_path, OracleMaskGenerator(scene.label_path), **kw)
    da = _dataarray(scene.image_path, georef)
    from_da = geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), **kw)
    assert len(from_da) == len(from_file) >= 100
    assert from_da.crs == from_file.crs
    assert from_da.geometry.geom_equals_exact(from_file.geometry, tolerance=1e-6).all()
    np.testing.assert_allclose(from_da.area_m2, from_file.area_m2)


def test_dataarray_without_crs_is_a_clear_error(scene):
    da = _dataarray(scene.image_path)
    da.attrs.pop("crs")
    with pytest.raises(geosam.NoCRSError, match="DataArray: no CRS"):
        geosam.segment_scene(da, OracleMaskGenerator(scene.label_path), progress=False)


def test_dataarray_without_georeferencing_is_a_clear_error():
    da = xr.DataArray(np.zeros((3, 20, 20), np.uint8), dims=("band", "y", "x"), attrs={"crs": "EPSG:32633"})
    with pytest.raises(geosam.InvalidRasterError, match="no georeferencing"):
        geosam.Scene(da)
