"""A static STAC catalog served on this machine, read exactly as a public one: for trying geosam offline.

`LocalCatalog` serves a folder on ``127.0.0.1`` (an ephemeral port, a daemon thread) with what a
cloud object store and a STAC API answer: files with HTTP byte ranges (``Range: bytes=a-b`` -> 206),
``HEAD`` with ``Content-Length`` and ``ETag``; ``GET /`` a landing page that conforms to item search;
``GET`` / ``POST /search`` an ItemCollection of the folder's items (``*/*.json`` Features, asset hrefs
made absolute) filtered by ``collections``, ``bbox`` and ``datetime`` (other search terms are accepted and
ignored; no paging). It counts the bytes of files sent, per path, so a reader can see what a chip costs.
``latency_s`` delays every file response, as a distant object store does. It stops on
`LocalCatalog.stop` or by itself after ``lifetime_s``. Not for serving anything but
a test or demo catalog: one thread per request, files read whole into memory.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

#: what the landing page says it conforms to
CONFORMS = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
)


def _when(text: str, end: bool) -> dt.datetime | None:
    """A search bound as a UTC datetime: a date is its whole day; ``..`` or empty is open."""
    if text in ("", ".."):
        return None
    if len(text) == 10:
        day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        return day + dt.timedelta(days=1) - dt.timedelta(microseconds=1) if end else day
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def matches(item: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether an item dict passes a search's ``collections``, ``bbox`` (intersects) and ``datetime``."""
    colls = params.get("collections")
    colls = colls.split(",") if isinstance(colls, str) else colls
    if colls and item.get("collection") not in colls:
        return False
    bbox = params.get("bbox")
    bbox = [float(v) for v in bbox.split(",")] if isinstance(bbox, str) else bbox
    if bbox:
        b = item["bbox"]
        if b[0] > bbox[2] or b[2] < bbox[0] or b[1] > bbox[3] or b[3] < bbox[1]:
            return False
    when = params.get("datetime")
    if when:
        start, end = when.split("/", 1) if "/" in when else (when, when)
        t = dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        lo, hi = _when(start, False), _when(end, True)
        if (lo and t < lo) or (hi and t > hi):
            return False
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
        self.folder = folder
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.bytes_by_path: dict[str, int] = {}
        self.searches: list[dict[str, Any]] = []
        self.latency_s = 0.0
        self.fail_next = 0  # that many file requests answer 503 (a store's transient error)

    def items(self) -> list[dict[str, Any]]:
        """The folder's items with absolute asset hrefs and a self link."""
        out = []
        for path in sorted(self.folder.glob("*/*.json")):
            item = json.loads(path.read_text())
            if item.get("type") != "Feature":
                continue
            rel = path.parent.relative_to(self.folder).as_posix()
            for asset in item.get("assets", {}).values():
                if "://" not in asset["href"]:
                    asset["href"] = f"{self.base}/{rel}/{asset['href'].removeprefix('./')}"
            item["links"] = [{"rel": "self", "href": f"{self.base}/{rel}/{path.name}"}]
            out.append(item)
        return out

    def api(self, method: str, path: str, body: bytes | None) -> tuple[int, Any] | None:
        url = urllib.parse.urlsplit(path)
        if url.path in ("/", ""):
            link = {"type": "application/geo+json", "href": f"{self.base}/search", "rel": "search"}
            return 200, {"type": "Catalog", "id": "local", "stac_version": "1.0.0", "description": str(self.folder),
                         "conformsTo": list(CONFORMS),
                         "links": [{"rel": "self", "href": f"{self.base}/", "type": "application/json"},
                                   {"rel": "root", "href": f"{self.base}/", "type": "application/json"},
                                   {**link, "method": "POST"}, {**link, "method": "GET"}]}
        if url.path == "/search":
            params: dict[str, Any] = json.loads(body) if body else dict(urllib.parse.parse_qsl(url.query))
            with self.lock:
                self.searches.append(params)
            feats = [it for it in self.items() if matches(it, params)]
            return 200, {"type": "FeatureCollection", "features": feats, "links": [], "numberReturned": len(feats)}
        return None


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        answer = self.server.api("POST", self.path, body)
        if answer is None:
            self.send_error(404)
        else:
            self._json(*answer)

    def do_GET(self) -> None:
        answer = self.server.api("GET", self.path, None)
        if answer is not None:
            self._json(*answer)
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        if self.server.latency_s > 0:
            time.sleep(self.server.latency_s)
        with self.server.lock:
            fail, self.server.fail_next = self.server.fail_next > 0, max(0, self.server.fail_next - 1)
        if fail:
            self.send_error(503)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            else:  # a suffix range: the last N bytes
                start, end = max(len(data) - int(m.group(2)), 0), len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/json" if path.suffix == ".json" else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        key = urllib.parse.urlsplit(self.path).path
        with self.server.lock:
            self.server.bytes_by_path[key] = self.server.bytes_by_path.get(key, 0) + len(body)

    def do_HEAD(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        st = path.stat()
        self.send_response(200)
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


class LocalCatalog:
    """Serve ``folder`` at `url` (``http://127.0.0.1:PORT``) until `stop` or ``lifetime_s`` seconds.

    ``latency_s``: seconds each file response waits (a simulated distance to the store).

    Use as a context manager, or call `stop`.
    """

    def __init__(self, folder: str | Path, lifetime_s: float = 3600.0, latency_s: float = 0.0) -> None:
        self.httpd = _Server(Path(folder))
        self.httpd.latency_s = latency_s
        self.url = self.httpd.base
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True
        self.timer.start()

    @property
    def bytes_by_path(self) -> dict[str, int]:
        """Bytes of files sent per URL path since the last `reset`."""
        with self.httpd.lock:
            return dict(self.httpd.bytes_by_path)

    @property
    def bytes_sent(self) -> int:
        """Bytes of files sent since the last `reset`."""
        return sum(self.bytes_by_path.values())

    @property
    def searches(self) -> list[dict[str, Any]]:
        """The search parameters received, oldest first."""
        with self.httpd.lock:
            return list(self.httpd.searches)

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` file requests with HTTP 503 (a transient error), to try retries."""
        with self.httpd.lock:
            self.httpd.fail_next = int(n)

    def reset(self) -> None:
        """Zero the byte counts."""
        with self.httpd.lock:
            self.httpd.bytes_by_path = {}

    def stop(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalCatalog", "matches"]
