"""A run journal: every finished chip's result, committed as it completes, so a run can resume.

A journal is one SQLite file. Each finished chip's `geosam.assemble.result.ChipResult`
is pickled into it in its own transaction (an interrupted write is rolled back, so a
``kill -9`` loses at most the chip being written). The journal records what it was
written for: the scene's fingerprint (path, file size and modification time, raster
size, transform, CRS, bands and stretch) and the settings that change results (model,
the compute dtype as resolved once on the client, reading, tiling, segment-everything,
indices, output; not progress or read-ahead) with a digest of the run's chip tasks. A DataArray scene is fingerprinted by dask's ``tokenize``
(its graph when dask-backed, its bytes when numpy-backed; dask is then needed). Opening it for another scene or other settings raises
`geosam.errors.ConfigError` naming the journal and what differs.

Chips that failed to read (``skip_bad_chips``) are not journaled, so a resumed run tries
them again. The file holds pickles: open only journals you wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosam.assemble.result import FAILED, ChipResult
from geosam.config.outline import OutlineConfig
from geosam.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    from geosam.read.scene import Scene
    from geosam.run.loop import ChipTask
    from geosam.segment.base import MaskGenerator

#: bump when the stored layout changes
FORMAT = 1

#: suffix of the journal kept beside an output (`journal_path`)
JOURNAL_SUFFIX = ".geosam-journal"

#: the dtypes a run records once ``"auto"`` is resolved (`geosam.modes.runner.run_dtype`)
CONCRETE_DTYPES = ("float32", "bfloat16", "float16")

#: settings that do not change chip results (left out of the settings hash): engine settings, and the outline
#: options (applied when the table is built, after the chips)
NEUTRAL_SETTINGS = frozenset({"progress", "prefetch_chips", "skip_bad_chips", *OutlineConfig.__dataclass_fields__})


def _jsonable(value: Any) -> Any:
    """Settings values as JSON-friendly values (tuples -> lists, mappings -> sorted dicts, else repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return repr(value)


def scene_fingerprint(sc: Scene) -> dict[str, Any]:
    """What identifies a scene's pixels.

    Args:
        sc: The open scene.

    Returns:
        Path, file size (bytes) and mtime (ns) when it is a local file (a DataArray:
        `geosam.read.dataarray.dataarray_token`), raster size (px), band count, data type, transform,
        CRS, selected bands and stretch, as JSON values.
    """
    from geosam.read.dataarray import dataarray_token, is_dataarray
    from geosam.stac.fingerprint import stac_fingerprint
    from geosam.stac.item import StacScene

    info = sc.info
    out: dict[str, Any] = {}
    if is_dataarray(sc.source):  # no file: its values, coordinates and attributes by dask's tokenize
        out["dataarray"] = dataarray_token(sc.source)
    elif isinstance(sc.source, StacScene):  # STAC items: ids, asset hrefs and their ETags / sizes
        out["stac"] = stac_fingerprint(sc.source)
    elif os.path.exists(sc.path):
        st = os.stat(sc.path)
        out.update(path=os.path.abspath(sc.path), size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        out["path"] = sc.path
    out.update(width=info.width, height=info.height, count=info.count, dtype=info.dtype,
               transform=list(info.transform)[:6], crs_wkt=info.crs_wkt, bands=list(sc.bands),
               stretch=_jsonable(sc.stretch))
    return dict(_jsonable(out))


def generator_key(generator: MaskGenerator | None) -> str:
    """A description of a mask generator for the settings key.

    Args:
        generator: The caller's generator; None: the one the mode builds from the settings.

    Returns:
        Its ``journal_key``, else its class and ``repr`` (the class alone when the repr names an address).
    """
    if generator is None:
        return "model settings"
    explicit = getattr(generator, "journal_key", None)
    if isinstance(explicit, str):
        return explicit
    cls = f"{type(generator).__module__}.{type(generator).__qualname__}"
    text = repr(generator)
    return cls if " at 0x" in text else f"{cls}: {text}"


def tasks_digest(tasks: Sequence[ChipTask]) -> str:
    """A digest that changes when the chip plan or the prompts change.

    Args:
        tasks: The chip plan.

    Returns:
        SHA-256 (hex) of the tasks' windows and prompts.
    """
    h = hashlib.sha256()
    for t in tasks:
        h.update(repr((task_key(t), t.prompt_ids, t.prompts)).encode())
    return h.hexdigest()


def run_settings(flat: Mapping[str, Any], generator: MaskGenerator | None, tasks: Sequence[ChipTask]) -> dict[str, Any]:
    """The settings that change a run's results (the journal's settings key).

    Args:
        flat: Flat settings (the resolved dtype among them), without the neutral engine ones.
        generator: The caller's generator, or None (see `generator_key`).
        tasks: The chip plan (see `tasks_digest`).

    Returns:
        The settings as JSON values.
    """
    out = {k: _jsonable(v) for k, v in sorted(flat.items()) if k not in NEUTRAL_SETTINGS}
    out["generator"] = generator_key(generator)
    out["tasks"] = tasks_digest(tasks)
    return out


def task_key(task: ChipTask) -> str:
    """A chip task's key in the journal.

    Args:
        task: The chip task.

    Returns:
        Its chip id and window (scene pixels).
    """
    w = task.spec.window
    return f"{task.spec.chip_id}:{w.col_off},{w.row_off},{w.width},{w.height}"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if a != b:
            sa, sb = (s if len(s) <= 100 else s[:97] + "..." for s in (json.dumps(a), json.dumps(b)))
            out.append(f"{k}: {sa} in the journal, {sb} now")
    return out


class Journal:
    """Finished chip results of one run (scene + settings), in a SQLite file.

    ``get`` / ``put`` are what `geosam.run.loop.run` calls (one thread at a time).

    Args:
        path: The SQLite file (created with ``identity`` when missing).
        identity: ``{"scene": fingerprint, "settings": settings}`` (JSON values); an existing file must
            match it.

    Raises:
        ConfigError: The file is a folder, not a journal, or a journal of another run.
    """

    def __init__(self, path: str | os.PathLike[str], identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = {k: _jsonable(v) for k, v in identity.items()}
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"journal {self.path} is a directory; give a file path")
        from geosam.write.lock import output_lock

        self._lock: Any = output_lock(self.path)  # one run per journal: a second one is refused at once
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def _open(self) -> None:
        try:
            self.conn = sqlite3.connect(os.fspath(self.path), isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a killed process
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS chips (key TEXT PRIMARY KEY, result BLOB NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"journal {self.path} is not a geosam journal ({exc})") from exc
        try:
            self._check_identity()
        except BaseException:
            self.conn.close()
            raise

    def _check_identity(self) -> None:
        stored = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        want = {"format": json.dumps(FORMAT), **{k: json.dumps(v, sort_keys=True) for k, v in self.identity.items()}}
        if not stored:
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(want.items()))
            return
        if stored.get("format") != want["format"]:
            raise ConfigError(f"journal {self.path} has format {stored.get('format')}, this geosam writes {FORMAT}; "
                              "remove it to start again")
        problems: list[str] = []
        for part in self.identity:
            old = json.loads(stored.get(part, "null")) or {}
            new = self.identity[part]
            if old != new and part == "weights":
                problems.append("the model's weights changed (or the journal predates weight fingerprints)")
            elif old != new:
                diffs = _differences(old, new) if isinstance(old, dict) and isinstance(new, dict) else ["differs"]
                problems.append(f"{part}: " + "; ".join(diffs))
        if problems:
            raise ConfigError(
                f"journal {self.path} was written for another run ({' | '.join(problems)}); "
                "use another journal path or remove this one to start again"
            )

    # -- the engine's hook -------------------------------------------------
    def get(self, task: ChipTask) -> ChipResult | None:
        """The committed result of ``task``, or None.

        Args:
            task: The chip task.

        Returns:
            The result.
        """
        return self.get_key(task_key(task))

    def put(self, task: ChipTask, result: ChipResult) -> None:
        """Commit a result (chips that failed to read are not kept: a resumed run retries them).

        Args:
            task: The chip task.
            result: Its result.
        """
        if result.status == FAILED:
            return
        self.put_key(task_key(task), result)

    # -- any task payload (e.g. monitoring's per-object statistics, `geosam.run.tasks`) --
    def get_key(self, key: str) -> Any:
        """The committed payload under ``key``, or None.

        Args:
            key: The task's key.

        Returns:
            The unpickled payload.
        """
        row = self.conn.execute("SELECT result FROM chips WHERE key = ?", (key,)).fetchone()
        return None if row is None else pickle.loads(row[0])

    def put_key(self, key: str, payload: Any) -> None:
        """Commit a payload under ``key`` (one transaction: a killed run loses at most this one).

        Args:
            key: The task's key.
            payload: Any picklable result.
        """
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.execute("INSERT OR REPLACE INTO chips VALUES (?, ?)", (key, blob))

    def keys(self) -> set[str]:
        """Keys of the committed chips (see `task_key`)."""
        return {k for (k,) in self.conn.execute("SELECT key FROM chips")}

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chips").fetchone()[0])

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def journal_path(output: str | os.PathLike[str]) -> str:
    """Where a run resumed beside its output keeps its journal (``--resume``, ``segment_scenes(resume=True)``).

    Args:
        output: The run's output file.

    Returns:
        ``<output>.geosam-journal``.
    """
    return os.fspath(output) + JOURNAL_SUFFIX


def remove_journal(path: str | os.PathLike[str]) -> None:
    """Delete a journal file and SQLite's side files (``-wal``, ``-shm``).

    Args:
        path: The journal.
    """
    for suffix in ("", "-wal", "-shm"):
        p = Path(os.fspath(path) + suffix)
        if p.exists():
            p.unlink()


def recorded_dtype(path: str | os.PathLike[str]) -> str | None:
    """The compute dtype a journal's run recorded in its settings key, if any.

    Args:
        path: The journal file (need not exist).

    Returns:
        The dtype's name (e.g. ``"bfloat16"``), or None when there is no such journal or it recorded
        no concrete dtype.
    """
    if not Path(path).is_file():
        return None
    try:
        with closing(sqlite3.connect(f"file:{Path(path).resolve().as_posix()}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
    except sqlite3.DatabaseError:
        return None  # not a journal: opening it says so
    dtype = json.loads(row[0]).get("dtype") if row is not None else None
    return dtype if dtype in CONCRETE_DTYPES else None


def open_journal(path: str | os.PathLike[str], sc: Scene, flat: Mapping[str, Any], generator: MaskGenerator | None,
                 tasks: Sequence[ChipTask]) -> Journal:
    """The journal at ``path`` for this scene, these settings and chip tasks (created if missing).

    With the model of the settings (``generator`` None), the key also holds the fingerprint of its weights
    (`geosam.models.fingerprint.weights_fingerprint`): new weights in the same folder refuse the journal.

    Args:
        path: The journal file.
        sc: The open scene.
        flat: The run's flat settings (see `run_settings`).
        generator: The caller's generator, or None.
        tasks: The chip plan.

    Returns:
        The open journal.

    Raises:
        ConfigError: The file is a journal of another run (naming what differs), or not a journal.
    """
    identity: dict[str, Any] = {"scene": scene_fingerprint(sc), "settings": run_settings(flat, generator, tasks)}
    if generator is None:
        from geosam.models.fingerprint import weights_fingerprint

        identity["weights"] = weights_fingerprint(flat.get("model"))
    return Journal(path, identity)


__all__ = ["JOURNAL_SUFFIX", "Journal", "journal_path", "open_journal", "recorded_dtype", "remove_journal", "run_settings", "scene_fingerprint", "task_key"]
