"""``geosam segment SCENE -o OUT``: segment everything into one polygon per object."""

from __future__ import annotations

import click

from geosam.cli.main import handle_errors, parse_numbers
from geosam.config import DEFAULT_MODEL, SegmentConfig

_D = SegmentConfig()


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Vector file: .gpkg, .geojson, .shp or .parquet (format by extension).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="SAM checkpoint id or local directory.")
@click.option("--chip-size", "chip_size_px", type=int, default=_D.chip_size_px, show_default=True, help="Chip size (px).")
@click.option("--overlap", "overlap_px", type=int, default=_D.overlap_px, show_default=True, help="Chip overlap (px).")
@click.option("--bands", help="1-based bands for the model image, e.g. 3,2,1 (1 or 3 bands).")
@click.option("--fill-value", help="Pixels whose bands all equal this (e.g. 255 or 255,255,255) are invalid.")
@click.option("--fill-tolerance", type=float, default=0.0, show_default=True, help="Tolerance for --fill-value.")
@click.option("--device", default=_D.device, show_default=True, type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--dtype", default=_D.dtype, show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="auto: bf16 on CPUs with AMX, fp16 on CUDA, else float32 (fast; masks right at a threshold may "
              "differ from float32, ~1 % in benchmarks/bench_amg.py); float32: the reference's masks.")
@click.option("--points-per-side", type=int, default=_D.points_per_side, show_default=True)
@click.option("--points-per-batch", type=int, default=_D.points_per_batch, show_default=True)
@click.option("--pred-iou-thresh", type=float, default=_D.pred_iou_thresh, show_default=True)
@click.option("--stability-score-thresh", type=float, default=_D.stability_score_thresh, show_default=True)
@click.option("--box-nms-thresh", type=float, default=_D.box_nms_thresh, show_default=True)
@click.option("--min-mask-region-area", type=int, default=_D.min_mask_region_area, show_default=True,
              help="Remove islands and holes smaller than this (px).")
@click.option("--min-area-m2", type=float, default=_D.min_area_m2, show_default=True, help="Drop smaller objects.")
@click.option("--to-crs", help="Output CRS (default: the scene's), e.g. EPSG:4326.")
@click.option("--label-raster", type=click.Path(dir_okay=False), help="Also write an instance-label GeoTIFF.")
@click.option("--overlay", type=click.Path(dir_okay=False), help="Also write a PNG of the polygons over the image.")
@click.option("--band-roles", help="Band roles: a preset (sentinel2, landsat8, naip, rgb) or red=1,green=2,blue=3,nir=4 "
              "(1-based). Default: from band descriptions / colour interpretation.")
@click.option("--reflectance-scale", type=float, help="Reflectance = DN * scale + offset (e.g. 1e-4 for Sentinel-2 L2A).")
@click.option("--reflectance-offset", type=float, help="See --reflectance-scale (e.g. -0.1 for S2 baseline >= 04.00).")
@click.option("--indices", "indices_", help="Per-object index statistics, e.g. ndvi,exg (ndvi, ndwi, savi, evi, ndmi, "
              "ndre, exg, vari, gli): adds <index>_mean, _median, _frac_above columns.")
@click.option("--index-threshold", multiple=True, help="Threshold of <index>_frac_above, e.g. ndvi=0.5 (repeatable).")
@click.option("--min-index", multiple=True, help="Keep objects with <index>_mean >= value, e.g. ndvi=0.3 (repeatable).")
@click.option("--rank-by", help="Sort objects by this column, highest first (e.g. ndvi_mean); adds a rank column.")
@click.option("--top-k", type=int, help="Keep the first K objects after --rank-by.")
@click.option("--prefilter/--no-prefilter", default=False, show_default=True,
              help="Decode only prompts near pixels passing --min-index; skip chips without any.")
@click.option("--prefilter-radius", "prefilter_radius_px", default="2", show_default=True,
              help="Prefilter neighbourhood (px): prompts within this of a passing pixel are kept; "
              "'grid' = one point-grid spacing.")
@click.option("--index-raster", type=click.Path(dir_okay=False),
              help="Also write the indices (--indices, else those of --min-index/--rank-by, else ndvi) as a float32 GeoTIFF.")
@click.option("--crop-n-layers", type=int, default=_D.crop_n_layers, show_default=True,
              help="Also segment 4, 16, ... crops per chip (small objects).")
@click.option("--chips-per-batch", type=int, default=_D.chips_per_batch, show_default=True,
              help="Chips encoded together in one encoder batch.")
@click.option("--prefetch-chips", type=int, default=_D.prefetch_chips, show_default=True,
              help="Chips read ahead by a reader thread (0: read in the main thread).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the model (first chip slow, later ones faster: for large scenes).")
@click.option("--skip-bad-chips", is_flag=True,
              help="Skip (and list) chips whose pixels cannot be read instead of stopping the run.")
@click.option("--profile", is_flag=True, help="Print seconds per stage (read, stretch, encode, decode, ...).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over chips.")
@handle_errors
def segment(scene: str, output: str, model: str, chip_size_px: int, overlap_px: int, bands: str | None,
            fill_value: str | None, fill_tolerance: float, device: str, dtype: str, points_per_side: int,
            points_per_batch: int, pred_iou_thresh: float, stability_score_thresh: float, box_nms_thresh: float,
            min_mask_region_area: int, min_area_m2: float, to_crs: str | None, label_raster: str | None,
            overlay: str | None, progress: bool, band_roles: str | None = None, reflectance_scale: float | None = None,
            reflectance_offset: float | None = None, indices_: str | None = None, index_threshold: tuple[str, ...] = (),
            min_index: tuple[str, ...] = (), rank_by: str | None = None, top_k: int | None = None,
            prefilter: bool = False, prefilter_radius_px: str = "2", index_raster: str | None = None,
            crop_n_layers: int = 0, chips_per_batch: int = 1, prefetch_chips: int = 2, profile: bool = False,
            skip_bad_chips: bool = False, compile_: bool = False) -> None:
    """Segment every object in SCENE and write one polygon per object to OUTPUT."""
    from geosam.export import check_output_path, render_overlay, write_label_raster, write_vector
    from geosam.pipeline import segment_scene

    # every output path is checked before the (possibly hours-long) run, so a typo loses nothing
    check_output_path(output)
    for path, kind in ((label_raster, "raster"), (index_raster, "raster"), (overlay, "png")):
        if path:
            check_output_path(path, kind)
    gdf = segment_scene(
        scene,
        model=model,
        chip_size_px=chip_size_px,
        overlap_px=overlap_px,
        bands=parse_numbers(bands, int, "--bands"),
        fill_value=parse_numbers(fill_value, float, "--fill-value"),
        fill_tolerance=fill_tolerance,
        device=device,
        dtype=dtype,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
        min_mask_region_area=min_mask_region_area,
        min_area_m2=min_area_m2,
        to_crs=to_crs,
        progress=progress,
        band_roles=band_roles,
        reflectance_scale=reflectance_scale,
        reflectance_offset=reflectance_offset,
        indices=indices_ or (),
        index_thresholds=index_threshold,
        min_index=min_index,
        rank_by=rank_by,
        top_k=top_k,
        prefilter=prefilter,
        prefilter_radius_px=prefilter_radius_px,
        crop_n_layers=crop_n_layers,
        chips_per_batch=chips_per_batch,
        prefetch_chips=prefetch_chips,
        skip_bad_chips=skip_bad_chips,
        compile=compile_,
    )
    out = write_vector(gdf, output)
    if label_raster:
        write_label_raster(gdf, label_raster, like_path=scene)
    if index_raster:
        _write_index_raster(scene, index_raster, band_roles, reflectance_scale, reflectance_offset,
                            indices_, min_index, rank_by)
    if overlay:
        render_overlay(scene, gdf, overlay, bands=parse_numbers(bands, int, "--bands"))
    stats = gdf.attrs.get("geosam", {})
    click.echo(
        f"{out}: {len(gdf)} objects, {stats.get('chips_total', 0)} chips "
        f"({stats.get('chips_skipped_invalid', 0)} skipped as invalid), {stats.get('seconds', 0.0):.1f} s"
    )
    for failed in stats.get("chips_failed", []):
        click.echo(f"warning: chip {failed}", err=True)
    if profile:
        click.echo(format_profile(stats.get("timings_s", {}), stats.get("seconds", 0.0)))
    if stats.get("prompts_total"):
        click.echo(
            f"prefilter: {stats['prompts_skipped_prefilter']} of {stats['prompts_total']} prompts and "
            f"{stats['chips_skipped_prefilter']} chips skipped"
        )


def _write_index_raster(scene: str, path: str, band_roles: str | None, scale: float | None, offset: float | None,
                        indices: str | None, min_index: tuple[str, ...], rank_by: str | None) -> None:
    from geosam.config import SegmentConfig, index_names
    from geosam.indices import write_index_raster

    cfg = SegmentConfig(indices=indices or (), min_index=min_index, rank_by=rank_by)
    write_index_raster(scene, path, index_names(cfg) or ("ndvi",), band_roles=band_roles,
                       reflectance_scale=scale, reflectance_offset=offset)


#: Stage order of ``--profile`` (stages a run did not time are left out; others follow).
PROFILE_STAGES = ("read", "stretch", "encode", "decode", "filter", "upsample", "nms", "postprocess", "generate", "stitch", "polygonise")


def format_profile(timings: dict[str, float], total_s: float) -> str:
    """A table of seconds per stage. ``generate`` is the model's wall time (encode ... postprocess are
    inside it); ``read`` and ``stretch`` run in the reader thread, overlapping the model; ``stitch``
    (matching and merging across seams) and ``polygonise`` (finished objects to polygons) are apart."""
    names = [s for s in PROFILE_STAGES if s in timings] + sorted(set(timings) - set(PROFILE_STAGES))
    lines = ["stage          seconds"]
    lines += [f"{n:<14} {timings[n]:8.2f}" for n in names]
    lines.append(f"{'total (wall)':<14} {total_s:8.2f}")
    return "\n".join(lines)
