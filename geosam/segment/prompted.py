"""Prompt decoding: one mask per point / box prompt of a chip (prompt mode's generator).

Frames: prompts arrive in **scene pixel coordinates** (``chip.prompts``, x =
column, y = row); they are shifted to the chip frame and then to the model frame
(`geosam.models.to_model_frame`). Masks come back in the chip frame, one per
decoded prompt, with ``prompt_index`` naming the prompt.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np

from geosam.config import PromptWindowConfig
from geosam.read.scene import Chip
from geosam.segment.base import BaseMaskGenerator, ChipMasks

log = logging.getLogger(__name__)


def on_invalid(p: Any, col_off: int, row_off: int, valid: np.ndarray) -> bool:
    """True when every positive point, or the whole box, of prompt ``p`` lies on invalid pixels.

    ``valid``: the chip's valid mask; ``col_off``/``row_off``: the chip's position (scene pixels).
    """
    h, w = valid.shape
    if p.points:
        for (x, y), lab in zip(p.points, p.point_labels):
            c, r = math.floor(x) - col_off, math.floor(y) - row_off
            if lab == 1 and 0 <= c < w and 0 <= r < h and valid[r, c]:
                return False
        if p.box is None:
            return True
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        c0, r0 = max(math.floor(x0) - col_off, 0), max(math.floor(y0) - row_off, 0)
        c1, r1 = min(math.ceil(x1) - col_off, w), min(math.ceil(y1) - row_off, h)
        return not (c1 > c0 and r1 > r0 and valid[r0:r1, c0:c1].any())
    return True


class PromptMaskGenerator(BaseMaskGenerator):
    """Decode the prompts of each chip (``chip.prompts``) with one image embedding per chip.

    bundle: a loaded model (`geosam.models.load_model`). Prompts of the same shape
    (number of points, with / without a box) are decoded together; with
    ``cfg.multimask`` None a single point gets 3 candidates and the best by predicted
    IoU is kept. Masks are the upsampled logits > ``cfg.mask_threshold``.
    """

    def __init__(self, bundle: Any, cfg: PromptWindowConfig | None = None) -> None:
        super().__init__()
        self.bundle = bundle
        self.cfg = cfg or PromptWindowConfig()
        self.name = str(bundle.name)

    @property
    def default_chip_size_px(self) -> int:
        """Chip grid for prompts when none is set: 0 (one window per prompt) for models whose masks depend on
        the crop size (LiteMedSAM, a 256 px model), else 1024 (prompts share a chip's embedding)."""
        return 0 if not self.bundle.capabilities.point_prompts else 1024

    def check_prompts(self, prompts: list[Any]) -> None:
        """Warn when point prompts go to a model that takes box prompts only (declared in its capabilities)."""
        if not self.bundle.capabilities.point_prompts and any(p.box is None for p in prompts):
            log.warning("model %r takes box prompts only: point prompts give poor masks with it; "
                        "use box prompts or a SAM checkpoint (--model)", self.name)

    def generate(self, chip: Chip) -> ChipMasks:
        import torch

        from geosam.models import decode, encode, preprocess, to_model_frame, upsample_logits

        prompts = chip.prompts
        win = chip.spec.window
        h, w = chip.valid.shape
        status = ["invalid" if on_invalid(p, win.col_off, win.row_off, chip.valid) else "ok" for p in prompts]
        todo = [k for k, st in enumerate(status) if st == "ok"]
        if not todo:
            none = np.zeros(0, np.float32)
            return ChipMasks(np.zeros((0, h, w), bool), none, none, np.zeros(0, np.int64), prompt_status=tuple(status))
        pv, orig, resized = preprocess(self.bundle, [chip.image])
        emb = encode(self.bundle, pv)
        shift = np.array([win.col_off, win.row_off], dtype=np.float64)
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for k in todo:
            groups[(len(prompts[k].points), prompts[k].box is not None)].append(k)
        masks: list[np.ndarray] = []
        ious: list[float] = []
        index: list[int] = []
        shared: dict = {}  # what the groups' decoder calls share: the image side's projections, computed once
        for (n_pts, has_box), ks in groups.items():
            multimask = self.cfg.multimask if self.cfg.multimask is not None else (n_pts == 1 and not has_box)
            pts = labs = bxs = None
            if n_pts:
                xy = np.array([[np.subtract(p, shift) for p in prompts[k].points] for k in ks], dtype=np.float32)
                pts = to_model_frame(xy, orig[0], resized[0])
                labs = np.array([prompts[k].point_labels for k in ks], dtype=np.int64)
            if has_box:
                xyxy = np.array([np.subtract(prompts[k].box, np.tile(shift, 2)) for k in ks], dtype=np.float32)
                bxs = to_model_frame(xyxy, orig[0], resized[0])
            logits, iou = decode(self.bundle, emb, points=pts, labels=labs, boxes=bxs, multimask=multimask,
                                cache=shared)
            best = torch.argmax(iou, dim=1)
            rows = torch.arange(len(ks))
            sel = upsample_logits(logits[rows, best], self.bundle.input_size, resized[0], orig[0])
            masks.extend((sel > self.cfg.mask_threshold).cpu().numpy())
            ious.extend(float(v) for v in iou[rows, best])
            index.extend(ks)
        order = np.argsort(index, kind="stable")
        stack = np.stack([masks[i] for i in order]) if masks else np.zeros((0, h, w), bool)
        return ChipMasks(stack, np.asarray(ious)[order], np.ones(len(order), np.float32),
                         np.asarray(index)[order], prompt_status=tuple(status))


__all__ = ["PromptMaskGenerator", "on_invalid"]
