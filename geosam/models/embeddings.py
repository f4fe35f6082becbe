"""Image embeddings of families whose decoder needs more than one tensor (SAM-HQ, SAM 2).

SAM's decoder takes one (B, C, h, w) tensor. SAM-HQ's also takes the ViT's
first global-attention features (``intermediate_embeddings``), SAM 2's the two
high-resolution FPN levels. `MultiEmbeddings` keeps those tensors together
and slices them by image like a tensor (``emb[k : k + 1]``), so the segment
code handles every family alike; `encode_family` and
`decoder_kwargs` are the family dispatch of `geosam.models.runtime`
(the family is the one declared in ``bundle.capabilities.family``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: families whose embeddings are a `MultiEmbeddings`
MULTI_EMBEDDING_FAMILIES = ("sam_hq", "sam2")


@dataclass(frozen=True)
class MultiEmbeddings:
    """``main`` (B, C, h, w): what the mask decoder attends to; ``extras``: the family's other per-image tensors
    (batch first); ``family``: "sam_hq" or "sam2"."""

    main: torch.Tensor
    extras: tuple[torch.Tensor, ...]
    family: str

    def __getitem__(self, index: slice) -> MultiEmbeddings:
        if not isinstance(index, slice):
            raise TypeError("MultiEmbeddings are sliced by image: emb[k : k + 1]")
        return MultiEmbeddings(self.main[index], tuple(e[index] for e in self.extras), self.family)

    @property
    def shape(self) -> torch.Size:
        return self.main.shape

    @property
    def ndim(self) -> int:
        return self.main.ndim

    def to(self, device: torch.device) -> MultiEmbeddings:
        return MultiEmbeddings(self.main.to(device), tuple(e.to(device) for e in self.extras), self.family)


def encode_family(model: Any, family: str, pixel_values: torch.Tensor) -> torch.Tensor | MultiEmbeddings:
    """The family's image embeddings of ``pixel_values`` (B, 3, S, S); call under inference mode."""
    if family == "sam_hq":
        main, inter = model.get_image_embeddings(pixel_values)
        return MultiEmbeddings(main, tuple(inter), family)
    if family == "sam2":
        levels = model.get_image_embeddings(pixel_values)  # high-res levels first, the decoder's input last
        return MultiEmbeddings(levels[-1], tuple(levels[:-1]), family)
    return model.get_image_embeddings(pixel_values)


def decoder_kwargs(embeddings: torch.Tensor | MultiEmbeddings, device: torch.device) -> dict[str, Any]:
    """The image-side keyword arguments of the family's ``forward`` (one image)."""
    if not isinstance(embeddings, MultiEmbeddings):
        return {"image_embeddings": embeddings.to(device)}
    emb = embeddings.to(device)
    if emb.family == "sam_hq":
        return {"image_embeddings": emb.main, "intermediate_embeddings": list(emb.extras)}
    return {"image_embeddings": [*emb.extras, emb.main]}


__all__ = ["MULTI_EMBEDDING_FAMILIES", "MultiEmbeddings", "decoder_kwargs", "encode_family"]
