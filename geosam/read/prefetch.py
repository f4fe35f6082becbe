"""Read the chips of a run, optionally ahead of the model in a reader thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from geosam.errors import GeosamError
from geosam.read.scene import Chip, Scene
from geosam.tile.grid import ChipSpec


def read_or_error(sc: Scene, spec: ChipSpec, timings: dict[str, float], skip_bad_chips: bool) -> Chip | GeosamError:
    """The chip, or (with ``skip_bad_chips``) the read error as a value."""
    try:
        return sc.read_chip(spec, timings)
    except GeosamError as exc:
        if not skip_bad_chips:
            raise
        return exc


def iter_chips(
    sc: Scene,
    specs: Sequence[ChipSpec],
    prefetch: int,
    timings: dict[str, float] | None = None,
    skip_bad_chips: bool = False,
) -> Iterator[tuple[ChipSpec, Chip | GeosamError]]:
    """(spec, chip) for every spec, in order.

    With ``skip_bad_chips`` a chip whose pixels cannot be read is yielded as
    ``(spec, error)`` (a `GeosamError`) instead of ending the run.

    With ``prefetch > 0`` a reader thread with its own `Scene` handle
    (rasterio datasets are not thread-safe) reads and stretches up to
    ``prefetch`` chips ahead while the caller runs the model; the scene-wide
    stretch of ``sc`` is reused, so chips are identical to ``sc.read_chip``.
    Read and stretch seconds are added to ``timings`` (reader-thread time).
    """
    times: dict[str, float] = timings if timings is not None else {}
    if prefetch <= 0:
        for spec in specs:
            yield spec, read_or_error(sc, spec, times, skip_bad_chips)
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            with Scene(sc.source, sc.read_config, stretch=sc.stretch) as rs:
                for spec in specs:
                    if not put((spec, read_or_error(rs, spec, times, skip_bad_chips))):
                        return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=reader, name="geosam-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


__all__ = ["iter_chips", "read_or_error"]
