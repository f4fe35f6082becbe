"""One geosam run per output: a lock file beside the output, held (``flock``) for the run's life.

Two runs started on one output (or one journal) would otherwise both succeed, the second silently
replacing the first. `output_lock` takes an exclusive, non-blocking ``flock`` on
``.NAME.geosam-lock`` beside the path; a second run (another process) finds it held and is refused
at once, before any pixel or model, with an `geosam.errors.ExportError` naming the path and
the process holding it. The kernel releases the lock when the holder dies (``kill -9`` included),
so a stale lock file never blocks: the next run takes it over. The file is removed on release.

Within one process the lock is re-entrant (the CLI locks its outputs, then the library function it
calls locks the same output again). Not POSIX (no ``fcntl``): no lock is taken.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geosam.errors import ExportError

#: Suffix of the lock file beside a locked path (``.NAME.geosam-lock``).
LOCK_SUFFIX = ".geosam-lock"

log = logging.getLogger(__name__)

_HELD: dict[Path, list[Any]] = {}  # lock path -> [open file, depth] of the locks this process holds
_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of ``path``: ``.NAME.geosam-lock`` in the same folder (when that folder does not exist
    yet -- it is created only once a run has succeeded -- in the nearest existing folder above, named after
    the rest of the path)."""
    p = Path(os.path.abspath(os.fspath(path)))
    folder = p.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    rest = p.relative_to(folder).as_posix().replace("/", "%2F")
    return folder / f".{rest}{LOCK_SUFFIX}"


def _acquire(lock: Path, target: str) -> Any:
    """Open and ``flock`` ``lock``; ExportError if another process holds it. Retries when the file was
    replaced between open and lock (a releasing run removes it)."""
    import fcntl

    for _ in range(10):
        f = open(lock, "a+")  # noqa: SIM115 - held open for the lock's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ExportError(
                f"{target} is in use by another geosam run (process {holder}); wait for it to finish "
                "or choose another output path"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            return f
        f.close()  # a releasing run removed the file we opened: take the new one
    raise ExportError(f"{target}: cannot take the lock {lock}; try again")


@contextmanager
def output_lock(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold the lock of ``path`` (None: nothing) for the ``with`` block; see the module docstring.

    Raises `ExportError` naming ``path`` when another process holds it.
    """
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    if path is None or "://" in os.fspath(path) or os.fspath(path).startswith("/vsi"):
        yield
        return
    lock = lock_path(path)
    taken = True
    with _GUARD:
        if lock in _HELD:
            _HELD[lock][1] += 1
        else:
            try:
                _HELD[lock] = [_acquire(lock, os.fspath(path)), 1]
            except OSError as exc:  # an unwritable folder: the output checks name it; no lock to hold
                log.debug("%s: no lock (%s)", path, exc)
                taken = False
    if not taken:
        yield
        return
    try:
        yield
    finally:
        _release(lock)


def _release(lock: Path) -> None:
    """One level less of ``lock``; at the last, remove the file and close (unlock) it."""
    with _GUARD:
        held = _HELD[lock]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[lock]
            try:
                lock.unlink()
            except OSError:
                pass
            held[0].close()


__all__ = ["LOCK_SUFFIX", "lock_path", "output_lock"]
