"""What identifies a STAC scene's pixels, for a run journal.

An item is fingerprinted by its id and, for every asset read (the bands and the mask asset),
its href and what the server says of it: ``ETag``, ``Content-Length`` and ``Last-Modified``
(one HEAD request each), or size and modification time for a local file. A resumed run whose
item was reprocessed (new ETag or size), moved or given other assets refuses to resume.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

from geosam.errors import StacError
from geosam.stac.item import StacScene, asset_key


def href_fingerprint(href: str, scene: StacScene) -> dict[str, Any]:
    """``{"etag", "size_bytes", "last_modified"}`` of a URL (HEAD) or ``{"size_bytes", "mtime_ns"}`` of a file."""
    if "://" not in href:
        path = href.removeprefix("file://")
        if not os.path.exists(path):
            raise StacError(f"{scene.label}: asset {href} does not exist")
        st = os.stat(path)
        return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    url = scene.sign(href) if scene.sign else href
    if not url.startswith(("http://", "https://")):  # s3:// and the like: the href is all we know
        return {}
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=scene.env.timeout_s) as resp:
            h = resp.headers
            return {"etag": h.get("ETag"), "size_bytes": h.get("Content-Length"), "last_modified": h.get("Last-Modified")}
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise StacError(f"{scene.label}: cannot reach asset {href} ({getattr(exc, 'reason', exc)})") from exc


def stac_fingerprint(scene: StacScene) -> list[dict[str, Any]]:
    """What identifies a scene's pixels, for a run journal.

    Args:
        scene: the `StacScene`.

    Returns:
        Per item: its id and, per asset read (bands, then the mask asset), its key, href and `href_fingerprint`.

    Raises:
        StacError: an asset cannot be reached.
    """
    names = (*scene.names, *([scene.mask_asset] if scene.mask_asset else []))
    out = []
    for item in scene.items:
        assets = []
        for name in names:
            key = asset_key(item, name)
            href = item.assets[key].href
            assets.append({"key": key, "href": href, **href_fingerprint(href, scene)})
        out.append({"id": item.id, "assets": assets})
    return out


def unreadable_assets(scene: StacScene, keys: list[str]) -> str:
    """``"; asset 'blue' of item X (URL): HTTP 404"`` for each http(s) asset that a HEAD request does not find.

    Called after a failed read, to say which asset failed (GDAL's message does not name it); empty when
    every asset answers (the failure was elsewhere).
    """
    out = []
    for item in scene.items:
        for key in dict.fromkeys(keys):
            href = item.assets[key].href
            url = scene.sign(href) if scene.sign else href
            if not url.startswith(("http://", "https://")):
                continue
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                            timeout=scene.env.timeout_s):
                    pass
            except urllib.error.HTTPError as exc:
                out.append(f"; asset {key!r} of item {item.id!r} ({href}): HTTP {exc.code} {exc.reason}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                out.append(f"; asset {key!r} of item {item.id!r} ({href}): {getattr(exc, 'reason', exc)}")
    return "".join(out)


__all__ = ["href_fingerprint", "stac_fingerprint", "unreadable_assets"]
