"""Prompts from where a user keeps them: a vector file plus point / box coordinates, as one GeoDataFrame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geosam.errors import PromptError
from geosam.prompts.checks import check_coordinates
from geosam.prompts.from_list import prompts_to_frame
from geosam.prompts.parse import warn_prompt

if TYPE_CHECKING:
    import geopandas as gpd


def gather_prompts(
    scene: Any,
    *,
    prompts_file: str | None = None,
    layer: str | None = None,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    prompt_crs: Any = None,
) -> gpd.GeoDataFrame:
    """Prompts from a vector file and from point / box coordinates, as one GeoDataFrame.

    The file's rows come first (in the file's CRS, or ``prompt_crs``, or the scene's when it has none,
    with a warning; a GeoJSON without a ``crs`` member is WGS84 unless ``prompt_crs`` is given), then
    ``points`` and ``boxes`` (in ``prompt_crs``, default the scene's), reprojected to the file's CRS.

    Args:
        scene: The scene the prompts are for (its CRS is the default): a raster path, a DataArray or a STAC
            item / `geosam.stac.StacScene`.
        prompts_file: A vector file of prompts (see `geosam.prompts.parse`).
        layer: The file's layer (default: the first).
        points: ``(x, y)`` point prompts.
        boxes: ``(minx, miny, maxx, maxy)`` box prompts.
        prompt_crs: The CRS of ``points`` / ``boxes`` and of a file without one.

    Returns:
        The prompts; ``attrs["geosam_source"]`` names the file (in messages about its rows), and
        ``attrs["geosam_crs_from_scene"]`` lists what took the scene's CRS for want of its own (the file, the
        points / boxes; see `check_scenes_crs`).

    Raises:
        PromptError: The file cannot be read, its coordinates cannot be longitude / latitude (pass
            ``--prompt-crs``), or there is no prompt at all.
    """
    import geopandas as gpd
    import pandas as pd

    from geosam.prompts.table import has_geometry, points_from_table
    from geosam.read.scene import Scene

    with Scene(scene, stretch=None) as sc:  # a path, a DataArray or a STAC scene; no pixel read
        scene_crs = sc.info.crs_wkt

    frames = []
    assumed: list[str] = []  # what has no CRS of its own and takes the scene's
    if prompts_file:
        try:
            f = gpd.read_file(prompts_file, layer=layer)
        except Exception as exc:
            raise PromptError(f"{prompts_file}: cannot read prompts ({exc})") from exc
        if not has_geometry(f):  # a CSV of x,y / lon,lat columns
            f = points_from_table(f, str(prompts_file))
        if f.crs is not None and prompt_crs is not None and _geojson_without_crs(prompts_file):
            f = f.set_crs(prompt_crs, allow_override=True)  # GDAL reads such a file as WGS84
        elif f.crs is None:
            if prompt_crs is None:
                warn_prompt(f"{prompts_file} has no CRS; assuming the scene's")
                assumed.append(f"the prompts file {prompts_file}")
            f = f.set_crs(prompt_crs if prompt_crs is not None else scene_crs)
        check_coordinates(f, prompts_file)
        frames.append(f)
    items = [tuple(p) for p in points] + [tuple(b) for b in boxes]
    if items:
        frames.append(prompts_to_frame(items, prompt_crs if prompt_crs is not None else scene_crs))
        if prompt_crs is None:
            assumed.append("the points / boxes")
    if not frames:
        raise PromptError("no prompts given: use a prompts file, points or boxes")
    if len(frames) == 1:
        out = frames[0]
    else:
        target = frames[0].crs
        out = gpd.GeoDataFrame(pd.concat([f.to_crs(target) for f in frames], ignore_index=True), crs=target)
    if prompts_file:
        out.attrs["geosam_source"] = str(prompts_file)  # named in messages about its rows
    out.attrs["geosam_crs_from_scene"] = assumed
    return out


def check_scenes_crs(without_crs: Sequence[str], scenes: Sequence[Any],
                     remedy: str = "--prompt-crs / prompt_crs=, or a file with one") -> None:
    """Refuse prompts without a CRS of their own for scenes in several CRSs.

    Prompts without a CRS take a scene's (`gather_prompts`: the first scene's, then reprojected to each
    other's; exemplars: each scene's own). On scenes in several CRSs (the items of one search in two UTM zones)
    their numbers can be right in one CRS only, and would silently mean another place in the others. Prompts
    with a CRS are reprojected to each scene's, and need no check.

    Args:
        without_crs: What has no CRS (``attrs["geosam_crs_from_scene"]`` of `gather_prompts`, or an exemplars
            file), named in the message; nothing to check when empty.
        scenes: The scenes the prompts are used on (raster paths, DataArrays, STAC scenes); no pixel is read.
        remedy: How to give the prompts a CRS, in the message.

    Raises:
        PromptError: ``without_crs`` is not empty and the scenes are in more than one CRS; the message names
            each CRS with its scenes and says to give the prompts' CRS.
    """
    from rasterio.crs import CRS

    from geosam.geo import same_crs
    from geosam.read.scene import Scene

    if not without_crs or len(scenes) < 2:
        return
    groups: list[tuple[str, list[str]]] = []  # (CRS WKT, scene names), in the scenes' order
    for scene in scenes:
        with Scene(scene, stretch=None) as sc:
            wkt = sc.info.crs_wkt
        name = str(getattr(scene, "label", scene))
        for crs, names in groups:
            if same_crs(crs, wkt):
                names.append(name)
                break
        else:
            groups.append((wkt, [name]))
    if len(groups) < 2:
        return
    listed = "; ".join(f"{CRS.from_wkt(crs).to_string()}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                       for crs, names in groups)
    raise PromptError(f"{' and '.join(without_crs)}: no CRS, and the scenes are in {len(groups)} CRSs ({listed}): "
                      f"coordinates without a CRS can be right in one of them only. Give their CRS ({remedy}), "
                      "or run the scenes of each CRS apart")


def _geojson_without_crs(path: str) -> bool:
    """True for a GeoJSON file without a top-level ``crs`` member (WGS84 by definition, RFC 7946)."""
    import json

    if not str(path).lower().endswith((".geojson", ".json")):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "crs" not in doc


__all__ = ["check_scenes_crs", "gather_prompts"]
