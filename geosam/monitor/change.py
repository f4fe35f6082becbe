"""Change per object from its series of means: first, last, delta, slope per year, largest drop; flags; rank.

For each index, over the dates where the object has a value (status ``ok``), oldest first:

=============================  ==========================================================================
column                         meaning
=============================  ==========================================================================
``<index>_first``              the first value
``<index>_last``               the last value
``<index>_delta``              last - first (NaN with fewer than two values)
``<index>_slope_per_year``     least-squares slope of value against time in years (365.25 days)
``<index>_max_drop``           the largest fall between consecutive values (> 0; 0 when it never falls)
``<index>_max_drop_date``      the date (``YYYY-MM-DD``) of the value after that fall ('' when none)
``<index>_n_dates``            how many dates have a value
``<index>_loss``/``_gain``     flags: ``delta <= loss threshold`` / ``delta >= gain threshold``
=============================  ==========================================================================

``rank`` orders the objects by any numeric column (NaN last): 1 is the first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from geosam.errors import ConfigError

Arr = np.ndarray


def series_change(values: Arr, dates: Sequence[dt.date], name: str) -> dict[str, Arr]:
    """Change columns of one index from its (N objects, D dates) means (NaN = no value), dates oldest first."""
    n, d = values.shape
    t = np.array([(x - dates[0]).days / 365.25 for x in dates], dtype=np.float64)
    ok = np.isfinite(values)
    cnt = ok.sum(axis=1)
    first_j = np.argmax(ok, axis=1)
    last_j = d - 1 - np.argmax(ok[:, ::-1], axis=1)
    rows = np.arange(n)
    first = np.where(cnt > 0, values[rows, first_j], np.nan)
    last = np.where(cnt > 0, values[rows, last_j], np.nan)
    y = np.where(ok, values, 0.0)
    tt = np.where(ok, t[None, :], 0.0)
    st, sy, sty, stt = tt.sum(1), y.sum(1), (tt * y).sum(1), (tt * tt).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = cnt * stt - st * st
        slope = np.where((cnt >= 2) & (den > 0), (cnt * sty - st * sy) / np.where(den > 0, den, 1.0), np.nan)
    drop = np.zeros(n)
    drop_j = np.full(n, -1)
    prev = np.full(n, np.nan)
    for j in range(d):
        cur = values[:, j]
        fall = prev - cur
        better = np.isfinite(fall) & (fall > drop)
        drop[better], drop_j[better] = fall[better], j
        prev = np.where(np.isfinite(cur), cur, prev)
    labels = np.array([x.isoformat() for x in dates] + [""], dtype=object)
    return {
        f"{name}_first": first,
        f"{name}_last": last,
        f"{name}_delta": np.where(cnt >= 2, last - first, np.nan),
        f"{name}_slope_per_year": slope,
        f"{name}_max_drop": np.where(cnt >= 2, drop, np.nan),
        f"{name}_max_drop_date": labels[drop_j],
        f"{name}_n_dates": cnt.astype(np.int64),
    }


def flags(columns: dict[str, Arr], loss: Sequence[tuple[str, float]], gain: Sequence[tuple[str, float]]
          ) -> dict[str, Arr]:
    """``<index>_loss`` (delta <= threshold) and ``<index>_gain`` (delta >= threshold) as bool (NaN: False)."""
    out = {}
    with np.errstate(invalid="ignore"):
        for name, t in loss:
            out[f"{name}_loss"] = np.asarray(columns[f"{name}_delta"] <= t, dtype=bool)
        for name, t in gain:
            out[f"{name}_gain"] = np.asarray(columns[f"{name}_delta"] >= t, dtype=bool)
    return out


def rank_table(table: Any, rank_by: str, ascending: bool) -> Any:
    """``table`` sorted by ``rank_by`` (NaN last) with ``rank`` 1..N; ConfigError for an unknown column."""
    if rank_by not in table.columns:
        raise ConfigError(f"cannot rank by {rank_by!r}: the table has no such column")
    order = table.sort_values(rank_by, ascending=ascending, na_position="last", kind="stable").index
    table = table.loc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1, dtype=np.int64)
    return table


__all__ = ["flags", "rank_table", "series_change"]
