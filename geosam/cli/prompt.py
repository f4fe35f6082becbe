"""``geosam prompt SCENE -o OUT``: one polygon per point / box prompt given in map coordinates."""

from __future__ import annotations

from typing import Any

import click

from geosam.cli.common import handle_errors, lock_outputs
from geosam.cli.help import GroupedCommand
from geosam.cli.options import (
    CoordinateList,
    check_output_choice,
    format_option,
    model_options,
    output_options,
    read_options,
)
from geosam.cli.outline_options import outline_options
from geosam.cli.stac_options import each_scene, output_dir_option, pop_stac_options, scene_outputs, stac_options
from geosam.config import PromptConfig, check_crs

_D = PromptConfig()


@click.command(cls=GroupedCommand)
@click.argument("scene", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Vector file: .gpkg, .geojson, .shp or .parquet (format by extension).")
@output_dir_option
@format_option
@click.option("--points", type=CoordinateList(2), default=(), help='Point prompts "x,y;x,y" (one object each), in --prompt-crs.')
@click.option("--boxes", type=CoordinateList(4), default=(), help='Box prompts "minx,miny,maxx,maxy;..." (one object each), in --prompt-crs.')
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="Vector file of prompts: points -> point prompts, polygons / lines -> their bounding boxes.")
@click.option("--prompt-crs", help="CRS of --points / --boxes (and of a --prompts file without one); default: the scene's.")
@click.option("--layer", help="Layer of the --prompts file (default: the first).")
@click.option("--id-column", default="id", show_default=True, help="Column giving prompt_id (else the row index).")
@click.option("--label-column", help="Column copied to the output `label` (default: a column named `label`).")
@click.option("--point-label-column", help="Column marking points positive (1) or negative (0); default `point_label`.")
@click.option("--object-column", help="Rows with the same value in this column form one prompt (multi-point objects).")
@model_options(_D.model.model)
@click.option("--chip-size", "chip_size_px", type=int, default=None,
              help="Group prompts on a chip grid of this size (px); 0 = one window per prompt. "
                   "Default: 0 for box-only models such as litemedsam, 1024 otherwise.")
@click.option("--overlap", "overlap_px", type=int, default=_D.tiling.overlap_px, show_default=True,
              help="Chip overlap (px).")
@click.option("--context", type=float, default=_D.window.context, show_default=True,
              help="Window side as a multiple of the prompt box's longest side.")
@click.option("--box-grow", type=float, default=_D.window.box_grow, show_default=True,
              help="Grow every box by this fraction of its width / height on each side (e.g. 0.1).")
@click.option("--scheduler", help="Run the prompt windows on Dask: 'local' (a local cluster of --workers processes) "
              "or a scheduler address such as tcp://host:8786 (needs geosam-scenes[dask]).")
@click.option("--workers", "n_workers", type=int, help="Worker processes of --scheduler local (default 2).")
@read_options
@output_options
@outline_options
@stac_options
@handle_errors
def prompt(scene: str | None, output: str | None, output_dir: str | None, fmt: str,
           points: tuple[tuple[float, ...], ...], boxes: tuple[tuple[float, ...], ...], prompts_file: str | None,
           prompt_crs: str | None, layer: str | None, id_column: str, label_column: str | None,
           point_label_column: str | None, object_column: str | None, scheduler: str | None, n_workers: int | None,
           overlay: str | None, overwrite: bool, **settings: Any) -> None:
    """Segment the object at each point / box prompt in SCENE and write one polygon per prompt to OUTPUT.

    SCENE: a raster (path or GDAL URL) or a STAC item (JSON file or URL); or --stac-items / --stac-search giving
    one scene (-o) or several (--output-dir: the same prompts on each, one output per item or day)."""
    from geosam.modes.prompted import segment_prompts
    from geosam.plot.overlay import render_overlay
    from geosam.prompts.gather import check_scenes_crs, gather_prompts
    from geosam.prompts.parse import PromptColumns
    from geosam.run.cluster import check_scheduler
    from geosam.write.checks import check_output_path
    from geosam.write.paths import check_outputs
    from geosam.write.vector import write_vector

    stac_opts = pop_stac_options(settings)
    cfg = PromptConfig.from_settings(**settings)  # every setting checked before any pixel or model
    fmt = check_output_choice(output, output_dir, fmt)
    if prompt_crs is not None:
        check_crs(prompt_crs, "--prompt-crs")
    check_scheduler(scheduler, n_workers)
    runs = scene_outputs(scene, stac_opts, output, output_dir, ["--overlay"] if overlay else [], fmt)
    lock_outputs(*(out for _, out in runs), overlay)  # a second run on one of them is refused
    for _, out in runs:
        check_output_path(out)  # before the run, so a typo loses nothing
    if overlay:
        check_output_path(overlay, "png")
    names = {"--output": runs[0][1]} if len(runs) == 1 else {f"output of {sc.label}": out for sc, out in runs}
    check_outputs({**names, "--overlay": overlay}, {"SCENE": runs[0][0], "--prompts": prompts_file},
                  overwrite=overwrite)
    if not (points or boxes or prompts_file):
        raise click.UsageError("give prompts with --points, --boxes or --prompts")
    # prompts without a CRS are in the (first) scene's: refused for scenes in several CRSs; each scene's run
    # reprojects them to its own
    prompts = gather_prompts(runs[0][0], prompts_file=prompts_file, layer=layer, points=points, boxes=boxes,
                             prompt_crs=prompt_crs)
    check_scenes_crs(prompts.attrs["geosam_crs_from_scene"], [sc for sc, _ in runs])
    columns = PromptColumns(id=id_column, label=label_column, point_label=point_label_column, object=object_column)

    def run(source: Any, output: str) -> None:
        gdf = segment_prompts(source, prompts, columns=columns, config=cfg, scheduler=scheduler, n_workers=n_workers)
        out = write_vector(gdf, output)
        if overlay:
            render_overlay(source, gdf[~gdf.geometry.is_empty], overlay, bands=cfg.read.bands)
        counts = gdf.attrs.get("geosam", {}).get("status_counts", {})
        click.echo(f"{out}: {len(gdf)} prompts ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
                   f"{gdf.attrs.get('geosam', {}).get('seconds', 0.0):.1f} s")

    each_scene(runs, run)
