"""``geosam info SCENE``: what geosam sees in a raster, without reading its pixels.

``--check`` also reads every block (`geosam.read.scene.check_blocks`) and lists the
unreadable ones with GDAL's message; the exit code is then 1.
"""

from __future__ import annotations

import json
import sys

import click

from geosam.cli.common import handle_errors
from geosam.cli.help import GroupedCommand


@click.command(cls=GroupedCommand)
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--chip-size", "chip_size_px", type=int, default=1024, show_default=True, help="Chip size in pixels.")
@click.option("--overlap", "overlap_px", type=int, default=128, show_default=True, help="Chip overlap in pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--check", is_flag=True, help="Read every block and report unreadable ones (exit code 1 if there are any)."
)
@handle_errors
def info(scene: str, chip_size_px: int, overlap_px: int, as_json: bool, check: bool) -> None:
    """Describe SCENE: size, bands, CRS, nodata, default bands and chip grid."""
    from geosam.errors import GeosamError
    from geosam.read.scene import ReadConfig, Scene, check_blocks

    n_blocks, bad = check_blocks(scene) if check else (0, [])
    try:
        sc = Scene(scene, ReadConfig())
    except GeosamError:
        for b in bad:  # the blocks explain why the scene cannot be used
            click.echo(f"unreadable {b}", err=True)
        raise
    with sc:
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
    if check:
        d["blocks"] = n_blocks
        d["unreadable_blocks"] = [
            {"col_off": b.window.col_off, "row_off": b.window.row_off, "width": b.window.width,
             "height": b.window.height, "error": b.message}
            for b in bad
        ]
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            if k != "unreadable_blocks":
                click.echo(f"{k:>12}: {v}")
        if check:
            click.echo(f"{'check':>12}: {len(bad)} of {n_blocks} blocks unreadable")
            for b in bad:
                click.echo(f"{'':>12}  {b}")
    if check and bad:
        click.echo(f"Error: {scene}: {len(bad)} of {n_blocks} blocks are unreadable", err=True)
        sys.exit(1)
