"""geosam.monitor.track: statuses and track ids on synthetic objects; tracked monitoring end to end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT / "data" / "ftw_sentinel2_rgbn_2dates.tif"


def _frame(boxes, crs="EPSG:32633", x0=360000.0, y0=5347000.0):
    import geopandas as gpd
    from shapely.geometry import box

    return gpd.GeoDataFrame(geometry=[box(x0 + a, y0 + b, x0 + c, y0 + d) for a, b, c, d in boxes], crs=crs)


def test_match_dates_statuses():
    from geosam.monitor.track import match_dates

    a = _frame([(0, 0, 100, 100), (200, 0, 300, 100), (400, 0, 500, 100), (600, 0, 700, 100),
                (800, 0, 850, 100), (850, 0, 900, 100)]).geometry.values
    b = _frame([(5, 5, 105, 105),                        # a0 moved a little: persisted
                (200, 0, 248, 100), (252, 0, 300, 100),  # a1 split in two
                                                         # a2 cut: vanished
                (610, 0, 700, 90),                       # a3 shrunk: persisted
                (800, 0, 900, 100),                      # a4 + a5 merged
                (1000, 0, 1100, 100)]).geometry.values  # appeared
    m = match_dates(a, b, match_iou=0.3, cover_fraction=0.5)
    assert m.status.tolist() == ["persisted", "split", "split", "persisted", "merged", "appeared"]
    assert m.parent[0] == 0 and m.parent[3] == 3 and m.parent[5] == -1
    assert sorted([m.parent[1], m.parent[2]]) == [-1, 1]  # one half continues a1's track
    assert m.parent[4] in (4, 5)
    assert m.vanished.tolist() == [2]  # a4/a5 merged, not vanished


def test_iou_threshold_is_the_rule():
    from geosam.monitor.track import match_dates

    a = _frame([(0, 0, 100, 100)]).geometry.values
    b = _frame([(60, 0, 160, 100)]).geometry.values  # IoU 40 / 160 = 0.25
    assert match_dates(a, b, match_iou=0.3).status.tolist() == ["appeared"]
    assert match_dates(a, b, match_iou=0.2).status.tolist() == ["persisted"]


def test_track_objects_three_dates():
    from geosam.monitor.track import track_objects, track_summary

    d = [dt.date(2024, 1, 1), dt.date(2024, 6, 1), dt.date(2025, 1, 1)]
    f1 = _frame([(0, 0, 100, 100), (200, 0, 300, 100)])
    f2 = _frame([(0, 0, 100, 100)], crs="EPSG:32633")
    f3 = _frame([(0, 0, 50, 100), (500, 0, 600, 100)]).to_crs("EPSG:4326")  # another CRS: reprojected
    t = track_objects([f1, f2, f3], d)
    rows = {(r.track_id, r.date): r.status for r in t.itertuples()}
    assert rows[(1, "2024-01-01")] == "appeared" and rows[(1, "2024-06-01")] == "persisted"
    assert rows[(2, "2024-06-01")] == "vanished"
    assert rows[(1, "2025-01-01")] == "persisted"  # half of it: IoU 0.5
    assert rows[(3, "2025-01-01")] == "appeared"
    s = track_summary(t).set_index("track_id")
    np.testing.assert_allclose(s.loc[1, "area_first_m2"], 10000.0)
    np.testing.assert_allclose(s.loc[1, "area_change_m2"], -5000.0, rtol=1e-3)
    assert s.loc[2, "last_status"] == "vanished"


def test_tracked_monitoring_wide_table_per_track():
    """Each date's own objects: one wide row per track; a vanished tree has no later value and its status."""
    import rasterio

    from geosam.monitor.series import monitor_objects

    with rasterio.open(S2) as src:
        b = src.bounds
    f1 = _frame([(500, 500, 700, 700), (1000, 1000, 1300, 1200)], x0=b.left, y0=b.bottom)
    f2 = _frame([(510, 500, 700, 690)], x0=b.left, y0=b.bottom)
    r = monitor_objects(str(S2), [f1, f2], stack={"2021-06-01": "red=1,green=2,blue=3,nir=4",
                                                   "2021-09-01": "red=5,green=6,blue=7,nir=8"})
    w = r.wide.sort_values("track_id")
    assert w["track_id"].tolist() == [1, 2]
    assert w["status_2021-09-01"].tolist() == ["ok", "absent"]
    assert np.isfinite(w["ndvi_mean_2021-09-01"].iloc[0]) and np.isnan(w["ndvi_mean_2021-09-01"].iloc[1])
    assert set(r.tracks["status"]) == {"appeared", "persisted", "vanished"}
    assert r.long["track_id"].tolist() == [1, 2, 1]
