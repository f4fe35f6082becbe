"""STAC items as scenes: which assets are read, on which grid.

A `StacScene` is what geosam reads instead of a GeoTIFF: one item, or the items of
one day joined into a mosaic, with the assets chosen by their ``eo:bands`` / ``bands`` common
names (``red``, ``nir``, ``swir16``...) or asset keys. Its pixels are read chip by chip by
`geosam.stac.dataset.StacDataset`; nothing is downloaded up front.

The grid (`StacGrid`): the CRS of the items (one CRS: items of several CRSs are an
error, never silently warped), the resolution asked for (default: the finest of the chosen
assets), anchored on the finest asset's pixel edges, covering every item. One item read at
its finest resolution is exactly that asset's own grid. Coarser assets (Sentinel-2's 20 m
bands) are read onto it with nearest-neighbour resampling.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geosam.errors import BandError, StacError
from geosam.stac.env import RemoteEnv

#: default bands of an item: those of these common names it has (the model image and NDVI)
DEFAULT_NAMES = ("red", "green", "blue", "nir")


def is_stac(obj: Any) -> bool:
    """Whether ``obj`` is a STAC item (``pystac.Item``, item dict, ``.json`` path or URL) or a `StacScene`."""
    if isinstance(obj, StacScene):
        return True
    if type(obj).__name__ == "Item" and type(obj).__module__.startswith("pystac"):
        return True
    if isinstance(obj, dict):
        return obj.get("type") == "Feature" and "stac_version" in obj
    if isinstance(obj, (str, os.PathLike)):
        text = os.fspath(obj).split("?")[0].lower()
        return text.endswith(".json")
    return False


def read_json(source: str | os.PathLike[str], env: RemoteEnv) -> tuple[Any, str]:
    """(the JSON document, its absolute href) of a local file or an http(s) URL."""
    text = os.fspath(source)
    if "://" in text:
        return env.get_json(text), text
    path = Path(text)
    if not path.is_file():
        raise StacError(f"{text}: no such STAC file")
    try:
        return json.loads(path.read_text()), str(path.resolve())
    except ValueError as exc:
        raise StacError(f"{text}: not a JSON file ({exc})") from exc


def read_item(source: Any, env: RemoteEnv | None = None) -> Any:
    """A ``pystac.Item`` with absolute asset hrefs.

    Args:
        source: a ``pystac.Item``, an item dict, or an item JSON's path or http(s) URL.
        env: timeout and retries of the request (default `RemoteEnv()`).

    Returns:
        The item (a copy when one was given), asset hrefs resolved against the JSON's location.

    Raises:
        StacError: the file or URL cannot be read (naming it and the HTTP status), or is not a STAC item.
    """
    import pystac

    env = env or RemoteEnv()
    if isinstance(source, pystac.Item):
        item = source.clone()
        for asset in item.assets.values():
            asset.href = asset.get_absolute_href() or asset.href
        return item
    doc, href = (source, None) if isinstance(source, dict) else read_json(source, env)
    return item_from_doc(doc, href)


def item_from_doc(doc: Any, href: str | None) -> Any:
    """A ``pystac.Item`` of a JSON document read from ``href`` (relative asset hrefs resolved against it)."""
    import pystac

    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise StacError(f"{href or 'the item'}: not a STAC item (type {kind!r}); give an item's JSON "
                        "(a FeatureCollection is a collection of scenes: see geosam.stac.search)")
    try:
        item = pystac.Item.from_dict(doc, href=href, preserve_dict=True)
    except Exception as exc:  # pystac raises KeyError, STACTypeError ...
        raise StacError(f"{href or 'the item'}: not a valid STAC item ({exc})") from exc
    for asset in item.assets.values():
        asset.href = asset.get_absolute_href() or asset.href
    return item


def common_names(asset: Any) -> list[str]:
    """Lower-case common names of an asset's bands (``eo:bands`` of STAC 1.0, ``bands`` of 1.1)."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    out = []
    for b in bands if isinstance(bands, list) else []:
        name = b.get("common_name") or b.get("eo:common_name") if isinstance(b, dict) else None
        if name:
            out.append(str(name).lower())
    return out


def describe_assets(item: Any) -> str:
    """``key (common name), ...`` of an item's single-band assets, for messages."""
    parts = []
    for key, asset in item.assets.items():
        names = common_names(asset)
        parts.append(f"{key} ({', '.join(names)})" if names else key)
    return ", ".join(parts) or "no assets"


def asset_key(item: Any, name: str) -> str:
    """The key of the asset ``name`` names: an asset key, else a single-band asset's common name."""
    if name in item.assets:
        return name
    hits = [k for k, a in item.assets.items() if common_names(a) == [name.lower()]]
    if not hits:
        raise BandError(f"STAC item {item.id!r} has no band {name!r}; it has: {describe_assets(item)} "
                        "(name assets by key or eo:bands common name, e.g. --assets red,green,blue)")
    return hits[0]


def default_names(item: Any) -> tuple[str, ...]:
    """Common names of `DEFAULT_NAMES` the item has; StacError when it lacks red, green or blue."""
    names = tuple(n for n in DEFAULT_NAMES if any(common_names(a) == [n] or k == n for k, a in item.assets.items()))
    if not {"red", "green", "blue"} <= set(names):
        raise BandError(f"STAC item {item.id!r} has no red, green and blue bands to show the model; choose bands "
                        f"with assets=... (--assets); it has: {describe_assets(item)}")
    return names


def solar_day(item: Any) -> dt.date:
    """The item's date in local solar time (UTC shifted by the longitude of its bbox centre / 15 h)."""
    when = item.datetime or dt.datetime.fromisoformat(str(item.properties["start_datetime"]).replace("Z", "+00:00"))
    lon = (item.bbox[0] + item.bbox[2]) / 2 if item.bbox else 0.0
    return (when + dt.timedelta(hours=lon / 15.0)).date()


@dataclass(frozen=True, eq=False)
class StacScene:
    """Items read as one scene: one item, or the items of one day joined (later items on top).

    Args:
        items: ``pystac.Item`` objects (see `read_item`), one CRS.
        names: the bands, by asset key or common name, in band order (band 1 first).
        resolution_m: pixel size of the grid in CRS units; None: the finest chosen asset's.
        mask_asset: a classification asset (e.g. ``scl``) whose ``mask_values`` mark invalid pixels.
        mask_values: class values masked (e.g. 3, 8, 9, 10: Sentinel-2 cloud shadow, clouds, cirrus).
        env: remote-read settings. sign: a function of an asset URL returning the URL to read.
        label: how messages and outputs name the scene (default ``stac:<item id>``).
    """

    items: tuple[Any, ...]
    names: tuple[str, ...]
    resolution_m: float | None = None
    mask_asset: str | None = None
    mask_values: tuple[int, ...] = ()
    env: RemoteEnv = field(default_factory=RemoteEnv)
    sign: Callable[[str], str] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.items:
            raise StacError("a STAC scene needs at least one item")
        if self.resolution_m is not None and not self.resolution_m > 0:
            raise StacError(f"resolution_m must be > 0, got {self.resolution_m}")
        if self.mask_values and self.mask_asset is None:
            raise StacError("mask_values need a mask_asset (e.g. mask_asset='scl')")
        if self.mask_asset is not None and not self.mask_values:  # it would mask nothing, silently
            raise StacError(f"mask_asset {self.mask_asset!r} needs mask_values, the classes that are invalid "
                            "(e.g. mask_values=(3, 8, 9, 10): Sentinel-2 SCL cloud shadow, clouds, cirrus; "
                            "--mask-values 3,8,9,10)")
        days = sorted({solar_day(i) for i in self.items})
        if len(days) > 1:
            raise StacError(f"items {', '.join(i.id for i in self.items)} fall on {len(days)} days "
                            f"({', '.join(map(str, days))}); a scene is one item or one day's mosaic: group them "
                            "with geosam.stac.search.stac_scenes(items, 'day') (--group day)")
        if not self.label:
            object.__setattr__(self, "label", "stac:" + "+".join(i.id for i in self.items))

    @property
    def keys(self) -> tuple[str, ...]:
        """The asset keys of `names` (the first item's; every item must have them)."""
        return tuple(asset_key(self.items[0], n) for n in self.names)

    @property
    def mask_key(self) -> str | None:
        return None if self.mask_asset is None else asset_key(self.items[0], self.mask_asset)


def stac_scene(source: Any, assets: Sequence[str] | str | None = None, *, resolution_m: float | None = None,
               mask_asset: str | None = None, mask_values: Sequence[int] = (), env: RemoteEnv | None = None,
               sign: Callable[[str], str] | None = None) -> StacScene:
    """A `StacScene` of one item or of one day's items, every band checked before a pixel is read.

    Args:
        source: a ``pystac.Item``, an item dict, an item JSON path or URL, or a list of them (one day's
            granules, joined into one mosaic); a `StacScene` is returned as it is.
        assets: band names, asset keys or ``eo:bands`` common names, as a list or ``"red,green,blue"``;
            None: red, green, blue and nir where the item has them.
        resolution_m: pixel size of the grid in CRS units; None: the finest chosen asset's.
        mask_asset: a classification asset (e.g. ``"scl"``) whose ``mask_values`` are invalid pixels.
        mask_values: the masked classes (e.g. 3, 8, 9, 10: Sentinel-2 cloud shadow, clouds, cirrus).
        env: remote-read settings (default `RemoteEnv()`).
        sign: a function of an asset URL returning the URL to read (e.g. ``planetary_computer.sign``).

    Returns:
        The scene, labelled ``stac:<item id>``.

    Raises:
        BandError: an item lacks a band (the message lists the bands it has).
        StacError: an item cannot be read, or the items fall on several days.
    """
    if isinstance(source, StacScene):
        return source
    env = env or RemoteEnv()
    raw = list(source) if isinstance(source, (list, tuple)) else [source]
    items = tuple(read_item(s, env) for s in raw)
    if isinstance(assets, str):
        assets = [a.strip() for a in assets.split(",") if a.strip()]
    names = tuple(assets) if assets else default_names(items[0])
    for item in items:
        for n in (*names, *([mask_asset] if mask_asset else [])):
            asset_key(item, n)
    return StacScene(items=items, names=names, resolution_m=resolution_m, mask_asset=mask_asset,
                     mask_values=tuple(int(v) for v in mask_values), env=env, sign=sign)


# ----------------------------------------------------------------------------
# grid


@dataclass(frozen=True)
class AssetMeta:
    """An asset's grid and values: CRS (WKT), transform, (height, width), data type, nodata, scale, offset."""

    crs_wkt: str
    transform: Affine
    shape: tuple[int, int]
    dtype: str
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0


def _crs_of(item: Any, asset: Any) -> str | None:
    from rasterio.crs import CRS

    for fields in (asset.extra_fields, item.properties):
        code = fields.get("proj:code") or (f"EPSG:{fields['proj:epsg']}" if fields.get("proj:epsg") else None)
        wkt = fields.get("proj:wkt2")
        if code or wkt:
            return str(CRS.from_user_input(code or wkt).to_wkt())
    return None


def asset_meta(item: Any, key: str, env: RemoteEnv, sign: Callable[[str], str] | None = None) -> AssetMeta:
    """An asset's grid and values.

    Args:
        item: the ``pystac.Item``.
        key: the asset key.
        env: remote-read settings for the header read.
        sign: the URL-signing function, if any.

    Returns:
        The `AssetMeta`, from the projection and raster extensions when they say everything, else from the
        asset's header (one read).

    Raises:
        StacError: the asset cannot be opened or has no CRS.
    """
    asset = item.assets[key]
    f, p = asset.extra_fields, item.properties
    transform, shape = f.get("proj:transform") or p.get("proj:transform"), f.get("proj:shape") or p.get("proj:shape")
    crs = _crs_of(item, asset)
    rb = (f.get("raster:bands") or [{}])[0] if isinstance(f.get("raster:bands"), list) else {}
    if transform and shape and crs and rb.get("data_type"):
        return AssetMeta(crs, Affine(*transform[:6]), (int(shape[0]), int(shape[1])), str(rb["data_type"]),
                         None if rb.get("nodata") is None else float(rb["nodata"]), float(rb.get("scale", 1.0)),
                         float(rb.get("offset", 0.0)))
    import rasterio

    href = sign(asset.href) if sign else asset.href
    try:
        with env.rio_env(), rasterio.open(href) as ds:
            if ds.crs is None:
                raise StacError(f"STAC item {item.id!r}: asset {key!r} ({asset.href}) has no CRS")
            return AssetMeta(ds.crs.to_wkt(), ds.transform, (ds.height, ds.width), ds.dtypes[0],
                             rb.get("nodata", ds.nodata), float(rb.get("scale", ds.scales[0])),
                             float(rb.get("offset", ds.offsets[0])))
    except rasterio.errors.RasterioError as exc:
        raise StacError(f"STAC item {item.id!r}: cannot open asset {key!r} ({asset.href}): {exc}") from exc


@dataclass(frozen=True)
class StacGrid:
    """The pixel grid a `StacScene` is read onto, and what its bands hold.

    transform maps grid pixels to ``crs_wkt`` coordinates; width / height in pixels; dtype the
    bands' common data type; nodata the first band's; scales / offsets per band (``raster:bands``).
    """

    crs_wkt: str
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    scales: tuple[float, ...]
    offsets: tuple[float, ...]


def _snap(value: float, origin: float, res: float, up: bool) -> float:
    n = (value - origin) / res
    n = math.ceil(n - 1e-6) if up else math.floor(n + 1e-6)
    return origin + n * res


def stac_grid(scene: StacScene) -> StacGrid:
    """The grid a scene is read onto (see the module docstring).

    Its extent is the union of each item's finest asset's extent (a coarser asset may overhang it by part
    of a pixel), snapped outwards to the grid.

    Args:
        scene: the `StacScene`.

    Returns:
        The `StacGrid`.

    Raises:
        StacError: the items are in several CRSs, or an asset's header cannot be read.
    """
    from rasterio.crs import CRS

    metas = [[asset_meta(item, asset_key(item, n), scene.env, scene.sign) for n in scene.names] for item in scene.items]
    crss = {m.crs_wkt for ms in metas for m in ms}
    if len({CRS.from_wkt(c).to_string() for c in crss}) > 1:
        per_item = ", ".join(f"{i.id}: {CRS.from_wkt(ms[0].crs_wkt).to_string()}" for i, ms in zip(scene.items, metas))
        raise StacError(f"{scene.label}: the items are in different CRSs ({per_item}); geosam does not warp "
                        "them into one mosaic: segment them one item at a time (group='item')")
    finest = min((m for ms in metas for m in ms), key=lambda m: abs(m.transform.a))
    res = float(scene.resolution_m or abs(finest.transform.a))
    ox, oy = finest.transform.c, finest.transform.f
    lefts, rights, bottoms, tops = [], [], [], []
    for ms in metas:  # each item's extent: its finest asset's (a coarse asset may overhang by a pixel)
        fine = min(ms, key=lambda m: abs(m.transform.a))
        t, (h, w) = fine.transform, fine.shape
        lefts.append(t.c)
        rights.append(t.c + t.a * w)
        tops.append(t.f)
        bottoms.append(t.f + t.e * h)
    x0, x1 = _snap(min(lefts), ox, res, False), _snap(max(rights), ox, res, True)
    y1, y0 = _snap(max(tops), oy, res, True), _snap(min(bottoms), oy, res, False)
    first = metas[0]
    dtype = np.result_type(*[np.dtype(m.dtype) for m in first]).name
    return StacGrid(crs_wkt=finest.crs_wkt, transform=Affine(res, 0.0, x0, 0.0, -res, y1),
                    width=max(1, round((x1 - x0) / res)), height=max(1, round((y1 - y0) / res)), dtype=dtype,
                    nodata=first[0].nodata, scales=tuple(m.scale for m in first),
                    offsets=tuple(m.offset for m in first))


__all__ = ["AssetMeta", "StacGrid", "StacScene", "asset_key", "asset_meta", "is_stac", "read_item", "stac_grid",
           "stac_scene"]
