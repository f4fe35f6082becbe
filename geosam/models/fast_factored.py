"""The second layer's attentions of `geosam.models.fast_decoder` against the first layer's image side, factored.

With one image side ``x0`` (P, C) shared by all prompts (no mask input), a prompt's image side after the first
layer is, at position p, ``keys1_p = r_p g (x0_p + U_p - mu_p) + b``: ``U_p = probs0_p^T vo0`` the first layer's
image -> token update (R = heads x tokens rows), ``g``, ``b`` its layer norm's weight and bias, ``mu_p`` and ``r_p``
the norm's mean and reciprocal deviation (recorded by `geosam.models.fast_twoway._image_side`). A projection W of
``keys1_p + pos_p`` against a row q is then::

    q . W (keys1_p + pos_p) = r_p (q . (W g) x0_p + probs0_p . (vo0 (W g)^T q) - mu_p q . (W g) 1) + q . W (b + pos_p)

The first and last products run per head (d wide: 16 for SAM) against projections of ``x0`` and ``b + pos`` made
once per image (`layer1_projections`), the middle one has inner size R (56), so the second layer's token -> image
scores and image -> token scores take 40 instead of 117 MFLOP per prompt, and its token -> image values
(``sum_p a_p keys1_p``, the same algebra with ``a_p r_p`` as weights) 33 instead of 117; and ``keys1 + pos`` is
never written. With two layers ``keys1`` itself is not either (`geosam.models.fast_final`: the norms' statistics
and the final attention from the attention weights); elsewhere the last image side
(`_final_image_side_attention`) adds to it.
"""

from __future__ import annotations

from typing import Any

import torch

from geosam.models.cpu_gemm import linear
from geosam.models.cpu_heads import factored_scores
from geosam.models.cpu_weights import softmax_products
from geosam.models.fast_twoway import _by_head, _head_products, _heads, _token_softmax, _token_values, head_values

__all__ = ["factored_image_to_token", "factored_token_to_image", "layer1_projections"]


def layer1_projections(layer: Any, ln: Any, x0: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every prompt's second layer shares: x0 and ``b + pos`` projected per head, once per image.

    layer: the second two-way layer; ln: the first layer's image-side layer norm (g, b); x0, pos: (P, C).
    Keys and queries come without the key bias (it cancels in the softmax over positions); the queries scaled.
    """
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    g, bp = ln.weight, pos + ln.bias
    nh, nq = _heads(t2i)[0], _heads(i2t)[0]
    wk, wv = t2i.k_proj.weight, t2i.v_proj.weight
    scale = float(i2t.scaling)
    wq, bq = i2t.q_proj.weight * scale, i2t.q_proj.bias * scale
    return {
        "k_x": _by_head(linear(x0, wk * g), nh, True),
        "k_b": _by_head(linear(bp, wk), nh, True),
        "v_x": _by_head(linear(x0, wv * g), nh, False),
        "v_const": wv @ ln.bias + t2i.v_proj.bias,  # W_v b + b_v: the attention weights sum to 1
        "q_x": _by_head(linear(x0, wq * g), nq, True),
        "q_b": _by_head(linear(bp, wq, bq), nq, True),
    }


def _scores(
    rows: torch.Tensor, w: torch.Tensor, x_part: torch.Tensor, b_part: torch.Tensor, record: tuple, g: torch.Tensor
) -> torch.Tensor:
    """``rows . W (keys1_p + pos_p)`` for every position: rows (N, T, h, d) projected tokens, w (h*d, C) the
    projection (scaled as the rows need), x_part / b_part its (h, d, P) products with x0 and b + pos.
    Returns (N, h, T, P), contiguous."""
    n, t, nh, d = rows.shape
    _, vo0, mean0, rstd0, probs0 = record  # (N, P, R), (N, R, C), (N, P), (N, P), (N, R, P)
    full = torch.einsum("nthd,hdc->nhtc", rows, w.view(nh, d, -1)).mul_(g)  # (q W_h) g
    f = torch.bmm(full.reshape(n, nh * t, -1), vo0.transpose(1, 2))  # vo0 (W g)^T q, (N, h*T, R)
    rows_h = rows.transpose(1, 2)  # (N, h, T, d)
    fsum = full.sum(dim=-1)  # (N, h, T)
    fused = factored_scores(f, probs0, rows_h, (x_part, b_part), fsum, mean0, rstd0)
    if fused is not None:  # C: one pass per block of positions
        return fused
    s = torch.bmm(f, probs0).view(n, nh, t, -1)  # one product of all rows
    _head_products(s, rows_h, x_part, accumulate=True)
    s.addcmul_(fsum[..., None], mean0[:, None, None, :], value=-1.0)
    s.mul_(rstd0[:, None, None, :])
    _head_products(s, rows_h, b_part, accumulate=True)
    return s


def factored_token_to_image(
    attn: Any, q_tokens: torch.Tensor, record: tuple, proj: dict[str, torch.Tensor], g: torch.Tensor
) -> torch.Tensor:
    """The second layer's token -> image attention (after out_proj), (N, T, C), from the first layer's ``record``
    ``(probs0^T (N, P, R), vo0 (N, R, C), mean (N, P), rstd (N, P), probs0 (N, R, P))`` and `layer1_projections`."""
    n, t, _ = q_tokens.shape
    nh, d = _heads(attn)
    q = (attn.q_proj(q_tokens) * float(attn.scaling)).view(n, t, nh, d)
    s = _scores(q, attn.k_proj.weight, proj["k_x"], proj["k_b"], record, g)
    pt0, vo0, mean0, rstd0, _ = record
    # the weights a_p (softmax over the positions) times r_p: their products with the first layer's weights, the
    # means and the values x0 projected per head; in C where it runs, the weights never written
    fused = softmax_products(s, scale1=rstd0, y=mean0, x1=pt0, v=proj["v_x"])
    if fused is not None:
        assert fused.v is not None and fused.x1 is not None and fused.y is not None
        out, m, smu = fused.v, fused.x1, fused.y.view(n, nh, t)
    else:
        wts = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)  # (N, h, T, P)
        wts.mul_(rstd0[:, None, None, :])  # a_p r_p
        out = head_values(wts, proj["v_x"])  # sum_p a_p r_p (W_v g) x0_p, (N, h, T, d)
        wts = wts.view(n, nh * t, -1)
        m = torch.bmm(wts, pt0)  # (N, h*T, R)
        smu = torch.bmm(mean0[:, None, :], wts.transpose(1, 2)).view(n, nh, t)  # sum_p a_p r_p mu_p (a row)
    wvg = (attn.v_proj.weight * g).view(nh, d, -1)
    mv = torch.bmm(m, vo0).view(n, nh, t, -1)
    out = out + torch.einsum("nhtc,hdc->nhtd", mv, wvg) - smu[..., None] * wvg.sum(dim=-1)[:, None, :]
    return attn.out_proj(out.transpose(1, 2).reshape(n, t, nh * d) + proj["v_const"])


def factored_image_to_token(
    attn: Any,
    k_tokens: torch.Tensor,
    v_tokens: torch.Tensor,
    record: tuple,
    proj: dict[str, torch.Tensor],
    g: torch.Tensor,
    pt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second layer's image -> token attention as `geosam.models.fast_twoway._image_to_token_parts` returns it,
    ``(probs (N, h, T, P), vo (N, h*T, C))``, from the first layer's ``record`` and `layer1_projections`; ``pt``
    (N, P, h*T) receives the weights transposed (`geosam.models.fast_twoway._token_softmax`)."""
    n, t, _ = k_tokens.shape
    nh, d = _heads(attn)
    k = attn.k_proj(k_tokens).view(n, t, nh, d)
    s = _scores(k, attn.q_proj.weight * float(attn.scaling), proj["q_x"], proj["q_b"], record, g)
    return _token_softmax(s, pt), _token_values(attn, v_tokens)  # over the tokens
