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
@click.option("--dtype", default=_D.dtype, show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
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
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over chips.")
@handle_errors
def segment(scene: str, output: str, model: str, chip_size_px: int, overlap_px: int, bands: str | None,
            fill_value: str | None, fill_tolerance: float, device: str, dtype: str, points_per_side: int,
            points_per_batch: int, pred_iou_thresh: float, stability_score_thresh: float, box_nms_thresh: float,
            min_mask_region_area: int, min_area_m2: float, to_crs: str | None, label_raster: str | None,
            overlay: str | None, progress: bool) -> None:
    """Segment every object in SCENE and write one polygon per object to OUTPUT."""
    from geosam.export import render_overlay, write_label_raster, write_vector
    from geosam.pipeline import segment_scene

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
    )
    out = write_vector(gdf, output)
    if label_raster:
        write_label_raster(gdf, label_raster, like_path=scene)
    if overlay:
        render_overlay(scene, gdf, overlay, bands=parse_numbers(bands, int, "--bands"))
    stats = gdf.attrs.get("geosam", {})
    click.echo(
        f"{out}: {len(gdf)} objects, {stats.get('chips_total', 0)} chips "
        f"({stats.get('chips_skipped_invalid', 0)} skipped as invalid), {stats.get('seconds', 0.0):.1f} s"
    )
