"""Many scenes in one call: one output per scene, or one merged table with a ``scene`` column.

`segment_scenes` runs segment-everything (`geosam.modes.everything.everything_plan`, through the one
runner `geosam.modes.runner.run_mode`) for each scene; a scene that fails is reported (``failed``)
and the others go on. With a Dask ``scheduler`` one client serves every scene, so the chips of all
scenes share the cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from geosam.config import SegmentConfig
from geosam.errors import ConfigError, GeosamError
from geosam.read.sources import expand_sources

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.run.summary import RunSummary
    from geosam.segment.base import MaskGenerator

log = logging.getLogger(__name__)


def scene_name(scene: Any) -> str:
    """How outputs, messages and the merged ``scene`` column name a scene: its path, or a STAC scene's label."""
    return scene if isinstance(scene, str) else getattr(scene, "label", None) or os.fspath(scene)


def output_names(scenes: Sequence[Any], output_dir: str | os.PathLike[str], ext: str) -> dict[str, str]:
    """One output path per scene.

    Args:
        scenes: The scene paths (or STAC scenes: `scene_name`).
        output_dir: The folder of the outputs.
        ext: The outputs' suffix, e.g. ``".gpkg"``.

    Returns:
        Per scene name, ``output_dir`` / the scene's file stem (a STAC scene's label) plus ``ext`` (numbered
        when stems repeat).
    """
    used: dict[str, int] = {}
    out = {}
    for scene in scenes:
        s = scene_name(scene)
        stem = (s if not isinstance(scene, (str, os.PathLike)) else Path(s.rstrip("/").split("?")[0]).stem) or "scene"
        n = used.get(stem, 0)
        used[stem] = n + 1
        out[s] = os.path.join(os.fspath(output_dir), f"{stem}{f'_{n}' if n else ''}{ext}")
    return out


@dataclass
class ScenesResult:
    """What `segment_scenes` did.

    Attributes:
        frames: Each finished scene's table (only when nothing was written and not merged).
        merged: The merged table (``merge=True``), with a ``scene`` column.
        outputs: Written files per scene (or the merged file under ``"*"``).
        failed: Error message per failed scene.
    """

    frames: dict[str, gpd.GeoDataFrame] = field(default_factory=dict)
    merged: gpd.GeoDataFrame | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def merge_frames(frames: dict[str, gpd.GeoDataFrame], to_crs: Any = None) -> gpd.GeoDataFrame:
    """One table of every scene's objects with a ``scene`` column first.

    Args:
        frames: Each scene's table.
        to_crs: The merged table's CRS. Default: the scenes' CRS, or EPSG:4326 when they are in several (a UTM
            zone cannot hold a polar scene), with one warning naming them. Other CRSs are reprojected (valid,
            split at the antimeridian).

    Returns:
        The merged table.
    """
    import geopandas as gpd
    import pandas as pd

    if not frames:
        return gpd.GeoDataFrame({"scene": []}, geometry=gpd.GeoSeries([]))
    from geosam.assemble.reproject import reproject
    from geosam.geo import crs_label, same_crs

    first = next(iter(frames.values()))
    crss = [gdf.crs for gdf in frames.values() if gdf.crs is not None]
    several = any(not same_crs(c, crss[0]) for c in crss[1:])
    crs = to_crs or ("EPSG:4326" if several else first.crs)
    if several and to_crs is None:
        names = list(dict.fromkeys(crs_label(c) for c in crss))
        log.warning("the scenes are in %d CRSs (%s): merged in EPSG:4326 (pass to_crs / --to-crs to choose)",
                    len(names), ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
    parts = []
    for scene, gdf in frames.items():
        if gdf.crs is not None and not same_crs(gdf.crs, crs):
            gdf = reproject(gdf, crs)
        parts.append(gdf.assign(scene=scene)[["scene", *gdf.columns]])
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=crs)


def segment_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    mask_generator: MaskGenerator | Callable[[str], MaskGenerator] | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    merge: bool = False,
    output: str | os.PathLike[str] | None = None,
    ext: str = ".gpkg",
    resume: bool = False,
    config: SegmentConfig | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    on_scene: Callable[[str, RunSummary | None, str | None], None] | None = None,
    **settings: Any,
) -> ScenesResult:
    """Segment every scene; a scene failing with a geosam error is recorded in ``failed`` and the others go on.

    Args:
        scenes: Paths, globs or ``@list.txt`` (see `geosam.read.sources`), or STAC scenes (`geosam.stac`, named by
            their labels).
        mask_generator: One generator for every scene, or a function of the scene path returning one.
        output_dir: Write one vector file per scene there (``<stem><ext>``).
        merge: One table with a ``scene`` column instead, written to ``output`` when given.
        output: The merged table's file.
        ext: The suffix of the per-scene files.
        resume: Keep a journal beside each output (``<output>.geosam-journal``) and resume from it;
            removed after the write.
        config: As `geosam.modes.everything.segment_scene`.
        scheduler: One Dask client serves every scene (see `geosam.run.cluster.connect`).
        n_workers: Worker processes of ``scheduler="local"``.
        on_scene: Called after each scene with (scene, its run statistics or None, error or None).
        **settings: As `geosam.modes.everything.segment_scene`.

    Returns:
        The tables, written files and failures.

    Raises:
        ConfigError: No scenes, bad settings, or ``resume`` without an output.
    """
    from geosam.modes.everything import everything_plan
    from geosam.modes.runner import RunOptions, run_mode
    from geosam.run.journal import journal_path, remove_journal

    cfg = (config or SegmentConfig()).with_overrides(**settings)
    paths = expand_sources(scenes)
    if not paths:
        raise ConfigError("no scenes given")
    output, names = _plan_outputs(paths, output_dir=output_dir, merge=merge, output=output, ext=ext, resume=resume)
    result = ScenesResult()
    frames: dict[str, gpd.GeoDataFrame] = {}
    journals: list[str] = []  # merged runs: removed once the merged file is written
    with ExitStack() as stack:
        if merge and output is not None:  # one run per output (a second one is refused at once)
            from geosam.write.lock import output_lock

            stack.enter_context(output_lock(output))
        if scheduler is not None:
            from geosam.run.cluster import connect

            scheduler, n_workers = connect(stack, scheduler, n_workers), None  # one client for every scene
        for source in paths:
            scene = scene_name(source)
            target = names.get(scene) or (os.fspath(output) + f".{len(frames)}" if merge and output else None)
            journal = journal_path(target) if resume and target else None
            options = RunOptions(journal, scheduler, n_workers)
            try:  # one file per scene: objects streamed into it (memory independent of their number)
                build = everything_plan(cfg, _scene_generator(mask_generator, scene), journal)
                res = run_mode(source, cfg.read, build, options, names.get(scene))
            except GeosamError as exc:
                log.error("%s: %s", scene, exc)
                result.failed[scene] = str(exc)
                if on_scene is not None:
                    on_scene(scene, None, str(exc))
                continue
            if res.frame is not None:
                frames[scene] = res.frame
            elif res.summary.output is not None:
                result.outputs[scene] = res.summary.output
            if journal is not None:
                journals.append(journal)
                if scene in names:  # its output is written: the journal is done
                    remove_journal(journals.pop())
            if on_scene is not None:
                on_scene(scene, res.summary, None)
    if merge:
        _merge_into(result, frames, journals, output, cfg.output.to_crs or None)
    else:
        result.frames = frames
    return result


def _plan_outputs(
    paths: Sequence[Any],
    *,
    output_dir: str | os.PathLike[str] | None,
    merge: bool,
    output: str | os.PathLike[str] | None,
    ext: str,
    resume: bool,
) -> tuple[str | os.PathLike[str] | None, dict[str, str]]:
    """(the merged output, or None; the output path per scene, empty when merged or not written).

    A merged run with an ``output_dir`` and no ``output`` writes ``merged<ext>`` there;
    ``output_dir`` is created.
    """
    if merge and output_dir is not None and output is None:
        output = os.path.join(os.fspath(output_dir), f"merged{ext}")
    if resume and output_dir is None and output is None:
        raise ConfigError("resume needs an output_dir or output (the journals are kept beside the outputs)")
    names = output_names(paths, output_dir, ext) if output_dir is not None and not merge else {}
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    return output, names


def _scene_generator(
    mask_generator: MaskGenerator | Callable[[str], MaskGenerator] | None, scene: str
) -> MaskGenerator | None:
    """The mask generator for ``scene``: the one given, or what a function of the scene path returns."""
    if mask_generator is None or hasattr(mask_generator, "generate"):
        return cast("MaskGenerator | None", mask_generator)
    return mask_generator(scene)  # a function of the scene path


def _merge_into(result: ScenesResult, frames: dict[str, gpd.GeoDataFrame], journals: list[str],
                output: str | os.PathLike[str] | None, to_crs: Any) -> None:
    """Merge the scenes' tables into ``result``; write them to ``output`` (then drop the journals)."""
    from geosam.run.journal import remove_journal
    from geosam.write.vector import write_vector

    result.merged = merge_frames(frames, to_crs)
    if output is not None:
        result.outputs["*"] = str(write_vector(result.merged, output))
        for journal in journals:
            remove_journal(journal)


__all__ = ["ScenesResult", "merge_frames", "output_names", "scene_name", "segment_scenes"]
