"""SAM's mask decoder on AVX2 CPUs (float32): the upscaling of a prompt in one C pass, and the quadratic forms.

`geosam.models.fast_upscale` runs the decoder's output side (upscale_conv1 -> LayerNorm -> GELU -> upscale_conv2 ->
GELU -> hypernetwork dot products) as torch products over bands of positions, each step a pass over memory: per prompt
of SAM's ViT decoders ~0.5 GFLOP in products and 3 M exact GELUs, with the (16 h w, C8) features written and read back
between the steps. `upscale_prompt` does the same for a block of 12 positions at a time in `cpu_decoder.c` (6 x 16
register tiles, a rational erf for the GELU) and writes each mask pixel once. `quad` computes the layer norms'
quadratic forms of `geosam.models.fast_final` (``w^T G w`` at every image position, G 56 x 56 per prompt) block by
block without writing ``G w``, half of G for the symmetric ones. `token_softmax` is the image -> token attentions'
softmax over the tokens with torch's bits, writing the weights transposed in the same pass for the records that read
them so (the heads' products: `geosam.models.cpu_heads`). AMD EPYC Zen 3, one thread: a prompt's upscaling 9.5 vs ~16
ms, four prompts' symmetric forms 1.4 vs 4.1 ms (general 2.6), eight prompts' token softmax with its transposes 2.9 vs
5.6 ms; 256 prompts' decoding 8.6 vs 10.4 s (upscaling and forms; medians of 5 alternating, noisy host). On AVX-512
CPUs (`wide_available`) the forms run 48 positions a block in 16-lane registers, the same bits: Intel Xeon with AMX,
16 prompts, 2.6-2.7 -> 2.1-2.3 ms symmetric, 6.8-7.3 -> 5.3-5.9 ms general; the token softmax 16 positions a step
with 8-lane divisions (the divider takes a 16-lane one twice as long), the same bits: 32 prompts 14 -> 10 ms.

For the bf16 dtype on CPUs with AVX-512 BF16 but no AMX (`bf16_faster`) `upscale_prompt` runs the upscaling's two products
on their inputs rounded to bf16 (``vdpbf16ps``, sums in float32; the norm, GELUs and dot products stay float32):
AMD EPYC Zen 4, one thread, SAM's sizes: a prompt's upscaling 4.4 vs 6.65 ms. On CPUs with AVX-512
(`wide_available`) the float32 products (6 x 64 tiles) and the GELUs run in 16-lane registers, bit for bit the AVX2
path's: twice the FLOPs per cycle where the FMA units are 512 bits wide (Intel's server CPUs, AMD Zen 5); on a Zen 4
(256-bit units) a prompt's upscaling 6.76 vs 7.35 ms in float32, 4.6 vs 4.95 ms in bf16 (fewer instructions); on an
Intel Xeon with AMX 4.9 vs 7.5 ms in float32, faster than AVX-512's bf16 products (7.2 ms); there the bf16 dtype's
products run on AMX tiles (`amx_available`, ``cpu_amx.h``: the same bf16 inputs, sums in float32): 2.4-2.7 ms a
prompt, the decode of bench_amg's 16 x 16 chip 3.55 vs 4.03 s with the float32 products (alternating, one thread).

The first product's rows A (P x L (R + 2): 1.9 MB a prompt) are scalings of the layers' records (`factor_rows`); as
`Factors` the pass makes each block's rows in cache (the same numbers): Intel Xeon with AMX, one thread, decode only,
bf16 2.67 -> 2.61 s at 16 x 16 and 10.54 -> 10.34 s at 32 x 32, float32 within noise (3.04 s).

SAM 2's decoder runs the same pass with its high-resolution features added (``features``: before the norm and before
the second GELU). The upscaling and the forms are the same functions up to float rounding (other summation orders; the
GELU not oneDNN's: error at most 5e-7 for |x| < 3, torch's 3.7e-7; 1.2e-6 absolute where 1 + erf cancels, x < -2):
the logits differ in the last bits (~1e-6 relative). The library is used only after it agrees with torch's ops in
this process (`_agrees_with_torch`; built and cached by `geosam.models.cpu_build`, not with ``GEOSAM_CPU_KERNELS=0``),
where torch runs its AVX2 or AVX-512 kernels; elsewhere, and for shapes it does not take (channels not multiples of
8, other dtypes, approximate GELU), torch's ops run.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from geosam.models.cpu_decoder_reference import (
    Factors,
    Records,
    _upper,
    factor_rows_reference,
    quad_reference,
    reference,
    upscale_inputs,
)
from geosam.models.device import cpu_flags

__all__ = ["BF16_TOLERANCE", "Factors", "amx_available", "available", "bf16_available", "bf16_faster", "bf16_products", "factor_rows", "factor_rows_reference", "quad", "token_softmax", "upscale_prompt", "wide_available"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_decoder.c")
_P, _I64 = ctypes.c_void_p, ctypes.c_int64

#: `_call`'s flags: the upscaling's products on inputs rounded to bf16; the float32 products and GELUs in AVX-512
#: registers; with both, the bf16 products on AMX tiles.
BF16, WIDE, AMX = 1, 2, 4


def _call(lib: ctypes.CDLL, a: torch.Tensor | Factors, b: torch.Tensor, c: torch.Tensor | None, s: torch.Tensor,  # noqa: PLR0913
          ln: tuple[torch.Tensor, torch.Tensor, float], w2t: torch.Tensor, b2: torch.Tensor, hyper: torch.Tensor,
          hw: tuple[int, int], out: torch.Tensor, flags: int = 0,
          features: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:  # fmt: skip
    """The kernel on one prompt; flags: `BF16` (the products' inputs rounded to bf16) | `WIDE` (AVX-512 registers).
    ``a`` a `Factors`: A's rows made block by block in the kernel (``c`` None); features: (f1, f0), contiguous."""
    f1, f0 = (features[0].contiguous(), features[1].contiguous()) if features is not None else (None, None)
    nk, c8 = hyper.shape
    rest = (
        _P(s.data_ptr()), _I64(s.stride(0)), _P(ln[0].data_ptr()), _P(ln[1].data_ptr()), ctypes.c_float(ln[2]),
        _P(w2t.data_ptr()), _P(b2.data_ptr()), _P(hyper.data_ptr()), _I64(nk), _I64(w2t.shape[0]), _I64(c8),
        _I64(hw[0]), _I64(hw[1]), _P(out.data_ptr()), _I64(out[0].numel()), ctypes.c_int(flags),
        ctypes.c_int(torch.get_num_threads()), _P(None if f1 is None else f1.data_ptr()),
        _P(None if f0 is None else f0.data_ptr()),
    )  # fmt: skip
    if isinstance(a, Factors):
        held, args = _factor_args(a)
        rc = lib.geosam_upscale_prompt_factored(*args, _P(b.data_ptr()), *rest)
        del held
    else:
        assert c is not None
        rc = lib.geosam_upscale_prompt(_P(a.data_ptr()), _I64(a.stride(0)), _I64(a.shape[1]), _P(b.data_ptr()),
                                       _P(c.data_ptr()), *rest)  # fmt: skip
    if rc != 0:
        raise MemoryError("cpu_decoder: out of memory for the upscaling buffers")


def _call_quad(lib: ctypes.CDLL, gram: torch.Tensor, left: torch.Tensor, right: torch.Tensor, upper: bool,
               wide: bool = False) -> torch.Tensor:
    n, ri, p = left.shape
    out = torch.empty((n, p), dtype=torch.float32)
    rc = lib.geosam_quad(
        _P(gram.data_ptr()), _P(left.data_ptr()), _P(right.data_ptr()), _I64(n), _I64(ri), _I64(right.shape[1]),
        _I64(p), ctypes.c_int(int(upper)), _P(out.data_ptr()), ctypes.c_int(int(wide)),
        ctypes.c_int(torch.get_num_threads()),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("cpu_decoder: out of memory for the quadratic forms")
    return out


def _call_token_softmax(lib: ctypes.CDLL, s: torch.Tensor, out: torch.Tensor, pt: torch.Tensor | None,
                        wide: bool = False) -> None:  # fmt: skip
    n, nh, nt, p = s.shape
    rc = lib.geosam_token_softmax(
        _P(s.data_ptr()), _P(out.data_ptr()), _P(None if pt is None else pt.data_ptr()), _I64(n), _I64(nh), _I64(nt),
        _I64(p), ctypes.c_int(torch.get_num_threads()), ctypes.c_int(int(wide)),
    )  # fmt: skip
    if rc == -2:
        raise MemoryError("cpu_decoder: out of memory for the token softmax's buffer")
    if rc != 0:
        raise ValueError("cpu_decoder: token_softmax called with a shape it does not take")


def _factor_args(f: Factors) -> tuple[list[torch.Tensor], tuple]:
    """geosam_factor_rows' first arguments (nl, pts, spt, means, rstds, r) for prompt f.i, and the tensors they point
    into (to be held until the call returns)."""
    nl, r = len(f.records), f.records[0][0].shape[-1]
    pts = [rec[0][f.i] for rec in f.records]
    means, rstds = [rec[2][f.i].contiguous() for rec in f.records], [rec[3][f.i].contiguous() for rec in f.records]
    args = (_I64(nl), (_P * nl)(*(t.data_ptr() for t in pts)), (_I64 * nl)(*(t.stride(0) for t in pts)),
            (_P * nl)(*(t.data_ptr() for t in means)), (_P * nl)(*(t.data_ptr() for t in rstds)), _I64(r))  # fmt: skip
    return pts + means + rstds, args


def _call_factor_rows(lib: ctypes.CDLL, records: Records, i: int, a: torch.Tensor) -> torch.Tensor:
    p = records[0][0].shape[1]
    held, args = _factor_args(Factors(records, i))
    c = torch.empty(p, dtype=torch.float32)
    lib.geosam_factor_rows(*args, _I64(p), _P(a.data_ptr()), _I64(a.stride(0)), _P(c.data_ptr()),
                           ctypes.c_int(torch.get_num_threads()))  # fmt: skip
    del held
    return c


def factor_rows(records: Records, i: int, a: torch.Tensor) -> torch.Tensor:
    """Prompt i's rows ``A`` (P, L (R + 2)) of the upscaling's first product in factored form
    (`geosam.models.fast_upscale._Conv1FromSharedImage.prompt`), written into ``a``; returns ``c`` (P,), the product
    of the layers' reciprocal deviations. records: per layer ``(probs^T (N, P, R), vo, mean (N, P), rstd (N, P))``.
    In one C pass where the kernel runs (torch's bits), else `factor_rows_reference`."""
    inputs = [t for rec in records for t in (rec[0], rec[2], rec[3])] + [a]
    fits = all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1 for t in inputs)
    lib = _library() if fits else None
    return factor_rows_reference(records, i, a) if lib is None else _call_factor_rows(lib, records, i, a)


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    """Whether the kernel's masks are torch's to float rounding here (tails of the position blocks and of the
    register tiles, odd inner sizes, 1 to 4 masks, large and small values), and its quadratic forms."""
    lib.geosam_upscale_prompt.restype = ctypes.c_int
    lib.geosam_amx_init.restype = ctypes.c_int
    lib.geosam_quad.restype = ctypes.c_int
    gen = torch.Generator().manual_seed(0)
    for n, ri, rj, p in ((2, 7, 9, 50), (1, 13, 13, 24), (3, 5, 5, 7)):
        left, right = torch.rand((n, ri, p), generator=gen), torch.rand((n, rj, p), generator=gen)
        vi = torch.randn((n, ri, 6), generator=gen)
        gram = vi @ torch.randn((n, rj, 6), generator=gen).transpose(1, 2)
        if not torch.allclose(_call_quad(lib, gram, left, right, False), quad_reference(gram, left, right), rtol=1e-4, atol=1e-4):
            return False
        if ri == rj:
            sym = vi @ vi.transpose(1, 2)
            want = quad_reference(sym, left, left)
            if not torch.allclose(_call_quad(lib, _upper(sym), left, left, True), want, rtol=1e-4, atol=1e-4):
                return False
    lib.geosam_token_softmax.restype = ctypes.c_int
    lib.geosam_factor_rows.restype = None
    for shape in ((2, 3, 7, 40), (1, 2, 8, 8), (3, 1, 1, 16), (1, 4, 5, 72)):
        x = torch.randn(shape, generator=gen) * 20
        got, pt = torch.empty_like(x), torch.empty((shape[0], shape[3], shape[1] * shape[2]))
        _call_token_softmax(lib, x, got, pt)
        want = torch.softmax(x, dim=2)
        if not (torch.allclose(got, want, rtol=1e-6, atol=1e-7) and torch.equal(pt, got.flatten(1, 2).transpose(1, 2))):
            return False
    for nl, p, r in ((2, 40, 13), (1, 9, 8), (3, 17, 5)):
        records = [(torch.randn((2, p, r), generator=gen), torch.empty(0), torch.randn((2, p), generator=gen),
                    torch.rand((2, p), generator=gen) + 0.5) for _ in range(nl)]
        want, got = torch.zeros((p, nl * (r + 2))), torch.full((p, nl * (r + 2)), float("nan"))
        if not (torch.equal(_call_factor_rows(lib, records, 1, got), factor_rows_reference(records, 1, want))
                and torch.equal(got, want)):
            return False
    return _upscale_agrees(lib, gen, 0, 1e-4)


#: (h, w), K1, C4, C8, K of the load-time checks: tails of the position blocks and of the register tiles, odd inner
#: sizes, 1 to 4 masks, SAM's sizes.
_CHECKED_SHAPES = (((5, 7), 13, 16, 8, 3), ((4, 16), 116, 64, 32, 1), ((3, 3), 6, 8, 16, 4))

#: Largest difference of the bf16 products' masks from `reference`'s with ``bf16=True`` the load-time check accepts,
#: relative to the masks' scale: the sums' order, and a feature rounded to the other side of a bf16 step where the
#: kernel's norm and GELU differ from torch's in the last bit.
BF16_TOLERANCE = 1e-3


def _upscale_agrees(lib: ctypes.CDLL, gen: torch.Generator, flags: int, tol: float) -> bool:
    """The masks `reference`'s within ``tol`` on `_CHECKED_SHAPES`, and with A made in the kernel from records
    (`Factors`) the same bits as with A made by `factor_rows` first."""
    for i, (hw, k1, c4, c8, nk) in enumerate(_CHECKED_SHAPES):
        _, b, _, s, ln, w2t, b2, hyper = upscale_inputs(gen, hw, k1, c4, c8, nk)
        p = hw[0] * hw[1]
        feats = (torch.randn((p, 4 * c4), generator=gen), torch.randn((4 * p, 4 * c8), generator=gen)) if i == 1 else None
        nl = 2 if k1 % 2 == 0 else 1  # K1 = L (R + 2)
        p, r = hw[0] * hw[1], k1 // nl - 2
        records = [(torch.rand((2, p, r), generator=gen), torch.empty(0), torch.randn((2, p), generator=gen),
                    torch.rand((2, p), generator=gen) + 0.5) for _ in range(nl)]  # fmt: skip
        a = torch.empty((p, k1))
        c = factor_rows_reference(records, 1, a)
        want = reference(a, b, c, s, ln, w2t, b2, hyper, hw, bf16=bool(flags & BF16), features=feats)
        got, made = torch.full_like(want, float("nan")), torch.full_like(want, float("nan"))
        _call(lib, a, b, c, s, ln, w2t, b2, hyper, hw, got, flags, feats)
        _call(lib, Factors(records, 1), b, None, s, ln, w2t, b2, hyper, hw, made, flags, feats)
        if not (torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())) and torch.equal(made, got)):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from geosam.models.cpu_build import AVX2_AND_WIDER, load

    return load(_SOURCE, _agrees_with_torch, "mask upscaling", AVX2_AND_WIDER)  # torch's to rounding at any width


def available() -> bool:
    """Whether the compiled kernel is in use in this process."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def bf16_available() -> bool:
    """Whether `upscale_prompt` runs its products in bf16 when asked to: the kernel in use, a CPU with AVX-512 BF16,
    and the kernel's bf16 masks `reference`'s with ``bf16=True`` here (within `BF16_TOLERANCE`)."""
    lib = _library()
    if lib is None or "avx512_bf16" not in cpu_flags():
        return False
    if _upscale_agrees(lib, torch.Generator().manual_seed(1), BF16, BF16_TOLERANCE):
        return True
    log.warning("cpu_decoder.c: the bf16 upscaling products do not match torch's on bf16 inputs here; float32 is used")
    return False


@functools.lru_cache(maxsize=1)
def bf16_faster() -> bool:
    """Whether `upscale_prompt` takes ``bf16=True`` (the bf16 dtype) as bf16 products: `bf16_available` and a CPU
    without AMX. On CPUs with AMX (Intel Xeon) AVX-512's bf16 dot products run no faster than its float32 FMAs and
    the float32 products in AVX-512 registers are the faster ones (one thread, SAM's shapes, alternating: 4.9 ms a
    prompt vs 7.2 ms with bf16 products); on AMD EPYC Zen 4 (256-bit units) bf16 halves the products' time."""
    return bf16_available() and "amx_bf16" not in cpu_flags()


def bf16_products() -> bool:
    """Whether `upscale_prompt` runs ``bf16=True`` as bf16 products at all: on AMX tiles (`amx_available`) or with
    AVX-512 BF16 (`bf16_faster`); elsewhere the bf16 dtype's upscaling is float32's."""
    return amx_available() or bf16_faster()


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether `upscale_prompt` takes ``bf16=True`` as bf16 products on AMX tiles (`cpu_amx.h`): the kernel in use,
    a CPU with AMX bf16 and AVX-512 BF16, the AVX-512 path in use (`wide_available`: the rest of the pass), the tiles
    granted to this process, and the masks `reference`'s with ``bf16=True`` here (within `BF16_TOLERANCE`: the same
    bf16 inputs, sums in float32 in the tiles' order)."""
    from geosam.models.cpu_build import amx_checked

    return wide_available() and amx_checked(
        _library(), "cpu_decoder.c", "upscaling products",
        lambda lib: _upscale_agrees(lib, torch.Generator().manual_seed(3), BF16 | WIDE | AMX, BF16_TOLERANCE),
    )


@functools.lru_cache(maxsize=1)
def wide_available() -> bool:
    """Whether `upscale_prompt` (float32 products, GELUs), `quad` and `token_softmax` run in AVX-512 registers: the
    kernel in use, a CPU with AVX-512, and the wide paths' outputs bit for bit the AVX2 paths' here (each the same chain
    of operations; the token softmax's NaN and infinite scores included)."""
    lib = _library()
    if lib is None or "avx512f" not in cpu_flags():
        return False
    gen = torch.Generator().manual_seed(2)
    for n, r, p, upper in ((2, 7, 50, False), (3, 13, 100, True), (1, 5, 7, True), (2, 9, 96, False)):
        gram, left, right = torch.randn((n, r, r), generator=gen), *(torch.rand((n, r, p), generator=gen) for _ in "lr")
        args = (lib, torch.triu(gram).contiguous() if upper else gram, left, left if upper else right, upper)
        if not torch.equal(_call_quad(*args), _call_quad(*args, wide=True)):
            log.warning("cpu_decoder.c: the AVX-512 quadratic forms differ from the AVX2 ones here; AVX2 is used")
            return False
    for shape in ((2, 3, 7, 72), (1, 2, 8, 40), (3, 1, 1, 16), (1, 4, 5, 8)):  # 16-wide steps and 8-wide ends
        x = torch.randn(shape, generator=gen) * 20
        x[0, 0, 0, :3] = torch.tensor([float("nan"), float("-inf"), float("inf")])
        (n, nh, nt, p), outs = shape, []
        for sixteen in (False, True):
            out, pt = torch.empty_like(x), torch.full((n, p, nh * nt), float("nan"))
            _call_token_softmax(lib, x, out, pt, sixteen)
            outs.append((out, pt))
        if not all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(*outs, strict=True)):
            log.warning("cpu_decoder.c: the AVX-512 token softmax differs from the AVX2 one here; AVX2 is used")
            return False
    for flags in (0, BF16) if bf16_available() else (0,):
        for hw, k1, c4, c8, nk in _CHECKED_SHAPES:
            a, b, c, s, ln, w2t, b2, hyper = upscale_inputs(gen, hw, k1, c4, c8, nk)
            narrow, wide = (torch.full((nk, 4 * hw[0], 4 * hw[1]), float("nan")) for _ in range(2))
            _call(lib, a, b, c, s, ln, w2t, b2, hyper, hw, narrow, flags)
            _call(lib, a, b, c, s, ln, w2t, b2, hyper, hw, wide, flags | WIDE)
            if not torch.equal(narrow, wide):
                log.warning("cpu_decoder.c: the AVX-512 upscaling differs from the AVX2 one here; AVX2 is used")
                return False
    return True


def quad(gram: torch.Tensor, left: torch.Tensor, right: torch.Tensor, symmetric: bool = False) -> torch.Tensor | None:
    """``left[:, :, p]^T gram right[:, :, p]`` for every position p, (N, P), or None where the kernel does not run
    (then use `quad_reference`). gram (N, R, R'), left (N, R, P), right (N, R', P); ``symmetric``: gram is
    symmetric and right is left (half the products)."""
    tensors = (gram, left, right)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 3 for t in tensors):
        return None
    lib = _library()
    if lib is None:
        return None
    left, right = left.contiguous(), right.contiguous()
    if symmetric:
        return _call_quad(lib, _upper(gram).contiguous(), left, left, True, wide_available())
    return _call_quad(lib, gram.contiguous(), left, right, False, wide_available())


def token_softmax(s: torch.Tensor, pt: torch.Tensor | None = None) -> torch.Tensor | None:
    """``torch.softmax(s, dim=2)`` for attention scores s (N, H, T, P) over their T tokens, written over ``s`` (the
    same bits where torch runs its AVX2 kernels, to rounding where it runs its AVX-512 ones), and the weights also
    transposed into ``pt`` (N, P, H T) if given; None where the kernel does not run (then nothing is written). Up to
    8 tokens, P a multiple of 8."""
    if not (s.device.type == "cpu" and s.dtype == torch.float32 and s.dim() == 4 and s.is_contiguous()):
        return None
    n, nh, nt, p = s.shape
    if nt > 8 or p % 8:
        return None
    if pt is not None and not (pt.dtype == torch.float32 and pt.is_contiguous() and pt.shape == (n, p, nh * nt)):
        return None
    lib = _library()
    if lib is None:
        return None
    _call_token_softmax(lib, s, s, pt, wide_available())
    return s


def upscale_prompt(a: torch.Tensor | Factors, b: torch.Tensor, c: torch.Tensor | None, s: torch.Tensor,
                   ln: tuple[torch.Tensor, torch.Tensor, float], w2t: torch.Tensor, b2: torch.Tensor,
                   hyper: torch.Tensor, hw: tuple[int, int], out: torch.Tensor, bf16: bool = False,
                   features: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:  # fmt: skip
    """One prompt's masks into ``out`` (K, 4h, 4w) if the kernel takes them (True), else nothing done (False).

    a (P, K1), b (K1, 4 C4), c (P,), s (P, 4 C4): upscale_conv1's output ``a @ b + c s`` at the P = h w image
    positions (row-major), columns (a, b, o) for output pixel (2i + a, 2j + b); ``a`` a `Factors` (``c`` None): a and
    c as `factor_rows` makes them, made block by block in the kernel instead; ln: upscale_layer_norm's weight,
    bias and eps; w2t (C4, 4 C8) and b2 (4 C8): upscale_conv2 as a product, columns (a2, b2, o2); hyper (K, C8).
    ``bf16``: the products on bf16 inputs where `bf16_faster` (Zen 4: half their time; float32 elsewhere), then the
    GELUs a polynomial within 6e-5 (`fast_gelu_reference`). In AVX-512 registers where `wide_available` (same bits).
    ``features``: SAM 2's ``(f1 (P, 4 C4), f0 (4 P, 4 C8))`` in sub-pixel order (rows as `a`'s and the second
    product's), added to the first product before the norm and to the second before its GELU.
    """
    rows = [t for rec in a.records for t in (rec[0], rec[2], rec[3])] if isinstance(a, Factors) else [a, c]
    tensors = (*rows, b, s, ln[0], ln[1], w2t, b2, hyper, out, *(features or ()))
    if not all(t is not None and t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    if isinstance(a, Factors) and not all(t is not None and t.stride(-1) == 1 for t in rows):
        return False
    c4, c8 = w2t.shape[0], hyper.shape[1]
    if c4 % 8 or c8 % 8 or not out.is_contiguous() or out.shape != (hyper.shape[0], 4 * hw[0], 4 * hw[1]):
        return False
    lib = _library()
    if lib is None:
        return False
    if not isinstance(a, Factors):
        assert c is not None
        a, c = a if a.stride(1) == 1 else a.contiguous(), c.reshape(-1).contiguous()
    s = s if s.stride(1) == 1 else s.contiguous()
    b, w2t, b2, hyper = (t.contiguous() for t in (b, w2t, b2, hyper))
    p = hw[0] * hw[1]
    if features is not None and (features[0].shape != (p, 4 * c4) or features[1].shape != (4 * p, 4 * c8)):
        return False
    ln = (ln[0].contiguous(), ln[1].contiguous(), float(ln[2]))
    if bf16 and amx_available():
        flags = BF16 | WIDE | AMX
    else:
        flags = (BF16 if bf16 and bf16_faster() else 0) | (WIDE if wide_available() else 0)
    _call(lib, a, b, c, s, ln, w2t, b2, hyper, hw, out, flags, **({} if features is None else {"features": features}))
    return True
