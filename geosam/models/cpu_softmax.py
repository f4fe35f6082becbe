"""Float32 softmax on AVX2 CPUs: torch's own numbers, each row finished while it is in cache.

SAM's encoder spends a sixth of its float32 time on a CPU in softmaxes: 805 M
scores per chip in the four global layers, 92 M in the windows (ViT-B at 1024
px), plus the relative-position terms added to every score first. torch makes
one pass over a whole block of scores for each step (each of the two
relative-position adds, the maximum, the exponentials, the sum, the scaling),
so a 512 x 4096 block (8 MiB) comes from memory six times. `cpu_softmax.c`
does the same arithmetic in the same order (Sleef's ``expf8_u10``, ATen's
reduction order, ``* (1 / sum)``) one row at a time, so the results are the
bits torch gives; the row stays in the first-level cache from the adds to the
scaling. AMD EPYC Zen 3, one thread: a 512 x 4096 block with SAM's relative
positions 0.66 of torch's time, a plain softmax 0.8.

The kernel is plain C with AVX2 intrinsics, compiled on first use with the
machine's C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``; ~1 s) into
``$GEOSAM_KERNEL_CACHE`` (default ``~/.cache/geosam/kernels``, written to a
temporary file and renamed) and loaded with ctypes. It is used only where
torch itself runs its AVX2 kernels (``torch.backends.cpu.get_cpu_capability()
== "AVX2"``: on AVX-512 CPUs torch's vectors and so its rounding differ) and
only after it has reproduced torch's softmax bit for bit on test rows in this
process. Anywhere else, without a compiler, or with ``GEOSAM_CPU_SOFTMAX=0``,
the functions here run torch's ops: the outputs are the same either way.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["available", "rel_softmax", "softmax"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_softmax.c")
_FLAGS = ("-O2", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _cache_dir() -> Path:
    env = os.environ.get("GEOSAM_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geosam" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC", "").split(" ")[0], "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> Path | None:
    """The compiled kernel (built now unless cached); None if it does not build. With OpenMP where it links."""
    source = _SOURCE.read_bytes()
    for extra in (("-fopenmp",), ()):
        key = hashlib.sha256(source + " ".join((cc, *_FLAGS, *extra)).encode()).hexdigest()[:16]
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"geosam-kernels-{os.getuid()}"):
            target = folder / f"cpu_softmax-{key}.so"
            if target.exists():
                return target
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
            except OSError:  # a cache folder we may not write: the next one
                continue
            cmd = [cc, *_FLAGS, *extra, str(_SOURCE), "-o", tmp]
            try:
                done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                Path(tmp).unlink(missing_ok=True)
                log.debug("cpu_softmax: %s failed: %s", " ".join(cmd), exc)
                return None
            if done.returncode != 0:
                Path(tmp).unlink(missing_ok=True)
                log.debug("cpu_softmax: %s failed:\n%s", " ".join(cmd), done.stderr[-2000:])
                break  # not this flag set: try without OpenMP
            os.replace(tmp, target)  # complete, then visible (another process may race to the same name)
            return target
    return None


def _reproduces_torch(lib: ctypes.CDLL) -> bool:
    """Whether the loaded kernel gives torch's softmax bit for bit here (rows of several lengths, both entry points)."""
    gen = torch.Generator().manual_seed(0)
    for rows, hh, ww in ((5, 64, 64), (7, 14, 14), (3, 7, 8), (2, 1, 9)):
        x = torch.randn((rows, hh * ww), generator=gen) * 8
        x[0, 1] = -300.0  # an exponential that underflows
        rel_h, rel_w = torch.randn((rows, hh), generator=gen), torch.randn((rows, ww), generator=gen)
        want = torch.softmax(x, dim=-1)
        got = torch.empty_like(x)
        lib.geosam_softmax(_P(x.data_ptr()), _P(got.data_ptr()), _I64(rows), _I64(hh * ww), _INT(1))
        if not torch.equal(got, want):
            return False
        want = torch.softmax(x.clone().view(rows, hh, ww).add_(rel_h[:, :, None]).add_(rel_w[:, None, :]).view(rows, -1), -1)
        got = x.clone()
        lib.geosam_rel_softmax_(
            _P(got.data_ptr()), _P(rel_h.data_ptr()), _P(rel_w.data_ptr()),
            _I64(rows), _I64(hh), _I64(ww), _I64(hh), _I64(ww), _INT(2),
        )  # fmt: skip
        if not torch.equal(got, want):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("GEOSAM_CPU_SOFTMAX", "").strip().lower() in ("0", "false", "no"):
        return None
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return None
    if torch.backends.cpu.get_cpu_capability() != "AVX2":  # torch's other kernels round differently
        return None
    cc = _compiler()
    path = _build(cc) if cc else None
    if path is None:
        log.info("cpu_softmax: no C compiler built the kernel; torch's softmax is used (same results, slower)")
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.info("cpu_softmax: %s does not load (%s); torch's softmax is used", path, exc)
        return None
    for fn in (lib.geosam_softmax, lib.geosam_rel_softmax_):
        fn.restype = None
    if not _reproduces_torch(lib):
        log.warning("cpu_softmax: %s does not reproduce torch's softmax here; torch's is used", path)
        return None
    log.debug("cpu_softmax: %s", path)
    return lib


def available() -> bool:
    """Whether the compiled kernel is in use in this process (see the module docstring)."""
    return _library() is not None


def _fits(x: torch.Tensor, n: int) -> bool:
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and n >= 8
        and not (x.requires_grad and torch.is_grad_enabled())
    )  # fmt: skip


def softmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, dim=-1)``, the same bits; a new tensor."""
    n = x.shape[-1]
    lib = _library() if _fits(x, n) else None
    if lib is None:
        return torch.softmax(x, dim=-1)
    out = torch.empty_like(x)
    lib.geosam_softmax(_P(x.data_ptr()), _P(out.data_ptr()), _I64(x.numel() // n), _I64(n), _INT(torch.get_num_threads()))
    return out


def rel_softmax(scores: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """SAM's relative positions added to ``scores`` and the softmax taken over the keys; may overwrite ``scores``.

    scores: (R, H * W) over an H x W key grid (row-major); rel_h (R, H) and
    rel_w (R, W), or any shapes that reshape so. Returns the bits of
    ``torch.softmax(scores.view(R, H, W).add_(rel_h[..., None]).add_(rel_w[:, None]), -1)``:
    ``scores`` itself when the kernel ran (in place), else a new tensor.
    """
    rows = scores.shape[0]
    rh, rw = rel_h.reshape(rows, -1), rel_w.reshape(rows, -1)
    hh, ww = rh.shape[1], rw.shape[1]
    fits = _fits(scores, hh * ww) and scores.shape == (rows, hh * ww) and rh.dtype == rw.dtype == torch.float32
    lib = _library() if fits else None
    if lib is None:
        scores.view(rows, hh, ww).add_(rh[:, :, None]).add_(rw[:, None, :])
        return torch.softmax(scores, dim=-1)
    rh = rh if rh.stride(1) == 1 else rh.contiguous()
    rw = rw if rw.stride(1) == 1 else rw.contiguous()
    lib.geosam_rel_softmax_(
        _P(scores.data_ptr()), _P(rh.data_ptr()), _P(rw.data_ptr()), _I64(rows), _I64(hh), _I64(ww),
        _I64(rh.stride(0)), _I64(rw.stride(0)), _INT(torch.get_num_threads()),
    )  # fmt: skip
    return scores
