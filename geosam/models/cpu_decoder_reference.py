"""torch's ops for what `geosam.models.cpu_decoder`'s kernels compute, and random inputs at SAM-like scales: the
references its load-time checks and the tests compare the kernels with; the records' types they share."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["FAST_GELU_CLAMP", "FAST_GELU_POLY", "Factors", "Records", "factor_rows_reference", "fast_gelu_reference",
           "quad_reference", "reference", "upscale_inputs"]

#: cpu_gelu.h's FAST_GELU (the bf16 dtype's upscaling): ``erf(x / sqrt 2) = x P(x^2)`` on x clamped to
#: +-`FAST_GELU_CLAMP`, P's coefficients from the constant term up; 0 below the clamp
FAST_GELU_POLY = (7.978063226e-01, -1.326941401e-01, 1.963649131e-02, -2.218899783e-03, 1.872014836e-04,
                  -1.129474640e-05, 4.538088376e-07, -1.074882583e-08, 1.126061674e-10)
FAST_GELU_CLAMP = 4.2426405

#: per layer ``(probs^T (N, P, R), vo (N, R, C), mean (N, P), rstd (N, P))`` (`geosam.models.fast_upscale`)
Records = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class Factors(NamedTuple):
    """Prompt ``i``'s rows A of the upscaling's first product as `geosam.models.cpu_decoder.factor_rows` makes them
    from ``records``, for `geosam.models.cpu_decoder.upscale_prompt` to make block by block while it runs (the same
    numbers; A (P, L (R + 2)) never written whole)."""

    records: Records
    i: int


def _upper(gram: torch.Tensor) -> torch.Tensor:
    """A symmetric form's upper triangle, the off-diagonal entries doubled: ``w^T gram w = w^T upper w`` (what
    `geosam.models.cpu_decoder.quad` gives its kernel for a symmetric form)."""
    up = gram.triu().mul_(2.0)
    up.diagonal(dim1=1, dim2=2).mul_(0.5)
    return up


def fast_gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """torch's ops for cpu_gelu.h's FAST_GELU (float32, to rounding: the kernel fuses its multiply-adds)."""
    xc = x.clamp(-FAST_GELU_CLAMP, FAST_GELU_CLAMP)
    t = xc * xc
    p = torch.full_like(x, FAST_GELU_POLY[-1])
    for k in FAST_GELU_POLY[-2::-1]:
        p = p * t + k
    h = x * 0.5
    return (h + h * (xc * p)).masked_fill_(x < -FAST_GELU_CLAMP, 0.0)


def reference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor,
              ln: tuple[torch.Tensor, torch.Tensor, float], w2t: torch.Tensor, b2: torch.Tensor, hyper: torch.Tensor,
              hw: tuple[int, int], bf16: bool = False,
              features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """torch's ops for what `upscale_prompt` computes: (K, 4h, 4w) masks; ``bf16``: the two products' inputs rounded
    to bf16 first, as the kernel's bf16 products take them, and the GELUs `fast_gelu_reference`'s; ``features`` (f1
    (P, 4 C4), f0 (4 P, 4 C8)): added to the first product before its norm and to the second before its GELU (SAM 2's
    high-resolution features)."""
    hh, ww = hw
    c4, c8 = w2t.shape[0], hyper.shape[1]
    f1, f0 = features if features is not None else (None, None)
    rnd = (lambda t: t.to(torch.bfloat16).float()) if bf16 else (lambda t: t)
    y = rnd(a) @ rnd(b) + s * c[:, None]
    y = (y if f1 is None else y + f1).view(-1, c4)
    gelu = fast_gelu_reference if bf16 else F.gelu
    yn = gelu(F.layer_norm(y, (c4,), ln[0], ln[1], ln[2]))
    z = rnd(yn) @ rnd(w2t) + b2
    z = gelu(z if f0 is None else z + f0).view(hh, ww, 2, 2, 2, 2, c8)  # (i, j, a, b, a2, b2, o2)
    m = z @ hyper.t()  # (..., K)
    return m.permute(6, 0, 2, 4, 1, 3, 5).reshape(-1, 4 * hh, 4 * ww)


def quad_reference(gram: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """torch's ops for `quad`: ``left[:, :, p]^T gram right[:, :, p]`` for every p, (N, P)."""
    return torch.bmm(gram, right).mul_(left).sum(dim=1)


def upscale_inputs(gen: torch.Generator, hw: tuple[int, int], k1: int, c4: int, c8: int, nk: int) -> tuple:
    """Random inputs of `upscale_prompt` (all but ``hw`` and ``out``) at SAM-like scales, for checks and tests."""
    p = hw[0] * hw[1]
    a = torch.randn((p, k1), generator=gen)
    b = torch.randn((k1, 4 * c4), generator=gen) / k1**0.5
    c = torch.rand(p, generator=gen) + 0.5
    s = torch.randn((p, 4 * c4), generator=gen) * 3
    ln = (torch.rand(c4, generator=gen) + 0.5, torch.randn(c4, generator=gen), 1e-6)
    w2t = torch.randn((c4, 4 * c8), generator=gen) / c4**0.5 * 2
    b2 = torch.randn(4 * c8, generator=gen)
    hyper = torch.randn((nk, c8), generator=gen)
    return a, b, c, s, ln, w2t, b2, hyper


def factor_rows_reference(records: Records, i: int, a: torch.Tensor) -> torch.Tensor:
    """torch's ops for `factor_rows`: prompt i's rows A into ``a`` (P, L (R + 2)); returns c (P,)."""
    r = records[0][0].shape[-1]
    c = None
    col = 0
    for li in range(len(records) - 1, -1, -1):
        pt, _, mean, rstd = records[li]
        c = rstd[i] if c is None else c * rstd[i]
        torch.mul(pt[i], c[:, None], out=a[:, col : col + r])
        torch.mul(c, mean[i], out=a[:, col + r]).neg_()
        if li > 0:  # the column of M_l beta_{l-1}
            a[:, col + r + 1] = c
        col += r + 2 if li > 0 else r + 1
    assert c is not None
    a[:, col].fill_(1.0)
    return c
