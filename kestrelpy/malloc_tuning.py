"""Keep the C allocator from handing large buffers back to the kernel after every item.

A server streaming MiB-sized items allocates and frees a MiB-sized buffer several times
per item. glibc returns such memory to the kernel (``munmap`` above its mmap threshold,
``brk`` trimming of a free heap top), so the next item page-faults the same MiB back in:
at 1 MiB items this was about 5% of the server's CPU in ``brk`` alone, plus the faults
(loadtest ``fairness``). Raising both thresholds lets freed buffers be reused; the heap
keeps at most ``TRIM_THRESHOLD`` bytes of free memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Apply the thresholds; False where the C library has no ``mallopt`` (not glibc)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(trimmed and mapped)
