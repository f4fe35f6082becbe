"""Settings of ``geosam monitor`` (objects through time, `geosam.monitor`): every default in one place.

Checked without pixels: a typo in an index name, a flag or a threshold fails before any file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geosam.config.bands import normalise_band_roles
from geosam.config.index import _pairs
from geosam.config.index_table import check_index
from geosam.config.parts import _put, int_at_least
from geosam.errors import ConfigError

#: Per-index change columns (``<index>_<name>``) that ``rank_by`` and the flags may use.
CHANGE_STATS = ("first", "last", "delta", "slope_per_year", "max_drop")


def _unit_interval(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _flag_pairs(key: str, value: Any, sign: int) -> tuple[tuple[str, float], ...]:
    """``'ndvi:-0.2'`` / ``{'ndvi': -0.2}`` / ``['ndvi=-0.2']`` -> (('ndvi', -0.2),), sign-checked."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, dict):
        value = [v.replace(":", "=", 1) if isinstance(v, str) else v for v in value]
    pairs = _pairs(key, value, float)
    for name, t in pairs:
        if t * sign <= 0:
            want = "negative (a fall, e.g. ndvi:-0.2)" if sign < 0 else "positive (a rise, e.g. ndvi:0.2)"
            raise ConfigError(f"{key} threshold of {name!r} must be {want}, got {t}")
    return pairs


@dataclass(frozen=True)
class MonitorConfig:
    """What ``geosam monitor`` computes per object and date, and how it judges change.

    Args:
        indices: index names (`geosam.index`) whose statistics are computed per object and date.
        band_roles: band roles of every date (a preset or ((role, 1-based band), ...)); None: file metadata.
            A band stack gives each date its own roles instead.
        reflectance_scale: reflectance = DN * scale + offset (None: as `geosam.config.bands`).
        reflectance_offset: see ``reflectance_scale``.
        index_thresholds: what ``<index>_frac_above`` counts against (default: the index's threshold).
        min_valid: a date where less than this fraction of an object's pixels is valid gives no value.
        nodata: a nodata value for every date's index bands (beside the files' own nodata and masks).
        fill_value: a pixel whose index bands all equal this value is invalid (e.g. 255 for white no-data).
        mask_band: a 1-based band (of every date) that marks invalid pixels, e.g. a Sentinel-2 SCL band.
        mask_values: the ``mask_band`` values that are invalid (e.g. SCL 3, 8, 9, 10); empty: 0 is invalid.
        chip_size_px: objects are read in groups, one read per chip of this size per date.
        loss: (index, threshold < 0) pairs: flag ``<index>_loss`` where ``<index>_delta <= threshold``.
        gain: (index, threshold > 0) pairs: flag ``<index>_gain`` where ``<index>_delta >= threshold``.
        rank_by: a column of the wide table to rank by (adds ``rank``, 1 = first).
        ascending: rank smallest first (e.g. the largest NDVI fall first with ``ndvi_delta``).
        match_iou: tracking: consecutive dates' objects match one-to-one when IoU >= this.
        cover_fraction: tracking: an object counts as a part of a split or merge when this fraction of its
            area lies in the other date's object.
    """

    indices: tuple[str, ...] = ("ndvi",)
    band_roles: str | tuple[tuple[str, int], ...] | None = None
    reflectance_scale: float | None = None
    reflectance_offset: float | None = None
    index_thresholds: tuple[tuple[str, float], ...] = ()
    min_valid: float = 0.5
    nodata: float | None = None
    fill_value: float | None = None
    mask_band: int | None = None
    mask_values: tuple[int, ...] = ()
    chip_size_px: int = 1024
    loss: Any = ()  # normalised to tuple[tuple[str, float], ...]
    gain: Any = ()
    rank_by: str | None = None
    ascending: bool = False
    match_iou: float = 0.3
    cover_fraction: float = 0.5

    def __post_init__(self) -> None:
        idx: Any = self.indices
        if isinstance(idx, str):
            idx = [t for t in idx.replace(" ", "").split(",") if t]
        if not idx:
            raise ConfigError("monitor needs at least one index (e.g. indices=('ndvi',) / --index ndvi)")
        _put(self, "indices", tuple(dict.fromkeys(check_index(n) for n in idx)))
        _put(self, "band_roles", normalise_band_roles(self.band_roles))
        _put(self, "index_thresholds", _pairs("index_thresholds", self.index_thresholds, float))
        _put(self, "min_valid", _unit_interval("min_valid", self.min_valid))
        _put(self, "match_iou", _unit_interval("match_iou", self.match_iou))
        _put(self, "cover_fraction", _unit_interval("cover_fraction", self.cover_fraction))
        int_at_least("chip_size_px", self.chip_size_px, 16)
        if self.mask_band is not None:
            int_at_least("mask_band", self.mask_band, 1)
        _put(self, "mask_values", tuple(int(v) for v in self.mask_values))
        if self.mask_values and self.mask_band is None:
            raise ConfigError("mask_values needs mask_band (the band that holds them, e.g. --mask-band 9)")
        _put(self, "loss", _flag_pairs("loss", self.loss, -1))
        _put(self, "gain", _flag_pairs("gain", self.gain, +1))
        for name, _ in self.loss + self.gain:
            if name not in self.indices:
                raise ConfigError(f"a loss/gain flag names {name!r}, which is not among the indices {self.indices}")
        if self.reflectance_scale is not None and not self.reflectance_scale > 0:
            raise ConfigError(f"reflectance_scale must be > 0, got {self.reflectance_scale}")

    def threshold(self, index: str, default: float) -> float:
        """What ``<index>_frac_above`` counts against."""
        return dict(self.index_thresholds).get(index, default)


__all__ = ["CHANGE_STATS", "MonitorConfig"]
