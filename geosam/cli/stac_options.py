"""STAC items and searches on the command line: one option group for every command that takes a scene.

A SCENE that is an item's JSON (file or URL), ``--stac-search URL`` (with ``--collection``,
``--bbox``, ``--datetime``, ``--query``) or ``--stac-items COLLECTION.json`` makes the command read
STAC, with the bands of ``--assets`` on the grid of ``--resolution``. ``geosam segment``: one scene per
item (``--group item``) or one mosaic per day (``--group day``), each written to ``--output-dir`` as
``<item id or collection_date_orbit><--format>``, or ``--merge``d; one scene may use ``-o`` and the
``--label-raster`` / ``--index-raster`` / ``--overlay`` extras. ``prompt`` and ``text`` take one scene (``-o``)
or write one output per scene to ``--output-dir`` with the same ``--format`` (`scene_outputs`); ``info`` takes
one scene (`one_scene`); ``monitor`` takes the dated, cloud-masked day mosaics (`stac_dated`).
Every scene's grid and bands are checked, and every output path, before the first pixel is read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from geosam.cli.help import option
from geosam.cli.options import NumberList

F = Callable[..., Any]

def _stac_option(*decls: str, **kw: Any) -> Callable[[Any], Any]:
    """An option listed under --help's "STAC input" section."""
    return option(*decls, group="stac", **kw)


_OPTIONS: dict[str, Callable[[F], F]] = {
    "assets": _stac_option("--assets", help="STAC: bands by eo:bands common name or asset key, e.g. red,green,blue,nir "
                           "(default: red,green,blue and nir where present; band roles follow the common names)."),
    "resolution_m": _stac_option("--resolution", "resolution_m", type=float,
                                 help="STAC: pixel size of the grid (CRS units; default: the finest chosen asset's)."),
    "mask_asset": _stac_option("--mask-asset", help="STAC: a classification asset masking pixels, e.g. scl (with "
                               "--mask-values)."),
    "mask_values": _stac_option("--mask-values", type=NumberList(int), default=(), help="STAC: classes of "
                                "--mask-asset that are invalid, e.g. 3,8,9,10 (Sentinel-2 SCL: cloud shadow, clouds, "
                                "cirrus)."),
    "stac_search": _stac_option("--stac-search", help="STAC API URL to search (pystac-client), e.g. "
                                "https://earth-search.aws.element84.com/v1."),
    "stac_items": _stac_option("--stac-items", help="STAC: an ItemCollection JSON file or URL (a FeatureCollection "
                               "of items)."),
    "collections": _stac_option("--collection", "collections", multiple=True,
                                help="--stac-search: collection id (repeatable)."),
    "bbox": _stac_option("--bbox", type=NumberList(float, 4), help="--stac-search: lon_min,lat_min,lon_max,lat_max."),
    "datetime": _stac_option("--datetime", help="--stac-search: an instant or a range, e.g. 2024-04/2024-10."),
    "query": _stac_option("--query", multiple=True, help="--stac-search: a property filter, e.g. "
                          "'eo:cloud_cover<20' (repeatable)."),
    "group": _stac_option("--group", type=click.Choice(["item", "day"]), default="item", show_default=True,
                          help="STAC: one scene per item, or one mosaic per day and orbit."),
    "max_items": _stac_option("--max-items", type=int, default=1000, show_default=True,
                              help="--stac-search: at most this many."),
    "sign": _stac_option("--sign", help="STAC: sign asset URLs with this function, e.g. planetary_computer:sign."),
    "no_sign_request": _stac_option("--no-sign-request", is_flag=True,
                                    help="STAC: read public S3 buckets anonymously."),
    "requester_pays": _stac_option("--requester-pays", is_flag=True,
                                   help="STAC: S3 requester-pays buckets (you pay the transfer)."),
    "http_timeout_s": _stac_option("--http-timeout", "http_timeout_s", type=float, default=30.0, show_default=True,
                                   help="STAC: seconds before an HTTP request is abandoned."),
    "http_retries": _stac_option("--http-retries", type=int, default=4, show_default=True,
                                 help="STAC: retries of transient HTTP errors (429, 5xx) before a chip fails."),
}
#: the options this module adds (popped from the command's settings by `pop_stac_options`)
NAMES = tuple(_OPTIONS)


def stac_option_group(*, without: Sequence[str] = ()) -> Callable[[F], F]:
    """The STAC options (every command that takes a scene has them), less ``without``.

    Args:
        without: Parameter names the command declares itself with the same meaning (``geosam monitor``'s
            ``mask_values`` serves its mask band and the mask asset) or that it fixes (its ``group`` is "day").

    Returns:
        A decorator adding the options.
    """
    unknown = set(without) - set(NAMES)
    if unknown:
        raise ValueError(f"not STAC options: {sorted(unknown)}")
    chosen = [opt for name, opt in _OPTIONS.items() if name not in without]

    def decorate(fn: F) -> F:
        for opt in reversed(chosen):
            fn = opt(fn)
        return fn

    return decorate


#: the whole STAC option group
stac_options = stac_option_group()


def pop_stac_options(settings: dict[str, Any]) -> dict[str, Any]:
    """The STAC options, removed from a command's ``settings``."""
    return {k: settings.pop(k) for k in NAMES if k in settings}


def stac_args(scenes: Sequence[str], opts: dict[str, Any]) -> list[str] | None:
    """The SCENES that are STAC items (JSON files or URLs), or None when the command line names no STAC (plain
    rasters); a UsageError for a mix, or for ``--assets`` / ``--mask-asset`` without STAC. Reads nothing."""
    from geosam.stac import is_stac

    found = [s for s in scenes if is_stac(s)]
    if not (opts.get("stac_search") or opts.get("stac_items") or found):
        if opts.get("assets") or opts.get("mask_asset"):
            raise click.UsageError("--assets and --mask-asset need STAC scenes (an item JSON, --stac-search or "
                                   "--stac-items)")
        return None
    if len(found) != len(scenes):
        raise click.UsageError("mix of STAC items and rasters: give either item JSONs or raster files")
    return found


def _env(opts: dict[str, Any]) -> Any:
    from geosam.stac import RemoteEnv

    return RemoteEnv(timeout_s=opts["http_timeout_s"], max_retries=opts["http_retries"],
                     no_sign_request=opts["no_sign_request"], requester_pays=opts["requester_pays"])


def _items(args: list[str], opts: dict[str, Any], env: Any) -> list[Any]:
    """What the scenes are made of: item JSONs, ``--stac-items`` and the items ``--stac-search`` finds."""
    from geosam.stac.search import search

    items: list[Any] = list(args)
    if opts.get("stac_items"):
        items.append(opts["stac_items"])
    if opts.get("stac_search"):
        items += search(opts["stac_search"], collections=list(opts["collections"]) or None, bbox=opts["bbox"],
                        datetime=opts["datetime"], query=list(opts["query"]) or None, max_items=opts["max_items"],
                        env=env)
    return items


def _read_kw(opts: dict[str, Any], env: Any, mask_values: Sequence[int] | None = None) -> dict[str, Any]:
    from geosam.stac import load_signer

    values = opts.get("mask_values") if mask_values is None else mask_values
    return {"assets": opts.get("assets"), "resolution_m": opts.get("resolution_m"), "mask_asset": opts.get("mask_asset"),
            "mask_values": values or (), "env": env, "sign": load_signer(opts.get("sign"))}


def stac_sources(scenes: Sequence[str], opts: dict[str, Any]) -> list[Any] | None:
    """The STAC scenes the command line names (one per item, or per day with ``--group day``), every grid and band
    checked; None when it names no STAC (plain rasters)."""
    from geosam.stac.search import check_scenes, stac_scenes

    args = stac_args(scenes, opts)
    if args is None:
        return None
    env = _env(opts)
    out = stac_scenes(_items(args, opts, env), opts.get("group", "item"), **_read_kw(opts, env))
    check_scenes(out)  # bands and one CRS per scene: before any output
    return out


def one_scene(scene: str | None, opts: dict[str, Any]) -> Any:
    """The scene of a one-scene command (``info``): SCENE, or the one STAC scene it or the STAC options name (an
    item JSON, ``--stac-items``, ``--stac-search`` finding one item or one day)."""
    scenes = stac_sources(() if scene is None else (scene,), opts)
    if scenes is None:
        if scene is None:
            raise click.UsageError("give SCENE (a raster or a STAC item JSON), or --stac-search / --stac-items")
        return scene
    if len(scenes) != 1:
        raise click.UsageError(_several(scenes, "this command takes one"))
    return scenes[0]


def _several(scenes: Sequence[Any], what: str) -> str:
    names = ", ".join(s.label for s in scenes[:4]) + (", ..." if len(scenes) > 4 else "")
    return (f"the STAC options give {len(scenes)} scenes ({names}); {what}: narrow the search (--datetime, --bbox, "
            "--max-items 1) or join a day's items with --group day")


#: ``--output-dir`` of ``prompt`` and ``text``: one output per STAC scene
output_dir_option = option("--output-dir", type=click.Path(file_okay=False), group="output",
                           help="STAC options giving several scenes: one file per scene in this folder, named by "
                           "item id (or day with --group day): <label><--format>.")


def scene_outputs(scene: str | None, opts: dict[str, Any], output: str | None, output_dir: str | None,
                  extras: Sequence[str] = (), fmt: str = ".gpkg") -> list[tuple[Any, str]]:
    """(scene, output path) of each run of a command that writes one output per scene (``prompt``, ``text``).

    Args:
        scene: SCENE: a raster, an item JSON, or None (the STAC options name the scenes).
        opts: the STAC options (`pop_stac_options`).
        output: ``-o``: the output of one scene.
        output_dir: ``--output-dir``: one ``<label><fmt>`` per STAC scene.
        extras: the one-scene options given (``--overlay``, ``--label-raster``), for the message.
        fmt: ``--format``: the suffix of the ``--output-dir`` outputs, as `geosam.cli.options.check_output_choice`
            returns it.

    Returns:
        One pair per scene: SCENE (a raster path) or a STAC scene, with its output.

    Raises:
        click.UsageError: no scene; ``-o`` and ``--output-dir`` both or neither; ``-o`` for several scenes;
            ``--output-dir`` without STAC or with ``extras``.
    """
    scenes = stac_sources(() if scene is None else (scene,), opts)
    if scenes is None and scene is None:
        raise click.UsageError("give SCENE (a raster or a STAC item JSON), or --stac-search / --stac-items")
    if output is not None and output_dir is not None:
        raise click.UsageError("give -o/--output FILE (one scene) or --output-dir DIR (one file per scene), not both")
    if output_dir is None:
        if scenes is not None and len(scenes) != 1:
            raise click.UsageError(_several(scenes, "give --output-dir DIR for one output each, or -o for one"))
        if output is None:
            raise click.UsageError("give -o/--output FILE")
        return [(scene if scenes is None else scenes[0], output)]
    if scenes is None:
        raise click.UsageError("--output-dir is for STAC options giving several scenes; give -o/--output FILE")
    if extras:
        raise click.UsageError(f"{', '.join(extras)} take one scene; give -o/--output FILE")
    return [(sc, str(Path(output_dir) / f"{sc.label}{fmt}")) for sc in scenes]


def each_scene(runs: Sequence[tuple[Any, str]], run: Callable[[Any, str], None]) -> None:
    """``run(scene, output)`` for each pair; with several, a failing scene (a geosam error) is reported and the
    others go on, then the count of scenes done is echoed and the exit code is 1 when one failed."""
    from geosam.errors import GeosamError

    failed = 0
    for scene, output in runs:
        if len(runs) > 1:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        try:
            run(scene, output)
        except GeosamError as exc:
            if len(runs) == 1:
                raise
            failed += 1
            click.echo(f"{getattr(scene, 'label', scene)}: failed: {exc}", err=True)
    if len(runs) > 1:
        click.echo(f"{len(runs) - failed} of {len(runs)} scenes done" + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)


def stac_dated(scenes: Sequence[str], opts: dict[str, Any], mask_values: Sequence[int]) -> list[Any] | None:
    """The dated, cloud-masked scenes (`geosam.stac.search.dated_scenes`: one mosaic per day) the command line
    names, or None when it names no STAC. ``mask_values``: the classes of ``--mask-asset`` that are invalid."""
    from geosam.stac.search import dated_scenes

    args = stac_args(scenes, opts)
    if args is None:
        return None
    env = _env(opts)
    return dated_scenes(_items(args, opts, env), **_read_kw(opts, env, mask_values))


def segment_stac(scenes: list[Any], cfg: Any, *, output: str | None, output_dir: str | None, fmt: str,
                 resume: bool, overwrite: bool, scheduler: str | None, n_workers: int | None) -> None:
    """Segment STAC ``scenes``, one output each in ``--output-dir``; exit 1 when one failed."""
    from geosam.cli.report import report
    from geosam.modes.everything import segment_scene_to_file
    from geosam.run.journal import journal_path, remove_journal
    from geosam.write.paths import check_outputs

    if output_dir is None and (output is None or len(scenes) > 1):
        raise click.UsageError(f"{len(scenes)} STAC scenes: give --output-dir DIR (one file per scene) or --merge"
                               if len(scenes) > 1 else "give -o/--output FILE (or --output-dir DIR)")
    targets = {sc.label: str(output) if output_dir is None else str(Path(output_dir) / f"{sc.label}{fmt}")
               for sc in scenes}
    check_outputs({f"output of {k}": v for k, v in targets.items()}, overwrite=overwrite)

    def run(sc: Any, target: str) -> None:
        journal = journal_path(target) if resume else None
        summary = segment_scene_to_file(sc, target, config=cfg, journal=journal, scheduler=scheduler,
                                        n_workers=n_workers)
        report(summary, False)
        if journal is not None:
            remove_journal(journal)

    each_scene([(sc, targets[sc.label]) for sc in scenes], run)


__all__ = ["each_scene", "one_scene", "output_dir_option", "pop_stac_options", "scene_outputs", "segment_stac",
           "stac_args", "stac_dated", "stac_option_group", "stac_options", "stac_sources"]
