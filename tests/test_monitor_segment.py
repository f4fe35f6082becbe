"""Objects segmented in the monitoring run itself (`geosam.monitor.segment`): one date, a composite, every date.

Three generated dates of one place (4 bands, red/green/blue/nir): the first two on one 10 m grid, the third on a
5 m grid. Their objects are known label rasters, segmented exactly by the oracle generator; the tiny random SAM
checks the real model path once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0
H, W = 96, 128  # at 10 m
DATES = ("2024-04-01", "2024-06-01", "2024-08-01")
#: objects per date as (label, row0, row1, col0, col1) in 10 m pixels; B splits at date 2, C vanishes at date 3
OBJECTS = {
    0: [(1, 10, 30, 10, 40), (2, 50, 80, 20, 60), (3, 20, 60, 80, 110)],
    1: [(1, 10, 30, 10, 40), (2, 50, 80, 20, 38), (4, 50, 80, 42, 60), (3, 20, 60, 80, 110)],
    2: [(1, 10, 30, 10, 40), (2, 50, 80, 20, 38), (4, 50, 80, 42, 60)],
}


def _write(path: Path, data: np.ndarray, res: float, nodata: float | None = None) -> None:
    import rasterio
    from affine import Affine

    prof = {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2], "count": data.shape[0],
            "dtype": data.dtype.name, "crs": CRS, "transform": Affine(res, 0, X0, 0, -res, Y0), "nodata": nodata}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if data.shape[0] == 4:
            dst.descriptions = ("red", "green", "blue", "nir")


def _date(k: int, folder: Path) -> tuple[Path, Path]:
    """Scene and label raster of date ``k`` (date 2 at 5 m pixels, each 10 m pixel split in four)."""
    rng = np.random.default_rng(k)
    labels = np.zeros((H, W), np.int32)
    for lab, r0, r1, c0, c1 in OBJECTS[k]:
        labels[r0:r1, c0:c1] = lab
    img = rng.integers(900, 1100, size=(4, H, W)).astype(np.uint16)  # soil: nir ~ red
    for lab in np.unique(labels[labels > 0]):
        m = labels == lab
        img[3][m] = 3000 + 200 * lab - 800 * k * (lab == 1)  # vegetation; object 1 loses it over time
        img[0][m] = 600 + 50 * lab
        img[1][m] = 900 + 300 * lab  # distinct colours per object
    scale = 2 if k == 2 else 1
    img, labels = (np.repeat(np.repeat(a, scale, axis=-1), scale, axis=-2) for a in (img, labels))
    scene, lab = folder / f"d{k}_{DATES[k]}.tif", folder / f"labels_{k}.tif"
    _write(scene, img, 10.0 / scale)
    _write(lab, labels[None], 10.0 / scale)
    return scene, lab


@pytest.fixture(scope="module")
def dates(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    folder = tmp_path_factory.mktemp("monseg")
    made = [_date(k, folder) for k in range(3)]
    return [str(s) for s, _ in made], [str(lab) for _, lab in made]


def _boxes(k: int):
    import geopandas as gpd
    from shapely.geometry import box

    return gpd.GeoDataFrame({"label": [o[0] for o in OBJECTS[k]]}, geometry=[
        box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0) for _, r0, r1, c0, c1 in OBJECTS[k]], crs=CRS)


def _means(wide):
    cols = [c for c in wide.columns if c.startswith("ndvi_mean_")]
    w = wide.assign(_a=wide.geometry.area.round(3), _x=wide.geometry.centroid.x.round(3)).sort_values(["_a", "_x"])
    return w[cols].to_numpy(dtype=float)


def test_segment_one_date_equals_its_objects_given(dates) -> None:
    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects
    from geosam.testing import OracleMaskGenerator

    scenes, labels = dates
    seg = SegmentObjects("2024-04-01", mask_generator=OracleMaskGenerator(labels[0]))
    got = monitor_objects(scenes, segment=seg)
    want = monitor_objects(scenes, _boxes(0))
    assert len(got.wide) == 3 and got.tracks is None
    np.testing.assert_allclose(_means(got.wide), _means(want.wide), rtol=1e-6)
    assert np.isfinite(_means(got.wide)).all()
    a = got.wide.loc[got.wide.geometry.area.idxmin()]  # object A (the smallest) loses vegetation
    assert a["ndvi_delta"] < -0.2 and {"id", "area_m2", "predicted_iou"} <= set(got.wide.columns)


def test_segment_every_date_tracks_split_and_vanished(dates) -> None:
    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects
    from geosam.testing import OracleMaskGenerator

    scenes, labels = dates
    gens = {d: OracleMaskGenerator(p) for d, p in zip(DATES, labels)}
    r = monitor_objects(scenes, segment=SegmentObjects("every", mask_generator=gens))
    want = monitor_objects(scenes, [_boxes(k) for k in range(3)])
    t = r.tracks
    assert t is not None
    assert sorted(t[t["date"] == "2024-06-01"]["status"]) == sorted(want.tracks[want.tracks["date"] == "2024-06-01"][
        "status"])
    assert "split" in set(t["status"]) and "vanished" in set(t["status"])
    np.testing.assert_allclose(_means(r.wide), _means(want.wide), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_composite_is_the_per_pixel_statistic_of_the_dates(dates, tmp_path, statistic) -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from geosam.monitor.composite import composite_path
    from geosam.monitor.dates import date_scenes

    scenes, _ = dates
    a = rasterio.open(scenes[0]).read()
    hole = a.copy()
    hole[:, :8, :8] = 0  # nodata at the first date: the composite there is of the other dates
    first = tmp_path / "first_2024-04-01.tif"
    _write(first, hole, 10.0, nodata=0)
    ds = date_scenes([str(first), *scenes[1:]])
    out = composite_path(ds, [(1, 2, 3)] * 3, tmp_path / "c.tif", statistic=statistic, chip_px=40)
    with rasterio.open(scenes[2]) as src, WarpedVRT(src, crs=CRS, transform=rasterio.open(first).transform,
                                                     width=W, height=H, resampling=Resampling.nearest) as vrt:
        third = vrt.read([1, 2, 3])
    stack = np.stack([hole[:3], rasterio.open(scenes[1]).read([1, 2, 3]), third]).astype(np.float64)
    stack[0][:, :8, :8] = np.nan
    want = np.rint(np.nanmedian(stack, axis=0) if statistic == "median" else np.nanmean(stack, axis=0))
    with rasterio.open(out) as c:
        got = c.read()
        assert c.dtypes[0] == "uint16" and c.crs == rasterio.open(first).crs and (c.width, c.height) == (W, H)
        assert c.read_masks(1).all()
    np.testing.assert_array_equal(got, want)


def test_segment_composite_leaves_no_temporary_file(dates, tmp_path) -> None:
    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects
    from geosam.testing import OracleMaskGenerator

    scenes, labels = dates
    out = tmp_path / "o.gpkg"
    seg = SegmentObjects("composite", mask_generator=OracleMaskGenerator(labels[0]))
    r = monitor_objects(scenes, segment=seg, output=out)
    assert len(r.wide) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]


# -- the CLI ------------------------------------------------------------------------------------------------


def _cli(args, ok: bool = True):
    from geosam.cli.main import cli

    r = CliRunner().invoke(cli, args)
    assert (r.exit_code == 0) == ok, r.output
    return r


@pytest.fixture
def oracles(monkeypatch, dates):
    """SAM replaced by the oracle of each segmented date, in the order they are segmented (oldest first)."""
    import geosam.modes.everything
    from geosam.testing import OracleMaskGenerator

    order: list[str] = []

    def build(cfg):
        lab = order.pop(0)
        return OracleMaskGenerator(lab)

    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", build)
    return order


def test_cli_segment_a_date(dates, oracles, tmp_path) -> None:
    from geosam.write.vector import read_vector

    scenes, labels = dates
    oracles.append(labels[1])
    out = tmp_path / "o.gpkg"
    _cli(["monitor", *scenes, "--segment", "2024-06-01", "-o", str(out), "--rank-by", "ndvi_delta", "--ascending",
          "--no-progress"])
    w = read_vector(out)
    assert len(w) == 4 and w["rank"].tolist() == [1, 2, 3, 4] and not oracles
    assert {"area_m2", "ndvi_mean_2024-06-01", "ndvi_delta"} <= set(w.columns)
    oracles.append(labels[1])  # --resume: the run and its segmentation journaled, both journals gone after success
    _cli(["monitor", *scenes, "--segment", "2024-06-01", "-o", str(tmp_path / "again.gpkg"), "--resume", "--no-progress"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.gpkg", "o.gpkg"]


def test_cli_segment_composite_and_every(dates, oracles, tmp_path) -> None:
    import pandas as pd

    from geosam.write.vector import read_vector

    scenes, labels = dates
    oracles.append(labels[0])
    _cli(["monitor", *scenes, "--segment", "composite", "--composite", "mean", "-o", str(tmp_path / "c.gpkg")])
    assert len(read_vector(tmp_path / "c.gpkg")) == 3
    oracles.extend(labels)
    _cli(["monitor", *scenes, "--segment", "every", "-o", str(tmp_path / "e.gpkg"), "--long", str(tmp_path / "e.csv")])
    w, long = read_vector(tmp_path / "e.gpkg"), pd.read_csv(tmp_path / "e.csv")
    assert "track_id" in w.columns and len(w) == 4  # A, B (split: B keeps its track), C, and B's new part
    assert len(long) == 3 + 4 + 3 and not oracles


def test_cli_bad_input_before_any_model(dates, tmp_path, model_loads) -> None:
    import rasterio
    from affine import Affine

    scenes, _ = dates
    o = str(tmp_path / "o.gpkg")
    obj = tmp_path / "obj.gpkg"
    _boxes(0).to_file(obj)
    msg = _cli(["monitor", *scenes, "--segment", "2024-05-01", "-o", o], ok=False).output
    assert "2024-05-01" in msg and "2024-04-01, 2024-06-01, 2024-08-01" in msg
    assert "exclude each other" in _cli(["monitor", *scenes, "--segment", "every", "--objects", str(obj), "-o", o],
                                        ok=False).output
    assert "--objects" in _cli(["monitor", *scenes, "-o", o], ok=False).output
    assert "cannot read a date" in _cli(["monitor", *scenes, "--segment", "soon", "-o", o], ok=False).output
    assert "cannot rank by" in _cli(["monitor", *scenes, "--segment", "every", "-o", o, "--rank-by", "x"],
                                    ok=False).output
    assert "swir1" in _cli(["monitor", *scenes, "--segment", "every", "-o", o, "--index", "ndmi"], ok=False).output
    assert "band 7" in _cli(["monitor", *scenes, "--segment", "2024-04-01", "--bands", "7,2,1", "-o", o],
                            ok=False).output
    assert "--composite mean takes effect with --segment composite" in _cli(
        ["monitor", *scenes, "--segment", "every", "--composite", "mean", "-o", o], ok=False).output
    assert "--prompts needs --segment" in _cli(["monitor", *scenes, "--objects", str(obj), "--prompts", str(obj),
                                                "-o", o], ok=False).output
    assert "no_such.gpkg: prompts file does not exist" in _cli(
        ["monitor", *scenes, "--segment", "every", "--prompts", str(tmp_path / "no_such.gpkg"), "-o", o],
        ok=False).output
    far = tmp_path / "far_2024-09-01.tif"
    with rasterio.open(scenes[0]) as src:
        prof, data = src.profile, src.read()
    prof["transform"] = prof["transform"] * Affine.translation(10_000, 0)
    with rasterio.open(far, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = ("red", "green", "blue", "nir")
    msg = _cli(["monitor", *scenes, str(far), "--segment", "composite", "-o", o], ok=False).output
    assert "far_2024-09-01.tif (2024-09-01): the raster does not overlap" in msg
    assert model_loads == [] and not Path(o).exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning")
def test_every_date_refuses_prompts_without_a_crs_on_dates_in_several_crss(dates, tmp_path, model_loads) -> None:
    """--segment every segments each date with the prompts: without a CRS they would be taken in each date's
    own CRS, so on dates in two UTM zones they are refused before any model; one date is fine (its CRS)."""
    import rasterio

    from geosam.errors import PromptError
    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects

    scenes, _ = dates
    zone34 = tmp_path / "zone34_2024-06-01.tif"
    from affine import Affine
    from pyproj import Transformer

    x, y = Transformer.from_crs(CRS, "EPSG:32634", always_xy=True).transform(X0, Y0)  # the same place, zone 34
    with rasterio.open(scenes[1]) as src:
        prof, data = {**src.profile, "crs": "EPSG:32634", "transform": Affine(10, 0, x, 0, -10, y)}, src.read()
    with rasterio.open(zone34, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = ("red", "green", "blue", "nir")
    no_crs = tmp_path / "boxes.gpkg"
    _boxes(0).set_crs(None, allow_override=True).to_file(no_crs)
    o = str(tmp_path / "o.gpkg")
    msg = _cli(["monitor", scenes[0], str(zone34), "--segment", "every", "--prompts", str(no_crs), "-o", o],
               ok=False).output
    assert f"the prompts file {no_crs}: no CRS, and the scenes are in 2 CRSs (EPSG:32633: {scenes[0]}; " \
           f"EPSG:32634: {zone34})" in " ".join(msg.split())
    with pytest.raises(PromptError, match="the prompts: no CRS, and the scenes are in 2 CRSs"):
        monitor_objects([scenes[0], zone34], segment=SegmentObjects("every", prompts=[(X0, Y0 - 300, X0 + 300, Y0)]))
    assert model_loads == [] and not Path(o).exists()
    with pytest.raises(AssertionError, match="loaded"):  # one date segmented, or prompts with a CRS: on to the model
        monitor_objects([scenes[0], zone34], segment=SegmentObjects("2024-04-01", prompts=str(no_crs)))
    with pytest.raises(AssertionError, match="loaded"):
        monitor_objects([scenes[0], zone34], segment=SegmentObjects("every", prompts=_boxes(0)))


def test_cli_segment_by_box_prompts(dates, tiny_sam_dir, tmp_path) -> None:
    """--prompts: one row per box prompt at the segmented date (prompt mode, tiny SAM), the prompts' columns kept."""
    from geosam.write.vector import read_vector

    scenes, _ = dates
    boxes = tmp_path / "boxes.gpkg"
    _boxes(0).assign(name=["a", "b", "c"]).to_file(boxes)
    out = tmp_path / "o.gpkg"
    _cli(["monitor", *scenes, "--segment", "2024-04-01", "--prompts", str(boxes), "--model", tiny_sam_dir,
          "--device", "cpu", "-o", str(out), "--rank-by", "name"])
    w = read_vector(out)
    assert len(w) == 3 and w["name"].tolist() == ["c", "b", "a"]  # the prompts' own columns carried, ranked by
    assert {"prompt_id", "status", "ndvi_mean_2024-08-01"} <= set(w.columns)
    assert set(w["model"]) == {tiny_sam_dir}


def test_cli_segment_with_the_tiny_sam(dates, tiny_sam_dir, tmp_path) -> None:
    """The real model path: SAM loads once, segments the date, and every object gets its series."""
    import pandas as pd

    scenes, _ = dates
    long = tmp_path / "l.csv"
    _cli(["monitor", *scenes[:2], "--segment", "2024-04-01", "--long", str(long), "--model", tiny_sam_dir,
          "--device", "cpu", "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
          "--chip-size", "128", "--overlap", "0", "--no-progress"])
    lt = pd.read_csv(long)
    assert set(lt["date"]) == {"2024-04-01", "2024-06-01"} and len(lt) % 2 == 0


def test_python_segment_takes_a_date_string(dates) -> None:
    from geosam.config import PromptConfig, SegmentConfig
    from geosam.monitor.segment import SegmentObjects

    assert SegmentObjects("2024-04-01").date == dt.date(2024, 4, 1)
    assert SegmentObjects(" Every ").date == "every"
    from geosam.errors import ConfigError

    with pytest.raises(ConfigError, match="median"):
        SegmentObjects("composite", composite="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="takes a PromptConfig"):
        SegmentObjects("every", prompts=[(0.0, 0.0, 1.0, 1.0)], config=SegmentConfig())
    with pytest.raises(ConfigError, match="leave mask_generator unset"):
        SegmentObjects("every", prompts=[(0.0, 0.0, 1.0, 1.0)], mask_generator=object())  # type: ignore[arg-type]
    assert isinstance(SegmentObjects("every", prompts=[(0.0, 0.0, 1.0, 1.0)]).config, PromptConfig)


# -- band stacks and DataArrays -------------------------------------------------------------------------------

S2 = Path(__file__).resolve().parents[1] / "data" / "ftw_sentinel2_rgbn_2dates.tif"
S2_STACK = {"2021-06-01": "red=1,green=2,blue=3,nir=4", "2021-09-01": "red=5,green=6,blue=7,nir=8"}


def _recording_oracle(label_path: Path):
    from geosam.testing import OracleMaskGenerator

    class Recording(OracleMaskGenerator):
        """The oracle, keeping each chip's raw model bands and window."""

        def generate(self, chip):
            self.seen.append((chip.spec.window, chip.raw))
            return super().generate(chip)

    gen = Recording(label_path)
    gen.seen = []
    return gen


@pytest.fixture(scope="module")
def s2_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import rasterio

    with rasterio.open(S2) as src:
        prof = src.profile | {"count": 1, "dtype": "int32", "nodata": None}
    labels = np.zeros((prof["height"], prof["width"]), np.int32)
    labels[20:60, 30:90], labels[100:130, 150:220] = 1, 2
    path = tmp_path_factory.mktemp("s2lab") / "labels.tif"
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(labels[None])
    return path


def test_a_band_stack_date_is_segmented_from_its_own_rgb_roles(s2_labels) -> None:
    import rasterio

    from geosam.config import SegmentConfig
    from geosam.errors import ConfigError
    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects

    gen = _recording_oracle(s2_labels)
    r = monitor_objects(str(S2), segment=SegmentObjects("2021-09-01", mask_generator=gen,
                                                        config=SegmentConfig.from_settings(chip_size_px=256, overlap_px=32)),
                        stack=S2_STACK)
    assert len(r.wide) == 2 and gen.seen
    with rasterio.open(S2) as src:
        for window, raw in gen.seen:
            np.testing.assert_array_equal(raw, src.read([5, 6, 7], window=window.to_rasterio()))
    with pytest.raises(ConfigError, match="leave bands"):
        monitor_objects(str(S2), segment=SegmentObjects("2021-06-01", mask_generator=gen,
                                                        config=SegmentConfig.from_settings(bands=(1, 2, 3))),
                        stack=S2_STACK)


def test_a_dataarray_with_time_is_segmented_and_composited(s2_labels) -> None:
    import rasterio
    import xarray as xr

    from geosam.monitor.segment import SegmentObjects
    from geosam.monitor.series import monitor_objects
    from geosam.testing import OracleMaskGenerator

    with rasterio.open(S2) as src:
        data, t, crs = src.read(), src.transform, src.crs
    da = xr.DataArray(np.stack([data[:4], data[4:]]), dims=("time", "band", "y", "x"),
                      coords={"time": np.array(list(S2_STACK), dtype="datetime64[ns]"), "band": ["red", "green", "blue", "nir"]},
                      attrs={"transform": t, "crs": str(crs)})
    by_stack = monitor_objects(str(S2), segment=SegmentObjects("2021-06-01", mask_generator=OracleMaskGenerator(
        s2_labels)), stack=S2_STACK)
    for which in ("2021-06-01", "composite"):
        r = monitor_objects(da, segment=SegmentObjects(which, mask_generator=OracleMaskGenerator(s2_labels)))
        assert len(r.wide) == 2
        np.testing.assert_allclose(_means(r.wide), _means(by_stack.wide), rtol=1e-6)


def test_valid_median_and_mean_equal_numpys_nan_versions() -> None:
    import warnings

    from geosam.monitor.composite import valid_mean, valid_median

    rng = np.random.default_rng(3)
    stack = rng.normal(size=(5, 3, 40, 50)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = np.nan  # 0 to 5 valid dates per pixel: odd, even and none
    stack[:, :, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med, mean = np.nanmedian(stack, axis=0), np.nanmean(stack.astype(np.float64), axis=0)
    some = np.isfinite(stack).any(axis=0)
    assert (~some).any() and some.any()
    np.testing.assert_allclose(valid_median(stack)[some], med[some], rtol=1e-6)
    np.testing.assert_allclose(valid_mean(stack)[some], mean[some], rtol=1e-6)
    assert valid_median(stack)[~some].tolist() == [0.0] * int((~some).sum())


def test_python_segment_as_a_plain_date_and_neither_objects_nor_segment(dates, oracles) -> None:
    from geosam.errors import ConfigError
    from geosam.monitor.series import monitor_objects

    scenes, labels = dates
    oracles.append(labels[1])
    r = monitor_objects(scenes, segment="2024-06-01")
    assert len(r.wide) == 4 and not oracles
    with pytest.raises(ConfigError, match="give objects"):
        monitor_objects(scenes)
    with pytest.raises(ConfigError, match="not both"):
        monitor_objects(scenes, _boxes(0), segment="every")


@pytest.mark.slow  # a local Dask cluster (shared per session) and four monitoring runs
def test_a_segmented_date_resumes_from_its_own_journal_and_runs_on_dask(dates, dask_client, tmp_path,
                                                                         monkeypatch) -> None:
    """With ``segment=``, the run's journal and scheduler reach the segmentation: the date's chips are journaled
    beside the monitoring journal and replayed by a rerun, and Dask gives the in-process objects."""
    from geosam.monitor.segment import SegmentObjects, segment_journal
    from geosam.monitor.series import monitor_objects
    from geosam.run import loop, tasks
    from geosam.testing import OracleMaskGenerator

    scenes, labels = dates
    calls: list[tasks.TaskCounts] = []

    def spy(plan, execute, sink, **kw):  # the modes' loop only (monitoring's own tasks do not pass here)
        calls.append(tasks.run_tasks(plan, execute, sink, **kw))
        return calls[-1]

    monkeypatch.setattr(loop, "run_tasks", spy)
    seg = SegmentObjects("2024-04-01", mask_generator=OracleMaskGenerator(labels[0]))
    journal = tmp_path / "change.gpkg.geosam-journal"
    first = monitor_objects(scenes, segment=seg, journal=journal)
    assert Path(segment_journal(journal, dt.date(2024, 4, 1))).is_file()
    again = monitor_objects(scenes, segment=seg, journal=journal)
    (n, replayed, computed), (n2, replayed2, computed2) = ((c.total, c.replayed, c.computed) for c in calls)
    assert (replayed, computed) == (0, n) and (n2, replayed2, computed2) == (n, n, 0)
    np.testing.assert_array_equal(_means(again.wide), _means(first.wide))
    on_dask = monitor_objects(scenes, segment=seg, scheduler=dask_client)
    np.testing.assert_array_equal(_means(on_dask.wide), _means(first.wide))
    assert on_dask.wide.geometry.area.sort_values().round(3).tolist() == \
        first.wide.geometry.area.sort_values().round(3).tolist()
