"""``geosam prompt SCENE -o OUT``: one polygon per point / box prompt given in map coordinates."""

from __future__ import annotations

import click

from geosam.cli.main import handle_errors, parse_numbers
from geosam.config import PromptConfig
from geosam.errors import PromptError

_D = PromptConfig()


def parse_coordinate_list(text: str | None, n: int, what: str) -> list[tuple[float, ...]]:
    """'x,y;x,y' -> [(x, y), (x, y)] (``n`` numbers per item)."""
    if not text:
        return []
    out = []
    for item in text.split(";"):
        if not item.strip():
            continue
        vals = parse_numbers(item, float, what)
        if vals is None or len(vals) != n:
            raise click.BadParameter(f"each {what} item needs {n} comma-separated numbers, got {item!r}")
        out.append(vals)
    return out


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Vector file: .gpkg, .geojson, .shp or .parquet (format by extension).")
@click.option("--points", help='Point prompts "x,y;x,y" (one object each), in --prompt-crs.')
@click.option("--boxes", help='Box prompts "minx,miny,maxx,maxy;..." (one object each), in --prompt-crs.')
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="Vector file of prompts: points -> point prompts, polygons / lines -> their bounding boxes.")
@click.option("--prompt-crs", help="CRS of --points / --boxes (and of a --prompts file without one); default: the scene's.")
@click.option("--layer", help="Layer of the --prompts file (default: the first).")
@click.option("--id-column", default="id", show_default=True, help="Column giving prompt_id (else the row index).")
@click.option("--label-column", help="Column copied to the output `label` (default: a column named `label`).")
@click.option("--point-label-column", help="Column marking points positive (1) or negative (0); default `point_label`.")
@click.option("--object-column", help="Rows with the same value in this column form one prompt (multi-point objects).")
@click.option("--model", default=_D.model, show_default=True,
              help="litemedsam (built in, offline, box prompts), a SAM checkpoint id or a local directory.")
@click.option("--chip-size", "chip_size_px", type=int, default=None,
              help="Group prompts on a chip grid of this size (px); 0 = one window per prompt. "
                   "Default: 0 for litemedsam, 1024 otherwise.")
@click.option("--overlap", "overlap_px", type=int, default=_D.overlap_px, show_default=True, help="Chip overlap (px).")
@click.option("--context", type=float, default=_D.context, show_default=True,
              help="Window side as a multiple of the prompt box's longest side.")
@click.option("--box-grow", type=float, default=_D.box_grow, show_default=True,
              help="Grow every box by this fraction of its width / height on each side (e.g. 0.1).")
@click.option("--bands", help="1-based bands for the model image, e.g. 3,2,1 (1 or 3 bands).")
@click.option("--fill-value", help="Pixels whose bands all equal this (e.g. 255 or 255,255,255) are invalid.")
@click.option("--device", default=_D.device, show_default=True, type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--dtype", default=_D.dtype, show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--to-crs", help="Output CRS (default: the scene's), e.g. EPSG:4326.")
@click.option("--overlay", type=click.Path(dir_okay=False), help="Also write a PNG of the polygons over the image.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over windows.")
@handle_errors
def prompt(scene: str, output: str, points: str | None, boxes: str | None, prompts_file: str | None,
           prompt_crs: str | None, layer: str | None, id_column: str, label_column: str | None,
           point_label_column: str | None, object_column: str | None, model: str, chip_size_px: int | None,
           overlap_px: int, context: float, box_grow: float, bands: str | None, fill_value: str | None,
           device: str, dtype: str, to_crs: str | None, overlay: str | None, progress: bool) -> None:
    """Segment the object at each point / box prompt in SCENE and write one polygon per prompt to OUTPUT."""
    import geopandas as gpd
    import pandas as pd

    from geosam.export import check_output_path, render_overlay, write_vector
    from geosam.prompts import prompts_to_frame, segment_prompts

    check_output_path(output)  # before the run, so a typo loses nothing
    if overlay:
        check_output_path(overlay, "png")

    frames = []
    items: list[tuple[float, ...]] = parse_coordinate_list(points, 2, "--points") + parse_coordinate_list(boxes, 4, "--boxes")
    if prompts_file:
        try:
            f = gpd.read_file(prompts_file, layer=layer)
        except Exception as exc:  # pyogrio raises several types
            raise PromptError(f"{prompts_file}: cannot read prompts ({exc})") from exc
        if f.crs is None and prompt_crs is None:
            click.echo(f"Warning: {prompts_file} has no CRS; assuming the scene's.", err=True)
        frames.append(f if f.crs is not None or prompt_crs is None else f.set_crs(prompt_crs))
    if items:
        from rasterio.crs import CRS

        from geosam.io import SceneInfo, open_raster

        with open_raster(scene) as ds:
            crs = prompt_crs or CRS.from_wkt(SceneInfo.from_dataset(ds).crs_wkt)
        frames.append(prompts_to_frame(items, crs))
    if not frames:
        raise click.UsageError("give prompts with --points, --boxes or --prompts")
    if len(frames) == 1:
        prompts = frames[0]
    else:  # command-line prompts after the file's, in the file's CRS
        target = frames[0].crs or frames[1].crs
        prompts = gpd.GeoDataFrame(pd.concat([f.to_crs(target) if f.crs is not None else f for f in frames],
                                             ignore_index=True), crs=target)
    gdf = segment_prompts(
        scene,
        prompts,
        model=model,
        id_column=id_column,
        label_column=label_column,
        point_label_column=point_label_column,
        object_column=object_column,
        chip_size_px=chip_size_px,
        overlap_px=overlap_px,
        context=context,
        box_grow=box_grow,
        bands=parse_numbers(bands, int, "--bands"),
        fill_value=parse_numbers(fill_value, float, "--fill-value"),
        device=device,
        dtype=dtype,
        to_crs=to_crs,
        progress=progress,
    )
    out = write_vector(gdf, output)
    if overlay:
        render_overlay(scene, gdf[~gdf.geometry.is_empty], overlay, bands=parse_numbers(bands, int, "--bands"))
    counts = gdf.attrs.get("geosam", {}).get("status_counts", {})
    click.echo(f"{out}: {len(gdf)} prompts ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
               f"{gdf.attrs.get('geosam', {}).get('seconds', 0.0):.1f} s")
