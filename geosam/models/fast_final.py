"""The image sides after SAM's two two-way layers, never written: their norms' statistics and the final attention.

`geosam.models.fast_factored` runs the second layer against the first layer's image side in factored form; the
first side ``keys1`` (P, C) per prompt was still computed and written, and the second one tile by tile for the
final token -> image attention. With one image side ``x0`` (P, C) shared by all prompts (no mask input), both are
(per position p; ``c`` a vector centred over the channels, ``U_l = probs_l^T vo_l`` layer l's image -> token
update, R = heads x tokens rows, ``g_l``, ``b_l``, ``s_l`` its layer norm's weight, bias and reciprocal deviation)::

    z1 = x0 + U0                      keys1 = s1 (g1 z1c) + b1
    z2 = keys1 + U1                   keys2 = s2 g2 (s1 Ac + b1c + U1c) + b2,   Ac = ax + Q0^T probs0

with ``ax = (g1 x0c)c`` (once per image) and ``Q0 = (g1 vo0c)c`` (R x C per prompt). Hence:

* the norms' means are per-position dot products with R-vectors, and their variances quadratic forms in the
  attention weights: ``|z1c|^2 = |x0c|^2 + 2 probs0 . (vo0 x0c) + probs0^T (vo0c vo0c^T) probs0`` and likewise
  ``|s1 Ac + b1c + U1c|^2`` (R x R Gram matrices, products with ``x0`` per head of the output projection against
  projections of x0 made once per image); every dot product has a centred side, so nothing large cancels;
* the final attention's scores of a query row q (of head h) are
  ``s2 (s1 (q . Wk G2 ax_p + (q Wk G2 Q0^T) probs0_p) + q . Wk g2 b1c + (q Wk G2 vo1c^T) probs1_p) + q . Wk pos_p``
  and its values the same algebra with the attention weights times ``s2`` (and ``s1``) against ``probs^T``.

Per prompt that is ~0.2 GFLOP of products of inner size 16 (heads) or R (56) and no (P, C) tensor, against
~0.37 GFLOP and two layer norms, copies and adds over (P, C) (`geosam.models.fast_twoway._image_side`,
`_final_image_side_attention`). The statistics are returned as ``records`` for the upscaling's first product
(`geosam.models.fast_upscale._Conv1FromSharedImage`). The quadratic forms run in C on AVX2 CPUs
(`geosam.models.cpu_decoder.quad`: blocks of positions, half of each symmetric Gram matrix). Same function up to
float rounding (sums associated differently). SAM's two-layer decoder only, CPU float32 (where the factored second layer runs).
"""

from __future__ import annotations

from typing import Any

import torch

from geosam.models.cpu_decoder import quad, quad_reference
from geosam.models.cpu_gemm import linear
from geosam.models.cpu_heads import final_scores, proj_dots
from geosam.models.cpu_weights import softmax_products
from geosam.models.fast_twoway import _by_head, _head_products, _heads, _token_rows, _transposed, head_values

__all__ = [
    "centred_values",
    "factored_final_attention",
    "final_projections",
    "first_side_stats",
    "record_side",
    "second_side_stats",
]


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=-1, keepdim=True)


def final_projections(tr: Any, x0: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every prompt shares for `first_side_stats`, `second_side_stats` and `factored_final_attention`:
    x0 (P, C) centred, its norms and its projections per head, once per image. tr: the two-way transformer."""
    l0, l1 = list(tr.layers)[:2]
    ln1, ln2 = l0.layer_norm4, l1.layer_norm4
    i2t0, i2t1, fin = l0.cross_attn_image_to_token, l1.cross_attn_image_to_token, tr.final_attn_token_to_image
    g1, g2 = ln1.weight, ln2.weight
    b1c = _centred(ln1.bias)
    x0c = _centred(x0)
    ax = _centred(x0c * g1)  # (g1 x0c)c
    gax = ax * g1
    n0, n1, nf = _heads(i2t0)[0], _heads(i2t1)[0], _heads(fin)[0]
    wo0, wo1 = i2t0.out_proj.weight, i2t1.out_proj.weight  # (C, h*d): columns of head h
    return {
        "x0_mean": x0.mean(dim=-1),
        "x0c_sq": (x0c * x0c).sum(dim=-1),
        "x0c_wo0": _by_head(linear(x0c, wo0.t()), n0, True),  # (h, d, P)
        "x0c_bo0": x0c @ i2t0.out_proj.bias,
        "x0c_g1": x0c @ g1,
        "ax_sq": (ax * ax).sum(dim=-1),
        "ax_b1c": ax @ b1c,
        "gax_wo0": _by_head(linear(gax, wo0.t()), n0, True),
        "gax_bo0": gax @ i2t0.out_proj.bias,
        "gax_sum": gax.sum(dim=-1),
        "ax_wo1": _by_head(linear(ax, wo1.t()), n1, True),
        "ax_bo1": ax @ i2t1.out_proj.bias,
        "k_ax": _by_head(linear(ax, fin.k_proj.weight * g2), nf, True),  # (h, d, P), without the key bias
        "k_pos": _by_head(linear(pos, fin.k_proj.weight), nf, True),
        "v_ax": _by_head(linear(ax, fin.v_proj.weight * g2), nf, False),  # (h, P, d)
        "b1c": b1c,
    }


def centred_values(
    vo: tuple[torch.Tensor, torch.Tensor], g1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(vo0c, Q0 = (g1 vo0c)c, vo1c)``: the two layers' image -> token values (N, R, C) centred over the channels,
    as `second_side_stats` and `factored_final_attention` both take them (made once per call of the decoder)."""
    vo0c, vo1c = _centred(vo[0]), _centred(vo[1])
    return vo0c, _centred(vo0c * g1), vo1c


def _out_proj_dots(attn: Any, v_tokens: torch.Tensor, xw: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``sum_r probs[r, p] (x_p . vo[r])`` without the output bias (N, P): ``vo`` an image -> token attention's
    values with its output projection (`geosam.models.fast_twoway._token_values`), x given as its projection per
    head ``xw`` (h, d, P) on that projection's weight; probs (N, h, T, P)."""
    n, t, _ = v_tokens.shape
    nh, d = _heads(attn)
    v = attn.v_proj(v_tokens).view(n, t, nh, d).transpose(1, 2)  # (N, h, T, d)
    fused = proj_dots(v, xw, probs)  # C: the (N, h, T, P) products never written
    if fused is not None:
        return fused
    e = v.new_empty((n, nh, t, xw.shape[-1]))  # (N, h, T, P)
    _head_products(e, v, xw)
    return e.mul_(probs).sum(dim=(1, 2))


def _quad(gram: torch.Tensor, left: torch.Tensor, right: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """``left[:, :, p]^T gram right[:, :, p]`` for every p: gram (N, R, R'), left (N, R, P), right (N, R', P); with
    ``symmetric`` (a Gram matrix, right = left) the C kernel visits half of it (`geosam.models.cpu_decoder.quad`)."""
    got = quad(gram, left, right, symmetric)
    return quad_reference(gram, left, right) if got is None else got


def first_side_stats(
    attn: Any, v_tokens: torch.Tensor, probs: torch.Tensor, vo: torch.Tensor, ln: Any, sh: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first image side's layer-norm mean and reciprocal deviation (N, P) each, ``z1 = x0 + probs^T vo``.

    attn: the first layer's image -> token attention, v_tokens its value tokens (N, T, C); probs (N, h, T, P)
    and vo (N, R, C) its weights and values; ln its layer norm; sh: `final_projections`.
    """
    n = probs.shape[0]
    p = probs.reshape(n, -1, probs.shape[-1])  # (N, R, P)
    c = vo.shape[-1]
    mean = torch.bmm(vo.mean(dim=-1)[:, None, :], p)[:, 0].add_(sh["x0_mean"])
    voc = _centred(vo)
    cross = _out_proj_dots(attn, v_tokens, sh["x0c_wo0"], probs).add_(sh["x0c_bo0"])
    var = _quad(torch.bmm(voc, voc.transpose(1, 2)), p, p, True).add_(cross, alpha=2.0).add_(sh["x0c_sq"]).div_(c)
    return mean, var.add_(ln.eps).rsqrt_()


def second_side_stats(
    attns: tuple[Any, Any],
    v_tokens: tuple[torch.Tensor, torch.Tensor],
    probs: tuple[torch.Tensor, torch.Tensor],
    vo: tuple[torch.Tensor, torch.Tensor],
    rstd1: torch.Tensor,
    lns: tuple[Any, Any],
    sh: dict[str, torch.Tensor],
    centred: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second image side's layer-norm mean and reciprocal deviation (N, P), ``z2 = keys1 + probs1^T vo1``.

    Per layer (first, second): the image -> token attentions, their value tokens, weights (N, h, T, P) and values
    (N, R, C); rstd1 from `first_side_stats`; lns the two layer norms; sh: `final_projections`; centred:
    `centred_values` of ``vo``.
    """
    n = probs[0].shape[0]
    p0, p1 = (x.reshape(n, -1, x.shape[-1]) for x in probs)
    vo0, vo1 = vo
    ln1 = lns[0]
    g1, b1c = ln1.weight, sh["b1c"]
    c = vo0.shape[-1]
    vo0c, q0, vo1c = centred  # q0 = (g1 vo0c)c, (N, R, C)
    # the R-vectors' dot products with each position's weights, one pass over each layer's weights (N, k, P)
    d0 = torch.bmm(torch.stack([vo0c @ g1, vo0.mean(dim=-1), q0 @ b1c], dim=1), p0)
    d1 = torch.bmm(torch.stack([vo1.mean(dim=-1), vo1 @ b1c], dim=1), p1)
    # mean: keys1's (s1 mean(g1 z1c) + mean(b1)) plus probs1 . mean(vo1)
    mean_a = d0[:, 0].add_(sh["x0c_g1"]).div_(c)
    mean = d1[:, 0].addcmul_(rstd1, mean_a).add_(ln1.bias.mean())
    # |Ac|^2 = |ax|^2 + 2 ax . Q0^T p0 + p0^T Q0 Q0^T p0, with ax . Q0[r] = (g1 ax) . vo0[r] - mean(vo0[r]) sum(g1 ax)
    ax_q0 = _out_proj_dots(attns[0], v_tokens[0], sh["gax_wo0"], probs[0]).add_(sh["gax_bo0"])
    ax_q0.addcmul_(d0[:, 1], sh["gax_sum"], value=-1.0)
    ac_sq = _quad(torch.bmm(q0, q0.transpose(1, 2)), p0, p0, True).add_(ax_q0, alpha=2.0).add_(sh["ax_sq"])
    ac_b = d0[:, 2].add_(sh["ax_b1c"])
    # Ac . U1c = ax . U1 + p0^T (Q0 vo1c^T) p1 (ax is centred)
    ac_u = _out_proj_dots(attns[1], v_tokens[1], sh["ax_wo1"], probs[1]).add_(sh["ax_bo1"])
    ac_u.add_(_quad(torch.bmm(q0, vo1c.transpose(1, 2)), p0, p1))
    u_sq = _quad(torch.bmm(vo1c, vo1c.transpose(1, 2)), p1, p1, True)
    b_u = d1[:, 1]
    # |s1 Ac + b1c + U1c|^2
    var = ac_sq.mul_(rstd1).add_(ac_b, alpha=2.0).add_(ac_u, alpha=2.0).mul_(rstd1)
    var.add_(u_sq).add_(b_u, alpha=2.0).add_(float(b1c @ b1c)).div_(c)
    return mean, var.add_(lns[1].eps).rsqrt_()


def factored_final_attention(
    attn: Any,
    q_tokens: torch.Tensor,
    probs: tuple[torch.Tensor, torch.Tensor],
    pts: tuple[torch.Tensor, torch.Tensor],
    centred: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rstd: tuple[torch.Tensor, torch.Tensor],
    lns: tuple[Any, Any],
    sh: dict[str, torch.Tensor],
    bf16: bool = False,
) -> torch.Tensor:
    """The final token -> image attention (after out_proj), (N, T, C), against the second image side in factored
    form: ``q_tokens`` (N, T, C) its queries; per layer (first, second) the image -> token weights (N, h, T, P),
    the same transposed (N, P, R) and the norm's reciprocal deviation (N, P); the values as `centred_values`
    gives them. ``bf16`` (the bf16 dtype): the scores' products and the weights' on AMX tiles where the CPU has them
    (`geosam.models.cpu_heads.final_scores`, `geosam.models.cpu_weights.softmax_products`)."""
    n, t, _ = q_tokens.shape
    nh, d = _heads(attn)
    p0, p1 = (x.reshape(n, -1, x.shape[-1]) for x in probs)
    g2, b1c = lns[1].weight, sh["b1c"]
    s1, s2 = rstd
    _, q0, vo1c = centred  # (N, R, C)
    qk = _token_rows(attn, q_tokens)  # (N, h*T, C): q Wk per row, scaled
    q = (attn.q_proj(q_tokens) * float(attn.scaling)).view(n, t, nh, d).transpose(1, 2)  # (N, h, T, d)
    qg = qk * g2
    f = torch.bmm(qg, q0.transpose(1, 2)), torch.bmm(qg, vo1c.transpose(1, 2))  # q Wk G2 Q0^T, q Wk G2 vo1c^T
    c = qk @ (g2 * b1c)  # (N, h*T)
    s = final_scores(f, (p0, p1), q, (sh["k_ax"], sh["k_pos"]), c, (s1, s2), bf16)  # C: one pass per block of positions
    if s is None:
        s = torch.bmm(f[0], p0).view(n, nh, t, -1)  # (q Wk G2 Q0^T) p0
        _head_products(s, q, sh["k_ax"], accumulate=True)
        s.mul_(s1[:, None, None, :])
        s.add_(c.view(n, nh, t, 1))
        s.view(n, nh * t, -1).baddbmm_(f[1], p1)  # (q Wk G2 vo1c^T) p1
        s.mul_(s2[:, None, None, :])
        _head_products(s, q, sh["k_pos"], accumulate=True)
    # the weights w (softmax over the positions) times s2, then s1: their products with the two layers' weights
    # and the first image side's projected values; in C where it runs, the weights never written
    fused = softmax_products(s, scale1=s2, want_sum=True, x1=pts[1], scale2=s1, x2=pts[0], v=sh["v_ax"], bf16=bf16)
    if fused is not None:
        assert fused.sum is not None and fused.x1 is not None and fused.x2 is not None and fused.v is not None
        w2_sum, w2_pt1, w21_pt0, w21_v = fused.sum[..., None], fused.x1, fused.x2, fused.v
    else:
        w2 = torch.softmax(s, dim=-1).mul_(s2[:, None, None, :])  # (N, h, T, P): weights x s2
        w2f = w2.view(n, nh * t, -1)
        w2_sum, w2_pt1 = w2f.sum(dim=-1, keepdim=True), torch.bmm(w2f, pts[1])
        w21 = w2.mul_(s1[:, None, None, :])  # weights x s2 x s1
        w21_pt0, w21_v = torch.bmm(w21.view(n, nh * t, -1), pts[0]), head_values(w21, sh["v_ax"])
    m = torch.bmm(w2_pt1, vo1c).add_(w2_sum * b1c)  # (N, h*T, C): sum_p w s2 (U1c + b1c)
    m.baddbmm_(w21_pt0, q0)
    wv = attn.v_proj.weight.view(nh, d, -1)
    out = torch.einsum("nhtc,hdc->nhtd", (m * g2).view(n, nh, t, -1), wv).add_(w21_v)
    out = out.transpose(1, 2).reshape(n, t, nh * d) + (attn.v_proj.weight @ lns[1].bias + attn.v_proj.bias)
    return attn.out_proj(out)


def record_side(
    tr: Any,
    sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    sh: dict[str, torch.Tensor],
    transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Fill ``stats`` (the record of the layer whose image side ``sides[-1]`` = (value tokens, probs, vo) gives)
    without writing that image side: the weights transposed (unless ``transposed``: there already) and the norm's
    mean and reciprocal deviation (`first_side_stats`, `second_side_stats`; the second layer's from the first's
    record, ``records[0]``). tr: the two-way transformer; sides, stats, records: as
    `geosam.models.fast_decoder.fast_decode` keeps them. Returns the second layer's `centred_values` (for
    `factored_final_attention`), None after the first."""
    _, probs, vo = sides[-1]
    if not transposed:
        for i in range(probs.shape[0]):
            _transposed(probs[i], stats[0][i])
    attns = tuple(layer.cross_attn_image_to_token for layer in tr.layers)
    lns = tuple(layer.layer_norm4 for layer in tr.layers)
    centred = None
    if len(sides) == 1:
        mean, rstd = first_side_stats(attns[0], sides[0][0], probs, vo, lns[0], sh)
    else:
        (t0, p0, v0), (t1, p1, v1) = sides
        centred = centred_values((v0, v1), lns[0].weight)
        mean, rstd = second_side_stats(attns, (t0, t1), (p0, p1), (v0, v1), records[0][3], lns, sh, centred)
    stats[1].copy_(mean)
    stats[2].copy_(rstd)
    return centred
