"""Output paths that never destroy inputs or earlier results.

* `check_outputs` -- before any work: refuse an output that is an input,
  two outputs that are the same file, a folder at an output path, a parent
  folder that cannot be created or written, and (unless ``overwrite``) an
  existing output. It creates nothing: missing folders are created by the
  writers, once the run has succeeded.
* `atomic_output` -- every writer writes into a temporary folder beside
  the target and moves the file(s) over the target only once the write has
  succeeded (``os.replace``, atomic on one file system). A failed or killed
  write leaves the previous output as it was; a killed one may leave the
  temporary folder (``.NAME.*.geosam-tmp``) behind, never a half-written target.

A Shapefile is a group of files (``.shp``, ``.shx``, ``.dbf``, ``.prj``...):
all are written under temporary names, then renamed one by one; sidecars of
the old file that the new write did not produce (a stale ``.qix`` index) are
removed after the renames.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from geosam.errors import ExportError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Files of a Shapefile, by extension (lower case); all may belong to one output.
SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")

#: Suffix of the temporary folders that `atomic_output` creates beside a target.
TMP_SUFFIX = ".geosam-tmp"


def output_files(path: PathLike) -> list[Path]:
    """The files a write to ``path`` may create: the path itself, plus the sidecars of a Shapefile."""
    p = Path(path)
    if p.suffix.lower() != ".shp":
        return [p]
    return [p] + [p.with_suffix(s) for s in SHAPEFILE_SIDECARS if s != ".shp"]


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: ``os.path.samefile`` when both exist, else equal resolved paths."""
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return _resolved(a) == _resolved(b)


def _is_local(path: object) -> bool:
    """Whether ``path`` names a local file: a path (not a URL, not ``/vsi...``); False for anything else (a STAC
    scene, a DataArray)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = os.fspath(path)
    return "://" not in p and not p.startswith("/vsi")


def local_input(scene: object) -> str | None:
    """The local file a scene is read from, for `check_not_input`; None when it is read from no local file.

    Args:
        scene: A path, an open rasterio dataset (its ``name``), or a scene read from elsewhere (an xarray
            DataArray, a STAC item or `geosam.stac.StacScene`, a URL): None.

    Returns:
        The path, or None.
    """
    if isinstance(scene, (str, os.PathLike)):
        return os.fspath(scene) if _is_local(scene) else None
    name = getattr(scene, "name", None)
    if isinstance(name, str) and hasattr(scene, "read") and hasattr(scene, "driver"):  # an open rasterio dataset
        return name if _is_local(name) else None
    return None


def _check_folder(name: str, path: Path) -> None:
    """ExportError naming the folder if ``path``'s parent is not a folder or cannot be created or written.

    A missing parent folder is created by the writer, only once the run has succeeded.
    """
    folder = _nearest_writable_folder(path, f"{name} {path}")
    if folder != _resolved(path).parent:
        log.info("%s %s: folder %s will be created when the run has succeeded", name, path, path.parent)


def _nearest_writable_folder(path: PathLike, label: str) -> Path:
    """The nearest existing folder above ``path``; ExportError (prefixed ``label``) unless it is a writable folder."""
    folder = _resolved(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"{label}: {folder} is not a folder; choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{label}: folder {folder} is not writable; choose another output path")
    return folder


def check_not_input(
    path: PathLike, inputs: Mapping[str, object] | Iterable[object], name: str = "output"
) -> None:
    """ExportError naming both if writing ``path`` (or a Shapefile's sidecars) would replace one of ``inputs``.

    inputs: a list of paths, or name -> path; None, remote paths and inputs that are not paths (a STAC scene,
    a DataArray: read from no local file an output could replace) are skipped.
    """
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else [("", p) for p in inputs]
    for f in output_files(path):
        for in_name, in_path in pairs:
            if not isinstance(in_path, (str, os.PathLike)) or not _is_local(in_path) or not same_file(f, in_path):
                continue
            what = f"input {in_name} {os.fspath(in_path)}" if in_name else f"input {os.fspath(in_path)}"
            raise ExportError(f"{name} {os.fspath(path)} would overwrite the {what}; choose another output path")


def check_outputs(
    outputs: Mapping[str, PathLike | None],
    inputs: Mapping[str, object] | Iterable[object] = (),
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Check output paths before any work; return them as Paths (None entries are dropped).

    outputs: what each path is for -> path, e.g. ``{"--output": "a.gpkg", "--label-raster": "l.tif"}``.
    inputs: files read by the run (a list, or name -> path for clearer messages); remote
        paths (URLs, ``/vsi...``) are not compared.
    overwrite: allow replacing existing outputs (the CLI's ``--overwrite``; replacing is
        still atomic, see `atomic_output`).

    Raises `ExportError` naming both paths when an output is an input (the same
    file by ``os.path.samefile`` or the same resolved path; a Shapefile's sidecars
    count) or when two outputs are the same file; naming the path when it is a
    folder, exists and ``overwrite`` is False, or its nearest existing parent folder is not
    writable. Creates and changes nothing.
    """
    inputs = dict(inputs) if isinstance(inputs, Mapping) else list(inputs)
    outs = {k: Path(v) for k, v in outputs.items() if v is not None}
    claimed: dict[Path, str] = {}
    for name, path in outs.items():
        check_not_input(path, inputs, name)
        files = output_files(path)
        for f in files:
            key = _resolved(f)
            if key in claimed:
                other = claimed[key]
                raise ExportError(f"{name} {path} and {other} are the same file; give each output its own path")
            claimed[key] = f"{name} {path}"
        if path.is_dir():
            raise ExportError(f"{name} {path} is a folder; give a file path (geosam never replaces a folder)")
        _check_folder(name, path)
        existing = [f for f in files if f.exists() or f.is_symlink()]
        if existing and not overwrite:
            raise ExportError(f"{name} {existing[0]}: file exists; pass --overwrite (overwrite=True) to replace it")
    return outs


def check_writable_path(path: PathLike) -> Path:
    """ExportError unless ``path`` can be written: not a folder, nearest existing parent folder writable.

    A missing parent folder is fine here (writers create it once they succeed). Creates nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file path (geosam never replaces a folder)")
    _nearest_writable_folder(path, str(path))
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{path}: cannot create folder {path.parent} ({exc.strerror or exc})") from exc
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ExportError(f"{path}: folder {path.parent} is not writable; choose another output path")


@contextmanager
def atomic_output(
    path: PathLike, *, copy_existing: bool = False, verify: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s name, in a new folder beside it; move it over ``path`` on success.

    The writer writes the temporary path (and, for a Shapefile, its sidecars). On a
    normal exit every file the writer created there replaces its namesake beside
    ``path`` (``os.replace``); on an exception the temporary folder is removed and
    ``path`` is untouched. ``copy_existing``: start from a copy of the existing file
    (to replace one layer of a GeoPackage). ``verify``: called with the temporary path once the
    writer is done, before the move; it raises (an `ExportError`) when the file is broken,
    e.g. `geosam.write.verify.raster_verifier` for a write GDAL cut short without raising.
    Missing parent folders are created; a
    folder at ``path`` is an `ExportError` (never replaced).
    """
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give a file path (geosam never replaces a folder)")
    _make_parent(target)
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    except OSError as exc:
        raise ExportError(f"{target}: cannot write in {target.parent} ({exc.strerror or exc})") from exc
    tmp = tmp_dir / target.name
    try:
        if copy_existing and target.exists():
            shutil.copyfile(target, tmp)
        yield tmp
        if verify is not None:
            verify(tmp)
        _move_into_place(tmp_dir, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # our own temporary folder, empty after a success


def _move_into_place(tmp_dir: Path, target: Path) -> None:
    """Rename the written files over their namesakes beside ``target`` (the main file last)."""
    written = sorted((p for p in tmp_dir.iterdir() if p.is_file()), key=lambda p: p.name == target.name)
    if not any(p.name == target.name for p in written):
        raise ExportError(f"{target}: the writer produced no file")
    moved = set()
    try:
        for p in written:
            os.replace(p, target.parent / p.name)
            moved.add(p.name)
    except OSError as exc:
        raise ExportError(f"{target}: cannot move the new file into place ({exc.strerror or exc})") from exc
    for stale in output_files(target):  # sidecars of an older Shapefile that no longer match it
        if stale.name not in moved and stale.is_file():
            stale.unlink()


__all__ = [
    "SHAPEFILE_SIDECARS",
    "TMP_SUFFIX",
    "atomic_output",
    "check_not_input",
    "check_outputs",
    "check_writable_path",
    "local_input",
    "output_files",
    "same_file",
]
