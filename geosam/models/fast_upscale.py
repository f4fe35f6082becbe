"""The output side of `geosam.models.fast_decoder`: SAM's mask upscaling and hypernetwork product, channels-last.

`_upscale_and_predict` runs the two 2x2 stride-2 transposed convolutions as
channels-last matmuls (one prompt at a time on the CPU, a band of embedding
rows at a time so the features stay in cache, the second GELU in place or fused by oneDNN) and
multiplies out only the requested mask tokens; `_Conv1FromSharedImage` gives
the first product from the image side all prompts share, without
multiplying each prompt's own image side out. On AVX2 CPUs in float32 a
prompt's whole upscaling from that first product runs in one C pass instead
(`geosam.models.cpu_decoder.upscale_prompt`: 9.5 vs ~16 ms per prompt, Zen 3).
See the fast decoder's module docstring for the measured effect; same math as
transformers' ``SamMaskDecoder``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_decoder import Factors, factor_rows, upscale_prompt
from geosam.models.cpu_gemm import bmm, exact_gelu, linear
from geosam.models.fast_twoway import cached


def per_pixel(conv: Any) -> bool:
    """Whether ``conv`` (a transposed convolution) is 2 x 2 at stride 2, unpadded, ungrouped, with a bias: a
    per-pixel product (`_as_linear`), as the upscalings here and `geosam.models.fast_transformer.TwoWay.conv1` run it."""
    return (tuple(conv.kernel_size) == (2, 2) and tuple(conv.stride) == (2, 2) and tuple(conv.padding) == (0, 0)
            and tuple(conv.output_padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.bias is not None)  # fmt: skip


def _as_linear(conv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A ConvTranspose2d (k=2, s=2) as linear weights (4 out, in) and bias, output rows (a, b, o).

    ``out[o, 2i+a, 2j+b] = sum_c x[c, i, j] W[c, o, a, b] + bias[o]``.
    """
    return conv.weight.permute(2, 3, 1, 0).reshape(4 * conv.out_channels, -1).contiguous(), conv.bias.repeat(4)


class _Conv1FromSharedImage:
    """The upscaling's first product ``W1 keys + b1`` of each prompt without multiplying its own ``keys`` out.

    A prompt's final image side is ``keys_L``, with ``keys_l = LN_l(keys_{l-1} + U_l)`` (``LN_l`` the layer norm of
    layer l's image -> token attention, ``U_l = probs_l^T vo_l`` its rank-R update, R = heads x tokens) and
    ``keys_0 = x0``, the image side every prompt shares (embedding + dense prompt, no mask input). A layer norm is
    ``G (z - mu_p) r_p + beta`` with a scalar mean ``mu_p`` and reciprocal deviation ``r_p`` per position, so
    unrolled through the layers (``M_l = W1 G_L ... G_l``, ``c_l = r_L ... r_l`` per position)::

        W1 keys_L + b1 = b1 + W1 beta_L + sum_l c_l (probs_l^T (vo_l M_l^T) - mu_l M_l 1 + [l > 1] M_l beta_{l-1})
                         + c_1 (x0 M_1^T)

    ``x0 M_1^T`` is one product for all prompts (kept in ``cache`` across the calls of one decode); the rest is one
    product per prompt of inner size ``L (R + 2)`` (116 for SAM: 2 layers, 8 heads x 7 tokens) instead of C (256):
    0.25 instead of 0.54 GFLOP per prompt. The same function as the explicit product up to float rounding (the sums
    are associated differently).
    """

    def __init__(self, dec: Any, x0: torch.Tensor, lns: list[Any], cache: dict[Any, Any] | None, key: Any) -> None:
        w1, b1 = _as_linear(dec.upscale_conv1)
        g = [ln.weight for ln in lns]
        beta = [ln.bias for ln in lns]
        m = [w1 * g[-1]]  # M_L = W1 G_L, then M_l = M_{l+1} G_l
        for gl in reversed(g[:-1]):
            m.insert(0, m[0] * gl)
        self.m = m
        self.ones = [ml.sum(dim=1) for ml in m]  # M_l 1
        self.beta = [None] + [m[i] @ beta[i - 1] for i in range(1, len(m))]  # M_l beta_{l-1}
        self.const = b1 + w1 @ beta[-1]
        self.shared = cached(cache, key, "conv1", lambda: linear(x0, m[0]))  # (P, 4 C4): x0 M_1^T
        self._a: torch.Tensor | None = None  # prompt()'s A, reused
        self._b: torch.Tensor | None = None  # every prompt's B (N, K, 4 C4), made on the first call

    def _products(self, records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Every prompt's ``B`` at once, rows as `prompt`'s ``A`` has its columns: one product per layer for all
        prompts (``vo_l M_l^T``, (N, R, 4 C4)) rather than one per prompt and layer."""
        n = records[0][1].shape[0]
        rows: list[torch.Tensor] = []
        for li in range(len(records) - 1, -1, -1):
            rows += [torch.matmul(records[li][1], self.m[li].t()), self.ones[li].expand(n, 1, -1)]
            if li > 0:
                rows.append(self.beta[li].expand(n, 1, -1))
        rows.append(self.const.expand(n, 1, -1))
        return torch.cat(rows, dim=1)

    def prompt(
        self, i: int, records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt i's ``(A (P, K), B (K, 4 C4), c_1 (P, 1))``: conv1 of its positions is ``A @ B + c_1 * shared``.

        records: per layer ``(probs^T (N, P, R), vo (N, R, C), mean (N, P), rstd (N, P))``, the
        attention weights transposed as `_image_side` multiplies them; the same on every call of one plan (the
        prompts' B are made from them on the first). ``A`` is a buffer reused by the next call.
        """
        p, r = records[0][0].shape[1:]
        k = len(records) * (r + 2)
        if self._a is None or self._a.shape != (p, k):
            self._a = torch.empty((p, k), dtype=self.shared.dtype, device=self.shared.device)
        _, b = self.factors(i, records)
        c = factor_rows(records, i, self._a)
        return self._a, b, c[:, None]

    def factors(
        self, i: int, records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> tuple[Factors, torch.Tensor]:
        """Prompt i's ``A`` as the records it is made from (`geosam.models.cpu_decoder.Factors`: the upscaling's C
        pass makes its rows block by block, in cache, instead of reading `prompt`'s (P, K) matrix), and its ``B``."""
        if self._b is None:
            self._b = self._products(records)
        return Factors(records, i), self._b[i]


@functools.lru_cache(maxsize=8)
def _band_order(rows: int, ww: int, device: torch.device) -> torch.Tensor:
    """For a band of ``rows`` embedding rows: the upscaled features' index (i, j, a, b, a2, b2) of each output pixel
    of the (4 rows, 4 ww) band, in pixel order (4i + 2a + a2, 4j + 2b + b2)."""
    idx = torch.arange(rows * ww * 16, device=device).view(rows, ww, 2, 2, 2, 2)
    return idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def _activation_(act: Any, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for exact/tanh GELU (saves a large allocation)."""
    if isinstance(act, torch.nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _c_pass(conv1: Any, i: int, fused: tuple[tuple[torch.Tensor, torch.Tensor, float], torch.Tensor, torch.Tensor] | None,
            hyper_k: torch.Tensor, hw: tuple[int, int], out: torch.Tensor, bf16: bool) -> tuple:
    """Prompt i's masks into ``out`` by `geosam.models.cpu_decoder.upscale_prompt` where ``fused`` (its LN and second
    product) is given and the kernel takes them: ``()``; else ``conv1``'s parts for torch's products (A made whole)."""
    parts = conv1(i, fused is not None)
    if fused is None:
        return parts
    a, b, cc, sh = parts
    if upscale_prompt(a, b, cc, sh, fused[0], fused[1], fused[2], hyper_k, hw, out, bf16=bf16):
        return ()
    return conv1(i, False) if isinstance(a, Factors) else parts


def _upscale_and_predict(
    dec: Any,
    x: torch.Tensor,
    hyper: torch.Tensor,
    chunk: int | None = None,
    rows: list[int] | None = None,
    conv1: Any = None,
    tile: int = 1024,
    out: torch.Tensor | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """upscale_conv1 -> LN -> GELU -> upscale_conv2 -> GELU, then hyper @ features, channels-last.

    x: (N, h, w, C) channels-last embedding; hyper: (N, K, C8). Returns (N, K, 4h, 4w).
    ``chunk`` prompts at a time (default: 1 on the CPU, all elsewhere): on a CPU
    the (16 h w, C8) features of a prompt stay in cache between the matmuls and
    the activations. ``rows``: only these prompts are computed, the others'
    masks are ``-inf`` (default: all). ``conv1`` (one prompt at a time only):
    (prompt i, factored) -> ``(A, B, c, S)`` whose ``A @ B + c * S`` (rows: positions) is
    the first product (`_Conv1FromSharedImage`), in place of ``x[i] W1^T + b1``; factored (for the C pass): A
    may come as `geosam.models.cpu_decoder.Factors` and c as None.
    ``tile``: image positions per band on the CPU (whole embedding rows). ``out``: where to write the masks (a
    contiguous (N, K, 4h, 4w) tensor of their dtype, e.g. a slice of a larger batch's), else a new tensor. ``bf16``:
    the C pass's products in bf16 where the CPU has AVX-512 BF16 (`upscale_prompt`; the other paths are float32).
    """
    n, hh, ww, c = x.shape
    conv2 = dec.upscale_conv2
    c4 = dec.upscale_conv1.out_channels
    c8 = conv2.out_channels
    k = hyper.shape[1]
    # the transposed convolutions as linear weights (out features, in features): rows (a, b, o) resp. (a2, b2, o2)
    w1, b1 = _as_linear(dec.upscale_conv1)
    w2, b2 = _as_linear(conv2)
    ln = dec.upscale_layer_norm
    dtype = torch.promote_types(x.dtype, w1.dtype)
    exact = exact_gelu(dec.activation)
    todo = list(range(n)) if rows is None else list(rows)
    shape = (n, k, 4 * hh, 4 * ww)
    if out is None or out.shape != shape or out.dtype != dtype or out.device != x.device or not out.is_contiguous():
        out = torch.empty(shape, dtype=dtype, device=x.device)
    if len(todo) < n:  # only the skipped prompts' masks: the others are written whole below
        skipped = sorted(set(range(n)) - set(todo))
        out[torch.tensor(skipped, device=x.device)] = float("-inf")
    hyper_t = hyper.transpose(1, 2).to(dtype)  # (N, C8, K)
    cs = max(1, min(n, chunk if chunk is not None else (1 if x.device.type == "cpu" else n)))

    def features(emb_rows: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(R, C) embedding rows (or their first product y (R, 4 C4)) -> (16 R, C8) features, rows (position, a, b, a2, b2)."""
        if y is None:
            y = linear(emb_rows.to(dtype), w1, b1)
        yn = _activation_(dec.activation, F.layer_norm(y.view(-1, c4), ln.normalized_shape, ln.weight, ln.bias, ln.eps))
        # rows (position, a, b), columns (a2, b2, o2)
        zz = linear(yn, w2, b2, gelu=True) if exact else _activation_(dec.activation, linear(yn, w2, b2))
        return zz.view(-1, c8)

    def shuffle(mb: torch.Tensor, rows: int) -> torch.Tensor:
        """(m, rows * ww * 16, K) rows (i, j, a, b, a2, b2) -> masks (m, K, 4 rows, 4 ww) at (4i + 2a + a2, 4j + 2b + b2)."""
        return mb.view(-1, rows, ww, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(-1, k, 4 * rows, 4 * ww)

    # one prompt at a time from conv1's factored form, float32, exact GELU: in one C pass (`geosam.models.cpu_decoder`)
    fused = None
    if conv1 is not None and cs == 1 and exact and tuple(ln.normalized_shape) == (c4,):
        fused = ((ln.weight, ln.bias, ln.eps), w2.t().contiguous(), b2)
    p = hh * ww
    # CPU: a band of whole embedding rows at a time, so that the features stay in cache up to the output masks
    band = max(1, tile // ww) if x.device.type == "cpu" else hh
    for s in range(0, len(todo), cs):
        idx = todo[s : s + cs]
        m = len(idx)
        if m == 1:
            emb = x[idx[0]]
            hyper_k = hyper[idx[0]].to(dtype).contiguous()  # (K, C8)
            parts = None if conv1 is None else _c_pass(conv1, idx[0], fused, hyper_k, (hh, ww), out[idx[0]], bf16)
            if parts == ():
                continue
            for r0 in range(0, hh, band):
                r1 = min(hh, r0 + band)
                y = None
                if parts is not None:
                    a, b, cc, sh = parts
                    p0, p1 = r0 * ww, r1 * ww
                    y = torch.mm(a[p0:p1], b).addcmul_(sh[p0:p1], cc[p0:p1])
                # (K, C8) @ (C8, 16 R): K rows of output, not a K-wide product (4x faster on the CPU)
                mb = linear(hyper_k, features(emb[r0:r1].reshape((r1 - r0) * ww, c), y))  # columns (i, j, a, b, a2, b2)
                # straight into the output band, pixel (4i + 2a + a2, 4j + 2b + b2): a gather, not a 7-d copy
                order = _band_order(r1 - r0, ww, x.device)
                for j in range(k):
                    torch.index_select(mb[j], 0, order, out=out[idx[0], j, 4 * r0 : 4 * r1].view(-1))
        else:
            sel = torch.tensor(idx, device=x.device)
            out[sel] = shuffle(bmm(features(x[sel].reshape(m * p, c)).view(m, -1, c8), hyper_t[sel]), hh)
    return out
