"""Compose the stages: read chips -> generate masks -> stitch -> GeoDataFrame.

``cli/`` and (later) the Dask runner only call this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geosam.config import SegmentConfig
from geosam.io import ReadConfig, Scene
from geosam.masks import ChipMasks, MaskGenerator
from geosam.stitch import StitchedObject, Stitcher, area_m2, pixel_to_map

log = logging.getLogger(__name__)

COLUMNS = ["id", "area_m2", "predicted_iou", "stability_score", "n_chips", "model"]


@dataclass
class RunStats:
    """What a run did, for the summary line and ``gdf.attrs['geosam']``."""

    chips_total: int = 0
    chips_skipped_invalid: int = 0
    chips_empty: int = 0
    masks: int = 0
    objects: int = 0
    seconds: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings_s[stage] = self.timings_s.get(stage, 0.0) + seconds

    def summary(self) -> str:
        return (
            f"{self.objects} objects from {self.masks} masks in {self.chips_total} chips "
            f"({self.chips_skipped_invalid} skipped as invalid, {self.chips_empty} without masks) "
            f"in {self.seconds:.1f} s"
        )


def make_mask_generator(cfg: SegmentConfig) -> MaskGenerator:
    """The SAM segment-everything generator configured by ``cfg``."""
    from geosam.amg import SamMaskGenerator

    return SamMaskGenerator(
        cfg.model,
        device=cfg.device,
        dtype=cfg.dtype,
        points_per_side=cfg.points_per_side,
        points_per_batch=cfg.points_per_batch,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
        stability_score_offset=cfg.stability_score_offset,
        box_nms_thresh=cfg.box_nms_thresh,
        min_mask_region_area=cfg.min_mask_region_area,
    )


def _progress(iterable: Any, total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="chip", leave=False)


#: per-object attribute hook: (object with final pixel mask, open scene) -> extra columns
ObjectHook = Callable[[StitchedObject, Scene], dict[str, Any]]


def _finish(objs: list[StitchedObject], hooks: list[ObjectHook], sc: Scene) -> list[StitchedObject]:
    """Compute per-object attributes while the object's pixels are at hand, then drop them."""
    for o in objs:
        for hook in hooks:
            o.extra.update(hook(o, sc))
        o.mask = None
    return objs


def segment_scene(
    scene: Any,
    mask_generator: MaskGenerator | None = None,
    *,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    **settings: Any,
):  # -> geopandas.GeoDataFrame
    """Segment every object in a scene into one polygon each.

    scene: a raster path or an open rasterio dataset.
    mask_generator: anything with ``name`` and ``generate(chip) -> ChipMasks``;
        default is SAM segment-everything built from the settings.
    settings: any :class:`~geosam.config.SegmentConfig` field, e.g.
        ``chip_size_px=512, overlap_px=64, bands=(3, 2, 1), fill_value=255``.

    Returns a GeoDataFrame in the scene CRS (or ``to_crs``) with columns
    ``id, area_m2, predicted_iou, stability_score, n_chips, model, geometry``;
    ``gdf.attrs['geosam']`` holds the run statistics.
    """
    cfg = (config or SegmentConfig()).with_overrides(**settings)
    hooks = list(object_hooks or [])
    stats = RunStats()
    t_start = time.perf_counter()
    read_cfg = ReadConfig(
        bands=cfg.bands,
        fill_value=cfg.fill_value,
        fill_tolerance=cfg.fill_tolerance,
        stretch_percentiles=cfg.stretch_percentiles,
    )
    with Scene(scene, read_cfg) as sc:
        if mask_generator is None:
            mask_generator = make_mask_generator(cfg)
        specs = sc.chip_specs(cfg.chip_size_px, cfg.overlap_px)
        stats.chips_total = len(specs)
        stitcher = Stitcher(specs, match_iou=cfg.match_iou)
        finished: list[StitchedObject] = []
        for spec in _progress(specs, len(specs), cfg.progress, "segment"):
            t0 = time.perf_counter()
            chip = sc.read_chip(spec)
            stats.add_time("read", time.perf_counter() - t0)
            if not chip.valid.any():
                stats.chips_skipped_invalid += 1
                stitcher.skip(spec)
                continue
            t0 = time.perf_counter()
            masks = mask_generator.generate(chip)
            stats.add_time("generate", time.perf_counter() - t0)
            masks = _clean_masks(masks, chip.valid)
            if len(masks) == 0:
                stats.chips_empty += 1
            stats.masks += len(masks)
            t0 = time.perf_counter()
            stitcher.add(spec, masks)
            finished.extend(_finish(stitcher.pop_finished(), hooks, sc))
            stats.add_time("stitch", time.perf_counter() - t0)
        t0 = time.perf_counter()
        finished.extend(_finish(stitcher.pop_finished(final=True), hooks, sc))
        gdf = _to_geodataframe(finished, sc.info.transform, sc.info.crs_wkt, getattr(mask_generator, "name", "unknown"))
        stats.add_time("stitch", time.perf_counter() - t0)
        path = sc.path
    if cfg.min_area_m2 > 0:
        gdf = gdf[gdf["area_m2"] >= cfg.min_area_m2].reset_index(drop=True)
        gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
    if cfg.to_crs:
        gdf = gdf.to_crs(cfg.to_crs)
    stats.objects = len(gdf)
    stats.seconds = time.perf_counter() - t_start
    if len(gdf) == 0:
        log.warning("%s: no objects found", path)
    gdf.attrs["geosam"] = {**stats.__dict__, "scene": path}
    log.info("%s: %s", path, stats.summary())
    return gdf


def _clean_masks(masks: ChipMasks, valid: np.ndarray) -> ChipMasks:
    """Remove invalid pixels from every mask and drop masks left empty."""
    if len(masks) == 0:
        return masks
    if masks.masks.shape[1:] != valid.shape:
        raise ValueError(f"mask generator returned masks of shape {masks.masks.shape[1:]}, chip is {valid.shape}")
    m = masks.masks & valid[None]
    keep = m.reshape(len(m), -1).any(axis=1)
    return ChipMasks(m[keep], masks.predicted_iou[keep], masks.stability_score[keep])


def _to_geodataframe(objs: list[StitchedObject], transform: Any, crs_wkt: str, model_name: str):
    import geopandas as gpd

    objs = [o for o in objs if not o.geom_px.is_empty]
    # deterministic ids: top-to-bottom, left-to-right by the object's first pixel row/col
    objs.sort(key=lambda o: (o.geom_px.bounds[1], o.geom_px.bounds[0], o.geom_px.area))
    geoms = [pixel_to_map(o.geom_px, transform) for o in objs]
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    data = {
        "id": np.arange(1, len(objs) + 1, dtype=np.int64),
        "area_m2": area_m2(geoms, crs) if geoms else np.zeros(0),
        "predicted_iou": np.array([o.predicted_iou for o in objs], dtype=np.float64),
        "stability_score": np.array([o.stability_score for o in objs], dtype=np.float64),
        "n_chips": np.array([o.n_chips for o in objs], dtype=np.int64),
        "model": [model_name] * len(objs),
    }
    extra_cols = sorted({k for o in objs for k in o.extra})
    for k in extra_cols:
        data[k] = [o.extra.get(k) for o in objs]
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs_wkt), crs=crs_wkt)
