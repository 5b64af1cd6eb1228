"""Giving a node's memory back to the OS after a burst: large buffers are mapped and unmapped on
their own (:func:`configure_allocator`), and once the node has been idle for a moment after a burst
it calls glibc's ``malloc_trim`` (:class:`MemoryReturner`, :func:`trim_memory`). glibc is loaded
through ctypes (:func:`libc`); without it all of these are no-ops.
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

#: allocations of at least this many bytes get their own mapping (returned to the OS when freed)
MMAP_THRESHOLD_BYTES = 4 << 20
#: memory is trimmed once the node was idle this long after at least TRIM_AFTER_BYTES of requests
TRIM_IDLE_S = 1.0
TRIM_AFTER_BYTES = 8 << 20

_M_MMAP_THRESHOLD = -3


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


def configure_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give allocations of ``mmap_threshold`` bytes and more their own mappings, so a freed request
    buffer goes back to the OS at once (glibc otherwise raises the threshold to the largest buffer freed,
    up to 32 MiB, and keeps such buffers in its heap). False without glibc."""
    c = libc()
    return bool(c is not None and c.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1)


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
