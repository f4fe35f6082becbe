"""A local HTTP server with byte-range support, for reading rasters through GDAL's ``/vsicurl/``.

Serves one folder on 127.0.0.1 (an ephemeral port) from a daemon thread; counts
the bytes of files it sends (per path in :attr:`RangeServer.bytes_by_path`); answers
JSON from an optional ``api`` function first (a tiny STAC API: :mod:`tests._stac_api`); stops on :meth:`RangeServer.stop` or by itself after
``lifetime_s`` seconds, so a failing test never leaves it running.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _api(self, method: str, body: bytes | None) -> bool:
        """Answer from the server's ``api`` function; False when it has nothing for this request."""
        answer = self.server.api(method, self.path, body) if self.server.api is not None else None
        if answer is None:
            return False
        status, doc = answer
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if not self._api("POST", body):
            self.send_error(404)

    def do_GET(self) -> None:
        if self._api("GET", None):
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            else:  # suffix range: the last N bytes
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
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        with self.server.lock:
            self.server.bytes_sent += len(body)
            self.server.requests += 1
            self.server.bytes_by_path[self.path] = self.server.bytes_by_path.get(self.path, 0) + len(body)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bytes_sent = 0
    requests = 0
    lock = threading.Lock()
    api: Callable[[str, str, bytes | None], tuple[int, object] | None] | None = None
    bytes_by_path: dict[str, int]


class RangeServer:
    """Serve ``folder`` at :attr:`url` (``http://127.0.0.1:PORT``) until :meth:`stop` or ``lifetime_s``.

    api: a function of (method, path with query, request body) returning (HTTP status, JSON document), or None
    to serve the file at that path.
    """

    def __init__(self, folder: Path, lifetime_s: float = 300.0,
                 api: Callable[[str, str, bytes | None], tuple[int, object] | None] | None = None) -> None:
        self.httpd = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
        self.httpd.lock = threading.Lock()
        self.httpd.api = api
        self.httpd.bytes_by_path = {}
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True
        self.timer.start()

    @property
    def bytes_sent(self) -> int:
        return self.httpd.bytes_sent

    @property
    def bytes_by_path(self) -> dict[str, int]:
        """Bytes of files sent per URL path since the last :meth:`reset`."""
        with self.httpd.lock:
            return dict(self.httpd.bytes_by_path)

    def reset(self) -> None:
        with self.httpd.lock:
            self.httpd.bytes_sent = 0
            self.httpd.requests = 0
            self.httpd.bytes_by_path = {}

    def stop(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
