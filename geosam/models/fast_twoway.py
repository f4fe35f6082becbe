"""The two-way transformer's attention steps of `geosam.models.fast_decoder`, rearranged for many prompts.

Token -> image attention without projecting the image positions (`_token_to_image`, split into its query rows
`_token_rows` and its output `_token_output`), image -> token attention as ``probs^T @ vo`` (`_image_to_token_parts`),
the image side after it (`_image_side`, on the CPU in tiles of `CPU_TILE_POSITIONS` positions: `_image_side_tiles`),
the last layer's image side fused with the final attention (`_final_image_side_attention`), and the first
layer's attentions against an image side every prompt shares, projected once (`shared_projections`,
`_token_to_image_projected`, `_image_to_token_projected`). The module docstring
of `geosam.models.fast_decoder` gives the algebra and the measured effect of each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_decoder import token_softmax
from geosam.models.cpu_gemm import bmm, linear
from geosam.models.cpu_heads import headdot
from geosam.models.cpu_weights import softmax_products

try:  # the MLP whose forward `token_mlp` reproduces
    from transformers.models.sam.modeling_sam import SamMLPBlock

    _STOCK_MLP_FORWARD: Any = SamMLPBlock.forward
except ImportError:  # pragma: no cover - transformers without SAM
    _STOCK_MLP_FORWARD = None


def _heads(attn: Any) -> tuple[int, int]:
    h = int(attn.num_attention_heads)
    return h, int(attn.internal_dim) // h


def _by_head(y: torch.Tensor, nh: int, keys: bool) -> torch.Tensor:
    """(P, h*d) projections of the image positions per head: (h, d, P) for scores (``keys``), else (h, P, d), by a 2D
    transpose and per-head copies: 3D permutes' copies ran 3-8x slower (Intel Xeon with AMX, P = 4096: 1.42 -> 0.42
    ms), ~20 ms of a 43 ms decode with one prompt per image (LiteMedSAM's box windows)."""
    if keys:
        return y.t().contiguous().view(nh, -1, y.shape[0])
    return torch.stack(y.view(y.shape[0], nh, -1).unbind(1))


def _token_values(attn: Any, v_tokens: torch.Tensor) -> torch.Tensor:
    """An image -> token attention's values with the output projection moved onto them, (N, h*T, C):
    ``out_proj(concat_h A_h V_h) = sum_h A_h (V_h W_o,h^T) + b_o``, b_o spread over the heads (each head's
    weights sum to 1)."""
    n, t, c = v_tokens.shape
    nh, d = _heads(attn)
    v = attn.v_proj(v_tokens).view(n, t, nh, d)
    wo = attn.out_proj.weight.view(c, nh, d)  # columns h*d..(h+1)*d belong to head h
    vo = torch.einsum("nthd,chd->nhtc", v, wo) + (attn.out_proj.bias / nh)
    return vo.reshape(n, nh * t, c)


def _scores(rows: torch.Tensor, x_pos: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows (N, R, C) against image keys x_pos (B, P, C), B = N or 1 (shared: one GEMM for all prompts):
    (N, R, P) (+ bias (N, R, 1))."""
    return bmm(rows, x_pos.transpose(1, 2), add=bias)


def _token_to_image(
    attn: Any,
    q_tokens: torch.Tensor,
    x: torch.Tensor,
    x_pos: torch.Tensor,
    proj: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """``attn(query=q_tokens, key=x_pos, value=x)`` without projecting the image positions.

    ``proj``: `shared_projections` of a shared x (B = 1), used instead (`_token_to_image_projected`).

    q_tokens: (N, T, C) token queries (with their positional part); x: (B, P, C)
    image values, x_pos: (B, P, C) image keys (x + pos), B = N or 1 (shared).
    Returns the attention output after out_proj, (N, T, C).

    ``q . k_p = (q W_k) . x_p + q . b_k``: the last term is the same for every
    image position p, so it cancels in the softmax over p and is left out.
    ``sum_p a_p (W_v x_p + b_v) = W_v (sum_p a_p x_p) + b_v`` as the a_p sum to 1.
    """
    if proj is not None:
        return _token_to_image_projected(attn, q_tokens, proj[0], proj[1])
    qk = _token_rows(attn, q_tokens)
    probs = torch.softmax(_scores(qk, x_pos), dim=-1, dtype=torch.float32).to(qk.dtype)  # (N, h*T, P)
    return _token_output(attn, bmm(probs, x), q_tokens.shape[1])


def _token_rows(attn: Any, q_tokens: torch.Tensor) -> torch.Tensor:
    """The token -> image attention's query rows against the raw image side: ``q W_k`` per head, (N, h*T, C)."""
    n, t, c = q_tokens.shape
    nh, d = _heads(attn)
    q = attn.q_proj(q_tokens).view(n, t, nh, d)
    wk = attn.k_proj.weight.view(nh, d, c)  # rows h*d..(h+1)*d belong to head h
    return torch.einsum("nthd,hdc->nhtc", q, wk * float(attn.scaling)).reshape(n, nh * t, c)


def _token_output(attn: Any, ax: torch.Tensor, t: int) -> torch.Tensor:
    """The attention output (N, T, C) from ``ax`` (N, h*T, C), the attention-weighted image side of each row."""
    n, _, c = ax.shape
    nh, d = _heads(attn)
    wv = attn.v_proj.weight.view(nh, d, c)
    out = torch.einsum("nhtc,hdc->nthd", ax.view(n, nh, t, c), wv).reshape(n, t, nh * d) + attn.v_proj.bias
    return attn.out_proj(out)


#: Image positions per tile of the per-position steps on the CPU (residual, layer norm and positional add after
#: the image -> token attention; the output upscaling): a tile's intermediates stay in the core's cache, so each
#: prompt's (h*w, C) image side is read and written once per step instead of once per operation.
CPU_TILE_POSITIONS = 1024


def _image_to_token_parts(
    attn: Any,
    x_pos: torch.Tensor,
    k_tokens: torch.Tensor,
    v_tokens: torch.Tensor,
    proj: tuple[torch.Tensor, ...] | None = None,
    pt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn(query=x_pos, key=k_tokens, value=v_tokens)`` as ``probs^T @ vo``, without projecting the image positions.

    ``proj``: `shared_projections` of a shared x_pos (B = 1), used instead (`_image_to_token_projected`).
    ``pt`` (N, P, h*T): receives the weights transposed (`_token_softmax`).

    x_pos: (B, P, C) image keys (x + pos), B = N or 1 (shared); k_tokens,
    v_tokens: (N, T, C). Returns ``(probs (N, h*T, P), vo (N, h*T, C))``: the
    attention output at position p is ``sum_j probs[:, j, p] vo[:, j]``.

    ``(W_q x_p + b_q) . k = x_p . (W_q^T k) + b_q . k`` moves the query
    projection to the tokens, and ``out_proj(concat_h A_h V_h) = sum_h A_h
    (V_h W_o,h^T) + b_o`` moves the output projection to the tokens too
    (b_o is spread over the heads' values: each head's weights sum to 1).
    """
    if proj is not None:
        return _image_to_token_projected(attn, proj[2], k_tokens, v_tokens, pt)
    n, t, c = k_tokens.shape
    nh, d = _heads(attn)
    scale = float(attn.scaling)
    k = attn.k_proj(k_tokens).view(n, t, nh, d)
    wq = attn.q_proj.weight.view(nh, d, c)
    kq = torch.einsum("nthd,hdc->nhtc", k, wq * scale).reshape(n, nh * t, c)
    kb = torch.einsum("nthd,hd->nht", k, attn.q_proj.bias.view(nh, d) * scale).reshape(n, nh * t, 1)
    s = _scores(kq, x_pos, kb).view(n, nh, t, -1)  # (N, h, T, P)
    probs = _token_softmax(s.contiguous(), pt).view(n, nh * t, -1)
    return probs, _token_values(attn, v_tokens)


def cache_key(cache: dict[Any, Any] | None, shape: tuple[int, ...], *tensors: torch.Tensor) -> tuple[Any, ...]:
    """The key under which `cached` keeps what the decoder's calls on one image share: the addresses of the
    ``tensors`` it is computed from (the image embeddings, the dense prompt embeddings, ...) and ``shape``.

    A ``cache`` that starts on a new key holds the tensors themselves while the key is current: a cache kept across
    calls (`geosam.models.runtime.decode`'s ``cache``, e.g. by the batches of one crop) would otherwise let a later
    tensor take a freed one's address and be taken for it.
    """
    key = (tuple(t.data_ptr() for t in tensors), shape)
    if cache is not None and cache.get("image") != key:
        cache.clear()
        cache["image"], cache["tensors"] = key, tensors
    return key


def cached(cache: dict[Any, Any] | None, key: Any, tag: str, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``cache`` under ``tag`` for the image ``key`` (`geosam.models.fast_decoder.fast_decode`'s
    ``cache``: what the calls on one image share). ``key``: `cache_key`'s for this cache, which empties a cache that
    held another image's values; a key that is not the cache's current one is not kept (made again each call)."""
    if cache is None or cache.get("image") != key:
        return make()
    if tag not in cache:
        cache[tag] = make()
    return cache[tag]


#: Prompts from which a call without ``cache`` projects a shared image side once (`shared_projections`) rather
#: than moving the projections to each prompt's tokens: 3 x 0.27 GFLOP once against ~0.33 GFLOP saved per prompt
#: (SAM: 4096 positions, C = 256, internal dim 128).
SHARED_PROJECTION_MIN_PROMPTS = 3


def shared_projections(layer: Any, x: torch.Tensor, x_pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A layer's image side projected once for all prompts that share it (the first layer without mask input).

    x, x_pos: (P, C) image values and keys (x + pos). Returns, per head,
    the token -> image attention's keys ``(h, d, P)`` (without ``b_k``: it
    cancels in the softmax over positions) and values ``(h, P, d)`` (without
    ``b_v``: added after the attention, whose weights sum to 1), and the
    image -> token attention's queries ``(h, d, P)``, scaled. Each prompt's
    attention then multiplies its own tokens by d-wide (16) heads instead of
    C-wide (256) rows against every position: 7 instead of 117 MFLOP per
    product and prompt for SAM.
    """
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    nh, nq = _heads(t2i)[0], _heads(i2t)[0]
    scale = float(i2t.scaling)
    kh = _by_head(linear(x_pos, t2i.k_proj.weight), nh, True)
    vh = _by_head(linear(x, t2i.v_proj.weight), nh, False)
    qh = _by_head(linear(x_pos, i2t.q_proj.weight * scale, i2t.q_proj.bias * scale), nq, True)
    return kh, vh, qh


def _token_to_image_projected(attn: Any, q_tokens: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """`_token_to_image` against an image side projected once (`shared_projections`' keys and values), (N, T, C)."""
    n, t, _ = q_tokens.shape
    nh, d = _heads(attn)
    q = attn.q_proj(q_tokens) * float(attn.scaling)
    s = q.new_empty((n, nh, t, kh.shape[-1])) if q.device.type == "cpu" and q.dtype == torch.float32 else None
    if s is not None and headdot(q.view(n, t, nh, d).transpose(1, 2), kh, s):  # the scores (N, h, T, P) in C
        fused = softmax_products(s, v=vh)  # in C where it runs: the weights never written
        heads = fused.v if fused is not None else head_values(torch.softmax(s, dim=-1), vh)  # (N, h, T, d)
        assert heads is not None
        out = heads.transpose(1, 2).reshape(n, t, nh * d)
    else:
        qh = q.view(n * t, nh, d).transpose(0, 1)  # (h, N*T, d)
        probs = torch.softmax(torch.bmm(qh, kh), dim=-1, dtype=torch.float32).to(q.dtype)  # (h, N*T, P)
        out = torch.bmm(probs, vh).transpose(0, 1).reshape(n, t, nh * d)
    return attn.out_proj(out + attn.v_proj.bias)


def _token_softmax(s: torch.Tensor, pt: torch.Tensor | None = None) -> torch.Tensor:
    """Image -> token attention weights from scores s (N, h, T, P): the softmax over the tokens (dim 2), in float32;
    ``pt`` (N, P, h*T), if given, receives them transposed. On AVX2 CPUs in one C pass over s
    (`geosam.models.cpu_decoder.token_softmax`: torch's bits, 1.6 vs 2.8 ms for SAM's 8 prompts, 2.9 vs 5.6 ms with
    the transposes; AMD EPYC Zen 3, one thread)."""
    if token_softmax(s, pt) is not None:
        return s
    probs = torch.softmax(s, dim=2, dtype=torch.float32).to(s.dtype)
    if pt is not None:
        for i in range(probs.shape[0]):
            _transposed(probs[i], pt[i])
    return probs


def _image_to_token_projected(
    attn: Any, qh: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor, pt: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_image_to_token_parts` against image queries projected once (`shared_projections`).

    Returns ``(probs, vo)`` as `_image_to_token_parts` does, with ``probs``
    (N, h, T, P) rather than (N, h*T, P). ``pt``: see `_token_softmax`.
    """
    n, t, _ = k_tokens.shape
    nh, d = _heads(attn)
    k = attn.k_proj(k_tokens).view(n, t, nh, d).transpose(1, 2)  # (N, h, T, d)
    s = k.new_empty((n, nh, t, qh.shape[-1]))  # (N, h, T, P): a prompt's rows together
    _head_products(s, k, qh)
    return _token_softmax(s, pt), _token_values(attn, v_tokens)


def _head_products(s: torch.Tensor, rows: torch.Tensor, side: torch.Tensor, accumulate: bool = False) -> None:
    """``s[i] (+)= rows[i] @ side`` for every prompt i: rows (N, h, T, d), side (h, d, P) an image side projected
    per head, s (N, h, T, P). In C where it runs (`geosam.models.cpu_heads.headdot`: ``side`` read once for all
    prompts), else one torch product per prompt."""
    if headdot(rows, side, s, accumulate=accumulate):
        return
    for i in range(s.shape[0]):
        if accumulate:
            s[i].baddbmm_(rows[i], side)
        else:
            torch.bmm(rows[i], side, out=s[i])


def head_values(w: torch.Tensor, side: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``w[i] @ side`` for every prompt i: w (N, h, T, P) attention weights, side (h, P, d) values projected per head;
    (N, h, T, d), added to ``out`` if given. The prompts' rows of each head stacked into one product, ``side`` read
    once (1.05 vs 1.4 ms for SAM's 8 prompts x 7 tokens, one product per prompt; Zen 4, one thread)."""
    n, nh, t, p = w.shape
    y = torch.bmm(w.transpose(0, 1).reshape(nh, n * t, p), side).view(nh, n, t, -1).transpose(0, 1)
    return y if out is None else out.add_(y)


def _transposed(probs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """One prompt's attention weights (R, P) or (h, T, P), any strides, as a contiguous (P, R) (into ``out``)."""
    rows = probs.reshape(-1, probs.shape[-1])  # a copy for a (h, T, P) view: then the transpose is 3x faster
    return rows.t().contiguous() if out is None else out.copy_(rows.t())


def _layer_norm(x: torch.Tensor, ln: Any) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _image_side(
    x: torch.Tensor,
    probs: torch.Tensor,
    vo: torch.Tensor,
    ln: Any,
    pos: torch.Tensor,
    inplace: bool = False,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    with_pos: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image side after an image -> token attention: ``keys = ln(x + probs^T @ vo)`` and ``keys + pos``
    (None without ``with_pos``).

    x: (B, P, C), B = N or 1 (shared); probs (N, R, P) or (N, h, T, P), vo (N, R, C) from
    `_image_to_token_parts` or `_image_to_token_projected`; pos (1, P, C). Returns ``(keys, keys_pos)``, both
    (N, P, C). ``inplace``: ``x`` is not needed afterwards and receives ``keys``.
    On the CPU in float32 each prompt runs `CPU_TILE_POSITIONS` positions at a
    time through all three steps (the same values: every step is per position).
    ``stats`` (CPU float32 only): tensors that receive ``probs`` transposed
    (N, P, R) and the layer norm's mean and reciprocal standard deviation per
    position (N, P).
    """
    n, p = probs.shape[0], probs.shape[-1]
    c = vo.shape[-1]
    own = inplace and x.shape[0] == n
    if not (x.device.type == "cpu" and x.dtype == vo.dtype == torch.float32):
        keys = _layer_norm(bmm(probs.reshape(n, -1, p).transpose(1, 2), vo, add=x, out=x if own else None), ln)
        return keys, keys + pos if with_pos else None
    keys = x if own else torch.empty((n, p, c), dtype=x.dtype, device=x.device)
    keys_pos = torch.empty_like(keys) if with_pos else None
    for i, s, e, y in _image_side_tiles(x, probs, vo, ln, stats):
        keys[i, s:e] = y
        if keys_pos is not None:
            torch.add(y, pos[0, s:e], out=keys_pos[i, s:e])
    return keys, keys_pos


def _image_side_tiles(
    x: torch.Tensor,
    probs: torch.Tensor,
    vo: torch.Tensor,
    ln: Any,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """`_image_side`'s keys on the CPU in float32, `CPU_TILE_POSITIONS` positions of one prompt at a time:
    ``(prompt, start, end, keys[prompt, start:end])``, the tile valid until the next one is asked for."""
    n, p = probs.shape[0], probs.shape[-1]
    for i in range(n):
        xi = x[i] if x.shape[0] == n else x[0]
        # (P, R): tiles of positions are contiguous rows
        pt = _transposed(probs[i], None if stats is None else stats[0][i])
        for s in range(0, p, CPU_TILE_POSITIONS):
            e = min(p, s + CPU_TILE_POSITIONS)
            y = linear(pt[s:e], vo[i].t()).add_(xi[s:e])
            if stats is None:
                y = _layer_norm(y, ln)
            else:
                y, mean, rstd = torch.native_layer_norm(y, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                stats[1][i, s:e], stats[2][i, s:e] = mean[:, 0], rstd[:, 0]
            yield i, s, e, y


def _final_image_side_attention(
    attn: Any,
    q_tokens: torch.Tensor,
    x: torch.Tensor,
    probs: torch.Tensor,
    vo: torch.Tensor,
    ln: Any,
    pos: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """The last layer's image side and the final token -> image attention in one pass (CPU, float32).

    The same as ``keys, keys_pos = _image_side(x, probs, vo, ln, pos)`` then
    ``_token_to_image(attn, q_tokens, keys, keys_pos)``, for when nothing else
    reads the final image side (the upscaling's first product comes from the
    shared image side, `_Conv1FromSharedImage`): each tile of positions is
    attended to while it is in cache, with a running maximum and sum
    (the softmax over all positions, as in flash attention), and the (N, P, C)
    ``keys`` and ``keys_pos`` are never written. Returns the attention output
    (N, T, C). Equal to the two steps up to float rounding.
    """
    qk = _token_rows(attn, q_tokens)  # (N, R2, C)
    ax = torch.empty_like(qk)
    kp = torch.empty((CPU_TILE_POSITIONS, x.shape[-1]), dtype=x.dtype, device=x.device)
    # a prompt's running maximum, sum of weights and weighted image side, started by its first tile (s == 0)
    run_max = run_sum = acc = qk.new_empty(0)
    for i, s, e, y in _image_side_tiles(x, probs, vo, ln, stats):
        scores = linear(qk[i], torch.add(y, pos[0, s:e], out=kp[: e - s]))  # (R2, tile)
        tile_max = scores.amax(dim=1, keepdim=True)
        if s == 0:
            weights = scores.sub_(tile_max).exp_()
            run_max, run_sum, acc = tile_max, weights.sum(dim=1, keepdim=True), weights @ y
        else:
            new_max = torch.maximum(run_max, tile_max)
            alpha = (run_max - new_max).exp_()
            weights = scores.sub_(new_max).exp_()
            run_max, run_sum = new_max, run_sum.mul_(alpha).add_(weights.sum(dim=1, keepdim=True))
            acc = acc.mul_(alpha).addmm_(weights, y)
        if e == probs.shape[-1]:
            torch.div(acc, run_sum, out=ax[i])
    return _token_output(attn, ax, q_tokens.shape[1])


def token_mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a two-way layer's ``SamMLPBlock`` (lin1, ReLU, lin2) with thread-count invariant float32 CPU
    products (`geosam.models.cpu_gemm.linear` ``invariant``): MKL's AVX-512 GEMM, Intel's float32 path, splits
    lin2's 2048-long sums into 256 outputs between 2 threads for 16 or more rows (Intel Xeon with AMX: the prompts'
    tokens and so every mask's logits differ in the last bits between 1 and 2 threads). Other MLPs as they are."""
    lin1, lin2, act = (getattr(mlp, a, None) for a in ("lin1", "lin2", "act"))
    if not (isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear) and isinstance(act, torch.nn.ReLU)):
        return mlp(x)
    if not (x.device.type == "cpu" and type(mlp).forward is _STOCK_MLP_FORWARD):
        return mlp(x)
    h = torch.relu_(linear(x, lin1.weight, lin1.bias, invariant=True))
    return linear(h, lin2.weight, lin2.bias, invariant=True)
