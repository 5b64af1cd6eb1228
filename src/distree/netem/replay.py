"""Replaying a bandwidth trace on a live link: the rate follows the trace in a background thread.

The trace is a :class:`distree.fluctuation.BandwidthTrace` (read with
:func:`distree.fluctuation.load_bandwidth_trace`, so the file conventions are the simulator's:
the first row applies from ``t = 0``, each value holds until the next row's time, and with
``loop`` the trace repeats after the last row has held for the mean row interval). Wall time is
trace time times ``time_scale`` (0.1: ten times faster than recorded).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cmd import NetemError

if TYPE_CHECKING:
    from ..fluctuation import BandwidthTrace
    from .chain import Link

log = logging.getLogger(__name__)


class TraceReplay:
    """Follows ``trace`` on ``link`` until stopped (or, without loop, until the last row).

    ``applied`` records ``(wall_s, trace_s, mbit)`` for every rate set: seconds since
    :attr:`start_time` when it was set, the trace time it belongs to, and the rate. Rows whose
    successor is already due when the thread gets to them are skipped (counted in ``skipped``), so
    the replay stays aligned with the wall clock instead of falling behind.
    """

    def __init__(
        self,
        link: Link,
        trace: BandwidthTrace,
        time_scale: float = 1.0,
        direction: str = "both",
        duration_s: float | None = None,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be > 0 (wall seconds per trace second), got {time_scale}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 trace seconds (or None: until stopped), got {duration_s}")
        link._directions(direction)  # validates
        self.link = link
        self.trace = trace
        self.time_scale = float(time_scale)
        self.direction = direction
        self.duration_s = duration_s
        self.applied: deque[tuple[float, float, float]] = deque(maxlen=100_000)
        self.skipped = 0
        self.start_time: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> TraceReplay:
        if self._thread is not None:
            raise NetemError("this replay was already started; create a new one")
        self.link.chain._track_replay(self)
        self.start_time = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"netem-replay-link{self.link.index}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, raise_error: bool = True) -> None:
        """Stop following the trace (the link keeps its last rate). Re-raises an error the thread hit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if raise_error and self.error is not None:
            raise NetemError(f"trace replay on link {self.link.index} failed: {self.error}") from self.error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a non-looping replay to reach its end; True when it has."""
        if self._thread is None:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def trace_time(self) -> float:
        """Trace seconds since the replay started."""
        if self.start_time is None:
            return 0.0
        return (time.monotonic() - self.start_time) / self.time_scale

    def __enter__(self) -> TraceReplay:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(raise_error=exc[0] is None)

    # ------------------------------------------------------------------ thread
    def _schedule(self) -> Any:
        """Yield (trace time, Mbit/s) for every breakpoint, looping when the trace has a period."""
        rate = self.trace.rate
        times, rates, period = rate.times, rate.rates, rate.period
        cycle = 0
        while True:
            base = cycle * period if period is not None else 0.0
            for t, r in zip(times, rates, strict=True):
                yield base + float(t), float(r)
            if period is None:
                return
            cycle += 1

    def _run(self) -> None:
        assert self.start_time is not None
        sched = self._schedule()
        nxt = next(sched, None)
        try:
            while nxt is not None and not self._stop.is_set():
                t, r = nxt
                if self.duration_s is not None and t >= self.duration_s:
                    return
                due = self.start_time + t * self.time_scale
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                nxt = next(sched, None)
                if nxt is not None and self.start_time + nxt[0] * self.time_scale <= time.monotonic():
                    self.skipped += 1
                    continue
                self.link.set_rate(r, self.direction)
                self.applied.append((time.monotonic() - self.start_time, t, r))
        except BaseException as e:
            self.error = e
            if not self._stop.is_set():
                log.error("trace replay on link %d stopped: %s", self.link.index, e)


def replay_trace(
    link: Link,
    trace: str | Path | BandwidthTrace,
    time_scale: float = 1.0,
    direction: str = "both",
    loop: bool = True,
    rate_scale: float = 1.0,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> TraceReplay:
    """Start changing ``link``'s rate over time following a bandwidth trace; returns the running replay.

    ``trace`` is a ``time_s  Mbit/s`` file (e.g. ``shared/traces/hsdpa-3g/norway_bus_1``) or a
    :class:`~distree.fluctuation.BandwidthTrace` (then ``loop``, ``rate_scale`` and ``offset_s`` are
    the trace's own). Stop it with :meth:`TraceReplay.stop` (or use it as a context manager); the
    chain stops it when it closes. Delay/jitter/loss set with :meth:`Link.shape` stay as they are.
    A zero rate stalls the link (userspace backend) or becomes 1 kbit/s (kernel backend: tc has no 0).
    """
    from ..fluctuation import BandwidthTrace, load_bandwidth_trace

    if isinstance(trace, str | Path):
        bw = load_bandwidth_trace(trace, loop=loop, scale=rate_scale, offset_s=offset_s)
    elif isinstance(trace, BandwidthTrace):
        bw = trace
    else:
        raise TypeError(f"trace must be a file path or a BandwidthTrace, got {type(trace).__name__}")
    return TraceReplay(link, bw, time_scale=time_scale, direction=direction, duration_s=duration_s).start()
