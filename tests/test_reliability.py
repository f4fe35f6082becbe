"""Nothing lost, nothing silently wrong (issue 11): sidecar files, scoped GDAL environments,
outputs that never destroy inputs or earlier outputs, block checks, clear read errors, a fuzz test.

Every test that writes checks that its inputs are unchanged (sha256 before and after).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

from geosam.cli.main import cli
from geosam.errors import ExportError, GeosamError, InvalidRasterError
from geosam.read.scene import ReadConfig, Scene, check_blocks, gdal_env
from geosam.windows import PixelWindow
from geosam.write.label_raster import write_label_raster
from geosam.write.paths import TMP_SUFFIX, atomic_output, check_outputs
from geosam.write.vector import write_vector

ROOT = Path(__file__).resolve().parents[1]
CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 359_600.0, 0.0, -0.5, 5_350_900.0)


# -- helpers -----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checksums(*paths: Path) -> dict[str, str]:
    """sha256 of every file under the given files or folders."""
    out = {}
    for p in map(Path, paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = sha256(f)
    return out


def write_tiled(path: Path, *, dtype: str = "uint16", size: int = 512, block: int = 128, seed: int = 0,
                count: int = 3, **kw) -> Path:
    """A tiled, deflate-compressed, pixel-interleaved GeoTIFF of random values."""
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == "uint8" else 4000
    data = rng.integers(1, hi, (count, size, size)).astype(dtype)
    prof = dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype, crs=CRS, transform=TRANSFORM,
                tiled=True, blockxsize=block, blockysize=block, compress="deflate", interleave="pixel", **kw)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return path


def corrupt_block(path: Path, col: int, row: int) -> None:
    """Overwrite the compressed bytes of tile (col, row) with zeros: GDAL cannot decode it."""
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\0" * size)


def polygons(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2)) + (TRANSFORM.c, TRANSFORM.f - 250)
    geoms = shapely.buffer(shapely.points(xy), rng.uniform(1, 5, n), quad_segs=4)
    return gpd.GeoDataFrame({"id": np.arange(1, n + 1), "score": rng.uniform(0, 1, n)}, geometry=geoms, crs=CRS)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_SUFFIX in p.name)


# -- 1. sidecar files and scoped environments -------------------------------------------------------


def test_external_mask_is_read_like_rasterio(tmp_path: Path) -> None:
    p = write_tiled(tmp_path / "m.tif", dtype="uint8", size=256)
    mask = np.full((256, 256), 255, dtype=np.uint8)
    mask[:32, :32] = 0  # 1024 invalid pixels
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(p, "r+") as ds:
        ds.write_mask(mask)
    assert (tmp_path / "m.tif.msk").exists()
    before = checksums(tmp_path)
    with rasterio.open(p) as ds:
        expected = int((ds.read_masks(1) == 0).sum())
    assert expected == 1024
    with Scene(p) as sc:
        _, valid = sc.read_window(PixelWindow(0, 0, 256, 256))
    assert int((~valid).sum()) == expected
    with Scene(p, ReadConfig(remote=True)) as sc:  # the opt-in for remote data skips sidecars
        assert sc.read_window(PixelWindow(0, 0, 256, 256))[1].all()
    assert checksums(tmp_path) == before


def test_aux_xml_nodata_scale_offset_description_are_read(tmp_path: Path) -> None:
    p = write_tiled(tmp_path / "a.tif", size=256, count=1)
    with rasterio.open(p, "r+") as ds:
        ds.write(np.zeros((1, 16, 16), dtype="uint16"), window=rasterio.windows.Window(0, 0, 16, 16))
    (tmp_path / "a.tif.aux.xml").write_text(
        "<PAMDataset><PAMRasterBand band=\"1\"><Description>nir</Description><NoDataValue>0</NoDataValue>"
        "<Offset>-0.1</Offset><Scale>0.0001</Scale></PAMRasterBand></PAMDataset>"
    )
    before = checksums(tmp_path)
    with rasterio.open(p) as ds:
        plain = (ds.nodata, ds.descriptions, ds.scales, ds.offsets, int((ds.read_masks(1) == 0).sum()))
    assert plain == (0.0, ("nir",), (0.0001,), (-0.1,), 256)
    with Scene(p) as sc:
        ours = (sc.info.nodata, sc.info.descriptions, sc.ds.scales, sc.ds.offsets)
        invalid = int((~sc.read_window(PixelWindow(0, 0, 256, 256))[1]).sum())
    assert (*ours, invalid) == plain
    assert checksums(tmp_path) == before


def test_external_overviews_are_used(tmp_path: Path) -> None:
    p = write_tiled(tmp_path / "o.tif", size=512)
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(p, "r+") as ds:  # external overviews: o.tif.ovr
        ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    assert (tmp_path / "o.tif.ovr").exists()
    before = checksums(tmp_path)
    with rasterio.open(p) as ds:
        assert ds.overviews(1) == [2, 4]
        sample = ds.read(out_shape=(3, 128, 128))  # served from the averaged overview
    expected = np.percentile(sample.reshape(3, -1).astype(np.float64), [2.0, 98.0], axis=1).T
    with Scene(p, ReadConfig(overview_max_px=128)) as sc:
        assert sc.ds.overviews(1) == [2, 4]
        np.testing.assert_allclose(sc.stretch, expected)
    with Scene(p, ReadConfig(overview_max_px=128, remote=True)) as sc:  # no .ovr: decimated full-resolution
        assert sc.ds.overviews(1) == []
        assert not np.allclose(sc.stretch, expected)
    assert checksums(tmp_path) == before


def test_scenes_close_in_any_order(tmp_path: Path) -> None:
    a = write_tiled(tmp_path / "a.tif", size=256)
    b = write_tiled(tmp_path / "b.tif", size=256, seed=1)
    sa, sb = Scene(a), Scene(b)
    sa.close()  # used to raise rasterio's EnvError (an Env held for the Scene's life)
    assert sb.read_window(PixelWindow(0, 0, 8, 8))[0].shape == (3, 8, 8)
    sb.close()
    assert not rasterio.env.hasenv()


def test_empty_dir_only_for_remote_paths() -> None:
    with gdal_env("/vsicurl/http://example.com/a.tif"):
        assert rasterio.env.getenv()["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    with gdal_env("/data/a.tif"):
        assert "GDAL_DISABLE_READDIR_ON_OPEN" not in rasterio.env.getenv()
    with gdal_env("/data/a.tif", remote=True):
        assert rasterio.env.getenv()["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


# -- 2. outputs never destroy inputs or earlier outputs --------------------------------------


def test_check_outputs_refuses_inputs_duplicates_and_existing(tmp_path: Path) -> None:
    scene = write_tiled(tmp_path / "scene.tif", size=64)
    (tmp_path / "link.tif").symlink_to(scene)
    before = sha256(scene)
    for out in (scene, tmp_path / "link.tif", tmp_path / "sub" / ".." / "scene.tif"):
        with pytest.raises(ExportError, match=r"--label-raster .* would overwrite the input scene .*scene\.tif"):
            check_outputs({"--label-raster": out}, {"scene": scene}, overwrite=True)
    prompts = tmp_path / "p.shp"
    write_vector(polygons(3), prompts)
    with pytest.raises(ExportError, match=r"-o .*p\.shp would overwrite the input .*p\.dbf"):
        check_outputs({"-o": tmp_path / "p.shp"}, [tmp_path / "p.dbf"], overwrite=True)
    with pytest.raises(ExportError, match="same file"):
        check_outputs({"-o": tmp_path / "x.tif", "--label-raster": tmp_path / "x.tif"}, [scene])
    with pytest.raises(ExportError, match=r"p\.shp: file exists; pass --overwrite"):
        check_outputs({"-o": prompts}, [scene])
    assert check_outputs({"-o": prompts, "--overlay": None}, [scene], overwrite=True) == {"-o": prompts}
    assert check_outputs({"-o": tmp_path / "missing" / "a.gpkg"}, [scene])  # created by the writer, at the end
    assert not (tmp_path / "missing").exists()  # checking creates nothing
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if not os.access(tmp_path / "ro", os.W_OK):  # root may write anywhere
            with pytest.raises(ExportError, match=r"folder .*ro is not writable"):
                check_outputs({"-o": tmp_path / "ro" / "sub" / "a.gpkg"}, [scene])
    finally:
        (tmp_path / "ro").chmod(0o700)
    (tmp_path / "ds.parquet").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        check_outputs({"-o": tmp_path / "ds.parquet"}, [scene], overwrite=True)
    assert sha256(scene) == before


def test_python_writers_refuse_to_overwrite_their_input(tmp_path: Path) -> None:
    from geosam.plot.overlay import render_overlay
    from geosam.write.index_raster import write_index_raster

    scene = write_tiled(tmp_path / "scene.tif", size=64, count=4)
    before = checksums(tmp_path)
    with pytest.raises(ExportError, match="would overwrite the input like_path"):
        write_label_raster(polygons(3), scene, like_path=scene)
    with pytest.raises(ExportError, match="would overwrite the input scene"):
        write_index_raster(scene, scene, ["ndvi"], band_roles={"red": 1, "nir": 4})
    with pytest.raises(ExportError, match="would overwrite the input scene"):
        render_overlay(scene, polygons(3), scene)
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("ext", [".geojson", ".gpkg", ".shp", ".parquet"])
def test_failed_write_keeps_the_previous_output(tmp_path: Path, ext: str, monkeypatch) -> None:
    out = tmp_path / f"objects{ext}"
    write_vector(polygons(5), out)
    before = checksums(tmp_path)

    import pyarrow.parquet as pq
    import pyogrio.raw

    def half_then_fail(stream, path, *args, **kwargs):  # the OGR writer (geosam.write.vector streams Arrow batches)
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    def parquet_fails(self, table, *args, **kwargs):  # the GeoParquet writer, after its file was created
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyogrio.raw, "write_arrow", half_then_fail)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", parquet_fails)
    with pytest.raises(ExportError, match="No space left"):
        write_vector(polygons(50), out)
    assert checksums(tmp_path) == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    write_vector(polygons(7), out)  # a successful write replaces it (overwrite=True by default)
    assert len(gpd.read_file(out) if ext != ".parquet" else gpd.read_parquet(out)) == 7
    assert leftovers(tmp_path) == []


def test_shapefile_sidecars_are_replaced_together(tmp_path: Path) -> None:
    out = tmp_path / "objects.shp"
    write_vector(polygons(5), out)
    stale = tmp_path / "objects.qix"  # a spatial index of the old file
    stale.write_bytes(b"old index")
    write_vector(polygons(9), out)
    assert not stale.exists()
    assert len(gpd.read_file(out)) == 9
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cpg", ".dbf", ".prj", ".shp", ".shx"]


def test_geopackage_keeps_other_layers(tmp_path: Path) -> None:
    out = tmp_path / "results.gpkg"
    write_vector(polygons(4, seed=1), out, layer="roads")
    write_vector(polygons(5), out)  # default layer: the file stem
    assert sorted(str(n) for n, _ in pyogrio.list_layers(out)) == ["results", "roads"]
    write_vector(polygons(6), out)  # replaces only our layer
    assert len(gpd.read_file(out, layer="results")) == 6 and len(gpd.read_file(out, layer="roads")) == 4
    with pytest.raises(ExportError, match="layer 'results' exists"):
        write_vector(polygons(6), out, overwrite=False)
    write_vector(polygons(2), out, layer="scene_b", overwrite=False)  # a new layer is no overwrite
    assert sorted(str(n) for n, _ in pyogrio.list_layers(out)) == ["results", "roads", "scene_b"]
    with pytest.raises(ExportError, match="GeoPackages"):
        write_vector(polygons(2), tmp_path / "a.geojson", layer="x")


def test_a_folder_at_the_output_path_is_never_deleted(tmp_path: Path) -> None:
    ds = tmp_path / "objects.parquet"  # a partitioned Parquet dataset
    (ds / "part=1").mkdir(parents=True)
    (ds / "part=1" / "data.parquet").write_bytes(b"precious")
    before = checksums(tmp_path)
    with pytest.raises(ExportError, match="is a folder"):
        write_vector(polygons(3), ds)
    with pytest.raises(ExportError, match="is a folder"), atomic_output(ds):
        pass
    assert checksums(tmp_path) == before


def test_label_raster_failure_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    scene = write_tiled(tmp_path / "scene.tif", size=128, block=64)
    out = tmp_path / "labels.tif"
    write_label_raster(polygons(5), out, like_path=scene, id_column=None)
    before = checksums(tmp_path)

    def fail(*args, **kwargs):
        raise MemoryError("out of memory in rasterize")

    monkeypatch.setattr("rasterio.features.rasterize", fail)
    with pytest.raises((ExportError, MemoryError)):
        write_label_raster(polygons(50), out, like_path=scene, id_column=None, block_px=16)
    assert checksums(tmp_path) == before and leftovers(tmp_path) == []


_KILL_CHILD = """
import sys, numpy as np, shapely, geopandas as gpd
from geosam.write.vector import write_vector
n = int(sys.argv[2])
rng = np.random.default_rng(1)
geoms = shapely.buffer(shapely.points(rng.uniform(0, 1e5, (n, 2))), 3.0, quad_segs=4)
gdf = gpd.GeoDataFrame({"id": np.arange(n), "v": rng.uniform(0, 1, n)}, geometry=geoms, crs="EPSG:32633")
print("ready", flush=True)
write_vector(gdf, sys.argv[1])
print("done", flush=True)
"""


@pytest.mark.parametrize("ext", [".geojson", ".gpkg"])
def test_sigkill_during_the_write_keeps_the_previous_output(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"objects{ext}"
    write_vector(polygons(20), out, layer="objects" if ext == ".gpkg" else None)
    if ext == ".gpkg":
        write_vector(polygons(3), out, layer="other")
    before = checksums(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(out), "30000"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            tmp = [p / out.name for p in tmp_path.iterdir() if TMP_SUFFIX in p.name]
            if any(t.exists() and t.stat().st_size > 0 for t in tmp):  # the new file is being written
                break
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert leftovers(tmp_path), "the child was killed before or after its write, not during it"
    assert checksums(out) == before
    assert len(gpd.read_file(out, layer="objects" if ext == ".gpkg" else None)) == 20


# -- 3-5. block checks, read errors, stretch sampling ----------------------------------------


def test_info_check_reports_unreadable_blocks(tmp_path: Path) -> None:
    good = write_tiled(tmp_path / "good.tif")
    bad = shutil.copy(good, tmp_path / "bad.tif")
    corrupt_block(Path(bad), 1, 2)
    before = checksums(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["info", "--check", str(good)])
    assert res.exit_code == 0, res.output
    assert "0 of 16 blocks unreadable" in res.output
    res = runner.invoke(cli, ["info", str(bad)])  # without --check nothing is read: the old behaviour
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["info", "--check", "--json", str(bad)])
    assert res.exit_code == 1
    assert "1 of 16 blocks are unreadable" in res.output
    d = json.loads(res.output[: res.output.rindex("}") + 1])
    assert [(b["col_off"], b["row_off"], b["width"]) for b in d["unreadable_blocks"]] == [(128, 256, 128)]
    assert "IReadBlock failed at X offset 1, Y offset 2" in d["unreadable_blocks"][0]["error"]
    n, blocks = check_blocks(bad)
    assert n == 16 and [b.window for b in blocks] == [PixelWindow(128, 256, 128, 128)]
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(Path(good).read_bytes()[: Path(good).stat().st_size // 2])
    res = runner.invoke(cli, ["info", "--check", str(truncated)])
    assert res.exit_code == 1 and "blocks are unreadable" in res.output
    assert "truncated.tif" in res.output and "TIFFFillTile" in res.output
    assert {k: v for k, v in checksums(tmp_path).items() if k != str(truncated)} == before


def test_read_error_shows_gdals_message(tmp_path: Path) -> None:
    p = write_tiled(tmp_path / "c.tif", dtype="uint8")
    corrupt_block(p, 1, 2)
    with Scene(p) as sc, pytest.raises(InvalidRasterError) as err:
        sc.read_window(PixelWindow(128, 256, 64, 64))
    msg = str(err.value)
    assert "See previous exception" not in msg
    assert str(p) in msg and "IReadBlock failed at X offset 1, Y offset 2" in msg


def test_stretch_sample_skips_unreadable_windows(tmp_path: Path, caplog) -> None:
    p = write_tiled(tmp_path / "s.tif", size=512, block=64)
    with Scene(p) as sc:
        reference = sc.stretch
    corrupt_block(p, 3, 4)
    with caplog.at_level(logging.WARNING, logger="geosam.read.scene"), Scene(p) as sc:
        np.testing.assert_allclose(sc.stretch, reference, rtol=0.02)
    assert "1 of 64 windows of the stretch sample are unreadable" in caplog.text
    for col in range(8):
        for row in range(8):
            corrupt_block(p, col, row)
    with pytest.raises(InvalidRasterError, match=r"s\.tif: no part of the scene is readable"):
        Scene(p)


def test_segment_scene_skips_a_corrupt_block_of_a_uint16_scene(tmp_path: Path) -> None:
    from geosam import segment_scene
    from geosam.testing import OracleMaskGenerator
    from tests.data.make_scenes import make_oracle_scene

    files = make_oracle_scene(tmp_path, width=256, height=256, n_objects=8, seed=3)
    p = _as_uint16_tiled(files.image_path, tmp_path / "u16.tif", block=64)
    corrupt_block(p, 1, 1)
    before = checksums(p, files.label_path)
    gdf = segment_scene(p, mask_generator=OracleMaskGenerator(files.label_path), progress=False,
                        chip_size_px=128, overlap_px=0, skip_bad_chips=True)
    assert len(gdf) > 0
    with pytest.raises(InvalidRasterError, match="IReadBlock failed"):
        segment_scene(p, mask_generator=OracleMaskGenerator(files.label_path), progress=False,
                      chip_size_px=128, overlap_px=0)
    assert checksums(p, files.label_path) == before


def _as_uint16_tiled(src: Path, dst: Path, block: int) -> Path:
    with rasterio.open(src) as ds:
        data = ds.read().astype("uint16") * 16
        prof = {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": ds.count, "dtype": "uint16",
                "crs": ds.crs, "transform": ds.transform, "tiled": True, "blockxsize": block, "blockysize": block,
                "compress": "deflate", "interleave": "pixel"}
    with rasterio.open(dst, "w", **prof) as out:
        out.write(data)
    return dst


# -- 6. fuzz -------------------------------------------------------------------------------


_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
#: GeoTIFF tags: ModelPixelScale, ModelTiepoint, GeoKeyDirectory, GeoDoubleParams.
_GEO_TAGS = (33550, 33922, 34735, 34736)
_ODD_DOUBLES = (float("nan"), float("inf"), -float("inf"), 0.0, 1e308, -1e-308)


def _tiff_entries(src: bytes) -> dict[int, tuple[int, int, int]]:
    """tag -> (position of its 12-byte entry, byte offset of its data, data size) of a classic LE TIFF."""
    ifd = int.from_bytes(src[4:8], "little")
    out = {}
    for k in range(int.from_bytes(src[ifd: ifd + 2], "little")):
        e = ifd + 2 + 12 * k
        tag, typ, count = (int.from_bytes(src[e + a: e + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
        size = _TIFF_TYPE_SIZE.get(typ, 1) * count
        out[tag] = (e, e + 8 if size <= 4 else int.from_bytes(src[e + 8: e + 12], "little"), size)
    return out


def corrupted_copies(src: bytes, n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of a little-endian classic TIFF (seeded).

    Kinds in turn: flipped bytes anywhere, random bytes in the header and IFD,
    truncation, one tag entry's type / count / value, odd values (NaN, inf, 0,
    huge doubles or random bytes) in the georeferencing tags.
    """
    rng = np.random.default_rng(seed)
    entries = _tiff_entries(src)
    ifd_end = max(e for e, _, _ in entries.values()) + 12
    geo = [entries[t] for t in _GEO_TAGS if t in entries]
    out = []
    for i in range(n):
        b = bytearray(src)
        kind = ("flip", "header", "truncate", "tag", "geo")[i % 5]
        if kind == "flip":
            for pos in rng.integers(0, len(b), int(rng.integers(1, 40))):
                b[pos] ^= int(rng.integers(1, 256))
        elif kind == "header":
            for pos in rng.integers(0, min(len(b), ifd_end + 512), int(rng.integers(1, 6))):
                b[pos] = int(rng.integers(0, 256))
        elif kind == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == "tag":
            entry = list(entries.values())[int(rng.integers(0, len(entries)))][0]
            field, width = [(2, 2), (4, 4), (8, 4)][int(rng.integers(0, 3))]
            b[entry + field: entry + field + width] = rng.integers(0, 256, width, dtype=np.uint8).tobytes()
        else:
            _, off, size = geo[int(rng.integers(0, len(geo)))]
            if size >= 8 and rng.uniform() < 0.6:
                pos = off + 8 * int(rng.integers(0, size // 8))
                b[pos: pos + 8] = np.float64(_ODD_DOUBLES[int(rng.integers(0, len(_ODD_DOUBLES)))]).tobytes()
            else:
                for pos in off + rng.integers(0, max(size, 1), int(rng.integers(1, 4))):
                    b[pos] = int(rng.integers(0, 256))
        out.append((f"{i:03d}-{kind}", bytes(b)))
    return out


def fuzz_main(work: str, n: int, seed: int) -> None:
    """Child process of the fuzz test: print one JSON line per case where a non-GeosamError escaped."""
    import faulthandler

    from geosam import segment_scene
    from geosam.testing import OracleMaskGenerator
    from tests.data.make_scenes import make_oracle_scene

    logging.disable(logging.CRITICAL)
    files = make_oracle_scene(work, width=192, height=192, n_objects=6, seed=5)
    src = _as_uint16_tiled(files.image_path, Path(work) / "src.tif", block=64).read_bytes()
    for name, data in corrupted_copies(src, n, seed):
        path = Path(work) / f"case-{name}.tif"
        path.write_bytes(data)
        faulthandler.dump_traceback_later(20, exit=True)  # a hang ends the child with a traceback
        print(f"case {name}", file=sys.stderr, flush=True)
        for what in ("scene", "segment", "check"):
            try:
                if what == "scene":
                    with Scene(path) as sc:
                        for spec in sc.chip_specs(128, 16):
                            sc.read_chip(spec)
                elif what == "segment":
                    segment_scene(path, mask_generator=OracleMaskGenerator(files.label_path), progress=False,
                                  chip_size_px=128, overlap_px=16, skip_bad_chips=bool(int(name[:3]) % 2))
                else:
                    check_blocks(path)
            except GeosamError:
                pass
            except Exception as exc:  # noqa: BLE001 - what the fuzz test looks for
                print(json.dumps({"case": name, "in": what, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        faulthandler.cancel_dump_traceback_later()
        path.unlink()


def test_fuzz_corrupted_geotiffs_raise_only_geosam_errors(tmp_path: Path) -> None:
    code = f"from tests.test_reliability import fuzz_main; fuzz_main({str(tmp_path)!r}, 200, 11)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    tail = res.stderr[-3000:]
    assert res.returncode == 0, f"the fuzz child crashed or hung (exit {res.returncode}):\n{tail}"
    escaped = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert escaped == [], "\n".join(json.dumps(e) for e in escaped[:20])
