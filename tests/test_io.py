"""Reading: windows, band selection, stretch, invalid pixels, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geosam.errors import BandError, ConfigError, InvalidRasterError, NoCRSError
from geosam.read.scene import ReadConfig, Scene
from geosam.windows import PixelWindow

DATA = Path(__file__).resolve().parents[1] / "data"


def _write(path, arr, crs="EPSG:32633", nodata=None, transform=None, **kw):
    count, h, w = arr.shape
    prof = dict(driver="GTiff", width=w, height=h, count=count, dtype=arr.dtype.name, crs=crs,
                transform=transform or from_origin(500000, 5000000, 2.0, 2.0), nodata=nodata, **kw)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(arr)
    return str(path)


def test_uint8_read_as_is_with_window(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (3, 300, 400), dtype=np.uint8)
    p = _write(tmp_path / "a.tif", arr)
    with Scene(p) as sc:
        assert sc.stretch is None and sc.bands == (1, 2, 3)
        spec = sc.chip_specs(128, 16)[5]
        chip = sc.read_chip(spec)
        r, c = spec.window.slices()
        np.testing.assert_array_equal(chip.image, np.moveaxis(arr[:, r, c], 0, -1))
        assert chip.valid.all()
        assert chip.spec is spec


def test_band_selection_and_single_band_to_three_channels(tmp_path):
    arr = np.stack([np.full((50, 60), v, np.uint8) for v in (10, 20, 30, 40)])
    p = _write(tmp_path / "b.tif", arr)
    with Scene(p, ReadConfig(bands=(3, 2, 1))) as sc:
        img = sc.read_chip(sc.chip_specs(64, 8)[0]).image
        assert img.shape == (50, 60, 3) and tuple(img[0, 0]) == (30, 20, 10)
    with Scene(p, ReadConfig(bands=(4,))) as sc:
        img = sc.read_chip(sc.chip_specs(64, 8)[0]).image
        assert tuple(img[0, 0]) == (40, 40, 40)


def test_uint16_percentile_stretch_from_decimated_read(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(1000, 3000, (1, 400, 400)).astype(np.uint16)
    arr[0, :5, :5] = 65000  # outliers must not wash out the stretch
    p = _write(tmp_path / "u16.tif", arr, nodata=0)
    with Scene(p, ReadConfig(overview_max_px=100)) as sc:
        lo, hi = sc.stretch[0]
        assert 1000 <= lo < 1100 and 2900 < hi <= 3000
        img = sc.read_chip(sc.chip_specs(512, 0)[0]).image
        assert img.dtype == np.uint8 and img.shape == (400, 400, 3)
        assert img[0, 0, 0] == 255 and 0 < img.mean() < 255


def test_nodata_and_fill_value_are_invalid(tmp_path):
    arr = np.full((3, 64, 64), 100, np.uint8)
    arr[:, :10, :] = 255  # fill colour
    arr[0, 20, 20] = 255  # only one band at 255: still valid
    p = _write(tmp_path / "f.tif", arr)
    with Scene(p, ReadConfig(fill_value=(255.0,))) as sc:
        chip = sc.read_chip(sc.chip_specs(64, 0)[0])
        assert not chip.valid[:10].any() and chip.valid[10:].all()
        assert (chip.image[:10] == 0).all()
    arr16 = np.full((1, 64, 64), 500, np.uint16)
    arr16[0, 30:, 30:] = 0
    p16 = _write(tmp_path / "n.tif", arr16, nodata=0)
    with Scene(p16) as sc:
        chip = sc.read_chip(sc.chip_specs(64, 0)[0])
        assert not chip.valid[30:, 30:].any() and chip.valid[:30].all()


def test_internal_mask_band_is_invalid(tmp_path):
    arr = np.full((3, 64, 64), 90, np.uint8)
    p = str(tmp_path / "m.tif")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        p, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 1, 1),
    ) as ds:
        ds.write(arr)
        m = np.full((64, 64), 255, np.uint8)
        m[:, :16] = 0
        ds.write_mask(m)
    with Scene(p) as sc:
        chip = sc.read_chip(sc.chip_specs(64, 0)[0])
        assert not chip.valid[:, :16].any() and chip.valid[:, 16:].all()


def test_decimated_window_read(tmp_path):
    arr = np.zeros((1, 200, 200), np.uint8)
    p = _write(tmp_path / "d.tif", arr)
    with Scene(p) as sc:
        data, valid = sc.read_window(PixelWindow(0, 0, 200, 200), out_shape=(50, 50))
        assert data.shape == (1, 50, 50) and valid.shape == (50, 50)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InvalidRasterError, match="nope.tif: no such file"):
        Scene(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(InvalidRasterError, match="bad.tif"):
        Scene(bad)
    nocrs = str(tmp_path / "nocrs.tif")
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       transform=from_origin(0, 8, 1, 1)) as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(NoCRSError, match="nocrs.tif.*no CRS"):
        Scene(nocrs)
    p = _write(tmp_path / "two.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(BandError, match="band 7 does not exist"):
        Scene(p, ReadConfig(bands=(7, 1, 2)))
    with pytest.raises(ConfigError, match="1 or 3 bands"):  # checked without opening the file
        ReadConfig(bands=(1, 2))
    with pytest.raises(ConfigError, match="fill_value"):
        Scene(p, ReadConfig(fill_value=(1, 2)))


def test_rasterio_dataset_is_accepted(tmp_path):
    p = _write(tmp_path / "r.tif", np.zeros((3, 16, 16), np.uint8))
    with rasterio.open(p) as ds, Scene(ds) as sc:
        assert sc.info.width == 16


@pytest.mark.parametrize(
    "name,dtype,stretched",
    [("banepa_predict.tif", "uint8", False), ("solaris_pan_uint16.tif", "uint16", True),
     ("solaris_albers.tif", "int16", True), ("ftw_sentinel2_rgbn_2dates.tif", "uint16", True)],
)
def test_real_scenes_open(name, dtype, stretched):
    with Scene(DATA / name) as sc:
        assert sc.info.dtype == dtype
        assert (sc.stretch is not None) == stretched
        spec = sc.chip_specs(256, 32)[0]
        chip = sc.read_chip(spec)
        assert chip.image.shape == (256, 256, 3) and chip.image.dtype == np.uint8
    if name == "solaris_pan_uint16.tif":
        with Scene(DATA / name) as sc:  # nodata 0 in the corners of this scene
            assert sc.info.nodata == 0


def test_vrt_mosaic_reads_like_its_sources(tmp_path):
    """A VRT mosaic of two GeoTIFF halves reads window by window like the whole."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, (3, 100, 160), dtype=np.uint8)
    tr = from_origin(500000, 5000000, 2.0, 2.0)
    left = _write(tmp_path / "left.tif", arr[:, :, :80], transform=tr)
    right = _write(tmp_path / "right.tif", arr[:, :, 80:], transform=from_origin(500160, 5000000, 2.0, 2.0))
    bands = []
    for b in (1, 2, 3):
        srcs = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{p}</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"80\" ySize=\"100\"/>"
            f"<DstRect xOff=\"{x}\" yOff=\"0\" xSize=\"80\" ySize=\"100\"/></SimpleSource>"
            for p, x in ((left, 0), (right, 80))
        )
        bands.append(f"<VRTRasterBand dataType=\"Byte\" band=\"{b}\">{srcs}</VRTRasterBand>")
    with rasterio.open(left) as ds:
        wkt = ds.crs.to_wkt()
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f"<VRTDataset rasterXSize=\"160\" rasterYSize=\"100\"><SRS>{wkt}</SRS>"
        f"<GeoTransform>{tr.c}, {tr.a}, 0, {tr.f}, 0, {tr.e}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    with Scene(vrt) as sc:
        for spec in sc.chip_specs(64, 8):
            r, c = spec.window.slices()
            np.testing.assert_array_equal(sc.read_chip(spec).image, np.moveaxis(arr[:, r, c], 0, -1))
