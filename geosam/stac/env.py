"""Remote reads the way users configure them: GDAL options, retries, signing.

`RemoteEnv` is a small frozen value (picklable, travels to reader threads and Dask
workers) that becomes a scoped ``rasterio.Env`` around each chip read (never held for an
object's life) and the timeout / retries of the JSON requests (items, searches).

GDAL retries HTTP 429, 500, 502, 503 and 504 by itself (``GDAL_HTTP_MAX_RETRY`` times,
``GDAL_HTTP_RETRY_DELAY`` seconds apart, doubling); a chip that still cannot be read fails
like a local read error (``skip_bad_chips`` applies). ``sign``: a function of an asset URL
returning the URL to read (e.g. ``planetary_computer.sign``), applied just before each read.
"""

from __future__ import annotations

import importlib
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geosam.errors import ConfigError, StacError

if TYPE_CHECKING:
    import rasterio

log = logging.getLogger(__name__)

#: HTTP statuses retried (for JSON requests; GDAL retries the same ones for pixels)
TRANSIENT_HTTP = frozenset({429, 500, 502, 503, 504})

#: GDAL block cache while reading STAC assets (bytes)
STAC_CACHEMAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RemoteEnv:
    """GDAL / HTTP settings of remote reads.

    Args:
        timeout_s: seconds before an HTTP request is abandoned (``GDAL_HTTP_TIMEOUT``).
        max_retries: retries of a transient HTTP error (``GDAL_HTTP_MAX_RETRY``).
        retry_delay_s: seconds before the first retry, doubling after each (``GDAL_HTTP_RETRY_DELAY``).
        no_sign_request: read public S3 buckets without credentials (``AWS_NO_SIGN_REQUEST=YES``).
        requester_pays: the reader pays for S3 requests (``AWS_REQUEST_PAYER=requester``).
        options: more GDAL configuration options as (name, value) pairs; they win over the above.
        asset_threads: assets of one chip read at once (their requests overlap: over a network a chip
            costs about one round trip instead of one per asset; see ``benchmarks/results/stac.json``).
    """

    timeout_s: float = 30.0
    max_retries: int = 4
    retry_delay_s: float = 0.5
    no_sign_request: bool = False
    requester_pays: bool = False
    options: tuple[tuple[str, str], ...] = ()
    asset_threads: int = 4

    def __post_init__(self) -> None:
        if int(self.asset_threads) != self.asset_threads or self.asset_threads < 1:
            raise ConfigError(f"asset_threads must be a whole number >= 1, got {self.asset_threads}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if int(self.max_retries) != self.max_retries or self.max_retries < 0:
            raise ConfigError(f"max_retries must be a whole number >= 0, got {self.max_retries}")
        if not self.retry_delay_s >= 0:
            raise ConfigError(f"retry_delay_s must be >= 0 seconds, got {self.retry_delay_s}")

    def gdal_options(self) -> dict[str, Any]:
        """The GDAL configuration options of a remote read."""
        out: dict[str, Any] = {
            "GDAL_CACHEMAX": STAC_CACHEMAX_BYTES,
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # an asset has no sidecars; saves a listing per open
            "GDAL_HTTP_TIMEOUT": max(1, round(self.timeout_s)),
            "GDAL_HTTP_CONNECTTIMEOUT": max(1, round(min(self.timeout_s, 10.0))),
            "GDAL_HTTP_MAX_RETRY": int(self.max_retries),
            "GDAL_HTTP_RETRY_DELAY": self.retry_delay_s,
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.vrt",
        }
        if self.no_sign_request:
            out["AWS_NO_SIGN_REQUEST"] = "YES"
        if self.requester_pays:
            out["AWS_REQUEST_PAYER"] = "requester"
        out.update(dict(self.options))
        return out

    def rio_env(self) -> rasterio.Env:
        """A ``rasterio.Env`` for one read: use as ``with env.rio_env(): ...`` around it, never longer."""
        import rasterio

        return rasterio.Env(**self.gdal_options())

    def get_json(self, url: str, body: dict[str, Any] | None = None) -> Any:
        """JSON from ``url`` (POST ``body`` when given), transient errors retried; StacError naming the URL."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {})}
        delay = self.retry_delay_s
        for attempt in range(int(self.max_retries) + 1):
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code not in TRANSIENT_HTTP or attempt == self.max_retries:
                    raise StacError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL") from exc
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                refused = isinstance(getattr(exc, "reason", exc), (ConnectionRefusedError, socket.gaierror))
                if attempt == self.max_retries or refused:  # nobody listens there (or no such host): no retry
                    why = getattr(exc, "reason", exc)
                    raise StacError(f"{url}: cannot reach the catalog ({why}); check the address and the "
                                    "network") from exc
                reason = str(getattr(exc, "reason", exc))
            except ValueError as exc:
                raise StacError(f"{url}: the answer is not JSON ({exc})") from exc
            log.info("%s: %s, retry %d of %d in %.1f s", url, reason, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


def load_signer(spec: str | Callable[[str], str] | None) -> Callable[[str], str] | None:
    """A URL-signing function from ``"module:function"`` (e.g. ``"planetary_computer:sign"``) or a callable."""
    if spec is None or callable(spec):
        return spec
    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"sign must look like module:function (e.g. planetary_computer:sign), got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"sign {spec!r}: cannot import it ({exc}); install the package that provides it") from exc
    if not callable(fn):
        raise ConfigError(f"sign {spec!r} is not a function")
    return fn


__all__ = ["RemoteEnv", "load_signer"]
