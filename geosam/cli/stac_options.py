"""``geosam segment`` on STAC items and searches: the options and the run over the scenes they give.

A SCENE that is an item's JSON (file or URL), ``--stac-search URL`` (with ``--collection``,
``--bbox``, ``--datetime``, ``--query``) or ``--stac-items COLLECTION.json`` makes the command read
STAC: one scene per item (``--group item``) or one mosaic per day (``--group day``), each written
to ``--output-dir`` as ``<item id or collection_date_orbit><--format>`` (one scene may use ``-o``).
Every scene's grid and bands are checked, and every output path, before the first pixel is read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from geosam.cli.help import option
from geosam.cli.options import NumberList

F = Callable[..., Any]

#: the options this module adds (popped from the command's settings by `pop_stac_options`)
NAMES = ("assets", "resolution_m", "mask_asset", "mask_values", "stac_search", "stac_items", "collections", "bbox",
         "datetime", "query", "group", "max_items", "sign", "no_sign_request", "requester_pays", "http_timeout_s",
         "http_retries")

def _stac_option(*decls: str, **kw: Any) -> Callable[[Any], Any]:
    """An option listed under --help's "STAC input" section."""
    return option(*decls, group="stac", **kw)


_OPTIONS = [
    _stac_option("--assets", help="STAC: bands by eo:bands common name or asset key, e.g. red,green,blue,nir "
                 "(default: red,green,blue and nir where present; band roles follow the common names)."),
    _stac_option("--resolution", "resolution_m", type=float,
                 help="STAC: pixel size of the grid (CRS units; default: the finest chosen asset's)."),
    _stac_option("--mask-asset", help="STAC: a classification asset masking pixels, e.g. scl (with --mask-values)."),
    _stac_option("--mask-values", type=NumberList(int), default=(), help="STAC: classes of --mask-asset that are "
                 "invalid, e.g. 3,8,9,10 (Sentinel-2 SCL: cloud shadow, clouds, cirrus)."),
    _stac_option("--stac-search", help="STAC API URL to search (pystac-client), e.g. "
                 "https://earth-search.aws.element84.com/v1."),
    _stac_option("--stac-items", help="STAC: an ItemCollection JSON file or URL (a FeatureCollection of items)."),
    _stac_option("--collection", "collections", multiple=True, help="--stac-search: collection id (repeatable)."),
    _stac_option("--bbox", type=NumberList(float, 4), help="--stac-search: lon_min,lat_min,lon_max,lat_max."),
    _stac_option("--datetime", help="--stac-search: an instant or a range, e.g. 2024-04/2024-10."),
    _stac_option("--query", multiple=True, help="--stac-search: a property filter, e.g. 'eo:cloud_cover<20' "
                 "(repeatable)."),
    _stac_option("--group", type=click.Choice(["item", "day"]), default="item", show_default=True,
                 help="STAC: one output per item, or one mosaic per day and orbit."),
    _stac_option("--max-items", type=int, default=1000, show_default=True, help="--stac-search: at most this many."),
    _stac_option("--sign", help="STAC: sign asset URLs with this function, e.g. planetary_computer:sign."),
    _stac_option("--no-sign-request", is_flag=True, help="STAC: read public S3 buckets anonymously."),
    _stac_option("--requester-pays", is_flag=True, help="STAC: S3 requester-pays buckets (you pay the transfer)."),
    _stac_option("--http-timeout", "http_timeout_s", type=float, default=30.0, show_default=True,
                 help="STAC: seconds before an HTTP request is abandoned."),
    _stac_option("--http-retries", type=int, default=4, show_default=True,
                 help="STAC: retries of transient HTTP errors (429, 5xx) before a chip fails."),
]


def stac_options(fn: F) -> F:
    """Add the STAC options to a command."""
    for opt in reversed(_OPTIONS):
        fn = opt(fn)
    return fn


def pop_stac_options(settings: dict[str, Any]) -> dict[str, Any]:
    """The STAC options, removed from a command's ``settings``."""
    return {k: settings.pop(k) for k in NAMES if k in settings}


def stac_sources(scenes: tuple[str, ...], opts: dict[str, Any]) -> list[Any] | None:
    """The STAC scenes the command line names, or None when it names no STAC (plain rasters)."""
    from geosam.stac import RemoteEnv, is_stac, load_signer
    from geosam.stac.search import check_scenes, search, stac_scenes

    stac_args = [s for s in scenes if is_stac(s)]
    if not (opts.get("stac_search") or opts.get("stac_items") or stac_args):
        if opts.get("assets") or opts.get("mask_asset"):
            raise click.UsageError("--assets and --mask-asset need STAC scenes (an item JSON, --stac-search or "
                                   "--stac-items)")
        return None
    if len(stac_args) != len(scenes):
        raise click.UsageError("mix of STAC items and rasters: give either item JSONs or raster files")
    env = RemoteEnv(timeout_s=opts["http_timeout_s"], max_retries=opts["http_retries"],
                    no_sign_request=opts["no_sign_request"], requester_pays=opts["requester_pays"])
    items: list[Any] = list(stac_args)
    if opts.get("stac_items"):
        items.append(opts["stac_items"])
    if opts.get("stac_search"):
        items += search(opts["stac_search"], collections=list(opts["collections"]) or None, bbox=opts["bbox"],
                        datetime=opts["datetime"], query=list(opts["query"]) or None, max_items=opts["max_items"],
                        env=env)
    out = stac_scenes(items, opts["group"], assets=opts.get("assets"), resolution_m=opts.get("resolution_m"),
                      mask_asset=opts.get("mask_asset"), mask_values=opts.get("mask_values") or (), env=env,
                      sign=load_signer(opts.get("sign")))
    check_scenes(out)  # bands and one CRS per scene: before any output
    return out


def segment_stac(scenes: list[Any], cfg: Any, *, output: str | None, output_dir: str | None, fmt: str,
                 resume: bool, overwrite: bool, scheduler: str | None, n_workers: int | None,
                 extras: dict[str, Any]) -> None:
    """Segment STAC ``scenes``: ``-o`` for one, ``--output-dir`` for any number; exit 1 when one failed."""
    from geosam.cli.report import report
    from geosam.errors import GeosamError
    from geosam.modes.everything import segment_scene_to_file
    from geosam.run.journal import journal_path, remove_journal
    from geosam.write.paths import check_outputs

    if any(extras.values()):
        raise click.UsageError(f"{', '.join(k for k, v in extras.items() if v)} not supported with STAC scenes yet")
    if output_dir is None and (output is None or len(scenes) > 1):
        raise click.UsageError(f"{len(scenes)} STAC scenes: give --output-dir DIR (one file per scene)"
                               if len(scenes) > 1 else "give -o/--output FILE (or --output-dir DIR)")
    targets = {sc.label: str(output) if output_dir is None else str(Path(output_dir) / f"{sc.label}{fmt}")
               for sc in scenes}
    check_outputs({f"output of {k}": v for k, v in targets.items()}, overwrite=overwrite)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    failed = 0
    for sc in scenes:
        target = targets[sc.label]
        journal = journal_path(target) if resume else None
        try:
            summary = segment_scene_to_file(sc, target, config=cfg, journal=journal, scheduler=scheduler,
                                            n_workers=n_workers)
        except GeosamError as exc:
            if len(scenes) == 1:
                raise
            failed += 1
            click.echo(f"{sc.label}: failed: {exc}", err=True)
            continue
        report(summary, False)
        if journal is not None:
            remove_journal(journal)
    if len(scenes) > 1:
        click.echo(f"{len(scenes) - failed} of {len(scenes)} scenes done" + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)


__all__ = ["pop_stac_options", "segment_stac", "stac_options", "stac_sources"]
