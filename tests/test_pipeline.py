"""Whole pipeline: real shared scenes with a tiny SAM, edge cases, the CLI."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio.transform import from_origin

import geosam
from geosam.cli.main import cli
from geosam.segment.base import BaseMaskGenerator, ChipMasks
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene

DATA = Path(__file__).resolve().parents[1] / "data"

# tiny random model: permissive thresholds so that some masks survive, few points to stay fast
TINY = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "progress": False}


def crop_copy(src: Path, window: tuple[int, int, int, int], dst: Path) -> Path:
    """The pixels of ``window`` (col, row, width, height) of ``src`` as a GeoTIFF of the same format and CRS."""
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        win = Window(*window)
        prof = {**ds.profile, "width": window[2], "height": window[3], "transform": ds.window_transform(win)}
        with rasterio.open(dst, "w", **prof) as out:
            out.write(ds.read(window=win))
    return dst


@pytest.mark.parametrize(
    "name,kwargs",
    [
        # banepa's lower-right quadrant (9 chips, not the whole scene's 25): real pixels, with the white wedge
        ("banepa_predict.tif", {"fill_value": 255}),
        ("solaris_pan_uint16.tif", {}),
        ("solaris_albers.tif", {}),
        ("ftw_sentinel2_rgbn_2dates.tif", {"bands": (1, 2, 3)}),
    ],
)
def test_real_scenes_with_tiny_sam(tiny_sam_dir, name, kwargs, tmp_path):
    path = DATA / name
    if name == "banepa_predict.tif":
        path = crop_copy(path, (1024, 1024, 1024, 1024), tmp_path / name)
    gdf = geosam.segment_scene(path, model=tiny_sam_dir, chip_size_px=512, overlap_px=64, **TINY, **kwargs)
    with rasterio.open(path) as ds:
        bounds, crs = shapely.box(*ds.bounds), ds.crs
    assert gdf.crs == gpd.GeoSeries([], crs=crs.to_wkt()).crs
    assert list(gdf.columns) == ["id", "area_m2", "predicted_iou", "stability_score", "n_chips", "model", "geometry"]
    assert len(gdf) > 0
    assert gdf.geometry.within(bounds.buffer(1e-9)).all()
    assert (gdf.area_m2 > 0).all() and (gdf.model == tiny_sam_dir).all()
    assert gdf.geometry.is_valid.all()
    assert gdf.attrs["geosam"]["chips_total"] >= 1


def _write_scene(path, arr, nodata=None, crs="EPSG:32633"):
    c, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=arr.dtype.name, crs=crs,
                       transform=from_origin(400000, 5000000, 1.0, 1.0), nodata=nodata) as ds:
        ds.write(arr)
    return str(path)


class _LabelOracle(BaseMaskGenerator):
    """In-memory oracle for edge-case scenes."""

    name = "mem-oracle"

    def __init__(self, lab):
        super().__init__()
        self.lab = lab
        self.calls = 0

    def generate(self, chip):
        self.calls += 1
        sub = self.lab[chip.spec.window.slices()]
        ids = [i for i in np.unique(sub) if i > 0]
        if not ids:
            return ChipMasks.empty(*sub.shape)
        return ChipMasks(np.stack([sub == i for i in ids]), np.ones(len(ids)), np.ones(len(ids)))


class _FullChip(BaseMaskGenerator):
    """Claims every pixel of every chip: whatever survives is what the pipeline lets through."""

    name = "full-chip"

    def generate(self, chip):
        return ChipMasks(np.ones((1, chip.height, chip.width), bool), [1.0], [1.0])


def test_banepa_fill_value_keeps_objects_off_the_white_wedge(tmp_path):
    path = DATA / "banepa_predict.tif"
    gdf = geosam.segment_scene(path, _FullChip(), chip_size_px=512, overlap_px=64, fill_value=255, progress=False)
    out = geosam.write_label_raster(gdf, tmp_path / "lab.tif", like_path=path)
    with rasterio.open(path) as ds, rasterio.open(out) as lab:
        white = (ds.read() == 255).all(axis=0)
        labels = lab.read(1)
    assert white.sum() > 100_000
    assert not labels[white].any()
    assert labels[~white].all()


def test_scene_smaller_than_one_chip(tmp_path):
    lab = np.zeros((40, 70), np.int32)
    lab[5:20, 5:30] = 1
    p = _write_scene(tmp_path / "s.tif", np.zeros((3, 40, 70), np.uint8))
    gdf = geosam.segment_scene(p, _LabelOracle(lab), chip_size_px=256, overlap_px=32, progress=False)
    assert len(gdf) == 1 and gdf.area_m2.iloc[0] == pytest.approx(15 * 25)


def test_invalid_chips_are_skipped_and_masks_avoid_invalid_pixels(tmp_path):
    arr = np.full((1, 300, 300), 7, np.uint16)
    arr[:, :, :150] = 0  # nodata half
    lab = np.zeros((300, 300), np.int32)
    lab[100:200, 100:200] = 1  # half on nodata
    p = _write_scene(tmp_path / "n.tif", arr, nodata=0)
    oracle = _LabelOracle(lab)
    gdf = geosam.segment_scene(p, oracle, chip_size_px=128, overlap_px=16, progress=False)
    st = gdf.attrs["geosam"]
    assert st["chips_skipped_invalid"] >= 3 and oracle.calls == st["chips_total"] - st["chips_skipped_invalid"]
    assert len(gdf) == 1 and gdf.area_m2.iloc[0] == pytest.approx(50 * 100)


def test_empty_result_is_normal(tmp_path):
    p = _write_scene(tmp_path / "e.tif", np.zeros((3, 100, 100), np.uint8))
    gdf = geosam.segment_scene(p, _LabelOracle(np.zeros((100, 100), np.int32)), chip_size_px=64, overlap_px=8,
                               progress=False)
    assert len(gdf) == 0 and "area_m2" in gdf.columns
    out = geosam.write_vector(gdf, tmp_path / "e.gpkg")
    assert len(gpd.read_file(out)) == 0


def test_to_crs_and_min_area(tmp_path):
    sc = make_oracle_scene(tmp_path, seed=3)
    full = geosam.segment_scene(sc.image_path, OracleMaskGenerator(sc.label_path), chip_size_px=256,
                                overlap_px=32, progress=False)
    big = geosam.segment_scene(sc.image_path, OracleMaskGenerator(sc.label_path), chip_size_px=256,
                               overlap_px=32, progress=False, min_area_m2=500, to_crs="EPSG:4326")
    assert big.crs.to_epsg() == 4326
    assert len(big) == (full.area_m2 >= 500).sum() and list(big.id) == list(range(1, len(big) + 1))


def test_unknown_setting_is_a_clear_error(tmp_path):
    p = _write_scene(tmp_path / "u.tif", np.zeros((3, 20, 20), np.uint8))
    with pytest.raises(geosam.ConfigError, match="chip_size"):
        geosam.segment_scene(p, _LabelOracle(np.zeros((20, 20), np.int32)), chip_size=100)


# -- CLI ---------------------------------------------------------------------


def test_cli_segment_writes_file_and_summary(tiny_sam_dir, tmp_path):
    out = tmp_path / "o" / "pan.gpkg"
    lab = tmp_path / "o" / "lab.tif"
    png = tmp_path / "o" / "pan.png"
    out.parent.mkdir()  # the CLI refuses a missing output folder (tests/test_user_mistakes.py)
    scene = crop_copy(DATA / "solaris_pan_uint16.tif", (0, 0, 512, 512), tmp_path / "pan.tif")  # one chip, not 4
    res = CliRunner().invoke(cli, [
        "segment", str(scene), "-o", str(out), "--model", tiny_sam_dir,
        "--chip-size", "512", "--overlap", "64", "--points-per-side", "4", "--pred-iou-thresh", "0",
        "--stability-score-thresh", "0", "--no-progress", "--label-raster", str(lab), "--overlay", str(png),
    ])
    assert res.exit_code == 0, res.output
    gdf = gpd.read_file(out)
    assert len(gdf) > 0 and gdf.crs.to_epsg() == 32616
    assert f"{out}: {len(gdf)} objects" in res.output
    assert lab.exists() and png.exists()


def test_cli_info():
    res = CliRunner().invoke(cli, ["info", str(DATA / "solaris_albers.tif"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"dtype": "int16"' in res.output and '"nodata": -9999.0' in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["segment", "missing.tif", "-o", "x.gpkg"], "missing.tif: no such file"),
        (["segment", str(DATA / "banepa_predict.tif"), "-o", "x.gpkg", "--bands", "4,5,6"], "band 4 does not exist"),
        (["segment", str(DATA / "banepa_predict.tif"), "-o", "x.gpkg", "--model", "/nonexistent/model"],
         "/nonexistent/model"),
        (["segment", str(DATA / "banepa_predict.tif"), "-o", "x.kml", "--model", "/nonexistent/model"],
         "x.kml: unknown vector format"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_cli_bad_output_path_fails_before_any_work(tmp_path, monkeypatch):
    """A typo in an output name must not cost a whole run: checked before segmentation starts."""
    import geosam.modes.everything

    def boom(*a, **k):
        raise AssertionError("segmentation started despite a bad output path")

    monkeypatch.setattr(geosam.modes.everything, "segment_scene", boom)
    scene = str(DATA / "solaris_pan_uint16.tif")
    for extra, message in [
        (["-o", str(tmp_path / "x.kml")], "unknown vector format"),
        (["-o", str(tmp_path / "x.gpkg"), "--label-raster", str(tmp_path / "l.png")], "GeoTIFF"),
        (["-o", str(tmp_path / "x.gpkg"), "--overlay", str(tmp_path / "o.jpg")], "PNG"),
    ]:
        res = CliRunner().invoke(cli, ["segment", scene, *extra])
        assert res.exit_code == 1 and message in res.output, res.output


@pytest.mark.parametrize("prefetch", [0, 2])
def test_unreadable_chip_stops_the_run_or_is_skipped(tmp_path, monkeypatch, prefetch):
    """A corrupt block names the file and window; with skip_bad_chips the rest of the run is kept."""
    from geosam.errors import InvalidRasterError
    from geosam.read.scene import Scene

    lab = np.zeros((300, 300), np.int32)
    lab[10:40, 10:40] = 1  # first chip
    lab[200:260, 200:260] = 2  # last chips
    p = _write_scene(tmp_path / "c.tif", np.full((3, 300, 300), 9, np.uint8))
    real = Scene.read_window

    def flaky(self, window, out_shape=None):
        if out_shape is None and window.col_off == 0 and window.row_off > 0:
            raise InvalidRasterError(f"{self.path}: cannot read window {window} (TIFFReadEncodedTile failed)")
        return real(self, window, out_shape)

    monkeypatch.setattr(Scene, "read_window", flaky)
    kw = {"chip_size_px": 128, "overlap_px": 16, "progress": False, "prefetch_chips": prefetch}
    with pytest.raises(InvalidRasterError, match="c.tif: cannot read window"):
        geosam.segment_scene(p, _LabelOracle(lab), **kw)
    gdf = geosam.segment_scene(p, _LabelOracle(lab), skip_bad_chips=True, **kw)
    failed = gdf.attrs["geosam"]["chips_failed"]
    assert len(failed) == 2 and all("TIFFReadEncodedTile" in f["error"] for f in failed)
    assert sorted(gdf.area_m2) == [900.0, 3600.0]
