"""``geosam info SCENE``: what geosam sees in a raster, without reading its pixels."""

from __future__ import annotations

import json

import click

from geosam.cli.main import handle_errors


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--chip-size", "chip_size_px", type=int, default=1024, show_default=True, help="Chip size in pixels.")
@click.option("--overlap", "overlap_px", type=int, default=128, show_default=True, help="Chip overlap in pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def info(scene: str, chip_size_px: int, overlap_px: int, as_json: bool) -> None:
    """Describe SCENE: size, bands, CRS, nodata, default bands and chip grid."""
    from geosam.io import ReadConfig, Scene

    with Scene(scene, ReadConfig()) as sc:
        i = sc.info
        n_chips = len(sc.chip_specs(chip_size_px, overlap_px))
        d = {
            "path": i.path,
            "width": i.width,
            "height": i.height,
            "bands": i.count,
            "dtype": i.dtype,
            "crs": i.crs_name,
            "geographic": i.is_geographic,
            "resolution": list(i.res),
            "bounds": list(i.bounds),
            "nodata": i.nodata,
            "colorinterp": list(i.colorinterp),
            "descriptions": list(i.descriptions),
            "model_bands": list(sc.bands),
            "stretch": None if sc.stretch is None else [list(map(float, r)) for r in sc.stretch],
            "chips": n_chips,
        }
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        click.echo(f"{k:>12}: {v}")
