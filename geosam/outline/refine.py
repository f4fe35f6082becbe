"""`refine_outlines`: the outline options on any GeoDataFrame, and the hook that applies them to a run's batches.

Order: fill holes, smooth, regularize, simplify; all in a metric frame (`geosam.outline.metric`), so
every length is metres whatever the CRS. Objects whose outline did not change keep their exact
coordinates; a changed vertex that was not moved also comes back to its exact original coordinates, so
neighbours sharing it still do. Every output geometry is valid: one that is not falls back to the input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from geosam.config.outline import OutlineConfig
from geosam.geo import area_m2
from geosam.outline.chains import polygonal
from geosam.outline.coverage import fill_holes, simplify
from geosam.outline.metric import metric_frame
from geosam.outline.regular import regularize
from geosam.outline.smoothing import smooth

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)

#: smoothing's default standard deviation, in outline steps (the pixel size of traced masks)
SMOOTH_STEPS = 1.5


def outline_config(settings: OutlineConfig | Mapping[str, Any] | None = None, **kw: Any) -> OutlineConfig:
    """An `OutlineConfig` from a config, a dict of its fields and / or keywords (keywords win)."""
    if isinstance(settings, OutlineConfig):
        return OutlineConfig(**{**settings.settings(), **kw}) if kw else settings
    return OutlineConfig(**{**dict(settings or {}), **kw})


def typical_step_m(geoms: np.ndarray) -> float:
    """The median edge length of the exteriors (metres): the pixel size for outlines traced from masks."""
    idx = polygonal(geoms)
    if not len(idx):
        return 0.0
    rings = shapely.get_exterior_ring(shapely.get_parts(geoms[idx]))
    coords, which = shapely.get_coordinates(rings, return_index=True)
    d = np.hypot(*np.diff(coords, axis=0).T)
    d = d[(np.diff(which) == 0) & (d > 0)]
    return float(np.median(d)) if len(d) else 0.0


def refine_geometries(geoms: Any, crs: Any, cfg: OutlineConfig, *, smooth_m: float | None = None,
                      step_m: float | None = None) -> np.ndarray:
    """The refined geometries (map coordinates of ``crs``), aligned with ``geoms``.

    Args:
        geoms: geometries in map coordinates (non-polygons and empty ones pass through).
        crs: their CRS (None: coordinates in metres).
        cfg: what to do.
        smooth_m: the smoothing's standard deviation when ``cfg.smooth_m`` is None (default: 1.5 x
            `typical_step_m`).
        step_m: the outlines' pixel size for simplification's staircase cutting (default: `typical_step_m`).

    Returns:
        Valid geometries; unchanged objects are the input objects themselves.
    """
    orig = np.array(list(geoms), dtype=object)
    if not cfg.active or not len(orig):
        return orig
    frame = metric_frame(crs, orig)
    before = frame.to_metres(orig)
    gm = before
    if cfg.fill_holes_m2:
        gm = fill_holes(gm, cfg.fill_holes_m2)
    if cfg.smooth:
        sigma = cfg.smooth_m or smooth_m or SMOOTH_STEPS * typical_step_m(before)
        gm = smooth(gm, sigma)
    if cfg.regularize:
        gm = regularize(gm, allow_45=cfg.regularize_45)
    if cfg.simplify_m:
        traced = not (cfg.smooth or cfg.regularize)  # else no pixel staircase is left to cut
        step = (step_m if step_m is not None else typical_step_m(before)) if traced else 0.0
        gm = simplify(gm, cfg.simplify_m, step)
    changed = np.flatnonzero(~shapely.equals_exact(gm, before, tolerance=0.0) & ~shapely.is_empty(orig))
    out = orig.copy()
    if len(changed):
        out[changed] = _back(frame, gm[changed], before, orig)
        bad = changed[~shapely.is_valid(out[changed])]
        if len(bad):
            log.warning("%d refined outlines were not valid; they keep their input outline", len(bad))
            out[bad] = orig[bad]
    return out


def _back(frame: Any, geoms: np.ndarray, before: np.ndarray, orig: np.ndarray) -> np.ndarray:
    """``geoms`` (metres) -> map coordinates; vertices that were not moved get their exact input coordinates."""
    m = shapely.get_coordinates(before)
    lookup = dict(zip(map(bytes, m), shapely.get_coordinates(orig)))

    def inverse(c: np.ndarray) -> np.ndarray:
        res = frame.inverse(c)
        for k, row in enumerate(c):
            hit = lookup.get(bytes(row))
            if hit is not None:
                res[k] = hit
        return res

    return shapely.transform(geoms, inverse)


def refine_outlines(gdf: gpd.GeoDataFrame, settings: OutlineConfig | Mapping[str, Any] | None = None,
                    **kw: Any) -> gpd.GeoDataFrame:
    """A copy of ``gdf`` with refined outlines, e.g. ``refine_outlines(gdf, simplify_m=0.5)``.

    Works on any GeoDataFrame (any CRS: lengths are metres, see `geosam.outline.metric`). A table with an
    ``area_m2`` column gets it recomputed on the final outlines and the former values as ``area_raw_m2``
    right after it.

    Args:
        gdf: the objects.
        settings: an `OutlineConfig` or a dict of its fields.
        **kw: `OutlineConfig` fields (override ``settings``).

    Returns:
        A new GeoDataFrame (``gdf`` itself is not modified); ``attrs["geosam_outline"]`` holds what was done.

    Raises:
        ConfigError: a setting is out of range.
    """
    cfg = outline_config(settings, **kw)
    stats = OutlineStats(cfg)
    out = stats.apply(gdf)
    out.attrs["geosam_outline"] = stats.summary()
    return out


class OutlineStats:
    """Applies one `OutlineConfig` to batch after batch of a table, counting what it did.

    The smoothing scale (when not given) is measured on the first batch with objects, then kept for the run.
    """

    def __init__(self, cfg: OutlineConfig) -> None:
        self.cfg = cfg
        self.objects = self.changed = self.vertices_before = self.vertices_after = 0
        self.seconds = 0.0
        self.smooth_m: float | None = cfg.smooth_m

    def apply(self, gdf: gpd.GeoDataFrame, context: Sequence[Any] | np.ndarray = ()) -> gpd.GeoDataFrame:
        """A copy of one batch with refined outlines and ``area_m2`` / ``area_raw_m2`` (when it has ``area_m2``).

        ``context``: raw outlines of neighbouring batches (same CRS); those touching this batch are refined
        with it (and dropped), so an edge shared across batches is simplified or smoothed alike on both sides.
        """
        t0 = time.perf_counter()
        geoms = np.asarray(gdf.geometry.values, dtype=object)
        if self.cfg.smooth and self.smooth_m is None and len(polygonal(geoms)):
            self.smooth_m = SMOOTH_STEPS * typical_step_m(metric_frame(gdf.crs, geoms).to_metres(geoms))
        near = _touching(np.asarray(context, dtype=object), geoms) if len(context) and len(geoms) else np.zeros(0)
        both = np.concatenate([geoms, np.asarray(near, dtype=object)]) if len(near) else geoms
        new = refine_geometries(both, gdf.crs, self.cfg, smooth_m=self.smooth_m)[: len(geoms)]
        import geopandas as gpd

        out = gdf.copy()
        out[gdf.geometry.name] = gpd.GeoSeries(new, index=gdf.index, crs=gdf.crs)
        if "area_m2" in gdf.columns:
            areas = np.asarray(gdf["area_m2"], dtype=np.float64).copy()
            live = np.flatnonzero(~shapely.is_empty(new) & (new != geoms))
            if len(live) and gdf.crs is not None:
                areas[live] = area_m2(list(new[live]), gdf.crs)
            out["area_m2"] = areas
            out.insert(list(out.columns).index("area_m2") + 1, "area_raw_m2", np.asarray(gdf["area_m2"], dtype=np.float64))
        self.objects += len(geoms)
        self.changed += int((new != geoms).sum())
        self.vertices_before += int(shapely.get_num_coordinates(geoms).sum())
        self.vertices_after += int(shapely.get_num_coordinates(new).sum())
        self.seconds += time.perf_counter() - t0
        return out

    def summary(self) -> dict[str, Any]:
        """The settings applied and what they did (run statistics ``outline``)."""
        return {**self.cfg.settings(), "smooth_m_used": self.smooth_m if self.cfg.smooth else None,
                "objects": self.objects, "changed": self.changed, "vertices_before": self.vertices_before,
                "vertices_after": self.vertices_after, "seconds": round(self.seconds, 3)}


def _touching(context: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """The ``context`` outlines that touch or intersect any of ``geoms``."""
    live = context[~shapely.is_empty(context)]
    if not len(live):
        return live
    hit = shapely.STRtree(geoms[~shapely.is_empty(geoms)]).query(live, predicate="intersects")[0]
    return live[np.unique(hit)]


def refine_frames(frames: Iterable[gpd.GeoDataFrame], cfg: OutlineConfig,
                  summary: dict[str, Any]) -> Iterator[gpd.GeoDataFrame]:
    """A run's batches with refined outlines (``frames`` itself when no option is on); ``summary["outline"]``
    says what was done. One batch is read ahead: each batch is refined with the raw outlines of the
    batches before and after it that touch it, so neighbours in different batches keep their shared edge
    (memory: three batches)."""
    if not cfg.active:
        return iter(frames)
    return _refined(iter(frames), OutlineStats(cfg), summary)


def _refined(frames: Iterator[gpd.GeoDataFrame], stats: OutlineStats,
             summary: dict[str, Any]) -> Iterator[gpd.GeoDataFrame]:
    summary["outline"] = stats.summary()
    prev: np.ndarray = np.zeros(0, dtype=object)
    cur = next(frames, None)
    while cur is not None:
        nxt = next(frames, None)
        after = np.asarray(nxt.geometry.values, dtype=object) if nxt is not None else np.zeros(0, dtype=object)
        out = stats.apply(cur, np.concatenate([prev, after]))
        summary["outline"] = stats.summary()
        yield out
        prev, cur = np.asarray(cur.geometry.values, dtype=object), nxt


def outline_hook(cfg: OutlineConfig, summary: dict[str, Any],
                 then: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame] | None = None
                 ) -> Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame] | None:
    """A run's frame hook: refine each batch, then ``then`` (e.g. text mode's columns); ``summary["outline"]``
    says what was done (updated batch by batch). Returns ``then`` itself when no outline option is on."""
    if not cfg.active:
        return then
    stats = OutlineStats(cfg)
    summary["outline"] = stats.summary()

    def hook(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        out = stats.apply(gdf)
        summary["outline"] = stats.summary()
        return then(out) if then is not None else out

    return hook


def refine_table(gdf: gpd.GeoDataFrame, cfg: OutlineConfig, summary: dict[str, Any]) -> gpd.GeoDataFrame:
    """One whole table refined (prompt mode), ``summary["outline"]`` set; ``gdf`` itself when no option is on."""
    hook = outline_hook(cfg, summary)
    return hook(gdf) if hook is not None else gdf


__all__ = ["OutlineStats", "outline_config", "outline_hook", "refine_frames", "refine_geometries", "refine_outlines",
           "refine_table",
           "typical_step_m"]
