"""``geosam text SCENE -o OUT --text building --text "solar panel"``: objects named by noun phrases (SAM 3);
``--exemplars boxes.gpkg``: objects like example boxes, with or without ``--text``."""

from __future__ import annotations

from typing import Any

import click

from geosam.cli.common import handle_errors, lock_outputs
from geosam.cli.help import GroupedCommand
from geosam.cli.options import KeyValue, check_output_choice, format_option, model_options, output_options, read_options
from geosam.cli.outline_options import outline_options
from geosam.cli.stac_options import each_scene, output_dir_option, pop_stac_options, scene_outputs, stac_options
from geosam.config import SegmentConfig
from geosam.config.text import DEFAULT_TEXT_MODEL, TextConfig

_D = SegmentConfig()
_T, _E, _O = _D.tiling, _D.engine, _D.output


@click.command(cls=GroupedCommand)
@click.argument("scene", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Vector file: .gpkg, .geojson, .shp or .parquet (format by extension).")
@output_dir_option
@format_option
@click.option("--text", "phrases", multiple=True,
              help="A noun phrase, e.g. building (repeatable; each phrase is the label of its objects).")
@click.option("--exemplars", type=click.Path(dir_okay=False),
              help="Vector file of boxes around example objects (any CRS; column label: 1/0, positive/negative). "
                   "Finds objects like them on every chip; without --text their label is 'exemplar'.")
@model_options(DEFAULT_TEXT_MODEL)
@click.option("--score-threshold", type=float, default=None,
              help="Keep instances scoring above this (default: the model's, 0.3).")
@click.option("--mask-threshold", type=float, default=None,
              help="Mask probability above which a pixel is in an instance (default: the model's, 0.5).")
@click.option("--chip-size", "chip_size_px", type=int, default=_T.chip_size_px, show_default=True, help="Chip size (px).")
@click.option("--overlap", "overlap_px", type=int, default=_T.overlap_px, show_default=True, help="Chip overlap (px).")
@read_options
@click.option("--min-area-m2", type=float, default=_O.min_area_m2, show_default=True, help="Drop smaller objects.")
@output_options
@outline_options
@click.option("--band-roles", help="Band roles: a preset (sentinel2, landsat8, naip, rgb) or red=1,green=2,blue=3,nir=4.")
@click.option("--indices", "indices", help="Per-object index statistics, e.g. ndvi,exg.")
@click.option("--min-index", multiple=True, type=KeyValue(),
              help="Keep objects with <index>_mean >= value, e.g. ndvi=0.3 (repeatable).")
@click.option("--prefilter/--no-prefilter", default=False, show_default=True,
              help="Skip chips without any pixel passing --min-index.")
@click.option("--label-raster", type=click.Path(dir_okay=False),
              help="Also write an instance-label GeoTIFF (uint32, 0 background, else the object's id).")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile SAM 3's per-chip parts (first chip slow, later ones faster: for large scenes).")
@click.option("--skip-bad-chips", is_flag=True, help="Skip (and list) chips whose pixels cannot be read.")
@click.option("--profile", is_flag=True, help="Print seconds per stage (backbone, text_encoder, detector, stitch, ...).")
@stac_options
@handle_errors
def text(scene: str | None, output: str | None, output_dir: str | None, fmt: str, phrases: tuple[str, ...],
         exemplars: str | None, score_threshold: float | None, mask_threshold: float | None, overlay: str | None,
         label_raster: str | None, profile: bool, overwrite: bool, **settings: Any) -> None:
    """Write one polygon per object in SCENE matching a --text phrase, or like the --exemplars boxes, to OUTPUT.

    SCENE: a raster (path or GDAL URL) or a STAC item (JSON file or URL); or --stac-items / --stac-search giving
    one scene (-o) or several (--output-dir: one output per item or day)."""
    from geosam.cli.report import report, write_extras
    from geosam.modes.text import segment_text_to_file
    from geosam.prompts.exemplars import exemplars_have_crs
    from geosam.prompts.gather import check_scenes_crs
    from geosam.write.checks import check_output_path
    from geosam.write.paths import check_outputs

    settings["indices"] = settings["indices"] or ()
    stac_opts = pop_stac_options(settings)
    TextConfig(phrases=phrases, score_threshold=score_threshold, mask_threshold=mask_threshold)  # checked first
    if not phrases and not exemplars:
        raise click.UsageError("give at least one --text phrase or --exemplars FILE")
    cfg = SegmentConfig.from_settings(**settings)
    fmt = check_output_choice(output, output_dir, fmt)
    extras = [k for k, v in (("--overlay", overlay), ("--label-raster", label_raster)) if v]
    runs = scene_outputs(scene, stac_opts, output, output_dir, extras, fmt)
    lock_outputs(*(out for _, out in runs), overlay, label_raster)  # a second run on one of them is refused
    for _, out in runs:
        check_output_path(out)
    if overlay:
        check_output_path(overlay, "png")
    if label_raster:
        check_output_path(label_raster, "raster")
    inputs = {"SCENE": runs[0][0], **({"--exemplars": exemplars} if exemplars else {})}
    names = {"--output": runs[0][1]} if len(runs) == 1 else {f"output of {sc.label}": out for sc, out in runs}
    check_outputs({**names, "--overlay": overlay, "--label-raster": label_raster}, inputs, overwrite=overwrite)
    if exemplars and len(runs) > 1 and not exemplars_have_crs(exemplars):  # each scene would take it in its own CRS
        check_scenes_crs([f"the exemplars file {exemplars}"], [sc for sc, _ in runs], remedy="a file with one")

    def run(source: Any, output: str) -> None:
        summary = segment_text_to_file(source, output, list(phrases), exemplars=exemplars, model=cfg.model.model,
                                       score_threshold=score_threshold, mask_threshold=mask_threshold, config=cfg)
        write_extras(source, output, label_raster=label_raster, overlay=overlay, bands=cfg.read.bands)
        report(summary, profile)

    each_scene(runs, run)
