"""Date scenes in: rasters of one place at several dates, each with its date and band roles.

Where the scenes come from (`date_scenes`):

* files -- paths, glob patterns (``'s2/*.tif'``) and ``@list`` files (one path per line, ``#`` comments);
* one multi-date band stack -- one file and ``stack={date: roles}``, e.g. the shipped Sentinel-2 sample
  (``{'2021-06-01': 'red=1,green=2,blue=3,nir=4', '2021-09-01': 'red=5,green=6,blue=7,nir=8'}``); a role
  ``mask=N`` names that date's cloud/quality band;
* an xarray DataArray with a ``time`` dimension (each time step a (band, y, x) scene, read in place);
* STAC: the ``DatedScene`` objects of `geosam.stac.search.dated_scenes` (one day's mosaic each, clouds
  masked from its classification asset), `geosam.stac.StacScene` objects (dated by their items' solar
  day), or item JSON files / URLs and ItemCollection files (read as ``dated_scenes`` with the default bands).

A file's date is, in order: the ``dates`` given (``--dates``), the raster's acquisition-date tag
(`DATE_TAGS`, e.g. ``TIFFTAG_DATETIME``), an ISO date in the file name (``d1_2024-04-01.tif``, or
``20240401`` as in Sentinel-2 product names); else `DateError` names the file. Dates must be unique.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geosam.config.bands import normalise_band_roles
from geosam.errors import ConfigError
from geosam.read.sources import expand_sources

#: Raster tags that hold an acquisition date, in the order they are tried (any GDAL metadata domain listed).
DATE_TAGS = (
    "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME",
    "DATATAKE_SENSING_START", "TIFFTAG_DATETIME", "DATETIME", "datetime",
)
#: GDAL metadata domains searched for `DATE_TAGS`.
TAG_DOMAINS = (None, "IMAGERY")

_ISO = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
_COMPACT = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")
_TEXT = re.compile(r"^\s*(\d{4})[-:/](\d{2})[-:/](\d{2})(?:[T ].*)?\s*$|^\s*(\d{4})(\d{2})(\d{2})(?:T.*)?\s*$")


class DateError(ConfigError):
    """A scene's date is missing, unparseable or repeated; the message names the scene."""


@dataclass(frozen=True, eq=False)
class DateScene:
    """One date of a monitoring run.

    Args:
        date: the acquisition date.
        source: a raster path or a (band, y, x) xarray DataArray.
        band_roles: this date's band roles (normalised), or None for the run's.
        mask_band: this date's 1-based mask band, or None for the run's.
        name: how messages name this date's scene.
        date_from: where the date came from (``--dates``, a tag name, ``file name``, ``band stack``, ``time``).
    """

    date: dt.date
    source: Any
    band_roles: Any = None
    mask_band: int | None = None
    name: str = ""
    date_from: str = ""

    @property
    def label(self) -> str:
        """The date as ``YYYY-MM-DD`` (the column suffix of the wide table)."""
        return self.date.isoformat()


def parse_date(text: Any, what: str) -> dt.date:
    """A date from ``YYYY-MM-DD``, ``YYYY:MM:DD hh:mm:ss`` (TIFF), ``YYYYMMDD``, an ISO datetime or a date object.

    Raises:
        DateError: naming ``what`` and the text.
    """
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    if hasattr(text, "astype") and str(getattr(text, "dtype", "")).startswith("datetime64"):
        return dt.date.fromisoformat(str(text.astype("datetime64[D]")))
    m = _TEXT.match(str(text))
    if m is not None:
        y, mo, d = (int(g) for g in (m.groups()[:3] if m.group(1) else m.groups()[3:]))
        try:
            return dt.date(y, mo, d)
        except ValueError:
            pass
    raise DateError(f"{what}: cannot read a date from {str(text)!r}; write dates as YYYY-MM-DD (e.g. 2024-04-01)")


def date_from_name(path: str) -> dt.date | None:
    """The ISO (``2024-04-01``) or compact (``20240401``) date in a file name, or None (the last one wins)."""
    name = Path(path).name
    for pattern in (_ISO, _COMPACT):
        for m in reversed(list(pattern.finditer(name))):
            try:
                return dt.date(*(int(g) for g in m.groups()))
            except ValueError:
                continue
    return None


def date_from_tags(path: str, ds: Any) -> tuple[dt.date, str] | None:
    """(date, tag name) from an open dataset's first acquisition-date tag (`DATE_TAGS`), or None."""
    for domain in TAG_DOMAINS:
        try:
            tags = ds.tags(ns=domain) if domain else ds.tags()
        except Exception:  # noqa: BLE001 - a domain a driver does not know
            tags = {}
        for key in DATE_TAGS:
            if key in tags and str(tags[key]).strip():
                return parse_date(tags[key], f"{path}: tag {key}"), key
    return None


def _file_date(path: str) -> tuple[dt.date, str]:
    from geosam.read.gdal import gdal_env, open_raster

    with gdal_env(path), open_raster(path) as ds:
        tagged = date_from_tags(path, ds)
    if tagged is not None:
        return tagged[0], f"tag {tagged[1]}"
    named = date_from_name(path)
    if named is not None:
        return named, "file name"
    raise DateError(
        f"{path}: no date found (no acquisition-date tag such as TIFFTAG_DATETIME, no YYYY-MM-DD in the file name); "
        "give the dates with --dates / dates=[...]"
    )


def _stack(scene: Any, stack: Mapping[Any, Any], name: str) -> list[DateScene]:
    out = []
    for key, roles in stack.items():
        date = parse_date(key, f"{name}: band stack date")
        mask_band = None
        if isinstance(roles, str) and "mask=" in roles.replace(" ", ""):
            parts = [p for p in roles.replace(" ", "").split(",") if p]
            masks = [p for p in parts if p.startswith("mask=")]
            roles = ",".join(p for p in parts if not p.startswith("mask="))
            mask_band = int(masks[0].partition("=")[2])
        elif isinstance(roles, Mapping) and "mask" in roles:
            roles = dict(roles)
            mask_band = int(roles.pop("mask"))
        out.append(DateScene(date, scene, normalise_band_roles(roles), mask_band, name, "band stack"))
    return out


def _dataarray_dates(da: Any) -> list[DateScene]:
    from geosam.read.dataarray import describe

    tdim = next((d for d in da.dims if str(d).lower() in ("time", "t", "date")), None)
    if tdim is None:
        raise DateError(f"{describe(da)}: a DataArray of several dates needs a 'time' dimension, got {da.dims}")
    out = []
    for k, t in enumerate(da.coords[tdim].values if tdim in da.coords else range(da.sizes[tdim])):
        date = parse_date(t, f"{describe(da)}: time[{k}]")
        out.append(DateScene(date, da.isel({tdim: k}), None, None, f"{describe(da)} time {date}", "time"))
    return out


def _is_dated(obj: Any) -> bool:
    from geosam.stac import StacScene

    return hasattr(obj, "date") and isinstance(getattr(obj, "scene", None), StacScene)


def _is_stac_input(scenes: Any) -> bool:
    """Whether ``scenes`` is STAC input (see the module docstring): dated scenes, scenes, items or collections."""
    from geosam.stac import is_stac

    items = list(scenes) if isinstance(scenes, (list, tuple)) else [scenes]
    return bool(items) and all(_is_dated(s) or is_stac(s) for s in items)


def _stac_dates(scenes: Any) -> list[DateScene]:
    """One `DateScene` per STAC date (`_is_stac_input`); item and collection files are read as ``dated_scenes``."""
    from geosam.stac import StacScene
    from geosam.stac.search import DatedScene, dated_scenes, solar_day

    items = list(scenes) if isinstance(scenes, (list, tuple)) else [scenes]
    files = [s for s in items if not (_is_dated(s) or isinstance(s, StacScene))]
    if files and len(files) != len(items):
        raise ConfigError("give STAC (dated) scenes or item / collection files, not a mix")
    dated = dated_scenes(files) if files else [s if _is_dated(s) else DatedScene(solar_day(s.items[0]), s)
                                               for s in items]
    return [DateScene(d.date, d.scene, None, None, d.scene.label, "STAC") for d in dated]


def _already_dated(scenes: Any, dates: Sequence[Any] | None, stack: Mapping[Any, Any] | None) -> bool:
    """Whether ``scenes`` are `DateScene` values this module made (then ``dates`` and ``stack`` must be unset)."""
    if not (isinstance(scenes, (list, tuple)) and scenes and all(isinstance(s, DateScene) for s in scenes)):
        return False
    if stack is not None or dates is not None:
        raise ConfigError("date scenes bring their dates: leave dates and stack unset")
    return True


def date_scenes(scenes: Any, dates: Sequence[Any] | None = None, stack: Mapping[Any, Any] | None = None
                ) -> list[DateScene]:
    """The run's dates, sorted by date.

    Args:
        scenes: paths / globs / ``@list`` files, one path, a DataArray with a ``time`` dimension, or STAC
            dated scenes / scenes / item and ItemCollection files (see the module docstring); or `DateScene`
            values already made by this function (returned as they are).
        dates: one date per file, in the order the files are listed (overrides tags and names).
        stack: for one multi-date file: {date: that date's band roles}, e.g. ``{'2021-06-01': 'red=1,nir=4'}``.

    Returns:
        One `DateScene` per date, oldest first.

    Raises:
        DateError: a date missing, unparseable or given twice (naming the scenes), or ``dates`` of the wrong length.
    """
    from geosam.read.dataarray import is_dataarray

    if _already_dated(scenes, dates, stack):
        return list(scenes)  # already checked and sorted: no file opened again
    if is_dataarray(scenes):
        if stack is not None or dates is not None:
            raise ConfigError("a DataArray brings its dates in its 'time' coordinate: leave dates and stack unset")
        out = _dataarray_dates(scenes)
    elif _is_stac_input(scenes):
        if stack is not None or dates is not None:
            raise ConfigError("STAC scenes bring their dates (the items' solar day): leave dates and stack unset")
        out = _stac_dates(scenes)
    else:
        items = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
        paths = expand_sources(items, what="date scene", must_exist=True, unique=False)
        if not paths:
            raise ConfigError("monitor needs at least one scene")
        if stack is not None:
            if len(paths) != 1:
                raise ConfigError(f"a band stack is one file; got {len(paths)} scenes ({', '.join(paths[:3])} ...)")
            out = _stack(paths[0], stack, paths[0])
        elif dates is not None:
            if len(dates) != len(paths):
                raise DateError(f"--dates gives {len(dates)} dates for {len(paths)} scenes; give one date per scene")
            out = [DateScene(parse_date(d, f"{p}: --dates"), p, None, None, p, "--dates") for p, d in zip(paths, dates)]
        else:
            out = []
            for p in paths:
                d, src = _file_date(p)
                out.append(DateScene(d, p, None, None, p, src))
    seen: dict[dt.date, DateScene] = {}
    for s in out:
        if s.date in seen:
            raise DateError(f"date {s.date} is given twice: {seen[s.date].name} ({seen[s.date].date_from}) and "
                            f"{s.name} ({s.date_from}); each date may appear once")
        seen[s.date] = s
    return sorted(out, key=lambda s: s.date)


__all__ = ["DATE_TAGS", "DateError", "DateScene", "date_from_name", "date_from_tags", "date_scenes",
           "parse_date"]
