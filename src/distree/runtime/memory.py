"""Giving a node's memory back to the OS after a burst without slowing its compute: the allocator is
set up once (:func:`configure_allocator`: one heap, buffers of :data:`MMAP_THRESHOLD_BYTES` and more
mapped on their own, the heap's top kept up to :data:`TRIM_THRESHOLD_BYTES`), and once the node has
been idle for a moment after a burst it calls glibc's ``malloc_trim`` (:class:`MemoryReturner`,
:func:`trim_memory`). glibc is loaded through ctypes (:func:`libc`); without it all of these are no-ops.

Why these settings. A model's working buffers (a WRN-16-8 segment's convolutions allocate several
MiB per call) must stay in the heap between requests: mapped on their own, or trimmed off the top of
the heap after every free (glibc's 128 KiB trim threshold once its thresholds are fixed), every
request faults their pages in anew, which made a node compute a WRN-16-8 segment 1.4-2.1x slower
than the same code in one process. Request buffers larger than the working set are mapped and go
back to the OS when freed; what stays in the heap is returned by ``malloc_trim`` after a burst, which
reaches all of it only with a single arena (the top of a thread's own arena is not trimmed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admission import InflightBytes

log = logging.getLogger(__name__)

#: allocations of at least this many bytes get their own mapping (returned to the OS when freed);
#: glibc's own upper limit for its dynamic threshold
MMAP_THRESHOLD_BYTES = 32 << 20
#: free memory at the heap's top is kept up to this much (given back by malloc_trim after a burst)
TRIM_THRESHOLD_BYTES = 64 << 20
#: memory is trimmed once the node was idle this long after at least TRIM_AFTER_BYTES of requests
TRIM_IDLE_S = 1.0
TRIM_AFTER_BYTES = 8 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _glibc() -> Any:
    """glibc through ctypes, or None (another C library, another OS)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Any = None
_LIBC_LOADED = False


def libc() -> Any:
    global _LIBC, _LIBC_LOADED
    if not _LIBC_LOADED:
        _LIBC, _LIBC_LOADED = _glibc(), True
    return _LIBC


def configure_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Set up glibc's allocator for a node (see the module docstring): one arena, allocations of
    ``mmap_threshold`` bytes and more in their own mappings, up to ``trim_threshold`` bytes of free
    memory kept at the heap's top. Call it before the model loads. False without glibc."""
    c = libc()
    if c is None:
        return False
    ok = [c.mallopt(_M_ARENA_MAX, 1), c.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)]
    ok.append(c.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return all(r == 1 for r in ok)


def trim_memory() -> bool:
    """Return the allocator's free memory to the OS (glibc ``malloc_trim(0)``); False without glibc."""
    c = libc()
    return bool(c is not None and c.malloc_trim(0))


class MemoryReturner:
    """Trims the allocator once the node has had no request in flight for ``idle_s`` after at least
    ``after_bytes`` of requests arrived (admitted or refused) since the last trim."""

    def __init__(self, limiter: InflightBytes, *, idle_s: float = TRIM_IDLE_S, after_bytes: int = TRIM_AFTER_BYTES):
        self.limiter = limiter
        self.idle_s = idle_s
        self.after_bytes = after_bytes
        self.trims = 0
        self._mark = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if libc() is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def due(self, now: float) -> bool:
        lim = self.limiter
        return lim.inflight == 0 and lim.seen - self._mark >= self.after_bytes and now - lim.last_change >= self.idle_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.idle_s / 2)
            if self.due(time.monotonic()):
                self._mark = self.limiter.seen
                await loop.run_in_executor(None, trim_memory)
                self.trims += 1
                log.debug("returned free memory to the OS after a burst", extra={"event": "malloc_trim"})
