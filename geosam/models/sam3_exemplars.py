"""SAM 3 exemplar boxes that work on every chip: encode once on the exemplar's window, reuse the prompt tokens.

How ``Sam3Model`` uses boxes (``transformers/models/sam3/modeling_sam3.py``): its
``Sam3GeometryEncoder`` turns each box into a token (a linear projection of the box,
plus ``roi_align`` of the image's own normalised features inside the box, plus a sine
encoding of its centre and size, plus a positive / negative label embedding), appends a
CLS token, and runs a few transformer layers in which these tokens attend to each other
and cross-attend to that image's features. The resulting *geometry prompt tokens* are
concatenated after the text tokens; the DETR encoder and decoder, the scoring and the
mask decoder only ever see that concatenated prompt. Boxes passed as ``input_boxes``
therefore describe pixels *of the image being segmented*: on a chip that does not contain
the exemplar, the same coordinates would pool unrelated pixels.

geosam instead encodes the exemplars once, on windows of the chip size centred on them
(`geosam.prompts.exemplars.exemplar_windows`), with the geometry encoder's own modules
(`encode_exemplars`), and hands the model ``text tokens + geometry tokens`` as its
precomputed prompt for every chip (`with_exemplars`), through ``text_embeds`` /
``attention_mask``, exactly the tensors the model builds itself after its geometry encoder.

Exact: on a chip equal to an exemplar's window, the output equals
``Sam3Model(..., input_boxes=..., input_boxes_labels=...)`` (tested). Approximation: on
any other chip the exemplar tokens carry the exemplar window's pixels and context, not
the chip's (which is the point: the chip may not contain the exemplar). With exemplars in
several windows, all boxes form one token sequence with one CLS token, as SAM 3 does for
boxes in one image, and the cross-attention runs over the features of all their windows
together (SAM 3 itself only ever sees one image; with one window this is SAM 3's
forward unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from geosam.models.bundle import SamBundle


@dataclass
class ExemplarFeatures:
    """SAM 3 geometry prompt tokens of a set of exemplars: ``embeds`` (1, K + 1, C) (K boxes + CLS),
    ``mask`` (1, K + 1) bool (all valid)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    @property
    def n_boxes(self) -> int:
        return int(self.embeds.shape[1]) - 1


def geometry_tokens(model: Any, windows: list[tuple[Any, torch.Tensor, torch.Tensor]]) -> ExemplarFeatures:
    """``Sam3GeometryEncoder.forward`` over boxes drawn on one or several images.

    windows: per image ``(vision output of get_vision_features, boxes (K_i, 4) normalised cx, cy, w, h,
    labels (K_i,) 1 / 0)``. With one image this is the encoder's own forward (same modules, same order).
    """
    from transformers.masking_utils import create_bidirectional_mask

    from geosam.models.roi_align import use_for_sam3

    use_for_sam3()
    with torch.inference_mode():
        return _geometry_tokens(model.geometry_encoder, windows, create_bidirectional_mask)


def _geometry_tokens(ge: Any, windows: list[tuple[Any, torch.Tensor, torch.Tensor]], bidir: Any) -> ExemplarFeatures:
    parts, feats, poss = [], [], []
    for vision, boxes, labels in windows:
        img = vision.fpn_hidden_states[:-1][-1]  # (1, C, H, W): the level the geometry encoder reads
        pos = vision.fpn_position_encoding[:-1][-1]
        feats.append(img.flatten(2).transpose(1, 2))
        poss.append(pos.flatten(2).transpose(1, 2))
        normed = ge.vision_layer_norm(img.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        b = boxes.to(device=img.device, dtype=img.dtype)[None]
        valid = torch.ones(b.shape[:2], dtype=torch.bool, device=img.device)
        emb, _ = ge._encode_boxes(b, valid, labels.to(img.device).long()[None], normed)
        parts.append(emb)
    prompt = torch.cat(parts, dim=1)
    cls = ge.cls_embed.weight.view(1, 1, ge.hidden_size)
    prompt = torch.cat([prompt, cls.to(prompt.dtype)], dim=1)
    mask = torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)
    prompt = ge.prompt_layer_norm(ge.final_proj(prompt))
    attn = bidir(config=ge.config, inputs_embeds=prompt, attention_mask=mask)
    vis, vpos = torch.cat(feats, dim=1), torch.cat(poss, dim=1)
    for layer in ge.layers:
        prompt = layer(prompt_feats=prompt, vision_feats=vis, vision_pos_encoding=vpos, prompt_mask=attn)
    return ExemplarFeatures(ge.output_layer_norm(prompt), mask)


def encode_exemplars(bundle: SamBundle, windows: list[tuple[Any, list[list[float]], list[int]]]) -> ExemplarFeatures:
    """Exemplar tokens from ``[(window image uint8 (H, W, 3), boxes [[cx, cy, w, h], ...] (0..1), labels), ...]``."""
    from geosam.models.runtime import preprocess
    from geosam.models.sam3 import vision_features

    enc = []
    for image, boxes, labels in windows:
        pv, _, _ = preprocess(bundle, [image])
        enc.append((vision_features(bundle, pv), torch.tensor(boxes, dtype=torch.float32),
                    torch.tensor(labels, dtype=torch.long)))
    return geometry_tokens(bundle.model, enc)


def with_exemplars(text: Any, ex: ExemplarFeatures) -> Any:
    """Text features (`geosam.models.sam3.TextFeatures`, P phrases) followed by the exemplar tokens:
    the prompt ``Sam3Model`` builds itself from ``text`` and ``input_boxes`` (text tokens, then geometry tokens)."""
    from geosam.models.sam3 import TextFeatures

    t = text.embeds.pooler_output
    n = t.shape[0]
    embeds = torch.cat([t, ex.embeds.to(t.dtype).expand(n, -1, -1)], dim=1)
    mask = torch.cat([text.attention_mask.bool(), ex.mask.expand(n, -1)], dim=1)
    return TextFeatures(text.phrases, SimpleNamespace(pooler_output=embeds), mask)


__all__ = ["ExemplarFeatures", "encode_exemplars", "geometry_tokens", "with_exemplars"]
