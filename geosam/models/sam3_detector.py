"""SAM 3's detector on the CPU with fewer passes over its large tensors: the same numbers as transformers' forward.

Under bf16 autocast the DETR decoder and encoder spend much of their time in element-wise passes rather than in
products (full-size random SAM 3, a 1008 px chip, two phrases, Intel Xeon with AMX, one thread: 3.7 s a detect):

* the DETR decoder's box bias, its vision cross-attention and its forward: `geosam.models.sam3_decoder`;
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
* the DETR encoder's first layer, whose self-attention sees no phrase: it ran once per phrase on copies of the same
  image tokens; `prepare_features` keeps one image's features a view of the batch and `encoder_layer_forward` attends
  them once (bf16, 2 threads: two phrases 1.13 -> 1.035 s a detect, four 2.18 -> 1.96 s, alternating in one process);
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
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.bundle import SamBundle
from geosam.models.cpu_convert import add_bf16_, add_norm_low, upsample2_add_bf16
from geosam.models.cpu_fused import kept_linear_low
from geosam.models.patching import set_while
from geosam.models.sam3_attention import detr_encoder_attention
from geosam.models.sam3_decoder import decoder_forward, rpb_matrix, use_rowcol_attention
from geosam.models.sam3_stock import low_autocast, stock_parts

__all__ = ["attention_forward", "embed_pixels", "encoder_layer_forward", "faster_detector", "mlp_forward",
           "prepare_features"]


def mlp_forward(mlp: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``Sam3MLP.forward`` (fc1, dropout, ReLU, fc2; in inference) under CPU bf16 autocast: the ReLU fused into the
    first product, the same bits; the stock forward elsewhere."""
    if not low_autocast() or hidden_states.device.type != "cpu" or mlp.training or torch.is_grad_enabled():
        return stock_parts()["mlp_forward"](mlp, hidden_states)
    dtype = torch.bfloat16
    hidden = kept_linear_low(mlp.fc1, hidden_states, dtype, relu=True)
    return kept_linear_low(mlp.fc2, hidden, dtype)


def attention_forward(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """``Sam3Attention.forward`` in inference under CPU bf16 autocast, the same bits: its four projections on weights
    rounded once (`linear_params`) and without autocast's copy of the bias into the output (`linear_low`); autocast
    rounded the four 256 x 256 weights of each of the detector's 31 attentions on every call (161 copies, ~70 ms of the
    one-thread detector). The stock forward elsewhere."""
    stock = stock_parts()
    if not low_autocast() or query.device.type != "cpu" or attn.training or torch.is_grad_enabled():
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
    stock = stock_parts()
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
    if not low_autocast() or vision_feats.device.type != "cpu" or layer.training or torch.is_grad_enabled():
        return stock_parts()["encoder_layer_forward"](layer, vision_feats, prompt_feats, vision_pos_encoding,
                                                 prompt_cross_attn_mask, **kwargs)  # fmt: skip
    # one image's tokens viewed as a batch of phrases (`prepare_features`): the self-attention, which sees no phrase,
    # made once and viewed as the batch (each phrase's row is computed alone by every step: the same bits)
    batch = vision_feats.shape[0]
    one = batch > 1 and vision_feats.stride(0) == 0 and (vision_pos_encoding.shape[0] == 1 or vision_pos_encoding.stride(0) == 0)
    mine, pos = (vision_feats[:1], vision_pos_encoding[:1]) if one else (vision_feats, vision_pos_encoding)
    hidden_states = layer.layer_norm1(mine)
    with_pos = _add(hidden_states, pos)
    with_pos = with_pos.to(torch.bfloat16) if with_pos.dtype == torch.float32 else with_pos
    attn_out, _ = layer.self_attn(query=with_pos, key=with_pos, value=hidden_states, **kwargs)
    if one:
        attn_out = attn_out.expand(batch, *attn_out.shape[1:]).contiguous()
    if vision_feats.dtype == torch.float32:
        # the stream is this layer's own from here: each output added in place, with the next norm, rounded as the
        # product after it rounds it, in the same pass where cpu_convert's kernel runs (the same bits, checked on load)
        stream = vision_feats.clone(memory_format=torch.contiguous_format)
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


def prepare_features(encoder: Any, vision_features: list[torch.Tensor], vision_pos_embeds: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``Sam3DetrEncoder._prepare_multilevel_features`` without its copies for one level: the features and position
    encodings flattened as views, so that one image's features viewed as a batch of phrases (``expand``: no copy)
    reach the first layer as such and `encoder_layer_forward` attends them once. The same numbers; several levels
    through the stock method."""
    if len(vision_features) != 1 or len(vision_pos_embeds) != 1:
        return stock_parts()["prepare_features"](encoder, vision_features, vision_pos_embeds)
    features, pos = vision_features[0], vision_pos_embeds[0]
    shapes = torch.tensor([tuple(features.shape[-2:])], dtype=torch.long, device=features.device)
    return features.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), shapes


def _encoder_layers(model: Any) -> list[Any]:
    """The DETR encoder's layers that `encoder_layer_forward` reproduces: transformers' own, with their forward."""
    stock = stock_parts()
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
        return stock_parts()["embed_pixels"](mask_decoder, backbone_features, encoder_hidden_states)
    height, width = backbone_features[-1].shape[-2:]
    visual = encoder_hidden_states[:, : height * width, :]
    batch_size, _, hidden_size = visual.shape
    feats = [*backbone_features[:-1], visual.transpose(1, 2).reshape(batch_size, hidden_size, height, width)]
    decoder = mask_decoder.pixel_decoder
    low = low_autocast()
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
    stock = stock_parts()
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
    stock = stock_parts()
    out = []
    for part in (getattr(model, "detr_encoder", None), getattr(model, "detr_decoder", None)):
        for m in part.modules() if part is not None else ():
            if (type(m) is stock["mlp"] and type(m).forward is stock["mlp_forward"] and isinstance(m.activation_fn, torch.nn.ReLU)
                    and type(m.fc1) is torch.nn.Linear and type(m.fc2) is torch.nn.Linear):  # fmt: skip
                out.append(m)
    return out


@contextlib.contextmanager
def faster_detector(bundle: SamBundle) -> Iterator[None]:
    """Inside: the bundle's SAM 3 detector with `rpb_matrix`, `decoder_forward` (its vision cross-attention on the
    bias's terms where `use_rowcol_attention`) and `embed_pixels`, and in bf16 `mlp_forward`, `encoder_layer_forward`,
    `prepare_features` and `attention_forward`, where they apply (on the CPU, the modules transformers' own), and the
    DETR encoder's attention through geosam's kernel where that applies."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(detr_encoder_attention(bundle))
        stock = stock_parts()
        decoder = getattr(bundle.model, "detr_decoder", None)
        if bundle.device.type == "cpu" and stock:
            kind: Any = type(decoder)
            if kind is stock["decoder"] and kind._get_rpb_matrix is stock["rpb"] and kind._get_coords is stock["coords"]:
                stack.enter_context(set_while(decoder, "_get_rpb_matrix", functools.partial(rpb_matrix, decoder)))
                if kind.forward is stock["decoder_forward"]:
                    forward = functools.partial(decoder_forward, decoder, rowcol=use_rowcol_attention(bundle))
                    stack.enter_context(set_while(decoder, "forward", forward))
            for m in _pixel_embedders(bundle.model):
                stack.enter_context(set_while(m, "_embed_pixels", functools.partial(embed_pixels, m)))
            if bundle.dtype == torch.bfloat16:
                for mlp in _relu_mlps(bundle.model):
                    stack.enter_context(set_while(mlp, "forward", functools.partial(mlp_forward, mlp)))
                layers = _encoder_layers(bundle.model)
                for layer in layers:
                    stack.enter_context(set_while(layer, "forward", functools.partial(encoder_layer_forward, layer)))
                encoder: Any = getattr(bundle.model, "detr_encoder", None)
                if layers and layers == list(encoder.layers) and type(encoder) is stock["encoder"] and (
                        type(encoder).forward is stock["encoder_forward"]
                        and type(encoder)._prepare_multilevel_features is stock["prepare_features"]):  # fmt: skip
                    stack.enter_context(set_while(encoder, "_prepare_multilevel_features",
                                                  functools.partial(prepare_features, encoder)))
                for attn in _attentions(bundle.model):
                    stack.enter_context(set_while(attn, "forward", functools.partial(attention_forward, attn)))
        yield

