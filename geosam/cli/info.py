"""``geosam info SCENE``: what geosam sees in a raster, without reading its pixels.

``--check`` also reads every block (`geosam.read.scene.check_blocks`) and lists the
unreadable ones with GDAL's message; the exit code is then 1. A STAC item (``ITEM.json --assets ...``,
or the STAC options giving one scene) is described as it would be read: its grid, its bands and
each asset with its size (`geosam.stac.describe.describe_scene`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from geosam.cli.common import handle_errors
from geosam.cli.help import GroupedCommand
from geosam.cli.stac_options import one_scene, stac_options


@click.command(cls=GroupedCommand)
@click.argument("scene", required=False)
@click.option("--chip-size", "chip_size_px", type=int, default=1024, show_default=True, help="Chip size in pixels.")
@click.option("--overlap", "overlap_px", type=int, default=128, show_default=True, help="Chip overlap in pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--check", is_flag=True, help="Read every block and report unreadable ones (exit code 1 if there are any)."
)
@stac_options
@handle_errors
def info(scene: str | None, chip_size_px: int, overlap_px: int, as_json: bool, check: bool, **stac_opts: Any) -> None:
    """Describe SCENE: size, bands, CRS, nodata, default bands and chip grid (a STAC item: also its assets).

    SCENE: a raster (path or GDAL URL) or a STAC item (JSON file or URL; or --stac-items / --stac-search
    giving one item or one day)."""
    from geosam.errors import GeosamError
    from geosam.read.scene import ReadConfig, Scene, check_blocks
    from geosam.stac import StacScene

    source = one_scene(scene, stac_opts)
    stac = isinstance(source, StacScene)
    if check and stac:
        raise click.UsageError("--check reads every block of a raster file; a STAC scene's assets are read chip by "
                               "chip (geosam segment --skip-bad-chips lists unreadable chips)")
    n_blocks, bad = check_blocks(source) if check else (0, [])
    try:
        sc = Scene(source, ReadConfig())
    except GeosamError:
        for b in bad:  # the blocks explain why the scene cannot be used
            click.echo(f"unreadable {b}", err=True)
        raise
    with sc:
        i = sc.info
        n_chips = len(sc.chip_specs(chip_size_px, overlap_px))
        d: dict[str, Any] = {
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
    if stac:
        from geosam.stac.describe import describe_scene

        d["stac"] = describe_scene(source)
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
            if k not in ("unreadable_blocks", "stac"):
                click.echo(f"{k:>12}: {v}")
        if stac:
            from geosam.stac.describe import format_description

            click.echo("\n".join(format_description(d["stac"])))
        if check:
            click.echo(f"{'check':>12}: {len(bad)} of {n_blocks} blocks unreadable")
            for b in bad:
                click.echo(f"{'':>12}  {b}")
    if check and bad:
        click.echo(f"Error: {scene}: {len(bad)} of {n_blocks} blocks are unreadable", err=True)
        sys.exit(1)
