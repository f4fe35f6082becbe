"""``geosam segment SCENE -o OUT``: segment everything into one polygon per object."""

from __future__ import annotations

from typing import Any

import click

from geosam.cli.common import handle_errors, lock_outputs
from geosam.cli.help import GroupedCommand
from geosam.cli.options import (
    KeyValue,
    amg_options,
    check_output_choice,
    format_option,
    model_options,
    output_options,
    read_options,
)
from geosam.cli.outline_options import outline_options
from geosam.cli.stac_options import pop_stac_options, segment_stac, stac_options, stac_sources
from geosam.config import DEFAULT_MODEL, SegmentConfig
from geosam.index.calculator import check_index_bands
from geosam.write.index_raster import write_index_raster

_D = SegmentConfig()
_T, _E, _O = _D.tiling, _D.engine, _D.output


@click.command(cls=GroupedCommand)
@click.argument("scenes", nargs=-1)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Vector file: .gpkg, .geojson, .shp or .parquet (format by extension).")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Many scenes: one output per scene in this folder (<scene stem><--format>).")
@click.option("--merge", is_flag=True, help="Many scenes: one output (-o) with a 'scene' column.")
@format_option
@click.option("--scheduler", help="Run the chips on Dask: 'local' (a local cluster of --workers processes) or a "
              "scheduler address such as tcp://host:8786 (needs geosam-scenes[dask]).")
@click.option("--workers", "n_workers", type=int, help="Worker processes of --scheduler local (default 2).")
@model_options(DEFAULT_MODEL)
@click.option("--chip-size", "chip_size_px", type=int, default=_T.chip_size_px, show_default=True, help="Chip size (px).")
@click.option("--overlap", "overlap_px", type=int, default=_T.overlap_px, show_default=True, help="Chip overlap (px).")
@read_options
@amg_options
@click.option("--min-area-m2", type=float, default=_O.min_area_m2, show_default=True, help="Drop smaller objects.")
@output_options
@outline_options
@click.option("--label-raster", type=click.Path(dir_okay=False), help="Also write an instance-label GeoTIFF.")
@click.option("--band-roles", help="Band roles: a preset (sentinel2, landsat8, naip, rgb) or red=1,green=2,blue=3,nir=4 "
              "(1-based). Default: from band descriptions / colour interpretation.")
@click.option("--reflectance-scale", type=float, help="Reflectance = DN * scale + offset (e.g. 1e-4 for Sentinel-2 L2A).")
@click.option("--reflectance-offset", type=float, help="See --reflectance-scale (e.g. -0.1 for S2 baseline >= 04.00).")
@click.option("--indices", "indices", help="Per-object index statistics, e.g. ndvi,exg (ndvi, ndwi, savi, evi, ndmi, "
              "ndre, exg, vari, gli): adds <index>_mean, _median, _frac_above columns.")
@click.option("--index-threshold", "index_thresholds", multiple=True, type=KeyValue(),
              help="Threshold of <index>_frac_above, e.g. ndvi=0.5 (repeatable).")
@click.option("--min-index", multiple=True, type=KeyValue(),
              help="Keep objects with <index>_mean >= value, e.g. ndvi=0.3 (repeatable).")
@click.option("--rank-by", help="Sort objects by this column, highest first (e.g. ndvi_mean); adds a rank column.")
@click.option("--top-k", type=int, help="Keep the first K objects after --rank-by.")
@click.option("--prefilter/--no-prefilter", default=False, show_default=True,
              help="Decode only prompts near pixels passing --min-index; skip chips without any.")
@click.option("--prefilter-radius", "prefilter_radius_px", default="2", show_default=True,
              help="Prefilter neighbourhood (px): prompts within this of a passing pixel are kept; "
              "'grid' = one point-grid spacing.")
@click.option("--index-raster", type=click.Path(dir_okay=False),
              help="Also write the indices (--indices, else those of --min-index/--rank-by, else ndvi) as a float32 GeoTIFF.")
@click.option("--chips-per-batch", type=int, default=_E.chips_per_batch, show_default=True,
              help="Chips encoded together in one encoder batch.")
@click.option("--prefetch-chips", type=int, default=_E.prefetch_chips, show_default=True,
              help="Chips read ahead by a reader thread (0: read in the main thread).")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile the model (first chip slow, later ones faster: for large scenes).")
@click.option("--skip-bad-chips", is_flag=True,
              help="Skip (and list) chips whose pixels cannot be read instead of stopping the run.")
@click.option("--profile", is_flag=True, help="Print seconds per stage (read, stretch, encode, decode, ...).")
@click.option("--resume", is_flag=True, help="Journal finished chips in OUTPUT.geosam-journal; a rerun after a crash "
              "replays them and runs only the rest.")
@click.option("--keep-journal", is_flag=True, help="With --resume: keep the journal after a successful write.")
@stac_options
@handle_errors
def segment(scenes: tuple[str, ...], output: str | None, output_dir: str | None, merge: bool, fmt: str,
            scheduler: str | None, n_workers: int | None, label_raster: str | None, index_raster: str | None,
            overlay: str | None, profile: bool, overwrite: bool, resume: bool, keep_journal: bool,
            **settings: Any) -> None:
    """Segment every object in SCENES and write one polygon per object to OUTPUT.

    SCENES: one raster, or many (paths, GDAL URLs, quoted globs like 'tiles/*.tif', @list.txt)
    with --output-dir or --merge; or STAC items (item JSON files or URLs, --stac-items, --stac-search)."""
    from geosam.cli.report import report, write_extras
    from geosam.modes.everything import segment_scene_to_file
    from geosam.read.sources import expand_sources
    from geosam.run.cluster import check_scheduler
    from geosam.run.journal import journal_path, remove_journal
    from geosam.write.checks import check_output_path
    from geosam.write.paths import check_outputs

    settings["indices"] = settings["indices"] or ()
    stac_opts = pop_stac_options(settings)
    cfg = SegmentConfig.from_settings(**settings)  # every setting checked before any pixel or model
    fmt = check_output_choice(output, output_dir, fmt)
    check_scheduler(scheduler, n_workers)
    stac = stac_sources(scenes, stac_opts)  # STAC items or a search: its scenes; else None
    if stac is None and not scenes:
        raise click.UsageError("give SCENES (raster files, or STAC items), or --stac-search / --stac-items")
    paths: list[Any] = stac if stac is not None else expand_sources(scenes)
    if output_dir is not None or merge or len(paths) > 1:
        if label_raster or index_raster or overlay:
            raise click.UsageError("--label-raster, --index-raster and --overlay take one scene")
        if stac is not None and not merge:  # outputs named by item id / day
            return segment_stac(stac, cfg, output=output, output_dir=output_dir, fmt=fmt, resume=resume,
                                overwrite=overwrite, scheduler=scheduler, n_workers=n_workers)
        from geosam.cli.many import segment_many

        return segment_many(paths, cfg, output=output, output_dir=output_dir, merge=merge, resume=resume,
                            scheduler=scheduler, n_workers=n_workers, fmt=fmt)
    if output is None:
        raise click.UsageError("give -o/--output FILE (or --output-dir DIR for many scenes)")
    scene = paths[0]  # a raster path or one STAC scene: the same run, the same extras on its grid
    lock_outputs(output, label_raster, index_raster, overlay)  # a second run on one of them is refused
    # every output path is checked before the (possibly hours-long) run, so a typo loses nothing
    check_output_path(output)
    for path, kind in ((label_raster, "raster"), (index_raster, "raster"), (overlay, "png")):
        if path:
            check_output_path(path, kind)
    check_outputs({"--output": output, "--label-raster": label_raster, "--index-raster": index_raster,
                   "--overlay": overlay}, {"SCENE": scene}, overwrite=overwrite)
    index_kw: dict[str, Any] = {"band_roles": cfg.index.band_roles, "reflectance_scale": cfg.index.reflectance_scale,
                "reflectance_offset": cfg.index.reflectance_offset}
    if index_raster:  # a scene without the bands fails now, not after the run
        check_index_bands(scene, cfg.index.names() or ("ndvi",), **index_kw)
    journal = journal_path(output) if resume else None
    # objects stream into the output (memory independent of their number); the extras read it back
    summary = segment_scene_to_file(scene, output, config=cfg, journal=journal, scheduler=scheduler,
                                    n_workers=n_workers)
    write_extras(scene, output, label_raster=label_raster, overlay=overlay, bands=cfg.read.bands)
    if index_raster:
        write_index_raster(scene, index_raster, cfg.index.names() or ("ndvi",), **index_kw)
    report(summary, profile)
    if journal is not None and not keep_journal:
        remove_journal(journal)

