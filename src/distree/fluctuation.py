"""Time-varying resources: device speed profiles and link bandwidth traces (numpy only).

Shared by the simulator (:mod:`distree.sim`) and the live runtime, so that a node that "runs at
half speed between t=10 s and t=20 s" does so identically in both.

Everything here is a **piecewise-constant rate** ``r(t)`` over time ``t >= 0`` (seconds since the
start of the experiment):

- a device's *speed factor* (1.0 = nominal, 0.5 = half speed, so work takes twice as long);
- a link's *bandwidth* (Mbit/s).

Work done between ``t0`` and ``t1`` is the integral of the rate, so the wall time to finish an
amount of work starting at ``t0`` is found by inverting the cumulative integral exactly,
segment by segment (:meth:`PiecewiseRate.finish_time`). A speed change in the middle of a task
therefore stretches only the remaining part of it, and a zero-rate interval (device stalled, link
down) simply adds its full length. Every method accepts scalars or numpy arrays (vectorised).

Speed profiles (:func:`speed_profile_from_spec`)::

    {"kind": "constant", "factor": 0.5}
    {"kind": "markov", "factors": [1.0, 0.3], "mean_holding_s": [2.0, 1.0], "seed": 0,
     "transition": [[0, 1], [1, 0]],   # optional; default: uniform among the other states
     "initial": 0, "path_length": 10000}  # optional
    {"kind": "trace", "path": "speed.txt", "loop": true}   # lines "time_s factor"

Bandwidth (:func:`load_bandwidth_trace`, :func:`bandwidth_from_spec`): trace files with lines
``time_s  Mbit/s`` (the format of the HSDPA 3G traces of Riiser et al., "Commute path bandwidth
traces from 3G networks", MMSys 2013), or a constant rate.

Trace-file conventions (both kinds of file): blank lines and lines starting with ``#`` are
skipped; times must be strictly increasing; the first row's value applies from ``t = 0`` (times
are shifted so that the first one is 0); each value holds until the next row's time; the last row
holds for the mean row interval and then, with ``loop`` (the default), the whole trace repeats.
Without ``loop`` the last value holds forever.
"""

from __future__ import annotations

import bisect
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ArrayLike = float | np.ndarray

__all__ = [
    "BandwidthTrace",
    "ConstantBandwidth",
    "ConstantSpeed",
    "PiecewiseRate",
    "SpeedProfile",
    "TraceFileError",
    "bandwidth_from_spec",
    "load_bandwidth_trace",
    "load_speed_trace",
    "markov_speed_profile",
    "read_two_column_file",
    "speed_profile_from_spec",
]


class TraceFileError(ValueError):
    """A speed or bandwidth trace file is missing or malformed."""


_SCALARS = (float, int, np.floating, np.integer)


def _is_scalar(x: Any) -> bool:
    """Cheap test for a plain number (np.ndim costs microseconds, and event simulators ask millions of times)."""
    return isinstance(x, _SCALARS) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _out(x: np.ndarray, scalar: bool) -> Any:
    return float(x) if scalar else x


class PiecewiseRate:
    """A non-negative piecewise-constant rate: ``rates[k]`` on ``[times[k], times[k+1])``.

    ``times[0]`` must be 0. With ``period`` (> ``times[-1]``) the pattern repeats every ``period``
    seconds (the last rate holds on ``[times[-1], period)``); without it the last rate holds forever.
    """

    def __init__(self, times: Any, rates: Any, period: float | None = None) -> None:
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        r = np.asarray(rates, dtype=np.float64).reshape(-1)
        if t.shape != r.shape or t.size == 0:
            raise ValueError(f"need as many times as rates (at least one), got {t.size} and {r.size}")
        if t[0] != 0.0:
            raise ValueError(f"the first time must be 0, got {t[0]}")
        if t.size > 1 and not np.all(np.diff(t) > 0):
            raise ValueError("times must be strictly increasing")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError("rates must be finite and >= 0")
        if period is not None:
            period = float(period)
            if not period > t[-1]:
                raise ValueError(f"period {period} must exceed the last time {t[-1]}")
        self.times = t
        self.rates = r
        self.period = period
        ends = np.append(t[1:], period if period is not None else np.inf)
        self._ends = ends
        seg = np.diff(np.append(t, ends[-1] if period is not None else t[-1]))
        # cumulative work at each breakpoint (work at times[k]); last entry: work over a full period
        self._cum = np.concatenate([[0.0], np.cumsum(r * seg)])
        if period is not None and self._cum[-1] <= 0:
            raise ValueError("the rate is zero over the whole looping period: nothing would ever finish")
        # plain-Python copies for the scalar fast paths (an event simulator asks one time at a time)
        self._t_list = t.tolist()
        self._r_list = r.tolist()
        self._c_list = self._cum.tolist()
        self._period_work = float(self._cum[-1])
        if period is None and r[-1] <= 0:
            log.debug("rate ends at 0 and does not loop: work not done by %.3f s never finishes", t[-1])

    # -------------------------------------------------------------- queries
    @property
    def period_work(self) -> float:
        return float(self._cum[-1]) if self.period is not None else math.inf

    # -------------------------------------------------------------- scalar fast paths (same arithmetic)
    def _fold1(self, t: float) -> tuple[float, float]:
        if self.period is None:
            return 0.0, max(t, 0.0)
        n = math.floor(t / self.period)
        tt = t - n * self.period
        return float(n), min(max(tt, 0.0), math.nextafter(self.period, 0.0))

    def _work1(self, t: float) -> float:
        if t < 0:
            raise ValueError("time must be >= 0")
        n, tt = self._fold1(t)
        k = bisect.bisect_right(self._t_list, tt) - 1
        w = self._c_list[k] + self._r_list[k] * (tt - self._t_list[k])
        if self.period is not None:
            w = w + n * self._period_work
        return w

    def _time_of_work1(self, w: float) -> float:
        if self.period is not None:
            pw = self._period_work
            n = math.floor(w / pw)
            rem = w - n * pw
            if rem <= 0 and n > 0:
                n, rem = n - 1, pw
            base = n * self.period
        else:
            rem, base = w, 0.0
        if rem <= 0:
            return base + 0.0
        k = min(max(bisect.bisect_left(self._c_list, rem) - 1, 0), len(self._r_list) - 1)
        r = self._r_list[k]
        if r <= 0:
            return math.inf
        return base + (self._t_list[k] + (rem - self._c_list[k]) / r)

    # -------------------------------------------------------------- queries
    def value_at(self, t: ArrayLike) -> ArrayLike:
        """Rate at time(s) ``t``."""
        scalar = _is_scalar(t)
        if scalar:
            return self._r_list[bisect.bisect_right(self._t_list, self._fold1(float(t))[1]) - 1]
        tt = self._fold(np.asarray(t, dtype=np.float64))[1]
        k = np.searchsorted(self.times, tt, side="right") - 1
        return _out(self.rates[k], scalar)

    def work(self, t: ArrayLike) -> ArrayLike:
        """Cumulative work ``W(t) = integral of the rate over [0, t]``."""
        scalar = _is_scalar(t)
        if scalar:
            return self._work1(float(t))
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError("time must be >= 0")
        n, tt = self._fold(t)
        k = np.searchsorted(self.times, tt, side="right") - 1
        w = self._cum[k] + self.rates[k] * (tt - self.times[k])
        if self.period is not None:
            w = w + n * self._cum[-1]
        return _out(w, scalar)

    def time_of_work(self, w: ArrayLike) -> ArrayLike:
        """Earliest time at which the cumulative work reaches ``w`` (inverse of :meth:`work`); inf if never."""
        scalar = _is_scalar(w)
        if scalar:
            return self._time_of_work1(float(w))
        w = np.asarray(w, dtype=np.float64)
        if self.period is not None:
            pw = self._cum[-1]
            n = np.floor(w / pw)
            rem = w - n * pw
            # a remainder of exactly 0 (w a multiple of the period's work) belongs to the previous period's end
            at_edge = (rem <= 0) & (n > 0)
            n = np.where(at_edge, n - 1, n)
            rem = np.where(at_edge, pw, rem)
            base = n * self.period
        else:
            rem = w
            base = np.zeros_like(w)
        cum = self._cum
        # segment k with cum[k] < rem <= cum[k+1]; rem <= 0 -> time 0
        k = np.searchsorted(self._cum, rem, side="left") - 1
        k = np.clip(k, 0, self.rates.size - 1)
        r = self.rates[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            local = self.times[k] + np.where(r > 0, (rem - cum[k]) / np.where(r > 0, r, 1.0), np.inf)
        local = np.where(rem <= 0, 0.0, local)
        return _out(base + local, scalar)

    def finish_time(self, t0: ArrayLike, amount: ArrayLike) -> ArrayLike:
        """Time at which ``amount`` of work started at ``t0`` is done (exact piecewise integration)."""
        scalar = _is_scalar(t0) and _is_scalar(amount)
        if scalar:
            t0f, af = float(t0), float(amount)
            if af < 0:
                raise ValueError("amount of work must be >= 0")
            if af <= 0:
                return t0f
            return max(self._time_of_work1(self._work1(t0f) + af), t0f)
        t0a = np.asarray(t0, dtype=np.float64)
        am = np.asarray(amount, dtype=np.float64)
        if np.any(am < 0):
            raise ValueError("amount of work must be >= 0")
        end = self.time_of_work(self.work(t0a) + am)
        # never earlier than t0 (rounding) and exactly t0 for no work
        end = np.where(am <= 0, t0a, np.maximum(end, t0a))
        return _out(np.asarray(end, dtype=np.float64), scalar)

    def duration(self, t0: ArrayLike, amount: ArrayLike) -> ArrayLike:
        """Wall seconds to do ``amount`` of work starting at ``t0``."""
        scalar = _is_scalar(t0) and _is_scalar(amount)
        d = np.asarray(self.finish_time(t0, amount), dtype=np.float64) - np.asarray(t0, dtype=np.float64)
        return _out(d, scalar)

    def mean_rate(self) -> float:
        """Time-average rate over one period (without a period: over the rows given, or the only rate)."""
        if self.period is None:
            if self.times.size > 1:
                return float(self._cum[-1] / self.times[-1])
            return float(self.rates[-1])
        return float(self._cum[-1] / self.period)

    # -------------------------------------------------------------- internals
    def _fold(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.period is None:
            return np.zeros_like(t), np.maximum(t, 0.0)
        n = np.floor(t / self.period)
        tt = t - n * self.period
        tt = np.clip(tt, 0.0, np.nextafter(self.period, 0.0))
        return n, tt


# ====================================================================== speed profiles
class SpeedProfile:
    """Relative compute speed of a device over time (1.0 = nominal)."""

    kind = "piecewise"

    def __init__(self, rate: PiecewiseRate, spec: dict[str, Any] | None = None) -> None:
        self.rate = rate
        self.spec = dict(spec or {})

    def factor_at(self, t: ArrayLike) -> ArrayLike:
        """Relative speed at time ``t`` (0.5: half speed, work takes twice as long)."""
        return self.rate.value_at(t)

    def stretch(self, t0: ArrayLike, work_s: ArrayLike) -> ArrayLike:
        """Wall seconds to do ``work_s`` seconds of nominal work starting at ``t0``, following speed changes."""
        return self.rate.duration(t0, work_s)

    def finish_time(self, t0: ArrayLike, work_s: ArrayLike) -> ArrayLike:
        return self.rate.finish_time(t0, work_s)

    def mean_factor(self) -> float:
        return self.rate.mean_rate()

    @property
    def is_constant(self) -> bool:
        return self.rate.times.size == 1 and self.rate.period is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec or self.rate.rates[:4]})"


class ConstantSpeed(SpeedProfile):
    kind = "constant"

    def __init__(self, factor: float = 1.0) -> None:
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"a constant speed factor must be > 0, got {factor}")
        super().__init__(PiecewiseRate([0.0], [factor]), {"kind": "constant", "factor": factor})
        self.factor = factor

    def factor_at(self, t: ArrayLike) -> ArrayLike:
        if _is_scalar(t):
            return self.factor
        return np.full(np.shape(t), self.factor)

    def stretch(self, t0: ArrayLike, work_s: ArrayLike) -> ArrayLike:
        if _is_scalar(t0) and _is_scalar(work_s):
            return float(work_s) / self.factor
        shape = np.broadcast(t0, work_s).shape
        return np.broadcast_to(np.asarray(work_s, dtype=np.float64) / self.factor, shape).copy()

    def finish_time(self, t0: ArrayLike, work_s: ArrayLike) -> ArrayLike:
        if _is_scalar(t0) and _is_scalar(work_s):
            return float(t0) + float(work_s) / self.factor
        return np.asarray(t0, dtype=np.float64) + np.asarray(work_s, dtype=np.float64) / self.factor


def markov_speed_profile(
    factors: list[float],
    mean_holding_s: list[float],
    seed: int = 0,
    transition: list[list[float]] | None = None,
    initial: int = 0,
    path_length: int = 10000,
) -> SpeedProfile:
    """A Markov-modulated speed: exponential holding times; a seeded path of ``path_length`` states, looped."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    h = np.asarray(mean_holding_s, dtype=np.float64).reshape(-1)
    s = f.size
    if s < 1:
        raise ValueError("markov speed: 'factors' needs at least one state")
    if h.size != s:
        raise ValueError(f"markov speed: 'mean_holding_s' needs one entry per state ({s}), got {h.size}")
    if np.any(~np.isfinite(f)) or np.any(f < 0):
        raise ValueError("markov speed: 'factors' must be >= 0")
    if np.any(~np.isfinite(h)) or np.any(h <= 0):
        raise ValueError("markov speed: 'mean_holding_s' must be > 0")
    if not 0 <= int(initial) < s:
        raise ValueError(f"markov speed: 'initial' must be a state index in [0, {s}), got {initial}")
    if int(path_length) < 1:
        raise ValueError("markov speed: 'path_length' must be >= 1")
    if transition is None:
        p = np.full((s, s), 1.0 / max(s - 1, 1))
        np.fill_diagonal(p, 0.0 if s > 1 else 1.0)
    else:
        p = np.asarray(transition, dtype=np.float64)
        if p.shape != (s, s):
            raise ValueError(f"markov speed: 'transition' must be a {s}x{s} matrix, got shape {p.shape}")
        if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("markov speed: every row of 'transition' must be >= 0 and sum to 1")
    rng = np.random.default_rng(int(seed))
    n = int(path_length)
    u = rng.random(n)
    if transition is None and s > 1:
        # uniform among the other states: add 1..s-1 (mod s) at every jump
        steps = np.minimum((u[1:] * (s - 1)).astype(np.int64), s - 2) + 1
        states = (int(initial) + np.concatenate([[0], np.cumsum(steps)])) % s
    else:
        states = np.empty(n, dtype=np.int64)
        states[0] = int(initial)
        cdf = np.cumsum(p, axis=1).tolist()
        ul = u.tolist()
        cur = int(initial)
        for k in range(1, n):
            cur = min(bisect.bisect_right(cdf[cur], ul[k]), s - 1)
            states[k] = cur
    hold = rng.exponential(1.0, size=n) * h[states]
    hold = np.maximum(hold, 1e-9)
    times = np.concatenate([[0.0], np.cumsum(hold)[:-1]])
    rates = f[states]
    if np.all(rates[:] <= 0):
        raise ValueError("markov speed: the sampled path has speed 0 everywhere; give some state a factor > 0")
    spec = {
        "kind": "markov",
        "factors": f.tolist(),
        "mean_holding_s": h.tolist(),
        "seed": int(seed),
        "initial": int(initial),
        "path_length": n,
    }
    if transition is not None:
        spec["transition"] = p.tolist()
    prof = SpeedProfile(PiecewiseRate(times, rates, period=float(np.sum(hold))), spec)
    prof.kind = "markov"
    prof.states = states  # type: ignore[attr-defined]
    return prof


def read_two_column_file(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``time value`` lines (whitespace separated). Clear errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"no {what} trace file at {path}")
    times: list[float] = []
    vals: list[float] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TraceFileError(f"{path}:{lineno}: expected two columns 'time_s value', got {len(parts)}: {raw!r}")
        try:
            t, v = float(parts[0]), float(parts[1])
        except ValueError:
            raise TraceFileError(f"{path}:{lineno}: not numbers: {raw!r}") from None
        if not (math.isfinite(t) and math.isfinite(v)):
            raise TraceFileError(f"{path}:{lineno}: values must be finite: {raw!r}")
        if v < 0:
            raise TraceFileError(f"{path}:{lineno}: {what} must be >= 0, got {v}")
        if times and t <= times[-1]:
            raise TraceFileError(f"{path}:{lineno}: time {t} is not after the previous row's {times[-1]}")
        times.append(t)
        vals.append(v)
    if not times:
        raise TraceFileError(f"{path}: no data rows (expected lines 'time_s value')")
    return np.asarray(times), np.asarray(vals)


def _looping_rate(times: np.ndarray, vals: np.ndarray, loop: bool, path: Path, what: str) -> PiecewiseRate:
    t = times - times[0]
    period: float | None = None
    if loop:
        step = float(t[-1] / (t.size - 1)) if t.size > 1 else 1.0
        period = float(t[-1] + step)
        if t.size > 1 and not np.any(vals > 0):
            raise TraceFileError(f"{path}: every {what} is 0, so nothing would ever finish")
    try:
        return PiecewiseRate(t, vals, period=period)
    except ValueError as e:
        raise TraceFileError(f"{path}: {e}") from e


def load_speed_trace(path: str | Path, loop: bool = True) -> SpeedProfile:
    """A speed profile replayed from a file of ``time_s factor`` lines."""
    times, vals = read_two_column_file(path, "speed factor")
    prof = SpeedProfile(
        _looping_rate(times, vals, loop, Path(path), "speed factor"),
        {"kind": "trace", "path": str(path), "loop": bool(loop)},
    )
    prof.kind = "trace"
    return prof


_SPEED_KEYS = {
    "constant": {"kind", "factor"},
    "markov": {"kind", "factors", "mean_holding_s", "seed", "transition", "initial", "path_length"},
    "trace": {"kind", "path", "loop"},
}


def speed_profile_from_spec(spec: dict[str, Any] | float | int | None) -> SpeedProfile:
    """Build a speed profile from its spec (see the module docstring); a bare number is a constant factor."""
    if spec is None:
        return ConstantSpeed(1.0)
    if isinstance(spec, int | float):
        return ConstantSpeed(float(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"a speed profile spec must be a table/dict or a number, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _SPEED_KEYS:
        raise ValueError(f"speed profile: unknown kind {kind!r}; use one of {sorted(_SPEED_KEYS)}")
    extra = set(spec) - _SPEED_KEYS[kind]
    if extra:
        raise ValueError(
            f"speed profile {kind!r}: unknown key(s) {sorted(extra)}; allowed: {sorted(_SPEED_KEYS[kind])}"
        )
    if kind == "constant":
        return ConstantSpeed(float(spec.get("factor", 1.0)))
    if kind == "markov":
        for key in ("factors", "mean_holding_s"):
            if key not in spec:
                raise ValueError(f"markov speed profile needs {key!r}")
        return markov_speed_profile(
            list(spec["factors"]),
            list(spec["mean_holding_s"]),
            seed=int(spec.get("seed", 0)),
            transition=spec.get("transition"),
            initial=int(spec.get("initial", 0)),
            path_length=int(spec.get("path_length", 10000)),
        )
    if "path" not in spec:
        raise ValueError("trace speed profile needs 'path' (a file of 'time_s factor' lines)")
    return load_speed_trace(spec["path"], loop=bool(spec.get("loop", True)))


# ====================================================================== bandwidth
_BYTES_PER_MBIT = 1e6 / 8.0


class BandwidthTrace:
    """Link bandwidth over time in Mbit/s; ``transfer_time`` integrates it exactly."""

    def __init__(self, rate: PiecewiseRate, spec: dict[str, Any] | None = None) -> None:
        self.rate = rate  # Mbit/s
        self.spec = dict(spec or {})

    def rate_at(self, t: ArrayLike) -> ArrayLike:
        """Bandwidth in Mbit/s at time ``t``."""
        return self.rate.value_at(t)

    def transfer_time(self, t0: ArrayLike, nbytes: ArrayLike) -> ArrayLike:
        """Seconds to push ``nbytes`` starting at ``t0`` (serialisation only; no propagation delay)."""
        scalar = _is_scalar(t0) and _is_scalar(nbytes)
        mbit = np.asarray(nbytes, dtype=np.float64) / _BYTES_PER_MBIT
        return _out(np.asarray(self.rate.duration(t0, mbit), dtype=np.float64), scalar)

    def finish_time(self, t0: ArrayLike, nbytes: ArrayLike) -> ArrayLike:
        scalar = _is_scalar(t0) and _is_scalar(nbytes)
        if scalar:
            return self.rate.finish_time(float(t0), float(nbytes) / _BYTES_PER_MBIT)
        mbit = np.asarray(nbytes, dtype=np.float64) / _BYTES_PER_MBIT
        return _out(np.asarray(self.rate.finish_time(t0, mbit), dtype=np.float64), scalar)

    def mean_mbps(self) -> float:
        return self.rate.mean_rate()

    @property
    def is_constant(self) -> bool:
        return self.rate.times.size == 1 and self.rate.period is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"


class ConstantBandwidth(BandwidthTrace):
    def __init__(self, mbps: float) -> None:
        mbps = float(mbps)
        if not math.isfinite(mbps) or mbps <= 0:
            raise ValueError(f"a constant bandwidth must be > 0 Mbit/s, got {mbps}")
        super().__init__(PiecewiseRate([0.0], [mbps]), {"kind": "constant", "mbps": mbps})
        self.mbps = mbps
        self._bps = mbps * _BYTES_PER_MBIT

    def rate_at(self, t: ArrayLike) -> ArrayLike:
        if _is_scalar(t):
            return self.mbps
        return np.full(np.shape(t), self.mbps)

    def transfer_time(self, t0: ArrayLike, nbytes: ArrayLike) -> ArrayLike:
        if _is_scalar(t0) and _is_scalar(nbytes):
            return float(nbytes) / self._bps
        shape = np.broadcast(t0, nbytes).shape
        return np.broadcast_to(np.asarray(nbytes, dtype=np.float64) / self._bps, shape).copy()

    def finish_time(self, t0: ArrayLike, nbytes: ArrayLike) -> ArrayLike:
        if _is_scalar(t0) and _is_scalar(nbytes):
            return float(t0) + float(nbytes) / self._bps
        return np.asarray(t0, dtype=np.float64) + np.asarray(nbytes, dtype=np.float64) / self._bps


def load_bandwidth_trace(
    path: str | Path, loop: bool = True, scale: float = 1.0, offset_s: float = 0.0
) -> BandwidthTrace:
    """Read a ``time_s  Mbit/s`` trace (e.g. the HSDPA 3G traces); zero-bandwidth rows are allowed.

    ``scale`` multiplies every rate; ``offset_s`` starts the replay that many seconds into the trace
    (so several links can share one file without moving in lockstep; needs ``loop``).
    """
    path = Path(path)
    times, vals = read_two_column_file(path, "bandwidth (Mbit/s)")
    if not (math.isfinite(scale) and scale > 0):
        raise TraceFileError(f"{path}: bandwidth scale must be > 0, got {scale}")
    vals = vals * float(scale)
    rate = _looping_rate(times, vals, loop, path, "bandwidth")
    if offset_s:
        if rate.period is None:
            raise TraceFileError(f"{path}: offset_s needs loop = true")
        rate = _shift(rate, float(offset_s))
    return BandwidthTrace(
        rate, {"kind": "trace", "path": str(path), "loop": bool(loop), "scale": float(scale), "offset_s": offset_s}
    )


def _shift(rate: PiecewiseRate, offset: float) -> PiecewiseRate:
    """The looping rate started ``offset`` seconds into its period."""
    assert rate.period is not None
    off = offset % rate.period
    if off == 0:
        return rate
    k = int(np.searchsorted(rate.times, off, side="right") - 1)
    t = np.concatenate([[0.0], rate.times[k + 1 :] - off, rate.times[: k + 1] + (rate.period - off)])
    r = np.concatenate([[rate.rates[k]], rate.rates[k + 1 :], rate.rates[: k + 1]])
    # when the offset falls exactly on a breakpoint the last piece would start at the period itself
    keep = t < rate.period
    return PiecewiseRate(t[keep], r[keep], period=rate.period)


_BW_KEYS = {"constant": {"kind", "mbps"}, "trace": {"kind", "path", "loop", "scale", "offset_s"}}


def bandwidth_from_spec(spec: dict[str, Any] | float | int) -> BandwidthTrace:
    """``{"kind": "constant", "mbps": 100}`` or ``{"kind": "trace", "path": ..., "loop": true, "scale": 1,
    "offset_s": 0}``; a bare number is a constant Mbit/s."""
    if isinstance(spec, int | float):
        return ConstantBandwidth(float(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"a bandwidth spec must be a table/dict or a number (Mbit/s), got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _BW_KEYS:
        raise ValueError(f"bandwidth: unknown kind {kind!r}; use one of {sorted(_BW_KEYS)}")
    extra = set(spec) - _BW_KEYS[kind]
    if extra:
        raise ValueError(f"bandwidth {kind!r}: unknown key(s) {sorted(extra)}; allowed: {sorted(_BW_KEYS[kind])}")
    if kind == "constant":
        if "mbps" not in spec:
            raise ValueError("constant bandwidth needs 'mbps'")
        return ConstantBandwidth(float(spec["mbps"]))
    if "path" not in spec:
        raise ValueError("trace bandwidth needs 'path' (a file of 'time_s Mbit/s' lines)")
    return load_bandwidth_trace(
        spec["path"],
        loop=bool(spec.get("loop", True)),
        scale=float(spec.get("scale", 1.0)),
        offset_s=float(spec.get("offset_s", 0.0)),
    )
