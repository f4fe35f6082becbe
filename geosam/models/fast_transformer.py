"""The two-way transformer of a SAM-layout mask decoder for many prompts on one image: `run_two_way`.

The transformer steps of `geosam.models.fast_decoder` (its module docstring gives the algebra and the measured
effect of each): the image positions never projected, the first layer's projections shared by all prompts, and on the
CPU in float32 with one image side for all prompts the second layer factored (`geosam.models.fast_factored`) and, with
two layers, no image side written at all (`geosam.models.fast_final`); the upscaling's first product is then made from
the shared image side and each prompt's attention records (`geosam.models.fast_upscale._Conv1FromSharedImage`). SAM's,
SAM 2's (through `geosam.models.decoder_side.sam_layout`) and SAM-HQ's decoders all run it: their transformers are
the same; they differ in their tokens and in what they add to the upscaling, which all start from that first product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from geosam.models.fast_factored import factored_image_to_token, factored_token_to_image, layer1_projections
from geosam.models.fast_final import factored_final_attention, final_projections, record_side
from geosam.models.fast_twoway import (
    SHARED_PROJECTION_MIN_PROMPTS,
    _final_image_side_attention,
    _image_side,
    _image_to_token_parts,
    _token_to_image,
    cache_key,
    cached,
    shared_projections,
    token_mlp,
)
from geosam.models.fast_upscale import _Conv1FromSharedImage

__all__ = ["Conv1", "TwoWay", "run_two_way"]

#: ``conv1(prompt, factored) -> (A, B, c, S)``: the upscaling's first product of one prompt's last image side,
#: ``A @ B + c * S`` (rows: image positions; with ``factored`` A as `geosam.models.cpu_decoder.Factors`, c None).
Conv1 = Callable[[int, bool], tuple[Any, torch.Tensor, Any, torch.Tensor]]


@dataclasses.dataclass
class _SharedSide:
    """One image side for all prompts: the first layer's projections of it (`shared_projections`) and, on the CPU
    in float32, the second layer's (`layer1_projections`), the first layer's records and its layer norm's weight."""

    layer0: tuple[torch.Tensor, ...]
    layer1: dict[str, torch.Tensor] | None = None
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    g: torch.Tensor | None = None
    probs0: torch.Tensor | None = None  # the first layer's image -> token weights, (N, R, P)

    def factors(self, i_layer: int) -> bool:
        """Whether layer ``i_layer`` runs factored (`geosam.models.fast_factored`): needs no ``keys + pos``."""
        return i_layer == 1 and self.layer1 is not None


def _shared_side(
    tr: Any,
    keys: torch.Tensor,
    keys_pos: torch.Tensor,
    pos: torch.Tensor,
    n: int,
    cache: dict[Any, Any] | None,
    key: Any,
    records: list,
    factor: bool,
) -> _SharedSide | None:
    """The projections of an image side ``keys`` (1, P, C) all n prompts share (with ``keys_pos``, keys + pos
    (1, P, C), and pos (P, C); kept in ``cache`` for the image ``key``),
    None where it is not shared or a call of few prompts has no cache; with ``factor`` (CPU float32, the records
    kept), the second layer's too, factored against ``records``."""
    layers = list(tr.layers)
    if not layers or keys.shape[0] != 1 or (cache is None and n < SHARED_PROJECTION_MIN_PROMPTS):
        return None
    x0, ln = keys[0], layers[0].layer_norm4
    shared = _SharedSide(cached(cache, key, "layer0", lambda: shared_projections(layers[0], x0, keys_pos[0])))
    if factor and len(layers) > 1:
        shared.layer1 = cached(cache, key, "layer1", lambda: layer1_projections(layers[1], ln, x0, pos))
        shared.records, shared.g = records, ln.weight
    return shared


def _image_sides(
    image_embeddings: torch.Tensor, dense_embeddings: torch.Tensor, image_pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The image side (B, P, C) (embedding + dense prompt, B = 1 or N), the positional encoding (1, P, C) and
    their sum, channels last: the same for every call on one image (kept in ``fast_decode``'s cache)."""
    keys = (image_embeddings + dense_embeddings).flatten(2).transpose(1, 2).contiguous()
    pos = image_pe.flatten(2).transpose(1, 2).contiguous()
    return keys, pos, keys + pos


def _cross_attentions(
    layer: Any,
    i_layer: int,
    queries: torch.Tensor,
    pe_tok: torch.Tensor,
    keys: torch.Tensor,
    keys_pos: torch.Tensor | None,
    shared: _SharedSide | None,
    pt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-way layer's token -> image attention, MLP and image -> token attention: ``(queries, probs, vo)``;
    ``pt`` (N, P, h*T) receives the image -> token weights transposed."""
    proj = shared.layer0 if shared is not None and i_layer == 0 else None
    factored = shared is not None and shared.factors(i_layer)
    if factored:
        assert shared is not None and shared.layer1 is not None and shared.records and shared.g is not None
        record = (*shared.records[0], shared.probs0)
        att = factored_token_to_image(
            layer.cross_attn_token_to_image, queries + pe_tok, record, shared.layer1, shared.g
        )
    else:
        assert keys_pos is not None
        att = _token_to_image(layer.cross_attn_token_to_image, queries + pe_tok, keys, keys_pos, proj)
    queries = layer.layer_norm2(queries + att)
    queries = layer.layer_norm3(queries + token_mlp(layer.mlp, queries))
    if factored:
        assert shared is not None and shared.layer1 is not None and shared.g is not None
        probs, vo = factored_image_to_token(
            layer.cross_attn_image_to_token, queries + pe_tok, queries, record, shared.layer1, shared.g, pt
        )
    else:
        assert keys_pos is not None
        probs, vo = _image_to_token_parts(
            layer.cross_attn_image_to_token, keys_pos, queries + pe_tok, queries, proj, pt
        )
        if shared is not None and proj is not None:
            shared.probs0 = probs.reshape(probs.shape[0], -1, probs.shape[-1])
    return queries, probs, vo


def _final_attention(
    tr: Any,
    q_tokens: torch.Tensor,
    keys: torch.Tensor,
    keys_pos: torch.Tensor | None,
    pos: torch.Tensor,
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, Any] | None,
    sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    sh: dict[str, torch.Tensor],
    centred: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """The final token -> image attention of ``q_tokens``: against image sides never written (``sides``,
    `geosam.models.fast_final`, ``centred`` the values `record_side` centred; ``bf16``: its products in bf16 where
    the CPU has AMX), fused with the last image side (``last``), or against ``keys`` / ``keys_pos``."""
    attn = tr.final_attn_token_to_image
    if sides:
        assert centred is not None
        (_, p0, _), (_, p1, _) = sides
        lns = (tr.layers[0].layer_norm4, tr.layers[1].layer_norm4)
        pts, rstd = (records[0][0], records[1][0]), (records[0][3], records[1][3])
        return factored_final_attention(attn, q_tokens, (p0, p1), pts, centred, rstd, lns, sh, bf16)
    if last is not None:  # the final image side is never written; the upscaling reads the records instead
        x, probs, vo, ln4, stats = last
        return _final_image_side_attention(attn, q_tokens, x, probs, vo, ln4, pos, stats)
    assert keys_pos is not None  # None only before a factored layer: then the last image side is fused (CPU)
    return _token_to_image(attn, q_tokens, keys, keys_pos)


@dataclasses.dataclass
class TwoWay:
    """What `run_two_way` gives: ``queries`` (N, U, C), the ``used`` tokens after the final attention and its norm;
    ``keys`` (N, P, C), the last image side, written unless ``conv1`` is given (then only its shape holds: the
    upscaling takes its first product from ``conv1``); ``conv1``: where no image side was written (CPU float32, one
    image side for all prompts), the upscaling's first product per prompt (`Conv1`)."""

    queries: torch.Tensor
    keys: torch.Tensor
    conv1: Conv1 | None

    def first_product(self, i: int) -> torch.Tensor:
        """Prompt i's upscaling's first product (1, h*w, 4 C/4) from `conv1` (given): ``A @ B + c * S``."""
        assert self.conv1 is not None
        a, b, c, shared = self.conv1(i, False)
        return torch.mm(a, b).addcmul_(shared, c)[None]


def _conv1_from_records(
    dec: Any,
    x0: torch.Tensor,
    lns: list[Any],
    cache: dict[Any, Any] | None,
    key: Any,
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Conv1:
    """`Conv1` from the shared image side x0 and the layers' records, its plan made on the first call."""
    plan: list[_Conv1FromSharedImage] = []

    def conv1(i: int, factored: bool) -> tuple[Any, torch.Tensor, Any, torch.Tensor]:
        if not plan:
            plan.append(_Conv1FromSharedImage(dec, x0, lns, cache, key))
        p = plan[0]
        a, b, c1 = (*p.factors(i, records), None) if factored else p.prompt(i, records)
        return a, b, c1, p.shared

    return conv1


def run_two_way(
    dec: Any,
    tr: Any,
    tokens: torch.Tensor,
    image_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    cache: dict[Any, Any] | None,
    used: list[int],
    unroll: bool = True,
    key: Any = None,
    bf16: bool = False,
) -> TwoWay:
    """The two-way transformer ``tr`` (SAM's layout: `geosam.models.decoder_side.sam_layout`) of decoder ``dec`` on
    ``tokens`` (N, T, C, also their positional encoding) against image_embeddings (1, C, h, w) + dense_embeddings
    (1 or N, C, h, w) with image_pe (1, C, h, w); the final attention only for the token rows ``used`` (each attends
    on its own). ``cache``: a dict passed to every call on the same image and dense embedding (`cache_key`).
    ``unroll``: allow the CPU float32 paths that write no last image side (`TwoWay.conv1`; the caller's upscaling
    must start from its first product). ``key``: the image's `cache_key` in ``cache`` where the caller made it (from
    these tensors and others its decoder reads), else made here. ``bf16`` (the bf16 dtype): the final attention's
    products (scores and weights) in bf16 where it runs factored and the CPU has AMX
    (`geosam.models.fast_final.factored_final_attention`; free in SAM's masks:
    benchmarks/check_final_scores_bf16.py)."""
    n = tokens.shape[0]
    _, c, hh, ww = image_embeddings.shape
    wdtype = dec.iou_token.weight.dtype
    if dense_embeddings.shape[0] not in (1, n):
        raise ValueError(f"dense_embeddings batch {dense_embeddings.shape[0]} fits neither 1 nor {n} prompts")
    image_key = key if key is not None else cache_key(cache, (hh * ww, c), image_embeddings, dense_embeddings)
    keys, pos, keys_pos = cached(
        cache if dense_embeddings.shape[0] == 1 else None,
        image_key,
        "sides",
        lambda: _image_sides(image_embeddings, dense_embeddings, image_pe),
    )
    queries = pe_tok = tokens
    # CPU float32, one image side shared by all prompts: the upscaling's first product from it (`_Conv1FromSharedImage`)
    lns = [layer.layer_norm4 for layer in tr.layers]
    unrolled = (
        unroll
        and keys.shape[0] == 1
        and keys.device.type == "cpu"
        and keys.dtype == wdtype == torch.float32
        and len(lns) > 0
        and all(ln.weight is not None and ln.bias is not None for ln in lns)
    )
    x0 = keys[0]
    # one image side for all prompts (no mask input): the first layer's attentions against it projected once
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    shared = _shared_side(tr, keys, keys_pos, pos[0], n, cache, image_key, records, unrolled)
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, Any] | None = None
    # CPU float32, two layers, the second factored: no image side is ever written (`geosam.models.fast_final`)
    unwritten = shared is not None and shared.factors(1) and len(lns) == 2
    sh = cached(cache, image_key, "final", lambda: final_projections(tr, x0, pos[0])) if unwritten else {}
    sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per layer: value tokens, probs, vo
    centred = None  # the second layer's values centred (`record_side`), for the final attention
    for i_layer, layer in enumerate(tr.layers):
        # self attention of the tokens (cheap: run the module itself)
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(query=queries[None], key=queries[None], value=queries[None])[0][0]
        else:
            q = (queries + pe_tok)[None]
            queries = queries + layer.self_attn(query=q, key=q, value=queries[None])[0][0]
        queries = layer.layer_norm1(queries)

        # with no image side written, the weights' transposed record is filled by their softmax
        r_i2t = int(layer.cross_attn_image_to_token.num_attention_heads) * queries.shape[1]
        pt = queries.new_empty((n, x0.shape[0], r_i2t)) if unwritten else None
        queries, probs, vo = _cross_attentions(layer, i_layer, queries, pe_tok, keys, keys_pos, shared, pt)
        stats = None
        if unrolled:
            p_img = probs.shape[-1]
            r = vo.shape[1]
            stats = (probs.new_empty((n, p_img, r)) if pt is None else pt, *probs.new_empty((2, n, p_img)))
            records.append((stats[0], vo, stats[1], stats[2]))
            if unwritten:
                sides.append((queries, probs, vo))
                centred = record_side(tr, sides, stats, records, sh, transposed=True)
                continue
            if i_layer == len(tr.layers) - 1:  # the last image side only for the final attention: fused with it
                last = (keys, probs, vo, layer.layer_norm4, stats)
                break
        # keys + pos for the next layer's products, unless it is factored
        with_pos = shared is None or not shared.factors(i_layer + 1)
        keys, keys_pos = _image_side(
            keys, probs, vo, layer.layer_norm4, pos, inplace=i_layer > 0, stats=stats, with_pos=with_pos
        )

    queries, pe_used = queries[:, used], pe_tok[:, used]
    if last is not None:
        keys = last[0]
    att = _final_attention(tr, queries + pe_used, keys, keys_pos, pos, last, sides, records, sh, centred, bf16)
    queries = tr.layer_norm_final_attn(queries + att)
    if keys.shape[0] != n:  # no transformer layer ran (or none was written): still one embedding per prompt
        keys = keys.expand(n, -1, -1)
    conv1 = _conv1_from_records(dec, x0, lns, cache, image_key, records) if unrolled else None
    return TwoWay(queries, keys, conv1)
