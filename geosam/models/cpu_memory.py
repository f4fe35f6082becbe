"""Keep freed memory in the process for reuse (Linux, glibc): fewer page faults in CPU inference.

glibc's ``malloc`` serves large blocks (from 128 KiB, rising with use up to
32 MiB) with fresh ``mmap`` pages and gives them back to the kernel on
``free``, and trims the top of its heap once more than twice that is free.
CPU inference allocates and frees same-sized tensors of megabytes over and
over (the decoder's per-prompt image side: 4 MiB per prompt and step), so
each one is faulted in and zeroed by the kernel again: measured on the
benchmark's ViT-B decoder (AMD EPYC, 1 thread), ~3800 page faults per prompt and
a quarter of the decode time. `keep_freed_memory` raises both thresholds
once per process (``mallopt``), as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold``
/ ``trim_threshold`` would from outside: blocks below `MMAP_THRESHOLD_BYTES`
come from the heap and up to `TRIM_THRESHOLD_BYTES` of freed heap stays with
the process. Peak memory is what the work needs; memory is not given back
between chips. Blocks of `MMAP_THRESHOLD_BYTES` and more are unaffected.

Set ``GEOSAM_MALLOC_TUNE=0`` to leave the allocator as it is. Elsewhere (not
glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3

#: Blocks smaller than this come from the heap (glibc's upper limit for this setting on 64-bit systems).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024

#: Freed heap memory kept by the process before glibc trims it.
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether it was done (see the module docstring)."""
    if os.environ.get("GEOSAM_MALLOC_TUNE", "").strip().lower() in ("0", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("glibc malloc thresholds raised for CPU inference: %s", done)
    return done
