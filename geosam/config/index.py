"""Settings of spectral indices per object, filtering, ranking and the prompt prefilter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geosam.config.bands import normalise_band_roles
from geosam.config.index_table import INDICES, STATS, check_index
from geosam.config.parts import _put, int_at_least
from geosam.errors import ConfigError

_INDEX_COLUMNS_BASE = ("area_m2", "predicted_iou", "stability_score", "n_chips")


def _pairs(key: str, value: Any, kind: type) -> tuple[tuple[str, Any], ...]:
    """{'ndvi': 0.3} / 'ndvi=0.3' / ['ndvi=0.3', ...] / (('ndvi', 0.3),) -> (('ndvi', 0.3),)."""
    if isinstance(value, str):
        value = [value]
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    else:
        for v in value:
            if isinstance(v, str):
                name, sep, num = v.partition("=")
                if not sep:
                    raise ConfigError(f"{key} entries look like ndvi=0.3, got {v!r}")
                items.append((name, num))
            else:
                name, num = v
                items.append((name, num))
    try:
        return tuple(sorted((check_index(n), kind(x)) for n, x in items))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} needs index=number pairs, got {value!r}") from None


@dataclass(frozen=True)
class IndexConfig:
    """Spectral indices per object, filtering, ranking and the prompt prefilter (`geosam.index`).

    band_roles: a preset name or ((role, 1-based band), ...); None: file metadata.
    reflectance_scale / _offset: reflectance = DN * scale + offset (None: file metadata,
        preset, else 1/255 for uint8 and 1 otherwise).
    indices: index names whose statistics become columns.
    index_thresholds: what ``{index}_frac_above`` counts against.
    min_index: keep objects with ``{index}_mean >= value``.
    rank_by: a column, sorted descending (adds ``rank``); top_k keeps the best.
    prefilter: decode only prompts near pixels passing ``min_index``.
    prefilter_radius_px: prefilter neighbourhood (px), or "grid" (one point-grid spacing).
    """

    band_roles: str | tuple[tuple[str, int], ...] | None = None
    reflectance_scale: float | None = None
    reflectance_offset: float | None = None
    indices: tuple[str, ...] = ()
    index_thresholds: tuple[tuple[str, float], ...] = ()
    min_index: tuple[tuple[str, float], ...] = ()
    rank_by: str | None = None
    top_k: int | None = None
    prefilter: bool = False
    prefilter_radius_px: int | str = 2

    def __post_init__(self) -> None:
        _put(self, "band_roles", normalise_band_roles(self.band_roles))
        idx: Any = self.indices
        if isinstance(idx, str):
            idx = [t for t in idx.replace(" ", "").split(",") if t]
        _put(self, "indices", tuple(dict.fromkeys(check_index(n) for n in idx)))
        _put(self, "index_thresholds", _pairs("index_thresholds", self.index_thresholds, float))
        _put(self, "min_index", _pairs("min_index", self.min_index, float))
        if self.rank_by is not None:
            known = set(_INDEX_COLUMNS_BASE) | {f"{n}_{s}" for n in INDICES for s in STATS}
            if self.rank_by not in known:
                raise ConfigError(f"rank_by must be one of {sorted(known)}, got {self.rank_by!r}")
        if self.top_k is not None:
            int_at_least("top_k", self.top_k, 1)
            if self.rank_by is None:
                raise ConfigError("top_k needs rank_by (e.g. rank_by='ndvi_mean')")
        if self.prefilter and not self.min_index:
            raise ConfigError("prefilter needs min_index (e.g. min_index={'ndvi': 0.3}): it drops prompts below it")
        rad = self.prefilter_radius_px
        if isinstance(rad, str) and rad.strip().lower() == "grid":
            _put(self, "prefilter_radius_px", "grid")
        else:
            try:
                ok = int(rad) == float(rad) and int(rad) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"prefilter_radius_px must be an integer >= 0 or 'grid', got {rad!r}")
            _put(self, "prefilter_radius_px", int(rad))
        if self.reflectance_scale is not None and not self.reflectance_scale > 0:
            raise ConfigError(f"reflectance_scale must be > 0, got {self.reflectance_scale}")

    def names(self) -> tuple[str, ...]:
        """Indices a run needs: ``indices``, then those named by ``min_index`` and ``rank_by``."""
        names = list(self.indices) + [n for n, _ in self.min_index]
        if self.rank_by is not None and self.rank_by not in _INDEX_COLUMNS_BASE:
            head = self.rank_by.split("_", 1)[0]
            if head in INDICES:
                names.append(head)
        return tuple(dict.fromkeys(names))


__all__ = ["IndexConfig"]
