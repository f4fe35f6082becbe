"""Whether the Hugging Face hub may be contacted for a checkpoint, decided before any hub call.

Without network the hub client retries every file five times (~25 s, one warning per retry) before it gives up.
`cache_only_reason` avoids that: a hub id is read from the local Hugging Face cache only (transformers'
``local_files_only=True``, for that load alone; the environment is not changed) when

* ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (`hub_offline`),
* the checkpoint is already in the cache (configs and weights): it is loaded without touching the network, or
* the hub cannot be reached: one TCP connection to ``HF_ENDPOINT`` (default https://huggingface.co) that does not
  open within a short timeout (`hub_reachable`, asked once per process and endpoint).

A local directory is never probed. ``scripts/demo.py`` uses the same probe.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

#: Seconds the probe waits for the TCP connection to the hub.
PROBE_TIMEOUT_S = 2.0
#: Weight files one of which a cached checkpoint must have to be loaded from the cache without the hub.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

_PROBED: dict[tuple[str, int], bool] = {}
_PROBE_LOCK = threading.Lock()
_TRUTHY = {"1", "true", "yes", "on"}


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the hub: ``HF_ENDPOINT`` or https://huggingface.co."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def hub_url() -> str:
    """The hub's address as the probe sees it, for messages."""
    host, port = hub_endpoint()
    return f"{host}:{port}"


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout_s`` seconds.

    Asked once per process and endpoint; later calls return the first answer (see `forget_hub_probe`).
    """
    endpoint = hub_endpoint()
    with _PROBE_LOCK:
        if endpoint not in _PROBED:
            try:
                socket.create_connection(endpoint, timeout=timeout_s).close()
                _PROBED[endpoint] = True
            except OSError:
                _PROBED[endpoint] = False
        return _PROBED[endpoint]


def forget_hub_probe() -> None:
    """Forget the probe's answers, so that the next `hub_reachable` connects again (network came back)."""
    with _PROBE_LOCK:
        _PROBED.clear()


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover - very old hub
        return False


def in_cache(repo_id: str) -> bool:
    """Whether hub checkpoint ``repo_id`` has its ``config.json``, its processor's config
    (``preprocessor_config.json`` or ``processor_config.json``) and weights in the local Hugging Face cache
    (as ``hf download`` or an earlier load leaves it)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, filename), str)
        except ValueError:  # not a valid repo id
            return False

    processor = cached("preprocessor_config.json") or cached("processor_config.json")
    return cached("config.json") and processor and any(cached(f) for f in WEIGHT_FILES)


def cache_only_reason(repo_id: str) -> str | None:
    """Why hub checkpoint ``repo_id`` is to be read from the local cache only, or None to use the hub.

    The cache check comes first, so a cached checkpoint is never probed.
    """
    if hub_offline():
        return "offline mode"
    if in_cache(repo_id):
        return "the checkpoint is in the cache"
    if not hub_reachable():
        return f"the Hugging Face hub at {hub_url()} cannot be reached"
    return None


__all__ = [
    "PROBE_TIMEOUT_S",
    "cache_only_reason",
    "forget_hub_probe",
    "hub_endpoint",
    "hub_offline",
    "hub_reachable",
    "hub_url",
    "in_cache",
]
