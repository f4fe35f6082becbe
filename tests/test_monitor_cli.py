"""``geosam monitor`` end to end, and bad input refused before any pixel is read, naming the culprit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT / "data" / "ftw_sentinel2_rgbn_2dates.tif"
STACK = ["--stack", "2021-06-01:red=1,green=2,blue=3,nir=4", "--stack", "2021-09-01:red=5,green=6,blue=7,nir=8"]


@pytest.fixture()
def fields(tmp_path):
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(S2) as src:
        b, crs = src.bounds, src.crs
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(b.left, b.right - 300, 30), rng.uniform(b.bottom, b.top - 300, 30)
    gdf = gpd.GeoDataFrame({"name": [f"f{k}" for k in range(30)]},
                           geometry=[box(x, y, x + 250, y + 200) for x, y in zip(xs, ys)], crs=crs)
    p = tmp_path / "fields.gpkg"
    gdf.to_file(p)
    return p


def _run(args):
    from geosam.cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".shp", ".parquet"])
def test_cli_end_to_end(tmp_path, fields, ext):
    import geopandas as gpd
    import pandas as pd

    from geosam.write.vector import read_vector

    out, long = tmp_path / f"change{ext}", tmp_path / "long.csv"
    r = _run(["monitor", str(S2), *STACK, "--objects", str(fields), "--index", "ndvi,ndwi", "-o", str(out),
              "--long", str(long), "--loss", "ndvi:-0.2", "--rank-by", "ndvi_delta", "--ascending"])
    assert r.exit_code == 0, r.output
    w = read_vector(out)
    assert len(w) == 30 and w.crs == gpd.read_file(fields).crs
    cols = set(w.columns)
    if ext != ".shp":  # Shapefile names are cut to 10 characters
        assert {"name", "ndvi_mean_2021-06-01", "ndvi_mean_2021-09-01", "ndwi_delta", "ndvi_loss", "rank",
                "status_2021-09-01"} <= cols
        assert w["rank"].tolist() == list(range(1, 31))
    lt = pd.read_csv(long)
    assert len(lt) == 60 and set(lt["date"]) == {"2021-06-01", "2021-09-01"}
    assert {"object_id", "n_pixels", "n_valid", "valid_fraction", "ndvi_median", "ndwi_frac_above", "status"} <= \
        set(lt.columns)


def test_long_table_formats(tmp_path, fields):
    import geopandas as gpd
    import pandas as pd

    for name in ("long.parquet", "long.geoparquet"):
        r = _run(["monitor", str(S2), *STACK, "--objects", str(fields), "--long", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    assert "geometry" not in pd.read_parquet(tmp_path / "long.parquet").columns
    assert len(gpd.read_parquet(tmp_path / "long.geoparquet")) == 60
    assert not list(tmp_path.glob(".*"))  # no temporary left


def _error(args):
    from geosam.cli.main import cli

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    return r.output


@pytest.mark.filterwarnings("ignore:.crs. was not provided")
def test_bad_inputs(tmp_path, fields):
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(S2) as src:
        prof, data = src.profile | {"count": 4}, src.read([1, 2, 3, 4])
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    for p in (a, b):
        with rasterio.open(p, "w", **prof) as dst:
            dst.write(data)
    o = str(tmp_path / "o.gpkg")
    base = ["--objects", str(fields), "-o", o, "--band-roles", "red=1,green=2,blue=3,nir=4"]
    assert "a.tif: no date found" in _error(["monitor", str(a), str(b), *base])
    assert "'2024-13-45'" in _error(["monitor", str(a), str(b), "--dates", "2024-01-01,2024-13-45", *base])
    msg = _error(["monitor", str(a), str(b), "--dates", "2024-01-01,2024-01-01", *base])
    assert "2024-01-01 is given twice" in msg and "a.tif" in msg and "b.tif" in msg
    msg = _error(["monitor", str(a), str(b), "--dates", "2024-01-01,2024-06-01", *base, "--index", "ndmi"])
    assert "swir1" in msg and "a.tif" in msg
    far = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32633")
    far.to_file(tmp_path / "far.gpkg")
    msg = _error(["monitor", str(a), str(b), "--dates", "2024-01-01,2024-06-01", *base[2:],
                  "--objects", str(tmp_path / "far.gpkg")])
    assert "does not overlap the objects" in msg and "a.tif" in msg
    nocrs = gpd.read_file(fields).set_crs(None, allow_override=True)
    nocrs.to_file(tmp_path / "nocrs.gpkg")
    msg = _error(["monitor", str(a), "--dates", "2024-01-01", *base[2:], "--objects", str(tmp_path / "nocrs.gpkg")])
    assert "nocrs.gpkg" in msg and "no CRS" in msg
    assert "*.jp2: no date scene matches this pattern" in _error(["monitor", str(tmp_path / "*.jp2"), *base])
    assert "cannot rank by" in _error(["monitor", str(S2), *STACK, *base[:4], "--rank-by", "ndvi_mean"])
    assert not Path(o).exists()


def test_python_function_is_exported():
    import geosam

    assert "monitor_objects" in geosam.__all__
    from geosam.monitor.series import monitor_objects

    assert geosam.monitor_objects is monitor_objects


def test_cli_tracks_when_each_date_has_its_objects(tmp_path, fields):
    import geopandas as gpd

    later = gpd.read_file(fields).iloc[5:]  # five fields gone at the later date
    later.to_file(tmp_path / "later.gpkg")
    out = tmp_path / "tracks.parquet"
    r = _run(["monitor", str(S2), *STACK, "--objects", str(fields), "--objects", str(tmp_path / "later.gpkg"),
              "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "tracks" in r.output
    w = gpd.read_parquet(out)
    assert len(w) == 30 and (w["status_2021-09-01"] == "absent").sum() == 5


def test_outputs_are_never_inputs_and_existing_ones_need_overwrite(tmp_path, fields):
    """An output on the objects file or a date's raster is refused before any work (Python and CLI), leaving the
    input untouched; an existing output is replaced only with --overwrite, as every geosam command."""
    import hashlib

    from geosam.errors import ExportError
    from geosam.monitor.series import monitor_objects

    digest = hashlib.sha256(fields.read_bytes()).hexdigest()
    base = ["monitor", str(S2), *STACK, "--objects", str(fields)]
    for target in (["-o", str(fields)], ["--long", str(S2)]):
        r = _run([*base, *target])  # an existing file: refused without --overwrite
        assert r.exit_code == 1 and "--overwrite" in r.output, r.output
        r = _run([*base, *target, "--overwrite"])  # and as an input with it
        assert r.exit_code == 1 and Path(target[1]).name in r.output and "input" in r.output, r.output
    with pytest.raises(ExportError, match="fields.gpkg"):
        monitor_objects(str(S2), str(fields), stack={"2021-06-01": {"red": 1, "nir": 4}}, output=fields)
    assert hashlib.sha256(fields.read_bytes()).hexdigest() == digest
    out = tmp_path / "change.gpkg"
    assert _run([*base, "-o", str(out)]).exit_code == 0
    r = _run([*base, "-o", str(out)])
    assert r.exit_code == 1 and "--overwrite" in r.output and "change.gpkg" in r.output
    assert _run([*base, "-o", str(out), "--overwrite"]).exit_code == 0
