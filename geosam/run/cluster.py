"""Dask clusters: scheduler settings checked before any pixel or model, and the client a run connects with.

``dask[distributed]`` is optional (``pip install geosam-scenes[dask]``) and imported only when a client is made.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from geosam.errors import ConfigError

log = logging.getLogger(__name__)


#: Seconds to wait for a scheduler address to answer (a TCP connection, then Dask's handshake).
CONNECT_TIMEOUT_S = 5

_SCRIPT_HINT = ("scheduler='local' starts worker processes that import your script again: put the code that runs "
                "geosam under `if __name__ == \"__main__\":`")


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError, within ``timeout_s``, when nothing listens at a ``tcp://host:port`` scheduler address."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(address)
    if url.scheme not in ("tcp", "tls") or url.hostname is None or url.port is None:
        return  # other transports (inproc, ucx): Dask's own timeout applies
    try:
        socket.create_connection((url.hostname, url.port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot reach the Dask scheduler at {address} ({reason}); start it (`dask scheduler`) "
                          "or check the address") from None


def _local_client(stack: ExitStack, distributed: Any, n_workers: int) -> Any:
    """A client of a new ``LocalCluster`` of ``n_workers`` processes; one line, not Dask's tracebacks, when a
    script without a ``__main__`` guard makes the workers fail to start."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # a new worker re-importing the script
        raise SystemExit(f"geosam: {_SCRIPT_HINT}")
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a failed start is said in one line below, not in Dask's tracebacks
    try:
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            dashboard_address=":0"))  # any free port: no "Port 8787 is already in use" warning
    except Exception as exc:  # noqa: BLE001 - Dask raises several types when workers do not start
        hint = _SCRIPT_HINT if _main_is_script() else "run again with -v for Dask's messages"
        raise ConfigError(f"the local Dask cluster did not start ({type(exc).__name__}: {exc}); {hint}") from None
    finally:
        quiet.setLevel(level)
    return stack.enter_context(distributed.Client(cluster))


def _main_is_script() -> bool:
    """Whether the program runs a Python script file (whose workers re-import it), not the geosam CLI."""
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return path.endswith(".py")  # the geosam console script has no .py suffix


def connect(stack: ExitStack, scheduler: Any, n_workers: int | None = None) -> Any:
    """A ``distributed.Client`` for ``scheduler``.

    Args:
        stack: Closes a client (and local cluster) created here.
        scheduler: ``"local"`` (a ``LocalCluster`` of ``n_workers`` processes, one thread each), a
            scheduler address (``"tcp://host:8786"``) or a ``distributed.Client`` (returned as it is).
        n_workers: Worker processes of a local cluster (default 2).

    Returns:
        The client.

    Raises:
        ConfigError: Dask is not installed, or the settings are wrong.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("scheduler= needs Dask: pip install 'geosam-scenes[dask]' (dask[distributed])") from exc
    if isinstance(scheduler, distributed.Client):
        return scheduler
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise ConfigError(f"n_workers (--workers) must be a whole number >= 1, got {n_workers!r}")
    if scheduler == "local":
        return _local_client(stack, distributed, n_workers or 2)
    if isinstance(scheduler, str) and "://" in scheduler:
        if n_workers is not None:
            raise ConfigError("n_workers sizes a local cluster only; an existing cluster keeps its workers")
        check_reachable(scheduler)
        try:
            return stack.enter_context(distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"))
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {scheduler} ({exc}); start it "
                              "(`dask scheduler`) or check the address") from None
    raise ConfigError(f"unknown scheduler {scheduler!r}: use 'local', an address like 'tcp://host:8786' "
                      "or a distributed.Client")


def check_scheduler(scheduler: Any, n_workers: int | None) -> None:
    """Refuse scheduler settings now, before any pixel or model.

    Args:
        scheduler: None, ``"local"``, a scheduler address or a ``distributed.Client``.
        n_workers: Worker processes of a local cluster.

    Raises:
        ConfigError: ``n_workers`` without a scheduler or not a whole number >= 1, or a scheduler
            that is neither ``"local"``, an address nor a client, or a scheduler address where nothing
            answers within ``CONNECT_TIMEOUT_S``.
    """
    if scheduler is None and n_workers is not None:
        raise ConfigError("n_workers needs scheduler='local' (or a scheduler address / Client)")
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise ConfigError(f"n_workers (--workers) must be a whole number >= 1, got {n_workers!r}")
    if isinstance(scheduler, str) and scheduler != "local" and "://" not in scheduler:
        raise ConfigError(f"unknown scheduler {scheduler!r}: use 'local', an address like 'tcp://host:8786' "
                          "or a distributed.Client")
    if isinstance(scheduler, str) and "://" in scheduler:
        check_reachable(scheduler)


__all__ = ["CONNECT_TIMEOUT_S", "check_reachable", "check_scheduler", "connect"]
