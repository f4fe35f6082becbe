"""Text mode's own settings (`TextConfig`); the rest of a text run is a `SegmentConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from geosam.errors import ConfigError

#: the text SAM 3 pairs with exemplars given without a phrase (as transformers' Sam3Processor)
EXEMPLAR_PROMPT = "visual"
#: the output ``label`` of objects found from exemplars alone
EXEMPLAR_LABEL = "exemplar"

#: SAM 3's model in the hub (text mode's default)
DEFAULT_TEXT_MODEL = "facebook/sam3"


def _unit_or_none(name: str, value: float | None) -> None:
    if value is None:
        return
    v = float(value)
    if math.isnan(v) or not 0.0 <= v < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class TextConfig:
    """Noun phrases and thresholds of text mode (SAM 3).

    phrases: the noun phrases ("building", "solar panel"); each becomes the ``label`` of its objects.
        May be empty when exemplar boxes are given (``segment_text(exemplars=...)``): the model then gets
        SAM 3's placeholder text "visual" and the objects' label is "exemplar".
    score_threshold: keep instances whose score (query probability x presence probability) is > this;
        None: the model's default (0.3, as transformers' ``post_process_instance_segmentation``).
    mask_threshold: a pixel belongs to an instance where its mask probability is > this; None: 0.5.
    """

    phrases: tuple[str, ...] = ()
    score_threshold: float | None = None
    mask_threshold: float | None = None

    def __post_init__(self) -> None:
        phrases = (self.phrases,) if isinstance(self.phrases, str) else tuple(self.phrases)
        cleaned = tuple(" ".join(str(p).split()) for p in phrases)
        if any(not p for p in cleaned):
            raise ConfigError(f"phrases must not be empty, got {list(phrases)} (--text building --text 'solar panel')")
        if len(set(cleaned)) != len(cleaned):
            raise ConfigError(f"phrases must differ, got {list(cleaned)}")
        object.__setattr__(self, "phrases", cleaned)
        _unit_or_none("score_threshold", self.score_threshold)
        _unit_or_none("mask_threshold", self.mask_threshold)

    @property
    def model_phrases(self) -> tuple[str, ...]:
        """The texts given to the model: the phrases, or SAM 3's "visual" for exemplars alone."""
        return self.phrases or (EXEMPLAR_PROMPT,)

    @property
    def labels(self) -> tuple[str, ...]:
        """The output label of each model phrase: the phrase, or "exemplar" for exemplars alone."""
        return self.phrases or (EXEMPLAR_LABEL,)


__all__ = ["DEFAULT_TEXT_MODEL", "TextConfig"]
