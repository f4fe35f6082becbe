"""Compose the stages: read chips -> generate masks -> stitch -> GeoDataFrame.

``cli/`` and (later) the Dask runner only call this module.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geosam.config import SegmentConfig, index_names
from geosam.errors import GeosamError
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
    chips_failed: list[str] = field(default_factory=list)
    chips_empty: int = 0
    chips_skipped_prefilter: int = 0
    prompts_total: int = 0  # grid prompts on valid pixels (counted when the prefilter runs)
    prompts_skipped_prefilter: int = 0
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
    from geosam.segment import SamMaskGenerator

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
        crop_n_layers=cfg.crop_n_layers,
        encoder_batch_size=max(1, cfg.chips_per_batch),
        compile=cfg.compile,
    )


def _progress(iterable: Any, total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="chip", leave=False)


#: per-object attribute hook: (object with final pixel mask, open scene) -> extra columns
ObjectHook = Callable[[StitchedObject, Scene], dict[str, Any]]


@dataclass
class _Record:
    """A finished object reduced to what the output needs (map coordinates)."""

    order: tuple[float, float, float]
    geom: Any
    predicted_iou: float
    stability_score: float
    n_chips: int
    extra: dict[str, Any]


def _finish(objs: list[StitchedObject], hooks: list[ObjectHook], sc: Scene) -> list[_Record]:
    """Compute per-object attributes while the object's pixels are at hand, then keep a compact record."""
    out = []
    for o in objs:
        if o.geom_px.is_empty:
            continue
        for hook in hooks:
            o.extra.update(hook(o, sc))
        b = o.geom_px.bounds
        out.append(_Record((b[1], b[0], o.geom_px.area), pixel_to_map(o.geom_px, sc.info.transform),
                           o.predicted_iou, o.stability_score, o.n_chips, o.extra))
    return out


def segment_scene(
    scene: Any,
    mask_generator: MaskGenerator | None = None,
    *,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    **settings: Any,
):  # -> geopandas.GeoDataFrame
    """Segment every object in a scene into one polygon each.

    scene: a raster path, an open rasterio dataset or an xarray DataArray.
    mask_generator: anything with ``name`` and ``generate(chip) -> ChipMasks``;
        default is SAM segment-everything built from the settings.
    settings: any :class:`~geosam.config.SegmentConfig` field, e.g.
        ``chip_size_px=512, overlap_px=64, bands=(3, 2, 1), fill_value=255``.

    Returns a GeoDataFrame in the scene CRS (or ``to_crs``) with columns
    ``id, area_m2, predicted_iou, stability_score, n_chips, model, geometry``;
    ``gdf.attrs['geosam']`` holds the run statistics.

    Spectral indices (:mod:`geosam.indices`): ``band_roles={"red": 1, "nir": 4}``
    (or a preset such as ``"sentinel2"``), ``indices=["ndvi", "exg"]`` add
    ``ndvi_mean, ndvi_median, ndvi_frac_above, ...`` per object;
    ``min_index={"ndvi": 0.3}`` keeps objects whose mean passes, ``rank_by="ndvi_mean"``
    sorts (adds ``rank``), ``top_k=10`` keeps the best; ``prefilter=True`` decodes
    only prompts near passing pixels (counts in ``chips_skipped_prefilter``,
    ``prompts_skipped_prefilter``).
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
        prefilter, pps = _add_index_hooks(cfg, sc, hooks), getattr(mask_generator, "points_per_side", cfg.points_per_side)
        specs = sc.chip_specs(cfg.chip_size_px, cfg.overlap_px)
        stats.chips_total = len(specs)
        stitcher = Stitcher(specs, match_iou=cfg.match_iou)
        finished: list[_Record] = []
        gen_t0 = dict(getattr(mask_generator, "timings_s", None) or {})
        pending: list[Any] = []  # chips waiting for one generate_batch call

        def flush() -> None:
            t0 = time.perf_counter()
            results = _generate(mask_generator, pending)
            stats.add_time("generate", time.perf_counter() - t0)
            for chip, masks in zip(pending, results):
                masks = _clean_masks(masks, chip.valid)
                if len(masks) == 0:
                    stats.chips_empty += 1
                stats.masks += len(masks)
                t0 = time.perf_counter()
                stitcher.add(chip.spec, masks)
                finished.extend(_finish(stitcher.pop_finished(), hooks, sc))
                stats.add_time("stitch", time.perf_counter() - t0)
            pending.clear()

        chips = iter_chips(sc, specs, cfg.prefetch_chips, stats, skip_bad_chips=cfg.skip_bad_chips)
        for spec, chip in _progress(chips, len(specs), cfg.progress, "segment"):
            if isinstance(chip, GeosamError):  # a chip that could not be read (skip_bad_chips)
                log.warning("skipping chip %s: %s", spec.chip_id, chip)
                stats.chips_failed.append(f"{spec.chip_id}: {chip}")
                stitcher.skip(spec)
                continue
            if not chip.valid.any():
                stats.chips_skipped_invalid += 1
                stitcher.skip(spec)
                continue
            if prefilter is not None and _prefilter_chip(prefilter, chip, sc, pps, stats):
                stitcher.skip(spec)
                continue
            pending.append(chip)
            if len(pending) >= cfg.chips_per_batch:
                flush()
        if pending:
            flush()
        for stage, sec in (getattr(mask_generator, "timings_s", None) or {}).items():
            stats.add_time(stage, sec - gen_t0.get(stage, 0.0))
        t0 = time.perf_counter()
        finished.extend(_finish(stitcher.pop_finished(final=True), hooks, sc))
        gdf = _to_geodataframe(finished, sc.info.crs_wkt, getattr(mask_generator, "name", "unknown"))
        stats.add_time("stitch", time.perf_counter() - t0)
        stats.timings_s["stitch"] -= stitcher.polygonise_s  # reported on its own
        stats.add_time("polygonise", stitcher.polygonise_s)
        path = sc.path
    if cfg.min_area_m2 > 0:
        gdf = gdf[gdf["area_m2"] >= cfg.min_area_m2].reset_index(drop=True)
        gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
    if index_names(cfg) or cfg.rank_by:
        from geosam.indices import filter_and_rank

        gdf = filter_and_rank(gdf, index_names(cfg), dict(cfg.min_index), cfg.rank_by, cfg.top_k)
    if cfg.to_crs:
        gdf = gdf.to_crs(cfg.to_crs)
    stats.objects = len(gdf)
    stats.seconds = time.perf_counter() - t_start
    if len(gdf) == 0:
        log.warning("%s: no objects found", path)
    gdf.attrs["geosam"] = {**stats.__dict__, "scene": path}
    log.info("%s: %s", path, stats.summary())
    return gdf


def _add_index_hooks(cfg: SegmentConfig, sc: Scene, hooks: list[ObjectHook]) -> Any:
    """Append the index statistics hook (if the run needs indices); return the prefilter or None."""
    names = index_names(cfg)
    if not names:
        return None
    from geosam.indices import Prefilter, ZonalStats, calculator_for

    calc = calculator_for(sc, cfg, names)  # BandError here, before any chip is decoded
    hooks.append(ZonalStats(calc, {**dict(cfg.min_index), **dict(cfg.index_thresholds)}))
    radius = None if cfg.prefilter_radius_px == "grid" else int(cfg.prefilter_radius_px)
    return Prefilter(calc, dict(cfg.min_index), radius) if cfg.prefilter else None


def _prefilter_chip(prefilter: Any, chip: Any, sc: Scene, points_per_side: int, stats: RunStats) -> bool:
    """Set the chip's prompt mask; True if the chip has no prompt left and is skipped."""
    t0 = time.perf_counter()
    total, kept = prefilter.apply(chip, sc, points_per_side)
    stats.prompts_total += total
    stats.prompts_skipped_prefilter += total - kept
    stats.add_time("prefilter", time.perf_counter() - t0)
    if not chip.prompt_region().any():
        stats.chips_skipped_prefilter += 1
        return True
    return False


def _generate(mask_generator: MaskGenerator, chips: list[Any]) -> list[ChipMasks]:
    """Masks of several chips: one ``generate_batch`` call when the generator has it."""
    batch = getattr(mask_generator, "generate_batch", None)
    if batch is not None and len(chips) > 1:
        return list(batch(chips))
    return [mask_generator.generate(c) for c in chips]


def _read_or_error(sc: Scene, spec: Any, timings: dict[str, float], skip_bad_chips: bool) -> Any:
    """The chip, or (with ``skip_bad_chips``) the read error as a value."""
    try:
        return sc.read_chip(spec, timings)
    except GeosamError as exc:
        if not skip_bad_chips:
            raise
        return exc


def iter_chips(
    sc: Scene, specs: list[Any], prefetch: int, stats: RunStats | None = None, skip_bad_chips: bool = False
) -> Iterator[tuple[Any, Any]]:
    """(spec, chip) for every spec, in order.

    With ``skip_bad_chips`` a chip whose pixels cannot be read is yielded as
    ``(spec, error)`` (a :class:`GeosamError`) instead of ending the run.

    With ``prefetch > 0`` a reader thread with its own :class:`Scene` handle
    (rasterio datasets are not thread-safe) reads and stretches up to
    ``prefetch`` chips ahead while the caller runs the model; the scene-wide
    stretch of ``sc`` is reused, so chips are identical to ``sc.read_chip``.
    Read and stretch times are added to ``stats`` (reader-thread time).
    """
    timings: dict[str, float] = {}
    try:
        if prefetch <= 0:
            for spec in specs:
                yield spec, _read_or_error(sc, spec, timings, skip_bad_chips)
            return
        q: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        done = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                with Scene(sc.path, sc.read_config, stretch=sc.stretch) as rs:
                    for spec in specs:
                        if not put((spec, _read_or_error(rs, spec, timings, skip_bad_chips))):
                            return
                put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(exc)

        thread = threading.Thread(target=reader, name="geosam-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=10)
    finally:
        if stats is not None:
            for stage, sec in timings.items():
                stats.add_time(stage, sec)


def _clean_masks(masks: ChipMasks, valid: np.ndarray) -> ChipMasks:
    """Remove invalid pixels from every mask (in place) and drop masks left empty."""
    if len(masks) == 0:
        return masks
    if masks.masks.shape[1:] != valid.shape:
        raise ValueError(f"mask generator returned masks of shape {masks.masks.shape[1:]}, chip is {valid.shape}")
    if valid.all():
        return masks
    m = masks.masks
    np.logical_and(m, valid[None], out=m)
    keep = m.reshape(len(m), -1).any(axis=1)
    if keep.all():
        return masks
    return ChipMasks(m[keep], masks.predicted_iou[keep], masks.stability_score[keep])


def _to_geodataframe(objs: list[_Record], crs_wkt: str, model_name: str):
    import geopandas as gpd
    from rasterio.crs import CRS

    # deterministic ids: top-to-bottom, left-to-right by the object's first pixel row/col
    objs.sort(key=lambda o: o.order)
    geoms = [o.geom for o in objs]
    data = {
        "id": np.arange(1, len(objs) + 1, dtype=np.int64),
        "area_m2": area_m2(geoms, CRS.from_wkt(crs_wkt)) if geoms else np.zeros(0),
        "predicted_iou": np.array([o.predicted_iou for o in objs], dtype=np.float64),
        "stability_score": np.array([o.stability_score for o in objs], dtype=np.float64),
        "n_chips": np.array([o.n_chips for o in objs], dtype=np.int64),
        "model": [model_name] * len(objs),
    }
    extra_cols = sorted({k for o in objs for k in o.extra})
    for k in extra_cols:
        data[k] = [o.extra.get(k) for o in objs]
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs_wkt), crs=crs_wkt)
