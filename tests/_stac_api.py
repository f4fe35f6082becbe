"""A tiny STAC API over a static catalog folder, for :class:`tests._range_server.RangeServer`'s ``api``.

``GET /`` answers a landing page that conforms to item search; ``GET`` or ``POST /search``
answers an ItemCollection of the folder's items (every ``*/*.json`` item, asset hrefs made
absolute on the server) filtered by ``collections``, ``bbox`` (intersects) and ``datetime``
(an instant or ``start/end``, dates or datetimes; ``..`` open). No paging, no ``query``
(ignored: what pystac-client sends is accepted). ``/down/...`` answers 503 (an unreachable API).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from pathlib import Path
from typing import Any

CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
]


def _when(text: str, end: bool) -> dt.datetime | None:
    if text in ("", ".."):
        return None
    if len(text) == 10:  # a date: the whole day
        d = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        return d + dt.timedelta(days=1) - dt.timedelta(microseconds=1) if end else d
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _matches(item: dict[str, Any], params: dict[str, Any]) -> bool:
    colls = params.get("collections")
    if isinstance(colls, str):
        colls = colls.split(",")
    if colls and item.get("collection") not in colls:
        return False
    bbox = params.get("bbox")
    if isinstance(bbox, str):
        bbox = [float(v) for v in bbox.split(",")]
    if bbox:
        b = item["bbox"]
        if b[0] > bbox[2] or b[2] < bbox[0] or b[1] > bbox[3] or b[3] < bbox[1]:
            return False
    when = params.get("datetime")
    if when:
        start, _, end = when.partition("/") if "/" in when else (when, "", when)
        t = dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        lo, hi = _when(start, False), _when(end, True)
        if (lo and t < lo) or (hi and t > hi):
            return False
    return True


class StacApi:
    """``api`` of a RangeServer serving ``folder``; :attr:`base` (the server's URL) set once it is known."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.base = ""
        self.searches: list[dict[str, Any]] = []  # what was asked, for tests

    def items(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.folder.glob("*/*.json")):
            item = json.loads(path.read_text())
            if item.get("type") != "Feature" or path.stem.endswith(("_A", "_B")):  # the halves: only on request
                continue
            rel = path.parent.relative_to(self.folder).as_posix()
            for a in item["assets"].values():
                a["href"] = f"{self.base}/{rel}/{a['href'].removeprefix('./')}"
            item["links"] = [{"rel": "self", "href": f"{self.base}/{rel}/{path.name}"}]
            out.append(item)
        return out

    def __call__(self, method: str, path: str, body: bytes | None) -> tuple[int, Any] | None:
        url = urllib.parse.urlsplit(path)
        if url.path.startswith("/down"):
            return 503, {"code": "unavailable"}
        if url.path in ("/", ""):
            return 200, {"type": "Catalog", "id": "test-api", "stac_version": "1.0.0", "description": "test API",
                         "conformsTo": CONFORMS,
                         "links": [{"rel": "self", "href": f"{self.base}/", "type": "application/json"},
                                   {"rel": "root", "href": f"{self.base}/", "type": "application/json"},
                                   {"rel": "search", "href": f"{self.base}/search", "type": "application/geo+json",
                                    "method": "POST"},
                                   {"rel": "search", "href": f"{self.base}/search", "type": "application/geo+json",
                                    "method": "GET"}]}
        if url.path == "/search":
            params: dict[str, Any] = json.loads(body) if body else dict(urllib.parse.parse_qsl(url.query))
            self.searches.append(params)
            feats = [it for it in self.items() if _matches(it, params)]
            return 200, {"type": "FeatureCollection", "features": feats, "links": [],
                         "numberReturned": len(feats)}
        return None
