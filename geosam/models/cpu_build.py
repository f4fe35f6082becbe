"""Build and load geosam's small C kernels (AVX2, float32) with the machine's C compiler.

Each kernel is one C file next to its Python module (with the shared helpers of
``cpu_vec.h``). It is compiled on first
use with ``$CC``, ``cc``, ``gcc`` or ``clang`` (``-O2 -mavx2 -mfma
-ffp-contract=off``, with OpenMP where it links; ~1 s) into
``$GEOSAM_KERNEL_CACHE`` (default ``~/.cache/geosam/kernels``; written to a
temporary file, then renamed), named by a hash of the source, compiler and
flags, and loaded with ctypes. A library loaded from there runs as the user, so
only folders and files the user owns and neither group nor others may write are
used (else a private ``$TMPDIR/geosam-kernels-<uid>``, created 0700).

`load` gives the library only on x86-64 Linux where torch runs the vector
kernels the caller names (``torch.backends.cpu.get_cpu_capability()``: by
default "AVX2" only, for kernels that reproduce the rounding of torch's AVX2
kernels, which torch's AVX-512 kernels do not share; kernels whose results
are torch's to float rounding, or whose arithmetic is the same elementwise at
any vector width, name "AVX512" too: the AVX2 code runs on those CPUs; a kernel written for AVX-512 itself,
``cpu_attention512.c``, names "AVX512" only and carries its target in function attributes), only
after the caller's check against torch passes, and never with
``GEOSAM_CPU_KERNELS=0``. Otherwise it returns None and the callers run
torch's ops: the same results, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["AVX2_AND_WIDER", "alternating_threads", "build", "cache_dir", "compiler", "load", "ours", "switched_on"]

log = logging.getLogger(__name__)

#: torch CPU capabilities under which a kernel that does not depend on torch's vector width may run.
AVX2_AND_WIDER = ("AVX2", "AVX512")

FLAGS = ("-O2", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")


def cache_dir() -> Path:
    env = os.environ.get("GEOSAM_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geosam" / "kernels"


def compiler() -> str | None:
    for name in (os.environ.get("CC", "").split(" ")[0], "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def ours(path: Path) -> bool:
    """Whether ``path`` belongs to this user and neither its group nor others may write it."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def build(source: Path, cc: str) -> Path | None:
    """``source`` compiled (now unless cached) to a shared library; None if it does not build."""
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # its headers
    for extra in (("-fopenmp",), ()):
        key = hashlib.sha256(text + " ".join((cc, *FLAGS, *extra)).encode()).hexdigest()[:16]
        for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"geosam-kernels-{os.getuid()}"):
            target = folder / f"{source.stem}-{key}.so"
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:  # a cache folder we may not write: the next one
                continue
            if not ours(folder) or (target.exists() and not ours(target)):
                continue  # a library loaded from there would run as us: only from a folder no one else writes
            if target.exists():
                return target
            try:
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
            except OSError:
                continue
            cmd = [cc, *FLAGS, *extra, str(source), "-o", tmp]
            try:
                done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                Path(tmp).unlink(missing_ok=True)
                log.debug("%s: %s failed: %s", source.name, " ".join(cmd), exc)
                return None
            if done.returncode != 0:
                Path(tmp).unlink(missing_ok=True)
                log.debug("%s: %s failed:\n%s", source.name, " ".join(cmd), done.stderr[-2000:])
                break  # not this flag set: try without OpenMP
            os.replace(tmp, target)  # complete, then visible (another process may race to the same name)
            return target
    return None


def switched_on(capabilities: tuple[str, ...] = ("AVX2",)) -> bool:
    """Whether this process may use a C kernel at all: not switched off, x86-64 Linux, torch running the vector
    kernels of one of ``capabilities``."""
    if os.environ.get("GEOSAM_CPU_KERNELS", "").strip().lower() in ("0", "false", "no"):
        return False
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return False
    return torch.backends.cpu.get_cpu_capability() in capabilities


def load(
    source: Path, check: Callable[[ctypes.CDLL], bool], what: str, capabilities: tuple[str, ...] = ("AVX2",)
) -> ctypes.CDLL | None:
    """``source``'s library, built if needed, once ``check`` (set the restypes, compare with torch) passes; only where
    torch runs the vector kernels of one of ``capabilities`` (see the module docstring)."""
    if not switched_on(capabilities):
        return None
    cc = compiler()
    path = build(source, cc) if cc else None
    if path is None:
        log.info("%s: no C compiler built the kernel; torch's %s is used (same results, slower)", source.name, what)
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.info("%s: %s does not load (%s); torch's %s is used", source.name, path, exc, what)
        return None
    if not check(lib):
        log.warning("%s: %s does not reproduce torch's %s here; torch's is used", source.name, path, what)
        return None
    log.debug("%s: %s", source.name, path)
    return lib


def amx_checked(lib: ctypes.CDLL | None, source: str, what: str, check: Callable[[ctypes.CDLL], bool]) -> bool:
    """Whether ``lib``'s AMX kernel (``what``) runs here: the library in use, a CPU with AMX bf16 and AVX-512 BF16, the
    tiles granted to this process (its ``geosam_amx_init``: cpu_amx.h), and ``check`` passing (else a warning)."""
    from geosam.models.device import cpu_flags

    if lib is None or not {"amx_bf16", "amx_tile", "avx512_bf16"} <= set(cpu_flags()):
        return False
    lib.geosam_amx_init.restype = ctypes.c_int
    if lib.geosam_amx_init() != 0:
        log.info("%s: the kernel did not grant the AMX tiles (or the compiler has no AMX); not used", source)
        return False
    if check(lib):
        return True
    log.warning("%s: the AMX %s do not match the reference here; not used", source, what)
    return False


@contextmanager
def alternating_threads() -> Iterator[Callable[[int], None]]:
    """For the kernels' load-time checks: ``use(i)`` sets torch's thread count to 1 for even cases i and 2 for odd
    ones (the kernels split their work by it), and the caller's count is restored on leaving, however the check ends."""
    threads = torch.get_num_threads()
    try:
        yield lambda i: torch.set_num_threads(1 + i % 2)
    finally:
        torch.set_num_threads(threads)
