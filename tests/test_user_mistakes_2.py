"""The second round of user mistakes (issue 19): each case ends with the right result or one clear line.

Every case runs on small generated scenes with a model-free mask generator (the oracle, masks from a
label raster) and checks: no traceback (a ``SystemExit`` with the expected code), the culprit named,
mistakes in the settings found before any model loads, and no input changed (sha256 of every file
in the case's folder before and after).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from rasterio.transform import from_origin
from shapely.geometry import box

import geosam.models
import geosam.models.registry
import geosam.modes.everything
import geosam.segment.everything
from geosam.cli.main import cli
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene

CRS = "EPSG:32633"
ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128 px scene, its labels and an earlier output."""
    d = tmp_path_factory.mktemp("mistakes2")
    files = make_oracle_scene(d, crs=CRS, width=128, height=128, n_objects=6, seed=3, name="scene")
    files.image_path.rename(d / "scene.tif")
    files.label_path.rename(d / "labels.tif")
    gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)], crs=CRS).to_file(d / "old.gpkg")
    return d


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch, case: Path) -> Path:
    """Segment-everything runs use the oracle (masks from the case's labels.tif)."""
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator",
                        lambda cfg: OracleMaskGenerator(case / "labels.tif"))
    return case / "labels.tif"


def invoke(folder: Path, args: list[str], *, changes: tuple[str, ...] = ()) -> Result:
    """Run the CLI; no file in ``folder`` changes except those named in ``changes`` (which may appear)."""
    before = snapshot(folder)
    res = CliRunner().invoke(cli, [a.format(d=folder) for a in args])
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before | {
        k: after[k] for k in changes if k in after and k in before}, res.output
    assert set(after) - set(before) <= set(changes), (set(after) - set(before), res.output)
    return res


def assert_exit(res: Result, code: int, *culprits: str) -> None:
    """No traceback, exit ``code``, every culprit named in the output."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, res.output
    for c in culprits:
        assert c in res.output, (c, res.output)


SEG = ["segment", "{d}/scene.tif", "-o", "{d}/out.gpkg", "--no-progress", "--chip-size", "64", "--overlap", "0"]


# ---------------------------------------------------------------------------
# 1. a write cut short (full disk) keeps the earlier file and fails


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import geopandas as gpd, numpy as np
    from shapely.geometry import box
    from geosam.errors import ExportError
    from geosam.write.label_raster import write_label_raster
    d = sys.argv[1]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1990, (3000, 2))
    gdf = gpd.GeoDataFrame({"id": np.arange(1, 3001)}, geometry=[box(x, y, x + 5, y + 5) for x, y in xy],
                           crs="EPSG:32633")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # writes past 20 kB fail, as on a full disk
    try:
        write_label_raster(gdf, d + "/labels_out.tif", like_path=d + "/like.tif")
    except ExportError as exc:
        print("ExportError:", exc)
        sys.exit(1)
""")


def test_label_raster_write_cut_short_keeps_the_old_file(tmp_path: Path) -> None:
    prof = {"driver": "GTiff", "width": 2000, "height": 2000, "count": 1, "dtype": "uint8", "crs": CRS,
            "transform": from_origin(0, 2000, 1, 1)}
    with rasterio.open(tmp_path / "like.tif", "w", **prof) as dst:
        dst.write(np.zeros((1, 2000, 2000), np.uint8))
    old = b"an earlier label raster" * 100
    (tmp_path / "labels_out.tif").write_bytes(old)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "labels_out.tif" in res.stdout and "the earlier file" in res.stdout
    assert (tmp_path / "labels_out.tif").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels_out.tif", "like.tif"]  # no temporary left


_FULL_DISK_VECTORS = textwrap.dedent("""
    import os, resource, signal, sys
    import geopandas as gpd, numpy as np
    from shapely.geometry import box
    from geosam.errors import ExportError
    from geosam.write.vector import write_vector
    d = sys.argv[1]
    rng = np.random.default_rng(0)
    gdf = gpd.GeoDataFrame({"id": np.arange(1, 5001)},
                           geometry=[box(x, y, x + 5, y + 5) for x, y in rng.uniform(0, 1990, (5000, 2))],
                           crs="EPSG:32633")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))
    for ext in (".gpkg", ".geojson", ".parquet", ".shp"):
        try:
            write_vector(gdf, d + "/out" + ext, overwrite=True)
            print(ext, "written")
        except ExportError as exc:
            print(ext, "ExportError", str(exc)[:80].replace(chr(10), " "))
""")


def test_vector_write_cut_short_keeps_the_old_files(tmp_path: Path) -> None:
    old = {ext: f"an earlier {ext} output".encode() * 50 for ext in (".gpkg", ".geojson", ".parquet", ".shp")}
    for ext, data in old.items():
        (tmp_path / f"out{ext}").write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _FULL_DISK_VECTORS, str(tmp_path)], check=False, capture_output=True,
                         text=True, env=env, timeout=120)
    lines = res.stdout.splitlines()
    assert len(lines) == 4 and all("ExportError" in ln for ln in lines), res.stdout + res.stderr
    for ext, data in old.items():
        assert (tmp_path / f"out{ext}").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"out{ext}" for ext in old)


# ---------------------------------------------------------------------------
# 2. nodata: per dataset (GDAL's dataset mask), not per band


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = CRS, transform: Any = None, **kw: Any) -> Path:
    """A GeoTIFF of ``data`` (bands, H, W) with 1 m pixels (or ``transform``)."""
    prof = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
            "dtype": data.dtype.name, "crs": crs, "transform": transform or from_origin(500000, 5300000, 1, 1), **kw}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def test_nodata_in_one_band_does_not_invalidate_the_pixel(tmp_path: Path) -> None:
    from geosam.read.scene import Scene
    from geosam.windows import PixelWindow

    data = np.full((3, 32, 32), 120, np.uint8)
    data[0, :, :16] = 0  # band 1 is 0 (the nodata value) on the left half only
    data[:, :4, :4] = 0  # every band nodata: invalid
    path = write_tif(tmp_path / "s.tif", data, nodata=0)
    with rasterio.open(path) as ds:
        gdal_valid = ds.dataset_mask() != 0
    with Scene(path) as sc:
        _, valid = sc.read_window(PixelWindow(0, 0, 32, 32))
        _, valid_small = sc.read_window(PixelWindow(0, 0, 32, 32), out_shape=(16, 16))
        _, bands_valid = sc.read_bands([1, 2], PixelWindow(0, 0, 32, 32))
    assert np.array_equal(valid, gdal_valid)
    assert valid[:, 4:16].all() and not valid[:4, :4].any()
    assert np.array_equal(bands_valid, gdal_valid)
    assert valid_small.shape == (16, 16) and not valid_small[:2, :2].any() and valid_small[2:, 2:].all()


def test_alpha_band_masks_the_pixel(tmp_path: Path) -> None:
    from geosam.read.scene import Scene
    from geosam.windows import PixelWindow

    data = np.full((4, 16, 16), 90, np.uint8)
    data[3] = 255
    data[3, 8:, :] = 0  # transparent lower half
    path = write_tif(tmp_path / "a.tif", data, photometric="RGB", alpha="YES")
    with Scene(path) as sc:
        _, valid = sc.read_window(PixelWindow(0, 0, 16, 16))
    assert valid[:8].all() and not valid[8:].any()


# ---------------------------------------------------------------------------
# 3. concurrent runs, journals and changed weights

_HOLD = textwrap.dedent("""
    import sys, time
    from geosam.write.lock import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding the run lock of ``path`` (as a running geosam run does)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_on_a_busy_output_is_refused(case: Path, model_loads: list[str]) -> None:
    proc = hold_lock(case / "out.gpkg")
    try:
        lock = {p.name for p in case.iterdir()} - {"scene.tif", "labels.tif", "old.gpkg"}
        res = invoke(case, SEG, changes=tuple(lock))
        assert_exit(res, 1, "out.gpkg", "in use by another geosam run", str(proc.pid))
        res = invoke(case, [*SEG[:3], "{d}/other.gpkg", *SEG[4:], "--label-raster", "{d}/out.gpkg"],
                     changes=tuple(lock))
        assert_exit(res, 1, "out.gpkg", "in use")
    finally:
        proc.kill()
        proc.wait()
    assert model_loads == []


def test_lock_is_released_and_removed_after_a_run(case: Path, oracle: Path) -> None:
    res = invoke(case, SEG, changes=("out.gpkg",))
    assert_exit(res, 0)
    assert sorted(p.name for p in case.iterdir()) == ["labels.tif", "old.gpkg", "out.gpkg", "scene.tif"]
    res = invoke(case, SEG)  # finished: the output exists, so the next run needs --overwrite
    assert_exit(res, 1, "out.gpkg", "--overwrite")


def test_journal_in_use_is_refused(case: Path) -> None:
    from geosam.errors import ExportError
    from geosam.run.journal import Journal

    journal = case / "run.geosam-journal"
    proc = hold_lock(journal)
    try:
        with pytest.raises(ExportError, match="run.geosam-journal is in use by another geosam run"):
            Journal(journal, {"scene": {}, "settings": {}})
    finally:
        proc.kill()
        proc.wait()
    with Journal(journal, {"scene": {}, "settings": {}}) as jr:
        assert len(jr) == 0


def test_resume_after_the_weights_changed_is_refused(case: Path, oracle: Path) -> None:
    model = case / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "sam"}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x00" * 300_000)
    args = [*SEG, "--model", str(model), "--resume", "--keep-journal", "--overwrite"]
    assert_exit(CliRunner().invoke(cli, [a.format(d=case) for a in args]), 0)
    res = CliRunner().invoke(cli, [a.format(d=case) for a in args])
    assert_exit(res, 0, "resumed: 4 chips taken from the journal")  # same weights: replayed
    st = weights.stat()
    with open(weights, "r+b") as f:  # other weights, same size and mtime (as `cp -p` leaves them)
        f.seek(-100, os.SEEK_END)
        f.write(b"\x01" * 100)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = invoke(case, args)
    assert_exit(res, 1, "out.gpkg.geosam-journal", "weights changed")


# ---------------------------------------------------------------------------
# 4. options that cannot be right: refused before any model (or made right)

#: (id, args, exit code, strings the message must contain)
EARLY_CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("output-and-output-dir", [*SEG, "--output-dir", "{d}/dir"], 2, ["-o/--output", "--output-dir", "not both"]),
    ("same-band-two-roles", [*SEG, "--band-roles", "red=3,nir=3", "--indices", "ndvi"], 1,
     ["band 3", "red", "nir", "ndvi"]),
    ("fill-value-outside-dtype", [*SEG, "--fill-value", "300"], 1, ["scene.tif", "300", "uint8"]),
    ("unknown-format", ["segment", "{d}/scene.tif", "--output-dir", "{d}/dir", "--format", "xyz"], 2,
     ["--format .xyz", ".gpkg"]),
    ("format-against-extension", [*SEG, "--format", "geojson"], 2, ["--format .geojson", "out.gpkg"]),
    ("workers-0", [*SEG, "--scheduler", "local", "--workers", "0"], 1, ["--workers", "0"]),
    ("points-per-side-above-pixels", [*SEG, "--points-per-side", "1000"], 1,
     ["scene.tif", "points_per_side=1000", "1000000 prompts", "64 px", "more prompts than pixels"]),
    ("crop-n-layers-5", [*SEG, "--crop-n-layers", "5"], 1, ["crop_n_layers=5", "1365"]),
]


@pytest.mark.parametrize(("args", "code", "culprits"), [c[1:] for c in EARLY_CASES], ids=[c[0] for c in EARLY_CASES])
def test_settings_mistakes_found_before_any_model(case: Path, model_loads: list[str], args: list[str], code: int,
                                                  culprits: list[str]) -> None:
    res = invoke(case, args)
    assert_exit(res, code, *culprits)
    assert "Traceback" not in res.output
    assert model_loads == []


def test_format_without_dot_and_output_starting_with_dash(case: Path, oracle: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    res = invoke(case, ["segment", "{d}/scene.tif", "--output-dir", "{d}/dir", "--format", "gpkg", "--no-progress",
                        "--chip-size", "64", "--overlap", "0"], changes=("dir/scene.gpkg",))
    assert_exit(res, 0)
    n = len(gpd.read_file(case / "dir" / "scene.gpkg"))
    assert n > 0
    monkeypatch.chdir(case)
    res = invoke(case, ["segment", "scene.tif", "-o", "-out.gpkg", "--no-progress", "--chip-size", "64",
                        "--overlap", "0"], changes=("-out.gpkg",))
    assert_exit(res, 0, "-out.gpkg")
    assert len(gpd.read_file(case / "-out.gpkg")) == n


def test_plan_and_estimate_are_printed(case: Path, oracle: Path) -> None:
    res = invoke(case, SEG, changes=("out.gpkg",))
    assert_exit(res, 0, "scene.tif: 4 chips of up to 64 px", "first 3 of 4 chips took", "for the other 1")


def test_every_chip_unreadable_is_a_failure(case: Path, oracle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geosam.errors import InvalidRasterError
    from geosam.read.scene import Scene

    def broken(self: Scene, spec: Any, timings: Any = None) -> Any:
        raise InvalidRasterError(f"{self.path}: cannot read window {spec.window} (TIFFReadEncodedTile() failed)")

    monkeypatch.setattr(Scene, "read_chip", broken)
    res = invoke(case, [*SEG, "--skip-bad-chips"])
    assert_exit(res, 1, "scene.tif", "none of its 4 chips could be read", "nothing was written")


# ---------------------------------------------------------------------------
# prompt files: ids, CSV tables

PROMPT = ["prompt", "{d}/scene.tif", "-o", "{d}/out.gpkg", "--no-progress"]


@pytest.fixture
def prompt_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_user_mistakes import oracle_bundle

    bundle = oracle_bundle()
    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: bundle)


def centre_points(folder: Path, n: int) -> list[tuple[float, float]]:
    with rasterio.open(folder / "scene.tif") as ds:
        return [tuple(ds.transform * (20 + 30 * k, 64)) for k in range(n)]  # type: ignore[misc]


@pytest.mark.parametrize(("ids", "culprits"), [
    ([1.0, float("nan"), 3.0], ["'id'", "row(s) 1"]),
    (["a", None, "c"], ["'id'", "row(s) 1"]),
])
def test_missing_prompt_ids_refused_up_front(case: Path, model_loads: list[str], ids: list[Any],
                                             culprits: list[str]) -> None:
    from shapely.geometry import Point

    pts = [Point(p) for p in centre_points(case, 3)]
    gpd.GeoDataFrame({"id": ids}, geometry=pts, crs=CRS).to_file(case / "p.gpkg")
    res = invoke(case, [*PROMPT, "--prompts", "{d}/p.gpkg"])
    assert_exit(res, 1, "p.gpkg", *culprits)
    assert model_loads == []


def test_unknown_id_column_refused(case: Path, model_loads: list[str]) -> None:
    from shapely.geometry import Point

    gpd.GeoDataFrame({"id": [1]}, geometry=[Point(centre_points(case, 1)[0])], crs=CRS).to_file(case / "p.gpkg")
    res = invoke(case, [*PROMPT, "--prompts", "{d}/p.gpkg", "--id-column", "nope"])
    assert_exit(res, 1, "id_column='nope'", "columns")
    assert model_loads == []


def test_csv_of_points_as_prompts(case: Path, prompt_oracle: None) -> None:
    pts = centre_points(case, 2)
    (case / "p.csv").write_text("id,x,y\n" + "".join(f"{10 + k},{x},{y}\n" for k, (x, y) in enumerate(pts)))
    res = invoke(case, [*PROMPT, "--prompts", "{d}/p.csv", "--prompt-crs", CRS], changes=("out.gpkg",))
    assert_exit(res, 0, "2 prompts")
    got = gpd.read_file(case / "out.gpkg")
    assert sorted(got["prompt_id"]) == [10, 11]
    assert set(got["status"]) <= {"ok", "empty"}  # decoded at the points, inside the scene


def test_csv_without_coordinates_is_one_clear_line(case: Path, model_loads: list[str]) -> None:
    (case / "p.csv").write_text("id,a,b\n1,2,3\n")
    res = invoke(case, [*PROMPT, "--prompts", "{d}/p.csv"])
    assert_exit(res, 1, "p.csv", "no coordinate columns", "id, a, b", "x,y")
    assert model_loads == []


# ---------------------------------------------------------------------------
# 5. scenes that would be misread


def test_one_pixel_scene_is_refused_before_the_model(tmp_path: Path, model_loads: list[str]) -> None:
    write_tif(tmp_path / "one.tif", np.full((3, 1, 1), 100, np.uint8))
    res = invoke(tmp_path, ["segment", "{d}/one.tif", "-o", "{d}/out.gpkg", "--no-progress"])
    assert_exit(res, 1, "one.tif", "points_per_side=32", "1 px per side", "smaller than one chip")
    assert model_loads == []


def test_complex_data_is_refused(tmp_path: Path, model_loads: list[str]) -> None:
    write_tif(tmp_path / "c.tif", (np.ones((1, 16, 16)) * (1 + 2j)).astype(np.complex64))
    res = invoke(tmp_path, ["segment", "{d}/c.tif", "-o", "{d}/out.gpkg", "--no-progress"])
    assert_exit(res, 1, "c.tif", "complex data (complex64)", "amplitude")
    assert model_loads == []


def test_palette_scene_is_refused_unless_bands_are_chosen(tmp_path: Path, model_loads: list[str]) -> None:
    path = write_tif(tmp_path / "p.tif", np.arange(256, dtype=np.uint8).reshape(1, 16, 16), photometric="palette")
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {k: (k, 255 - k, 0, 255) for k in range(256)})
    res = invoke(tmp_path, ["segment", "{d}/p.tif", "-o", "{d}/out.gpkg", "--no-progress"])
    assert_exit(res, 1, "p.tif", "palette", "gdal_translate -expand rgb", "--bands 1")
    assert model_loads == []
    from geosam.config import ReadConfig
    from geosam.read.scene import Scene

    with Scene(path, read=ReadConfig(bands=(1,))) as sc:
        assert sc.bands == (1,)  # chosen explicitly: read as grey


def test_gcp_only_scene_names_the_gcp_crs(tmp_path: Path, model_loads: list[str]) -> None:
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS as RioCRS

    path = write_tif(tmp_path / "g.tif", np.full((3, 16, 16), 50, np.uint8), crs=None,
                     transform=rasterio.Affine.identity())
    gcps = [GroundControlPoint(row=r, col=c, x=500000 + c, y=5300000 - r) for r, c in ((0, 0), (0, 16), (16, 0))]
    with rasterio.open(path, "r+") as ds:
        ds.gcps = (gcps, RioCRS.from_string(CRS))
    res = invoke(tmp_path, ["segment", "{d}/g.tif", "-o", "{d}/out.gpkg", "--no-progress"])
    assert_exit(res, 1, "g.tif", "3 ground control points in EPSG:32633", "gdalwarp -t_srs EPSG:32633")
    assert model_loads == []


@pytest.mark.parametrize(("crs", "x", "y"), [
    ("EPSG:3413", 500_000.0, -2_000_000.0),  # polar stereographic north: map area 0.7 % below the true area
    ("EPSG:3031", 100_000.0, 200_000.0),  # polar stereographic south
    ("EPSG:3857", 1_000_000.0, 8_400_000.0),  # Web Mercator at 60 N: map area 4x the true area
    ("EPSG:32633", 166_500.0, 5_350_900.0),  # UTM at its zone's western edge (scale 1.001)
    ("EPSG:32633", 400_000.0, 5_350_900.0),  # inside the zone: the map-plane area holds
    ("EPSG:4326", 13.1, 48.3),
])
@pytest.mark.parametrize("side_m", [20.0, 30_000.0])
def test_area_m2_within_0_1_percent_of_geodesic(crs: str, x: float, y: float, side_m: float) -> None:
    import shapely
    from pyproj import CRS as PCRS
    from pyproj import Geod, Transformer

    from geosam.geo import area_m2

    side = side_m / 111_000 if crs == "EPSG:4326" else side_m
    g = box(x, y, x + side, y + side)
    pcrs = PCRS.from_user_input(crs)
    tr = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    fine = shapely.transform(shapely.segmentize(g, side / 500),
                             lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    truth = abs(Geod(ellps="WGS84").geometry_area_perimeter(fine)[0])
    assert area_m2([g], crs)[0] == pytest.approx(truth, rel=1e-3)


# ---------------------------------------------------------------------------
# 6. reprojection: valid, split at the antimeridian; prompts across it; --merge of many CRSs


def regrid(folder: Path, name: str, crs: str, transform: Any) -> tuple[Path, Path]:
    """The case's scene and labels again, placed by ``transform`` in ``crs`` (same pixels)."""
    out = []
    for src in ("scene.tif", "labels.tif"):
        with rasterio.open(folder / src) as ds:
            data, prof = ds.read(), ds.profile
        prof.update(crs=crs, transform=transform)
        path = folder / f"{Path(src).stem}_{name}.tif"
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
        out.append(path)
    return out[0], out[1]


RES_DEG = 1e-5
#: col 64 of the 128 px scene on longitude 180, at 60 N
ACROSS = ("EPSG:4326", from_origin(180.0 - 64 * RES_DEG, 60.0, RES_DEG, RES_DEG))
#: polar stereographic north, 10 km from the pole, on the antimeridian (EPSG:3413's lon0 is -45)
POLAR = ("EPSG:3413", from_origin(-7071.0 - 64, 7071.0 + 64, 1.0, 1.0))


def run_oracle(monkeypatch: pytest.MonkeyPatch, scene: Path, labels: Path, out: Path, *extra: str) -> Result:
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: OracleMaskGenerator(labels))
    return CliRunner().invoke(cli, ["segment", str(scene), "-o", str(out), "--no-progress", "--chip-size", "64",
                                    "--overlap", "0", *extra])


@pytest.mark.parametrize("place", [ACROSS, POLAR], ids=["antimeridian", "polar"])
@pytest.mark.parametrize("target", ["EPSG:4326", "EPSG:3857"])
def test_to_crs_valid_and_split_at_the_antimeridian(case: Path, monkeypatch: pytest.MonkeyPatch,
                                                     place: tuple[str, Any], target: str) -> None:
    import shapely

    from geosam.geo import area_m2

    scene, labels = regrid(case, "placed", *place)
    native = case / "native.gpkg"
    assert_exit(run_oracle(monkeypatch, scene, labels, native), 0)
    res = run_oracle(monkeypatch, scene, labels, case / "out.geojson", "--to-crs", target)
    assert_exit(res, 0)
    got, ref = gpd.read_file(case / "out.geojson"), gpd.read_file(native)
    assert len(got) == len(ref) > 0
    geoms = np.asarray(got.geometry.values)
    assert shapely.is_valid(geoms).all()
    if target == "EPSG:4326":  # RFC 7946: longitudes within -180..180
        b = shapely.bounds(geoms)
        assert (b[:, 0] >= -180).all() and (b[:, 2] <= 180).all()
    parts = shapely.get_parts(geoms)
    widths = shapely.bounds(parts)[:, 2] - shapely.bounds(parts)[:, 0]
    assert widths.max() < (90 if target == "EPSG:4326" else 1e7)  # no part spans the world (as they did)
    # every object keeps its true area (split parts together), within 0.5 %
    np.testing.assert_allclose(area_m2(list(geoms), target), ref["area_m2"], rtol=5e-3)
    if place is ACROSS:
        assert (shapely.get_num_geometries(geoms) > 1).any()  # objects on the antimeridian are split


def test_point_prompt_across_the_antimeridian_is_inside(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_user_mistakes import oracle_bundle

    scene, _ = regrid(case, "across", *ACROSS)
    bundle = oracle_bundle()
    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: bundle)
    lat = 60.0 - 64 * RES_DEG
    res = CliRunner().invoke(cli, ["prompt", str(scene), "-o", str(case / "p.gpkg"), "--no-progress",
                                   "--points", f"{-180 + 20 * RES_DEG},{lat};{180 - 20 * RES_DEG},{lat}",
                                   "--prompt-crs", "EPSG:4326"])
    assert_exit(res, 0)
    got = gpd.read_file(case / "p.gpkg")
    assert "outside" not in set(got["status"]), got[["prompt_id", "status"]]


def test_merge_of_many_crss_is_in_wgs84_with_a_short_warning(case: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shapely

    from geosam.modes.scenes import segment_scenes

    placed = {name: regrid(case, name, *where) for name, where in
              (("utm", (CRS, from_origin(500000, 5300000, 0.5, 0.5))), ("across", ACROSS), ("polar", POLAR))}
    by_scene = {str(s): lab for s, lab in placed.values()}
    with caplog.at_level("WARNING"):
        res = segment_scenes(list(by_scene), lambda scene: OracleMaskGenerator(by_scene[scene]), merge=True,
                             output=case / "merged.gpkg", chip_size_px=64, overlap_px=0, progress=False)
    assert res.ok
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "3 CRSs (EPSG:32633, EPSG:4326, EPSG:3413)" in text and "merged in EPSG:4326" in text
    assert "PROJCS" not in text and "PROJCRS" not in text and len(text) < 400
    got = gpd.read_file(case / "merged.gpkg")
    assert got.crs.to_epsg() == 4326 and shapely.is_valid(np.asarray(got.geometry.values)).all()
    for name, (scene, _) in placed.items():  # each scene's objects stay where the scene is
        with rasterio.open(scene) as ds:
            from rasterio.warp import transform_bounds

            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        part = got[got["scene"] == str(scene)]
        b = part.total_bounds
        assert len(part) > 0, name
        assert s - 1e-3 <= b[1] and b[3] <= n + 1e-3, name
        if name == "utm":
            assert w - 1e-3 <= b[0] and b[2] <= e + 1e-3
        else:  # on the antimeridian: every vertex near +-180, none far off
            lon = shapely.get_coordinates(np.asarray(part.geometry.values))[:, 0]
            assert (np.abs(lon) > 179).all(), name


# ---------------------------------------------------------------------------
# 7. raw tracebacks and noise


@pytest.mark.parametrize("command", ["segment", "prompt"])
def test_unreachable_scheduler_is_one_line_at_once(case: Path, model_loads: list[str], command: str) -> None:
    import time

    args = SEG if command == "segment" else [*PROMPT, "--points", "1,2"]
    t0 = time.perf_counter()
    res = invoke(case, [*args, "--scheduler", "tcp://127.0.0.1:1"])
    assert time.perf_counter() - t0 < 10
    assert_exit(res, 1, "cannot reach the Dask scheduler at tcp://127.0.0.1:1", "dask scheduler")
    assert model_loads == []


def test_library_warnings_do_not_leak_through_the_cli(case: Path, oracle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    generate = OracleMaskGenerator.generate

    def noisy(self: OracleMaskGenerator, chip: Any) -> Any:
        with np.errstate(divide="warn"):
            np.divide(np.ones(1), np.zeros(1))  # numpy's RuntimeWarning
        warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
        return generate(self, chip)

    def print_like_python(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                          line: str | None = None) -> None:  # what a plain python process does (pytest records)
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(OracleMaskGenerator, "generate", noisy)
    monkeypatch.setattr(warnings, "showwarning", print_like_python)
    monkeypatch.setattr(warnings, "filters", [])
    warnings.simplefilter("always")
    res = invoke(case, SEG, changes=("out.gpkg",))
    assert_exit(res, 0, "out.gpkg:")
    assert "RuntimeWarning" not in res.output and "UserWarning" not in res.output


_NO_GUARD = textwrap.dedent("""
    from geosam.modes.everything import segment_scene
    from geosam.testing import OracleMaskGenerator
    segment_scene("{d}/scene.tif", OracleMaskGenerator("{d}/labels.tif"), scheduler="local", n_workers=1,
                  chip_size_px=64, overlap_px=0, progress=False)
""")

_CLI_LOCAL = textwrap.dedent("""
    import geosam.modes.everything
    from geosam.cli.main import cli
    from geosam.testing import OracleMaskGenerator
    if __name__ == "__main__":
        geosam.modes.everything.make_mask_generator = lambda cfg: OracleMaskGenerator("{d}/labels.tif")
        cli.main(["segment", "{d}/scene.tif", "-o", "{d}/out.gpkg", "--no-progress", "--chip-size", "64",
                  "--overlap", "0", "--scheduler", "local", "--workers", "1"])
""")


def run_script(folder: Path, text: str) -> subprocess.CompletedProcess[str]:
    script = folder / "run.py"
    script.write_text(text.format(d=folder))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, env=env,
                          cwd=folder, timeout=240)


@pytest.mark.slow
def test_local_scheduler_in_a_script_without_main_guard(case: Path) -> None:
    res = run_script(case, _NO_GUARD)
    assert res.returncode != 0
    hint = 'put the code that runs geosam under `if __name__ == "__main__":`'
    assert res.stderr.count(hint) >= 1 and "geosam.errors.ConfigError" in res.stderr
    assert len(res.stderr.splitlines()) < 40, res.stderr  # not Dask's 228 lines


@pytest.mark.slow
def test_local_scheduler_from_the_cli_is_quiet(case: Path) -> None:
    res = run_script(case, _CLI_LOCAL)
    assert res.returncode == 0, res.stderr
    noise = [ln for ln in (res.stdout + res.stderr).splitlines() if "distributed" in ln or "Warning" in ln]
    assert noise == [], noise
    assert "out.gpkg: " in res.stdout and len(gpd.read_file(case / "out.gpkg")) > 0
