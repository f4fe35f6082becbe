"""``geosam monitor DATE_SCENES... --objects OBJ -o OUT``: per-object index series, change and tracking.

A thin layer over `geosam.monitor.series.monitor_objects`; every option has the Python setting's name.
"""

from __future__ import annotations

from typing import Any

import click

from geosam.cli.common import handle_errors
from geosam.cli.options import KeyValue, dask_options, resume_options
from geosam.cli.stac_options import pop_stac_options, stac_args, stac_dated, stac_option_group
from geosam.config.monitor import MonitorConfig

_D = MonitorConfig()


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


@click.command()
@click.argument("scenes", nargs=-1)
@click.option("--objects", "objects", multiple=True, required=True,
              help="Vector file of the objects (fields, parcels, crowns), used at every date; give it once per date "
              "(oldest first) for each date's own objects: they are then tracked across dates.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Wide table (one row per object): .gpkg, .geojson, .shp or .parquet.")
@click.option("--long", "long_output", type=click.Path(dir_okay=False),
              help="Long table (one row per object and date): .csv, .parquet or .geoparquet.")
@click.option("--dates", help="One date per scene, in order, e.g. 2024-04-01,2024-06-01 (default: the raster's "
              "date tag, else a YYYY-MM-DD in the file name).")
@click.option("--stack", multiple=True, help="A multi-date band stack: DATE:ROLES per date, e.g. "
              "--stack 2021-06-01:red=1,green=2,blue=3,nir=4 --stack 2021-09-01:red=5,green=6,blue=7,nir=8 "
              "(mask=N: that date's mask band).")
@click.option("--index", "indices", default=",".join(_D.indices), show_default=True,
              help="Indices, e.g. ndvi,exg (ndvi, ndwi, savi, evi, ndmi, ndre, exg, vari, gli).")
@click.option("--band-roles", help="Band roles of every date: a preset or red=1,green=2,blue=3,nir=4.")
@click.option("--reflectance-scale", type=float, help="Reflectance = DN * scale + offset.")
@click.option("--reflectance-offset", type=float, help="See --reflectance-scale.")
@click.option("--index-threshold", "index_thresholds", multiple=True, type=KeyValue(),
              help="Threshold of <index>_frac_above, e.g. ndvi=0.5 (repeatable).")
@click.option("--min-valid", type=float, default=_D.min_valid, show_default=True,
              help="A date where less than this fraction of an object is valid gives no value (status too_few_valid).")
@click.option("--nodata", type=float, help="Nodata value of the index bands (besides the files' own).")
@click.option("--fill-value", type=float, help="Pixels whose index bands all equal this are invalid (e.g. 255).")
@click.option("--mask-band", type=int, help="A band marking invalid pixels (e.g. Sentinel-2 SCL).")
@click.option("--mask-values", help="Invalid values of --mask-band or of the STAC --mask-asset, e.g. 3,8,9,10 "
              "(default: 0 is invalid).")
@click.option("--chip-size", "chip_size_px", type=int, default=_D.chip_size_px, show_default=True,
              help="Objects are read in groups, one read per chip of this size (px) per date.")
@click.option("--loss", multiple=True, help="Flag <index>_loss where <index>_delta <= T, e.g. ndvi:-0.2 (repeatable).")
@click.option("--gain", multiple=True, help="Flag <index>_gain where <index>_delta >= T, e.g. ndvi:0.2.")
@click.option("--rank-by", help="Rank by a column (e.g. ndvi_delta); adds rank (1 = first).")
@click.option("--ascending", is_flag=True, help="With --rank-by: smallest first (e.g. the largest NDVI fall).")
@click.option("--match-iou", type=float, default=_D.match_iou, show_default=True,
              help="Tracking: consecutive dates' objects match one-to-one at IoU >= this.")
@stac_option_group(without=("mask_values", "group"))  # --mask-values above serves both; STAC dates are days
@dask_options
@resume_options
@handle_errors
def monitor(scenes: tuple[str, ...], objects: tuple[str, ...], output: str | None, long_output: str | None,
            dates: str | None, stack: tuple[str, ...], mask_values: str | None, loss: tuple[str, ...],
            gain: tuple[str, ...], scheduler: str | None, n_workers: int | None, resume: bool, keep_journal: bool,
            **settings: Any) -> None:
    """Per-object index series across dates (SCENES: files, globs, @lists), change, flags, rank and tracking.

    STAC: SCENES as item JSONs or an ItemCollection, or --stac-search / --stac-items: one date per day (a day's
    items joined), clouds masked with --mask-asset scl --mask-values 3,8,9,10."""
    from geosam.errors import ConfigError
    from geosam.monitor.series import monitor_objects
    from geosam.run.journal import journal_path, remove_journal

    stac_opts = pop_stac_options(settings)
    if output is None and long_output is None:
        raise ConfigError("give -o/--output (wide table) and/or --long (long table)")
    try:
        values = tuple(int(v) for v in _split(mask_values) or ())
    except ValueError:
        raise ConfigError(f"--mask-values takes integers like 3,8,9,10, got {mask_values!r}") from None
    stac = stac_args(scenes, stac_opts) is not None  # --mask-values then name classes of --mask-asset
    cfg = MonitorConfig(mask_values=() if stac else values, loss=loss, gain=gain,
                        **{k: v for k, v in settings.items() if v is not None and v != ()})
    objs: Any = list(objects) if len(objects) > 1 else objects[0]
    dated = stac_dated(scenes, stac_opts, values) if stac else None  # STAC: the day mosaics, dated
    if dated is None and not scenes:
        raise ConfigError("give DATE_SCENES (rasters, or STAC items / an ItemCollection), or --stac-search / "
                          "--stac-items")
    target = output or long_output
    journal = journal_path(target) if resume and target is not None else None
    result = monitor_objects(dated if dated is not None else list(scenes), objs, dates=_split(dates),
                             stack=_stack(stack), config=cfg, output=output, long_output=long_output,
                             journal=journal, scheduler=scheduler, n_workers=n_workers, keep_tables=False)
    if journal is not None and not keep_journal:
        remove_journal(journal)
    n = result.n_rows
    what = "tracks" if result.tracks is not None else "objects"
    click.echo(f"{n} {what} x {len(result.dates)} dates ({', '.join(d.isoformat() for d in result.dates)}) -> "
               + ", ".join(str(p) for p in result.paths), err=True)
