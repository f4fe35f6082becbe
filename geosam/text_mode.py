"""Text mode: every object named by a noun phrase across a whole scene (:func:`segment_text`).

A text run is segment-everything's run with another per-chip generator: the same
chip grid, run loop (:func:`geosam.engine.run`), :class:`~geosam.assemble.GridAssembler`
(an object cut by a seam comes out whole; masks of different phrases never merge),
index statistics, ``min_index`` filter and prefilter. Only the table differs:
``id, label, score, area_m2, n_chips, model`` (+ index columns), ``geometry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geosam.config import SegmentConfig
from geosam.config.text import DEFAULT_TEXT_MODEL, TextConfig
from geosam.masks import MaskGenerator

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


def segment_text(
    scene: Any,
    phrases: str | list[str] | tuple[str, ...],
    *,
    model: Any = DEFAULT_TEXT_MODEL,
    mask_generator: MaskGenerator | None = None,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    config: SegmentConfig | None = None,
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Polygons of every object matching each phrase, e.g. ``segment_text(path, ["building", "solar panel"])``.

    model: a SAM 3 hub id or local directory (``save_pretrained`` folder with its tokenizer),
        or a loaded :class:`~geosam.models.SamBundle`.
    mask_generator: instead of the model, any generator whose masks carry ``labels``.
    score_threshold, mask_threshold: see :class:`~geosam.config.text.TextConfig` (None: the model's defaults).
    settings: flat :class:`~geosam.config.SegmentConfig` settings (chip size, bands, indices,
        ``min_index``, ``prefilter``, device, ...).

    Returns a GeoDataFrame in the scene CRS (or ``to_crs``): ``id, label, score, area_m2``
    (m2), ``n_chips, model``, index columns, ``geometry``.
    """
    from geosam.models import SamBundle
    from geosam.pipeline import segment_scene

    tcfg = TextConfig(phrases=tuple([phrases] if isinstance(phrases, str) else phrases),
                      score_threshold=score_threshold, mask_threshold=mask_threshold)
    if not isinstance(model, SamBundle):
        settings["model"] = model
    cfg = (config or SegmentConfig()).with_overrides(**settings)  # checked before the model loads
    if mask_generator is None:
        from geosam.models import load_model
        from geosam.segment.text import TextMaskGenerator

        m = cfg.model
        bundle = model if isinstance(model, SamBundle) else load_model(m.model, device=m.device, dtype=m.dtype)
        mask_generator = TextMaskGenerator(bundle, tcfg)
    gdf = segment_scene(scene, mask_generator, config=cfg)
    out = text_frame(gdf)
    out.attrs["geosam"] = {**gdf.attrs.get("geosam", {}), "phrases": list(tcfg.phrases)}
    return out


__all__ = ["TEXT_COLUMNS", "segment_text", "text_frame"]
