"""torch's ops for what `geosam.models.cpu_heads`' kernels compute, and random inputs of its scores kernels: the
references its load-time checks, the tests and the benchmarks compare the kernels with."""

from __future__ import annotations

import torch

__all__ = ["factored_scores_reference", "final_inputs", "final_scores_reference", "proj_dots_reference",
           "scores_inputs"]

_T = torch.Tensor
_Pair = tuple[torch.Tensor, torch.Tensor]


def factored_scores_reference(f: torch.Tensor, probs0: torch.Tensor, rows: torch.Tensor,
                              parts: tuple[torch.Tensor, torch.Tensor], fsum: torch.Tensor, mean0: torch.Tensor,
                              rstd0: torch.Tensor) -> torch.Tensor:
    """torch's ops for what `geosam.models.cpu_heads.factored_scores` computes: (N, h, T, P)."""
    n, nh, nt, _ = rows.shape
    s = torch.bmm(f, probs0).view(n, nh, nt, -1) + torch.einsum("nhtk,hkp->nhtp", rows, parts[0])
    s = (s - fsum[..., None] * mean0[:, None, None, :]) * rstd0[:, None, None, :]
    return s + torch.einsum("nhtk,hkp->nhtp", rows, parts[1])


def final_scores_reference(f: tuple[torch.Tensor, torch.Tensor], probs: tuple[torch.Tensor, torch.Tensor],
                           q: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor,
                           scales: tuple[torch.Tensor, torch.Tensor], bf16: bool = False) -> torch.Tensor:
    """torch's ops for what `geosam.models.cpu_heads.final_scores` computes: (N, h, T, P); ``bf16``: what it computes
    with ``bf16=True`` on AMX tiles, f, probs, q and keys rounded to bf16 (c and the scales not), in float64, returned
    as float32."""
    if bf16:
        def r64(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.bfloat16).double()

        want = final_scores_reference((r64(f[0]), r64(f[1])), (r64(probs[0]), r64(probs[1])), r64(q),
                                      (r64(keys[0]), r64(keys[1])), c.double(),
                                      (scales[0].double(), scales[1].double()))  # fmt: skip
        return want.float()
    n, nh, nt, _ = q.shape
    s = torch.bmm(f[0], probs[0]).view(n, nh, nt, -1) + torch.einsum("nhtk,hkp->nhtp", q, keys[0])
    s = s * scales[0][:, None, None, :] + c.view(n, nh, nt, 1)
    s = (s + torch.bmm(f[1], probs[1]).view(n, nh, nt, -1)) * scales[1][:, None, None, :]
    return s + torch.einsum("nhtk,hkp->nhtp", q, keys[1])


def proj_dots_reference(v: torch.Tensor, xw: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """torch's ops for what `geosam.models.cpu_heads.proj_dots` computes: (N, P)."""
    return (torch.einsum("nhtk,hkp->nhtp", v, xw) * probs).sum(dim=(1, 2))


def scores_inputs(gen: torch.Generator, n: int, nh: int, nt: int, dk: int, r: int, p: int) -> tuple[_T, _T, _T, _Pair, _T, _T, _T]:
    """random inputs of `geosam.models.cpu_heads.factored_scores` (f, probs0, rows, parts, fsum, mean0, rstd0)"""
    f = torch.randn((n, nh * nt, r), generator=gen)
    probs0 = torch.rand((n, r, p), generator=gen)
    rows = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    parts = torch.randn((nh, dk, p), generator=gen), torch.randn((nh, dk, p), generator=gen)
    fsum, mean0, rstd0 = torch.randn((n, nh, nt), generator=gen), torch.randn((n, p), generator=gen), torch.rand((n, p), generator=gen)
    return f, probs0, rows, parts, fsum, mean0, rstd0


def final_inputs(gen: torch.Generator, n: int, nh: int, nt: int, dk: int, r: int, p: int) -> tuple[_Pair, _Pair, _T, _Pair, _T, _Pair]:
    """random inputs of `geosam.models.cpu_heads.final_scores` (f, probs, q, keys, c, scales)"""
    f = torch.randn((n, nh * nt, r), generator=gen), torch.randn((n, nh * nt, r), generator=gen)
    probs = torch.rand((n, r, p), generator=gen), torch.rand((n, r, p), generator=gen)
    q = torch.randn((n, nt, nh, dk), generator=gen).transpose(1, 2)
    keys = torch.randn((nh, dk, p), generator=gen), torch.randn((nh, dk, p), generator=gen)
    c = torch.randn((n, nh * nt), generator=gen)
    scales = torch.rand((n, p), generator=gen) + 0.5, torch.rand((n, p), generator=gen) + 0.5
    return f, probs, q, keys, c, scales
