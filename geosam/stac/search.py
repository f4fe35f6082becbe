"""Many items: ItemCollections and STAC API searches as scenes, per item, per day or dated.

Sources: an ItemCollection (``pystac.ItemCollection``, a FeatureCollection JSON file or URL,
a list of items) or a STAC API search (`search`, through pystac-client). Grouping
(`stac_scenes`):

* ``"item"``: one scene per item (one output each);
* ``"day"``: one mosaic per day and orbit: the items of one solar day (UTC shifted by the
  longitude) and relative orbit joined, the first item's pixel winning where they overlap;
* `dated_scenes`: the day mosaics as (date, scene) pairs, in date order, for the
  monitoring capability, with clouds masked from a classification asset
  (``mask_asset="scl", mask_values=(3, 8, 9, 10)``).

Every group's grid is checked up front (`check_scenes`): items of one day in several
CRSs are an error before anything is read or written.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from geosam.errors import ConfigError, StacError
from geosam.stac.env import RemoteEnv
from geosam.stac.item import StacScene, item_from_doc, read_item, read_json, solar_day, stac_grid, stac_scene

log = logging.getLogger(__name__)

GROUPS = ("item", "day")


def read_items(source: Any, env: RemoteEnv | None = None) -> list[Any]:
    """The items of a collection.

    Args:
        source: a ``pystac.ItemCollection``, a FeatureCollection (dict, JSON file or URL; relative asset hrefs
            resolved against its location), an item in any form `read_item` takes, or a list of these.
        env: remote-read settings (default `RemoteEnv()`).

    Returns:
        ``pystac.Item`` objects with absolute asset hrefs, in the order given.

    Raises:
        StacError: a file or URL cannot be read or holds no STAC items.
    """
    env = env or RemoteEnv()
    if isinstance(source, (list, tuple)):
        return [it for s in source for it in read_items(s, env)]
    if type(source).__name__ == "ItemCollection":
        return [read_item(it, env) for it in source]
    if not isinstance(source, (dict, str, os.PathLike)):
        return [read_item(source, env)]
    doc, href = (source, None) if isinstance(source, dict) else read_json(source, env)
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        base = href.rsplit("/", 1)[0] + "/" if href else ""
        items = []
        for feature in doc.get("features", []):
            for asset in feature.get("assets", {}).values():  # hrefs relative to the collection's location
                if base and "://" not in asset["href"] and not os.path.isabs(asset["href"]):
                    asset["href"] = base + asset["href"]
            items.append(item_from_doc(feature, None))
        return items
    return [item_from_doc(doc, href)]


def _query(query: str | Sequence[str] | dict[str, Any] | None) -> Any:
    """``"eo:cloud_cover<20"`` or a list of such texts (pystac-client parses them) or a query dict."""
    if query is None or isinstance(query, dict):
        return query
    return [query] if isinstance(query, str) else list(query)


def search(url: str, *, collections: Sequence[str] | str | None = None, bbox: Sequence[float] | None = None,
           datetime: str | None = None, query: Any = None, max_items: int | None = 1000,
           env: RemoteEnv | None = None) -> list[Any]:
    """Items of a STAC API item search (pystac-client).

    Args:
        url: the API's landing page, e.g. ``https://earth-search.aws.element84.com/v1``.
        collections: collection id(s), e.g. ``"sentinel-2-l2a"``.
        bbox: (lon_min, lat_min, lon_max, lat_max) in degrees.
        datetime: an instant or a range, e.g. ``"2024-04/2024-10"``.
        query: property filters, ``"eo:cloud_cover<20"`` or a list of such, or a query dict.
        max_items: at most this many items.
        env: timeout and retries of the requests.

    Returns:
        The items found, asset hrefs absolute.

    Raises:
        StacError: the API cannot be reached or answers an error, or the search finds nothing (naming the terms).
    """
    import pystac_client
    from pystac_client.stac_api_io import StacApiIO

    env = env or RemoteEnv()
    what = f"search of {url} (collections {collections}, bbox {bbox}, datetime {datetime}, query {query})"
    try:
        io = StacApiIO(timeout=env.timeout_s, max_retries=env.max_retries)
        client = pystac_client.Client.open(url, stac_io=io, timeout=env.timeout_s)
        found = client.search(collections=[collections] if isinstance(collections, str) else
                              None if collections is None else list(collections),
                              bbox=None if bbox is None else [float(v) for v in bbox], datetime=datetime, query=_query(query),
                              max_items=max_items)
        items = list(found.items())
    except Exception as exc:  # requests' ConnectionError, APIError, pystac errors
        raise StacError(f"{what}: failed ({type(exc).__name__}: {exc}); check the URL and the search terms") from exc
    if not items:
        raise StacError(f"{what}: no items found; widen the bbox, the dates or the query")
    log.info("%s: %d items", url, len(items))
    return [read_item(it, env) for it in items]


def _day_key(item: Any) -> tuple[str, dt.date, str]:
    orbit = item.properties.get("sat:relative_orbit", item.properties.get("sat:absolute_orbit", ""))
    return (item.collection_id or "", solar_day(item), str(orbit))


def group_items(items: Sequence[Any], group: str = "item") -> list[tuple[str, list[Any]]]:
    """Items grouped into scenes.

    Args:
        items: ``pystac.Item`` objects.
        group: ``"item"`` (one group per item) or ``"day"`` (one per collection, solar day and relative orbit).

    Returns:
        (label, items) per group: the item id, or ``<collection>_<date>_R<orbit>``; days in date order.

    Raises:
        ConfigError: an unknown ``group``.
    """
    if group not in GROUPS:
        raise ConfigError(f"group must be one of {GROUPS}, got {group!r}")
    if group == "item":
        return [(it.id, [it]) for it in items]
    days: dict[tuple[str, dt.date, str], list[Any]] = {}
    for it in items:
        days.setdefault(_day_key(it), []).append(it)
    out = []
    for (coll, day, orbit), members in sorted(days.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        label = "_".join(p for p in (coll, day.isoformat(), f"R{orbit}" if orbit != "" else "") if p)
        out.append((label, members))
    return out


def stac_scenes(source: Any, group: str = "item", *, assets: Sequence[str] | str | None = None,
                resolution_m: float | None = None, mask_asset: str | None = None, mask_values: Sequence[int] = (),
                env: RemoteEnv | None = None, sign: Callable[[str], str] | None = None) -> list[StacScene]:
    """Scenes of a collection or of a list of items, one per item or one per day.

    Args:
        source: anything `read_items` takes (e.g. the items of `search`).
        group: ``"item"`` or ``"day"`` (see `group_items`).
        assets: as `geosam.stac.item.stac_scene`.
        resolution_m: as `geosam.stac.item.stac_scene`.
        mask_asset: as `geosam.stac.item.stac_scene`.
        mask_values: as `geosam.stac.item.stac_scene`.
        env: as `geosam.stac.item.stac_scene`.
        sign: as `geosam.stac.item.stac_scene`.

    Returns:
        One `StacScene` per group, labelled as `group_items` says.

    Raises:
        StacError: no items; BandError: an item lacks a band.
    """
    env = env or RemoteEnv()
    items = read_items(source, env)
    if not items:
        raise StacError(f"{source if isinstance(source, (str, os.PathLike)) else 'the collection'}: no items")
    out = []
    for label, members in group_items(items, group):
        sc = stac_scene(members, assets, resolution_m=resolution_m, mask_asset=mask_asset, mask_values=mask_values,
                        env=env, sign=sign)
        out.append(replace(sc, label=label))
    return out


def check_scenes(scenes: Sequence[StacScene]) -> None:
    """Every scene's grid (one CRS per scene; bands present): StacError before any pixel is read."""
    for sc in scenes:
        stac_grid(sc)


@dataclass(frozen=True)
class DatedScene:
    """One date of a time series: the day's mosaic as a scene (clouds masked when a mask asset is set)."""

    date: dt.date
    scene: StacScene


def dated_scenes(source: Any, *, assets: Sequence[str] | str | None = None, resolution_m: float | None = None,
                 mask_asset: str | None = None, mask_values: Sequence[int] = (), env: RemoteEnv | None = None,
                 sign: Callable[[str], str] | None = None) -> list[DatedScene]:
    """The dated scenes of a time series: one day's mosaic per date, clouds masked, every grid checked.

    Args:
        source: anything `read_items` takes.
        assets: as `geosam.stac.item.stac_scene`.
        resolution_m: as `geosam.stac.item.stac_scene`.
        mask_asset: as `geosam.stac.item.stac_scene`.
        mask_values: as `geosam.stac.item.stac_scene`.
        env: as `geosam.stac.item.stac_scene`.
        sign: as `geosam.stac.item.stac_scene`.

    Returns:
        One `DatedScene` per day, oldest first.

    Raises:
        StacError: two orbits or collections on one day (narrow the search), or a day's items in several CRSs.
    """
    scenes = stac_scenes(source, "day", assets=assets, resolution_m=resolution_m, mask_asset=mask_asset,
                         mask_values=mask_values, env=env, sign=sign)
    check_scenes(scenes)
    out = [DatedScene(solar_day(sc.items[0]), sc) for sc in scenes]
    dates = [d.date for d in out]
    if len(set(dates)) != len(dates):
        twice = sorted({d for d in dates if dates.count(d) > 1})
        raise StacError(f"several orbits or collections on {', '.join(map(str, twice))}: a dated series has one "
                        "scene per day; narrow the search (one collection, query sat:relative_orbit=...)")
    return out


__all__ = ["DatedScene", "check_scenes", "dated_scenes", "group_items", "read_items", "search", "solar_day",
           "stac_scenes"]
