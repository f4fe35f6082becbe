"""An exact, faster forward of SAM's mask decoder for many prompts on one image.

transformers' ``SamMaskDecoder`` repeats the (h*w, C) image embedding once per
prompt and runs every projection of the two-way transformer over all h*w
image positions of every prompt. :func:`fast_decode` computes the same
function with the loaded model's own weights, rearranged so that fewer
multiplications touch the h*w positions:

* token -> image attention: the key projection is moved to the token side
  (``q . (W_k x + b_k) = (q W_k) . x + q . b_k``) and the value projection after
  the attention (``A (x W_v^T + b_v) = (A x) W_v^T + b_v``, softmax rows sum
  to 1), so the image positions are never projected: with a few tokens and
  8 heads, ``heads * tokens`` (~56) rows replace the ``2 * internal_dim`` (256)
  projections per position;
* image -> token attention: the output projection is applied to the token
  values per head (``out_proj(concat_h A_h V_h) = sum_h A_h (V_h W_o,h^T) + b_o``),
  one matmul over ``heads * tokens`` columns instead of a (internal_dim x C)
  projection of every position;
* in the first layer the image side (embedding + dense prompt, positional
  encoding) is the same for every prompt when the dense embedding is shared
  (no mask input): it is used once, without ``repeat``; the query projection of
  the image positions in the first image -> token attention is computed once;
* the output upscaling (two 2x2 stride-2 transposed convolutions) runs as
  channels-last matmuls and only the requested mask tokens are multiplied out;
  the pixel shuffle is done once on the K output masks.

Same math as the stock decoder; float32 results agree to rounding (~1e-5
relative). ``attention_similarity`` / ``target_embedding`` (PerSAM) are not
supported: use the stock path for those.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["fast_decode", "fast_decoder_supported", "image_positional_embeddings"]


def _unwrap(module: Any) -> Any:
    """The original module behind a ``torch.compile`` wrapper (or the module itself)."""
    return getattr(module, "_orig_mod", module)


def fast_decoder_supported(model: Any) -> bool:
    """Whether :func:`fast_decode` can run ``model``'s mask decoder (a transformers SAM layout)."""
    try:
        dec = _unwrap(model.mask_decoder)
        tr = dec.transformer
        layers = list(tr.layers)
        return (
            len(layers) >= 1
            and bool(layers[0].skip_first_layer_pe)
            and not any(bool(layer.skip_first_layer_pe) for layer in layers[1:])
            and hasattr(dec, "upscale_conv1")
            and tuple(dec.upscale_conv1.kernel_size) == (2, 2)
            and tuple(dec.upscale_conv1.stride) == (2, 2)
            and tuple(dec.upscale_conv2.kernel_size) == (2, 2)
            and tuple(dec.upscale_conv2.stride) == (2, 2)
            and tuple(dec.upscale_conv1.padding) == (0, 0)
            and tuple(dec.upscale_conv2.padding) == (0, 0)
            and getattr(dec.upscale_layer_norm, "data_format", "") == "channels_first"
        )
    except AttributeError:
        return False


def image_positional_embeddings(model: Any) -> torch.Tensor:
    """The dense positional encoding (1, C, h, w) that SamModel feeds the decoder."""
    return model.get_image_wide_positional_embeddings()


def _heads(attn: Any) -> tuple[int, int]:
    h = int(attn.num_attention_heads)
    return h, int(attn.internal_dim) // h


def _token_to_image(attn: Any, q_tokens: torch.Tensor, x: torch.Tensor, x_pos: torch.Tensor) -> torch.Tensor:
    """``attn(query=q_tokens, key=x_pos, value=x)`` without projecting the image positions.

    q_tokens: (N, T, C) token queries (with their positional part); x: (B, P, C)
    image values, x_pos: (B, P, C) image keys (x + pos), B = N or 1 (shared).
    Returns the attention output after out_proj, (N, T, C).
    """
    n, t, c = q_tokens.shape
    nh, d = _heads(attn)
    q = attn.q_proj(q_tokens).view(n, t, nh, d).transpose(1, 2)  # (N, h, T, d)
    wk = attn.k_proj.weight.view(nh, d, c)  # rows h*d..(h+1)*d belong to head h
    bk = attn.k_proj.bias.view(nh, d)
    scale = float(attn.scaling)
    qk = torch.matmul(q, wk) * scale  # (N, h, T, C)
    qb = (q * bk[None, :, None, :]).sum(-1, keepdim=True) * scale  # (N, h, T, 1): q . b_k
    rows = nh * t
    qk = qk.reshape(n, rows, c)
    if x.shape[0] == 1 and n > 1:  # shared image side: one GEMM for all prompts
        scores = (qk.reshape(n * rows, c) @ x_pos[0].transpose(0, 1)).view(n, rows, -1)
    else:
        scores = torch.bmm(qk, x_pos.transpose(1, 2))  # (N, h*T, P)
    scores = scores + qb.reshape(n, rows, 1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if x.shape[0] == 1 and n > 1:
        ax = (probs.reshape(n * rows, -1) @ x[0]).view(n, nh, t, c)
    else:
        ax = torch.bmm(probs, x).view(n, nh, t, c)  # (N, h, T, C)
    wv = attn.v_proj.weight.view(nh, d, c)
    out = torch.matmul(ax, wv.transpose(1, 2)) + attn.v_proj.bias.view(nh, 1, d)  # (N, h, T, d)
    out = out.transpose(1, 2).reshape(n, t, nh * d)
    return attn.out_proj(out)


def _image_to_token(
    attn: Any, q_img: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor
) -> torch.Tensor:
    """``attn(query=image, key=k_tokens, value=v_tokens)`` with out_proj applied to the token values.

    q_img: (B, P, h, d) the already projected and scaled image queries (B = N or 1);
    k_tokens, v_tokens: (N, T, C). Returns (N, P, C).
    """
    n, t, c = k_tokens.shape
    nh, d = _heads(attn)
    k = attn.k_proj(k_tokens).view(n, t, nh, d)  # (N, T, h, d)
    v = attn.v_proj(v_tokens).view(n, t, nh, d)
    wo = attn.out_proj.weight.view(c, nh, d)  # columns h*d..(h+1)*d belong to head h
    vo = torch.einsum("nthd,chd->nhtc", v, wo).reshape(n, nh * t, c)  # per-head values after out_proj
    if q_img.shape[0] == 1 and n > 1:
        # (h, P, d) @ (h, d, N*T) -> (h, P, N, T) -> (N, P, h, T)
        kk = k.permute(2, 3, 0, 1).reshape(nh, d, n * t)
        s = torch.bmm(q_img[0].transpose(0, 1), kk).view(nh, -1, n, t)
        s = s.permute(2, 1, 0, 3)
    else:
        s = torch.einsum("nphd,nthd->npht", q_img, k)
    p = s.shape[1]
    probs = torch.softmax(s, dim=-1, dtype=torch.float32).to(vo.dtype).reshape(n, p, nh * t)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, c).to(vo.dtype), probs, vo)


def _project_image_queries(attn: Any, x_pos: torch.Tensor) -> torch.Tensor:
    """(B, P, C) image keys+pos -> scaled, head-split queries (B, P, h, d)."""
    nh, d = _heads(attn)
    b, p, _ = x_pos.shape
    return (attn.q_proj(x_pos) * float(attn.scaling)).view(b, p, nh, d)


def fast_decode(
    model: Any,
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor | None,
    dense_embeddings: torch.Tensor,
    multimask: bool,
    image_pe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's mask decoder for N prompts on one image, same results as ``model.mask_decoder``.

    image_embeddings: (1, C, h, w); sparse_embeddings: (N, T, C) point/box
    embeddings from ``model.prompt_encoder`` (None for no sparse prompt, N = 1);
    dense_embeddings: (1 or N, C, h, w); image_pe: (1, C, h, w) positional
    encoding (computed from the model when None).

    Returns ``(low_res_masks (N, K, 4h, 4w), iou (N, K))``, K = 3 with
    ``multimask`` else 1 (``num_multimask_outputs`` in general).
    """
    dec = _unwrap(model.mask_decoder)
    tr = dec.transformer
    if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
        raise ValueError(f"image_embeddings must be (1, C, h, w), got {tuple(image_embeddings.shape)}")
    _, c, hh, ww = image_embeddings.shape
    wdtype = dec.iou_token.weight.dtype
    if image_pe is None:
        image_pe = image_positional_embeddings(model)

    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)  # (1 + M, C)
    if sparse_embeddings is not None:
        n = sparse_embeddings.shape[0]
        tokens = torch.cat((output_tokens[None].expand(n, -1, -1).to(sparse_embeddings.dtype), sparse_embeddings), dim=1)
    else:
        n = max(1, dense_embeddings.shape[0])
        tokens = output_tokens[None].expand(n, -1, -1)
    tokens = tokens.to(wdtype)
    pe_tok = tokens  # query_point_embedding

    if dense_embeddings.shape[0] not in (1, n):
        raise ValueError(f"dense_embeddings batch {dense_embeddings.shape[0]} fits neither 1 nor {n} prompts")
    src = image_embeddings + dense_embeddings  # (1 or N, C, h, w)
    keys = src.flatten(2).transpose(1, 2)  # (B, P, C)
    pos = image_pe.flatten(2).transpose(1, 2)  # (1, P, C)

    queries = tokens
    for i, layer in enumerate(tr.layers):
        # self attention of the tokens (cheap: run the module itself)
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(query=queries[None], key=queries[None], value=queries[None])[0][0]
        else:
            q = (queries + pe_tok)[None]
            queries = queries + layer.self_attn(query=q, key=q, value=queries[None])[0][0]
        queries = layer.layer_norm1(queries)

        keys_pos = keys + pos
        queries = queries + _token_to_image(layer.cross_attn_token_to_image, queries + pe_tok, keys, keys_pos)
        queries = layer.layer_norm2(queries)

        queries = layer.layer_norm3(queries + layer.mlp(queries))

        q_img = _project_image_queries(layer.cross_attn_image_to_token, keys_pos)
        attn_out = _image_to_token(layer.cross_attn_image_to_token, q_img, queries + pe_tok, queries)
        keys = layer.layer_norm4(keys + attn_out)  # broadcasts a shared (1, P, C) to (N, P, C)

    keys_pos = keys + pos
    queries = queries + _token_to_image(tr.final_attn_token_to_image, queries + pe_tok, keys, keys_pos)
    queries = tr.layer_norm_final_attn(queries)

    iou_token_out = queries[:, 0, :]
    mask_tokens_out = queries[:, 1 : 1 + dec.num_mask_tokens, :]
    sel = range(1, dec.num_mask_tokens) if multimask else range(0, 1)
    hyper = torch.stack([dec.output_hypernetworks_mlps[j](mask_tokens_out[:, j, :]) for j in sel], dim=1)  # (N, K, C8)

    if keys.shape[0] != n:  # no transformer layer ran: still one embedding per prompt
        keys = keys.expand(n, -1, -1)
    masks = _upscale_and_predict(dec, keys.reshape(n, hh, ww, c), hyper)
    iou = dec.iou_prediction_head(iou_token_out)
    iou = iou[:, 1:] if multimask else iou[:, 0:1]
    return masks, iou


def _upscale_and_predict(dec: Any, x: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """upscale_conv1 -> LN -> GELU -> upscale_conv2 -> GELU, then hyper @ features, channels-last.

    x: (N, h, w, C) channels-last embedding; hyper: (N, K, C8). Returns (N, K, 4h, 4w).
    """
    n, hh, ww, c = x.shape
    conv1, conv2 = dec.upscale_conv1, dec.upscale_conv2
    c4 = conv1.out_channels
    c8 = conv2.out_channels
    # ConvTranspose2d(k=2, s=2) weight (in, out, a, b): out[o, 2i+a, 2j+b] = sum_c x[c, i, j] W[c, o, a, b] + bias[o]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4)  # columns (a, b, o)
    y = torch.addmm(conv1.bias.repeat(4), x.reshape(-1, c), w1).view(-1, c4)  # (N*h*w*4, C4)
    ln = dec.upscale_layer_norm
    y = dec.activation(F.layer_norm(y, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8)  # columns (a2, b2, o2)
    z = dec.activation(torch.addmm(conv2.bias.repeat(4), y, w2))  # (N*h*w*2*2, 4*C8)
    z = z.view(n, hh * ww * 16, c8)  # rows (i, j, a, b, a2, b2)
    k = hyper.shape[1]
    m = torch.bmm(z, hyper.transpose(1, 2).to(z.dtype))  # (N, h*w*16, K)
    m = m.view(n, hh, ww, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)  # (N, K, i, a, a2, j, b, b2)
    return m.reshape(n, k, 4 * hh, 4 * ww)
