"""The bf16 encoder's passes between float32 and bf16 on AVX-512 CPUs, in one pass each, torch's bits.

Under autocast a low-precision ViT layer of `geosam.models.fast_encoder` keeps its residual stream in float32: it
rounds its layer norms' and its attention's outputs to bf16 for the next product (torch's AVX2 copy kernel) and adds
two bf16 results into the stream, which torch does by widening each into a new float32 tensor and then adding (three
passes over 12 MiB for a ViT-B at 1024 px). `to_bf16` rounds as ATen's vectorised conversion does and `add_bf16_`
widens and adds in one pass (`cpu_convert.c`): the same bits, used only after they have matched torch's in this
process (ties, NaN, infinities, subnormals), on CPUs with AVX-512 where torch runs its vector kernels (not with
``GEOSAM_CPU_KERNELS=0``); elsewhere the callers run torch's ops. Intel Xeon with AMX, ViT-B at 1024 px, alternating
in one process, the same embeddings: the bf16 encoder 1.71-1.75 vs 1.77-1.88 s with one thread, 0.89-0.92 vs
0.91-1.04 s with two. `layer_norm_bf16` is torch's float32 layer norm with the output rounded in the same pass
(used where it has given torch's bits on this machine: `_layer_norm_agrees`). `rope` is transformers' 2D rotary
position embedding of SAM 3's ViT (`rope_reference`: widen, swap pairs, two products, a sum, round) in one pass, the
same bits (`_rope_agrees`): Intel Xeon with AMX, one thread, a SAM 3 layer's queries (5184 tokens, 16 heads of 64,
bf16) 41.8 -> 6.5 ms; a full-size SAM 3 backbone at 1008 px in bf16 10.2-10.5 -> 8.6-9.2 s (two threads 5.5-5.6 ->
4.6-4.8 s), the same output.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.cpu_build import alternating_threads
from geosam.models.device import cpu_flags

__all__ = [
    "add_bf16_", "add_layer_norm_bf16_", "add_norm_low", "available", "layer_norm_bf16", "layer_norm_bf16_takes",
    "norm_low", "rope", "rope_reference", "to_bf16", "upsample2_add_bf16",
]

_SOURCE = Path(__file__).with_name("cpu_convert.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _check_values() -> torch.Tensor:
    """float32 values for the load check: random over many scales, bf16 ties (both parities), the largest finite
    numbers (round to infinity), infinities, NaN, subnormals, signed zeros; 16 x 64 of them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, generator=gen) * torch.exp2(torch.randint(-60, 60, (1024,), generator=gen).float())
    ties = (torch.randint(0, 1 << 16, (64,), generator=gen, dtype=torch.int32) << 16) | 0x8000
    x[:64] = ties.view(torch.float32)
    special = [float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, 1.17e-38]
    x[64 : 64 + len(special)] = torch.tensor(special)
    return x


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    lib.geosam_to_bf16.restype = ctypes.c_int
    lib.geosam_add_bf16.restype = ctypes.c_int
    x = _check_values()
    got = torch.empty(x.shape, dtype=torch.bfloat16)
    if lib.geosam_to_bf16(_P(x.data_ptr()), _P(got.data_ptr()), _I64(x.numel()), _INT(1)) != 0:
        return False
    if not torch.equal(got.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)):
        return False
    base = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    want, acc = base.clone().add_(got), base.clone()
    if lib.geosam_add_bf16(_P(acc.data_ptr()), _P(got.data_ptr()), _I64(x.numel()), _INT(1)) != 0:
        return False
    return torch.equal(acc.view(torch.int32), want.view(torch.int32))


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    if "avx512f" not in cpu_flags():
        return None
    return load(_SOURCE, _agrees_with_torch, "bf16 conversions", AVX2_AND_WIDER)


def available() -> bool:
    """Whether the compiled passes are in use in this process."""
    return _library() is not None


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and t.numel() % 16 == 0


def to_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x.to(torch.bfloat16)``, in one AVX-512 pass where the kernel runs (float32, contiguous, on the CPU)."""
    lib = _library() if _fits(x, torch.float32) else None
    if lib is None or torch.is_grad_enabled() and x.requires_grad:
        return x.to(torch.bfloat16)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    lib.geosam_to_bf16(_P(x.data_ptr()), _P(out.data_ptr()), _I64(x.numel()), _INT(torch.get_num_threads()))
    return out


def add_bf16_(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x.add_(h)`` for a float32 ``x`` and a bf16 ``h`` of its shape, in one pass where the kernel runs; returns x."""
    lib = _library() if _fits(x, torch.float32) and _fits(h, torch.bfloat16) and x.shape == h.shape else None
    if lib is None or torch.is_grad_enabled() and (x.requires_grad or h.requires_grad):
        return x.add_(h)
    lib.geosam_add_bf16(_P(x.data_ptr()), _P(h.data_ptr()), _I64(x.numel()), _INT(torch.get_num_threads()))
    return x


@functools.lru_cache(maxsize=1)
def _layer_norm_agrees() -> bool:
    """Whether `geosam_layer_norm_bf16` gives ``F.layer_norm(...).to(torch.bfloat16)`` bit for bit here, and its
    statistics ``native_layer_norm``'s mean and reciprocal deviation: widths of one to 32 of torch's chunks of 128
    numbers (cascades of every depth up to 5), rows on large offsets, wide and narrow spreads, a row with a NaN and
    one with an infinity, one and two threads."""
    lib = _library()
    if lib is None:
        return False
    lib.geosam_layer_norm_bf16.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(2)
    with alternating_threads() as use:
        for i, n in enumerate((768, 1024, 1280, 16, 272, 2048, 4096)):
            use(i)
            rows = 37
            scales = torch.exp2(torch.randint(-8, 8, (rows, 1), generator=gen).float())
            x = torch.randn((rows, n), generator=gen) * scales
            x += torch.randn((rows, 1), generator=gen) * 100
            x[3, 5], x[7, 0] = float("nan"), float("inf")
            w, b = torch.randn(n, generator=gen) * 0.5 + 1, torch.randn(n, generator=gen) * 0.3
            eps = 1e-6 if i % 2 else 1e-5
            y, mean, rstd = torch.ops.aten.native_layer_norm(x, [n], w, b, eps)
            got = torch.empty((rows, n), dtype=torch.bfloat16)
            if _call_layer_norm(lib, x, w, b, eps, got) != 0:
                return False
            if not torch.equal(got.view(torch.int16), y.to(torch.bfloat16).view(torch.int16)):
                return False
            # the statistics themselves, bit for bit (the rounded output hides most of their last bits)
            got_mean, got_rstd = torch.empty(rows), torch.empty(rows)
            lib.geosam_layer_norm_moments(_P(x.data_ptr()), ctypes.c_float(eps), _I64(rows), _I64(n),
                                          _P(got_mean.data_ptr()), _P(got_rstd.data_ptr()))
            for g, t in ((got_mean, mean), (got_rstd, rstd)):
                if not torch.equal(g.view(torch.int32), t.reshape(rows).contiguous().view(torch.int32)):
                    return False
    return True


def _call_layer_norm(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                     out: torch.Tensor) -> int:
    n = x.shape[-1]
    args = (_P(x.data_ptr()), _P(w.data_ptr()), _P(b.data_ptr()), ctypes.c_float(eps), _I64(x.numel() // n), _I64(n),
            _P(out.data_ptr()), _INT(torch.get_num_threads()))  # fmt: skip
    return int(lib.geosam_layer_norm_bf16(*args))


def layer_norm_bf16_takes(x: torch.Tensor, norm: torch.nn.Module) -> torch.nn.LayerNorm | None:
    """``norm`` where `layer_norm_bf16`'s kernel takes it on ``x`` (a ``torch.nn.LayerNorm`` with weight and bias over
    the last axis of a contiguous float32 ``x``, its width a multiple of 16, no autograd), else None."""
    if type(norm) is not torch.nn.LayerNorm or norm.weight is None or norm.bias is None:
        return None
    n = x.shape[-1] if x.ndim else 0
    w, b = norm.weight, norm.bias
    if not (
        tuple(norm.normalized_shape) == (n,) and n % 16 == 0 and _fits(x, torch.float32)
        and _fits(w, torch.float32) and _fits(b, torch.float32)
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad))
    ):  # fmt: skip
        return None
    return norm


def layer_norm_bf16(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor | None:
    """``norm(x).to(torch.bfloat16)`` for a ``torch.nn.LayerNorm`` over the last axis of a float32 ``x``, in one pass
    (no float32 output written and read again), where the kernel gives torch's bits here; None elsewhere (the caller
    runs ``norm``)."""
    ln = layer_norm_bf16_takes(x, norm)
    lib = _library() if ln is not None else None
    if ln is None or lib is None or not _layer_norm_agrees():
        return None
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    return out if _call_layer_norm(lib, x, ln.weight, ln.bias, float(ln.eps), out) == 0 else None


@functools.lru_cache(maxsize=1)
def _add_layer_norm_agrees() -> bool:
    """Whether `geosam_add_layer_norm_bf16` gives `add_bf16_` then `layer_norm_bf16` bit for bit here (the stream and
    the output; rows in whole and partial groups of four, one and two threads), where those give torch's bits."""
    lib = _library()
    if lib is None or not _layer_norm_agrees():
        return False
    lib.geosam_add_layer_norm_bf16.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(3)
    with alternating_threads() as use:
        for i, (rows, n) in enumerate(((37, 768), (8, 1024), (3, 272))):
            use(i)
            x = torch.randn((rows, n), generator=gen) * 30
            h = (torch.randn((rows, n), generator=gen) * 2).to(torch.bfloat16)
            h[1, 2] = float("nan")
            w, b = torch.randn(n, generator=gen) * 0.5 + 1, torch.randn(n, generator=gen) * 0.3
            want_x = x.clone()
            add_bf16_(want_x, h)
            want = torch.empty((rows, n), dtype=torch.bfloat16)
            got = torch.empty((rows, n), dtype=torch.bfloat16)
            if _call_layer_norm(lib, want_x, w, b, 1e-6, want) != 0 or _call_add_layer_norm(lib, x, h, w, b, 1e-6, got) != 0:
                return False
            if not (torch.equal(x.view(torch.int32), want_x.view(torch.int32))
                    and torch.equal(got.view(torch.int16), want.view(torch.int16))):  # fmt: skip
                return False
    return True


def _call_add_layer_norm(lib: ctypes.CDLL, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                         eps: float, out: torch.Tensor) -> int:  # fmt: skip
    n = x.shape[-1]
    args = (_P(x.data_ptr()), _P(h.data_ptr()), _P(w.data_ptr()), _P(b.data_ptr()), ctypes.c_float(eps),
            _I64(x.numel() // n), _I64(n), _P(out.data_ptr()), _INT(torch.get_num_threads()))  # fmt: skip
    return int(lib.geosam_add_layer_norm_bf16(*args))


def add_layer_norm_bf16_(x: torch.Tensor, h: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor | None:
    """``x.add_(h)`` (`add_bf16_`: a float32 ``x``, a bf16 ``h``) and then ``norm(x).to(torch.bfloat16)``
    (`layer_norm_bf16`) in one pass over ``x``; returns the norm's output, or None (nothing done: the caller adds and
    normalises) where either does not run here."""
    ln = layer_norm_bf16_takes(x, norm) if _fits(h, torch.bfloat16) and h.shape == x.shape else None
    lib = _library() if ln is not None else None
    if ln is None or lib is None or not _add_layer_norm_agrees():
        return None
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    return out if _call_add_layer_norm(lib, x, h, ln.weight, ln.bias, float(ln.eps), out) == 0 else None


@functools.lru_cache(maxsize=1)
def _upsample_add_agrees() -> bool:
    """Whether `geosam_upsample2_add_bf16` gives torch's nearest upsampling, add and rounding to bf16 bit for bit here
    (bf16 and float32 levels, a feature shared by the batch and one per entry, large and small values, one and two
    threads)."""
    lib = _library()
    if lib is None:
        return False
    lib.geosam_upsample2_add_bf16.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(4)
    last = torch.channels_last
    with alternating_threads() as use:
        for i, (dtype, shared) in enumerate(((torch.bfloat16, True), (torch.float32, False), (torch.bfloat16, False))):
            use(i)
            prev = (torch.randn((2, 32, 5, 6), generator=gen) * 100).to(dtype).contiguous(memory_format=last)
            feat = torch.randn((1 if shared else 2, 32, 10, 12), generator=gen) * 0.01
            feat[0, 1, 2, 3] = float("nan")
            feat = feat.contiguous(memory_format=last).expand(2, -1, -1, -1)
            want = (F.interpolate(prev, size=(10, 12), mode="nearest") + feat).to(torch.bfloat16)
            got = upsample2_add_bf16(prev, feat, _checked=True)
            if got is None or not torch.equal(got.view(torch.int16), want.view(torch.int16)):
                return False
    return True


def upsample2_add_bf16(prev: torch.Tensor, feat: torch.Tensor, _checked: bool = False) -> torch.Tensor | None:
    """``(F.interpolate(prev, size=feat.shape[-2:], mode="nearest") + feat).to(torch.bfloat16)`` in one pass for
    channels-last tensors (SAM 3's pixel decoder): a bf16 or float32 ``prev`` (B, C, H, W) and a float32 ``feat`` (B,
    C, 2 H, 2 W) (each entry channels-last contiguous; entries apart or one shared, as an expanded view), C a multiple of
    16, where the kernel gives torch's bits here; the result channels-last, as torch's; None elsewhere (the caller runs
    torch's ops)."""
    if prev.ndim != 4 or feat.ndim != 4 or prev.device.type != "cpu" or feat.device.type != "cpu":
        return None
    b, c, h, w = prev.shape
    last = torch.channels_last
    fb = feat.stride(0) if feat.shape[0] > 1 else 0
    if not (
        prev.dtype in (torch.bfloat16, torch.float32) and prev.is_contiguous(memory_format=last) and c % 16 == 0
        and feat.dtype == torch.float32 and tuple(feat.shape) == (b, c, 2 * h, 2 * w)
        and feat[:1].is_contiguous(memory_format=last) and fb in (0, c * 4 * h * w)
        and not (torch.is_grad_enabled() and (prev.requires_grad or feat.requires_grad))
    ):  # fmt: skip
        return None
    lib = _library()
    if lib is None or not (_checked or _upsample_add_agrees()):
        return None
    out = torch.empty((b, c, 2 * h, 2 * w), dtype=torch.bfloat16, memory_format=last)
    err = lib.geosam_upsample2_add_bf16(_P(prev.data_ptr()), _INT(prev.dtype == torch.bfloat16), _P(feat.data_ptr()),
                                        _I64(fb), _I64(b), _I64(2 * h), _I64(2 * w), _I64(c), _P(out.data_ptr()),
                                        _INT(torch.get_num_threads()))  # fmt: skip
    return out if err == 0 else None


def norm_low(norm: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``norm(x)`` for a product in ``dtype`` next: in bf16, torch's layer norm with its output rounded in the same pass
    where `layer_norm_bf16` gives torch's bits (the bits the product's rounding of the float32 norm gives: Intel Xeon
    with AMX, one thread, a ViT-B norm at 1024 px 1.0 vs 3.2 + 0.8 ms), else ``norm(x)`` (which the product
    rounds)."""
    out = layer_norm_bf16(x, norm) if dtype == torch.bfloat16 else None  # None off the CPU too
    return norm(x) if out is None else out


def add_norm_low(x: torch.Tensor, h: torch.Tensor, norm: Any, dtype: torch.dtype) -> torch.Tensor:
    """``x += h`` then ``norm(x)`` for a product in ``dtype``: in one pass over ``x`` where
    `add_layer_norm_bf16_` runs (the same bits as the two passes)."""
    out = add_layer_norm_bf16_(x, h, norm) if dtype == torch.bfloat16 else None
    if out is None:
        add_bf16_(x, h)
        out = norm_low(norm, x, dtype)
    return out


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb_2d`` for one tensor: ``x * cos + rotate_pairwise(x) * sin`` in float32,
    returned in x's dtype (``rotate_pairwise``: each pair (a, b) of the last axis becomes (-b, a))."""
    f = x.float()
    pairs = f.view(*f.shape[:-1], -1, 2)
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(start_dim=-2)
    return ((f * cos) + (rot * sin)).type_as(x)


def _call_rope(lib: ctypes.CDLL, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> int:
    nb, nh, n, d = x.shape
    args = (_P(x.data_ptr()), _I64(x.stride(0)), _I64(x.stride(1)), _I64(x.stride(2)), _I64(nb), _I64(nh), _I64(n),
            _I64(d), _P(cos.data_ptr()), _P(sin.data_ptr()), _P(out.data_ptr()), _I64(out.stride(0)),
            _I64(out.stride(1)), _I64(out.stride(2)), _INT(int(x.dtype == torch.bfloat16)),
            _INT(int(out.dtype == torch.bfloat16)), _INT(torch.get_num_threads()))  # fmt: skip
    return int(lib.geosam_rope(*args))


@functools.lru_cache(maxsize=1)
def _rope_agrees() -> bool:
    """Whether `geosam_rope` gives `rope_reference`'s bits here: float32 and bf16, strided rows (a transposed view of a
    projection, as the ViT hands them over), widths of 16 to 128, large and small values, one and two threads."""
    lib = _library()
    if lib is None:
        return False
    lib.geosam_rope.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(3)
    with alternating_threads() as use:
        for i, (nb, nh, n, d) in enumerate(((2, 3, 37, 64), (1, 2, 50, 16), (3, 1, 9, 128), (1, 4, 600, 48))):
            use(i)
            ang = torch.rand((n, d // 2), generator=gen) * 40
            cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
            proj = torch.randn((nb, n, nh * d), generator=gen) * torch.exp2(torch.randint(-6, 6, (1, n, 1), generator=gen))
            for dtype in (torch.float32, torch.bfloat16):
                x = proj.to(dtype, copy=True).view(nb, n, nh, d).transpose(1, 2)  # (nb, nh, n, d), not contiguous
                got = torch.empty(x.shape, dtype=dtype)
                if _call_rope(lib, x, cos, sin, got) != 0:
                    return False
                want = rope_reference(x, cos[None], sin[None])
                bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
                if not torch.equal(got.view(-1).view(bits), want.contiguous().view(-1).view(bits)):
                    return False
                if _call_rope(lib, x, cos, sin, x) != 0:  # in place, over the strided view
                    return False
                if not torch.equal(x.contiguous().view(-1).view(bits), want.contiguous().view(-1).view(bits)):
                    return False
    return True


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_place: bool = False) -> torch.Tensor | None:
    """`rope_reference` of ``x`` (B, H, N, d), float32 or bf16 on the CPU with a unit stride along d (d a multiple of
    16), for float32 tables ``cos`` / ``sin`` of N x d (any leading axes of size one), in one pass where the kernel
    gives the reference's bits here: a new contiguous tensor in x's dtype, or with ``in_place`` x itself, written
    over (a view into a projection's output: the rotated queries stay where the attention reads them). None
    elsewhere, x untouched (the caller runs the reference)."""
    if x.ndim != 4 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.stride(-1) != 1:
        return None
    nb, nh, n, d = x.shape
    if d % 16 or torch.is_grad_enabled() and x.requires_grad:
        return None
    tables = []
    for t in (cos, sin):
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.shape[-2:] != (n, d) or t.numel() != n * d:
            return None
        tables.append(t.reshape(n, d).contiguous())
    lib = _library()
    if lib is None or not _rope_agrees():
        return None
    out = x if in_place else torch.empty((nb, nh, n, d), dtype=x.dtype)
    return out if _call_rope(lib, x, tables[0], tables[1], out) == 0 else None
