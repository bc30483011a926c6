"""Keep freed memory in the process: glibc malloc settings for the CPU hot loops.

A training step on CPU allocates and frees tensors of megabytes every few milliseconds (the
[B, d_sae] pre-activations alone are 50 MB at batch 4096, d_sae 3072). glibc serves blocks
above its mmap threshold (at most 32 MB by default) with fresh mmaps and returns the top of
the heap to the kernel past its trim threshold, so every step pays page faults and page zeroing
for memory it just gave back. Raising both thresholds keeps freed blocks in the heap for reuse;
peak memory is unchanged (the same blocks are reused), but RSS no longer shrinks after a peak.
Measured: BENCHMARKS.md, 'Inside the training step' (the TopK step with and without it).
jemalloc or tcmalloc through LD_PRELOAD do the same for a whole process; this needs
neither.

`keep_freed_memory()` is called by `sae.cli.main` and the trainer; it does nothing outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's top back (the largest int mallopt takes)
TOP_PAD = 64 << 20  # grow the heap 64 MB at a time


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings once per process; True where they took effect (Linux glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
