"""SAM 3's detector on the CPU with fewer passes over its large tensors: the same numbers as transformers' forward.

Under bf16 autocast the DETR decoder and encoder spend much of their time in element-wise passes rather than in
products (full-size random SAM 3, a 1008 px chip, two phrases, Intel Xeon with AMX, one thread: 3.7 s a detect):

* the box relative-position bias of every decoder layer (``Sam3DetrDecoder._get_rpb_matrix``): the row and column
  terms, (B, queries, 72, heads) each, added into (B, queries, 72, 72, heads) with the heads innermost (211 ms, a
  broadcast that torch walks element by element) and then copied into (B, heads, queries, 72 x 72) (149 ms).
  `rpb_matrix` adds them straight into that layout (the same two numbers added: the same bits), the map's columns
  innermost (~55 ms in six layers);
* the DETR encoder's MLP (``Sam3MLP``: fc1, ReLU, fc2): autocast's bf16 product, then a ReLU pass over its
  (B x 5184, 2048) output (208 ms in six layers). `mlp_forward` fuses the ReLU into oneDNN's product
  (`geosam.models.cpu_gemm.linear_low` with ``relu``: a ReLU before the rounding to bf16 gives the rounding's bits
  after it)
  on weights rounded once (`geosam.models.cpu_fused.linear_params`);
* the DETR encoder layers' residual adds of a bf16 output to the float32 stream (torch's mixed-dtype loop: 6.3 vs
  2.1 ms for a (2, 5184, 256) add) and their position-encoded tokens rounded twice, for q and for k:
  `encoder_layer_forward`;
* the mask decoder's pixel embedding (``Sam3MaskDecoder._embed_pixels``): its backbone features cloned first (the
  finest level 2 x 256 x 288 x 288 floats for two phrases) though nothing writes into them, and a ReLU pass writing a
  new tensor at every FPN level: `embed_pixels` uses them as they are and takes the ReLU in place (bf16 detector 3.44
  -> 3.26 s, medians of 4, alternating in one process);
* the decoder's forward (`decoder_forward`): it padded each layer's box bias for the presence token (a fill and a copy
  of (B, heads, 201, 5184)) and added the position encoding to the same image tokens, and rounded both, in every
  layer; the bias is now written into the padded matrix and the keys and values made once (4.51 -> 4.05 s a detect
  with the projections below, one thread, alternating);
* the 31 attentions' projections (`attention_forward`): autocast rounded their weights on every call; now the kept
  bf16 weights (`linear_params`) through `linear_low`.

`faster_detector(bundle)` is the context `geosam.models.sam3.detect` runs in: it also enters
`geosam.models.sam3_attention.detr_encoder_attention`, and sets the replacements on the model's modules while
callers are inside (`geosam.models.patching.set_while`), only where the modules are transformers' own (their
methods the ones these functions reproduce), on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.bundle import SamBundle
from geosam.models.cpu_convert import add_bf16_, add_norm_low, upsample2_add_bf16
from geosam.models.cpu_fused import kept_linear_low
from geosam.models.patching import set_while
from geosam.models.sam3_attention import detr_encoder_attention

__all__ = ["attention_forward", "decoder_forward", "embed_pixels", "encoder_layer_forward", "faster_detector", "mlp_forward", "rpb_matrix"]


@functools.lru_cache(maxsize=1)
def _stock() -> dict[str, Any]:
    """transformers' classes and functions that this module's replacements reproduce (empty without SAM 3)."""
    try:
        from transformers.models.sam3 import modeling_sam3 as m
    except ImportError:  # pragma: no cover - transformers without SAM 3
        return {}
    return {"decoder": m.Sam3DetrDecoder, "rpb": m.Sam3DetrDecoder._get_rpb_matrix, "coords": m.Sam3DetrDecoder._get_coords,
            "mlp": m.Sam3MLP, "mlp_forward": m.Sam3MLP.forward, "xyxy": m.box_cxcywh_to_xyxy,
            "encoder_layer": m.Sam3DetrEncoderLayer, "encoder_layer_forward": m.Sam3DetrEncoderLayer.forward,
            "mask_decoder": m.Sam3MaskDecoder, "mask_decoder_forward": m.Sam3MaskDecoder.forward,
            "embed_pixels": m.Sam3MaskDecoder._embed_pixels, "pixel_decoder": m.Sam3PixelDecoder,
            "pixel_decoder_forward": m.Sam3PixelDecoder.forward, "decoder_forward": m.Sam3DetrDecoder.forward,
            "decoder_layer": m.Sam3DetrDecoderLayer, "decoder_layer_forward": m.Sam3DetrDecoderLayer.forward,
            "decoder_mlp": m.Sam3DecoderMLP, "decoder_mlp_forward": m.Sam3DecoderMLP.forward,
            "bidirectional_mask": m.create_bidirectional_mask, "inverse_sigmoid": m.inverse_sigmoid,
            "decoder_output": m.Sam3DETRDecoderOutput, "attention": m.Sam3Attention,
            "attention_forward": m.Sam3Attention.forward, "attention_functions": m.ALL_ATTENTION_FUNCTIONS,
            "eager_attention": m.eager_attention_forward, "flash_requested": m.is_flash_attention_requested}


def _low_autocast() -> bool:
    """Whether CPU autocast to bf16 is on (the replacements that give its bits only then)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def rpb_matrix(decoder: Any, reference_boxes: torch.Tensor, spatial_shape: tuple[torch.Tensor, torch.Tensor],
               zero_rows: int = 0) -> torch.Tensor:  # fmt: skip
    """``decoder._get_rpb_matrix(reference_boxes, spatial_shape)``: (B, heads, queries, H W), the same bits, the row and
    column terms added into that layout directly. ``zero_rows``: that many rows of zeros before the queries' (B,
    heads, zero_rows + queries, H W), as the decoder pads the matrix for its presence token, without the pad's copy."""
    height, width = spatial_shape
    boxes_xyxy = _stock()["xyxy"](reference_boxes)
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
    stock = _stock()
    if (not _low_autocast() or x.device.type != "cpu" or torch.is_grad_enabled() or type(mlp) is not stock["decoder_mlp"]
            or type(mlp).forward is not stock["decoder_mlp_forward"]
            or not all(type(lin) is torch.nn.Linear for lin in (mlp.layer1, mlp.layer2, mlp.layer3) if lin is not None)):  # fmt: skip
        return mlp(x)
    dtype = torch.bfloat16
    x = kept_linear_low(mlp.layer1, x, dtype, relu=True)
    if mlp.layer3 is not None:
        x = kept_linear_low(mlp.layer2, x, dtype, relu=True)
    return kept_linear_low(mlp.layer3 if mlp.layer3 is not None else mlp.layer2, x, dtype)


def mlp_forward(mlp: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``Sam3MLP.forward`` (fc1, dropout, ReLU, fc2; in inference) under CPU bf16 autocast: the ReLU fused into the
    first product, the same bits; the stock forward elsewhere."""
    if not _low_autocast() or hidden_states.device.type != "cpu" or mlp.training or torch.is_grad_enabled():
        return _stock()["mlp_forward"](mlp, hidden_states)
    dtype = torch.bfloat16
    hidden = kept_linear_low(mlp.fc1, hidden_states, dtype, relu=True)
    return kept_linear_low(mlp.fc2, hidden, dtype)


def attention_forward(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """``Sam3Attention.forward`` in inference under CPU bf16 autocast, the same bits: its four projections on weights
    rounded once (`linear_params`) and without autocast's copy of the bias into the output (`linear_low`); autocast
    rounded the four 256 x 256 weights of each of the detector's 31 attentions on every call (161 copies, ~70 ms of the
    one-thread detector). The stock forward elsewhere."""
    stock = _stock()
    if not _low_autocast() or query.device.type != "cpu" or attn.training or torch.is_grad_enabled():
        return stock["attention_forward"](attn, query, key, value, attention_mask, **kwargs)
    dtype = torch.bfloat16
    batch_size, query_len, key_len = query.shape[0], query.shape[1], key.shape[1]

    def project(lin: torch.nn.Linear, x: torch.Tensor, length: int) -> torch.Tensor:
        out = kept_linear_low(lin, x, dtype)
        return out.view(batch_size, length, attn.num_attention_heads, attn.head_dim).transpose(1, 2)

    q, k, v = project(attn.q_proj, query, query_len), project(attn.k_proj, key, key_len), project(attn.v_proj, value, key_len)
    functions = stock["attention_functions"]
    interface = functions.get_interface(attn.config._attn_implementation, stock["eager_attention"])
    if stock["flash_requested"](attn.config) and attention_mask is not None and attention_mask.dtype != torch.bool:
        interface = functions["sdpa"]  # as the stock forward: flash attention takes no additive bias
    out, weights = interface(attn, q, k, v, attention_mask=attention_mask, dropout=0.0, scaling=attn.scaling,
                             is_causal=attn.is_causal, **kwargs)  # fmt: skip
    out = out.reshape(batch_size, query_len, attn.num_attention_heads * attn.head_dim).contiguous()
    return kept_linear_low(attn.o_proj, out, dtype), weights


def _attentions(model: Any) -> list[Any]:
    """The detector's attentions (DETR encoder and decoder, mask decoder) that `attention_forward` reproduces:
    transformers' ``Sam3Attention`` with its forward and plain linear projections."""
    stock = _stock()
    out = []
    for part in (getattr(model, "detr_encoder", None), getattr(model, "detr_decoder", None), getattr(model, "mask_decoder", None)):
        for m in part.modules() if part is not None else ():
            if (type(m) is stock["attention"] and type(m).forward is stock["attention_forward"]
                    and all(type(getattr(m, p, None)) is torch.nn.Linear for p in ("q_proj", "k_proj", "v_proj", "o_proj"))):  # fmt: skip
                out.append(m)
    return out


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, a bf16 operand widened first where the other is float32: the same numbers (torch's mixed add widens
    it exactly, then adds), without torch's slow mixed-dtype loop (a (2, 5184, 256) add, one thread: 6.3 vs 2.1 ms)."""
    if a.dtype != b.dtype and {a.dtype, b.dtype} == {torch.float32, torch.bfloat16}:
        a, b = a.float(), b.float()
    return a + b


def encoder_layer_forward(layer: Any, vision_feats: torch.Tensor, prompt_feats: torch.Tensor,
                          vision_pos_encoding: torch.Tensor, prompt_cross_attn_mask: torch.Tensor | None = None,
                          **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """``Sam3DetrEncoderLayer.forward`` in inference under CPU bf16 autocast, the same bits: the position-encoded
    tokens rounded to bf16 once for both the query and the key projections (autocast rounds them for each), and on a
    float32 stream each residual add with the layer norm after it in one pass over the layer's own copy of the stream
    (`geosam.models.cpu_convert.add_norm_low`), the MLP's add in place; other streams through `_add` (torch's
    mixed-dtype add without its slow loop)."""
    if not _low_autocast() or vision_feats.device.type != "cpu" or layer.training or torch.is_grad_enabled():
        return _stock()["encoder_layer_forward"](layer, vision_feats, prompt_feats, vision_pos_encoding,
                                                 prompt_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = layer.layer_norm1(vision_feats)
    with_pos = _add(hidden_states, vision_pos_encoding)
    with_pos = with_pos.to(torch.bfloat16) if with_pos.dtype == torch.float32 else with_pos
    attn_out, _ = layer.self_attn(query=with_pos, key=with_pos, value=hidden_states, **kwargs)
    if vision_feats.dtype == torch.float32:
        # the stream is this layer's own from here: each output added in place, with the next norm, rounded as the
        # product after it rounds it, in the same pass where cpu_convert's kernel runs (the same bits, checked on load)
        stream = vision_feats.clone()
        normed = add_norm_low(stream, attn_out, layer.layer_norm2, torch.bfloat16)
        cross_out, _ = layer.cross_attn(query=normed, key=prompt_feats, value=prompt_feats,
                                        attention_mask=prompt_cross_attn_mask, **kwargs)  # fmt: skip
        return add_bf16_(stream, layer.mlp(add_norm_low(stream, cross_out, layer.layer_norm3, torch.bfloat16)))
    hidden_states = _add(layer.dropout(attn_out), vision_feats)
    residual = hidden_states
    hidden_states, _ = layer.cross_attn(query=layer.layer_norm2(hidden_states), key=prompt_feats, value=prompt_feats,
                                        attention_mask=prompt_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = _add(layer.dropout(hidden_states), residual)
    residual = hidden_states
    hidden_states = layer.mlp(layer.layer_norm3(hidden_states))
    return _add(layer.dropout(hidden_states), residual)


def decoder_forward(decoder: Any, vision_features: torch.Tensor, text_features: torch.Tensor,
                    vision_pos_encoding: torch.Tensor, text_mask: torch.Tensor | None = None,
                    spatial_shapes: torch.Tensor | None = None, **kwargs: Any) -> Any:  # fmt: skip
    """``Sam3DetrDecoder.forward`` in inference on the CPU, the same outputs bit for bit, without what it does again
    and again with the same numbers: the box bias is written into the padded matrix the vision cross-attention takes
    (`rpb_matrix` with a zero row for the presence token: the stock forward pads it, a fill and a copy of (B, heads,
    201, 5184) a layer, ~29 ms of the one-thread detector), and the image tokens' keys with their position encoding
    (``vision_features + vision_pos_encoding``, a (B, 5184, 256) add a layer) are summed once, and under bf16 autocast
    rounded once with the values, for all six layers (`_decoder_layer`). For transformers' own decoder, whose
    ``_get_rpb_matrix`` `rpb_matrix` reproduces (`faster_detector` sets it there only)."""
    stock = _stock()
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
    if _low_autocast():  # what autocast rounds the k and v projections' inputs to, in every layer
        keys, values = (t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in (keys, values))
    outputs, boxes, presence = [], [reference_boxes], []
    for layer in decoder.layers:
        query_pos = decoder.ref_point_head(decoder.position_encoding.encode_boxes(reference_boxes))
        cross_mask = None
        if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
            shape = (spatial_shapes[0, 0], spatial_shapes[0, 1])
            cross_mask = rpb_matrix(decoder, reference_boxes, shape, zero_rows=1)  # the stock bias, padded
        if type(layer) is stock["decoder_layer"] and type(layer).forward is stock["decoder_layer_forward"]:
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
                   vision_cross_attn_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """``Sam3DetrDecoderLayer.forward`` with the vision cross-attention's keys (image tokens plus their position
    encoding) and values made by the caller, once for every layer: the same bits."""
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
    attn_output, _ = layer.vision_cross_attn(query=hidden_states + query_pos, key=keys, value=values,
                                             attention_mask=vision_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = layer.vision_cross_attn_layer_norm(residual + layer.vision_cross_attn_dropout(attn_output))
    residual = hidden_states
    hidden_states = layer.mlp(hidden_states)
    return layer.mlp_layer_norm(residual + layer.mlp_dropout(hidden_states))


def _encoder_layers(model: Any) -> list[Any]:
    """The DETR encoder's layers that `encoder_layer_forward` reproduces: transformers' own, with their forward."""
    stock = _stock()
    enc = getattr(model, "detr_encoder", None)
    layers = getattr(enc, "layers", None) or []
    return [layer for layer in layers if type(layer) is stock["encoder_layer"] and type(layer).forward is stock["encoder_layer_forward"]]


def embed_pixels(mask_decoder: Any, backbone_features: list[torch.Tensor], encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """``Sam3MaskDecoder._embed_pixels`` in inference on the CPU, the same bits: the backbone features not copied first
    (the stock method clones every level, 2 x 256 x 288 x 288 floats at the finest for two phrases, though nothing
    writes into them), each level's ReLU in place and, under bf16 autocast, its upsampling, skip sum and the
    convolution's rounding of it in one pass (`geosam.models.cpu_convert.upsample2_add_bf16`); the stock method
    elsewhere."""
    if encoder_hidden_states.device.type != "cpu" or torch.is_grad_enabled():
        return _stock()["embed_pixels"](mask_decoder, backbone_features, encoder_hidden_states)
    height, width = backbone_features[-1].shape[-2:]
    visual = encoder_hidden_states[:, : height * width, :]
    batch_size, _, hidden_size = visual.shape
    feats = [*backbone_features[:-1], visual.transpose(1, 2).reshape(batch_size, hidden_size, height, width)]
    decoder = mask_decoder.pixel_decoder
    low = _low_autocast()
    prev = feats[-1]
    for i, feat in enumerate(reversed(feats[:-1])):
        summed = upsample2_add_bf16(prev, feat) if low else None  # what the convolution rounds its input to
        if summed is None:
            summed = F.interpolate(prev, size=feat.shape[-2:], mode="nearest") + feat
        prev = F.relu(decoder.norms[i](decoder.conv_layers[i](summed)), inplace=True)
    return prev


def _pixel_embedders(model: Any) -> list[Any]:
    """The model's mask decoder where `embed_pixels` reproduces it: transformers' own, with its forward, method and
    pixel decoder, their convolutions and norms plain modules."""
    stock = _stock()
    m: Any = getattr(model, "mask_decoder", None)
    pd: Any = getattr(m, "pixel_decoder", None)
    kind: Any = type(m)
    if (kind is not stock["mask_decoder"] or kind.forward is not stock["mask_decoder_forward"]
            or kind._embed_pixels is not stock["embed_pixels"] or type(pd) is not stock["pixel_decoder"]
            or type(pd).forward is not stock["pixel_decoder_forward"]):  # fmt: skip
        return []
    plain = all(type(c) is torch.nn.Conv2d for c in pd.conv_layers) and all(type(g) is torch.nn.GroupNorm for g in pd.norms)
    projections = all(type(getattr(m, a, None)) is torch.nn.Conv2d for a in ("instance_projection", "semantic_projection"))
    return [m] if plain and projections and len(pd.norms) == len(pd.conv_layers) else []


def _relu_mlps(model: Any) -> list[Any]:
    """The model's DETR encoder and decoder MLPs that `mlp_forward` reproduces: transformers' ``Sam3MLP`` with its
    own forward, a ReLU and plain linear layers."""
    stock = _stock()
    out = []
    for part in (getattr(model, "detr_encoder", None), getattr(model, "detr_decoder", None)):
        for m in part.modules() if part is not None else ():
            if (type(m) is stock["mlp"] and type(m).forward is stock["mlp_forward"] and isinstance(m.activation_fn, torch.nn.ReLU)
                    and type(m.fc1) is torch.nn.Linear and type(m.fc2) is torch.nn.Linear):  # fmt: skip
                out.append(m)
    return out


@contextlib.contextmanager
def faster_detector(bundle: SamBundle) -> Iterator[None]:
    """Inside: the bundle's SAM 3 detector with `rpb_matrix` and `embed_pixels`, and in bf16 `mlp_forward` and
    `encoder_layer_forward`, where they apply (on the CPU, the modules transformers' own), and the DETR encoder's
    attention through geosam's kernel where that applies."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(detr_encoder_attention(bundle))
        stock = _stock()
        decoder = getattr(bundle.model, "detr_decoder", None)
        if bundle.device.type == "cpu" and stock:
            kind: Any = type(decoder)
            if kind is stock["decoder"] and kind._get_rpb_matrix is stock["rpb"] and kind._get_coords is stock["coords"]:
                stack.enter_context(set_while(decoder, "_get_rpb_matrix", functools.partial(rpb_matrix, decoder)))
                if kind.forward is stock["decoder_forward"]:
                    stack.enter_context(set_while(decoder, "forward", functools.partial(decoder_forward, decoder)))
            for m in _pixel_embedders(bundle.model):
                stack.enter_context(set_while(m, "_embed_pixels", functools.partial(embed_pixels, m)))
            if bundle.dtype == torch.bfloat16:
                for mlp in _relu_mlps(bundle.model):
                    stack.enter_context(set_while(mlp, "forward", functools.partial(mlp_forward, mlp)))
                for layer in _encoder_layers(bundle.model):
                    stack.enter_context(set_while(layer, "forward", functools.partial(encoder_layer_forward, layer)))
                for attn in _attentions(bundle.model):
                    stack.enter_context(set_while(attn, "forward", functools.partial(attention_forward, attn)))
        yield

