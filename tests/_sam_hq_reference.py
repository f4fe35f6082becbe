"""SAM-HQ's mask decoder transcribed from its authors' code (SysCV sam-hq, ``MaskDecoderHQ.forward`` and
``predict_masks``) onto a transformers ``SamHQModel``'s modules: the reference `geosam.models.hq_decoder` is tested
against. Written for clarity, not speed: every prompt repeats the image, every mask token is upscaled."""

from __future__ import annotations

from typing import Any

import torch


def reference_hq_decode(model: Any, image_embeddings: torch.Tensor, vit_features: torch.Tensor,
                        input_points: torch.Tensor | None, input_labels: torch.Tensor | None,
                        input_boxes: torch.Tensor | None, multimask: bool,
                        hq_token_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks (N, 1, 4h, 4w), iou (N, 1))`` for prompts shaped as ``SamHQModel.forward`` takes them."""
    dec = model.mask_decoder
    act = dec.activation
    sparse, dense = model.prompt_encoder(input_points=input_points, input_labels=input_labels,
                                         input_boxes=input_boxes, input_masks=None)
    sparse = sparse[0]  # (N, T, C)
    # forward: hq_features = embedding_encoder(image_embeddings) + compress_vit_feat(vit_features)
    vit = vit_features.permute(0, 3, 1, 2)
    hq_features = (dec.encoder_conv2(act(dec.encoder_norm(dec.encoder_conv1(image_embeddings))))
                   + dec.compress_vit_conv2(act(dec.compress_vit_norm(dec.compress_vit_conv1(vit)))))
    # predict_masks
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, dec.hq_token.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
    pos_src = torch.repeat_interleave(model.get_image_wide_positional_embeddings(), tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src_out = dec.transformer(point_embeddings=tokens[None], image_embeddings=src,
                                  image_positional_embeddings=pos_src, attention_similarity=None)
    hs = hs[0]
    num_mask_tokens = dec.num_mask_tokens  # SAM's mask tokens and the HQ token
    mask_tokens_out = hs[:, 1 : 1 + num_mask_tokens, :]
    src_out = src_out.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
    up_sam = act(dec.upscale_conv2(act(dec.upscale_layer_norm(dec.upscale_conv1(src_out)))))
    up_hq = dec.mask_conv2(act(dec.mask_norm(dec.mask_conv1(up_sam)))) + hq_features.repeat(b, 1, 1, 1)
    hyper_in = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) if i < num_mask_tokens - 1
                            else dec.hq_mask_mlp(mask_tokens_out[:, i, :]) for i in range(num_mask_tokens)], dim=1)
    b, c, h, w = up_sam.shape
    masks_sam = (hyper_in[:, : num_mask_tokens - 1] @ up_sam.view(b, c, h * w)).view(b, -1, h, w)
    masks_sam_hq = (hyper_in[:, num_mask_tokens - 1 :] @ up_hq.view(b, c, h * w)).view(b, -1, h, w)
    masks = torch.cat([masks_sam, masks_sam_hq], dim=1)
    iou_pred = dec.iou_prediction_head(hs[:, 0, :])
    # forward: select
    if multimask:
        mask_slice = slice(1, num_mask_tokens - 1)
        iou_pred, max_iou_idx = torch.max(iou_pred[:, mask_slice], dim=1)
        iou_pred = iou_pred.unsqueeze(1)
        masks_multi = masks[:, mask_slice, :, :]
        masks_sam = masks_multi[torch.arange(masks_multi.size(0)), max_iou_idx].unsqueeze(1)
    else:
        iou_pred = iou_pred[:, 0:1]
        masks_sam = masks[:, 0:1]
    masks_hq = masks[:, num_mask_tokens - 1 : num_mask_tokens]
    return (masks_hq if hq_token_only else masks_sam + masks_hq), iou_pred
