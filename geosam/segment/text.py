"""Text mode's mask generator: every instance of each noun phrase in a chip (SAM 3).

Per chip the vision backbone runs once for all phrases; the phrases are encoded
once per generator (they do not depend on the chip). Masks come back in the
**chip frame** with ``labels`` (the phrase) and the instance score as
``predicted_iou``; the run loop stitches them across seams (masks with
different labels never merge).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from geosam.config.text import TextConfig
from geosam.segment.base import BaseMaskGenerator, ChipMasks

if TYPE_CHECKING:
    from geosam.read.scene import Chip

#: Stages timed in ``timings_s`` (seconds, accumulated)
TEXT_STAGES = ("backbone", "text_encoder", "detector", "postprocess")


class TextMaskGenerator(BaseMaskGenerator):
    """Instances of ``cfg.phrases`` per chip with a loaded SAM 3 bundle (``bundle.capabilities.text_prompts``)."""

    def __init__(self, bundle: Any, cfg: TextConfig, exemplars: Any = None) -> None:
        """exemplars: `ExemplarFeatures` added to every phrase's prompt
        on every chip (see `geosam.models.sam3_exemplars`); with no phrases, the model gets "visual"."""
        from geosam.models import require
        from geosam.models.sam3 import DEFAULT_MASK_THRESHOLD, DEFAULT_SCORE_THRESHOLD

        super().__init__()
        require(bundle, "text_prompts")
        self.bundle = bundle
        self.phrases = cfg.model_phrases
        self.labels = cfg.labels
        self.exemplars = exemplars
        self.name = str(bundle.name)
        self.score_threshold = DEFAULT_SCORE_THRESHOLD if cfg.score_threshold is None else cfg.score_threshold
        self.mask_threshold = DEFAULT_MASK_THRESHOLD if cfg.mask_threshold is None else cfg.mask_threshold
        self._text: Any = None

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[stage] = self.timings_s.get(stage, 0.0) + time.perf_counter() - t0

    def generate(self, chip: Chip) -> ChipMasks:
        from geosam.models import preprocess
        from geosam.models.sam3 import detect, encode_text, instances, vision_features

        h, w = chip.valid.shape
        if self._text is None:
            with self._timed("text_encoder"):
                self._text = encode_text(self.bundle, self.phrases)
                if self.exemplars is not None:
                    from geosam.models.sam3_exemplars import with_exemplars

                    self._text = with_exemplars(self._text, self.exemplars)
        with self._timed("backbone"):
            pv, _, _ = preprocess(self.bundle, [chip.image])
            vision = vision_features(self.bundle, pv)
        with self._timed("detector"):
            out = detect(self.bundle, vision, self._text)
        with self._timed("postprocess"):
            per_phrase = instances(out, (h, w), self.score_threshold, self.mask_threshold)
            masks: list[np.ndarray] = []
            scores: list[float] = []
            labels: list[str] = []
            for phrase, (s, m) in zip(self.labels, per_phrase):
                m_np = m.cpu().numpy()
                if len(m_np) == 0:  # the phrase found nothing on this chip
                    continue
                keep = m_np.reshape(len(m_np), -1).any(axis=1)
                masks.extend(m_np[keep])
                scores.extend(float(v) for v in s.cpu().numpy()[keep])
                labels.extend([phrase] * int(keep.sum()))
        if not masks:
            return ChipMasks.empty(h, w)
        sc = np.asarray(scores, np.float32)
        return ChipMasks(np.stack(masks), sc, np.ones_like(sc), labels=tuple(labels))


__all__ = ["TEXT_STAGES", "TextMaskGenerator"]
