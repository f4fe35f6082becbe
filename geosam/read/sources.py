"""Scene sources from the command line's words: paths, glob patterns and ``@list`` files.

One rule for every command that takes several rasters (``geosam segment`` over many scenes,
``geosam monitor`` over dates):

- a glob pattern (``*``, ``?``, ``[``; not in a URL) is expanded and sorted; one that matches nothing
  is an error naming it;
- ``@list.txt`` holds one source per line (blank lines and ``#`` comments skipped); a relative entry
  is taken relative to the list's folder when it exists there, else as written (relative to the working
  folder), so a list kept beside its rasters works from anywhere;
- anything else (a path, a GDAL URL such as ``/vsicurl/https://...``, a URL) is kept as written, and
  an object that is not a path (a `geosam.stac.StacScene`) is kept as given.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geosam.errors import ConfigError


def _is_remote(text: str) -> bool:
    return "://" in text or text.startswith("/vsi")


def _list_entries(text: str) -> list[str]:
    listing = Path(text[1:])
    if not listing.is_file():
        raise ConfigError(f"{text}: list file {listing} does not exist")
    lines = [ln.strip() for ln in listing.read_text().splitlines()]
    out = []
    for entry in (ln for ln in lines if ln and not ln.startswith("#")):
        beside = listing.parent / entry
        keep_as_written = os.path.isabs(entry) or _is_remote(entry) or entry.startswith("@")
        out.append(entry if keep_as_written or not (glob.has_magic(entry) or beside.exists()) else str(beside))
    return out


def expand_sources(items: Sequence[Any], *, what: str = "scene", must_exist: bool = False,
                   unique: bool = True) -> list[Any]:
    """The sources that ``items`` name, in order (see the module's rule).

    Args:
        items: Paths, glob patterns, ``@list`` files, URLs, or scene objects (kept as given).
        what: What a source is, for messages (``"scene"``, ``"date scene"``).
        must_exist: Refuse a local path that does not exist (URLs are not checked).
        unique: Drop repeated sources (the first is kept).

    Returns:
        The sources: strings for paths and URLs, the objects as given.

    Raises:
        ConfigError: A list file that does not exist, a pattern that matches nothing, or (``must_exist``) a
            path that does not exist; the message names it.
    """
    out: list[Any] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):  # e.g. a STAC scene
            out.append(item)
            continue
        text = os.fspath(item)
        if text.startswith("@"):
            out.extend(expand_sources(_list_entries(text), what=what, must_exist=must_exist, unique=False))
        elif glob.has_magic(text) and not _is_remote(text):
            hits = sorted(glob.glob(text))
            if not hits:
                raise ConfigError(f"{text}: no {what} matches this pattern (no such file)")
            out.extend(hits)
        elif must_exist and not _is_remote(text) and not os.path.exists(text):
            raise ConfigError(f"{text}: no such file")
        else:
            out.append(text)
    return list(dict.fromkeys(out)) if unique else out


__all__ = ["expand_sources"]
