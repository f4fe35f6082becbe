"""A local HTTP server with byte-range support, for reading rasters through GDAL's ``/vsicurl/``.

Serves one folder on 127.0.0.1 (an ephemeral port) from a daemon thread; counts
the bytes it sends; stops on :meth:`RangeServer.stop` or by itself after
``lifetime_s`` seconds, so a failing test never leaves it running.
"""

from __future__ import annotations

import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
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

    def do_HEAD(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bytes_sent = 0
    requests = 0
    lock = threading.Lock()


class RangeServer:
    """Serve ``folder`` at :attr:`url` (``http://127.0.0.1:PORT``) until :meth:`stop` or ``lifetime_s``."""

    def __init__(self, folder: Path, lifetime_s: float = 300.0) -> None:
        self.httpd = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
        self.httpd.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True
        self.timer.start()

    @property
    def bytes_sent(self) -> int:
        return self.httpd.bytes_sent

    def reset(self) -> None:
        with self.httpd.lock:
            self.httpd.bytes_sent = 0
            self.httpd.requests = 0

    def stop(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
