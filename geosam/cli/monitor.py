"""``geosam monitor DATE_SCENES... --objects OBJ -o OUT``: per-object index series, change and tracking.

A thin layer over `geosam.monitor.series.monitor_objects`; every option has the Python setting's name. Instead
of ``--objects``, ``--segment DATE|composite|every`` segments the dates in the same command
(`geosam.monitor.segment`), with ``geosam segment``'s model and segment-everything options.
"""

from __future__ import annotations

from typing import Any

import click

from geosam.cli.common import handle_errors, lock_outputs
from geosam.cli.help import GroupedCommand, option
from geosam.cli.options import KeyValue, amg_options, bands_option, dask_options, model_options, resume_options
from geosam.cli.stac_options import pop_stac_options, stac_args, stac_dated, stac_option_group
from geosam.config import DEFAULT_MODEL, SegmentConfig
from geosam.config.monitor import MonitorConfig

_D, _S = MonitorConfig(), SegmentConfig()
#: the options that only the segmentation (--segment) reads
_SEGMENT_SETTINGS = ("model", "device", "dtype", "overlap_px", "points_per_side", "points_per_batch", "pred_iou_thresh",
                     "stability_score_thresh", "box_nms_thresh", "min_mask_region_area", "crop_n_layers", "bands",
                     "min_area_m2", "progress")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.replace(" ", "").split(",") if t]


def _stack(items: tuple[str, ...]) -> dict[str, str] | None:
    from geosam.errors import ConfigError

    if not items:
        return None
    out = {}
    for it in items:
        date, sep, roles = it.partition(":")
        if not sep or not roles:
            raise ConfigError(f"--stack looks like 2024-04-01:red=1,green=2,blue=3,nir=4[,mask=9], got {it!r}")
        out[date] = roles
    return out


@click.command(cls=GroupedCommand)
@click.argument("scenes", nargs=-1)
@option("--objects", "objects", multiple=True, group="input",
        help="Vector file of the objects (fields, parcels, crowns), used at every date; give it once per date "
        "(oldest first) for each date's own objects: they are then tracked across dates.")
@option("--segment", group="input",
        help="Instead of --objects, segment in this command: a DATE of the run (that date's scene; its objects are "
        "monitored on every date), composite (a per-pixel --composite of the dates on the first date's grid, "
        "segmented once) or every (each date segmented, objects tracked across dates).")
@option("--composite", type=click.Choice(["median", "mean"]), default="median", show_default=True, group="input",
        help="With --segment composite: the per-pixel statistic over each pixel's valid dates.")
@option("--prompts", "prompts_file", type=click.Path(dir_okay=False), group="prompts",
        help="With --segment: one object per point / box prompt of this vector file (points -> point prompts, "
        "polygons -> their bounding boxes) instead of segment everything; default model then litemedsam.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Wide table (one row per object): .gpkg, .geojson, .shp or .parquet.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files (atomically: the old file stays until the new one is complete).")
@option("--long", "long_output", type=click.Path(dir_okay=False),
        help="Long table (one row per object and date): .csv, .parquet or .geoparquet.", group="output")
@option("--dates", help="One date per scene, in order, e.g. 2024-04-01,2024-06-01 (default: the raster's "
        "date tag, else a YYYY-MM-DD in the file name).", group="input")
@option("--stack", multiple=True, help="A multi-date band stack: DATE:ROLES per date, e.g. "
        "--stack 2021-06-01:red=1,green=2,blue=3,nir=4 --stack 2021-09-01:red=5,green=6,blue=7,nir=8 "
        "(mask=N: that date's mask band).", group="input")
@click.option("--index", "indices", default=",".join(_D.indices), show_default=True,
              help="Indices, e.g. ndvi,exg (ndvi, ndwi, savi, evi, ndmi, ndre, exg, vari, gli).")
@click.option("--band-roles", help="Band roles of every date: a preset or red=1,green=2,blue=3,nir=4.")
@click.option("--reflectance-scale", type=float, help="Reflectance = DN * scale + offset.")
@click.option("--reflectance-offset", type=float, help="See --reflectance-scale.")
@click.option("--index-threshold", "index_thresholds", multiple=True, type=KeyValue(),
              help="Threshold of <index>_frac_above, e.g. ndvi=0.5 (repeatable).")
@option("--min-valid", type=float, default=_D.min_valid, show_default=True, group="monitor",
        help="A date where less than this fraction of an object is valid gives no value (status too_few_valid).")
@option("--nodata", type=float, help="Nodata value of the index bands (besides the files' own).", group="monitor")
@click.option("--fill-value", type=float,
              help="Pixels whose index bands (with --segment also the model bands) all equal this are invalid (e.g. 255).")
@option("--mask-band", type=int, help="A band marking invalid pixels (e.g. Sentinel-2 SCL).", group="monitor")
@option("--mask-values", help="Invalid values of --mask-band or of the STAC --mask-asset, e.g. 3,8,9,10 "
        "(default: 0 is invalid).", group="monitor")
@click.option("--chip-size", "chip_size_px", type=int, default=_D.chip_size_px, show_default=True,
              help="Objects are read in groups, one read per chip of this size (px) per date; --segment's chips too.")
@model_options(DEFAULT_MODEL)
@click.option("--overlap", "overlap_px", type=int, default=_S.tiling.overlap_px, show_default=True,
              help="--segment: chip overlap (px).")
@bands_option
@amg_options
@click.option("--min-area-m2", type=float, default=_S.output.min_area_m2, show_default=True,
              help="--segment: drop smaller objects.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="--segment: progress bar over chips.")
@option("--loss", multiple=True, group="monitor",
        help="Flag <index>_loss where <index>_delta <= T, e.g. ndvi:-0.2 (repeatable).")
@option("--gain", multiple=True, help="Flag <index>_gain where <index>_delta >= T, e.g. ndvi:0.2.", group="monitor")
@click.option("--rank-by", help="Rank by a column (e.g. ndvi_delta); adds rank (1 = first).")
@option("--ascending", is_flag=True, group="monitor",
        help="With --rank-by: smallest first (e.g. the largest NDVI fall).")
@option("--match-iou", type=float, default=_D.match_iou, show_default=True,
        help="Tracking: consecutive dates' objects match one-to-one at IoU >= this.", group="monitor")
@stac_option_group(without=("mask_values", "group"))  # --mask-values above serves both; STAC dates are days
@dask_options
@resume_options
@handle_errors
def monitor(scenes: tuple[str, ...], objects: tuple[str, ...], segment: str | None, composite: str,
            prompts_file: str | None, output: str | None, long_output: str | None, dates: str | None,
            stack: tuple[str, ...], mask_values: str | None, loss: tuple[str, ...], gain: tuple[str, ...],
            scheduler: str | None, n_workers: int | None, resume: bool, keep_journal: bool, overwrite: bool,
            **settings: Any) -> None:
    """Per-object index series across dates (SCENES: files, globs, @lists), change, flags, rank and tracking.

    The objects: --objects FILE, or --segment DATE|composite|every (segmented here, with the model options).
    STAC: SCENES as item JSONs or an ItemCollection, or --stac-search / --stac-items: one date per day (a day's
    items joined), clouds masked with --mask-asset scl --mask-values 3,8,9,10."""
    from geosam.errors import ConfigError
    from geosam.monitor.segment import segment_journal
    from geosam.monitor.series import monitor_objects
    from geosam.run.journal import journal_path, remove_journal
    from geosam.write.paths import check_outputs

    stac_opts = pop_stac_options(settings)
    if output is None and long_output is None:
        raise ConfigError("give -o/--output (wide table) and/or --long (long table)")
    check_outputs({"--output": output, "--long": long_output}, overwrite=overwrite)  # existing: --overwrite
    lock_outputs(output, long_output)  # a second run on one of them is refused
    if objects and segment is not None:
        raise ConfigError("--objects and --segment exclude each other: give the objects, or segment a date")
    if not objects and segment is None:
        raise ConfigError("give the objects with --objects FILE, or segment them with --segment DATE|composite|every")
    seg = {k: settings.pop(k) for k in _SEGMENT_SETTINGS}
    ctx = click.get_current_context()
    if ctx.get_parameter_source("composite") not in (None, click.core.ParameterSource.DEFAULT) and \
            (segment or "").strip().lower() != "composite":
        raise ConfigError(f"--composite {composite} takes effect with --segment composite only")
    if prompts_file is not None and segment is None:
        raise ConfigError("--prompts needs --segment (the date, composite or every that the prompts segment)")
    seg_spec = None if segment is None else _segment_spec(segment, composite, prompts_file, seg, settings)
    try:
        values = tuple(int(v) for v in _split(mask_values) or ())
    except ValueError:
        raise ConfigError(f"--mask-values takes integers like 3,8,9,10, got {mask_values!r}") from None
    stac = stac_args(scenes, stac_opts) is not None  # --mask-values then name classes of --mask-asset
    cfg = MonitorConfig(mask_values=() if stac else values, loss=loss, gain=gain,
                        **{k: v for k, v in settings.items() if v is not None and v != ()})
    objs: Any = None if not objects else list(objects) if len(objects) > 1 else objects[0]
    dated = stac_dated(scenes, stac_opts, values) if stac else None  # STAC: the day mosaics, dated
    if dated is None and not scenes:
        raise ConfigError("give DATE_SCENES (rasters, or STAC items / an ItemCollection), or --stac-search / "
                          "--stac-items")
    target = output or long_output
    journal = journal_path(target) if resume and target is not None else None
    result = monitor_objects(dated if dated is not None else list(scenes), objs, segment=seg_spec,
                             dates=_split(dates), stack=_stack(stack), config=cfg, output=output,
                             long_output=long_output, journal=journal, scheduler=scheduler, n_workers=n_workers,
                             keep_tables=False)
    if journal is not None and not keep_journal:
        for done in [journal, *(segment_journal(journal, d) for d in result.dates)]:
            remove_journal(done)
    n = result.n_rows
    what = "tracks" if result.tracks is not None else "objects"
    click.echo(f"{n} {what} x {len(result.dates)} dates ({', '.join(d.isoformat() for d in result.dates)}) -> "
               + ", ".join(str(p) for p in result.paths), err=True)


def _segment_spec(segment: str, composite: str, prompts_file: str | None, seg: dict[str, Any],
                  settings: dict[str, Any]) -> Any:
    """The `SegmentObjects` of ``--segment``: its settings checked now, before any pixel or model."""
    from geosam.config import PromptConfig
    from geosam.monitor.segment import SegmentObjects

    fill = settings.get("fill_value")
    fill_value = None if fill is None else (fill,)
    stat: Any = "mean" if composite == "mean" else "median"
    if prompts_file is None:
        cfg = SegmentConfig.from_settings(chip_size_px=settings.get("chip_size_px"), fill_value=fill_value, **seg)
        return SegmentObjects(segment, config=cfg, composite=stat)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("model") in (None, click.core.ParameterSource.DEFAULT):
        seg.pop("model")  # prompt mode's own default model (litemedsam, built in)
    keep = ("model", "device", "dtype", "overlap_px", "bands", "min_area_m2", "progress")
    pcfg = PromptConfig.from_settings(fill_value=fill_value, **{k: v for k, v in seg.items() if k in keep})
    return SegmentObjects(segment, config=pcfg, composite=stat, prompts=prompts_file)
