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
from collections.abc import Callable
from typing import Any, cast

from kestrelpy.clock import ReactorClock

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024


def _libc_function(name: str) -> Any:
    """A function of the C library, or None where it has none (not glibc)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        return getattr(ctypes.CDLL(libc_name), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the thresholds; False where the C library has no ``mallopt`` (not glibc)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(trimmed and mapped)


TRIM_AFTER_BYTES = TRIM_THRESHOLD
"""Bytes read by connections that have closed since the last trim before one is due."""
TRIM_DELAY_S = 1.0
"""A due trim waits this long, so that a burst of closing connections costs one trim."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    trim = _libc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


class HeapTrimmer:
    """Hands the heap's free memory back to the kernel after connections that moved much
    data have closed. Reactor thread only.

    ``keep_freed_memory`` makes glibc keep freed buffers for reuse, and it only ever trims
    the top of the heap: after a burst of connections (a flood of big items, thousands of
    clients) the freed memory sits between live blocks and the process keeps its peak RSS
    for good; repeated bursts ratchet it up. ``malloc_trim(0)`` returns those free pages
    (``madvise``) without moving anything. It walks the heap (milliseconds for hundreds of
    MB), so it runs at most once per ``TRIM_AFTER_BYTES`` read by connections that have
    since closed, ``TRIM_DELAY_S`` after the threshold is passed: never on the hot path,
    and never while long-lived connections stream big items (their buffers stay reused).
    """

    def __init__(
        self,
        clock: ReactorClock,
        *,
        after_bytes: int = TRIM_AFTER_BYTES,
        delay_s: float = TRIM_DELAY_S,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self._clock = clock
        self._after_bytes = after_bytes
        self._delay_s = delay_s
        self._trim = trim if trim is not None else _load_malloc_trim()
        self._freed = 0  # bytes read by connections closed since the last trim
        self._pending: Any = None  # IDelayedCall
        self.trims = 0

    def connection_closed(self, bytes_read: int) -> None:
        """A connection that read ``bytes_read`` bytes is gone (its buffers are freed)."""
        if self._trim is None:
            return
        self._freed += bytes_read
        if self._freed >= self._after_bytes and self._pending is None:
            self._pending = self._clock.callLater(self._delay_s, self._run)

    def _run(self) -> None:
        self._pending = None
        self._freed = 0
        assert self._trim is not None
        self._trim(0)
        self.trims += 1

    def stop(self) -> None:
        """Cancel a trim still due (server stopping)."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
