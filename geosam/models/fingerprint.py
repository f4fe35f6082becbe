"""A cheap fingerprint of a model's weights, so that a resumed run never mixes two models.

``--resume`` replays chips from a journal whose key names the model. A model *name* is not enough:
new weights copied into the same folder (or a hub checkpoint updated in the cache) keep the name.
`weights_fingerprint` describes the files the name resolves to:

* a local folder: every weight or config file in it (``*.safetensors``, ``*.bin``, ``*.pth``,
  ``*.pt``, ``*.ckpt``, ``*.json``), each by size (bytes), modification time (ns) and the SHA-256
  of its first and last 64 KiB -- the safetensors header (tensor names, shapes, offsets), the
  config, and the last tensors' bytes -- so a copy that keeps size and mtime (``cp -p``,
  ``rsync -a``) but changes the weights is still seen, without reading gigabytes;
* a local file (a ``.pth`` checkpoint): the same for that file;
* a hub id: the cached snapshot folder (its path holds the commit hash), fingerprinted as a folder;
  a checkpoint not in the cache: its name only (it is downloaded, by commit, at load);
* a built-in name (``litemedsam``): its name and geosam's version (the weights ship with geosam).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

#: Files of a model folder that the fingerprint covers (lower-case suffixes).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json")
#: Bytes hashed at each end of a weight file.
EDGE_BYTES = 64 * 1024


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size (bytes), mtime (ns) and SHA-256 of the first and last ``EDGE_BYTES`` of one file."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if st.st_size > 2 * EDGE_BYTES:
            f.seek(st.st_size - EDGE_BYTES)
        h.update(f.read(EDGE_BYTES))
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_edges": h.hexdigest()}


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """`file_fingerprint` of every weight / config file under ``folder`` (relative path -> fingerprint)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    return {p.relative_to(folder).as_posix(): file_fingerprint(p.resolve()) for p in files}


def _hub_snapshot(name: str) -> Path | None:
    """The cached snapshot folder of hub checkpoint ``name``, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return None
    try:
        hit = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a hub id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def weights_fingerprint(model: Any) -> dict[str, Any]:
    """What identifies the weights ``model`` (a folder, a file, a hub id or a built-in name) loads; see the module."""
    from geosam import __version__

    if model is None:
        return {}
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else repr(model)
    path = Path(name).expanduser()
    if path.is_dir():
        return {"folder": str(path.resolve()), "files": folder_fingerprint(path)}
    if path.is_file():
        return {"file": str(path.resolve()), **file_fingerprint(path)}
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        return {"hub": name, "snapshot": str(snapshot), "files": folder_fingerprint(snapshot)}
    return {"name": name, "geosam": __version__}


__all__ = ["file_fingerprint", "folder_fingerprint", "weights_fingerprint"]
