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
between chips. Blocks of `MMAP_THRESHOLD_BYTES` and more are unaffected (but see `heap_blocks`).

Blocks of 32 MiB and more (glibc's ceiling for that threshold) still come
fresh from ``mmap`` and go back on ``free``: SAM 3's ViT makes its MLPs' 49 MB
hidden activations whole in each of its 32 layers, so each layer faults in and
zeroes ~12 thousand pages again (where transparent huge pages are not on for
every mapping, as with ``madvise``, the default of Debian and Ubuntu; SAM's
ViT encoders make theirs by blocks of rows below the ceiling,
`geosam.models.cpu_gemm.row_blocks`). Inside `heap_blocks` (the encoders'
calls on the CPU) glibc takes no block from ``mmap`` (``M_MMAP_MAX`` 0): those
come from the heap and are used again by the next layer. Full-size random SAM
3, bf16, one 1008 px chip, two threads, Intel Xeon with AMX (THP ``madvise``),
old and new code in fresh processes alternating
(``benchmarks/bench_sam3_change.py``): the backbone 4.40 -> 3.89 s, 519 -> 146
thousand fresh pages and 0.98 -> 0.29 s of system CPU time a chip, the same
outputs; a ViT-H's bf16 encode unchanged (5.79 / 5.93 vs 5.78 / 5.83 s, its
blocks below the ceiling already), peak RSS unchanged.

Transparent huge pages for torch's large blocks (`huge_pages_for_tensors`):
where the kernel gives huge pages only to memory that asks for them (THP
``madvise``, Debian's and Ubuntu's default), every tensor lies in 4 KiB pages,
and the decoder's kernels, which read a chunk of prompts' (N, R, 4096) records
and scores row by row (rows 16 KiB apart, ~30 MB a tensor), miss the TLB on
nearly every row. torch's CPU allocator advises huge pages for its blocks of
2 MiB and more (``madvise(MADV_HUGEPAGE)``) when ``THP_MEM_ALLOC_ENABLE`` is set
at its first tensor of any size (c10's ``alloc_cpu``, read once a process, so no
geosam module makes a tensor at import; child processes inherit the variable);
`huge_pages_for_tensors` sets it, from `geosam.models.load_model` before the
weights of a model whose decoder gains are made (SAM's, SAM 2's, LiteMedSAM's:
`geosam.models.registry.HUGE_PAGE_FAMILIES`; SAM 3's backbone ran slower).

Set ``GEOSAM_MALLOC_TUNE=0`` to leave the allocator as it is. Elsewhere (not
glibc) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["MMAP_THRESHOLD_BYTES", "THP_MODE_FILE", "TORCH_THP_VARIABLE", "TRIM_THRESHOLD_BYTES", "heap_blocks",
           "huge_pages_for_tensors", "keep_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: glibc's default ``M_MMAP_MAX`` (``DEFAULT_MMAP_MAX``), set again when the last `heap_blocks` ends.
_DEFAULT_MMAP_MAX = 65536

#: Blocks smaller than this come from the heap (glibc's upper limit for this setting on 64-bit systems).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024

#: Freed heap memory kept by the process before glibc trims it.
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024

#: The environment variable with which torch's CPU allocator advises huge pages for its blocks of 2 MiB and more.
TORCH_THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"

#: Where Linux says when it gives transparent huge pages: "always [madvise] never", the mode in brackets.
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _tuning_off() -> bool:
    return os.environ.get("GEOSAM_MALLOC_TUNE", "").strip().lower() in ("0", "false", "no")


def huge_pages_for_tensors() -> bool:
    """Ask torch's CPU allocator for transparent huge pages for its blocks of 2 MiB and more (``THP_MEM_ALLOC_ENABLE``,
    see the module docstring) where Linux gives them only on request (THP mode ``madvise``); whether the variable is
    set now. A value the user set is left as it is (and reported); nothing is done with ``GEOSAM_MALLOC_TUNE=0``, with
    THP ``always`` (every block gets them already) or ``never``, or off Linux. torch reads the variable at its first
    tensor of any size in the process: one made earlier (a tensor before the first model is loaded) leaves the
    allocator as it was, harmlessly."""
    if TORCH_THP_VARIABLE in os.environ:
        return os.environ[TORCH_THP_VARIABLE].strip() not in ("", "0")
    if _tuning_off() or not sys.platform.startswith("linux"):
        return False
    try:
        with open(THP_MODE_FILE) as f:
            mode = f.read()
    except OSError:  # no transparent huge pages in this kernel
        return False
    if "[madvise]" not in mode:
        return False
    os.environ[TORCH_THP_VARIABLE] = "1"
    log.debug("torch's CPU allocator asked for transparent huge pages (%s=1)", TORCH_THP_VARIABLE)
    return True


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether it was done (see the module docstring)."""
    if _tuning_off() or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("glibc malloc thresholds raised for CPU inference: %s", done)
    return done


_heap_lock = threading.Lock()
_heap_depth = 0


@contextlib.contextmanager
def heap_blocks() -> Iterator[bool]:
    """Inside, glibc serves every block from its heap, none from fresh ``mmap`` pages (``mallopt(M_MMAP_MAX, 0)``),
    so that blocks of 32 MiB and more freed inside are used again rather than faulted in anew (see the module
    docstring); yields whether that is so. Only where `keep_freed_memory` holds (the freed heap is kept rather than
    trimmed). Nested and concurrent uses share one setting: the first to enter sets it, the last to leave gives
    ``M_MMAP_MAX`` glibc's default again. A request the heap cannot grow for still gets ``mmap`` (glibc's fallback),
    so nothing fails that would not have."""
    global _heap_depth
    if not keep_freed_memory():
        yield False
        return
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            mallopt(_M_MMAP_MAX, 0)
    try:
        yield True
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
