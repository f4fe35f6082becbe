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
  -> 3.26 s, medians of 4, alternating in one process).

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
from geosam.models.cpu_convert import upsample2_add_bf16
from geosam.models.cpu_fused import linear_params
from geosam.models.cpu_gemm import linear_low
from geosam.models.patching import set_while
from geosam.models.sam3_attention import detr_encoder_attention

__all__ = ["embed_pixels", "encoder_layer_forward", "faster_detector", "mlp_forward", "rpb_matrix"]


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
            "pixel_decoder_forward": m.Sam3PixelDecoder.forward}


def _low_autocast() -> bool:
    """Whether CPU autocast to bf16 is on (the replacements that give its bits only then)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def rpb_matrix(decoder: Any, reference_boxes: torch.Tensor, spatial_shape: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``decoder._get_rpb_matrix(reference_boxes, spatial_shape)``: (B, heads, queries, H W), the same bits, the row and
    column terms added into that layout directly."""
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
    rx = decoder.box_rpb_embed_x(logs[0]).permute(0, 3, 1, 2).contiguous()
    ry = decoder.box_rpb_embed_y(logs[1]).permute(0, 3, 1, 2).contiguous()
    b, heads, q, w = rx.shape
    h = ry.shape[-1]
    out = torch.empty((b, heads, q, h, w), dtype=torch.result_type(ry, rx), device=rx.device)
    torch.add(ry.unsqueeze(-1), rx.unsqueeze(-2), out=out)
    return out.view(b, heads, q, h * w)


def mlp_forward(mlp: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``Sam3MLP.forward`` (fc1, dropout, ReLU, fc2; in inference) under CPU bf16 autocast: the ReLU fused into the
    first product, the same bits; the stock forward elsewhere."""
    if not _low_autocast() or hidden_states.device.type != "cpu" or mlp.training or torch.is_grad_enabled():
        return _stock()["mlp_forward"](mlp, hidden_states)
    dtype = torch.bfloat16
    hidden = linear_low(hidden_states, *linear_params(mlp.fc1, dtype), dtype, relu=True)
    return linear_low(hidden, *linear_params(mlp.fc2, dtype), dtype)


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``, a bf16 operand widened first where the other is float32: the same numbers (torch's mixed add widens
    it exactly, then adds), without torch's slow mixed-dtype loop (a (2, 5184, 256) add, one thread: 6.3 vs 2.1 ms)."""
    if a.dtype != b.dtype and {a.dtype, b.dtype} == {torch.float32, torch.bfloat16}:
        a, b = a.float(), b.float()
    return a + b


def encoder_layer_forward(layer: Any, vision_feats: torch.Tensor, prompt_feats: torch.Tensor,
                          vision_pos_encoding: torch.Tensor, prompt_cross_attn_mask: torch.Tensor | None = None,
                          **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """``Sam3DetrEncoderLayer.forward`` in inference under CPU bf16 autocast, the same bits: its residual adds of a
    bf16 attention or MLP output to the float32 stream through `_add`, and the position-encoded tokens rounded to bf16
    once for both the query and the key projections (autocast rounds them for each)."""
    if not _low_autocast() or vision_feats.device.type != "cpu" or layer.training or torch.is_grad_enabled():
        return _stock()["encoder_layer_forward"](layer, vision_feats, prompt_feats, vision_pos_encoding,
                                                 prompt_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = layer.layer_norm1(vision_feats)
    with_pos = _add(hidden_states, vision_pos_encoding)
    with_pos = with_pos.to(torch.bfloat16) if with_pos.dtype == torch.float32 else with_pos
    hidden_states, _ = layer.self_attn(query=with_pos, key=with_pos, value=hidden_states, **kwargs)
    hidden_states = _add(layer.dropout(hidden_states), vision_feats)
    residual = hidden_states
    hidden_states, _ = layer.cross_attn(query=layer.layer_norm2(hidden_states), key=prompt_feats, value=prompt_feats,
                                        attention_mask=prompt_cross_attn_mask, **kwargs)  # fmt: skip
    hidden_states = _add(layer.dropout(hidden_states), residual)
    residual = hidden_states
    hidden_states = layer.mlp(layer.layer_norm3(hidden_states))
    return _add(layer.dropout(hidden_states), residual)


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
            for m in _pixel_embedders(bundle.model):
                stack.enter_context(set_while(m, "_embed_pixels", functools.partial(embed_pixels, m)))
            if bundle.dtype == torch.bfloat16:
                for mlp in _relu_mlps(bundle.model):
                    stack.enter_context(set_while(mlp, "forward", functools.partial(mlp_forward, mlp)))
                for layer in _encoder_layers(bundle.model):
                    stack.enter_context(set_while(layer, "forward", functools.partial(encoder_layer_forward, layer)))
        yield

