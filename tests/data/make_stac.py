"""A static STAC catalog of per-band cloud-optimised GeoTIFFs, made from shipped data.

Like torchgeo's ``tests/data/*/data.py``: checked in, called by the tests, nothing binary stored.

From ``data/ftw_sentinel2_rgbn_2dates.tif`` (578 x 379 px, 10 m, EPSG:32633; date A bands 1-4 =
R, G, B, NIR, date B bands 5-8) it writes, per date, one item like a Sentinel-2 L2A item:

* ``red``, ``green``, ``blue``: 10 m uint16 COGs (128 px blocks, overviews, nodata 0);
* ``nir``: 20 m (the 10 m band averaged 2 x 2), so two resolutions meet on one grid;
* ``scl``: a 20 m uint8 scene classification (4 = vegetation, 5 = bare soil, 9 = cloud: a
  disc of "cloud" per date), the mask asset of the dated scenes;
* ``eo:bands`` common names, ``proj:epsg`` / ``proj:shape`` / ``proj:transform``, ``raster:bands``.

Also a second "granule" pair for one day (the scene's left and right halves as two items of
the same date and orbit, overlapping by 64 px, in collection `HALVES_COLLECTION`) to test mosaics per day, and the local
10 m stack of what an item reads (``stack_<date>.tif``: R, G, B, NIR at 10 m, NIR repeated
2 x 2) to compare a STAC run with a local one. Run ``python -m tests.data.make_stac OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = Path(__file__).resolve().parents[2] / "data" / "ftw_sentinel2_rgbn_2dates.tif"

#: (date, first band of that date in SOURCE)
DATES = (("2024-05-03", 1), ("2024-07-12", 5))
#: asset key -> (common name, centre wavelength um, offset in the date's 4 bands, resolution factor)
BANDS = {"red": ("red", 0.665, 0, 1), "green": ("green", 0.56, 1, 1), "blue": ("blue", 0.49, 2, 1),
         "nir": ("nir", 0.842, 3, 2)}
#: SCL classes written: vegetation, bare soil, cloud (high probability)
SCL_VEGETATION, SCL_BARE, SCL_CLOUD = 4, 5, 9
BLOCK_PX = 128
#: the collection of the two half items (a search of ``sentinel-2-l2a`` does not find them)
HALVES_COLLECTION = "sentinel-2-l2a-halves"


@dataclass(frozen=True)
class StacFiles:
    """What `make_catalog` wrote (paths inside ``root``; items' asset hrefs are relative)."""

    root: Path
    items: tuple[Path, ...]  # one item JSON per date
    halves: tuple[Path, ...]  # the first date as two overlapping items of one day
    stacks: tuple[Path, ...]  # per date: the 10 m R, G, B, NIR GeoTIFF an item reads as
    collection: Path  # an ItemCollection (FeatureCollection) of ``items``, hrefs relative to ``root``


def write_cog(path: Path, data: np.ndarray, transform: Any, crs: Any, nodata: float | None) -> None:
    """One band as a tiled, deflate-compressed COG with overviews."""
    import rasterio.shutil
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata}
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data, 1)
        with mem.open() as src:
            rasterio.shutil.copy(src, path, driver="COG", blocksize=BLOCK_PX, compress="DEFLATE",
                                 overview_resampling="nearest")


def _coarse(band: np.ndarray) -> np.ndarray:
    """2 x 2 mean (the last odd row/column padded by repeating it) as uint16."""
    h, w = band.shape
    padded = np.pad(band.astype(np.float64), ((0, h % 2), (0, w % 2)), mode="edge")
    return np.round(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))).astype(np.uint16)


def _scl(shape: tuple[int, int], nir: np.ndarray, red: np.ndarray, k: int) -> np.ndarray:
    """A 20 m classification: vegetation where NDVI > 0.4, else bare soil; a cloud disc per date."""
    ndvi = (nir.astype(np.float64) - red) / np.maximum(nir.astype(np.float64) + red, 1)
    scl = np.where(ndvi > 0.4, SCL_VEGETATION, SCL_BARE).astype(np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = (shape[0] * (0.3 + 0.4 * k), shape[1] * (0.25 + 0.5 * k))
    scl[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(shape) * 0.18) ** 2] = SCL_CLOUD
    return scl


def _item(item_id: str, date: str, bbox_px: tuple[int, int, int, int], transform: Any, crs: Any,
          hrefs: dict[str, str], shapes: dict[str, tuple[int, int]], transforms: dict[str, Any]) -> dict[str, Any]:
    """An item dict in the form of a Sentinel-2 L2A item (eo, proj and raster extensions)."""
    from pyproj import Transformer

    c0, r0, c1, r1 = bbox_px
    x0, y0 = transform * (c0, r1)
    x1, y1 = transform * (c1, r0)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lons, lats = to_ll.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    ring = [[lo, la] for lo, la in zip([*lons, lons[0]], [*lats, lats[0]])]
    assets: dict[str, Any] = {}
    for key, href in hrefs.items():
        asset: dict[str, Any] = {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                 "roles": ["data"], "proj:shape": list(shapes[key]),
                                 "proj:transform": list(transforms[key])[:6]}
        if key in BANDS:
            name, wl, _, _ = BANDS[key]
            asset["eo:bands"] = [{"name": key.upper(), "common_name": name, "center_wavelength": wl}]
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": 0}]
            asset["gsd"] = 10.0 * BANDS[key][3]
        else:
            asset["roles"] = ["data", "classification"]
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8"}]
        assets[key] = asset
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": bbox,
            "properties": {"datetime": f"{date}T10:00:{31 if c0 else 30}Z", "proj:epsg": crs.to_epsg(),
                           "eo:cloud_cover": 10.0, "sat:relative_orbit": 22, "platform": "sentinel-2a"},
            "collection": "sentinel-2-l2a", "links": [], "assets": assets}


def _write_item(root: Path, item_id: str, date: str, bands: dict[str, np.ndarray], scl: np.ndarray,
                transform: Any, crs: Any, bbox_px: tuple[int, int, int, int]) -> Path:
    from affine import Affine

    folder = root / item_id
    folder.mkdir(parents=True, exist_ok=True)
    hrefs, shapes, transforms = {}, {}, {}
    for key, data in {**bands, "scl": scl}.items():
        factor = BANDS[key][3] if key in BANDS else 2
        t = transform * Affine.scale(factor)
        write_cog(folder / f"{key}.tif", data, t, crs, 0)
        hrefs[key], shapes[key], transforms[key] = f"./{key}.tif", data.shape, t
    item = _item(item_id, date, bbox_px, transform, crs, hrefs, shapes, transforms)
    path = folder / f"{item_id}.json"  # no self link: the file's own location is its href
    path.write_text(json.dumps(item, indent=1))
    return path


def _mirror_tile(pixels: np.ndarray, tiles: int) -> np.ndarray:
    """(bands, H, W) repeated ``tiles`` x ``tiles`` times, every other copy mirrored (seamless)."""
    rows = [pixels if i % 2 == 0 else pixels[:, ::-1] for i in range(tiles)]
    column = np.concatenate(rows, axis=1)
    return np.concatenate([column if j % 2 == 0 else column[:, :, ::-1] for j in range(tiles)], axis=2)


def make_catalog(root: Path, tiles: int = 1) -> StacFiles:
    """Write the catalog under ``root`` (created); about 0.3 s. ``tiles``: the source mirrored ``tiles`` x
    ``tiles`` times (larger assets, for benchmarks)."""
    import rasterio
    from affine import Affine

    root.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SOURCE) as src:
        pixels, transform, crs = _mirror_tile(src.read(), tiles), src.transform, src.crs
    pixels = np.maximum(pixels, 1)  # 0 is nodata in the catalog
    items, halves, stacks, features = [], [], [], []
    for k, (date, first) in enumerate(DATES):
        day = pixels[first - 1 : first + 3]
        bands = {key: (day[off] if f == 1 else _coarse(day[off])) for key, (_, _, off, f) in BANDS.items()}
        scl = _scl(bands["nir"].shape, bands["nir"], _coarse(day[0]), k)
        item_id = f"S2A_33UVP_{date.replace('-', '')}"
        h, w = day.shape[1:]
        path = _write_item(root, item_id, date, bands, scl, transform, crs, (0, 0, w, h))
        items.append(path)
        feature = json.loads(path.read_text())
        for a in feature["assets"].values():
            a["href"] = f"{item_id}/{a['href'][2:]}"
        features.append(feature)
        stack = root / f"stack_{date}.tif"
        nir10 = np.repeat(np.repeat(bands["nir"], 2, axis=0), 2, axis=1)[:h, :w]
        with rasterio.open(stack, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint16", crs=crs,
                           transform=transform, nodata=0, tiled=True, blockxsize=BLOCK_PX, blockysize=BLOCK_PX) as dst:
            dst.write(np.stack([bands["red"], bands["green"], bands["blue"], nir10]))
            dst.descriptions = ("red", "green", "blue", "nir")
        stacks.append(stack)
        if k == 0:  # the same day as two overlapping granules (even column offsets keep the 20 m grid)
            mid = (w // 4) * 2
            for name, c0, c1 in (("A", 0, mid + 32), ("B", mid - 32, w)):
                part = {key: v[:, (c0 // 2 if v.shape[1] != w else c0):(-(-c1 // 2) if v.shape[1] != w else c1)]
                        for key, v in bands.items()}
                t = transform * Affine.translation(c0, 0)
                half = _write_item(root, f"{item_id}_{name}", date, part, scl[:, c0 // 2 : -(-c1 // 2)], t, crs,
                                   (0, 0, c1 - c0, h))
                doc = json.loads(half.read_text())
                doc["collection"] = HALVES_COLLECTION  # searched only when asked for
                half.write_text(json.dumps(doc, indent=1))
                halves.append(half)
    collection = root / "collection.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    return StacFiles(root=root, items=tuple(items), halves=tuple(halves), stacks=tuple(stacks), collection=collection)


def make_other_zone(files: StacFiles, root: Path) -> Path:
    """An ItemCollection of two items in different UTM zones, in its own folder ``root`` (created; the catalog's
    STAC API does not see it): a copy of the first date's item (EPSG:32633) and the second date's pixels as an
    item of the next zone, ``S2A_34UCV_20240712`` (EPSG:32634, the same eastings and northings: a place 6 degrees
    east). Returns the collection's path (``root/collection.json``, hrefs relative to ``root``)."""
    import shutil

    import rasterio
    from rasterio.crs import CRS

    root.mkdir(parents=True, exist_ok=True)
    first = root / files.items[0].parent.name
    shutil.copytree(files.items[0].parent, first)
    bands, scl, transform = {}, None, None
    for key in (*BANDS, "scl"):
        with rasterio.open(files.items[1].parent / f"{key}.tif") as ds:
            data = ds.read(1)
            if key == "red":
                transform = ds.transform
        if key == "scl":
            scl = data
        else:
            bands[key] = data
    assert transform is not None and scl is not None
    h, w = bands["red"].shape
    other = _write_item(root, "S2A_34UCV_20240712", DATES[1][0], bands, scl, transform, CRS.from_epsg(32634),
                        (0, 0, w, h))
    features = []
    for item in (first / files.items[0].name, other):
        feature = json.loads(item.read_text())
        for a in feature["assets"].values():
            a["href"] = f"{item.parent.name}/{a['href'][2:]}"
        features.append(feature)
    collection = root / "collection.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    return collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    print(make_catalog(parser.parse_args().out))


if __name__ == "__main__":
    main()
