"""Time as a node sees it: a monotonic clock for deadlines and durations, the wall clock for the
absolute deadlines on the wire, and sleeping; plus a manual clock that makes that arithmetic
deterministic in tests.

Every part of a node that computes with time (batcher, link, core, servicers) takes a ``Clock``;
the default is the system's.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """The system clocks: ``monotonic()`` (seconds, for deadlines and durations), ``wall()`` (seconds
    since the epoch, for deadlines between processes) and ``sleep(s)``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()


class ManualClock(Clock):
    """A clock that moves only when told: ``advance(s)``, or ``sleep(s)``, which advances by ``s`` and
    yields to the event loop once. The wall clock is the monotonic one plus a fixed offset."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1.7e9) -> None:
        self.now = float(start)
        self.wall_offset = float(wall_offset)

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)
