"""Text mode: every object named by a noun phrase across a whole scene (:func:`segment_text`).

A text run is segment-everything's run with another per-chip generator: the same
chip grid, run loop (:func:`geosam.run.loop.run`), :class:`~geosam.assemble.assemblers.GridAssembler`
(an object cut by a seam comes out whole; masks of different phrases never merge),
index statistics, ``min_index`` filter and prefilter. Only the table differs:
``id, label, score, area_m2, n_chips, model`` (+ index columns), ``geometry``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from geosam.config import SegmentConfig
from geosam.config.text import DEFAULT_TEXT_MODEL, TextConfig
from geosam.errors import ConfigError
from geosam.segment.base import MaskGenerator

if TYPE_CHECKING:
    import geopandas as gpd

#: text mode's columns before the index columns and ``geometry``
TEXT_COLUMNS = ("id", "label", "score", "area_m2", "n_chips", "model")


def text_frame(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Segment-everything's table -> text mode's: ``score`` (the instance score), ``label`` always present."""
    gdf = gdf.rename(columns={"predicted_iou": "score"}).drop(columns=["stability_score"])
    if "label" not in gdf.columns:
        gdf["label"] = [None] * len(gdf)
    rest = [c for c in gdf.columns if c not in TEXT_COLUMNS and c != gdf.geometry.name]
    out = gdf[[*TEXT_COLUMNS, *rest, gdf.geometry.name]]
    out.attrs = dict(gdf.attrs)
    return out


def _exemplar_plan(scene: Any, exemplars: Any, cfg: SegmentConfig) -> tuple[list[Any], list[Any]]:
    """Exemplar boxes (scene pixels) and their windows; every check that needs no model (file, CRS, rows)."""
    from geosam.prompts.exemplars import exemplar_windows, read_exemplars
    from geosam.read.scene import Scene

    with Scene(scene, cfg.read) as sc:
        i = sc.info
        boxes = read_exemplars(exemplars, i.crs_wkt, i.transform, i.width, i.height)
    return boxes, exemplar_windows(boxes, i.width, i.height, cfg.tiling.chip_size_px)


def _encode_exemplars(bundle: Any, scene: Any, cfg: SegmentConfig, boxes: list[Any], windows: list[Any]) -> Any:
    """SAM 3 prompt tokens of the exemplars, each shown on its window (read and stretched as chips are)."""
    from geosam.models.sam3_exemplars import encode_exemplars
    from geosam.prompts.exemplars import window_boxes
    from geosam.read.scene import Scene

    shown = []
    with Scene(scene, cfg.read) as sc:
        for win, members in windows:
            data, valid = sc.read_window(win)
            shown.append((sc.to_uint8(data, valid), *window_boxes(boxes, members, win)))
    return encode_exemplars(bundle, shown)


def segment_text(
    scene: Any,
    phrases: str | list[str] | tuple[str, ...] | None = None,
    *,
    exemplars: Any = None,
    model: Any = DEFAULT_TEXT_MODEL,
    mask_generator: MaskGenerator | None = None,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    config: SegmentConfig | None = None,
    output: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> Any:
    """Polygons of every object matching each phrase, e.g. ``segment_text(path, ["building", "solar panel"])``,
    or like the exemplar boxes (``exemplars=``), with or without phrases.

    exemplars: a GeoDataFrame or vector file of boxes around example objects, any CRS, optional
        ``label`` column (1 / 0, true / false, "positive" / "negative"; default positive); see
        :mod:`geosam.prompts.exemplars` and :mod:`geosam.models.sam3_exemplars` (encoded once, used on every
        chip). Without phrases the objects' ``label`` is "exemplar"; with phrases, every phrase's
        prompt carries the exemplars.
    model: a SAM 3 hub id or local directory (``save_pretrained`` folder with its tokenizer),
        or a loaded :class:`~geosam.models.SamBundle`.
    mask_generator: instead of the model, any generator whose masks carry ``labels``.
    score_threshold, mask_threshold: see :class:`~geosam.config.text.TextConfig` (None: the model's defaults).
    settings: flat :class:`~geosam.config.SegmentConfig` settings (chip size, bands, indices,
        ``min_index``, ``prefilter``, device, ``compile`` (:func:`geosam.models.sam3.compile_sam3`), ...).

    Returns a GeoDataFrame in the scene CRS (or ``to_crs``): ``id, label, score, area_m2``
    (m2), ``n_chips, model``, index columns, ``geometry``; with ``output=PATH`` the objects are
    streamed into that file instead (see :func:`geosam.modes.everything.segment_scene`) and the run
    statistics (a dict) are returned.
    """
    from geosam.models import SamBundle
    from geosam.modes.everything import segment_scene

    given = () if phrases is None else tuple([phrases] if isinstance(phrases, str) else phrases)
    tcfg = TextConfig(phrases=given, score_threshold=score_threshold, mask_threshold=mask_threshold)
    if not tcfg.phrases and exemplars is None:
        raise ConfigError("text mode needs at least one phrase or exemplar boxes (--text building, --exemplars FILE)")
    if exemplars is not None and mask_generator is not None:
        raise ConfigError("exemplars are shown to SAM 3; they cannot be given with a mask_generator")
    if not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or SegmentConfig()).with_overrides(**settings)  # checked before the model loads
    boxes, windows = _exemplar_plan(scene, exemplars, cfg) if exemplars is not None else ([], [])
    t0 = time.perf_counter()
    if mask_generator is None:
        from geosam.models import load_model
        from geosam.segment.text import TextMaskGenerator

        m = cfg.model
        bundle = model if isinstance(model, SamBundle) else load_model(m.model, device=m.device, dtype=m.dtype)
        if m.compile:
            from geosam.models.sam3 import compile_sam3

            compile_sam3(bundle)
        ex = _encode_exemplars(bundle, scene, cfg, boxes, windows) if boxes else None
        mask_generator = TextMaskGenerator(bundle, tcfg, ex)
    t_ex = time.perf_counter() - t0
    res = segment_scene(scene, mask_generator, config=cfg, output=output, frame_hook=text_frame)
    stats = res if output is not None else res.attrs.get("geosam", {})
    if boxes:
        stats["timings_s"] = {**stats.get("timings_s", {}), "exemplar_encoder": t_ex}
    stats.update({"phrases": list(tcfg.phrases), "exemplars": len(boxes), "exemplar_windows": len(windows)})
    return res


__all__ = ["TEXT_COLUMNS", "segment_text", "text_frame"]
