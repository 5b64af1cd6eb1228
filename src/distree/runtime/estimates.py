"""Online estimates of a node's own compute time and of its link and successor (EWMA)."""

from __future__ import annotations

import math
from collections import deque


class Ewma:
    """Exponentially weighted moving average; ``value`` is ``default`` until the first sample."""

    def __init__(self, alpha: float = 0.2, default: float = 0.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.default = default
        self.n = 0
        self._v = 0.0

    @property
    def value(self) -> float:
        return self._v if self.n else self.default

    def update(self, x: float) -> float:
        if not math.isfinite(x):
            return self.value
        self._v = x if self.n == 0 else self._v + self.alpha * (x - self._v)
        self.n += 1
        return self._v


class Samples:
    """The last ``maxlen`` samples of a quantity (for medians in benchmarks and Info)."""

    def __init__(self, maxlen: int = 4096) -> None:
        self.buf: deque[float] = deque(maxlen=maxlen)

    def add(self, x: float) -> None:
        self.buf.append(float(x))

    def last(self, n: int) -> list[float]:
        """The newest ``n`` samples, oldest first."""
        k = len(self.buf)
        return [self.buf[i] for i in range(max(0, k - n), k)]

    def summary(self) -> dict[str, float]:
        if not self.buf:
            return {"n": 0}
        xs = sorted(self.buf)
        n = len(xs)
        return {"n": n, "median": xs[n // 2], "p90": xs[min(n - 1, int(0.9 * n))], "mean": sum(xs) / n}
