"""Request streams: arrival times, the trace sample each request carries, and its deadline (seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenario import Workload


@dataclass
class Requests:
    """Per-request inputs, indexed by request id (0..R-1)."""

    arrival_s: np.ndarray | None  # (R,) send times; None for closed-loop (decided by the simulation)
    sample: np.ndarray  # (R,) int64 index into the trace
    deadline_s: np.ndarray  # (R,) relative deadline in seconds (inf: none)

    @property
    def count(self) -> int:
        return int(self.sample.shape[0])


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """Independent, reproducible random streams (arrivals, samples, deadlines, failures, think times)."""
    return np.random.default_rng([int(seed), int(stream)])


def arrival_times(w: Workload, seed: int) -> np.ndarray | None:
    """Send times of ``w.requests`` requests for open-loop arrivals (None for closed loop)."""
    r = w.requests
    rng = rng_for(seed, 1)
    if w.arrival == "deterministic":
        return np.arange(r, dtype=np.float64) / w.rate_per_s
    if w.arrival == "poisson":
        gaps = rng.exponential(1.0 / w.rate_per_s, size=r)
        gaps[0] = 0.0
        return np.cumsum(gaps)
    if w.arrival == "onoff":
        # Poisson at rate_on during exponential ON periods, nothing during exponential OFF periods (starts ON)
        u = np.cumsum(rng.exponential(1.0 / w.rate_on_per_s, size=r))  # on-time of each arrival
        u -= u[0]
        need = float(u[-1])
        lens: list[np.ndarray] = []
        offs: list[np.ndarray] = []
        total = 0.0
        while total <= need:
            m = max(16, int(1.5 * (need - total) / w.mean_on_s) + 16)
            ln = rng.exponential(w.mean_on_s, size=m)
            lens.append(ln)
            offs.append(rng.exponential(w.mean_off_s, size=m))
            total += float(ln.sum())
        on = np.concatenate(lens)
        off = np.concatenate(offs)
        ends = np.cumsum(on)
        j = np.searchsorted(ends, u, side="right")
        off_before = np.concatenate([[0.0], np.cumsum(off)])[j]
        return u + off_before
    return None


def make_requests(w: Workload, seed: int, num_samples: int) -> Requests:
    if num_samples < 1:
        raise ValueError("the trace has no samples")
    r = w.requests
    if w.samples == "cycle":
        sample = np.arange(r, dtype=np.int64) % num_samples
    else:
        sample = rng_for(seed, 2).integers(0, num_samples, size=r, dtype=np.int64)
    if w.deadline_s is None:
        deadline = np.full(r, np.inf)
    elif w.deadline_jitter_s > 0:
        deadline = w.deadline_s + rng_for(seed, 3).uniform(-w.deadline_jitter_s, w.deadline_jitter_s, size=r)
    else:
        deadline = np.full(r, float(w.deadline_s))
    return Requests(arrival_times(w, seed), sample, deadline)


def offered_load(w: Workload) -> float:
    """Mean offered request rate (requests/s) of an open-loop workload (nan for closed loop)."""
    if w.arrival in ("poisson", "deterministic"):
        return w.rate_per_s
    if w.arrival == "onoff":
        return w.rate_on_per_s * w.mean_on_s / (w.mean_on_s + w.mean_off_s)
    return float("nan")
