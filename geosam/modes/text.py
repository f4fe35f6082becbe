"""Text mode: every object named by a noun phrase across a whole scene (`segment_text`, `segment_text_to_file`).

A text run is segment-everything's plan (`geosam.modes.everything.grid_plan`) with another
per-chip generator: the same chip grid, run loop, `geosam.assemble.assemblers.GridAssembler`
(an object cut by a seam comes out whole; masks of different phrases never merge), index
statistics, ``min_index`` filter and prefilter, and the same run options (journal, Dask, output
streaming, object hooks). Only the leading columns differ: ``id, label, score, area_m2, n_chips,
model`` (+ index columns), ``geometry``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from geosam.assemble.records import ObjectHook
from geosam.config import SegmentConfig
from geosam.config.text import DEFAULT_TEXT_MODEL, TextConfig
from geosam.errors import ConfigError
from geosam.modes.everything import grid_plan
from geosam.modes.runner import ModePlan, PlanBuilder, RunOptions, run_frame, run_mode
from geosam.read.scene import Scene
from geosam.run.summary import RunSummary
from geosam.segment.base import MaskGenerator

if TYPE_CHECKING:
    import geopandas as gpd

    from geosam.models import SamBundle

#: text mode's columns before the index columns and ``geometry``
TEXT_COLUMNS = ("id", "label", "score", "area_m2", "n_chips", "model")

#: the phrases of a text run: one, several, or none (exemplars alone)
Phrases = str | list[str] | tuple[str, ...] | None


def _encode_exemplars(bundle: SamBundle, sc: Scene, boxes: list[Any], windows: list[Any]) -> Any:
    """SAM 3 prompt tokens of the exemplars, each shown on its window (read and stretched as chips are)."""
    from geosam.models.sam3_exemplars import encode_exemplars
    from geosam.prompts.exemplars import window_boxes

    shown = []
    for win, members in windows:
        data, valid = sc.read_window(win)
        shown.append((sc.to_uint8(data, valid), *window_boxes(boxes, members, win)))
    return encode_exemplars(bundle, shown)


def _text_plan(cfg: SegmentConfig, tcfg: TextConfig, exemplars: Any, model: Any,
               mask_generator: MaskGenerator | None, journal: str | os.PathLike[str] | None) -> PlanBuilder:
    """The plan builder of a text run: exemplar checks (no model), then the grid plan with SAM 3."""

    def build(sc: Scene) -> ModePlan:
        from geosam.models import SamBundle
        from geosam.prompts.exemplars import exemplar_windows, read_exemplars

        i = sc.info
        boxes = read_exemplars(exemplars, i.crs_wkt, i.transform, i.width, i.height) if exemplars is not None else []
        windows = exemplar_windows(boxes, i.width, i.height, cfg.tiling.chip_size_px) if boxes else []
        t0 = time.perf_counter()

        def text_generator(run_cfg: SegmentConfig) -> MaskGenerator:
            from geosam.models import load_model
            from geosam.segment.text import TextMaskGenerator

            m = run_cfg.model
            bundle = model if isinstance(model, SamBundle) else load_model(m.model, device=m.device, dtype=m.dtype)
            if m.compile:
                from geosam.models.sam3 import compile_sam3

                compile_sam3(bundle)
            ex = _encode_exemplars(bundle, sc, boxes, windows) if boxes else None
            return TextMaskGenerator(bundle, tcfg, ex)

        own: dict[str, Any] = {"phrases": list(tcfg.phrases), "score_threshold": tcfg.score_threshold,
               "mask_threshold": tcfg.mask_threshold, "exemplar_boxes": [[*b.box, b.positive] for b in boxes]}
        if isinstance(model, SamBundle):
            own["model"] = model.name
        plan = grid_plan(sc, cfg, mask_generator, journal, build=text_generator, lead=TEXT_COLUMNS, settings=own)
        if boxes:
            plan.stats.add_time("exemplar_encoder", time.perf_counter() - t0)
        plan.desc = "text"
        plan.details.update(phrases=list(tcfg.phrases), exemplars=len(boxes), exemplar_windows=len(windows))
        return plan

    return build


def _text_run(scene: Any, phrases: Phrases, exemplars: Any, model: Any, mask_generator: MaskGenerator | None,
              score_threshold: float | None, mask_threshold: float | None, config: SegmentConfig | None,
              options: RunOptions, settings: dict[str, Any]) -> tuple[SegmentConfig, PlanBuilder]:
    """Check a text run's settings (before any pixel or model) and return its config and plan builder."""
    from geosam.models import SamBundle

    given = () if phrases is None else tuple([phrases] if isinstance(phrases, str) else phrases)
    tcfg = TextConfig(phrases=given, score_threshold=score_threshold, mask_threshold=mask_threshold)
    if not tcfg.phrases and exemplars is None:
        raise ConfigError("text mode needs at least one phrase or exemplar boxes (--text building, --exemplars FILE)")
    if exemplars is not None and mask_generator is not None:
        raise ConfigError("exemplars are shown to SAM 3; they cannot be given with a mask_generator")
    if not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or SegmentConfig()).with_overrides(**settings)
    return cfg, _text_plan(cfg, tcfg, exemplars, model, mask_generator, options.journal)


def segment_text(
    scene: Any,
    phrases: Phrases = None,
    *,
    exemplars: Any = None,
    model: Any = DEFAULT_TEXT_MODEL,
    mask_generator: MaskGenerator | None = None,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Polygons of every object matching each phrase, or like the exemplar boxes, with or without phrases.

    Example: ``segment_text(path, ["building", "solar panel"])``.

    Args:
        scene: A raster path, an open rasterio dataset or an xarray DataArray.
        phrases: Noun phrases; each becomes the ``label`` of its objects.
        exemplars: A GeoDataFrame or vector file of boxes around example objects, any CRS, optional
            ``label`` column (see `geosam.prompts.labels` for the spellings of positive / negative; default
            positive); see `geosam.prompts.exemplars` and `geosam.models.sam3_exemplars` (encoded once,
            used on every chip). Without phrases the objects' ``label`` is "exemplar"; with phrases,
            every phrase's prompt carries the exemplars.
        model: A SAM 3 hub id or local directory (``save_pretrained`` folder with its tokenizer), or a
            loaded `geosam.models.SamBundle`.
        mask_generator: Instead of the model, any generator whose masks carry ``labels``.
        score_threshold: See `geosam.config.text.TextConfig` (None: the model's default).
        mask_threshold: See `geosam.config.text.TextConfig` (None: the model's default).
        config: The run's settings; ``settings`` override it.
        object_hooks: Per-object attribute hooks (their columns join the table).
        journal: Resume from / commit every finished chip to this file (as `geosam.modes.everything.segment_scene`).
        scheduler: Run the chips on Dask (as `geosam.modes.everything.segment_scene`).
        n_workers: Worker processes of ``scheduler="local"``.
        **settings: Flat `geosam.config.SegmentConfig` settings (chip size, bands, indices, ``min_index``,
            ``prefilter``, device, ``compile`` (`geosam.models.sam3.compile_sam3`), ...).

    Returns:
        A GeoDataFrame in the scene CRS (or ``to_crs``): ``id, label, score, area_m2`` (m2),
        ``n_chips, model``, index columns, ``geometry``; the run statistics in ``attrs["geosam"]``.
    """
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    cfg, build = _text_run(scene, phrases, exemplars, model, mask_generator, score_threshold, mask_threshold,
                           config, options, settings)
    return run_frame(scene, cfg.read, build, options)


def segment_text_to_file(  # noqa: PLR0913 - segment_text's options, plus the output and its layer
    scene: Any,
    output: str | os.PathLike[str],
    phrases: Phrases = None,
    *,
    layer: str | None = None,
    exemplars: Any = None,
    model: Any = DEFAULT_TEXT_MODEL,
    mask_generator: MaskGenerator | None = None,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    config: SegmentConfig | None = None,
    object_hooks: list[ObjectHook] | None = None,
    journal: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    **settings: Any,
) -> RunSummary:
    """`segment_text`, streaming the objects into a vector file (see `geosam.modes.everything.segment_scene_to_file`).

    Every argument not listed here is as in `segment_text`.

    Args:
        output: The vector file (checked before any pixel or model).
        layer: The layer of a GeoPackage output (default: the file's stem).

    Returns:
        The run statistics, with the written file in ``output``.
    """
    options = RunOptions(journal, scheduler, n_workers, tuple(object_hooks or ()))
    cfg, build = _text_run(scene, phrases, exemplars, model, mask_generator, score_threshold, mask_threshold,
                           config, options, settings)
    return run_mode(scene, cfg.read, build, options, output, layer).summary


__all__ = ["TEXT_COLUMNS", "segment_text", "segment_text_to_file"]
