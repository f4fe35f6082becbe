"""What a STAC scene would read, without reading a pixel: the grid, the bands and each asset with its size.

`describe_scene` is what ``geosam info ITEM.json --assets ...`` prints: the grid the chips are read on
(CRS, resolution, size), the band order with each band's asset and common name, the mask asset and
its classes, and per item and asset its href, its own resolution and pixel size, and its size in bytes
(``Content-Length`` of one HEAD request, or the local file's size), so the bytes a run may fetch are known
before it starts.
"""

from __future__ import annotations

from typing import Any

from geosam.stac.fingerprint import href_fingerprint
from geosam.stac.item import StacScene, asset_key, asset_meta, common_names, stac_grid


def _size(href: str, scene: StacScene) -> int | None:
    size = href_fingerprint(href, scene).get("size_bytes")
    return None if size is None else int(size)


def describe_scene(scene: StacScene) -> dict[str, Any]:
    """What ``scene`` reads: its grid, its bands and its assets.

    Args:
        scene: the `StacScene` (its assets' headers are read when the item does not describe them; one HEAD
            request per remote asset for its size).

    Returns:
        ``{"items", "grid", "bands", "mask", "assets", "asset_bytes"}``: item ids; the grid (``crs``,
        ``resolution`` (CRS units), ``width`` / ``height`` (px), ``transform``); per band (1-based, the
        order of the model image and ``--bands``) its name, asset key and common names; the mask asset and
        its invalid classes (or None); per item and asset read its key, href, resolution, (rows, columns),
        data type and size in bytes (None when the server does not say); the assets' total bytes.

    Raises:
        StacError: an asset cannot be reached or its header read.
    """
    from rasterio.crs import CRS

    grid = stac_grid(scene)
    first = scene.items[0]
    bands = [{"band": k + 1, "name": n, "asset": asset_key(first, n), "common_names": common_names(
        first.assets[asset_key(first, n)])} for k, n in enumerate(scene.names)]
    keys = [*scene.keys, *([scene.mask_key] if scene.mask_key else [])]
    assets = []
    for item in scene.items:
        for key in dict.fromkeys(keys):
            meta = asset_meta(item, key, scene.env, scene.sign)
            href = item.assets[key].href
            assets.append({"item": item.id, "key": key, "href": href, "resolution": abs(meta.transform.a),
                           "shape": list(meta.shape), "dtype": meta.dtype, "size_bytes": _size(href, scene)})
    crs = CRS.from_wkt(grid.crs_wkt)
    sizes = [a["size_bytes"] for a in assets]
    return {
        "items": [i.id for i in scene.items],
        "grid": {"crs": crs.to_string() if crs.to_epsg() else grid.crs_wkt, "resolution": abs(grid.transform.a),
                 "width": grid.width, "height": grid.height, "transform": list(grid.transform)[:6]},
        "bands": bands,
        "mask": None if scene.mask_key is None else {"asset": scene.mask_key, "values": list(scene.mask_values)},
        "assets": assets,
        "asset_bytes": None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None),
    }


def format_description(d: dict[str, Any]) -> list[str]:
    """`describe_scene`'s result as text lines (one per band and per asset)."""
    g = d["grid"]
    lines = [f"{'items':>12}: {', '.join(d['items'])}",
             f"{'grid':>12}: {g['width']} x {g['height']} px of {g['resolution']:g} ({g['crs']})"]
    for b in d["bands"]:
        lines.append(f"{'band ' + str(b['band']):>12}: {b['name']} (asset {b['asset']}"
                     f"{', ' + ', '.join(b['common_names']) if b['common_names'] else ''})")
    if d["mask"] is not None:
        lines.append(f"{'mask':>12}: asset {d['mask']['asset']}, invalid classes {d['mask']['values'] or 'none'}")
    for a in d["assets"]:
        size = "size unknown" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f} MB"
        lines.append(f"{'asset':>12}: {a['item']} {a['key']}: {a['shape'][1]} x {a['shape'][0]} px of "
                     f"{a['resolution']:g}, {a['dtype']}, {size}, {a['href']}")
    if d["asset_bytes"] is not None:
        lines.append(f"{'assets':>12}: {d['asset_bytes'] / 1e6:.2f} MB in all (a run reads only the blocks under "
                     "its chips)")
    return lines


__all__ = ["describe_scene", "format_description"]
