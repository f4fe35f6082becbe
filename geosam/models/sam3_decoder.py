"""SAM 3's DETR decoder on the CPU with fewer passes over its large tensors (`geosam.models.sam3_detector`'s part).

* the box relative-position bias of every decoder layer (``Sam3DetrDecoder._get_rpb_matrix``): the row and column
  terms, (B, queries, 72, heads) each, added into (B, queries, 72, 72, heads) with the heads innermost (211 ms, a
  broadcast that torch walks element by element) and then copied into (B, heads, queries, 72 x 72) (149 ms).
  `rpb_matrix` adds them straight into that layout (the same two numbers added: the same bits), the map's columns
  innermost (~55 ms in six layers; full-size random SAM 3, a 1008 px chip, two phrases, Intel Xeon with AMX, one
  thread);
* the decoder's forward (`decoder_forward`): it padded each layer's box bias for the presence token (a fill and a copy
  of (B, heads, 201, 5184)) and added the position encoding to the same image tokens, and rounded both, in every
  layer; the bias is now written into the padded matrix and the keys and values made once (4.51 -> 4.05 s a detect
  with the projections of `geosam.models.sam3_detector.attention_forward`, one thread, alternating);
* in bf16 on a CPU with AMX (`use_rowcol_attention`) the vision cross-attention takes the bias as its row and column
  terms (`rpb_terms`) in `geosam.models.cpu_bias_attention.rowcol_attention`, and the (B, heads, 201, 5184) matrix is
  not made at all: the same function to bf16's rounding, not the same bits. Intel Xeon with AMX, 2 threads, the
  attention alone (2 phrases, 8 heads of 32 numbers) 8 ms against torch's 21 ms on the matrix it is given (with the
  matrix's making); a detect 1.245 -> 1.193 s (medians of 4, alternating in one process).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.bundle import SamBundle
from geosam.models.cpu_fused import kept_linear_low
from geosam.models.sam3_stock import low_autocast, stock_parts

__all__ = ["decoder_forward", "rpb_matrix", "rpb_terms", "use_rowcol_attention"]


def rpb_terms(decoder: Any, reference_boxes: torch.Tensor, spatial_shape: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The row and column terms of ``decoder._get_rpb_matrix(reference_boxes, spatial_shape)``: (B, heads, queries, H)
    and (B, heads, queries, W), contiguous; the matrix's entry for key ``r W + c`` is ``rows[..., r] + columns[...,
    c]``."""
    height, width = spatial_shape
    boxes_xyxy = stock_parts()["xyxy"](reference_boxes)
    batch_size, num_queries, _ = boxes_xyxy.shape
    coords_h, coords_w = decoder._get_coords(height, width, dtype=reference_boxes.dtype, device=reference_boxes.device)
    deltas_y = (coords_h.view(1, -1, 1) - boxes_xyxy.reshape(-1, 1, 4)[:, :, 1:4:2]).view(batch_size, num_queries, -1, 2)
    deltas_x = (coords_w.view(1, -1, 1) - boxes_xyxy.reshape(-1, 1, 4)[:, :, 0:3:2]).view(batch_size, num_queries, -1, 2)
    logs = []
    for d in (deltas_x, deltas_y):
        d = d * 8
        logs.append(torch.sign(d) * torch.log2(torch.abs(d) + 1.0) / math.log2(8))
    # (B, heads, queries, W) and (B, heads, queries, H), contiguous: the broadcast add then runs along whole rows
    # (Intel Xeon with AMX, one thread, two phrases: 9 ms a layer, 20-30 ms on the permuted views)
    rx = _decoder_mlp(decoder.box_rpb_embed_x, logs[0]).permute(0, 3, 1, 2).contiguous()
    ry = _decoder_mlp(decoder.box_rpb_embed_y, logs[1]).permute(0, 3, 1, 2).contiguous()
    return ry, rx


def rpb_matrix(decoder: Any, reference_boxes: torch.Tensor, spatial_shape: tuple[torch.Tensor, torch.Tensor],
               zero_rows: int = 0) -> torch.Tensor:  # fmt: skip
    """``decoder._get_rpb_matrix(reference_boxes, spatial_shape)``: (B, heads, queries, H W), the same bits, the row and
    column terms (`rpb_terms`) added into that layout directly. ``zero_rows``: that many rows of zeros before the
    queries' (B, heads, zero_rows + queries, H W), as the decoder pads the matrix for its presence token, without the
    pad's copy."""
    return _padded_matrix(*rpb_terms(decoder, reference_boxes, spatial_shape), zero_rows)


def _padded_matrix(ry: torch.Tensor, rx: torch.Tensor, zero_rows: int) -> torch.Tensor:
    """The box bias matrix (B, heads, zero_rows + queries, H W) from its row and column terms (`rpb_terms`)."""
    b, heads, q, w = rx.shape
    h = ry.shape[-1]
    out = torch.empty((b, heads, zero_rows + q, h, w), dtype=torch.result_type(ry, rx), device=rx.device)
    out[:, :, :zero_rows].zero_()
    torch.add(ry.unsqueeze(-1), rx.unsqueeze(-2), out=out[:, :, zero_rows:])
    return out.view(b, heads, zero_rows + q, h * w)


def _decoder_mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a ``Sam3DecoderMLP`` (linear, ReLU, linear[, ReLU, linear]); under CPU bf16 autocast with each ReLU
    fused into the product before it (`linear_low`, the same bits; the box bias's first layer writes (B, queries, 72,
    256) a layer: its ReLU pass and autocast's bias copy ~11 ms of the one-thread detector each)."""
    stock = stock_parts()
    if (not low_autocast() or x.device.type != "cpu" or torch.is_grad_enabled() or type(mlp) is not stock["decoder_mlp"]
            or type(mlp).forward is not stock["decoder_mlp_forward"]
            or not all(type(lin) is torch.nn.Linear for lin in (mlp.layer1, mlp.layer2, mlp.layer3) if lin is not None)):  # fmt: skip
        return mlp(x)
    dtype = torch.bfloat16
    x = kept_linear_low(mlp.layer1, x, dtype, relu=True)
    if mlp.layer3 is not None:
        x = kept_linear_low(mlp.layer2, x, dtype, relu=True)
    return kept_linear_low(mlp.layer3 if mlp.layer3 is not None else mlp.layer2, x, dtype)


def decoder_forward(decoder: Any, vision_features: torch.Tensor, text_features: torch.Tensor,
                    vision_pos_encoding: torch.Tensor, text_mask: torch.Tensor | None = None,
                    spatial_shapes: torch.Tensor | None = None, *, rowcol: bool = False, **kwargs: Any) -> Any:  # fmt: skip
    """``Sam3DetrDecoder.forward`` in inference on the CPU, the same outputs bit for bit, without what it does again
    and again with the same numbers: the box bias is written into the padded matrix the vision cross-attention takes
    (`rpb_matrix` with a zero row for the presence token: the stock forward pads it, a fill and a copy of (B, heads,
    201, 5184) a layer, ~29 ms of the one-thread detector), and the image tokens' keys with their position encoding
    (``vision_features + vision_pos_encoding``, a (B, 5184, 256) add a layer) are summed once, and under bf16 autocast
    rounded once with the values, for all six layers (`_decoder_layer`). For transformers' own decoder, whose
    ``_get_rpb_matrix`` `rpb_matrix` reproduces (`faster_detector` sets it there only).

    With ``rowcol`` (bf16 on a CPU with AMX: `use_rowcol_attention`) the vision cross-attention of transformers' own
    layers runs through `geosam.models.cpu_bias_attention.rowcol_attention` on the bias's row and column terms, the
    (B, heads, 201, H W) matrix never written: the same function to bf16 rounding, not the same bits (the kernel
    rounds the probabilities to bf16 for the values' product, as the encoder's attention kernel does)."""
    stock = stock_parts()
    if vision_features.device.type != "cpu" or decoder.training or torch.is_grad_enabled():
        return stock["decoder_forward"](decoder, vision_features, text_features, vision_pos_encoding, text_mask,
                                        spatial_shapes, **kwargs)  # fmt: skip
    batch_size = vision_features.shape[0]
    query_embeds = decoder.query_embed.weight.unsqueeze(0).expand(batch_size, -1, -1)
    reference_boxes = decoder.reference_points.weight.unsqueeze(0).expand(batch_size, -1, -1).sigmoid()
    presence_token = decoder.presence_token.weight.unsqueeze(0).expand(batch_size, -1, -1)
    hidden_states = torch.cat([presence_token, query_embeds], dim=1)
    text_cross_attn_mask = None
    if text_mask is not None:
        text_cross_attn_mask = stock["bidirectional_mask"](config=decoder.config, inputs_embeds=hidden_states,
                                                           attention_mask=text_mask, encoder_hidden_states=text_features)  # fmt: skip
    keys = vision_features + vision_pos_encoding
    values = vision_features
    if low_autocast():  # what autocast rounds the k and v projections' inputs to, in every layer
        keys, values = (t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in (keys, values))
    outputs, boxes, presence = [], [reference_boxes], []
    for layer in decoder.layers:
        query_pos = decoder.ref_point_head(decoder.position_encoding.encode_boxes(reference_boxes))
        cross_mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        own = type(layer) is stock["decoder_layer"] and type(layer).forward is stock["decoder_layer_forward"]
        if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
            shape = (spatial_shapes[0, 0], spatial_shapes[0, 1])
            if rowcol and own and _rowcol_takes(layer.vision_cross_attn):
                cross_mask = rpb_terms(decoder, reference_boxes, shape)  # the bias as its two terms
            else:
                cross_mask = rpb_matrix(decoder, reference_boxes, shape, zero_rows=1)  # the stock bias, padded
        if own:
            hidden_states = _decoder_layer(layer, hidden_states, query_pos, text_features, keys, values,
                                           text_cross_attn_mask, cross_mask, **kwargs)  # fmt: skip
        else:
            hidden_states = layer(hidden_states, query_pos=query_pos, text_features=text_features,
                                  vision_features=vision_features, vision_pos_encoding=vision_pos_encoding,
                                  text_cross_attn_mask=text_cross_attn_mask, vision_cross_attn_mask=cross_mask, **kwargs)  # fmt: skip
        query_hidden_states = hidden_states[:, 1:]
        delta_boxes = decoder.box_head(decoder.output_layer_norm(query_hidden_states))
        new_reference_boxes = (delta_boxes + stock["inverse_sigmoid"](reference_boxes)).sigmoid()
        reference_boxes = new_reference_boxes.detach()
        outputs.append(decoder.output_layer_norm(query_hidden_states))
        boxes.append(new_reference_boxes)
        logits = decoder.presence_head(decoder.presence_layer_norm(hidden_states[:, :1])).squeeze(-1)
        presence.append(logits.clamp(min=-decoder.clamp_presence_logit_max_val, max=decoder.clamp_presence_logit_max_val))
    return stock["decoder_output"](intermediate_hidden_states=torch.stack(outputs), reference_boxes=torch.stack(boxes[:-1]),
                                   presence_logits=torch.stack(presence))  # fmt: skip


def _decoder_layer(layer: Any, hidden_states: torch.Tensor, query_pos: torch.Tensor, text_features: torch.Tensor,
                   keys: torch.Tensor, values: torch.Tensor, text_cross_attn_mask: torch.Tensor | None,
                   vision_cross_attn_mask: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
                   **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """``Sam3DetrDecoderLayer.forward`` with the vision cross-attention's keys (image tokens plus their position
    encoding) and values made by the caller, once for every layer: the same bits. A pair of tensors as the vision
    mask: the box bias's row and column terms (`rpb_terms`), for `_rowcol_cross_attention`."""
    query_pos = F.pad(query_pos, (0, 0, 1, 0), mode="constant", value=0)
    residual = hidden_states
    query_with_pos = hidden_states + query_pos
    attn_output, _ = layer.self_attn(query=query_with_pos, key=query_with_pos, value=hidden_states, attention_mask=None, **kwargs)
    hidden_states = layer.self_attn_layer_norm(residual + layer.self_attn_dropout(attn_output))
    residual = hidden_states
    attn_output, _ = layer.text_cross_attn(query=hidden_states + query_pos, key=text_features, value=text_features,
                                           attention_mask=text_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = layer.text_cross_attn_layer_norm(residual + layer.text_cross_attn_dropout(attn_output))
    residual = hidden_states
    query = hidden_states + query_pos
    attn_output = None
    if isinstance(vision_cross_attn_mask, tuple):
        attn_output = _rowcol_cross_attention(layer.vision_cross_attn, query, keys, values, *vision_cross_attn_mask)
        if attn_output is None:  # the kernel turned the operands down: the stock bias
            vision_cross_attn_mask = _padded_matrix(*vision_cross_attn_mask, query.shape[1] - vision_cross_attn_mask[0].shape[2])
    if attn_output is None:
        attn_output, _ = layer.vision_cross_attn(query=query, key=keys, value=values,
                                                 attention_mask=vision_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = layer.vision_cross_attn_layer_norm(residual + layer.vision_cross_attn_dropout(attn_output))
    residual = hidden_states
    hidden_states = layer.mlp(hidden_states)
    return layer.mlp_layer_norm(residual + layer.mlp_dropout(hidden_states))


def use_rowcol_attention(bundle: SamBundle) -> bool:
    """Whether `decoder_forward` runs the DETR decoder's vision cross-attention through the row and column kernel:
    on the CPU with the bundle's dtype bf16 and the kernel in use here (AMX; not with ``GEOSAM_CPU_KERNELS=0``)."""
    from geosam.models.cpu_bias_attention import available

    return bundle.device.type == "cpu" and bundle.dtype == torch.bfloat16 and available()


def _rowcol_takes(attn: Any) -> bool:
    """Whether `_rowcol_cross_attention` reproduces ``attn``: transformers' ``Sam3Attention`` with its forward and
    plain linear projections, in inference under CPU bf16 autocast, heads the kernel takes (else the projections would
    be made for nothing and made again by the stock attention)."""
    from geosam.models.cpu_bias_attention import rowcol_takes

    stock = stock_parts()
    return (low_autocast() and type(attn) is stock["attention"] and type(attn).forward is stock["attention_forward"]
            and not attn.training and not torch.is_grad_enabled() and not attn.is_causal and rowcol_takes(attn.head_dim)
            and all(type(getattr(attn, p, None)) is torch.nn.Linear for p in ("q_proj", "k_proj", "v_proj", "o_proj")))  # fmt: skip


def _rowcol_cross_attention(attn: Any, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, ry: torch.Tensor,
                            rx: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
    """``attn(query, keys, values, attention_mask=bias)[0]`` under CPU bf16 autocast, the bias given as its row and
    column terms (`rpb_terms`, zero rows first for the queries they lack): the projections as `attention_forward`
    makes them, the attention by `geosam.models.cpu_bias_attention.rowcol_attention`. None where the kernel turns the
    operands down."""
    from geosam.models.cpu_bias_attention import rowcol_attention

    dtype = torch.bfloat16
    b, nq, nk = query.shape[0], query.shape[1], keys.shape[1]
    heads, d = attn.num_attention_heads, attn.head_dim
    q, k, v = (kept_linear_low(lin, x, dtype).view(b, n, heads, d)
               for lin, x, n in ((attn.q_proj, query, nq), (attn.k_proj, keys, nk), (attn.v_proj, values, nk)))  # fmt: skip
    low = ry.dtype == rx.dtype == torch.bfloat16  # the stock matrix is their bf16 sum
    out = rowcol_attention(q.contiguous(), k.contiguous(), v.contiguous(), ry.float().contiguous(),
                           rx.float().contiguous(), nq - ry.shape[2], attn.scaling, round_bias=low)  # fmt: skip
    return None if out is None else kept_linear_low(attn.o_proj, out, dtype)
