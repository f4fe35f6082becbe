"""``skip_bad_chips``: objects touching an unreadable chip are marked, the chips' footprints are kept.

The unreadable chip is injected (``Scene.read_window`` raising for one window), so
the same scene also gives the clean run to compare with, through the oracle generator.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner
from shapely.geometry import box

import geosam
from geosam.errors import InvalidRasterError
from geosam.read.scene import Scene
from geosam.testing import OracleMaskGenerator
from geosam.write.failed_chips import sidecar_path
from geosam.write.vector import write_vector
from tests.data.make_scenes import make_oracle_scene

KW = {"chip_size_px": 128, "overlap_px": 16, "progress": False}
BAD_ORIGIN = (112, 112)  # (col_off, row_off) of the chip that cannot be read: row 1, column 1


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    return make_oracle_scene(tmp_path_factory.mktemp("failed"), width=360, height=360, n_objects=25, seed=5)


@pytest.fixture(scope="module")
def clean(files) -> gpd.GeoDataFrame:
    """The run without a failed chip."""
    return geosam.segment_scene(files.image_path, OracleMaskGenerator(files.label_path), **KW)


@pytest.fixture
def bad_chip(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Scene.read_window

    def flaky(self, window, out_shape=None):
        if out_shape is None and (window.col_off, window.row_off) == BAD_ORIGIN:
            raise InvalidRasterError(f"{self.path}: cannot read window {window} (TIFFReadEncodedTile failed)")
        return real(self, window, out_shape)

    monkeypatch.setattr(Scene, "read_window", flaky)


def test_objects_touching_a_failed_chip_are_incomplete(files, clean, bad_chip, tmp_path: Path) -> None:
    oracle = OracleMaskGenerator(files.label_path)
    assert "complete" not in clean.columns  # the column exists only when a chip failed
    gdf = geosam.segment_scene(files.image_path, oracle, skip_bad_chips=True, **KW)

    stats = gdf.attrs["geosam"]
    [entry] = stats["chips_failed"]
    assert entry["window"]["col_off"] == BAD_ORIGIN[0] and entry["window"]["row_off"] == BAD_ORIGIN[1]
    w = entry["window"]
    with Scene(files.image_path) as sc:
        t = sc.info.transform
    x0, y1 = t * (w["col_off"], w["row_off"])
    x1, y0 = t * (w["col_off"] + w["width"], w["row_off"] + w["height"])
    assert entry["bounds"] == pytest.approx([x0, y0, x1, y1])
    assert "TIFFReadEncodedTile" in entry["error"]

    footprint = box(*entry["bounds"])
    touching = gdf.geometry.intersects(footprint).to_numpy()
    assert gdf["complete"].dtype == bool
    assert (gdf["complete"].to_numpy() == ~touching).all()
    assert touching.any() and (~touching).any()
    # every complete object is exactly an object of the clean run
    clean_wkb = {g.normalize().wkb for g in clean.geometry}
    assert all(g.normalize().wkb in clean_wkb for g in gdf.geometry[gdf["complete"]])

    # the footprints travel with the written output; a clean run over it removes them
    out = tmp_path / "objects.gpkg"
    write_vector(gdf, out)
    assert bool(gpd.read_file(out)["complete"].all()) is False
    side = gpd.read_file(sidecar_path(out))
    assert list(side["chip_id"]) == [entry["chip_id"]]
    assert side.crs == gdf.crs
    assert list(side.total_bounds) == pytest.approx(entry["bounds"])
    assert list(side["col_off"]) == [BAD_ORIGIN[0]]
    write_vector(clean, out)
    assert not sidecar_path(out).exists()


def test_cli_reports_failed_chips_and_writes_their_footprints(files, bad_chip, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import geosam.modes.everything
    from geosam.cli.main import cli

    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", lambda cfg: OracleMaskGenerator(files.label_path))
    out = tmp_path / "o.geojson"
    args = ["segment", str(files.image_path), "-o", str(out), "--chip-size", "128", "--overlap", "16",
            "--no-progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "TIFFReadEncodedTile" in res.output and not out.exists()
    res = CliRunner().invoke(cli, [*args, "--skip-bad-chips"])
    assert res.exit_code == 0, res.output
    assert "could not be read" in res.output and str(sidecar_path(out)) in res.output
    assert sidecar_path(out).exists()
    assert "complete" in gpd.read_file(out).columns
